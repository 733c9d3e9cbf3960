"""TACO vs. MLM: pre-training steps to the same downstream score, measured side by side in one run.

    python benchmarks/bench_taco.py [--steps 1000] [--eval-every 250] [--model bert-tiny] [--out runs/bench_taco]

What one run does (the paper's protocol, Fu et al. 2022 Table 1 / Fig. 5, scaled to a CPU):

1. A world (generated into OUT/world unless ``--world`` is given) supplies the GLUE-format tasks.
2. Corpus: real English prose (``builtin:english``, the Python standard library's docstrings) plus the
   world's *training* text; a WordPiece vocabulary is trained on it (deterministic).
3. One initial encoder (``--model`` preset, seed ``--seed``) is pre-trained twice on the same blocks,
   with the same masks and data order: ``--objective mlm`` and ``--objective taco`` (MLM + TC), each
   exporting a Hugging Face folder every ``--eval-every`` steps.
4. Downstream tasks that a randomly initialised encoder does *not* already solve (docs/taco.md says why
   the world's own GLUE tasks mostly are): the world's ``scene_cola`` (word-order acceptability) and
   three acceptability tasks built from world *dev* sentences that never occur in the pre-training
   corpus (:func:`heldout_tasks`: inner words shuffled, two adjacent inner words swapped, one inner word
   replaced, vs. the sentence as it is).
5. Two readings per checkpoint, the same for the initial encoder and every checkpoint:
   a frozen-encoder linear probe ([CLS] state, logistic regression on the first ``--probe-examples`` train rows) every
   ``--eval-every`` steps, and low-resource full fine-tuning (``--finetune-examples`` random train rows,
   ``--finetune-seeds`` subsets/seeds averaged) every ``--finetune-every`` steps; each scored on the dev
   set with the task's GLUE main metric and averaged over tasks.
6. For each reading: the first step at which TACO's average reaches MLM's average at MLM's final step
   (linearly interpolated between checkpoints), and the speed-up ``final_steps / that_step`` (the
   paper: 250k / 50k = 5x) -- defined only when the initial encoder is below MLM's final average. When
   TACO never reaches it, that is reported as such.

Everything lands in OUT/bench_taco.json and OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grainvl.bench.results import append_result
from grainvl.data.formats.glue import read_tsv, write_tsv
from grainvl.data.text_corpus import load_corpora, world_english
from grainvl.data.tokenization import train_wordpiece
from grainvl.recipes.pretrain_text import (
    TextPretrainConfig,
    TextPretrainData,
    build_text_model,
    run_text_pretrain,
    save_hf_bert,
)
from grainvl.tasks.text_classification import (
    TextFinetuneConfig,
    finetune_text_classifier,
    fit_probe,
    load_glue_task,
    main_metric_name,
    resolve_encoder,
    text_features,
)
from grainvl.train.loop import TrainConfig

DEFAULT_TASKS = ("scene_cola", "order_shuffle", "order_swap", "word_replace")
HELDOUT_TASKS = ("order_shuffle", "order_swap", "word_replace")  # built by heldout_tasks(), not in the world
READINGS = ("probe", "finetune")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_taco"))
    p.add_argument("--world", type=Path, help="existing world folder (default: generate OUT/world)")
    p.add_argument("--model", default="bert-tiny", help="preset or architecture JSON (default bert-tiny)")
    p.add_argument("--steps", type=int, default=3000, help="pre-training steps of each objective")
    p.add_argument("--eval-every", type=int, default=250, help="checkpoint period of the probe")
    p.add_argument("--finetune-every", type=int, default=750, help="checkpoint period of fine-tuning (x eval-every)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4, help="peak pre-training lr (paper: 1e-4 at 250k steps)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help=f"comma-separated world GLUE task names and/or held-out tasks {','.join(HELDOUT_TASKS)}",
    )
    p.add_argument(
        "--max-length", type=int, default=32, help="downstream tokens (<= seq-len: later positions untrained)"
    )
    p.add_argument("--probe-examples", type=int, default=1000, help="train rows of the linear probe")
    p.add_argument("--finetune-steps", type=int, default=80)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-examples", type=int, default=128, help="random train rows per task and seed")
    p.add_argument("--finetune-seeds", type=int, default=3, help="fine-tuning seeds (and train subsets) averaged")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes (one torch thread each): the two pre-trainings run side by side, then the fine-tunings "
        "are shared out; tiny models run faster this way than with intra-op threads",
    )
    return p.parse_args()


def prepare_world(args: argparse.Namespace) -> Path:
    if args.world is not None:
        return args.world
    from grainvl.data.world.generate import WorldConfig, generate_world

    world = args.out / "world"
    if not (world / "manifest.json").is_file():
        cfg = WorldConfig(images=300, videos=0, resolution=64, text_train=400, text_dev=300, seed=args.seed)
        generate_world(cfg, world)
    return world


def split_sentences(texts: list[str], min_words: int = 5) -> list[str]:
    """Sentences (>= ``min_words`` words) of multi-sentence texts, split after . ! ? before a capital."""
    return [s for text in texts for s in _SENTENCE_END.split(text) if len(s.split()) >= min_words]


def corrupt(words: list[str], kind: str, rng: random.Random, pool: list[str]) -> list[str]:
    """A corrupted copy of ``words``; the first and last word stay (capital and full stop are no cue)."""
    while True:
        out = words[:]
        if kind == "order_shuffle":
            inner = out[1:-1]
            rng.shuffle(inner)
            out[1:-1] = inner
        elif kind == "order_swap":
            i = rng.randrange(1, len(out) - 2)
            out[i], out[i + 1] = out[i + 1], out[i]
        elif kind == "word_replace":
            out[rng.randrange(1, len(out) - 1)] = rng.choice(pool)
        else:
            raise ValueError(f"unknown held-out task {kind!r}; known: {HELDOUT_TASKS}")
        if out != words:
            return out


def heldout_tasks(world: Path, out: Path, seed: int, dev_size: int = 400, train_size: int = 1000) -> dict[str, int]:
    """GLUE-format acceptability tasks from world dev sentences that the pre-training corpus never holds.

    Source: the text columns of every world ``text/glue/*/dev.tsv`` (CoLA-like tasks left out: their dev
    sentences are already corrupted), split into sentences, minus every sentence that also occurs in the
    world's training text (the pre-training corpus). Each sentence is used once: label 1 as it is, label 0
    corrupted (alternating), so the two classes have the same sentence distribution. Why these tasks: word
    order and word choice are what MLM learns and what a random encoder cannot read off a bag of words.
    -> {task: number of source sentences}.
    """
    seen = set(split_sentences(world_english(world)))
    texts: list[str] = []
    for tsv in sorted((world / "text" / "glue").glob("*/dev.tsv")):
        if "cola" not in tsv.parent.name:
            table = read_tsv(tsv)
            columns = [c for c in table["columns"] if c.startswith(("sentence", "question", "text"))]
            texts.extend(row[c] for row in table["rows"] for c in columns)
    sentences = [s for s in dict.fromkeys(split_sentences(texts)) if s not in seen]
    random.Random(seed).shuffle(sentences)
    sentences = sentences[: dev_size + train_size]
    if len(sentences) < dev_size + 100:
        raise ValueError(f"{world}: only {len(sentences)} held-out dev sentences, too few for the tasks")
    pool = sorted({w for s in sentences for w in s.split() if w.isalpha() and w.islower()})
    for kind in HELDOUT_TASKS:
        rng = random.Random(f"{seed}-{kind}")
        rows = [
            {"sentence": s if i % 2 else " ".join(corrupt(s.split(), kind, rng, pool)), "label": str(i % 2)}
            for i, s in enumerate(sentences)
        ]
        write_tsv(out / kind / "dev.tsv", ["sentence", "label"], rows[:dev_size])
        write_tsv(out / kind / "train.tsv", ["sentence", "label"], rows[dev_size:])
    return {kind: len(sentences) for kind in HELDOUT_TASKS}


def task_dirs(world: Path, args: argparse.Namespace) -> dict[str, Path]:
    """{task name: GLUE folder}; held-out tasks are (re)built under OUT/tasks."""
    names = args.tasks.split(",")
    if any(name in HELDOUT_TASKS for name in names):
        heldout_tasks(world, args.out / "tasks", args.seed)
    return {n: (args.out / "tasks" if n in HELDOUT_TASKS else world / "text" / "glue") / n for n in names}


def finetune_score(encoder: str, task_dir: str, seed: int, args: argparse.Namespace) -> float:
    """Main dev metric (x100) of one low-resource fine-tuning run (a worker job: one torch thread)."""
    torch.set_num_threads(1)
    cfg = TextFinetuneConfig(
        steps=args.finetune_steps,
        batch_size=16,
        lr=args.finetune_lr,
        max_length=args.max_length,
        seed=seed,
        max_train_examples=args.finetune_examples,
        train_sample_seed=seed,  # a different random train subset per seed, the same for every encoder
    )
    return 100 * finetune_text_classifier(encoder, Path(task_dir), cfg).score


def probe_scores(encoder: str, tasks: dict[str, Path], args: argparse.Namespace) -> dict[str, float]:
    """{task: main dev metric x100} of a linear probe on the frozen [CLS] state (a worker job: one thread)."""
    torch.set_num_threads(1)
    tower, tokenizer, _ = resolve_encoder(encoder)
    scores = {}
    for name, folder in tasks.items():
        task = load_glue_task(folder)
        train_texts, train_y = task.train_texts[: args.probe_examples], task.train_targets[: args.probe_examples]
        train_x = text_features(tower, tokenizer, train_texts, args.max_length, "cls")
        dev_x = text_features(tower, tokenizer, task.dev_texts, args.max_length, "cls")
        metrics = fit_probe(train_x, np.asarray(train_y), dev_x, np.asarray(task.dev_targets), task.labels, 1.0)
        scores[name] = 100 * metrics[main_metric(name)]
    return scores


def main_metric(name: str) -> str:
    return main_metric_name(name, False, 2)  # every task here is binary classification


def downstream(
    pool: ProcessPoolExecutor,
    probed: list[Path],
    finetuned: list[Path],
    tasks: dict[str, Path],
    args: argparse.Namespace,
) -> dict[str, dict[Path, dict[str, Any]]]:
    """{reading: {encoder: {task: main dev metric x100}}}; fine-tuning scores are seed means, with
    ``per_seed`` lists kept under the key ``"_seeds"``."""
    probe_jobs = {encoder: pool.submit(probe_scores, str(encoder), tasks, args) for encoder in probed}
    seeds = range(args.finetune_seeds)
    ft_jobs = {
        (encoder, name, seed): pool.submit(finetune_score, str(encoder), str(folder), seed, args)
        for encoder in finetuned
        for name, folder in tasks.items()
        for seed in seeds
    }
    finetune: dict[Path, dict[str, Any]] = {}
    for encoder in finetuned:
        per_seed = {name: [ft_jobs[(encoder, name, seed)].result() for seed in seeds] for name in tasks}
        finetune[encoder] = {name: statistics.fmean(values) for name, values in per_seed.items()}
        finetune[encoder]["_seeds"] = per_seed
    return {"probe": {e: job.result() for e, job in probe_jobs.items()}, "finetune": finetune}


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step (linear interpolation between checkpoints) at which ``curve`` reaches ``target``."""
    previous: tuple[int, float] | None = None
    for step, value in curve:
        if value >= target:
            if previous is None or value == previous[1]:
                return float(step)
            (s0, v0), (s1, v1) = previous, (step, value)
            return s0 + (target - v0) / (v1 - v0) * (s1 - s0)
        previous = (step, value)
    return None


def mlm_loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean MLM loss of the logging window ending there) from a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["mlm_loss"]) for r in map(json.loads, lines) if "mlm_loss" in r]


def loss_speedup(out: Path, steps: int) -> dict[str, Any]:
    """Steps TACO needs for the MLM loss that MLM has at its last logging window (same masks and data order)."""
    curves = {o: mlm_loss_curve(out / o) for o in ("mlm", "taco")}
    target = curves["mlm"][-1][1]
    reached = steps_to_reach([(step, -loss) for step, loss in curves["taco"]], -target)
    return {
        "mlm_loss_curves": curves,
        "mlm_final_mlm_loss": target,
        "taco_steps_to_mlm_final_mlm_loss": reached,
        "mlm_loss_speedup": steps / reached if reached else None,
    }


def pretrain(objective: str, corpus: list[str], tokenizer: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One pre-training run (a worker job: one torch thread)."""
    cfg = TextPretrainConfig(
        model=args.model,
        tokenizer=str(tokenizer),
        objective=objective,
        data=TextPretrainData(corpus=tuple(corpus), seq_len=args.seq_len, batch_size=args.batch_size),
        train=TrainConfig(
            steps=args.steps,
            run_dir=str(args.out / objective),
            seed=args.seed,
            log_every=50,
            progress=False,
            tensorboard=False,
            count_flops=True,
        ),
        export_every=args.eval_every,
        torch_threads=1,
    )
    cfg.optim.lr = args.lr
    start = time.perf_counter()
    report = run_text_pretrain(cfg)
    report["seconds"] = time.perf_counter() - start
    return report


def reading_curves(
    scores: dict[Path, dict[str, Any]], checkpoints: dict[str, list[Path]], init: Path, names: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """{objective: [{step, scores, average}]} over the checkpoints that ``scores`` has (step 0 = ``init``)."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for objective, folders in checkpoints.items():
        points = [(0, init)] + [(int(f.name.split("_")[1]), f) for f in folders if f in scores]
        curves[objective] = [
            {
                "step": step,
                "scores": {n: scores[folder][n] for n in names},
                "average": statistics.fmean(scores[folder][n] for n in names),
                **({"seed_scores": scores[folder]["_seeds"]} if "_seeds" in scores[folder] else {}),
            }
            for step, folder in points
        ]
    return curves


def speedup_of(curves: dict[str, list[dict[str, Any]]], steps: int) -> dict[str, Any]:
    """MLM's final average, the initial encoder's, and TACO's steps (and speed-up) to reach MLM's final."""
    target = curves["mlm"][-1]["average"]
    init = curves["mlm"][0]["average"]
    reached = steps_to_reach([(p["step"], p["average"]) for p in curves["taco"]], target)
    # Without a gap between the random encoder and MLM's final one the ratio measures noise, not pre-training.
    valid = init < target
    return {
        "mlm_final_average": target,
        "init_average": init,
        "init_gap": target - init,
        "taco_steps_to_mlm_final": reached,
        "speedup": steps / reached if valid and reached else None,
        "valid": valid,
    }


def main() -> None:
    args = parse_args()
    if args.finetune_every % args.eval_every:
        raise SystemExit("--finetune-every must be a multiple of --eval-every")
    args.out.mkdir(parents=True, exist_ok=True)
    world = prepare_world(args)
    corpus = ["builtin:english", str(world)]
    documents = load_corpora(corpus)
    tokenizer = train_wordpiece(documents, args.vocab_size, args.out / "tokenizer")
    print(f"corpus: {len(documents)} documents; WordPiece vocabulary of {len(tokenizer)} tokens")
    tasks = task_dirs(world, args)
    names = list(tasks)

    # The common initial encoder, exactly as run_text_pretrain builds it from the same seed.
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    encoder, head, tok = build_text_model(args.model, str(args.out / "tokenizer"))
    save_hf_bert(args.out / "init", encoder, head, tok)

    # Spawned workers: forking after torch has started its thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = {o: pool.submit(pretrain, o, corpus, args.out / "tokenizer", args) for o in ("mlm", "taco")}
        reports = {objective: future.result() for objective, future in futures.items()}
        start = time.perf_counter()
        checkpoints = {o: sorted((args.out / o / "encoders").iterdir()) for o in ("mlm", "taco")}
        probed = [args.out / "init"] + [f for o in checkpoints for f in checkpoints[o]]
        finetuned = [args.out / "init"] + [
            f
            for o in checkpoints
            for f in checkpoints[o]
            if int(f.name.split("_")[1]) % args.finetune_every == 0 or f == checkpoints[o][-1]
        ]
        scores = downstream(pool, probed, finetuned, tasks, args)
        downstream_seconds = time.perf_counter() - start
    curves = {r: reading_curves(scores[r], checkpoints, args.out / "init", names) for r in READINGS}
    summary = {r: speedup_of(curves[r], args.steps) for r in READINGS}
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "pretrain": {
            o: {"seconds": r["seconds"], "final_losses": r["summary"]["final_losses"], "corpus": r["corpus"]}
            for o, r in reports.items()
        },
        "curves": curves,
        "speedups": summary,
        "downstream_seconds": downstream_seconds,
        **loss_speedup(args.out, args.steps),
    }
    (args.out / "bench_taco.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    for reading in READINGS:
        for objective, curve in curves[reading].items():
            for point in curve:
                append_result(
                    args.out / "results.jsonl",
                    {
                        "model": f"{args.model}-{objective}-step{point['step']}",
                        "task": f"{reading}_average",
                        "dataset": "world:" + args.tasks,
                        "split": "id",
                        "metric": "dev_average",
                        "value": point["average"],
                        "seed": args.seed,
                    },
                )
    for reading in READINGS:
        print_table(reading, curves[reading], names, summary[reading], args.steps)
    for objective, report in reports.items():
        losses = ", ".join(f"{k} {v:.3f}" for k, v in report["summary"]["final_losses"].items())
        print(f"{objective}: {report['seconds']:.0f} s pre-training; final {losses}")
    print(f"downstream: {downstream_seconds:.0f} s")
    print(
        f"MLM loss (window mean) at MLM's final step: {result['mlm_final_mlm_loss']:.3f}; TACO reaches it at step "
        f"{result['taco_steps_to_mlm_final_mlm_loss']}: speed-up {result['mlm_loss_speedup']}"
    )


def print_table(
    reading: str, curves: dict[str, list[dict[str, Any]]], names: list[str], summary: dict[str, Any], steps: int
) -> None:
    print(f"\n[{reading}]\n{'objective':<10}{'step':>6}" + "".join(f"{n[:12]:>14}" for n in names) + f"{'average':>10}")
    for objective, curve in curves.items():
        for point in curve:
            cells = "".join(f"{point['scores'][n]:>14.1f}" for n in names)
            print(f"{objective:<10}{point['step']:>6}{cells}{point['average']:>10.1f}")
    target, reached = summary["mlm_final_average"], summary["taco_steps_to_mlm_final"]
    print(f"MLM average at its final step {steps}: {target:.1f}; initial encoder {summary['init_average']:.1f}")
    if not summary["valid"]:
        print("the initial encoder already reaches it: this reading does not separate pre-training from none")
    elif reached is None:
        print("TACO never reached it within the run")
    else:
        print(f"TACO reaches it at step {reached:.0f}: {summary['speedup']:.2f}x fewer steps (paper: 5x, 50k vs 250k)")


if __name__ == "__main__":
    main()
