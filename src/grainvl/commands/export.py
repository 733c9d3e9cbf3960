"""``grainvl export onnx``: one ONNX graph per tower of a grainvl model folder, validated with onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model for deployment (onnx)",
        description="Export a grainvl model (a registered name, a model folder or a run folder) for deployment.",
    )
    esub = p.add_subparsers(dest="export_format", required=True, metavar="{onnx}")
    o = esub.add_parser(
        "onnx",
        help="image encoder, text encoder and fusion+ITM head as three ONNX graphs",
        description="Write image_encoder.onnx, text_encoder.onnx and fusion.onnx (tensor inputs, dynamic batch and "
        "sequence axes, opset 17) and check each with onnxruntime against PyTorch on inputs of another batch size "
        "and length; the max abs difference is printed and stored in export_report.json (must be <= 1e-4). "
        "Settings: ExportOnnxConfig.",
    )
    add_config_args(o, "grainvl.models.export:ExportOnnxConfig")
    shortcut(
        o,
        "--model",
        field="model",
        help="registered model name, model folder (save_pretrained / grainvl convert) or run folder",
    )
    shortcut(o, "--out", field="out", type=Path, help="output folder for the .onnx files")
    shortcut(
        o,
        "--overwrite",
        field="overwrite",
        action="store_true",
        help="replace an --out folder that is not empty and not an earlier export (its contents are deleted)",
    )
    o.set_defaults(func=_cmd_export_onnx)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import sys

    from grainvl.models.export import TOLERANCE, ExportOnnxConfig, export_onnx, is_onnx_export
    from grainvl.models.factory import load_model
    from grainvl.utils.fileio import check_output_dir

    cfg = config_from_args(ExportOnnxConfig, args)
    check_output_dir(Path(cfg.out), cfg.overwrite, replaceable=is_onnx_export)  # before the load: fail fast
    # The one resolver: a preset, a save_pretrained folder or a run folder, as every other command takes.
    model = load_model(cfg.model).eval()
    try:
        results = export_onnx(model, Path(cfg.out), overwrite=cfg.overwrite)
    except RuntimeError as error:  # a graph that onnxruntime does not reproduce: say so in one line
        print(f"error: {error}", file=sys.stderr)
        return 1
    for r in results:
        status = "ok" if r.ok else "FAILED"
        print(f"{r.tower:14s} {r.path}  max |onnxruntime - torch| = {r.max_abs_diff:.2e} ({status}, <= {TOLERANCE:g})")
    return 0
