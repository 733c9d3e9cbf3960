"""ONNX export of an :class:`~grainvl.models.xvlm.XVLM`, one graph per tower, validated with onnxruntime.

Three graphs, tensor-only inputs, dynamic batch (and sequence) axes — the pieces a retrieval or
matching service deploys separately (image features are indexed offline, text features per query,
the fusion re-ranks the top-k):

* ``image_encoder.onnx``: ``image (B, 3, R, R)`` -> ``image_embeds (B, 1+N, Dv)``, ``image_feat (B, E)``.
  The resolution ``R`` is fixed (BEiT's relative position bias is traced at the model's grid).
* ``text_encoder.onnx``: ``text_ids (B, L) int64``, ``text_atts (B, L) int64`` ->
  ``text_embeds (B, L, H)``, ``text_feat (B, E)``.
* ``fusion.onnx``: ``text_embeds (B, L, H)``, ``text_atts (B, L)``, ``image_embeds (B, N, Dv)``,
  ``image_atts (B, N)`` -> ``fused (B, L, H)``, ``itm_logits (B, 2)`` (index 1 = match).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17. It works
offline, is deterministic and handles SDPA with additive masks; the dynamo exporter also works on
torch 2.13 but is several times slower on these graphs (see ``docs/interop.md``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.models.xvlm import XVLM
from grainvl.utils.fileio import atomic_write_text, staged_dir

OPSET = 17
TOLERANCE = 1e-4  # max abs difference accepted between onnxruntime and PyTorch
REPORT_FILE = "export_report.json"


class ImageTower(nn.Module):
    """``image -> (image_embeds, image_feat)``."""

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        embeds = self.model.vision_encoder(image)  # (B, 1+N, Dv)
        return embeds, self.model.image_feat(embeds)  # (B, E)


class TextTower(nn.Module):
    """``(text_ids, text_atts) -> (text_embeds, text_feat)``: the text-only layers."""

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, text_ids: Tensor, text_atts: Tensor) -> tuple[Tensor, Tensor]:
        embeds = self.model.encode_text(text_ids, text_atts)  # (B, L, H)
        return embeds, self.model.text_feat(embeds)  # (B, E)


class FusionTower(nn.Module):
    """``(text_embeds, text_atts, image_embeds, image_atts) -> (fused, itm_logits)``."""

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, text_embeds: Tensor, text_atts: Tensor, image_embeds: Tensor, image_atts: Tensor
    ) -> tuple[Tensor, Tensor]:
        fused = self.model.fuse(text_embeds, text_atts, image_embeds, image_atts)  # (B, L, H)
        return fused, self.model.itm_logits(fused)  # (B, 2)


@dataclass
class ExportResult:
    """One exported graph and its onnxruntime check: ``max_abs_diff`` over all outputs of the check inputs."""

    tower: str
    path: Path
    inputs: list[str]
    outputs: list[str]
    max_abs_diff: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def example_inputs(model: XVLM, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Per-tower example tensors (random images, ids in the vocabulary, masks with padding)."""
    g = torch.Generator().manual_seed(seed)
    res = model.config.vision.resolution
    image = torch.randn(batch, 3, res, res, generator=g)
    ids = torch.randint(5, min(model.config.text.vocab_size, 1000), (batch, length), generator=g)
    atts = torch.ones(batch, length, dtype=torch.long)
    atts[0, length - 2 :] = 0  # padding, so the exported mask path is exercised
    ids = ids.masked_fill(atts == 0, model.config.text.pad_token_id)
    with torch.no_grad():
        image_embeds = model.vision_encoder(image)
        text_embeds = model.encode_text(ids, atts)
    image_atts = torch.ones(image_embeds.shape[:2], dtype=torch.long)
    return {
        "image_encoder": {"image": image},
        "text_encoder": {"text_ids": ids, "text_atts": atts},
        "fusion": {
            "text_embeds": text_embeds,
            "text_atts": atts,
            "image_embeds": image_embeds,
            "image_atts": image_atts,
        },
    }


_OUTPUTS = {
    "image_encoder": ["image_embeds", "image_feat"],
    "text_encoder": ["text_embeds", "text_feat"],
    "fusion": ["fused", "itm_logits"],
}
_DYNAMIC = {
    "image": {0: "batch"},
    "text_ids": {0: "batch", 1: "length"},
    "text_atts": {0: "batch", 1: "length"},
    "text_embeds": {0: "batch", 1: "length"},
    "image_embeds": {0: "batch", 1: "tokens"},
    "image_atts": {0: "batch", 1: "tokens"},
    "image_feat": {0: "batch"},
    "text_feat": {0: "batch"},
    "fused": {0: "batch", 1: "length"},
    "itm_logits": {0: "batch"},
}


def export_onnx(
    model: XVLM, out_dir: str | Path, check_batch: int = 3, check_length: int = 9, overwrite: bool = False
) -> list[ExportResult]:
    """Export the three graphs to ``out_dir`` and validate each with onnxruntime.

    The graphs are traced at batch 2 / length 7 and checked at ``check_batch`` / ``check_length``
    (different sizes, so the dynamic axes are really exercised). Writes ``export_report.json``. The folder is
    assembled beside ``out_dir`` and swapped in: an earlier export is replaced, any other non-empty folder
    only with ``overwrite``. Raises ``RuntimeError`` when an output differs from PyTorch by more than
    :data:`TOLERANCE` (the graphs and the report are kept for inspection).
    """
    out_dir = Path(out_dir)
    model = model.eval()
    # The wrappers must be in eval mode too: the exporter restores each wrapper's mode recursively
    # afterwards, so a wrapper left in training mode would switch dropout back on in the model.
    towers = {
        "image_encoder": ImageTower(model).eval(),
        "text_encoder": TextTower(model).eval(),
        "fusion": FusionTower(model).eval(),
    }
    trace = example_inputs(model)
    check = example_inputs(model, batch=check_batch, length=check_length, seed=1)
    results = []
    with staged_dir(out_dir, overwrite=overwrite, replaceable=is_onnx_export) as staged:
        for name, tower in towers.items():
            staged_path = staged / f"{name}.onnx"
            inputs = trace[name]
            _export_one(tower, inputs, staged_path, _OUTPUTS[name])
            diff = _max_abs_diff(tower, staged_path, check[name])
            results.append(
                ExportResult(name, out_dir / staged_path.name, list(inputs), _OUTPUTS[name], diff, diff <= TOLERANCE)
            )
        report = {"opset": OPSET, "tolerance": TOLERANCE, "towers": [r.to_dict() for r in results]}
        atomic_write_text(staged / REPORT_FILE, json.dumps(report, indent=2))
    bad = [f"{r.tower} ({r.max_abs_diff:.2e})" for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"onnxruntime differs from PyTorch by more than {TOLERANCE}: {', '.join(bad)}")
    return results


def is_onnx_export(path: Path) -> bool:
    """A folder :func:`export_onnx` wrote (it holds ``export_report.json``): replaced by the next export."""
    return (path / REPORT_FILE).is_file()


def _export_one(tower: nn.Module, inputs: dict[str, Tensor], path: Path, outputs: list[str]) -> None:
    names = list(inputs) + outputs
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            tower,
            tuple(inputs.values()),
            str(path),  # inside the staged folder: the folder, not each file, is swapped in whole
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes={n: _DYNAMIC[n] for n in names},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def feeds_for(session: Any, inputs: dict[str, Tensor]) -> dict[str, Any]:
    """``inputs`` as numpy feeds of an onnxruntime ``session``, only those its graph declares.

    The exporter drops an input the graph does not use: a pruned model whose fusion layers kept no
    cross-attention head ignores ``image_embeds`` / ``image_atts``, and feeding them is an error.
    """
    declared = {i.name for i in session.get_inputs()}
    return {name: x.detach().contiguous().numpy() for name, x in inputs.items() if name in declared}


def _max_abs_diff(tower: nn.Module, path: Path, inputs: dict[str, Tensor]) -> float:
    """Run the graph in onnxruntime (CPU) and PyTorch on the same inputs -> max abs difference."""
    # Imported here: onnxruntime is only needed to validate an export.
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds_for(session, inputs))
    with torch.no_grad():
        expected = tower(*inputs.values())
    return max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))


__all__ = [
    "OPSET",
    "REPORT_FILE",
    "TOLERANCE",
    "ExportResult",
    "FusionTower",
    "ImageTower",
    "TextTower",
    "example_inputs",
    "export_onnx",
    "feeds_for",
    "is_onnx_export",
]


@dataclass
class ExportOnnxConfig:
    """``grainvl export onnx``: a model (registered name, model folder or run folder) -> three validated ONNX graphs."""

    model: str  # anything resolve_model takes: a registered name, a save_pretrained folder, a run folder
    out: str  # output folder for the .onnx files
    overwrite: bool = False  # replace an output folder that is not empty and not an earlier export
