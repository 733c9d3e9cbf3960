"""``grainvl transfer tune|embed|rank|evaluate``: intermediate-task selection with PET task embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    _common(tune)
    tune.add_argument("--method", choices=METHODS, default="prompt", help="PET method (default: prompt)")
    tune.add_argument("--steps", type=int, default=60, help="PET optimizer steps per task (default: 60)")
    tune.add_argument("--snapshot-steps", default="", help="comma-separated early-checkpoint steps to keep too")
    tune.set_defaults(func=_tune)

    embed = actions.add_parser(
        "embed", help="task embeddings and similarities from a 'tune' run; writes a heat-map PNG"
    )
    embed.add_argument("--run", type=Path, required=True, help="the --out folder of 'transfer tune'")
    embed.add_argument("--method", choices=METHODS, default="prompt", help="which tuned method to embed")
    embed.add_argument("--variant", choices=VARIANTS, default="delta", help="raw, delta (minus init) or centered")
    embed.add_argument(
        "--step", type=int, default=None, help="use the snapshot at this step instead of the final parameters"
    )
    embed.set_defaults(func=_embed)

    rank = actions.add_parser("rank", help="rank source tasks for each target by embedding similarity")
    rank.add_argument("--run", type=Path, required=True, help="the --out folder of 'transfer tune'")
    rank.add_argument("--method", choices=METHODS, default="prompt", help="which tuned method to use")
    rank.add_argument("--variant", choices=VARIANTS, default="delta", help="embedding variant")
    rank.add_argument("--target", default=None, help="only this target task (default: every task)")
    rank.add_argument("--top", type=int, default=5, help="sources to print per target (default: 5)")
    rank.set_defaults(func=_rank)

    evaluate = actions.add_parser(
        "evaluate", help="full experiment: PET embeddings vs TextEmb/TaskEmb against real transfer"
    )
    _common(evaluate)
    evaluate.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated PET methods (default: all four)"
    )
    evaluate.add_argument("--pet-steps", type=int, default=60, help="PET steps per task (default: 60)")
    evaluate.add_argument("--snapshot-steps", default="", help="comma-separated early-checkpoint steps to evaluate too")
    evaluate.add_argument(
        "--ft-steps", type=int, default=60, help="fine-tuning steps of each ground-truth run (default: 60)"
    )
    evaluate.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning learning rate (default: 1e-4)")
    evaluate.add_argument("--baseline-examples", type=int, default=200, help="examples per task for TextEmb/TaskEmb")
    evaluate.add_argument("--max-dev", type=int, default=None, help="score at most this many dev examples per task")
    evaluate.add_argument(
        "--target-train",
        type=int,
        default=None,
        help="full -> limited regime (Vu et al.): targets train on only this many examples (default: all)",
    )
    evaluate.add_argument("--k", type=int, default=3, help="k of regret@k (default: 3)")
    evaluate.add_argument(
        "--gain", choices=("exp", "linear"), default="exp", help="NDCG gain (default: exp, as Vu et al.)"
    )
    evaluate.add_argument("--cache", type=Path, default=None, help="ground-truth cache folder (default: OUT/cache)")
    evaluate.set_defaults(func=_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        type=Path,
        required=True,
        help="task root: a world folder, W/text, or folders with glue/ and squad/ tasks",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--model", type=Path, default=None, help="Hugging Face BERT folder (default: the packaged MiniLM)"
    )
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N encoder layers (cheaper)")
    parser.add_argument("--names", default="", help="comma-separated task names to use (default: all found)")
    parser.add_argument("--per-kind", type=int, default=None, help="use the first N classification and N QA tasks")
    parser.add_argument("--kinds", default="classification,qa", help="task kinds to use (default: classification,qa)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per example (default: 128)")
    parser.add_argument("--max-train", type=int, default=None, help="use at most this many training examples per task")
    parser.add_argument("--seed", type=int, default=0, help="seed for data order and heads (default: 0)")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in _split(text)}))
    except ValueError:
        raise ValueError(f"--snapshot-steps must be comma-separated integers, got {text!r}") from None


def _model(args: argparse.Namespace) -> str:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import packaged_minilm_path

    return str(args.model or packaged_minilm_path())


def _tasks(args: argparse.Namespace) -> list:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import discover_tasks

    return discover_tasks(args.tasks, _split(args.kinds), _split(args.names) or None, args.per_kind)


def _tune(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from safetensors.torch import save_file

    from grainvl.transfer.petl import PetlConfig, load_hf_backbone, tune_task
    from grainvl.utils.fileio import atomic_write_text

    tasks = _tasks(args)
    cfg = PetlConfig(
        method=args.method,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        snapshot_steps=_steps(args.snapshot_steps),
        max_train_examples=args.max_train,
        seed=args.seed,
    )
    backbone, tokenizer = load_hf_backbone(_model(args), args.layers)
    folder = args.out / "pet" / args.method
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": _model(args), "layers": args.layers, "config": {k: v for k, v in vars(cfg).items()}, "tasks": {}}
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

    from safetensors.torch import load_file

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
        tensors = load_file(str(folder / f"{name}.safetensors"))
        params[name] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        initial[name] = {k[len("initial.") :]: v for k, v in tensors.items() if k.startswith("initial.")}
        if not params[name]:
            raise ValueError(
                f"{folder / name}.safetensors has no parameters for step {step} (tune with --snapshot-steps)"
            )
    return params, initial, meta


def _similarity(args: argparse.Namespace) -> tuple[dict, dict]:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.transfer import _as_similarity
    from grainvl.transfer.task_embeddings import library_embeddings

    params, initial, _ = _load_library(args.run, args.method, getattr(args, "step", None))
    embeddings = library_embeddings(args.method, params, initial, args.variant)
    return _as_similarity(embeddings), embeddings


def _embed(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import io

    import numpy as np

    from grainvl.recipes.transfer import plot_heatmap
    from grainvl.utils.fileio import atomic_write_bytes

    similarity, embeddings = _similarity(args)
    tag = f"{args.method}-{args.variant}" + (f"-step{args.step}" if args.step else "")
    buffer = io.BytesIO()
    np.savez(buffer, **{name: vec.astype(np.float32) for name, vec in embeddings.items()})
    atomic_write_bytes(args.run / "embeddings" / f"{tag}.npz", buffer.getvalue())
    names = sorted(similarity)
    print(f"{'':<20}" + "".join(f"{n[:8]:>9}" for n in names))
    for t in names:
        print(f"{t:<20}" + "".join(f"{similarity[t].get(s, 1.0):>9.3f}" for s in names))
    png = plot_heatmap(similarity, args.run / "embeddings" / f"{tag}.png", f"task similarity: {tag}")
    print(f"wrote {args.run / 'embeddings' / (tag + '.npz')} and {png}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.transfer.ranking import rank_sources

    similarity, _ = _similarity(args)
    if args.target is not None and args.target not in similarity:
        raise ValueError(f"--target {args.target!r} is not among the tuned tasks {sorted(similarity)}")
    for target in [args.target] if args.target else sorted(similarity):
        ranked = rank_sources(similarity[target])[: args.top]
        print(f"{target}: " + ", ".join(f"{s} ({v:.3f})" for s, v in ranked))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from grainvl.recipes.transfer import EvaluateConfig, format_table, plot_heatmap, run_evaluate
    from grainvl.transfer.ground_truth import FinetuneSettings
    from grainvl.utils.fileio import atomic_write_text

    tasks = _tasks(args)
    methods = tuple(_split(args.methods))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    settings = FinetuneSettings(
        encoder=_model(args),
        num_layers=args.layers,
        steps=args.ft_steps,
        batch_size=args.batch_size,
        lr=args.ft_lr,
        max_length=args.max_length,
        seed=args.seed,
        max_train_examples=args.max_train,
        max_dev_examples=args.max_dev,
        target_train_examples=args.target_train,
    )
    cfg = EvaluateConfig(
        encoder=_model(args),
        num_layers=args.layers,
        methods=methods,
        pet_steps=args.pet_steps,
        pet_batch_size=args.batch_size,
        snapshot_steps=_steps(args.snapshot_steps),
        finetune=settings,
        baseline_examples=args.baseline_examples,
        max_length=args.max_length,
        k=args.k,
        gain=args.gain,
        seed=args.seed,
    )
    report = run_evaluate(tasks, cfg, args.cache or args.out / "cache")
    table = format_table(report, args.k)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.json", json.dumps(report.to_json(), indent=1) + "\n")
    atomic_write_text(args.out / "results.txt", table + "\n")
    pngs = []
    for label in [f"{m}/delta" for m in methods] + ["textemb", "taskemb/cls_output"]:
        if label in report.similarities:
            pngs.append(
                plot_heatmap(report.similarities[label], args.out / f"similarity_{label.replace('/', '_')}.png", label)
            )
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.txt'} and {len(pngs)} heat-maps")
    return 0
