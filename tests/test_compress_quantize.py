"""Dynamic int8 quantisation: closeness to fp32, smaller serialised size, flag-based save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from grainvl.compress.quantize import (
    QUANTIZE_FILE,
    compare_quantized,
    count_quantized_linears,
    direct_weight_linears,
    load_with_quantization,
    quantize_dynamic_int8,
    read_quantize_flag,
    save_quantized_xvlm,
    serialized_size,
    tied_linears,
    write_quantize_flag,
)
from grainvl.models.factory import create_model
from grainvl.models.xvlm import XVLM


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 8)).eval()


def test_quantized_linear_is_close_to_fp32_and_about_four_times_smaller() -> None:
    model = _mlp()
    x = torch.randn(16, 128)
    q = quantize_dynamic_int8(model)
    assert count_quantized_linears(q) == 2 and count_quantized_linears(model) == 0  # input untouched
    with torch.no_grad():
        ref, out = model(x), q(x)
    # int8 weights (per-tensor scale) + per-batch int8 activations: ~1% relative error
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.equal(out, ref)  # it really is quantised
    ratio = serialized_size(q) / serialized_size(model)
    assert 0.2 < ratio < 0.4  # int8 weights, fp32 biases and scales, pickling overhead


def test_skip_keeps_named_layers_fp32() -> None:
    q = quantize_dynamic_int8(_mlp(), skip=("2",))
    assert count_quantized_linears(q) == 1 and isinstance(q[2], nn.Linear)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        quantize_dynamic_int8(nn.Sequential(nn.GELU()))


def test_compare_reports_sizes_latency_and_scores() -> None:
    model = _mlp()
    q = quantize_dynamic_int8(model)
    x = torch.randn(4, 128)
    report = compare_quantized(model, q, lambda m: m(x), score=lambda m: float(m(x).argmax(-1).eq(0).float().mean()))
    assert report.size_int8_bytes < report.size_fp32_bytes and report.quantized_linears == 2
    assert report.latency_fp32_ms > 0 and report.latency_int8_ms > 0
    assert report.score_fp32 is not None and set(report.to_dict()) >= {"size_ratio", "speedup"}


def test_xvlm_quantizes_and_round_trips_through_the_flag(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    image = torch.randn(2, 3, model.config.vision.resolution, model.config.vision.resolution)
    ids = torch.randint(1000, 2000, (2, 7))
    atts = torch.ones_like(ids)

    def fused(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            tokens, image_atts = m.encode_image(image)
            return m.encode_multimodal(ids, atts, tokens, image_atts)

    q = quantize_dynamic_int8(model)
    fp32_qkv = direct_weight_linears(model)  # ViT fused q/k/v read as F.linear(x, qkv.weight, ...)
    assert fp32_qkv and all(name.endswith(".qkv") for name in fp32_qkv)
    assert tied_linears(model) == ["text_encoder.cls.predictions.decoder"]  # = the word embeddings: kept fp32
    linears = sum(isinstance(m, nn.Linear) for m in model.modules()) - len(fp32_qkv) - 1
    assert count_quantized_linears(q) == linears
    ref = fused(model)
    torch.testing.assert_close(fused(q), ref, atol=0.1 * ref.abs().max().item(), rtol=0)
    assert serialized_size(q) < serialized_size(model)  # tiny model: mostly the fp32 embedding table

    folder = save_quantized_xvlm(model, tmp_path / "m")
    assert (folder / QUANTIZE_FILE).is_file() and read_quantize_flag(folder)["method"] == "dynamic-int8"
    loaded = load_with_quantization(folder, XVLM.from_pretrained)
    assert count_quantized_linears(loaded) == linears
    assert torch.equal(fused(loaded), fused(q))  # deterministic re-quantisation: identical int8 model


def test_unflagged_folder_loads_fp32_and_unknown_method_is_refused(tmp_path: Path) -> None:
    calls: list[Path] = []

    def loader(path: Path) -> nn.Module:
        calls.append(path)
        return _mlp()

    assert count_quantized_linears(load_with_quantization(tmp_path, loader)) == 0
    write_quantize_flag(tmp_path)
    assert count_quantized_linears(load_with_quantization(tmp_path, loader)) == 2
    (tmp_path / QUANTIZE_FILE).write_text('{"method": "static-int4"}', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown quantisation method"):
        load_with_quantization(tmp_path, loader)


def test_int8_model_parameters_and_flops_are_counted_like_fp32() -> None:
    """Packed int8 weights are no Parameters and FlopCounterMode misses quantized linears: both are added back."""
    import torch
    from torch import nn

    from grainvl.bench.energy import count_flops, count_parameters
    from grainvl.compress.quantize import quantize_dynamic_int8

    fp32 = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    int8 = quantize_dynamic_int8(fp32)
    ids = torch.randint(0, 10, (3, 5))
    assert count_parameters(int8) == count_parameters(fp32) == 10 * 16 + 16 * 32 + 32 + 32 * 4 + 4
    assert count_flops(int8, ids) == count_flops(fp32, ids) == 2 * 15 * (16 * 32 + 32 * 4)
    assert count_parameters(int8, trainable_only=True) == 10 * 16
