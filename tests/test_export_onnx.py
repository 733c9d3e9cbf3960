"""ONNX export per tower (image encoder, text encoder, fusion + ITM), checked with onnxruntime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from grainvl.cli import main
from grainvl.models.export import export_onnx
from grainvl.models.factory import get_model_config
from grainvl.models.xvlm import XVLM


@pytest.fixture(scope="module")
def tiny_model() -> XVLM:
    config = get_model_config("xvlm-tiny")
    # Dropout on (as in every real checkpoint's config): exporting must not switch the model back to training.
    text = dataclasses.replace(config.text, hidden_dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    return XVLM(dataclasses.replace(config, text=text)).eval()


def _run(path: Path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_cli_exports_three_validated_graphs_with_dynamic_axes(
    tiny_model: XVLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(model_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("max |onnxruntime - torch|") == 3
    report = json.loads((out / "export_report.json").read_text())
    assert [t["tower"] for t in report["towers"]] == ["image_encoder", "text_encoder", "fusion"]
    assert all(t["max_abs_diff"] <= 1e-4 for t in report["towers"])

    graph = onnx.load(str(out / "text_encoder.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "length"]  # symbolic, not the traced 2 x 7

    # Our own check at sizes the exporter never saw (batch 5, length 11), against the PyTorch model.
    g = torch.Generator().manual_seed(3)
    image = torch.randn(5, 3, 64, 64, generator=g)
    ids = torch.randint(5, 900, (5, 11), generator=g)
    atts = torch.ones(5, 11, dtype=torch.long)
    atts[1, 6:] = 0
    with torch.no_grad():
        image_embeds = tiny_model.vision_encoder(image)
        text_embeds = tiny_model.encode_text(ids, atts)
        image_atts = torch.ones(image_embeds.shape[:2], dtype=torch.long)
        fused = tiny_model.fuse(text_embeds, atts, image_embeds, image_atts)
        expected = {
            "image_encoder": [image_embeds, tiny_model.image_feat(image_embeds)],
            "text_encoder": [text_embeds, tiny_model.text_feat(text_embeds)],
            "fusion": [fused, tiny_model.itm_logits(fused)],
        }
    feeds = {
        "image_encoder": {"image": image},
        "text_encoder": {"text_ids": ids, "text_atts": atts},
        "fusion": {
            "text_embeds": text_embeds,
            "text_atts": atts,
            "image_embeds": image_embeds,
            "image_atts": image_atts,
        },
    }
    for tower, inputs in feeds.items():
        for got, want in zip(_run(out / f"{tower}.onnx", inputs), expected[tower]):
            assert got.shape == tuple(want.shape)
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_cclm_layout_with_roberta_positions_exports(tmp_path: Path) -> None:
    config = get_model_config("xvlm-tiny")
    text = dataclasses.replace(
        config.text,
        layout="cross",
        fusion_start=2,
        num_layers=2,
        cross_layers=1,
        roberta_positions=True,
        pad_token_id=1,
        hidden_dropout=0.1,
    )
    torch.manual_seed(1)
    model = XVLM(dataclasses.replace(config, text=text)).eval()
    results = export_onnx(model, tmp_path)
    assert not model.training and not any(m.training for m in model.modules())
    assert [r.ok for r in results] == [True, True, True]
    assert max(r.max_abs_diff for r in results) <= 1e-4


def test_a_fusion_without_cross_attention_exports(tmp_path: Path) -> None:
    # A pruned student can keep no cross-attention head: its fusion graph then has no image inputs,
    # which the exporter drops, so the onnxruntime check must feed only the inputs the graph declares.
    config = get_model_config("xvlm-tiny")
    text = dataclasses.replace(config.text, layer_cross_heads=[0] * config.text.num_layers)
    torch.manual_seed(2)
    model = XVLM(dataclasses.replace(config, text=text)).eval()
    results = export_onnx(model, tmp_path / "onnx")
    assert [r.ok for r in results] == [True, True, True]
    inputs = [i.name for i in onnx.load(str(tmp_path / "onnx" / "fusion.onnx")).graph.input]
    assert inputs == ["text_embeds", "text_atts"]


def test_export_of_a_missing_model_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "onnx", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    # The one resolver (models.factory.resolve_model) names what it accepts in its one line.
    assert err.startswith("error: ") and "neither a folder nor a registered name" in err and "\n" not in err
