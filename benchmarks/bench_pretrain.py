"""Pre-training throughput and model FLOPs utilisation (MFU), measured side by side in one run.

    python benchmarks/bench_pretrain.py [--steps 3]
    python benchmarks/bench_pretrain.py --side-by-side [--shapes xvlm-small,base112,base224] [--steps 3] [--rounds 2]

For each model: samples/s of a full X²-VLM pre-training step (image-text ITC + ITM with hard
negatives + MLM, forward + backward + AdamW) on synthetic batches (no data loading, so the model is
what is measured), the FLOPs of that step counted by ``torch.utils.flop_counter``, and MFU =
achieved FLOP/s / this machine's fp32 matmul peak measured in the same process with the same
threads. Also inference latency at batch 1 (image encoder + text encoder + fusion + ITM head),
p50/p90 after warm-up.

``--side-by-side`` (issue 20 §1) times each training-step optimisation against the reference step (every
optimisation off: torch's AdamW loop, copied vision rows, the MLM head on padded positions, torch's dropout)
in one process: settings run in turn, ``--rounds`` times, each from the same initial weights and the same RNG
seed, so dropout masks and hard negatives are the same draws and the losses of every step must agree, except
with the fast CPU dropout, whose masks are other draws of the same distribution
(``grainvl.models.layers.dropout``; its losses are marked as such). It prints per setting: s/step (median of
all timed steps), the speed-up over the reference, the peak RSS (VmHWM, reset before each run after freed
memory is handed back to the OS, as ``../shared/research/anchor_speed_official.md`` measured the official
code), MFU against the matmul peak measured at the start of the same run, and the largest loss difference from
the reference (``equal`` when ≤ 1e-6). Shapes: ``demo-small`` (xvlm-small with the demo's mix: 12 images + 48
region texts on 12 more, box losses included), ``xvlm-small`` (batch 12, 160 px), ``base112`` (x2vlm-base at
112 px, batch 8) and ``base224`` (224 px, batch 4), with 30-token captions and 12 masked tokens as the anchor.
MFU counts the reference step's FLOPs for every setting (the work the official step does), so a setting that
skips repeated work shows it as a higher MFU.

``--fresh-processes`` runs each setting and round in a new process instead (same weights file, same inputs,
same seed). Use it whenever a compared setting differs in ``heap_reuse``: ``mallopt`` cannot put glibc back to
its adaptive defaults once a setting has changed them, so in one process the settings after the first heap-reuse
run would meet another allocator than a real run does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from grainvl.data.region import box_patch_mask
from grainvl.models.factory import create_model, get_model_config
from grainvl.models.layers import set_fast_cpu_dropout
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights
from grainvl.train.optim import OptimConfig, build_optimizer
from grainvl.utils.memory import release_free_heap, set_heap_reuse

LOSS_TOLERANCE = 1e-6


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """fp32 GFLOP/s of an n x n matmul loop (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def synthetic_batch(model: XVLM, batch: int, length: int = 24) -> dict:
    res = model.config.vision.resolution
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    masked = ids.clone()
    masked[:, 1:7] = 103
    return {
        "image": {
            "image": torch.randn(batch, 3, res, res, generator=g),
            "image_ids": torch.arange(batch),
            "text_ids": ids,
            "text_atts": torch.ones_like(ids),
            "text_ids_masked": masked,
            "masked_pos": torch.arange(1, 7).expand(batch, -1),
            "masked_ids": ids[:, 1:7].clone(),
        }
    }


def train_throughput(model: XVLM, batch: int, steps: int) -> tuple[float, float]:
    """(samples/s, FLOPs per step) of pre-training steps on an image-text batch."""
    task = PretrainTask(model, PretrainWeights(region=0, video=0)).train()
    optimizer = build_optimizer(task, OptimConfig(lr=1e-5))  # grainvl's default AdamW (fused kernel)
    data = synthetic_batch(model, batch)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses, _ = task(data)
        sum(losses.values()).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = (time.perf_counter() - start) / steps
    return batch / elapsed, float(counter.get_total_flops())


@torch.no_grad()
def latency(model: XVLM, repeats: int = 10) -> tuple[float, float]:
    """p50, p90 milliseconds for one image-text pair through all towers and the ITM head."""
    model.eval()
    data = synthetic_batch(model, 1)["image"]
    times = []
    for k in range(repeats + 3):
        start = time.perf_counter()
        feats = model.extract_features(data, mode="multimodal")
        model.itm_logits(feats.fused)
        if k >= 3:
            times.append(1000 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[8]


# ---------------------------------------------------------------------------------------------- side by side
@dataclass(frozen=True)
class StepSetting:
    """One way of running the training step: the switches that an optimisation flips."""

    name: str
    adamw: str = "loop"  # OptimConfig.implementation
    grad_checkpointing: bool = False
    shared_rows: bool = False  # XVLM.set_shared_vision_rows: repeated vision rows projected once (SharedTokens)
    real_mlm_rows: bool = False  # PretrainTask.padded_mlm_rows off: the MLM head sees only real masked tokens
    # grainvl.models.layers.set_fast_cpu_dropout: masks from 16-bit lanes of 64-bit draws instead of bernoulli_.
    # Other masks than torch's draws (same distribution), so its losses cannot equal the reference's.
    fast_dropout: bool = False
    # grainvl.utils.memory.set_heap_reuse (TrainConfig.reuse_heap): large blocks from glibc's heap, freed memory
    # kept for the next step instead of mmap/munmap and the kernel's zero-filled page faults. Exact.
    heap_reuse: bool = False


# The reference (every optimisation off: torch's CPU default AdamW loop, every repeated vision row copied and
# projected) and each optimisation alone.
# The library's defaults: every switch that keeps the reference's losses.
_EXACT_DEFAULTS = {"adamw": "fused", "shared_rows": True, "real_mlm_rows": True, "heap_reuse": True}
SETTINGS = (
    StepSetting("reference"),
    StepSetting("fused AdamW", adamw="fused"),
    StepSetting("foreach AdamW", adamw="foreach"),
    StepSetting("shared vision rows", shared_rows=True),
    StepSetting("MLM real rows", real_mlm_rows=True),
    StepSetting("heap reuse", heap_reuse=True),
    StepSetting("defaults without heap reuse", **{**_EXACT_DEFAULTS, "heap_reuse": False}),
    StepSetting("defaults (fused + shared + MLM + heap)", **_EXACT_DEFAULTS),
    # Opt-in (TrainConfig.fast_dropout): not exact, so not a default.
    StepSetting("fast CPU dropout", fast_dropout=True),
    StepSetting("defaults + fast dropout", **_EXACT_DEFAULTS, fast_dropout=True),
    StepSetting("grad checkpointing", grad_checkpointing=True),
    # The least memory that keeps the step exact: what remains is weights + gradients + AdamW state (docs/models.md).
    StepSetting("defaults + grad checkpointing", **_EXACT_DEFAULTS, grad_checkpointing=True),
)


@dataclass
class SettingResult:
    times: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)


def anchor_batch(
    model: XVLM, batch: int, resolution: int, length: int = 30, masks: int = 12, real: int | None = None
) -> dict:
    """The anchor's inputs: normal-noise images, ``length``-token captions without padding, ``masks`` masked tokens.

    ``real`` < ``masks``: only the first ``real`` are masked and the rest is the loader's padding of
    ``masked_pos`` (position 0, label -100), as in the demo's batches (about 8 and 6 real of 12).
    """
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    real = masks if real is None else real
    masked = ids.clone()
    masked[:, 1 : 1 + real] = 103
    masked_pos = torch.arange(1, 1 + masks).expand(batch, -1).clone()
    masked_pos[:, real:] = 0
    masked_ids = ids[:, 1 : 1 + masks].clone()
    masked_ids[:, real:] = -100
    return {
        "image": {
            "image": torch.randn(batch, 3, resolution, resolution, generator=g),
            "image_ids": torch.arange(batch),
            "text_ids": ids,
            "text_atts": torch.ones_like(ids),
            "text_ids_masked": masked,
            "masked_pos": masked_pos,
            "masked_ids": masked_ids,
        }
    }


def region_sub_batch(
    model: XVLM, images: int, texts: int, length: int = 16, masks: int = 12, real: int | None = 6
) -> dict:
    """A region sub-batch as the demo's loader makes it: ``texts`` region texts on ``images`` images, each box
    covering a random block of patches (one whole-image box per image)."""
    g = torch.Generator().manual_seed(1)
    res, patch = model.config.vision.resolution, model.config.vision.patch_size
    cells = res // patch
    boxes = []
    for t in range(texts):
        if t < images:
            boxes.append([0.0, 0.0, float(res), float(res)])
            continue
        x, y = (int(v) for v in torch.randint(0, cells - 2, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(1, 3, (2,), generator=g))
        boxes.append([float(x * patch), float(y * patch), float(w * patch), float(h * patch)])
    text = anchor_batch(model, texts, res, length, masks, real)["image"]
    return {
        "image": torch.randn(images, 3, res, res, generator=g),
        "region_image_index": torch.arange(texts) % images,
        "region_atts": box_patch_mask(torch.tensor(boxes), res, patch),
        "region_boxes": torch.rand(texts, 4, generator=g) * 0.5 + 0.25,
        "is_image": (torch.arange(texts) < images).long(),
        **{k: v for k, v in text.items() if k != "image" and k != "image_ids"},
    }


def build_shape(shape: str) -> tuple[XVLM, int, int]:
    """(model, batch, resolution) of a named shape: ``base112`` / ``base224`` (x2vlm-base with random weights, as
    the anchor) or any preset at its own resolution (batch 12 for xvlm-small, 8 otherwise; ``xvlm-tiny`` for a
    quick check of this script)."""
    if shape == "demo-small":  # the demo's xvlm-small batches: 12 images + 48 region texts on 12 more
        model = create_model("xvlm-small")
        return model, 12, model.config.vision.resolution
    if shape not in ("base112", "base224"):
        model = create_model(shape)
        return model, 12 if shape == "xvlm-small" else 8, model.config.vision.resolution
    resolution = {"base112": 112, "base224": 224}[shape]
    cfg = get_model_config("x2vlm-base")
    cfg = dataclasses.replace(
        cfg, name=f"x2vlm-base@{resolution}px", vision=dataclasses.replace(cfg.vision, resolution=resolution)
    )
    return XVLM(cfg), {112: 8, 224: 4}[resolution], resolution


def _release_memory() -> None:
    """Hand freed heap back to the OS and reset the kernel's peak-RSS counter (VmHWM)."""
    gc.collect()
    release_free_heap()  # not glibc: the peak may include freed memory
    with contextlib.suppress(OSError):  # no /proc: VmHWM is the process's peak so far
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_setting(
    task: PretrainTask, initial: Path, data: dict, setting: StepSetting, warmup: int, steps: int, result: SettingResult
) -> None:
    """``warmup + steps`` full steps (forward, backward, clip 1.0, AdamW, clamp) from the initial weights."""
    model = task.model
    model.load_state_dict(torch.load(initial, mmap=True, weights_only=True))
    model.set_grad_checkpointing(setting.grad_checkpointing)
    model.set_shared_vision_rows(setting.shared_rows)
    task.padded_mlm_rows = not setting.real_mlm_rows
    set_fast_cpu_dropout(setting.fast_dropout)
    set_heap_reuse(setting.heap_reuse)
    optimizer = build_optimizer(task, OptimConfig(implementation=setting.adamw))
    _release_memory()
    torch.manual_seed(0)  # the same dropout masks and hard negatives in every setting
    losses = []
    for k in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_losses, _ = task(data)
        sum(step_losses.values()).backward()
        torch.nn.utils.clip_grad_norm_([p for p in task.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        task.clamp_temperature_()
        if k >= warmup:
            result.times.append(time.perf_counter() - start)
        losses.append({key: float(value.detach()) for key, value in step_losses.items()})
    result.peak_rss_mib = max(result.peak_rss_mib, _peak_rss_mib())
    result.losses = result.losses or losses
    del optimizer
    task.zero_grad(set_to_none=True)


def step_flops(task: PretrainTask, data: dict) -> float:
    """Forward + backward FLOPs of one step (matmuls and convolutions, ``torch.utils.flop_counter``)."""
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        losses, _ = task(data)
        sum(losses.values()).backward()
    task.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def loss_agreement(a: list[dict[str, float]], b: list[dict[str, float]]) -> tuple[float, str]:
    """(largest |difference| over steps and losses, verdict): ``equal`` within 1e-6, ``fp32 rounding`` within
    1e-6 of the loss's size (a reordered sum of fp32 numbers), else ``DIFFERENT``."""
    diff = max(abs(x[key] - y[key]) for x, y in zip(a, b) for key in x)
    relative = max(abs(x[key] - y[key]) / max(1.0, abs(x[key])) for x, y in zip(a, b) for key in x)
    verdict = "equal" if diff <= LOSS_TOLERANCE else "fp32 rounding" if relative <= LOSS_TOLERANCE else "DIFFERENT"
    return diff, verdict


def matmul_peak_median(n: int = 2048, warmup: int = 5, repeats: int = 20) -> float:
    """The anchor's peak: median GFLOP/s of ``n``² fp32 ``torch.mm`` into a preallocated output."""
    a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    times = []
    for k in range(warmup + repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def build_task(shape: str) -> tuple[PretrainTask, dict, int, int]:
    """(task, batch, batch size, resolution) of a named shape; the same weights and inputs on every call."""
    torch.manual_seed(0)
    model, batch, resolution = build_shape(shape)
    region = shape == "demo-small"
    task = PretrainTask(model, PretrainWeights(region=1.0 if region else 0.0, video=0)).train()
    data = anchor_batch(model, batch, resolution, real=8 if region else None)
    if region:
        data["region"] = region_sub_batch(model, images=12, texts=48)
    return task, data, batch, resolution


def _setting_in_fresh_process(
    shape: str, initial: Path, setting: StepSetting, warmup: int, steps: int, threads: int
) -> SettingResult:
    """:func:`run_setting` in a new process: glibc's allocator starts from its defaults (``--fresh-processes``)."""
    torch.set_num_threads(threads)
    task, data, _, _ = build_task(shape)
    result = SettingResult()
    run_setting(task, initial, data, setting, warmup, steps, result)
    return result


def side_by_side(
    shapes: list[str], settings: list[StepSetting], warmup: int, steps: int, rounds: int, fresh: bool = False
) -> None:
    peak = matmul_peak_median()
    print(f"fp32 matmul peak (2048², median of 20): {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    if fresh:
        print("each setting and round in a fresh process (glibc's allocator defaults until a setting changes them)")
    header = f"{'shape':<22}{'setting':<40}{'s/step':>8}{'speed-up':>9}{'peak RSS MiB':>13}{'MFU':>6}  losses vs ref"
    for shape in shapes:
        task, data, batch, resolution = build_task(shape)
        model, region = task.model, "region" in data
        model.set_shared_vision_rows(False)  # FLOPs of the reference step
        task.padded_mlm_rows = True
        flops = step_flops(task, data)
        results = {s.name: SettingResult() for s in settings}
        with tempfile.TemporaryDirectory() as tmp:
            initial = Path(tmp) / "initial.pt"
            torch.save(model.state_dict(), initial)
            for _ in range(rounds):  # settings alternate, so slow phases of a shared machine hit them all
                for setting in settings:
                    result = results[setting.name]
                    if not fresh:
                        run_setting(task, initial, data, setting, warmup, steps, result)
                        continue
                    spawn = multiprocessing.get_context("spawn")  # a new interpreter, not a fork of this heap
                    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                        args = (shape, initial, setting, warmup, steps, torch.get_num_threads())
                        child = pool.submit(_setting_in_fresh_process, *args).result()
                    result.times += child.times
                    result.peak_rss_mib = max(result.peak_rss_mib, child.peak_rss_mib)
                    result.losses = result.losses or child.losses
        what = f"batch {batch} + 48 region texts on 12 images" if region else f"batch {batch}"
        print(f"\n{model.config.name}, {what}, {resolution} px: {flops / 1e9:.1f} GFLOP/step of the reference")
        print(header)
        _print_rows(model.config.name, results, flops, peak, settings)
        del task, model
    print(
        f"\nlosses: the largest |difference| from the reference over all steps and losses; equal: ≤ {LOSS_TOLERANCE}, "
        f"fp32 rounding: ≤ {LOSS_TOLERANCE} × max(1, |loss|)"
    )


def _print_rows(
    name: str, results: dict[str, SettingResult], flops: float, peak: float, settings: list[StepSetting]
) -> None:
    reference = results["reference"]
    ref_time = statistics.median(reference.times)
    fast_dropout = {s.name for s in settings if s.fast_dropout}
    for setting, result in results.items():
        seconds = statistics.median(result.times)
        diff, verdict = loss_agreement(reference.losses, result.losses)
        if setting in fast_dropout and verdict == "DIFFERENT":
            verdict = "other dropout masks (by design)"
        mfu = flops / seconds / 1e9 / peak
        print(
            f"{name:<22}{setting:<40}{seconds:>8.2f}{ref_time / seconds:>8.2f}×{result.peak_rss_mib:>13.0f}"
            f"{mfu:>6.2f}  {diff:.1e} {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--side-by-side", action="store_true", help="each optimisation on and off in one run")
    parser.add_argument(
        "--shapes", default="demo-small,xvlm-small,base112,base224", help="comma list for --side-by-side"
    )
    parser.add_argument("--settings", default=",".join(s.name for s in SETTINGS), help="comma list of setting names")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=2, help="times every setting runs (alternating)")
    parser.add_argument(
        "--fresh-processes",
        action="store_true",
        help="run each setting and round in a new process (how heap reuse meets glibc's defaults in a real run)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.side_by_side:
        chosen = [s for s in SETTINGS if s.name in args.settings.split(",") or s.name == "reference"]
        side_by_side(args.shapes.split(","), chosen, args.warmup, args.steps, args.rounds, args.fresh_processes)
        return
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    base_cfg = get_model_config("x2vlm-base")
    base_cfg = dataclasses.replace(
        base_cfg, name="x2vlm-base@96px", vision=dataclasses.replace(base_cfg.vision, resolution=96)
    )
    models = [("xvlm-small", create_model("xvlm-small"), 12), (base_cfg.name, XVLM(base_cfg), 4)]
    print(
        f"{'model':<18}{'params':>9}{'batch':>7}{'samples/s':>11}{'GFLOP/step':>12}{'GFLOP/s':>9}{'MFU':>7}"
        f"{'lat p50 ms':>12}{'p90 ms':>8}"
    )
    for name, model, batch in models:
        params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6
        rate, flops = train_throughput(model, batch, args.steps)
        achieved = flops * rate / batch / 1e9
        p50, p90 = latency(model)
        print(
            f"{name:<18}{params:>8.1f}M{batch:>7}{rate:>11.2f}{flops / 1e9:>12.1f}{achieved:>9.1f}"
            f"{achieved / peak:>7.2f}{p50:>12.1f}{p90:>8.1f}"
        )
    print(
        "MFU = (counted FLOPs of a training step x steps/s) / matmul peak; the frozen EfficientNet of xvlm-small "
        "runs without backward, so its step has fewer FLOPs per sample."
    )


if __name__ == "__main__":
    main()
