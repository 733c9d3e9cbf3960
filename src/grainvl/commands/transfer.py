"""``grainvl transfer tune|embed|rank|evaluate``: intermediate-task selection with PET task embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from grainvl.commands import add_config_args, comma_list, config_from_args, shortcut
from grainvl.utils.fileio import require_writable_dir, require_writable_file

METHODS = ("prompt", "prefix", "lora", "bitfit")
VARIANTS = ("raw", "delta", "centered")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "transfer",
        help="task embeddings from parameter-efficient tuning; rank intermediate tasks",
        description="Tune PET parameters per task, embed tasks, rank source tasks for a target, and "
        "evaluate the rankings against real intermediate-task transfer (NDCG, rank of the top source, regret@k).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    tune = actions.add_parser("tune", help="PET-tune every task and save its tuned parameters")
    add_config_args(tune, "grainvl.recipes.transfer:TransferTuneConfig")
    _common(tune)
    shortcut(tune, "--method", field="method", choices=METHODS, help="PET method (default: prompt)")
    shortcut(tune, "--steps", field="steps", type=int, help="PET optimizer steps per task (default: 60)")
    shortcut(tune, "--snapshot-steps", field="snapshot_steps", parse=_steps, help="early-checkpoint steps to keep too")
    tune.set_defaults(func=_tune)

    embed = actions.add_parser(
        "embed", help="task embeddings and similarities from a 'tune' run; writes a heat-map PNG"
    )
    add_config_args(embed, "grainvl.recipes.transfer:TransferEmbedConfig")
    _library(embed)
    embed.set_defaults(func=_embed)

    rank = actions.add_parser("rank", help="rank source tasks for each target by embedding similarity")
    add_config_args(rank, "grainvl.recipes.transfer:TransferRankConfig")
    _library(rank)
    shortcut(rank, "--target", field="target", help="only this target task (default: every task)")
    shortcut(rank, "--top", field="top", type=int, help="sources to print per target (default: 5)")
    rank.set_defaults(func=_rank)

    evaluate = actions.add_parser(
        "evaluate", help="full experiment: PET embeddings vs TextEmb/TaskEmb against real transfer"
    )
    add_config_args(evaluate, "grainvl.recipes.transfer:TransferEvaluateConfig")
    _common(evaluate)
    shortcut(
        evaluate, "--methods", field="methods", parse=comma_list, help="comma-separated PET methods (default: all)"
    )
    shortcut(evaluate, "--pet-steps", field="pet_steps", type=int, help="PET steps per task (default: 60)")
    shortcut(
        evaluate,
        "--snapshot-steps",
        field="snapshot_steps",
        parse=_steps,
        help="early-checkpoint steps to evaluate too",
    )
    shortcut(evaluate, "--ft-steps", field="ft_steps", type=int, help="steps of each ground-truth run (default: 60)")
    shortcut(evaluate, "--ft-lr", field="ft_lr", type=float, help="fine-tuning learning rate (default: 1e-4)")
    shortcut(
        evaluate,
        "--baseline-examples",
        field="baseline_examples",
        type=int,
        help="examples per task for TextEmb/TaskEmb",
    )
    shortcut(evaluate, "--max-dev", field="max_dev", type=int, help="score at most this many dev examples per task")
    shortcut(
        evaluate,
        "--target-train",
        field="target_train",
        type=int,
        help="full -> limited regime (Vu et al.): targets train on only this many examples (default: all)",
    )
    shortcut(evaluate, "--k", field="k", type=int, help="k of regret@k (default: 3)")
    shortcut(evaluate, "--gain", field="gain", choices=("exp", "linear"), help="NDCG gain (default: exp, as Vu et al.)")
    shortcut(evaluate, "--cache", field="cache", type=Path, help="ground-truth cache folder (default: OUT/cache)")
    evaluate.set_defaults(func=_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    shortcut(
        parser,
        "--tasks",
        field="tasks",
        type=Path,
        help="task root: a world folder, W/text, or folders with glue/ and squad/ tasks",
    )
    shortcut(parser, "--out", field="out", type=Path, help="output folder")
    shortcut(
        parser, "--model", field="model", type=Path, help="Hugging Face BERT folder (default: the packaged MiniLM)"
    )
    shortcut(parser, "--layers", field="layers", type=int, help="keep only the first N encoder layers (cheaper)")
    shortcut(parser, "--names", field="names", parse=comma_list, help="comma-separated task names (default: all found)")
    shortcut(parser, "--per-kind", field="per_kind", type=int, help="use the first N classification and N QA tasks")
    shortcut(parser, "--kinds", field="kinds", parse=comma_list, help="task kinds (default: classification,qa)")
    shortcut(parser, "--batch-size", field="batch_size", type=int, help="batch size (default: 16)")
    shortcut(parser, "--max-length", field="max_length", type=int, help="max tokens per example (default: 128)")
    shortcut(parser, "--max-train", field="max_train", type=int, help="at most this many training examples per task")
    shortcut(parser, "--seed", field="seed", type=int, help="seed for data order and heads (default: 0)")


def _library(parser: argparse.ArgumentParser) -> None:
    shortcut(parser, "--run", field="run", type=Path, help="the --out folder of 'transfer tune'")
    shortcut(parser, "--method", field="method", choices=METHODS, help="which tuned method (default: prompt)")
    shortcut(
        parser, "--variant", field="variant", choices=VARIANTS, help="raw, delta (minus init, default) or centered"
    )
    shortcut(parser, "--step", field="step", type=int, help="use the snapshot at this step instead of the final one")


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in comma_list(text)}))
    except ValueError:
        raise ValueError(f"--snapshot-steps must be comma-separated integers, got {text!r}") from None


def _model(cfg: Any) -> str:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import packaged_minilm_path

    return str(cfg.model or packaged_minilm_path())


def _tasks(cfg: Any) -> list:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import discover_tasks

    return discover_tasks(Path(cfg.tasks), list(cfg.kinds), list(cfg.names) or None, cfg.per_kind)


def _tune(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from safetensors.torch import save_file  # deferred with the recipe: it loads torch

    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import TransferTuneConfig
    from grainvl.transfer.petl import PetlConfig, load_hf_backbone, tune_task
    from grainvl.utils.fileio import atomic_write_text

    run = config_from_args(TransferTuneConfig, args)
    tasks = _tasks(run)
    cfg = PetlConfig(
        method=run.method,
        steps=run.steps,
        batch_size=run.batch_size,
        max_length=run.max_length,
        snapshot_steps=tuple(run.snapshot_steps),
        max_train_examples=run.max_train,
        seed=run.seed,
    )
    backbone, tokenizer = load_hf_backbone(_model(run), run.layers)
    folder = Path(run.out) / "pet" / run.method
    require_writable_dir(folder)  # before tuning: a bad --out is one line now, not after the work
    meta = {"model": _model(run), "layers": run.layers, "config": {k: v for k, v in vars(cfg).items()}, "tasks": {}}
    for task in tasks:
        result = tune_task(backbone, tokenizer, task.path, cfg)
        tensors = {f"final.{n}": v.contiguous() for n, v in result.params.items()}
        tensors |= {f"initial.{n}": v.contiguous() for n, v in result.initial.items()}
        for step, params in result.snapshots.items():
            tensors |= {f"step{step}.{n}": v.contiguous() for n, v in params.items()}
        save_file(tensors, str(folder / f"{task.name}.safetensors"))
        meta["tasks"][task.name] = {
            "kind": task.kind,
            "path": str(task.path),
            "seconds": result.seconds,
            "final_loss": result.losses[-1],
        }
        print(
            f"{task.name:<20} {task.kind:<15} loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}  "
            f"{result.seconds:.1f}s  ({result.trainable} params)"
        )
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1, default=str) + "\n")
    print(f"wrote {folder}")
    return 0


def _load_library(run: Path, method: str, step: int | None) -> tuple[dict, dict, dict]:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from grainvl.utils.fileio import load_model_safetensors  # deferred with the recipe: it loads torch

    folder = run / "pet" / method
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: missing; run 'grainvl transfer tune --method {method} --out {run}' first"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    prefix = "final." if step is None else f"step{step}."
    params, initial = {}, {}
    for name in meta["tasks"]:
        tensors = load_model_safetensors(folder / f"{name}.safetensors")  # a truncated file: one line naming it
        params[name] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        initial[name] = {k[len("initial.") :]: v for k, v in tensors.items() if k.startswith("initial.")}
        if not params[name]:
            raise ValueError(
                f"{folder / name}.safetensors has no parameters for step {step} (tune with --snapshot-steps)"
            )
    return params, initial, meta


def _similarity(cfg: Any) -> tuple[dict, dict]:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import _as_similarity
    from grainvl.transfer.task_embeddings import library_embeddings

    params, initial, _ = _load_library(Path(cfg.run), cfg.method, cfg.step)
    embeddings = library_embeddings(cfg.method, params, initial, cfg.variant)
    return _as_similarity(embeddings), embeddings


def _embed(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import io

    import numpy as np  # deferred with the recipe: `grainvl --help` stays fast

    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import TransferEmbedConfig, plot_heatmap
    from grainvl.utils.fileio import atomic_write_bytes

    cfg = config_from_args(TransferEmbedConfig, args)
    run = Path(cfg.run)
    similarity, embeddings = _similarity(cfg)
    tag = f"{cfg.method}-{cfg.variant}" + (f"-step{cfg.step}" if cfg.step else "")
    buffer = io.BytesIO()
    np.savez(buffer, **{name: vec.astype(np.float32) for name, vec in embeddings.items()})
    atomic_write_bytes(run / "embeddings" / f"{tag}.npz", buffer.getvalue())
    names = sorted(similarity)
    print(f"{'':<20}" + "".join(f"{n[:8]:>9}" for n in names))
    for t in names:
        print(f"{t:<20}" + "".join(f"{similarity[t].get(s, 1.0):>9.3f}" for s in names))
    png = plot_heatmap(similarity, run / "embeddings" / f"{tag}.png", f"task similarity: {tag}")
    print(f"wrote {run / 'embeddings' / (tag + '.npz')} and {png}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import TransferRankConfig
    from grainvl.transfer.ranking import rank_sources

    cfg = config_from_args(TransferRankConfig, args)
    similarity, _ = _similarity(cfg)
    if cfg.target is not None and cfg.target not in similarity:
        raise ValueError(f"--target {cfg.target!r} is not among the tuned tasks {sorted(similarity)}")
    for target in [cfg.target] if cfg.target else sorted(similarity):
        ranked = rank_sources(similarity[target])[: cfg.top]
        print(f"{target}: " + ", ".join(f"{s} ({v:.3f})" for s, v in ranked))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from grainvl.recipes.transfer import (
        EvaluateConfig,
        TransferEvaluateConfig,
        format_table,
        plot_heatmap,
        run_evaluate,
    )
    from grainvl.transfer.ground_truth import FinetuneSettings
    from grainvl.utils.fileio import atomic_write_text

    run = config_from_args(TransferEvaluateConfig, args)
    tasks = _tasks(run)
    methods = tuple(run.methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    settings = FinetuneSettings(
        encoder=_model(run),
        num_layers=run.layers,
        steps=run.ft_steps,
        batch_size=run.batch_size,
        lr=run.ft_lr,
        max_length=run.max_length,
        seed=run.seed,
        max_train_examples=run.max_train,
        max_dev_examples=run.max_dev,
        target_train_examples=run.target_train,
    )
    cfg = EvaluateConfig(
        encoder=_model(run),
        num_layers=run.layers,
        methods=methods,
        pet_steps=run.pet_steps,
        pet_batch_size=run.batch_size,
        snapshot_steps=tuple(run.snapshot_steps),
        finetune=settings,
        baseline_examples=run.baseline_examples,
        max_length=run.max_length,
        k=run.k,
        gain=run.gain,
        seed=run.seed,
    )
    out = Path(run.out)
    # Before the (minutes of) fine-tuning: an --out that cannot be written is one line now, not after the work.
    require_writable_dir(out)
    for name in ("results.json", "results.txt"):
        require_writable_file(out / name)
    report = run_evaluate(tasks, cfg, Path(run.cache) if run.cache else out / "cache")
    table = format_table(report, run.k)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(report.to_json(), indent=1) + "\n")
    atomic_write_text(out / "results.txt", table + "\n")
    pngs = []
    for label in [f"{m}/delta" for m in methods] + ["textemb", "taskemb/cls_output"]:
        if label in report.similarities:
            pngs.append(
                plot_heatmap(report.similarities[label], out / f"similarity_{label.replace('/', '_')}.png", label)
            )
    print(f"wrote {out / 'results.json'}, {out / 'results.txt'} and {len(pngs)} heat-maps")
    return 0
