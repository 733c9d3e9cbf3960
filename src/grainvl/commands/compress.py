"""``grainvl compress``: distill, prune, shrink, theseus and quantize recipes for an X²-VLM (docs/compression.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a model: distill, prune (L0 masks), shrink, Theseus module replacing, int8 quantisation",
        description=(
            "Compose compression recipes in order, e.g. --recipe distill,prune,shrink,quantize. Each stage writes "
            "OUT/<stage>/ loadable with XVLM.from_pretrained (a quantize folder holds fp32 weights + quantize.json: "
            "grainvl finetune/bench load it as dynamic int8, CPU only). The run ends with zero-shot retrieval of the "
            "teacher and the result, and OUT/results.jsonl lines with params, FLOPs, energy and CO2."
        ),
    )
    p.add_argument("--teacher", required=True, help="model folder (save_pretrained layout) or a registered model name")
    p.add_argument(
        "--recipe",
        required=True,
        help=(
            "comma-separated stages applied in order: distill, prune, shrink, theseus, quantize "
            "(e.g. distill,prune,shrink,quantize); shrink must follow prune before any later stage, quantize comes last"
        ),
    )
    p.add_argument("--world", required=True, type=Path, help="world folder (pre-training data and evaluation split)")
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per stage)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per training stage (default 100)")
    p.add_argument(
        "--target-sparsity", type=float, help="share of prunable parameters to remove (default: the paper's, 0.25)"
    )
    p.add_argument(
        "--task",
        default="retrieval",
        choices=("retrieval", "vqa", "nlvr", "captioning"),
        help="whose paper settings (target sparsity, lr, reg lr) to default to (default retrieval)",
    )
    p.add_argument(
        "--per-modality",
        metavar="M=S,...",
        help="separate targets per modality instead of one shared target, e.g. vision=0.4,text=0.2,fusion=0.3",
    )
    p.add_argument(
        "--student",
        default="half",
        choices=("half", "efficientvlm"),
        help="student layers: every other layer per stack (half) or EfficientVLM's 6/3/3 (default half)",
    )
    p.add_argument(
        "--student-layers",
        metavar="V,T,F",
        help="student layer counts per stack (vision, text, fusion), e.g. 2,1,1; overrides --student",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="keep the learned masks as they are even when they miss the target sparsity (docs/compression.md)",
    )
    p.add_argument("--prune-layers", action="store_true", help="also learn whole attention/FFN sub-layer masks (CoFi)")
    p.add_argument(
        "--prune-cnn-channels",
        action="store_true",
        help="also prune the MBConv expansion channels of an EfficientNet vision tower (our extension, opt-in)",
    )
    p.add_argument(
        "--theseus-text", type=int, help="theseus: successor layers for the text layers (default: half of them)"
    )
    p.add_argument(
        "--theseus-fusion", type=int, help="theseus: successor layers for the fusion layers (default: half of them)"
    )
    p.add_argument(
        "--theseus-scheduler",
        default="linear",
        choices=("linear", "constant"),
        help="theseus replacement rate: linear p(t)=min(1,kt+b) from b=0.3, or constant 0.3 then 1 (default linear)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="image-text pairs per step (default 8)")
    p.add_argument("--lr", type=float, help="distillation learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=42, help="seed (default 42)")
    p.add_argument("--no-energy", action="store_true", help="do not track energy with codecarbon")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_compress)


def parse_per_modality(text: str | None) -> dict[str, float] | None:
    """``"vision=0.6,text=0.5"`` -> ``{"vision": 0.6, "text": 0.5}`` (None/empty -> None: one shared target)."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--per-modality expects M=S pairs, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError as error:
            raise ValueError(f"--per-modality: {value!r} is not a number") from error
    return out


def _student_layers(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--student-layers expects three positive integers V,T,F, got {text!r}")
    vision, text_layers, fusion = (int(part) for part in parts)
    return vision, text_layers, fusion


def _cmd_compress(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.compress import CompressConfig, format_report, run_compress

    if not args.world.is_dir():
        raise FileNotFoundError(f"{args.world}: no such world folder (make one with `grainvl world --out DIR`)")
    cfg = CompressConfig(
        teacher=args.teacher,
        recipe=[s.strip() for s in args.recipe.split(",") if s.strip()],
        world=str(args.world),
        out=str(args.out),
        steps=args.steps,
        target_sparsity=args.target_sparsity,
        task=args.task,
        per_modality=parse_per_modality(args.per_modality),
        student=args.student,
        student_layers=_student_layers(args.student_layers),
        calibrate=not args.no_calibrate,
        prune_layers=args.prune_layers,
        prune_cnn_channels=args.prune_cnn_channels,
        theseus_text=args.theseus_text,
        theseus_fusion=args.theseus_fusion,
        theseus_scheduler=args.theseus_scheduler,
        image_batch_size=args.batch_size,
        seed=args.seed,
        track_energy=not args.no_energy,
        progress=not args.quiet,
    )
    if args.lr is not None:
        cfg.distill_lr = args.lr
    print(format_report(run_compress(cfg)))
    return 0
