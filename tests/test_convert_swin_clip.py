"""``official-xvlm`` checkpoints with Swin and CLIP-ViT vision encoders: detection, round trip, parity, CLI.

The official-layout state dicts are built from the official module structure (``models/swin_transformer.py``,
``models/clip_vit.py``: key names, shapes, derived buffers) and the vision references are the plain-tensor
re-computations of ``test_models_vision_swin_clip.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from grainvl.cli import main
from grainvl.models import convert
from grainvl.models.xvlm import XVLM
from test_convert import (
    FIXTURES,
    VISION,
    _Rand,
    assert_same_state,
    bert_layer_state,
    embeddings_state,
    heads_state,
    mlm_head_state,
    official_cclm_state,
)
from test_models_vision_swin_clip import _rel_index, clip_reference, official_swin_mask, swin_reference

SWIN_DEPTHS, SWIN_HEADS, WINDOW, SWIN_RES = (2, 2), (2, 4), 4, 64  # 16x16 then 8x8 tokens
CLIP_HEADS, CLIP_PATCH, CLIP_RES = 4, 8, 32
ATOL = 1e-5


def _text_and_heads(r: _Rand) -> dict[str, Tensor]:
    """X-VLM's pre-training text side (BertForMaskedLM, cross-attention from layer 2) and heads."""
    sd = embeddings_state(r, "text_encoder.bert.embeddings.")
    for i in range(3):
        sd.update(bert_layer_state(r, f"text_encoder.bert.encoder.layer.{i}.", cross=i >= 2))
    sd.update(mlm_head_state(r, "text_encoder.cls.", sd["text_encoder.bert.embeddings.word_embeddings.weight"]))
    return sd | heads_state(r)


def official_swin_state(seed: int = 0, res: int = SWIN_RES, window: int = WINDOW) -> dict[str, Tensor]:
    """X-VLM v1 ``vision_encoder`` = SwinTransformer(patch 4, embed VISION/2, depths 2-2, heads 2-4)."""
    r = _Rand(seed)
    v = "vision_encoder."
    embed = VISION // 2
    sd = r.linear(v + "patch_embed.proj.", embed, 0) | r.norm(v + "patch_embed.norm.", embed)
    sd[v + "patch_embed.proj.weight"] = r(embed, 3, 4, 4)
    side = res // 4
    for s, (depth, heads) in enumerate(zip(SWIN_DEPTHS, SWIN_HEADS, strict=True)):
        dim, grid = embed * 2**s, side // 2**s
        win = min(window, grid)
        for i in range(depth):
            p = f"{v}layers.{s}.blocks.{i}."
            sd.update(r.norm(p + "norm1.", dim) | r.norm(p + "norm2.", dim))
            sd[p + "attn.relative_position_bias_table"] = r((2 * win - 1) ** 2, heads)
            sd[p + "attn.relative_position_index"] = _rel_index(win)
            sd.update(r.linear(p + "attn.qkv.", 3 * dim, dim) | r.linear(p + "attn.proj.", dim, dim))
            sd.update(r.linear(p + "mlp.fc1.", 4 * dim, dim) | r.linear(p + "mlp.fc2.", dim, 4 * dim))
            if i % 2 and grid > window:
                sd[p + "attn_mask"] = official_swin_mask(grid, grid, win, win // 2)
        if s < len(SWIN_DEPTHS) - 1:
            sd[f"{v}layers.{s}.downsample.reduction.weight"] = r(2 * dim, 4 * dim)
            sd.update(r.norm(f"{v}layers.{s}.downsample.norm.", 4 * dim))
    sd.update(r.norm(v + "norm.", VISION))
    return sd | _text_and_heads(r)


def official_clip_state(seed: int = 0) -> dict[str, Tensor]:
    """X-VLM ``vision_encoder`` = CLIPVisionTransformer(patch 8, VISION wide, 2 layers)."""
    r = _Rand(seed)
    v = "vision_encoder."
    tokens = (CLIP_RES // CLIP_PATCH) ** 2 + 1
    sd = {v + "patch_embed.weight": r(VISION, 3, CLIP_PATCH, CLIP_PATCH), v + "class_embedding": r(VISION)}
    sd[v + "pos_embed.weight"] = r(tokens, VISION)
    sd[v + "position_ids"] = torch.arange(tokens).expand((1, -1))
    sd.update(r.norm(v + "pre_layrnorm.", VISION) | r.norm(v + "post_layernorm.", VISION))
    for i in range(2):
        p = f"{v}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd.update(r.linear(p + f"self_attn.{proj}.", VISION, VISION))
        sd.update(r.norm(p + "layer_norm1.", VISION) | r.norm(p + "layer_norm2.", VISION))
        sd.update(r.linear(p + "mlp.fc1.", 4 * VISION, VISION) | r.linear(p + "mlp.fc2.", VISION, 4 * VISION))
    return sd | _text_and_heads(r)


def _vision(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("vision_encoder.") :]: v for k, v in sd.items() if k.startswith("vision_encoder.")}


def _forward(model: XVLM, res: int) -> None:
    """The whole converted model runs: image-text matching logits for one pair."""
    image = torch.randn(1, 3, res, res)
    ids, atts = torch.tensor([[2, 5, 7, 3]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        vision, vision_atts = model.encode_image(image)
        fused = model.encode_multimodal(ids, atts, vision, vision_atts)
        assert model.itm_logits(fused).shape == (1, 2)
        assert model.image_feat(vision).shape == (1, 16)


def test_detects_swin_and_clip_vit() -> None:
    assert convert.detect_vision_variant(official_swin_state()) == "swin"
    assert convert.detect_vision_variant(official_clip_state()) == "clip_vit"


def test_xvlm_swin_round_trip_and_vision_parity() -> None:
    sd = official_swin_state()
    model, report = convert.load_official(
        sd, "official-xvlm", FIXTURES / "xvlm_tiny_swin.yaml", FIXTURES / "bert_tiny_config.json"
    )
    assert not report.problems() and not report.resized
    vision = model.config.vision
    assert (vision.kind, vision.depths, vision.stage_heads, vision.window_size) == ("swin", [2, 2], [2, 4], 4)
    assert (vision.resolution, vision.patch_size, vision.width) == (SWIN_RES, 8, VISION)
    assert_same_state(convert.to_official(model, "official-xvlm", "pretrain"), sd)
    image = torch.randn(2, 3, SWIN_RES, SWIN_RES)
    with torch.no_grad():
        out = model.vision_encoder(image)
    torch.testing.assert_close(out, swin_reference(_vision(sd), image, vision), atol=ATOL, rtol=0)
    _forward(model, SWIN_RES)


def test_swin_without_config_infers_resolution_from_the_mask() -> None:
    model, report = convert.load_official(
        official_swin_state(), "official-xvlm", None, FIXTURES / "bert_tiny_config.json"
    )
    assert model.config.vision.resolution == SWIN_RES and not report.problems()
    bare = {k: v for k, v in official_swin_state().items() if not k.endswith("attn_mask")}  # as load_pretrained
    model, report = convert.load_official(bare, "official-xvlm", None, FIXTURES / "bert_tiny_config.json")
    assert model.config.vision.resolution == WINDOW * 8  # window x stride, the official configs' rule
    assert any("window x stride" in note for note in report.notes)


def test_swin_window_change_resizes_relative_tables() -> None:
    sd = official_swin_state()
    config = convert.read_official_config(FIXTURES / "xvlm_tiny_swin.yaml") | {"image_res": 96, "window_size": 6}
    model, report = convert.load_official(sd, "official-xvlm", config, FIXTURES / "bert_tiny_config.json")
    key = "vision_encoder.layers.0.blocks.1.attn.relative_position_bias_table"
    assert f"{key}: window 4 -> 6 (geometric)" in report.resized  # X-VLM: interp2d on a geometric grid
    assert model.state_dict()[key].shape == (121, 2)
    assert model.state_dict()["vision_encoder.layers.0.blocks.1.attn_mask"].shape == (16, 36, 36)
    _forward(model, 96)


def test_swin_resolution_without_window_follows_the_official_configs() -> None:
    """Window 4 does not tile 80 px (20 then 10 tokens): without window_size the window becomes
    image_res / stride = 10, the rule by which the official config_swinB_384.json pairs 384 px with 12."""
    config = convert.read_official_config(FIXTURES / "xvlm_tiny_swin.yaml") | {"image_res": 80}
    model, report = convert.load_official(
        official_swin_state(), "official-xvlm", config, FIXTURES / "bert_tiny_config.json"
    )
    assert model.config.vision.window_size == 10
    assert any("window 10 = image_res / stride" in note for note in report.notes)
    assert (
        "vision_encoder.layers.0.blocks.0.attn.relative_position_bias_table: window 4 -> 10 (geometric)"
        in report.resized
    )
    _forward(model, 80)


def test_xvlm_clip_vit_round_trip_and_vision_parity() -> None:
    sd = official_clip_state()
    model, report = convert.load_official(
        sd, "official-xvlm", FIXTURES / "xvlm_tiny_clip.yaml", FIXTURES / "bert_tiny_config.json"
    )
    assert not report.problems()
    vision = model.config.vision
    assert (vision.kind, vision.heads, vision.depth, vision.layer_norm_eps) == ("clip_vit", CLIP_HEADS, 2, 1e-5)
    assert_same_state(convert.to_official(model, "official-xvlm", "pretrain"), sd)
    image = torch.randn(2, 3, CLIP_RES, CLIP_RES)
    with torch.no_grad():
        out = model.vision_encoder(image)
    ref = clip_reference(_vision(sd), image, CLIP_HEADS, CLIP_PATCH, 2)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    _forward(model, CLIP_RES)


def test_clip_vit_resolution_change_resizes_pos_embed() -> None:
    config = convert.read_official_config(FIXTURES / "xvlm_tiny_clip.yaml") | {"image_res": 48}
    model, report = convert.load_official(
        official_clip_state(), "official-xvlm", config, FIXTURES / "bert_tiny_config.json"
    )
    assert "vision_encoder.pos_embed.weight: 17 -> 37 positions" in report.resized
    assert model.vision_encoder.position_ids.shape == (1, 37)
    _forward(model, 48)


def test_clip_vit_heads_default_to_width_over_64_with_a_note() -> None:
    _, report = convert.load_official(official_clip_state(), "official-xvlm", None, FIXTURES / "bert_tiny_config.json")
    assert "CLIP-ViT heads inferred as width/64 = 1" in report.notes


def test_cclm_layout_with_a_swin_vision_encoder_round_trips() -> None:
    """The original CCLM (use_swin) = CrossViewLM text/cross encoders + Swin."""
    sd = {k: v for k, v in official_cclm_state().items() if not k.startswith("vision_encoder.")}
    sd |= {k: v for k, v in official_swin_state().items() if k.startswith("vision_encoder.")}
    model, report = convert.load_official(sd, "official-cclm", None, FIXTURES / "xlmr_tiny_config.json")
    assert not report.problems() and (model.config.vision.kind, model.config.text.layout) == ("swin", "cross")
    assert_same_state(convert.to_official(model, "official-cclm"), sd)


def test_config_flag_must_match_the_weights() -> None:
    with pytest.raises(
        convert.ConversionError, match="use_clip_vit: True but the checkpoint's vision encoder is 'swin'"
    ):
        convert.load_official(official_swin_state(), "official-xvlm", FIXTURES / "xvlm_tiny_clip.yaml")


@pytest.mark.parametrize(
    ("make", "yaml_name", "res"),
    [(official_swin_state, "xvlm_tiny_swin.yaml", SWIN_RES), (official_clip_state, "xvlm_tiny_clip.yaml", CLIP_RES)],
)
def test_cli_swin_and_clip_vit_official_to_grainvl_and_back(tmp_path: Path, make, yaml_name: str, res: int) -> None:
    sd = make()
    ckpt = tmp_path / "xvlm_tiny.th"
    torch.save({"model": sd, "config": {}}, ckpt)
    out = tmp_path / "converted"
    args = ["convert", "--from", "official-xvlm", "--input", str(ckpt), "--official-config", str(FIXTURES / yaml_name)]
    assert main([*args, "--text-config", str(FIXTURES / "bert_tiny_config.json"), "--output", str(out)]) == 0
    model = XVLM.from_pretrained(out).eval()  # the config.json carries the new vision kind
    direct = convert.load_official(sd, "official-xvlm", FIXTURES / yaml_name, FIXTURES / "bert_tiny_config.json")[0]
    assert model.config == direct.config
    image = torch.randn(1, 3, res, res)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_encoder(image), direct.vision_encoder(image), atol=0, rtol=0)
    back = tmp_path / "back.th"
    assert main(["convert", "--to", "official-xvlm", "--input", str(out), "--output", str(back)]) == 0
    assert_same_state(torch.load(back, weights_only=True)["model"], sd)
    again = convert.load_official(back, "official-xvlm", tmp_path / "back.yaml", tmp_path / "back_config_bert.json")[0]
    assert again.config == model.config  # the written YAML + BERT JSON describe the same model
