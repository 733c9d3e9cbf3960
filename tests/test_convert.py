"""Checkpoint conversion: official X-VLM / X²-VLM / CCLM layouts and Hugging Face towers.

The official-layout state dicts are built here from the key list of ``shared/research/xvlm.md`` §1.6
(not from grainvl's modules), and the forward references below are the official formulas written
out with plain tensor operations, so neither side of a comparison is derived from the other.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from grainvl.cli import main
from grainvl.errors import DataError
from grainvl.models import convert
from grainvl.models.vision import interpolate_rel_pos_bias
from grainvl.models.xvlm import XVLM

FIXTURES = Path(__file__).parent / "fixtures" / "official"
VISION, V_HEADS, PATCH, RES, V_DEPTH = 64, 4, 8, 32, 2
HIDDEN, T_HEADS, FFN, VOCAB, MAX_POS, EMBED = 64, 4, 96, 99, 40, 16
ATOL = 1e-5


# ============================================================================ official-layout state dicts
def _rel_index(grid: int) -> Tensor:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    return BeitRelativePositionBias.generate_relative_position_index((grid, grid))


class _Rand:
    """Random tensors: weights ~N(0, 0.2), LayerNorm weights ~1 + N(0, 0.1)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, scale: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=self.g) * scale

    def norm(self, prefix: str, dim: int) -> dict[str, Tensor]:
        return {prefix + "weight": 1 + self(dim, scale=0.1), prefix + "bias": self(dim, scale=0.1)}

    def linear(self, prefix: str, out: int, inp: int) -> dict[str, Tensor]:
        return {prefix + "weight": self(out, inp), prefix + "bias": self(out, scale=0.1)}


def beit_state(r: _Rand, res: int = RES) -> dict[str, Tensor]:
    grid = res // PATCH
    table = (2 * grid - 1) ** 2 + 3
    sd = {"vision_encoder.cls_token": r(1, 1, VISION), **r.linear("vision_encoder.patch_embed.proj.", VISION, 0)}
    sd["vision_encoder.patch_embed.proj.weight"] = r(VISION, 3, PATCH, PATCH)
    for i in range(V_DEPTH):
        p = f"vision_encoder.blocks.{i}."
        sd.update({p + "gamma_1": r(VISION), p + "gamma_2": r(VISION)})
        sd.update(r.norm(p + "norm1.", VISION) | r.norm(p + "norm2.", VISION))
        sd.update(
            {p + "attn.q_bias": r(VISION), p + "attn.v_bias": r(VISION), p + "attn.qkv.weight": r(3 * VISION, VISION)}
        )
        sd[p + "attn.relative_position_bias_table"] = r(table, V_HEADS)
        sd[p + "attn.relative_position_index"] = _rel_index(grid)
        sd.update(r.linear(p + "attn.proj.", VISION, VISION))
        sd.update(r.linear(p + "mlp.fc1.", 4 * VISION, VISION) | r.linear(p + "mlp.fc2.", VISION, 4 * VISION))
    sd.update(r.norm("vision_encoder.fc_norm.", VISION))
    return sd


def bert_layer_state(r: _Rand, p: str, cross: bool) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    parts = ["attention."] + (["crossattention."] if cross else [])
    for part in parts:
        kv = VISION if part == "crossattention." else HIDDEN
        sd.update(r.linear(p + part + "self.query.", HIDDEN, HIDDEN))
        sd.update(r.linear(p + part + "self.key.", HIDDEN, kv) | r.linear(p + part + "self.value.", HIDDEN, kv))
        sd.update(r.linear(p + part + "output.dense.", HIDDEN, HIDDEN) | r.norm(p + part + "output.LayerNorm.", HIDDEN))
    sd.update(r.linear(p + "intermediate.dense.", FFN, HIDDEN))
    sd.update(r.linear(p + "output.dense.", HIDDEN, FFN) | r.norm(p + "output.LayerNorm.", HIDDEN))
    return sd


def embeddings_state(r: _Rand, p: str, types: int = 2) -> dict[str, Tensor]:
    sd = {p + "word_embeddings.weight": r(VOCAB, HIDDEN), p + "position_embeddings.weight": r(MAX_POS, HIDDEN)}
    sd[p + "token_type_embeddings.weight"] = r(types, HIDDEN)
    sd[p + "position_ids"] = torch.arange(MAX_POS)[None]
    return sd | r.norm(p + "LayerNorm.", HIDDEN)


def mlm_head_state(r: _Rand, p: str, tied_to: Tensor | None) -> dict[str, Tensor]:
    sd = r.linear(p + "predictions.transform.dense.", HIDDEN, HIDDEN) | r.norm(
        p + "predictions.transform.LayerNorm.", HIDDEN
    )
    sd[p + "predictions.bias"] = r(VOCAB, scale=0.1)
    sd[p + "predictions.decoder.weight"] = tied_to if tied_to is not None else r(VOCAB, HIDDEN)
    sd[p + "predictions.decoder.bias"] = sd[p + "predictions.bias"]
    return sd


def heads_state(r: _Rand) -> dict[str, Tensor]:
    sd = {"temp": torch.tensor(0.05)}
    sd.update(r.linear("vision_proj.", EMBED, VISION) | r.linear("text_proj.", EMBED, HIDDEN))
    for name, out in (("itm_head.", 2), ("bbox_head.", 4)):
        sd.update(r.linear(name + "0.", 2 * HIDDEN, HIDDEN) | r.norm(name + "1.", 2 * HIDDEN))
        sd.update(r.linear(name + "3.", out, 2 * HIDDEN))
    return sd


def official_x2vlm_state(layout: str = "pretrain", seed: int = 0, frames: int = 0) -> dict[str, Tensor]:
    """models/model_pretrain.XVLM (pretrain: text_encoder.bert/cls) or a fine-tuning model (text_encoder.*)."""
    r = _Rand(seed)
    bert = "text_encoder.bert." if layout == "pretrain" else "text_encoder."
    sd = beit_state(r) | embeddings_state(r, bert + "embeddings.")
    for i in range(3):
        sd.update(bert_layer_state(r, f"{bert}encoder.layer.{i}.", cross=i >= 2))
    if layout == "pretrain":
        sd.update(mlm_head_state(r, "text_encoder.cls.", sd[bert + "embeddings.word_embeddings.weight"]))
    sd.update(heads_state(r))
    if frames:
        sd["absolute_frame_pos_embed"] = r(1, frames, 1, VISION)
    return sd


def official_cclm_state(seed: int = 0) -> dict[str, Tensor]:
    """XVLMPlusBase / CrossViewLM: XLM-R text encoder (2 layers), cross encoder (1 layer), untied mlm_head."""
    r = _Rand(seed)
    sd = beit_state(r) | embeddings_state(r, "text_encoder.embeddings.", types=1)
    for i in range(2):
        sd.update(bert_layer_state(r, f"text_encoder.encoder.layer.{i}.", cross=False))
    sd.update(bert_layer_state(r, "cross_encoder.encoder.layer.0.", cross=True))
    return sd | mlm_head_state(r, "mlm_head.", None) | heads_state(r)


# ============================================================================ official formulas, written out
def _ln(x: Tensor, sd: dict[str, Tensor], p: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps)


def _lin(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return x @ sd[p + "weight"].T + sd[p + "bias"]


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, bias: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v per head; (B, L, D) inputs, bias broadcastable to (B, h, L, K)."""
    b, lq, d = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads) + bias
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, lq, d)


def ref_beit(sd: dict[str, Tensor], image: Tensor) -> Tensor:
    """models/beit2.py: patch conv, [cls, patches], blocks with q/v bias, rel-pos bias, layer scale;
    output [mean(fc_norm(patches)), fc_norm(patches)]."""
    p = "vision_encoder."
    x = F.conv2d(image, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([sd[p + "cls_token"].expand(len(image), -1, -1), x.flatten(2).transpose(1, 2)], 1)
    for i in range(V_DEPTH):
        b = f"{p}blocks.{i}."
        h = _ln(x, sd, b + "norm1.", 1e-6)
        qkv_bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros(VISION), sd[b + "attn.v_bias"]])
        q, k, v = (h @ sd[b + "attn.qkv.weight"].T + qkv_bias).chunk(3, -1)
        index = sd[b + "attn.relative_position_index"]
        bias = sd[b + "attn.relative_position_bias_table"][index.reshape(-1)].reshape(*index.shape, -1).permute(2, 0, 1)
        x = x + sd[b + "gamma_1"] * _lin(_attention(q, k, v, V_HEADS, bias), sd, b + "attn.proj.")
        h = _ln(x, sd, b + "norm2.", 1e-6)
        x = x + sd[b + "gamma_2"] * _lin(F.gelu(_lin(h, sd, b + "mlp.fc1.")), sd, b + "mlp.fc2.")
    patches = _ln(x[:, 1:], sd, p + "fc_norm.", 1e-6)
    return torch.cat([patches.mean(1, keepdim=True), patches], 1)


def ref_bert_layer(
    sd: dict[str, Tensor], p: str, x: Tensor, mask: Tensor, eps: float, image=None, image_mask=None
) -> Tensor:
    """xbert.BertLayer: self-attention -> [cross-attention] -> FFN, post-LN, additive (1 - m) * -10000 masks."""
    a = _attention(
        _lin(x, sd, p + "attention.self.query."),
        _lin(x, sd, p + "attention.self.key."),
        _lin(x, sd, p + "attention.self.value."),
        T_HEADS,
        mask,
    )
    x = _ln(_lin(a, sd, p + "attention.output.dense.") + x, sd, p + "attention.output.LayerNorm.", eps)
    if image is not None:
        c = "crossattention."
        a = _attention(
            _lin(x, sd, p + c + "self.query."),
            _lin(image, sd, p + c + "self.key."),
            _lin(image, sd, p + c + "self.value."),
            T_HEADS,
            image_mask,
        )
        x = _ln(_lin(a, sd, p + c + "output.dense.") + x, sd, p + c + "output.LayerNorm.", eps)
    h = _lin(F.gelu(_lin(x, sd, p + "intermediate.dense.")), sd, p + "output.dense.")
    return _ln(h + x, sd, p + "output.LayerNorm.", eps)


def ref_embeddings(sd: dict[str, Tensor], p: str, ids: Tensor, eps: float, roberta_pad: int | None = None) -> Tensor:
    if roberta_pad is None:
        positions = torch.arange(ids.shape[1])[None]
    else:  # RoBERTa: create_position_ids_from_input_ids
        real = ids.ne(roberta_pad).long()
        positions = torch.cumsum(real, 1) * real + roberta_pad
    x = sd[p + "word_embeddings.weight"][ids] + sd[p + "position_embeddings.weight"][positions]
    return _ln(x + sd[p + "token_type_embeddings.weight"][0], sd, p + "LayerNorm.", eps)


def _mask(atts: Tensor) -> Tensor:
    return (1.0 - atts[:, None, None, :].float()) * -10000.0


def _mlp(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    """build_mlp: Linear -> LayerNorm (eps 1e-5) -> GELU -> Linear."""
    return _lin(F.gelu(_ln(_lin(x, sd, p + "0."), sd, p + "1.", 1e-5)), sd, p + "3.")


def ref_outputs(
    sd: dict[str, Tensor], image: Tensor, ids: Tensor, atts: Tensor, cclm: bool = False
) -> dict[str, Tensor]:
    """XVLMBase.get_vision_embeds / get_text_embeds / get_cross_embeds / get_features, itm_head, bbox, MLM."""
    eps = 1e-5 if cclm else 1e-12
    image_embeds = ref_beit(sd, image)
    image_mask = _mask(torch.ones(image_embeds.shape[:2]))
    if cclm:
        text = ref_embeddings(sd, "text_encoder.embeddings.", ids, eps, roberta_pad=1)
        text_layers, fusion_layers = (
            ["text_encoder.encoder.layer.0.", "text_encoder.encoder.layer.1."],
            ["cross_encoder.encoder.layer.0."],
        )
        mlm = "mlm_head.predictions."
    else:
        text = ref_embeddings(sd, "text_encoder.bert.embeddings.", ids, eps)
        text_layers = [f"text_encoder.bert.encoder.layer.{i}." for i in (0, 1)]
        fusion_layers, mlm = ["text_encoder.bert.encoder.layer.2."], "text_encoder.cls.predictions."
    for p in text_layers:
        text = ref_bert_layer(sd, p, text, _mask(atts), eps)
    fused = text
    cross_eps = 1e-12 if cclm else eps  # CrossViewLM: the cross encoder is built from a BERT config (eps 1e-12)
    for p in fusion_layers:
        fused = ref_bert_layer(sd, p, fused, _mask(atts), cross_eps, image_embeds, image_mask)
    transform = _ln(F.gelu(_lin(fused, sd, mlm + "transform.dense.")), sd, mlm + "transform.LayerNorm.", eps)
    return {
        "image_embeds": image_embeds,
        "text_embeds": text,
        "image_feat": F.normalize(_lin(image_embeds[:, 0], sd, "vision_proj."), dim=-1),
        "text_feat": F.normalize(_lin(text[:, 0], sd, "text_proj."), dim=-1),
        "itm_logits": _mlp(sd, "itm_head.", fused[:, 0]),
        "box": _mlp(sd, "bbox_head.", fused[:, 0]).sigmoid(),
        "mlm_logits": transform @ sd[mlm + "decoder.weight"].T + sd[mlm + "bias"],
    }


def grainvl_outputs(model: XVLM, image: Tensor, ids: Tensor, atts: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        f = model.extract_features({"image": image, "text_ids": ids, "text_atts": atts})
        return {
            "image_embeds": f.image_embeds,
            "text_embeds": f.text_embeds,
            "image_feat": f.image_feat,
            "text_feat": f.text_feat,
            "itm_logits": model.itm_logits(f.fused),
            "box": model.predict_box(f.fused),
            "mlm_logits": model.mlm_logits(f.fused),
        }


def batch(pad: int = 0, res: int = RES) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    image = torch.randn(2, 3, res, res, generator=g)
    ids = torch.randint(3, VOCAB, (2, 6), generator=g)
    atts = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return image, ids.masked_fill(atts == 0, pad), atts


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


# ============================================================================ official round trips + parity
def test_x2vlm_pretrain_round_trip_is_key_for_key_identical() -> None:
    sd = official_x2vlm_state("pretrain", frames=3)
    model, report = convert.load_official(
        sd, "official-x2vlm", FIXTURES / "x2vlm_tiny_pretrain.yaml", FIXTURES / "bert_tiny_config.json"
    )
    assert report.layout == "pretrain" and not report.problems()
    assert model.config.add_frame_pos and model.config.frame_len == 3
    assert_same_state(convert.to_official(model, "official-x2vlm", "pretrain"), sd)


def test_x2vlm_finetune_layout_round_trip_and_missing_mlm_head_reported() -> None:
    sd = official_x2vlm_state("finetune")
    with pytest.raises(
        convert.ConversionError, match=r"missing text_encoder\.cls\.predictions\.transform\.dense\.weight"
    ):
        convert.load_official(sd, "official-x2vlm", text_config=FIXTURES / "bert_tiny_config.json")
    model, report = convert.load_official(
        sd, "official-x2vlm", text_config=FIXTURES / "bert_tiny_config.json", strict=False
    )
    assert report.layout == "finetune"
    assert set(report.missing) == {
        f"text_encoder.cls.predictions.{n}"
        for n in (
            "bias",
            "transform.dense.weight",
            "transform.dense.bias",
            "transform.LayerNorm.weight",
            "transform.LayerNorm.bias",
        )
    }
    assert not model.config.add_frame_pos
    assert_same_state(convert.to_official(model, "official-x2vlm", "finetune"), sd)


@pytest.mark.parametrize("cclm", [False, True])
def test_config_round_trip_through_official_yaml_and_bert_json(cclm: bool) -> None:
    sd = official_cclm_state() if cclm else official_x2vlm_state(frames=3)
    fmt = "official-cclm" if cclm else "official-x2vlm"
    text_json = FIXTURES / ("xlmr_tiny_config.json" if cclm else "bert_tiny_config.json")
    model, _ = convert.load_official(
        sd, fmt, FIXTURES / ("cclm_tiny.yaml" if cclm else "x2vlm_tiny_pretrain.yaml"), text_json
    )
    yaml_config, bert = convert.to_official_config(model.config)
    assert yaml_config["use_beit_v2"] and yaml_config["image_res"] == RES and bert["num_attention_heads"] == T_HEADS
    again, _ = convert.load_official(sd, fmt, yaml_config, bert)
    assert again.config == model.config


def test_cclm_round_trip_is_key_for_key_identical() -> None:
    sd = official_cclm_state()
    model, report = convert.load_official(
        sd, "official-cclm", FIXTURES / "cclm_tiny.yaml", FIXTURES / "xlmr_tiny_config.json"
    )
    assert report.layout == "cclm" and not report.problems()
    assert model.config.text.layout == "cross" and model.config.text.roberta_positions
    assert_same_state(convert.to_official(model, "official-cclm"), sd)


def test_x2vlm_outputs_equal_the_official_formulas() -> None:
    sd = official_x2vlm_state("pretrain")
    model, _ = convert.load_official(
        sd, "official-x2vlm", FIXTURES / "x2vlm_tiny_pretrain.yaml", FIXTURES / "bert_tiny_config.json"
    )
    assert model.config.text.num_heads == T_HEADS  # from the BERT JSON, not the hidden/64 guess
    image, ids, atts = batch()
    expected, got = ref_outputs(sd, image, ids, atts), grainvl_outputs(model, image, ids, atts)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=1e-5, msg=key)


def test_cclm_outputs_equal_the_official_formulas() -> None:
    sd = official_cclm_state(seed=3)
    model, _ = convert.load_official(
        sd, "official-cclm", FIXTURES / "cclm_tiny.yaml", FIXTURES / "xlmr_tiny_config.json"
    )
    image, ids, atts = batch(pad=1)
    expected, got = ref_outputs(sd, image, ids, atts, cclm=True), grainvl_outputs(model, image, ids, atts)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=ATOL, rtol=1e-5, msg=key)


def test_higher_resolution_config_resizes_relative_position_tables() -> None:
    sd = official_x2vlm_state("pretrain")
    model, report = convert.load_official(
        sd, "official-x2vlm", FIXTURES / "x2vlm_tiny_retrieval_48.yaml", FIXTURES / "bert_tiny_config.json"
    )
    assert model.config.vision.resolution == 48 and len(report.resized) == V_DEPTH
    key = "vision_encoder.blocks.1.attn.relative_position_bias_table"
    torch.testing.assert_close(model.state_dict()[key], interpolate_rel_pos_bias(sd[key], 4, 6))
    assert model.state_dict()[key].shape == ((2 * 6 - 1) ** 2 + 3, V_HEADS)
    assert model.encode_image(torch.randn(1, 3, 48, 48))[0].shape == (1, 37, VISION)


def test_xvlm_deit_vit_and_roberta_layout_round_trip_and_vision_parity() -> None:
    """X-VLM v1 with its DeiT ViT (no use_swin/use_clip_vit) and use_roberta (text_encoder.roberta + lm_head)."""
    r = _Rand(5)
    grid = RES // PATCH
    sd = {"vision_encoder.cls_token": r(1, 1, VISION), "vision_encoder.pos_embed": r(1, grid * grid + 1, VISION)}
    sd.update(r.linear("vision_encoder.patch_embed.proj.", VISION, 0))
    sd["vision_encoder.patch_embed.proj.weight"] = r(VISION, 3, PATCH, PATCH)
    for i in range(V_DEPTH):
        p = f"vision_encoder.blocks.{i}."
        sd.update(
            r.norm(p + "norm1.", VISION) | r.norm(p + "norm2.", VISION) | r.linear(p + "attn.qkv.", 3 * VISION, VISION)
        )
        sd.update(r.linear(p + "attn.proj.", VISION, VISION) | r.linear(p + "mlp.fc1.", 4 * VISION, VISION))
        sd.update(r.linear(p + "mlp.fc2.", VISION, 4 * VISION))
    sd.update(r.norm("vision_encoder.norm.", VISION))
    sd.update(embeddings_state(r, "text_encoder.roberta.embeddings.", types=1))
    for i in range(3):
        sd.update(bert_layer_state(r, f"text_encoder.roberta.encoder.layer.{i}.", cross=i >= 2))
    words = sd["text_encoder.roberta.embeddings.word_embeddings.weight"]
    sd.update(
        r.linear("text_encoder.lm_head.dense.", HIDDEN, HIDDEN) | r.norm("text_encoder.lm_head.layer_norm.", HIDDEN)
    )
    sd["text_encoder.lm_head.bias"] = r(VOCAB)
    sd["text_encoder.lm_head.decoder.weight"], sd["text_encoder.lm_head.decoder.bias"] = (
        words,
        sd["text_encoder.lm_head.bias"],
    )
    sd.update(heads_state(r))
    yaml_config = {"use_swin": False, "use_clip_vit": False, "use_roberta": True, "image_res": RES, "patch_size": PATCH}
    model, report = convert.load_official(
        sd,
        "official-xvlm",
        yaml_config,
        {
            "model_type": "roberta",
            "hidden_size": HIDDEN,
            "num_hidden_layers": 3,
            "num_attention_heads": T_HEADS,
            "intermediate_size": FFN,
            "vocab_size": VOCAB,
            "max_position_embeddings": MAX_POS,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "fusion_layer": 2,
        },
    )
    assert report.layout == "roberta" and model.config.vision.kind == "vit" and model.config.text.roberta_positions
    assert_same_state(convert.to_official(model, "official-xvlm", "roberta"), sd)
    # timm/DeiT ViT written out: [cls, patches] + pos_embed, pre-LN blocks with full qkv bias, final norm on all tokens.
    image = batch()[0]
    x = F.conv2d(
        image, sd["vision_encoder.patch_embed.proj.weight"], sd["vision_encoder.patch_embed.proj.bias"], stride=PATCH
    )
    x = (
        torch.cat([sd["vision_encoder.cls_token"].expand(2, -1, -1), x.flatten(2).transpose(1, 2)], 1)
        + sd["vision_encoder.pos_embed"]
    )
    for i in range(V_DEPTH):
        p = f"vision_encoder.blocks.{i}."
        q, k, v = _lin(_ln(x, sd, p + "norm1.", 1e-6), sd, p + "attn.qkv.").chunk(3, -1)
        # Weights do not say how many heads a ViT has; X-VLM's DeiT-B has 64-wide heads, which the converter assumes.
        x = x + _lin(_attention(q, k, v, VISION // 64, torch.zeros(())), sd, p + "attn.proj.")
        x = x + _lin(F.gelu(_lin(_ln(x, sd, p + "norm2.", 1e-6), sd, p + "mlp.fc1.")), sd, p + "mlp.fc2.")
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(image)[0], _ln(x, sd, "vision_encoder.norm.", 1e-6), atol=ATOL, rtol=1e-5
        )


# ============================================================================ strictness and errors
def test_strict_conversion_names_every_missing_unexpected_and_misshaped_key() -> None:
    sd = official_x2vlm_state("pretrain")
    del sd["itm_head.3.bias"]
    sd["text_encoder.bert.pooler.dense.weight"] = torch.zeros(HIDDEN, HIDDEN)
    sd["text_proj.weight"] = torch.zeros(EMBED, HIDDEN + 1)
    with pytest.raises(convert.ConversionError) as info:
        convert.load_official(sd, "official-x2vlm", text_config=FIXTURES / "bert_tiny_config.json")
    message = str(info.value)
    assert "\n" not in message
    for fragment in (
        "missing itm_head.3.bias",
        "unexpected text_encoder.bert.pooler.dense.weight",
        "mis-shaped text_proj.weight: checkpoint (16, 65) vs model (16, 64)",
    ):
        assert fragment in message
    with pytest.raises(convert.ConversionError, match="mis-shaped"):  # shapes fail even when not strict
        convert.load_official(sd, "official-x2vlm", text_config=FIXTURES / "bert_tiny_config.json", strict=False)


def test_untied_decoder_in_x2vlm_layout_is_refused() -> None:
    sd = official_x2vlm_state("pretrain")
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.cls.predictions.decoder.weight"] + 1
    with pytest.raises(convert.ConversionError, match=r"decoder\.weight: differs from .*word_embeddings\.weight"):
        convert.load_official(sd, "official-x2vlm", text_config=FIXTURES / "bert_tiny_config.json")


def test_config_contradicting_the_weights_is_refused() -> None:
    sd = official_x2vlm_state("pretrain")
    yaml_config = {"text_num_hidden_layers": 18, "text_fusion_start_at": 12, "patch_size": 16, "embed_dim": 256}
    with pytest.raises(convert.ConversionError) as info:
        convert.load_official(sd, "official-x2vlm", yaml_config)
    for fragment in (
        "patch_size 16 != checkpoint patch size 8",
        "text_num_hidden_layers 18 != 3",
        "fusion start 12 != first cross-attention layer 2",
        "embed_dim 256 != vision_proj rows 16",
    ):
        assert fragment in str(info.value)
    with pytest.raises(convert.ConversionError, match="format official-cclm but the checkpoint has no cross_encoder"):
        convert.load_official(sd, "official-cclm")


def test_config_selecting_swin_contradicting_the_weights_is_refused() -> None:
    with pytest.raises(convert.ConversionError, match="use_swin: True but the checkpoint's vision encoder is 'beit2'"):
        convert.load_official(official_x2vlm_state(), "official-xvlm", FIXTURES / "xvlm_v1_swin.yaml")


def test_xvlm_v1_bert_json_sets_heads_and_fusion_layer() -> None:
    """X-VLM's configs/config_bert.json carries ``fusion_layer``; it must agree with the weights."""
    model, _ = convert.load_official(
        official_x2vlm_state(), "official-xvlm", None, FIXTURES / "xvlm_v1_config_bert.json"
    )
    assert (model.config.text.num_heads, model.config.text.fusion_start) == (T_HEADS, 2)
    wrong = json.loads((FIXTURES / "xvlm_v1_config_bert.json").read_text()) | {"fusion_layer": 1}
    with pytest.raises(convert.ConversionError, match="fusion start 1 != first cross-attention layer 2"):
        convert.load_official(official_x2vlm_state(), "official-xvlm", None, wrong)


def test_swin_v2_is_refused_precisely() -> None:
    sd = {k: v for k, v in official_x2vlm_state().items() if not k.startswith("vision_encoder.")}
    sd |= {"vision_encoder.layers.0.blocks.0.attn.cpb_mlp.0.weight": torch.zeros(512, 2)}
    with pytest.raises(convert.UnsupportedVariant, match="Swin-v2 vision encoder"):
        convert.load_official(sd, "official-xvlm")


@pytest.mark.parametrize("suffix", [".th", ".pth", ".safetensors"])
@pytest.mark.parametrize("wrapped", [True, False])
def test_checkpoint_files_bare_or_wrapped(tmp_path: Path, suffix: str, wrapped: bool) -> None:
    from safetensors.torch import save_file

    sd = official_x2vlm_state("pretrain")
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    else:
        torch.save({"model": sd, "config": {"image_res": RES, "embed_dim": EMBED}} if wrapped else sd, path)
    assert_same_state(convert.read_checkpoint(path), sd)


def test_unreadable_checkpoints_raise_one_line_data_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=r"garbage\.th: not a checkpoint torch\.load"):
        convert.read_checkpoint(garbage)
    pickled = tmp_path / "object.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Rand(0)}, pickled)  # arbitrary objects need weights_only=False
    with pytest.raises(DataError, match=r"object\.pth"):
        convert.read_checkpoint(pickled)
    listy = tmp_path / "list.th"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(DataError, match="expected a state dict"):
        convert.read_checkpoint(listy)


# ============================================================================ Hugging Face towers
def _save_hf(model, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("fmt", ["hf-bert", "hf-xlmr"])
def test_hf_text_towers_match_transformers_and_round_trip(tmp_path: Path, fmt: str) -> None:
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=T_HEADS,
        intermediate_size=FFN,
        max_position_embeddings=MAX_POS + 2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    if fmt == "hf-bert":
        hf, pad = BertModel(BertConfig(**kwargs)).eval(), 0
    else:
        hf, pad = (
            XLMRobertaModel(XLMRobertaConfig(**kwargs, pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5)).eval(),
            1,
        )
    _randomise(hf)
    folder = _save_hf(hf, tmp_path, "hf")
    tower, config, report = convert.load_hf_tower(fmt, folder)
    assert any(k.startswith("pooler.") for k in report.ignored)
    _, ids, atts = batch(pad=pad)
    with torch.no_grad():
        torch.testing.assert_close(
            tower(ids, atts), hf(input_ids=ids, attention_mask=atts).last_hidden_state, atol=ATOL, rtol=0
        )
    back = convert.save_hf_tower(tower, config, fmt, tmp_path / "back")
    again = type(hf).from_pretrained(back).eval()
    original = {k: v for k, v in hf.state_dict().items() if not k.startswith("pooler.")}
    assert_same_state({k: v for k, v in again.state_dict().items() if not k.startswith("pooler.")}, original)


def test_hf_vit_matches_transformers_and_round_trips(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    hf = ViTModel(
        ViTConfig(
            image_size=RES,
            patch_size=PATCH,
            hidden_size=VISION,
            num_hidden_layers=2,
            num_attention_heads=V_HEADS,
            intermediate_size=4 * VISION,
        )
    ).eval()  # layer_norm_eps 1e-12
    _randomise(hf)
    tower, config, _ = convert.load_hf_tower("hf-vit", _save_hf(hf, tmp_path, "vit"))
    assert config.layer_norm_eps == 1e-12
    image = batch()[0]
    with torch.no_grad():
        torch.testing.assert_close(tower(image), hf(image).last_hidden_state, atol=ATOL, rtol=0)
    again = ViTModel.from_pretrained(convert.save_hf_tower(tower, config, "hf-vit", tmp_path / "back")).eval()
    no_pool = lambda m: {k: v for k, v in m.state_dict().items() if not k.startswith("pooler.")}  # noqa: E731
    assert_same_state(no_pool(again), no_pool(hf))


@pytest.mark.parametrize("shared", [False, True])
def test_hf_beit_matches_transformers_and_round_trips(tmp_path: Path, shared: bool) -> None:
    from transformers import BeitConfig, BeitModel

    torch.manual_seed(0)
    hf = BeitModel(
        BeitConfig(
            image_size=RES,
            patch_size=PATCH,
            hidden_size=VISION,
            num_hidden_layers=2,
            num_attention_heads=V_HEADS,
            intermediate_size=4 * VISION,
            use_mean_pooling=True,
            use_relative_position_bias=not shared,
            use_shared_relative_position_bias=shared,
            layer_scale_init_value=0.1,
        )
    ).eval()
    _randomise(hf)
    tower, config, report = convert.load_hf_tower("hf-beit", _save_hf(hf, tmp_path, "beit"))
    assert ("shared relative position table" in " ".join(report.notes)) == shared
    image = batch()[0]
    with torch.no_grad():
        out = hf(image)
        patches = hf.pooler.layernorm(out.last_hidden_state[:, 1:])  # fc_norm on the patch tokens
        torch.testing.assert_close(tower(image)[:, 1:], patches, atol=ATOL, rtol=0)
        torch.testing.assert_close(tower(image)[:, 0], patches.mean(1), atol=ATOL, rtol=0)
    if not shared:  # a shared table becomes per-block tables: same function, different layout
        again = BeitModel.from_pretrained(convert.save_hf_tower(tower, config, "hf-beit", tmp_path / "back")).eval()
        assert_same_state(again.state_dict(), hf.state_dict())


def test_hf_folder_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    folder = _save_hf(
        BertModel(
            BertConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=1,
                num_attention_heads=T_HEADS,
                intermediate_size=FFN,
            )
        ),
        tmp_path,
        "bert",
    )
    with pytest.raises(convert.ConversionError, match="model_type 'bert' is not 'vit'"):
        convert.load_hf_tower("hf-vit", folder)
    with pytest.raises(convert.ConversionError, match="model_type 'bert' is not xlm-roberta or roberta"):
        convert.load_hf_tower("hf-xlmr", folder)


# ============================================================================ command line
def test_cli_official_to_grainvl_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = official_x2vlm_state("pretrain")
    ckpt = tmp_path / "x2vlm_tiny.th"
    torch.save({"model": sd, "config": {}}, ckpt)
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                "--from",
                "official-x2vlm",
                "--input",
                str(ckpt),
                "--official-config",
                str(FIXTURES / "x2vlm_tiny_pretrain.yaml"),
                "--text-config",
                str(FIXTURES / "bert_tiny_config.json"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "converted" in capsys.readouterr().out
    assert json.loads((out / "conversion_report.json").read_text())["missing"] == []
    model = XVLM.from_pretrained(out).eval()
    image, ids, atts = batch()
    torch.testing.assert_close(
        grainvl_outputs(model, image, ids, atts)["itm_logits"],
        ref_outputs(sd, image, ids, atts)["itm_logits"],
        atol=ATOL,
        rtol=1e-5,
    )
    back = tmp_path / "back.th"
    assert main(["convert", "--to", "official-x2vlm", "--input", str(out), "--output", str(back)]) == 0
    loaded = torch.load(back, weights_only=True)
    assert_same_state(loaded["model"], sd)
    again = convert.load_official(back, "official-x2vlm", tmp_path / "back.yaml", tmp_path / "back_config_bert.json")[0]
    assert again.config == model.config  # the written YAML + BERT JSON describe the same model


def test_cli_hf_tower_and_back(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    hf = BertModel(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=T_HEADS,
            intermediate_size=FFN,
        )
    ).eval()
    folder = _save_hf(hf, tmp_path, "bert")
    assert main(["convert", "--from", "hf-bert", "--input", str(folder), "--output", str(tmp_path / "tower")]) == 0
    _, config = convert.load_tower(tmp_path / "tower")
    assert config.num_layers == 2
    assert (
        main(["convert", "--to", "hf-bert", "--input", str(tmp_path / "tower"), "--output", str(tmp_path / "back")])
        == 0
    )
    again = BertModel.from_pretrained(tmp_path / "back")
    assert torch.equal(
        again.state_dict()["encoder.layer.1.output.dense.weight"],
        hf.state_dict()["encoder.layer.1.output.dense.weight"],
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "official-x2vlm", "--input", "{garbage}"],
        ["--from", "official-x2vlm", "--input", "{missing}"],
        ["--from", "official-x2vlm", "--input", "{hf_weights}"],
        ["--from", "official-xvlm", "--input", "{swin}"],
        ["--from", "hf-vit", "--input", "{garbage}"],
        ["--to", "official-x2vlm", "--input", "{tmp}"],
    ],
)
def test_cli_wrong_files_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    from safetensors.torch import save_file

    (tmp_path / "garbage.th").write_bytes(b"\x00garbage")
    save_file({"embeddings.word_embeddings.weight": torch.zeros(3, 4)}, str(tmp_path / "bert.safetensors"))
    swin = {k: v for k, v in official_x2vlm_state().items() if not k.startswith("vision_encoder.")}
    swin["vision_encoder.layers.0.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save({"model": swin}, tmp_path / "swin.th")
    names = {
        "garbage": tmp_path / "garbage.th",
        "missing": tmp_path / "nope.th",
        "hf_weights": tmp_path / "bert.safetensors",
        "swin": tmp_path / "swin.th",
        "tmp": tmp_path,
    }
    argv = ["convert", *[a.format(**names) for a in args], "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_attention_box_head_has_no_official_layout() -> None:
    import dataclasses

    from grainvl.models.factory import get_model_config

    model = XVLM(dataclasses.replace(get_model_config("xvlm-tiny"), box_head="attention"))
    with pytest.raises(ValueError, match="box_head 'attention' is our extension"):
        convert.to_official(model, "official-x2vlm")
