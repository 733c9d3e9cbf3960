"""CCLM checkpoints of both layouts (xvlm.md §7.13) and the official relative-position resizing (§7.16, §7.18).

* The CCLM repo's single stack ("CCLM 3M/4M"): XLM-R weights inside X-VLM's ``text_encoder.bert.*`` (a
  514-row position table), Swin vision, and **BERT-style position ids 0…L−1**, because the official
  text encoder is xbert's ``BertModel``. The layout is told by the keys, not by the config's model type.
* X²-VLM's ``CrossViewLM``: ``text_encoder`` / ``cross_encoder`` / ``mlm_head``, RoBERTa offsets, and a
  cross encoder built from its own BERT config (heads, FFN width, LayerNorm epsilon), given with
  ``--cross-config``.
* Relative position tables resized as the official loaders do: the source offsets on BEiT's geometric
  progression, ``interp2d(kind='cubic')`` = ``RectBivariateSpline(kx=3, ky=3, s=0)`` per head; the
  reference below is written independently of grainvl (its own bisection, SciPy's spline).

The state dicts use the official module names and tiny shapes (the builders of ``test_convert.py``);
the forward references are the official formulas written out with plain tensor operations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from torch import Tensor

from grainvl.cli import main
from grainvl.models import convert
from grainvl.models.vision import interpolate_rel_pos_bias, interpolate_window_bias
from grainvl.models.xvlm import XVLM
from test_convert import (
    HIDDEN,
    T_HEADS,
    VOCAB,
    _attention,
    _lin,
    _ln,
    _mask,
    _mlp,
    _Rand,
    assert_same_state,
    beit_state,
    bert_layer_state,
    embeddings_state,
    grainvl_outputs,
    heads_state,
    mlm_head_state,
    ref_beit,
)
from test_convert_swin_clip import SWIN_RES, _vision, official_swin_state
from test_models_vision_swin_clip import swin_reference

XLMR_ROWS = 514  # XLM-R's position table: 512 positions after RoBERTa's padding offset of 2
ATOL = 1e-5
XLMR_JSON = {
    "model_type": "xlm-roberta",
    "hidden_size": HIDDEN,
    "num_hidden_layers": 3,
    "num_attention_heads": T_HEADS,
    "intermediate_size": 96,
    "vocab_size": VOCAB,
    "max_position_embeddings": XLMR_ROWS,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "hidden_act": "gelu",
}


# ============================================================================ official resize, written independently
def official_source_positions(src_size: int, dst_size: int) -> np.ndarray:
    """BEiT's ``geometric_progression`` bisection and ``dis`` list, as printed by the official loader."""
    left, right, q = 1.01, 1.5, 1.01
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if 1.0 * (1.0 - q ** (src_size // 2)) / (1.0 - q) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis)


def scipy_resize(offsets: np.ndarray, dst_size: int) -> np.ndarray:
    """``(src, src, H) -> (dst·dst, H)``: interp2d's cubic fit per head via RectBivariateSpline (xvlm.md §7.16)."""
    src_size = offsets.shape[0]
    x = official_source_positions(src_size, dst_size)
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    heads = [RectBivariateSpline(x, x, offsets[:, :, h], kx=3, ky=3, s=0)(dx, dx) for h in range(offsets.shape[2])]
    return np.stack(heads, axis=-1).reshape(dst_size * dst_size, -1)


def test_geometric_source_positions_match_the_printed_official_ones() -> None:
    # A 7-row offset axis resized to 9 rows: the official loader prints about -4.0, -2.30, -1, 0, 1, 2.30, 4.0.
    positions = official_source_positions(7, 9)
    np.testing.assert_allclose(positions, [-4.0, -2.30, -1, 0, 1, 2.30, 4.0], atol=0.01)


@pytest.mark.parametrize(("old", "new"), [(4, 6), (7, 12), (12, 7), (3, 5)])
def test_swin_window_resize_equals_the_scipy_reference(old: int, new: int) -> None:
    """X-VLM / CCLM ``interpolate_relative_pos_embed`` (12 -> 7 shrinks, as the official code also allows)."""
    table = torch.randn((2 * old - 1) ** 2, 3, generator=torch.Generator().manual_seed(old), dtype=torch.float64)
    expected = scipy_resize(table.numpy().reshape(2 * old - 1, 2 * old - 1, 3), 2 * new - 1)
    got = interpolate_window_bias(table, old, new)
    assert got.dtype == torch.float64
    assert np.abs(got.numpy() - expected).max() < 1e-9  # measured: ~1e-15 (float64 rounding)
    got32 = interpolate_window_bias(table.float(), old, new)  # the official path: float32 in, float32 out
    assert np.abs(got32.double().numpy() - expected).max() < 1e-6


@pytest.mark.parametrize(("old", "new"), [(4, 6), (14, 24)])
def test_beit_table_resize_equals_the_scipy_reference(old: int, new: int) -> None:
    """X²-VLM's BEiT-v2 ``interpolate_pos_embed``: offsets resized, the 3 CLS rows copied."""
    side = 2 * old - 1
    table = torch.randn(side * side + 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = interpolate_rel_pos_bias(table, old, new)
    expected = scipy_resize(table[:-3].numpy().reshape(side, side, 2), 2 * new - 1)
    assert np.abs(got[:-3].numpy() - expected).max() < 1e-9
    assert torch.equal(got[-3:], table[-3:])
    # Not the uniform bicubic resize it replaced: that one is off by a sizeable fraction of the values.
    uniform = F.interpolate(table[:-3].t().reshape(1, 2, side, side), size=(2 * new - 1,) * 2, mode="bicubic")
    assert np.abs(uniform[0].reshape(2, -1).t().numpy() - expected).max() > 0.1


def test_resize_is_differentiable_for_on_the_fly_grids() -> None:
    table = torch.randn(7 * 7 + 3, 2, requires_grad=True)
    interpolate_rel_pos_bias(table, 4, 6).square().sum().backward()
    assert table.grad is not None and table.grad[:-3].abs().sum() > 0


def test_x2vlm_code_resizes_swin_tables_with_torch_bicubic() -> None:
    """X²-VLM's ``load_pretrained_swin``: F.interpolate(mode='bicubic') with align_corners False."""
    table = torch.randn(49, 2)
    expected = F.interpolate(table.t().reshape(1, 2, 7, 7), size=(11, 11), mode="bicubic", align_corners=False)
    torch.testing.assert_close(interpolate_window_bias(table, 4, 6, "bicubic"), expected[0].reshape(2, -1).t())
    assert convert.official_swin_resize("official-x2vlm", "pretrain") == "bicubic"
    assert convert.official_swin_resize("official-cclm", "cclm") == "bicubic"  # CrossViewLM: X²-VLM's code
    assert convert.official_swin_resize("official-cclm", "pretrain") == "geometric"  # the CCLM repo
    assert convert.official_swin_resize("official-xvlm", "pretrain") == "geometric"


# ============================================================================ the CCLM repo's single stack
def cclm_repo_state(seed: int = 0, bert_prefix: bool = True) -> dict[str, Tensor]:
    """CCLM repo ``CrossViewLM(XVLMBase)``: Swin vision, XLM-R inside xbert's BertForMaskedLM (3 layers,
    cross-attention from layer 2, 514 positions, one token type), the tied MLM head, ITC/ITM/box heads.
    ``bert_prefix=False``: a fine-tuning checkpoint (``text_encoder.*`` = BertModel, no MLM head)."""
    r = _Rand(seed)
    sd = {k: v for k, v in official_swin_state(seed).items() if k.startswith("vision_encoder.")}
    text = "text_encoder.bert." if bert_prefix else "text_encoder."
    sd |= embeddings_state(r, text + "embeddings.", types=1)
    sd[text + "embeddings.position_embeddings.weight"] = r(XLMR_ROWS, HIDDEN)
    sd[text + "embeddings.position_ids"] = torch.arange(XLMR_ROWS)[None]
    for i in range(3):
        sd.update(bert_layer_state(r, f"{text}encoder.layer.{i}.", cross=i >= 2))
    if bert_prefix:
        sd.update(mlm_head_state(r, "text_encoder.cls.", sd[text + "embeddings.word_embeddings.weight"]))
    return sd | heads_state(r)


def _layer(sd: dict[str, Tensor], p: str, x: Tensor, mask: Tensor, eps: float, heads: int, image=None) -> Tensor:
    """xbert.BertLayer: self-attention -> [cross-attention to all image tokens] -> FFN, post-LN."""
    qkv = [_lin(x, sd, p + f"attention.self.{n}.") for n in ("query", "key", "value")]
    x = _ln(
        _lin(_attention(*qkv, heads, mask), sd, p + "attention.output.dense.") + x,
        sd,
        p + "attention.output.LayerNorm.",
        eps,
    )
    if image is not None:
        c = p + "crossattention."
        kv = [_lin(image, sd, c + f"self.{n}.") for n in ("key", "value")]
        a = _attention(_lin(x, sd, c + "self.query."), *kv, heads, torch.zeros(()))
        x = _ln(_lin(a, sd, c + "output.dense.") + x, sd, c + "output.LayerNorm.", eps)
    h = _lin(F.gelu(_lin(x, sd, p + "intermediate.dense.")), sd, p + "output.dense.")
    return _ln(h + x, sd, p + "output.LayerNorm.", eps)


def _embed(sd: dict[str, Tensor], p: str, ids: Tensor, positions: Tensor, eps: float) -> Tensor:
    x = sd[p + "word_embeddings.weight"][ids] + sd[p + "position_embeddings.weight"][positions]
    return _ln(x + sd[p + "token_type_embeddings.weight"][0], sd, p + "LayerNorm.", eps)


def _text_batch(pad: int = 1) -> tuple[Tensor, Tensor]:
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(7))
    atts = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids.masked_fill(atts == 0, pad), atts


def test_cclm_repo_layout_uses_bert_positions_over_the_xlmr_table() -> None:
    """The issue's bug: an XLM-R config.json must not switch a text_encoder.bert.* checkpoint to RoBERTa ids."""
    sd = cclm_repo_state()
    for fmt in ("official-cclm", "official-xvlm"):  # the same xbert module in both codebases
        model, report = convert.load_official(sd, fmt, {"image_res": SWIN_RES}, XLMR_JSON)
        text = model.config.text
        assert (text.layout, text.fusion_start, text.roberta_positions) == ("single", 2, False)
        assert (text.max_position_embeddings, text.pad_token_id, text.layer_norm_eps) == (XLMR_ROWS, 1, 1e-5)
        assert any("BERT-style position ids 0..L-1" in n for n in report.notes) and not report.problems()
    ids, atts = _text_batch()
    with torch.no_grad():
        got = model.encode_text(ids, atts)
    p = "text_encoder.bert."
    x = _embed(sd, p + "embeddings.", ids, torch.arange(6)[None], 1e-5)
    for i in (0, 1):
        x = _layer(sd, f"{p}encoder.layer.{i}.", x, _mask(atts), 1e-5, T_HEADS)
    torch.testing.assert_close(got, x, atol=ATOL, rtol=1e-5)
    # RoBERTa's padding-offset ids (tokens from 2) would change the embeddings by O(1): the test can tell.
    real = ids.ne(1).long()
    roberta = _embed(sd, p + "embeddings.", ids, torch.cumsum(real, 1) * real + 1, 1e-5)
    assert (roberta - _embed(sd, p + "embeddings.", ids, torch.arange(6)[None], 1e-5)).abs().max() > 0.5


def test_cclm_repo_outputs_equal_the_official_formulas_and_round_trip() -> None:
    sd = cclm_repo_state(seed=2)
    model, report = convert.load_official(sd, "official-cclm", {"image_res": SWIN_RES}, XLMR_JSON)
    assert report.layout == "pretrain" and model.config.vision.kind == "swin"
    assert_same_state(convert.to_official(model, "official-cclm", "pretrain"), sd)
    image = torch.randn(2, 3, SWIN_RES, SWIN_RES, generator=torch.Generator().manual_seed(3))
    ids, atts = _text_batch()
    got = grainvl_outputs(model, image, ids, atts)
    p, eps = "text_encoder.bert.", 1e-5
    image_embeds = swin_reference(_vision(sd), image, model.config.vision)
    text = _embed(sd, p + "embeddings.", ids, torch.arange(6)[None], eps)
    for i in (0, 1):
        text = _layer(sd, f"{p}encoder.layer.{i}.", text, _mask(atts), eps, T_HEADS)
    fused = _layer(sd, f"{p}encoder.layer.2.", text, _mask(atts), eps, T_HEADS, image_embeds)
    mlm = "text_encoder.cls.predictions."
    transform = _ln(F.gelu(_lin(fused, sd, mlm + "transform.dense.")), sd, mlm + "transform.LayerNorm.", eps)
    expected = {
        "image_embeds": image_embeds,
        "text_embeds": text,
        "image_feat": F.normalize(_lin(image_embeds[:, 0], sd, "vision_proj."), dim=-1),
        "text_feat": F.normalize(_lin(text[:, 0], sd, "text_proj."), dim=-1),
        "itm_logits": _mlp(sd, "itm_head.", fused[:, 0]),
        "box": _mlp(sd, "bbox_head.", fused[:, 0]).sigmoid(),
        "mlm_logits": transform @ sd[mlm + "decoder.weight"].T + sd[mlm + "bias"],
    }
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=ATOL, rtol=1e-5, msg=key)


def test_cclm_repo_finetune_layout_and_defaults_without_a_text_config() -> None:
    sd = cclm_repo_state(bert_prefix=False)
    model, report = convert.load_official(
        sd, "official-cclm", {"image_res": SWIN_RES, "text_encoder": "data/xlm-roberta-large"}, strict=False
    )
    text = model.config.text
    # The CCLM repo's fine-tuning models are xbert BertModels too: BERT numbering despite the roberta path.
    assert report.layout == "finetune" and not text.roberta_positions
    assert (text.pad_token_id, text.layer_norm_eps) == (1, 1e-5)  # XLM-R's, without a JSON
    assert_same_state(convert.to_official(model, "official-cclm", "finetune"), sd)


def test_cclm_repo_swin_tables_resize_the_official_way() -> None:
    sd = cclm_repo_state()
    model, report = convert.load_official(sd, "official-cclm", {"image_res": 96, "window_size": 6}, XLMR_JSON)
    key = "vision_encoder.layers.0.blocks.1.attn.relative_position_bias_table"
    assert f"{key}: window 4 -> 6 (geometric)" in report.resized
    expected = scipy_resize(sd[key].double().numpy().reshape(7, 7, -1), 11)
    assert np.abs(model.state_dict()[key].double().numpy() - expected).max() < 1e-6


def test_export_refuses_what_the_official_code_would_number_differently() -> None:
    model, _ = convert.load_official(cclm_repo_state(), "official-cclm", {"image_res": SWIN_RES}, XLMR_JSON)
    with pytest.raises(ValueError, match="needs a text tower with RoBERTa positions"):
        convert.to_official(model, "official-cclm", "roberta")
    model.config.text.roberta_positions = True  # as if the model had been trained with RoBERTa offsets
    with pytest.raises(ValueError, match=r"numbers positions 0\.\.L-1; this model has RoBERTa positions"):
        convert.to_official(model, "official-cclm", "pretrain")
    with pytest.raises(ValueError, match=r"numbers positions 0\.\.L-1"):
        convert.to_official(model, "official-xvlm", "pretrain")


def test_official_cclm_without_cross_encoder_and_with_beit_is_refused() -> None:
    sd = {k: v for k, v in cclm_repo_state().items() if not k.startswith("vision_encoder.")} | beit_state(_Rand(0))
    with pytest.raises(convert.ConversionError, match="CCLM repo's single stack"):
        convert.load_official(sd, "official-cclm", None, XLMR_JSON)


# ============================================================================ X²-VLM's CrossViewLM, own cross config
CROSS_HEADS, CROSS_FFN, CROSS_EPS = 2, 128, 1e-12
CROSS_JSON = {
    "model_type": "bert",
    "hidden_size": HIDDEN,
    "num_hidden_layers": 12,  # the official code overrides it with the YAML's cross_num_hidden_layers
    "num_attention_heads": CROSS_HEADS,
    "intermediate_size": CROSS_FFN,
    "layer_norm_eps": CROSS_EPS,
    "hidden_act": "gelu",
}
XLMR_TINY = {**XLMR_JSON, "num_hidden_layers": 2, "max_position_embeddings": 40}


def crossviewlm_state(seed: int = 0) -> dict[str, Tensor]:
    """XVLMPlusBase: XLM-R text encoder (2 layers), a 1-layer cross encoder of another shape (FFN 128), mlm_head."""
    r = _Rand(seed)
    sd = beit_state(r) | embeddings_state(r, "text_encoder.embeddings.", types=1)
    for i in range(2):
        sd.update(bert_layer_state(r, f"text_encoder.encoder.layer.{i}.", cross=False))
    cross = bert_layer_state(r, "cross_encoder.encoder.layer.0.", cross=True)
    p = "cross_encoder.encoder.layer.0."
    cross |= r.linear(p + "intermediate.dense.", CROSS_FFN, HIDDEN) | r.linear(p + "output.dense.", HIDDEN, CROSS_FFN)
    return sd | cross | mlm_head_state(r, "mlm_head.", None) | heads_state(r)


def test_crossviewlm_with_another_cross_config_needs_it_and_then_matches_the_official_formulas() -> None:
    sd = crossviewlm_state(seed=4)
    with pytest.raises(convert.ConversionError, match=r"FFN width 128 differs .* pass it with --cross-config"):
        convert.load_official(sd, "official-cclm", None, XLMR_TINY)
    model, report = convert.load_official(sd, "official-cclm", None, XLMR_TINY, cross_config=CROSS_JSON)
    text = model.config.text
    assert (text.cross_num_heads, text.cross_intermediate_size, text.cross_layer_norm_eps) == (2, 128, 1e-12)
    assert report.layout == "cclm" and text.roberta_positions and not report.problems()
    assert_same_state(convert.to_official(model, "official-cclm"), sd)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ids, atts = _text_batch()
    got = grainvl_outputs(model, image, ids, atts)
    image_embeds = ref_beit(sd, image)
    real = ids.ne(1).long()
    x = _embed(sd, "text_encoder.embeddings.", ids, torch.cumsum(real, 1) * real + 1, 1e-5)  # RoBERTa offsets
    for i in (0, 1):
        x = _layer(sd, f"text_encoder.encoder.layer.{i}.", x, _mask(atts), 1e-5, T_HEADS)
    fused = _layer(sd, "cross_encoder.encoder.layer.0.", x, _mask(atts), CROSS_EPS, CROSS_HEADS, image_embeds)
    transform = _ln(
        F.gelu(_lin(fused, sd, "mlm_head.predictions.transform.dense.")),
        sd,
        "mlm_head.predictions.transform.LayerNorm.",
        1e-5,
    )
    torch.testing.assert_close(got["text_embeds"], x, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got["itm_logits"], _mlp(sd, "itm_head.", fused[:, 0]), atol=ATOL, rtol=1e-5)
    mlm = transform @ sd["mlm_head.predictions.decoder.weight"].T + sd["mlm_head.predictions.bias"]  # untied
    torch.testing.assert_close(got["mlm_logits"], mlm, atol=ATOL, rtol=1e-5)


def test_crossviewlm_of_the_text_shape_defaults_to_bert_cross_epsilon() -> None:
    sd = {k: v for k, v in crossviewlm_state().items() if "cross_encoder" not in k}
    sd |= bert_layer_state(_Rand(9), "cross_encoder.encoder.layer.0.", cross=True)  # FFN 96, as the text's
    model, report = convert.load_official(sd, "official-cclm", None, XLMR_TINY)
    assert model.config.text.cross_layer_norm_eps == 1e-12 and model.config.text.cross_num_heads is None
    assert any("LayerNorm eps 1e-12 (pass --cross-config" in n for n in report.notes)


def test_cli_crossviewlm_with_cross_config_and_back(tmp_path: Path) -> None:
    sd = crossviewlm_state()
    ckpt, cross, text = tmp_path / "cclm.th", tmp_path / "cross.json", tmp_path / "xlmr.json"
    torch.save({"model": sd}, ckpt)
    cross.write_text(json.dumps(CROSS_JSON))
    text.write_text(json.dumps(XLMR_TINY))
    out = tmp_path / "converted"
    argv = ["convert", "--from", "official-cclm", "--input", str(ckpt), "--text-config", str(text)]
    assert main([*argv, "--cross-config", str(cross), "--output", str(out)]) == 0
    model = XVLM.from_pretrained(out)
    assert model.config.text.cross_num_heads == CROSS_HEADS  # kept in the grainvl config.json
    back = tmp_path / "back.th"
    assert main(["convert", "--to", "official-cclm", "--input", str(out), "--output", str(back)]) == 0
    assert_same_state(torch.load(back, weights_only=True)["model"], sd)
    again, _ = convert.load_official(
        back,
        "official-cclm",
        tmp_path / "back.yaml",
        tmp_path / "back_config_bert.json",
        cross_config=tmp_path / "back_config_cross.json",
    )
    assert again.config == model.config  # YAML + text JSON + cross JSON describe the same model


def test_cli_cclm_repo_layout_and_back(tmp_path: Path) -> None:
    sd = cclm_repo_state()
    ckpt, text = tmp_path / "cclm_3m.th", tmp_path / "xlmr.json"
    torch.save({"model": sd}, ckpt)
    text.write_text(json.dumps(XLMR_JSON))
    out = tmp_path / "converted"
    argv = ["convert", "--from", "official-cclm", "--input", str(ckpt), "--text-config", str(text)]
    assert main([*argv, "--output", str(out)]) == 0
    assert not XVLM.from_pretrained(out).config.text.roberta_positions
    back = tmp_path / "back.th"
    assert main(["convert", "--to", "official-cclm", "--input", str(out), "--output", str(back)]) == 0
    assert_same_state(torch.load(back, weights_only=True)["model"], sd)
    assert not (tmp_path / "back_config_cross.json").exists()
