"""CCLM's headline claims at world scale: zero-shot cross-lingual transfer on the IGLUE-style tasks, side by side.

    python benchmarks/bench_cclm.py [--images 80] [--pretrain-steps 8] [--finetune-steps 6] [--out RUN]

One world, then in one process, one run after another with the same seed, steps and batch sizes:

* ``CCLM``: ``cclm-small`` pre-trained with the CCLM objectives (image–caption batches with a caption drawn
  from six languages, and parallel-text batches);
* ``CCLM w/o parallel text``: the same preset and steps with ``cclm.para_prob=0`` (image and region
  batches only, multilingual captions still drawn);
* ``xvlm-small (en only)``: the English-only model, pre-trained with the X²-VLM objectives on the world's
  English captions (``image_text.jsonl``) of the same images;
* ``translate-test``: the English-only model's fine-tuned runs tested on each item's English side.

Each pre-trained model is fine-tuned on the English train split of every task with the same budget and
tested on every language zero-shot (the ``grainvl finetune`` recipe; translate-test re-scores the English-only
model's fine-tuned runs, no second fine-tune). Prints, per task, a table (rows: the four settings; columns:
the languages and the average without English) and the two claims of the paper with their numbers:
zero-shot transfer reaches or beats translate-test, and CCLM beats the English-only model's non-English
average by >= 10 points. Writes ``OUT/bench_cclm.json`` and ``OUT/bench_cclm.md``.

The comparison includes the tokenizer on purpose: ``cclm-small`` has the world-multilingual Unigram
vocabulary, ``xvlm-small`` MiniLM's English WordPiece (Japanese and Chinese mostly ``[UNK]``), as the paper
compares a multilingual model with English-only ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from grainvl.config import load_config
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.recipes.cclm import run_cclm
from grainvl.recipes.finetune import FinetuneConfig, finetune, load_finetuned
from grainvl.recipes.pretrain import PretrainConfig, run_pretrain
from grainvl.tasks.iglue import ENGLISH, with_options
from grainvl.utils.fileio import atomic_write_text

CCLM, NO_PARA, ENGLISH_ONLY, TRANSLATE_TEST = "CCLM", "CCLM w/o parallel text", "xvlm-small (en only)", "translate-test"
SETTINGS = (CCLM, NO_PARA, ENGLISH_ONLY, TRANSLATE_TEST)
PRIMARY = {"xvnli": "acc", "marvl": "acc", "xflickrco": "r_mean", "xgqa": "acc"}
MARGIN = 10.0  # the paper's gap over English-only models, in points


def pretrain_values(args: argparse.Namespace, world: Path, run_dir: Path) -> dict[str, Any]:
    """The settings every pre-training run shares (same steps, batches, seed and evaluation)."""
    return {
        "data.world": str(world),
        "train.steps": args.pretrain_steps,
        "train.run_dir": str(run_dir),
        "train.log_every": max(1, args.pretrain_steps // 4),
        "data.image_batch_size": args.batch_size,
        "data.region_images": max(1, args.batch_size // 2),
        "cclm.para_batch_size": args.batch_size,
        "eval.splits": ["test"],
        "torch_threads": args.threads,
    }


def pretrain_all(args: argparse.Namespace, world: Path) -> dict[str, str]:
    """The three pre-trained models: ``{setting: model folder}``."""
    plans = {
        CCLM: {"model": "cclm-small", "objectives": "cclm"},
        NO_PARA: {"model": "cclm-small", "objectives": "cclm", "cclm.para_prob": 0.0},
        ENGLISH_ONLY: {"model": "xvlm-small", "objectives": "xvlm"},
    }
    models = {}
    for setting, values in plans.items():
        run_dir = args.out / "pretrain" / _slug(setting)
        cfg = load_config(PretrainConfig, values={**pretrain_values(args, world, run_dir), **values})
        print(f"[bench_cclm] pre-training {setting}: {cfg.model}, {cfg.train.steps} steps", flush=True)
        report = run_cclm(cfg) if values["objectives"] == "cclm" else run_pretrain(cfg)
        models[setting] = report["model_dir"]
    return models


def finetune_task(args: argparse.Namespace, world: Path, task: str, models: dict[str, str]) -> dict[str, dict]:
    """``{setting: {metric@lang: value}}`` of one task on the test split, translate-test included."""
    scores: dict[str, dict] = {}
    for setting, model_dir in models.items():
        run_dir = args.out / "finetune" / f"{task}-{_slug(setting)}"
        values = {
            "task": task,
            "model": model_dir,
            "world": str(world),
            "label": setting,
            "train.steps": args.finetune_steps,
            "train.run_dir": str(run_dir),
            "train.log_every": max(1, args.finetune_steps // 4),
            "data.batch_size": args.batch_size,
            "eval_splits": ["test"],
            "torch_threads": args.threads,
        }
        print(f"[bench_cclm] fine-tuning {task} on English: {setting}", flush=True)
        scores[setting] = finetune(load_config(FinetuneConfig, values=values))["evaluations"]["test"]
        if setting == ENGLISH_ONLY:
            scores[TRANSLATE_TEST] = translate_test(run_dir, world)
    return scores


def translate_test(run_dir: Path, world: Path) -> dict[str, float]:
    """The fine-tuned English-only run scored on each test item's English side (``--translate-test``)."""
    task, module, tokenizer = load_finetuned(run_dir, world)
    with torch.no_grad():
        return with_options(task, translate_test=True).evaluate(module, tokenizer, world, "test")


def language_table(scores: dict[str, dict[str, float]], metric: str) -> tuple[list[str], dict[str, dict[str, float]]]:
    """``(languages, {setting: {lang | "avg": value}})``: English first, then the others as found; ``avg`` is
    the mean over the non-English languages (the IGLUE protocol)."""
    found = {key.split("@", 1)[1] for row in scores.values() for key in row if key.startswith(f"{metric}@")}
    languages = sorted(found, key=lambda lang: (lang != ENGLISH, lang))
    table: dict[str, dict[str, float]] = {}
    for setting, row in scores.items():
        cells = {lang: row[f"{metric}@{lang}"] for lang in languages if f"{metric}@{lang}" in row}
        others = [value for lang, value in cells.items() if lang != ENGLISH]
        table[setting] = {**cells, "avg": sum(others) / len(others) if others else float("nan")}
    return languages, table


def claims(tables: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """The paper's two claims read from the per-task tables' non-English averages (and their mean over tasks)."""
    per_task = {
        task: {s: t[s]["avg"] for s in (CCLM, ENGLISH_ONLY, TRANSLATE_TEST) if s in t} for task, t in tables.items()
    }
    mean = {s: _mean([row[s] for row in per_task.values() if s in row]) for s in (CCLM, ENGLISH_ONLY, TRANSLATE_TEST)}
    readings: dict[str, dict[str, Any]] = {}
    for scope, row in {**per_task, "mean over tasks": mean}.items():
        zero_shot, tt, english = row.get(CCLM), row.get(TRANSLATE_TEST), row.get(ENGLISH_ONLY)
        readings[scope] = {
            "zero-shot CCLM >= translate-test": None if zero_shot is None or tt is None else zero_shot >= tt,
            "zero_shot_minus_translate_test": _diff(zero_shot, tt),
            f"CCLM - English-only >= {MARGIN:g}": None
            if zero_shot is None or english is None
            else zero_shot - english >= MARGIN,
            "cclm_minus_english_only": _diff(zero_shot, english),
        }
    return readings


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def format_tables(tables: dict[str, Any], languages: dict[str, list[str]], metrics: dict[str, str]) -> str:
    """Markdown: one per-language table per task (rows: settings; columns: languages, avg without en)."""
    lines = []
    for task, table in tables.items():
        columns = [*languages[task], "avg (no en)"]
        lines += [f"**{task}** ({metrics[task]}, test split)", "", "| setting | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---:|" * len(columns))
        for setting in SETTINGS:
            if setting in table:
                cells = [table[setting].get(lang) for lang in languages[task]] + [table[setting]["avg"]]
                lines.append(f"| {setting} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def format_claims(readings: dict[str, dict[str, Any]]) -> str:
    """One line per scope: the two gaps and whether each claim holds."""
    lines = ["| scope | CCLM − translate-test | holds | CCLM − English-only | ≥ 10 |", "|---|---:|:--:|---:|:--:|"]
    for scope, r in readings.items():
        tt, en = r["zero_shot_minus_translate_test"], r["cclm_minus_english_only"]
        lines.append(
            f"| {scope} | {_signed(tt)} | {_yes(r['zero-shot CCLM >= translate-test'])} | {_signed(en)} "
            f"| {_yes(r[f'CCLM - English-only >= {MARGIN:g}'])} |"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _slug(setting: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in setting.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cclm"), help="output folder (world, runs, report)")
    parser.add_argument("--world", type=Path, default=None, help="an existing world (default: generate OUT/world)")
    parser.add_argument("--images", type=int, default=80, help="images of the generated world (10%% are test)")
    parser.add_argument("--pretrain-steps", type=int, default=8, help="optimizer steps of each pre-training")
    parser.add_argument("--finetune-steps", type=int, default=6, help="optimizer steps of each English fine-tune")
    parser.add_argument("--batch-size", type=int, default=8, help="image, parallel-text and fine-tuning batch")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=list(PRIMARY), help="comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="world seed")
    args = parser.parse_args()
    unknown = [task for task in args.tasks if task not in PRIMARY]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {list(PRIMARY)}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    world = args.world
    if world is None:
        world = args.out / "world"
        # No videos: CCLM does not use them, and X²-VLM would add a video batch to every English-only step.
        generate_world(WorldConfig(images=args.images, videos=0, seed=args.seed), world)
    models = pretrain_all(args, world)
    pretrain_s = time.perf_counter() - start
    scores: dict[str, dict] = {}
    for task in args.tasks:  # the report is rewritten after each task, so a late failure keeps the others
        scores[task] = finetune_task(args, world, task, models)
        markdown = write_report(args, scores, pretrain_s, time.perf_counter() - start)
    print(markdown)


def write_report(args: argparse.Namespace, scores: dict[str, dict], pretrain_s: float, wall_s: float) -> str:
    """Tables and claims of the tasks done so far into ``OUT/bench_cclm.{json,md}``; returns the Markdown."""
    tables, languages = {}, {}
    for task, by_setting in scores.items():
        languages[task], tables[task] = language_table(by_setting, PRIMARY[task])
    readings = claims(tables)
    sizes = {k: v for k, v in vars(args).items() if k not in ("out", "world")}
    markdown = (
        f"{format_tables(tables, languages, PRIMARY)}\n{format_claims(readings)}\n\n"
        f"sizes: {json.dumps(sizes)}; wall time {wall_s:.0f} s (pre-training {pretrain_s:.0f} s)\n"
    )
    report = {"sizes": sizes, "wall_s": wall_s, "pretrain_s": pretrain_s, "scores": scores, "tables": tables,
              "claims": readings}  # fmt: skip
    atomic_write_text(args.out / "bench_cclm.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / "bench_cclm.md", markdown)
    return markdown


if __name__ == "__main__":
    main()
