"""CCLM pre-training (``grainvl pretrain`` with ``objectives: cclm``): cross-view objectives on the world.

Chosen when ``PretrainConfig.objectives`` is ``cclm`` (``--set objectives=cclm``) or, left empty, when the
model preset says ``"objectives": "cclm"`` (:func:`grainvl.recipes.pretrain.objectives_of`). The data: the
multilingual image lines (``image_text_multilingual.jsonl``), the parallel text (``para_text.jsonl``) and,
when present, the region lines of ``data.split``; the settings under ``cclm`` (:class:`CrossViewDataConfig`).

The official stepping (davinci_cclm_vlue.md B.4), through the one training loop: every batch is one
optimizer step of :func:`grainvl.train.loop.train` (a parallel-text step, then the image or region step of
the same iteration, :class:`~grainvl.data.parallel_text.CrossViewSchedule`), and :class:`PerIterationScheduler`
advances the learning-rate schedule once per iteration, so both steps of an iteration use the same lr and the
schedule's length is the number of iterations. What differs from the official loop: ``train.steps`` counts
optimizer steps (two per iteration, three on the first when region data exists), the loop's log window averages
each loss over the steps that computed it, and the coins choosing the kinds are keyed by (seed, iteration),
identical on every rank. The run ends with zero-shot retrieval on each evaluation split, **per caption
language**, next to chance; ``results.jsonl`` rows carry ``lang``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from grainvl.data.formats.validate import allow_outside_root, read_jsonl_records, skipping_bad_records
from grainvl.data.parallel_text import (
    CrossViewFiles,
    CrossViewSchedule,
    build_cross_view_streams,
    caption_languages,
)
from grainvl.data.pretrain import ImageTextEval, PretrainDataConfig, eval_image_text, resolve_under
from grainvl.errors import BadRecords
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.recipes.pretrain import EvalData, PretrainConfig, _optimizer, data_config, evaluate_sets
from grainvl.recipes.scaffold import Run, format_cost, metric_rows, run_recipe, seed_model_init, summary_costs
from grainvl.tasks.base import split_tag
from grainvl.tasks.cclm import CrossViewTask, CrossViewWeights
from grainvl.train.checkpoint import capture_rng_state, restore_rng_state
from grainvl.train.loop import train
from grainvl.train.optim import build_scheduler

RETRIEVAL_KEYS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10")


class PerIterationScheduler:
    """Steps the wrapped lr scheduler only when the schedule's last batch ended an iteration.

    The loop calls ``step()`` after every optimizer step; the official CCLM loop steps its scheduler once per
    iteration, after the main step. State is the wrapped scheduler's (the position within the iteration
    lives in the schedule's own state, so a resume mid-iteration continues correctly).
    """

    def __init__(self, scheduler: Any, schedule: CrossViewSchedule) -> None:
        self.scheduler, self.schedule = scheduler, schedule

    def step(self) -> None:
        if self.schedule.ends_iteration:
            self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def find_files(cfg: PretrainConfig) -> CrossViewFiles:
    """The CCLM training files: explicit ``files.train_file`` / ``train_file_text`` / ``train_file_regions``, else
    by name under ``data.world`` (FileNotFoundError naming what was looked for)."""
    root = Path(cfg.data.world)
    if cfg.files.train_file or cfg.files.train_file_text:
        files = CrossViewFiles.from_sources(root, cfg.files)
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"pretrain: data root not found: {root} (make a world with `grainvl world`)")
        image_root = resolve_under(root, cfg.files.image_root) if cfg.files.image_root else None
        files = CrossViewFiles.find(root, cfg.data.split, image_root)
    if not files.image or not files.para:
        raise FileNotFoundError(
            f"pretrain (cclm): split {cfg.data.split!r} under {root} needs image_text_multilingual*.jsonl (or "
            "image_text*.jsonl) and para_text*.jsonl (or files.train_file and files.train_file_text)"
        )
    if cfg.files.allow_outside_root:
        for folder in (root, files.root):
            allow_outside_root(folder)
    return files


def language_evals(
    cfg: PretrainConfig, files: CrossViewFiles, tokenizer: Any, dcfg: PretrainDataConfig
) -> dict[str, dict[str, ImageTextEval]]:
    """``{split: {lang: retrieval set}}``: each evaluation split's multilingual captions, one set per language."""
    out: dict[str, dict[str, ImageTextEval]] = {}
    root = Path(cfg.data.world)
    for split in dict.fromkeys(cfg.eval.splits):
        found = CrossViewFiles.find(root, split, files.root).image
        if not found:
            print(
                f"pretrain: skipping zero-shot evaluation on {split!r}: no image–caption file for it", file=sys.stderr
            )
            continue
        languages = _languages(found[0], cfg.cclm.languages) or [None]
        out[split] = {}
        for lang in languages:
            data = eval_image_text(
                root, split, tokenizer, dataclasses.replace(dcfg, language=lang), found[0], files.root
            )
            data.images.check_paths()
            out[split][lang or dcfg.caption_language] = data
    return out


def _languages(path: Path, chosen: tuple[str, ...]) -> list[str]:
    """The caption languages of an evaluation file (its dict keys), restricted to ``chosen`` when given."""
    records = read_jsonl_records(path, lambda record, where: None)  # eval_image_text validates it afterwards
    return [lang for lang in caption_languages(records) if not chosen or lang in chosen]


def run_cclm(cfg: PretrainConfig, resume: str | None = None) -> dict[str, Any]:
    """CCLM pre-training from ``cfg`` (python or torchrun); returns the run summary on rank 0."""

    def body(run: Run) -> dict[str, Any]:
        with skipping_bad_records(cfg.skip_bad) as bad:
            return _run(cfg, run, resume, bad)

    return run_recipe(cfg.train.run_dir, body, cfg.torch_threads)


def _run(cfg: PretrainConfig, run: Run, resume: str | None, bad: BadRecords) -> dict[str, Any]:
    env = run.env
    files = find_files(cfg)
    seed_model_init(cfg.train.seed)
    model = create_model(cfg.model)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    tokenizer = get_tokenizer(model.config)
    dcfg = data_config(model, cfg.data)
    weights = CrossViewWeights(**dataclasses.asdict(cfg.weights), para=cfg.cclm.para_weight)
    task = CrossViewTask(model, weights)  # checks the text/vision widths before any file is read
    rng = capture_rng_state()  # reading the evaluation files must not move the training draws
    evals = language_evals(cfg, files, tokenizer, dcfg) if run.is_main else {}
    restore_rng_state(rng)
    streams = build_cross_view_streams(
        files, tokenizer, dcfg, cfg.cclm, cfg.train.seed, env.rank, env.world_size, cfg.data.threads, bad
    )
    if run.is_main and cfg.skip_bad:
        print(f"pretrain: {bad.summary()}", file=sys.stderr)
    schedule = CrossViewSchedule(
        streams, cfg.train.seed, cfg.cclm.para_prob, cfg.cclm.region_prob, repeat=cfg.train.grad_accum
    )
    optimizer = _optimizer(task, cfg.optim)
    iterations = schedule.iterations_for(cfg.train.steps)
    scheduler = PerIterationScheduler(
        build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=iterations)), schedule
    )
    run.write_config(cfg)
    summary = train(task, schedule, optimizer, scheduler, cfg.train, env, resume=resume)
    if not run.is_main:
        return {}
    model.save_pretrained(run.dir / "model", tokenizer=tokenizer)
    evaluations = {
        split: {lang: evaluate_sets(model, EvalData(data, None), cfg.eval.k_test) for lang, data in sets.items()}
        for split, sets in evals.items()
    }
    _append_rows(run, cfg, evaluations, summary_costs(summary, cfg.train.seed))
    report = {
        "summary": summary.to_dict(),
        "evaluations": evaluations,
        "iterations": iterations,
        "streams": sorted(streams),
        "model_dir": str(run.dir / "model"),
        "skipped_records": len(bad.errors),
    }
    run.write_summary(report)
    return report


def _append_rows(run: Run, cfg: PretrainConfig, evaluations: dict[str, dict[str, Any]], costs: dict) -> None:
    """One results row per (split, language, metric), with ``lang``."""
    dataset = "world" if (Path(cfg.data.world) / "manifest.json").exists() else str(cfg.data.world)
    for split, by_lang in evaluations.items():
        for lang, result in by_lang.items():
            rows = metric_rows(
                result["metrics"],
                model=cfg.model,
                task="zeroshot_retrieval",
                dataset=dataset,
                split=split_tag(split),
                costs=costs,
            )
            run.append([{**row, "lang": lang} for row in rows])


def format_cclm_report(report: dict[str, Any]) -> str:
    """Per split: one row per caption language with R@1/5/10 both ways, then chance, then the cost line."""
    lines = []
    for split, by_lang in report["evaluations"].items():
        any_result = next(iter(by_lang.values()))
        lines.append(f"zero-shot retrieval on {split} ({any_result['images']} images), per caption language:")
        lines.append(f"  {'lang':<8}" + "".join(f"{key:>9}" for key in RETRIEVAL_KEYS))
        for lang, result in by_lang.items():
            lines.append(f"  {lang:<8}" + "".join(f"{result['metrics'][key]:>9.1f}" for key in RETRIEVAL_KEYS))
        lines.append(f"  {'chance':<8}" + "".join(f"{any_result['chance'][key]:>9.1f}" for key in RETRIEVAL_KEYS))
    lines.append(format_cost(report["summary"]))
    lines.append(f"model saved to {report['model_dir']}")
    return "\n".join(lines)
