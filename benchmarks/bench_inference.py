"""Batch-1 inference of the retrieval, VQA and grounding forwards: eager vs torch.compile vs ONNX Runtime,
side by side in one process, with output parity (issue 20 §4).

    python benchmarks/bench_inference.py [--model xvlm-small] [--repeats 50] [--threads N]
        [--backends eager,compile,compile:max-autotune-no-cudagraphs,onnx] [--warm-cache] [--json FILE]

The forwards are the tasks' own inference code at batch 1 on one image and one caption / question,
with the model's three towers run by each back-end (:func:`grainvl.bench.inference.route_towers`):

* retrieval: image tower + text tower + ITC similarity of the pair + fusion ITM logit (what
  ``RetrievalTask.latency_call`` computes, written out here because that call needs a world);
* vqa: ``VQAModule.question_states`` (image + question through the text and fusion layers). The
  answer decoder's ranking on top stays eager for every back-end and is not timed here;
* grounding: ``GroundingModule.predict`` (image + text + fusion, then the eager box head).

Per back-end: ``prepare s`` is the export + onnxruntime check + sessions (onnx) or the wrapping
(compile); ``1st call s`` is each forward's first call, which is where inductor compiles (cold:
a fresh inductor cache unless ``--warm-cache``). Parity: max |back-end - eager| of every output of the
forward, on the first call's inputs; a back-end keeps parity when every output is within
``TOLERANCE`` (1e-4 abs on fp32 outputs of O(1) magnitude: re-ordered fp32 reductions through a dozen
layers differ by ~1e-6, so 1e-4 leaves room for that and still catches any wrong op, which
shows as O(1e-2) or more). Timing: after ``--warmup`` calls of each, ``--repeats`` rounds; in each round
every forward is called once under every back-end, the back-ends' order rotating from round to round,
so drift in the machine's load hits them all alike. Random init is fine for timing (the packaged
pretrained towers load offline); ``OMP_NUM_THREADS`` / ``--threads`` fix the cores, and onnxruntime
gets the same thread count as PyTorch.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from grainvl.bench.efficiency import percentile
from grainvl.bench.inference import Towers, load_towers, max_abs_diff, route_towers
from grainvl.models.export import TOLERANCE
from grainvl.models.factory import get_tokenizer, load_model
from grainvl.models.xvlm import XVLM
from grainvl.tasks.grounding import GroundingModule
from grainvl.tasks.vqa import VQAModule
from grainvl.utils.fileio import write_json

CAPTION = "a small brown dog sitting on a red sofa next to a window"
QUESTION = "what color is the sofa?"
Forward = Callable[[], dict[str, Tensor]]


# ---------------------------------------------------------------------------------------------- the forwards
def retrieval_forward(model: XVLM, image: Tensor, text_ids: Tensor, text_atts: Tensor) -> dict[str, Tensor]:
    """``RetrievalTask.latency_call`` at batch B: ITC similarity and ITM match logit of each (image, text) pair."""
    vis, vis_atts = model.encode_image(image)  # (B, 1+N, Dv)
    text = model.encode_text(text_ids, text_atts)  # (B, L, H)
    itc = (model.image_feat(vis) * model.text_feat(text)).sum(dim=-1)  # (B,): the pairs' cosine similarities
    itm = model.itm_logits(model.fuse(text, text_atts, vis, vis_atts))[:, 1]  # (B,)
    return {"itc_sim": itc, "itm_logit": itm}


def task_forwards(model: XVLM, tokenizer: Any) -> dict[str, Forward]:
    """The three batch-1 forwards on one random image, the caption and the question (under torch.no_grad)."""
    generator = torch.Generator().manual_seed(0)
    res = model.config.vision.resolution
    image = torch.randn(1, 3, res, res, generator=generator)  # (1, 3, R, R), a normalised image's scale
    caption = tokenizer([CAPTION], return_tensors="pt")
    question = tokenizer([QUESTION], return_tensors="pt")
    ids, atts = caption["input_ids"], caption["attention_mask"]  # (1, L)
    q_ids, q_atts = question["input_ids"], question["attention_mask"]
    # Task modules around the same model: VQA's classifier head is unused, only question_states is timed.
    vqa = VQAModule(model, ["yes", "no"], tokenizer, head="classifier").eval()
    grounding = GroundingModule(model).eval()
    forwards: dict[str, Forward] = {
        "retrieval": lambda: retrieval_forward(model, image, ids, atts),
        "vqa": lambda: {"question_states": vqa.question_states(image, q_ids, q_atts)},
        "grounding": lambda: {"box": grounding.predict(image, ids, atts)},
    }
    return {name: torch.no_grad()(fn) for name, fn in forwards.items()}


# ---------------------------------------------------------------------------------------------- measuring
def prepare(model: XVLM, variants: list[str]) -> dict[str, Towers]:
    """{variant: towers}; a variant is a back-end or ``compile:MODE``."""
    towers = {}
    for variant in variants:
        backend, _, mode = variant.partition(":")
        towers[variant] = load_towers(model, backend, compile_mode=mode or None)
        print(f"prepared {variant} in {towers[variant].prepare_s:.1f} s", flush=True)
    return towers


def first_calls(model: XVLM, forwards: dict[str, Forward], towers: dict[str, Towers]) -> dict[str, dict[str, Any]]:
    """{(forward, variant) key: first-call seconds and max |diff| per output against eager}."""
    results: dict[str, dict[str, Any]] = {}
    expected = {name: fn() for name, fn in forwards.items()}
    for variant, tower in towers.items():
        for name, fn in forwards.items():
            with route_towers(model, tower):
                start = time.perf_counter()
                got = fn()
                seconds = time.perf_counter() - start
            diff = max_abs_diff(got, expected[name])
            results[f"{name}/{variant}"] = {"first_call_s": seconds, "max_abs_diff": diff}
    return results


def time_rounds(
    model: XVLM, forwards: dict[str, Forward], towers: dict[str, Towers], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """{(forward, variant) key: milliseconds of each timed call}, back-ends alternating within every round."""
    variants = list(towers)
    times: dict[str, list[float]] = {f"{n}/{v}": [] for n in forwards for v in variants}
    for round_index in range(-warmup, repeats):
        shift = round_index % len(variants)
        order = variants[shift:] + variants[:shift]  # rotate, so no back-end always runs first
        for name, fn in forwards.items():
            for variant in order:
                with route_towers(model, towers[variant]):
                    start = time.perf_counter()
                    fn()
                    elapsed = 1000.0 * (time.perf_counter() - start)
                if round_index >= 0:
                    times[f"{name}/{variant}"].append(elapsed)
    return times


# ---------------------------------------------------------------------------------------------- report
def table(
    forwards: list[str], towers: dict[str, Towers], first: dict[str, dict[str, Any]], times: dict[str, list[float]]
) -> list[dict[str, Any]]:
    """Print forward x back-end rows; return them."""
    rows = []
    print(
        f"{'forward':<10}{'backend':<38}{'p50 ms':>8}{'p90 ms':>8}{'vs eager':>9}{'max |diff|':>11}"
        f"{'parity':>7}{'prepare s':>10}{'1st call s':>11}"
    )
    for name in forwards:
        eager_p50 = percentile(times[f"{name}/eager"], 50)
        for variant, tower in towers.items():
            key = f"{name}/{variant}"
            diff = max(first[key]["max_abs_diff"].values())
            row = {
                "forward": name,
                "backend": variant,
                "p50_ms": percentile(times[key], 50),
                "p90_ms": percentile(times[key], 90),
                "max_abs_diff": first[key]["max_abs_diff"],
                "parity": diff <= TOLERANCE,
                "prepare_s": tower.prepare_s,
                "first_call_s": first[key]["first_call_s"],
            }
            row["speedup"] = eager_p50 / row["p50_ms"]
            rows.append(row)
            parity = "yes" if row["parity"] else "NO"
            print(
                f"{name:<10}{variant:<38}{row['p50_ms']:>8.2f}{row['p90_ms']:>8.2f}{row['speedup']:>8.2f}x"
                f"{diff:>11.1e}{parity:>7}{tower.prepare_s:>10.1f}{row['first_call_s']:>11.2f}"
            )
    return rows


def fastest_with_parity(rows: list[dict[str, Any]], forwards: list[str]) -> str:
    """The variant with the smallest summed p50 over the forwards among those with parity on all of them."""
    variants = {r["backend"] for r in rows}
    keeps = [v for v in variants if all(r["parity"] for r in rows if r["backend"] == v)]
    total = {v: sum(r["p50_ms"] for r in rows if r["backend"] == v) for v in keeps}
    best = min(total, key=total.__getitem__)
    sums = ", ".join(f"{v} {total[v]:.1f} ms" for v in sorted(total))
    print(f"summed p50 over {', '.join(forwards)}: {sums}")
    print(f"fastest with parity on all forwards: {best} ({total['eager'] / total[best]:.2f}x eager)")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="xvlm-small")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds (each: every forward x back-end)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds after the first calls")
    parser.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) threads; default: torch's")
    parser.add_argument("--backends", default="eager,compile,compile:max-autotune-no-cudagraphs,onnx")
    parser.add_argument("--warm-cache", action="store_true", help="reuse inductor's on-disk cache (compile time 0)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    variants = [v.strip() for v in args.backends.split(",") if v.strip()]
    if "eager" not in variants:
        parser.error("--backends must include eager (the parity and speed-up reference)")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        if not args.warm_cache:  # a fresh inductor cache: the first call's time is a real compile
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        run(args, variants)


def run(args: argparse.Namespace, variants: list[str]) -> None:
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    forwards = task_forwards(model, get_tokenizer(model.config))
    print(
        f"{args.model}: batch 1, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
        f"{args.repeats} rounds after {args.warmup} warm-up rounds; parity tolerance {TOLERANCE:g} abs",
        flush=True,
    )
    towers = prepare(model, variants)
    first = first_calls(model, forwards, towers)
    times = time_rounds(model, forwards, towers, args.warmup, args.repeats)
    rows = table(list(forwards), towers, first, times)
    best = fastest_with_parity(rows, list(forwards))
    if args.json:
        write_json(args.json, {"model": args.model, "threads": torch.get_num_threads(), "fastest": best, "rows": rows})


if __name__ == "__main__":
    main()
