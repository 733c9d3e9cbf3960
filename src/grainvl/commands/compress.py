"""``grainvl compress``: distill, prune, shrink, theseus and quantize recipes for an X²-VLM (docs/compression.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, comma_list, config_from_args, key_values, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a model: distill, prune (L0 masks), shrink, Theseus module replacing, int8 quantisation",
        description=(
            "Compose compression recipes in order, e.g. --recipe distill,prune,shrink,quantize. Each stage writes "
            "OUT/<stage>/ loadable with XVLM.from_pretrained (a quantize folder holds fp32 weights + quantize.json: "
            "grainvl finetune/bench load it as dynamic int8, CPU only). The run ends with zero-shot retrieval of the "
            "teacher and the result, and OUT/results.jsonl lines with params, FLOPs, energy and CO2. "
            "Settings: CompressConfig (--config, --set; the flags below are shortcuts)."
        ),
    )
    add_config_args(p, "grainvl.recipes.compress:CompressConfig")
    shortcut(p, "--teacher", field="teacher", help="model folder (save_pretrained layout) or a registered model name")
    shortcut(
        p,
        "--recipe",
        field="recipe",
        parse=comma_list,
        help=(
            "comma-separated stages applied in order: distill, prune, shrink, theseus, quantize "
            "(e.g. distill,prune,shrink,quantize); shrink must follow prune before any later stage, quantize comes last"
        ),
    )
    shortcut(p, "--world", field="world", type=Path, help="world folder (pre-training data and evaluation split)")
    shortcut(p, "--out", field="out", type=Path, help="output folder (one sub-folder per stage)")
    shortcut(p, "--steps", field="steps", type=int, help="optimizer steps per training stage (default 100)")
    shortcut(
        p,
        "--target-sparsity",
        field="target_sparsity",
        type=float,
        help="share of prunable parameters to remove (default: the paper's, 0.25)",
    )
    shortcut(
        p,
        "--task",
        field="task",
        choices=("retrieval", "vqa", "nlvr2", "captioning", "grounding", "nlvr"),
        help="EfficientVLM stage 2: prune DURING this task's fine-tuning, with the paper's task distillation mix "
        "from the teacher fine-tuned on it (--task-teacher, or fine-tuned here first) and the paper's sparsity/lrs "
        "for the task; OUT/shrink is then a fine-tuned run folder (grainvl eval). Without --task the prune stage "
        "trains on the pre-training objectives. nlvr is an alias of nlvr2",
    )
    shortcut(
        p,
        "--task-teacher",
        field="task_teacher",
        help="the teacher's fine-tuned run folder on --task (grainvl finetune); default: fine-tune it here first",
    )
    shortcut(
        p,
        "--teacher-steps",
        field="teacher_steps",
        type=int,
        help="steps of that teacher fine-tuning (default: --steps)",
    )
    shortcut(
        p,
        "--student-resolution",
        field="student_resolution",
        type=int,
        help="a smaller input for the student's EfficientNet vision tower (needs distill, or --student-init "
        "task_teacher): compresses the vision side",
    )
    shortcut(
        p,
        "--student-init",
        field="student_init",
        choices=("pretrained", "task_teacher"),
        help="stage 2's starting backbone: the given model (pretrained, EfficientVLM's) or the teacher fine-tuned on "
        "--task, whole (task_teacher, CoFi's; recipe prune[,shrink]; default pretrained)",
    )
    shortcut(
        p, "--prune-lr", field="prune_lr", type=float, help="learning rate of the prune stage (default: the paper's)"
    )
    shortcut(
        p,
        "--per-modality",
        field="per_modality",
        parse=parse_per_modality,
        metavar="M=S,...",
        help="separate targets per modality instead of one shared target, e.g. vision=0.4,text=0.2,fusion=0.3",
    )
    shortcut(
        p,
        "--student",
        field="student",
        choices=("half", "efficientvlm"),
        help="student layers: every other layer per stack (half) or EfficientVLM's 6/3/3 (default half)",
    )
    shortcut(
        p,
        "--student-layers",
        field="student_layers",
        parse=parse_student_layers,
        metavar="V,T,F",
        help="student layer counts per stack (vision, text, fusion), e.g. 2,1,1; overrides --student",
    )
    shortcut(
        p,
        "--no-calibrate",
        field="calibrate",
        action="store_false",
        help="keep the learned masks as they are even when they miss the target sparsity (docs/compression.md)",
    )
    shortcut(
        p,
        "--prune-layers",
        field="prune_layers",
        action="store_true",
        help="also learn whole attention/FFN sub-layer masks (CoFi)",
    )
    shortcut(
        p,
        "--prune-cnn-channels",
        field="prune_cnn_channels",
        action="store_true",
        help="also prune the MBConv expansion channels of an EfficientNet vision tower (our extension, opt-in)",
    )
    shortcut(
        p,
        "--theseus-text",
        field="theseus_text",
        type=int,
        help="theseus: successor layers for the text layers (default: half of them)",
    )
    shortcut(
        p,
        "--theseus-fusion",
        field="theseus_fusion",
        type=int,
        help="theseus: successor layers for the fusion layers (default: half of them)",
    )
    shortcut(
        p,
        "--theseus-scheduler",
        field="theseus_scheduler",
        choices=("linear", "constant"),
        help="theseus replacement rate: linear p(t)=min(1,kt+b) from b=0.3, or constant 0.3 then 1 (default linear)",
    )
    shortcut(p, "--batch-size", field="image_batch_size", type=int, help="image-text pairs per step (default 8)")
    shortcut(p, "--lr", field="distill_lr", type=float, help="distillation learning rate (default 1e-4)")
    shortcut(p, "--seed", field="seed", type=int, help="seed (default 42)")
    shortcut(p, "--no-energy", field="track_energy", action="store_false", help="do not track energy with codecarbon")
    shortcut(p, "--quiet", field="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_compress)


def parse_per_modality(text: str | None) -> dict[str, float] | None:
    """``"vision=0.6,text=0.5"`` -> ``{"vision": 0.6, "text": 0.5}`` (None/empty -> None: one shared target)."""
    if not text:
        return None
    out = {}
    for name, value in key_values(text.split(","), "--per-modality", "M=S pairs"):
        try:
            out[name.strip()] = float(value)
        except ValueError as error:
            raise ValueError(f"--per-modality: {value!r} is not a number") from error
    return out


def parse_student_layers(text: str | None) -> tuple[int, int, int] | None:
    """``"2,1,1"`` -> ``(2, 1, 1)``: student layer counts (vision, text, fusion); None/empty -> None."""
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

    cfg = config_from_args(CompressConfig, args)
    if not Path(cfg.world).is_dir():
        raise FileNotFoundError(f"{cfg.world}: no such world folder (make one with `grainvl world --out DIR`)")
    print(format_report(run_compress(cfg)))
    return 0
