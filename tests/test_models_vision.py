"""Shared transformer layers and vision towers (grainvl.models.layers, grainvl.models.vision)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from grainvl.data.transforms import CLIP_MEAN, EFFICIENTNET_LITE_MEAN
from grainvl.models.layers import Attention, DropPath, Mlp, additive_mask, mask_value
from grainvl.models.vision import (
    BeitV2,
    EfficientNetLiteTower,
    PlainViT,
    VisionConfig,
    beit2_base,
    beit2_large,
    beit2_tiny,
    build_vision_tower,
    efficientnet_lite0,
    geometric_source_offsets,
    interpolate_rel_pos_bias,
    load_efficientnet_lite0,
    relative_position_index,
    resize_state_dict,
    vit_tiny,
)
from grainvl.utils.fileio import load_model_safetensors, save_model_safetensors


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter (layer scales, biases, tables) a non-trivial value so parity tests bite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith(("gamma_1", "gamma_2")) or ("norm" in name and name.endswith("weight")):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)


# ---------------------------------------------------------------------------------------------
# layers.py


def _naive_attention(
    attn: Attention, x: Tensor, keep: Tensor | None, bias: Tensor | None, head_mask: Tensor | None
) -> Tensor:
    """softmax(Q Kᵀ/√d + bias + mask) V per head, head mask, output projection, written out by hand."""
    batch, n_tokens, dim = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    weight = attn.qkv.weight
    if attn.qkv_bias_mode == "qv":
        q_b, k_b, v_b = attn.q_bias, torch.zeros(dim), attn.v_bias
    elif attn.qkv_bias_mode == "full":
        q_b, k_b, v_b = attn.qkv.bias.split(dim)
    else:
        q_b = k_b = v_b = torch.zeros(dim)
    q = (x @ weight[:dim].T + q_b).view(batch, n_tokens, heads, hd).transpose(1, 2)
    k = (x @ weight[dim : 2 * dim].T + k_b).view(batch, n_tokens, heads, hd).transpose(1, 2)
    v = (x @ weight[2 * dim :].T + v_b).view(batch, n_tokens, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, N, N)
    if bias is not None:
        scores = scores + bias
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v  # (B, H, N, hd)
    if head_mask is not None:
        out = out * (head_mask if head_mask.dim() == 2 else head_mask[None])[:, :, None, None]
    return attn.proj(out.transpose(1, 2).reshape(batch, n_tokens, dim))


@pytest.mark.parametrize("qkv_bias", ["none", "qv", "full"])
@pytest.mark.parametrize("head_mask_shape", [None, (4,), (2, 4)])
def test_attention_matches_naive_softmax(qkv_bias: str, head_mask_shape: tuple[int, ...] | None) -> None:
    torch.manual_seed(0)
    attn = Attention(16, 4, qkv_bias=qkv_bias).eval()  # type: ignore[arg-type]
    _randomise(attn)
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[True] * 5, [True, True, True, False, False]])
    bias = torch.randn(1, 4, 5, 5)
    head_mask = None if head_mask_shape is None else torch.rand(head_mask_shape)
    ours = attn(x, key_padding_mask=keep, attn_bias=bias, head_mask=head_mask)
    torch.testing.assert_close(ours, _naive_attention(attn, x, keep, bias, head_mask), atol=1e-5, rtol=1e-5)
    # With nothing masked the plain call is the same computation.
    torch.testing.assert_close(attn(x), _naive_attention(attn, x, None, None, None), atol=1e-5, rtol=1e-5)


def test_qv_bias_has_no_key_bias_and_attributes() -> None:
    attn = Attention(12, 3, qkv_bias="qv")
    assert attn.qkv.bias is None and attn.num_heads == 3 and attn.head_dim == 4
    names = {n for n, _ in attn.named_parameters()}
    assert names == {"qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"}
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)


def test_zero_head_mask_removes_that_heads_influence() -> None:
    torch.manual_seed(1)
    attn = Attention(16, 4, qkv_bias="full").eval()
    _randomise(attn)
    x = torch.randn(2, 6, 16)
    head_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    before_masked, before_full = attn(x, head_mask=head_mask), attn(x)
    with torch.no_grad():  # scramble head 1's queries, keys and values
        for part in range(3):
            rows = slice(part * 16 + 4, part * 16 + 8)
            attn.qkv.weight[rows] = torch.randn(4, 16)
            attn.qkv.bias[rows] = torch.randn(4)
    torch.testing.assert_close(attn(x, head_mask=head_mask), before_masked)
    assert not torch.allclose(attn(x), before_full, atol=1e-4)  # the unmasked output did depend on it


def test_additive_mask_values_and_fully_masked_rows() -> None:
    keep = torch.tensor([[1, 1, 0], [0, 0, 0]])
    mask = additive_mask(keep, torch.float32)
    assert mask.shape == (2, 1, 1, 3)
    assert mask[0, 0, 0].tolist() == [0.0, 0.0, mask_value(torch.float32)]
    # Several summed masks stay finite, and a row with every key masked gives no NaN.
    assert torch.isfinite(mask * 4).all()
    attn = Attention(8, 2).eval()
    out = attn(torch.randn(2, 3, 8), key_padding_mask=keep.bool(), attn_bias=additive_mask(keep, torch.float32))
    assert torch.isfinite(out).all()
    assert torch.isfinite(additive_mask(keep, torch.float16).float() * 4).all()
    with pytest.raises(ValueError, match="keep mask"):
        additive_mask(torch.ones(2, 1, 3))


def test_drop_path_and_mlp() -> None:
    x = torch.ones(1000, 4)
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    out = layer.train()(x)
    per_sample = out[:, 0]
    kept = per_sample != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))  # rescaled
    assert (out == out[:, :1]).all()
    assert 0.18 < (per_sample == 0).float().mean() < 0.32
    mlp = Mlp(8, 32)
    assert mlp.fc1.weight.shape == (32, 8) and mlp.fc2.weight.shape == (8, 32)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 8)


# ---------------------------------------------------------------------------------------------
# BEiT-v2: layout, parameter counts, parity with transformers


def test_beit2_parameter_counts_on_meta_device() -> None:
    # xvlm.md §1.6: "base vision 85.8M ... large vision 303.4M [verified]".
    with torch.device("meta"):
        base, large = build_vision_tower(beit2_base()), build_vision_tower(beit2_large())
    n_base = sum(p.numel() for p in base.parameters())
    n_large = sum(p.numel() for p in large.parameters())
    assert n_base == 85_761_984 and round(n_base / 1e6, 1) == 85.8
    assert n_large == 303_405_568 and round(n_large / 1e6, 1) == 303.4


def test_beit2_official_state_dict_names() -> None:
    with torch.device("meta"):
        tower = build_vision_tower(beit2_base())
    state = tower.state_dict()
    expected = {
        "cls_token": (1, 1, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.0.gamma_1": (768,),
        "blocks.0.attn.q_bias": (768,),
        "blocks.0.attn.v_bias": (768,),
        "blocks.0.attn.qkv.weight": (3 * 768, 768),
        "blocks.0.attn.relative_position_bias_table": (732, 12),
        "blocks.0.attn.relative_position_index": (197, 197),
        "blocks.11.mlp.fc2.weight": (768, 3072),
        "fc_norm.weight": (768,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.endswith("qkv.bias") or "pos_embed" in k or k.startswith("norm.") for k in state)
    with torch.device("meta"):
        at_384 = build_vision_tower(beit2_base(384)).state_dict()
    assert tuple(at_384["blocks.0.attn.relative_position_bias_table"].shape) == (2212, 12)
    assert tuple(at_384["blocks.0.attn.relative_position_index"].shape) == (577, 577)


def _to_hf(state: dict[str, Tensor], dim: int, beit: bool) -> dict[str, Tensor]:
    """Our ViT/BEiT keys -> transformers' Beit/ViT keys (q/k/v split out of the fused qkv)."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
    }
    if not beit:
        out["embeddings.position_embeddings"] = state["pos_embed"]
        out["layernorm.weight"], out["layernorm.bias"] = state["norm.weight"], state["norm.bias"]
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(n_blocks):
        ours, hf = f"blocks.{i}.", f"layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].split(dim)
        out[hf + "attention.q_proj.weight"], out[hf + "attention.k_proj.weight"] = q, k
        out[hf + "attention.v_proj.weight"] = v
        if beit:
            out[hf + "attention.q_proj.bias"] = state[ours + "attn.q_bias"]
            out[hf + "attention.v_proj.bias"] = state[ours + "attn.v_bias"]
            out[hf + "lambda_1"], out[hf + "lambda_2"] = state[ours + "gamma_1"], state[ours + "gamma_2"]
            table = state[ours + "attn.relative_position_bias_table"]
            out[hf + "relative_position_bias.relative_position_bias_table"] = table
        else:
            qb, kb, vb = state[ours + "attn.qkv.bias"].split(dim)
            out[hf + "attention.q_proj.bias"], out[hf + "attention.k_proj.bias"] = qb, kb
            out[hf + "attention.v_proj.bias"] = vb
        for a, b in [("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after")]:
            out[hf + b + ".weight"], out[hf + b + ".bias"] = state[ours + a + ".weight"], state[ours + a + ".bias"]
        for name in ("mlp.fc1", "mlp.fc2"):
            out[hf + name + ".weight"], out[hf + name + ".bias"] = (
                state[ours + name + ".weight"],
                state[ours + name + ".bias"],
            )
    return out


def _hf_kwargs(cfg: VisionConfig) -> dict[str, object]:
    return dict(
        image_size=cfg.resolution,
        patch_size=cfg.patch_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        intermediate_size=int(cfg.width * cfg.mlp_ratio),
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def test_beit2_matches_transformers_beit() -> None:
    from transformers import BeitConfig, BeitModel

    cfg = beit2_tiny(32)
    ours = BeitV2(cfg).eval()
    _randomise(ours)
    hf_cfg = BeitConfig(
        **_hf_kwargs(cfg),
        use_absolute_position_embeddings=False,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=False,
        use_mean_pooling=True,
        layer_scale_init_value=cfg.init_values,
    )
    hf = BeitModel(hf_cfg, add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict(_to_hf(ours.state_dict(), cfg.width, beit=True), strict=False)
    assert not missing and not unexpected
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = ours(images)
        hf_patches = ours.fc_norm(hf(images).last_hidden_state[:, 1:])  # HF leaves fc_norm to its pooler
    assert tokens.shape == (2, 17, 32)
    torch.testing.assert_close(tokens[:, 1:], hf_patches, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[:, 0], hf_patches.mean(1), atol=1e-5, rtol=1e-5)  # "CLS" = patch mean


@pytest.mark.parametrize("grid", [(3, 3), (2, 4), (14, 14)])
def test_relative_position_index_matches_transformers(grid: tuple[int, int]) -> None:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    expected = BeitRelativePositionBias.generate_relative_position_index(grid)
    assert torch.equal(relative_position_index(grid), expected)


def test_plain_vit_matches_transformers_vit_at_two_resolutions() -> None:
    from transformers import ViTConfig, ViTModel

    cfg = vit_tiny(32)
    ours = PlainViT(cfg).eval()
    _randomise(ours)
    hf = ViTModel(ViTConfig(**_hf_kwargs(cfg), qkv_bias=True), add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict(_to_hf(ours.state_dict(), cfg.width, beit=False), strict=False)
    assert not missing and not unexpected
    for side in (32, 48):  # 48: position embedding interpolated bicubically on both sides
        images = torch.randn(2, 3, side, side)
        with torch.no_grad():
            expected = hf(images, interpolate_pos_encoding=side != 32).last_hidden_state
            torch.testing.assert_close(ours(images), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Shapes and the shared interface


@pytest.mark.parametrize(
    ("make", "resolutions"),
    [
        (beit2_tiny, (32, 48)),
        (vit_tiny, (32, 48)),
        (lambda res: efficientnet_lite0(res, width=24, pretrained=False), (64, 100)),
    ],
)
def test_tower_shapes_at_two_resolutions(make, resolutions: tuple[int, int]) -> None:
    for resolution in resolutions:
        cfg = make(resolution)
        tower = build_vision_tower(cfg).eval()
        rows, cols = tower.grid(resolution)
        with torch.no_grad():
            out = tower(torch.randn(2, 3, resolution, resolution))
        assert out.shape == (2, 1 + rows * cols, tower.width)
        assert tower.width == cfg.width and tower.patch_size == cfg.patch_size
        if cfg.kind != "vit":  # BEiT and EfficientNet: "CLS" is the mean of the grid tokens
            torch.testing.assert_close(out[:, 0], out[:, 1:].mean(1))
    assert EfficientNetLiteTower(efficientnet_lite0(100, pretrained=False)).grid(100) == (4, 4)  # SAME padding: ceil


def test_normalisation_attributes() -> None:
    assert BeitV2.input_mean == CLIP_MEAN and PlainViT.input_mean == CLIP_MEAN
    assert EfficientNetLiteTower.input_mean == EFFICIENTNET_LITE_MEAN
    assert EfficientNetLiteTower.input_std == (0.5, 0.5, 0.5)


def test_config_validation_and_bad_input() -> None:
    with pytest.raises(ValueError, match="kind"):
        VisionConfig(kind="swin_v2")  # "swin" is a kind now (X-VLM v1)
    with pytest.raises(ValueError, match="multiple"):
        VisionConfig(resolution=100, patch_size=16)
    with pytest.raises(ValueError, match="pretrained"):
        VisionConfig(pretrained=True)
    with pytest.raises(ValueError, match="stride"):
        VisionConfig(kind="efficientnet_lite0", patch_size=8)
    tower = build_vision_tower(beit2_tiny())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tower(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tower(torch.randn(2, 3, 30, 32))


# ---------------------------------------------------------------------------------------------
# Resolution change


def test_interpolate_rel_pos_bias_identity_shapes_and_extra_rows() -> None:
    table = torch.randn(732, 12)
    assert interpolate_rel_pos_bias(table, 14, 14) is table
    resized = interpolate_rel_pos_bias(table, 14, 24)
    assert resized.shape == (2212, 12)
    assert torch.equal(resized[-3:], table[-3:])  # cls->token, token->cls, cls->cls copied
    # Corners of the offset grid map onto corners (the geometric source grid reaches the new extent).
    old_grid, new_grid = table[:-3].view(27, 27, 12), resized[:-3].view(47, 47, 12)
    torch.testing.assert_close(new_grid[0, 0], old_grid[0, 0])
    torch.testing.assert_close(new_grid[-1, -1], old_grid[-1, -1])
    torch.testing.assert_close(new_grid[23, 23], old_grid[13, 13])  # zero offset stays zero offset
    with pytest.raises(ValueError, match="does not fit"):
        interpolate_rel_pos_bias(table, 13, 24)


def test_interpolated_smooth_table_stays_close() -> None:
    def smooth(offsets: Tensor) -> Tensor:  # a smooth function of the offset (dh, dw), two heads
        dh, dw = offsets[..., 0], offsets[..., 1]
        return torch.stack([torch.sin(dh / 6) + torch.cos(dw / 9), 0.05 * dh * dw / 10], dim=-1)

    def table_at(axis: Tensor) -> Tensor:
        offsets = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
        return torch.cat([smooth(offsets), torch.zeros(3, 2, dtype=torch.float64)]).float()

    old, new = 14, 24
    # The official resize places the old offsets on a geometric progression reaching the new extent, so a
    # table that samples a smooth function at those positions must come back as that function at the
    # integer offsets of the new grid (to cubic-spline accuracy).
    source = torch.tensor(geometric_source_offsets(2 * old - 1, 2 * new - 1), dtype=torch.float64)
    resized = interpolate_rel_pos_bias(table_at(source), old, new)
    expected = table_at(torch.arange(-(new - 1), new, dtype=torch.float64))
    # Swapping the two axes or misplacing the offsets gives errors of order 1.
    assert (resized - expected).abs().max() < 1e-3


def test_beit2_loads_checkpoint_of_other_resolution() -> None:
    small = BeitV2(beit2_tiny(32)).eval()
    _randomise(small)
    state = small.state_dict()
    big = BeitV2(beit2_tiny(48)).eval()
    big.load_state_dict(state, strict=True)  # resized by the load-time hook
    converted = resize_state_dict(state, 48)
    for key, value in big.state_dict().items():
        assert torch.equal(value, converted[key]), key
    assert big.blocks[0].attn.relative_position_bias_table.shape == (11 * 11 + 3, 2)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():  # loading resized == running the 32-pixel model on the fly at 48
        torch.testing.assert_close(big(images), small(images))
    # A checkpoint without the index buffer (the official loader drops it) loads too.
    without_index = {k: v for k, v in state.items() if not k.endswith("relative_position_index")}
    BeitV2(beit2_tiny(32)).load_state_dict(without_index, strict=True)
    # Prefixed dicts (an X²-VLM checkpoint's vision_encoder.*) convert as well.
    prefixed = resize_state_dict({"vision_encoder." + k: v for k, v in state.items()}, 48)
    assert prefixed["vision_encoder.blocks.1.attn.relative_position_index"].shape == (37, 37)


def test_plain_vit_loads_checkpoint_of_other_resolution() -> None:
    small = PlainViT(vit_tiny(32)).eval()
    _randomise(small)
    big = PlainViT(vit_tiny(48)).eval()
    big.load_state_dict(small.state_dict(), strict=True)
    assert big.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(big.pos_embed, resize_state_dict(small.state_dict(), 48)["pos_embed"])
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(big(images), small(images))


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing


def _grads(tower: nn.Module, images: Tensor, seed: int) -> dict[str, Tensor]:
    tower.zero_grad()
    torch.manual_seed(seed)
    tower(images).square().mean().backward()
    return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "cfg",
    [
        beit2_tiny(32),
        dataclasses.replace(beit2_tiny(32), drop_path_rate=0.5),  # RNG replay keeps drop-path masks equal
        vit_tiny(32),
        dataclasses.replace(efficientnet_lite0(64, width=16, pretrained=False), drop_path_rate=0.0),
    ],
    ids=["beit2", "beit2-droppath", "vit", "efficientnet"],
)
def test_grad_checkpointing_gives_identical_gradients(cfg: VisionConfig) -> None:
    torch.manual_seed(0)
    tower = build_vision_tower(cfg).train()
    images = torch.randn(2, 3, cfg.resolution, cfg.resolution)
    plain = _grads(tower, images, seed=1)
    tower.set_grad_checkpointing(True)
    checkpointed = _grads(tower, images, seed=1)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(tower.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0: the packaged weights are really loaded


def _flower_batch() -> Tensor:
    """sklearn's bundled flower photo, 224×224, normalised to [-1, 1] as EfficientNet-Lite expects."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image("flower.jpg")).resize((224, 224), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    mean, std = torch.tensor(EFFICIENTNET_LITE_MEAN), torch.tensor((0.5, 0.5, 0.5))
    return ((pixels - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)


def test_efficientnet_lite0_pretrained_weights() -> None:
    images = _flower_batch()
    classifier = load_efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        logits = classifier(images)
    assert int(logits.argmax()) == 985  # ImageNet "daisy"
    assert float(logits.softmax(-1)[0, 985]) > 0.1  # random weights would give ~0.001
    # The [-1, 1] normalisation is the right one: with ImageNet statistics top-1 is wrong (599).

    tower = EfficientNetLiteTower(efficientnet_lite0(224, width=32, pretrained=True)).eval()
    backbone_state = tower.backbone.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("_fc."):
            assert torch.equal(backbone_state[key], value), key
    assert not any(k.startswith("backbone._fc") for k in tower.state_dict())  # classifier dropped
    with torch.no_grad():
        tokens = tower(images)
        grid = classifier.extract_features(images).flatten(2).transpose(1, 2)  # (1, 49, 1280)
    assert tokens.shape == (1, 50, 32)
    torch.testing.assert_close(tokens[:, 1:], tower.proj(grid) + tower.pos_embed)  # grid tokens + positions
    # A random tower differs: the weights above really came from the file.
    random_tower = EfficientNetLiteTower(efficientnet_lite0(224, width=32, pretrained=False))
    assert not torch.equal(random_tower.backbone._conv_stem.weight, tower.backbone._conv_stem.weight)


def test_efficientnet_batchnorm_statistics_stay_frozen_in_training() -> None:
    tower = EfficientNetLiteTower(efficientnet_lite0(64, width=8, pretrained=False)).train()
    bn = tower.backbone._bn0
    before = bn.running_mean.clone()
    assert tower.training and not bn.training
    tower(torch.randn(4, 3, 64, 64) * 3 + 1).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert bn.weight.grad is not None  # affine parameters still learn


def test_efficientnet_tower_runs_channels_last_with_the_nchw_numbers(tmp_path: Path) -> None:
    # The backbone is kept in NHWC layout for speed (docs/models.md); the numbers must be the NCHW ones, with
    # and without gradients, and a checkpoint must load back into the NHWC tensors.
    tower = EfficientNetLiteTower(efficientnet_lite0(64, width=8, pretrained=False)).train()
    assert tower.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(tower)
    nchw.backbone.to(memory_format=torch.contiguous_format)
    assert not nchw.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(3, 3, 64, 64)
    torch.manual_seed(0)  # the same drop-connect draws on both sides
    out = tower(images)
    torch.manual_seed(0)
    ref = nchw(images)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    grads = dict(nchw.named_parameters())
    for name, param in tower.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-3, atol=1e-4, msg=name)
    save_model_safetensors(tmp_path / "tower.safetensors", tower.state_dict())
    fresh = EfficientNetLiteTower(efficientnet_lite0(64, width=8, pretrained=False))
    fresh.load_state_dict(load_model_safetensors(tmp_path / "tower.safetensors"))
    assert fresh.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), tower.eval()(images))


def test_no_weight_decay_names_exist() -> None:
    for cfg in (beit2_tiny(), vit_tiny()):
        tower = build_vision_tower(cfg)
        names = dict(tower.named_parameters())
        assert tower.no_weight_decay() and all(n in names for n in tower.no_weight_decay())


def test_forward_intermediates() -> None:
    tower = BeitV2(beit2_tiny(32)).eval()
    images = torch.randn(1, 3, 32, 32)
    out, hidden = tower.forward_intermediates(images)
    assert len(hidden) == 1 + len(tower.blocks) and all(h.shape == (1, 17, 32) for h in hidden)
    torch.testing.assert_close(out, tower(images))
    torch.testing.assert_close(out[:, 1:], tower.fc_norm(hidden[-1][:, 1:]))


def test_efficientnet_tokens_carry_their_grid_position() -> None:
    # The same image content must give different tokens at different grid cells (the box head needs it),
    # and the position table is resized at another input size and when loaded into another resolution.
    tower = build_vision_tower(VisionConfig("efficientnet_lite0", 64, 32, 16, 0, 4, pretrained=False)).eval()
    with torch.no_grad():
        flat = tower(torch.zeros(1, 3, 64, 64))  # uniform image: identical CNN features in every cell
        assert not torch.allclose(flat[0, 1], flat[0, 2])
        assert tower(torch.zeros(1, 3, 96, 96)).shape == (1, 1 + 9, 16)
    bigger = build_vision_tower(VisionConfig("efficientnet_lite0", 96, 32, 16, 0, 4, pretrained=False))
    bigger.load_state_dict(tower.state_dict())
    assert bigger.pos_embed.shape == (1, 9, 16)


def test_efficientnet_stride16_grid_joins_fine_and_coarse_features() -> None:
    """Stride 16: a 2x finer token grid whose coarse half equals the stride-32 head features, upsampled."""
    torch.manual_seed(0)
    coarse_cfg = dataclasses.replace(efficientnet_lite0(64, width=8, pretrained=False), drop_path_rate=0.0)
    fine = build_vision_tower(dataclasses.replace(coarse_cfg, patch_size=16)).eval()
    images = torch.randn(2, 3, 64, 64)
    assert fine.grid(64) == (4, 4)
    with torch.no_grad():
        tokens = fine(images)  # (B, 1 + 16, 8)
        head = fine.backbone.extract_features(images)  # (B, 1280, 2, 2): the package's own path
        joined = fine._features(images, checkpointed=False)  # (B, 112 + 1280, 4, 4)
    assert tokens.shape == (2, 17, 8)
    coarse = joined[:, -head.shape[1] :]
    assert torch.equal(coarse[..., ::2, ::2], head) and torch.equal(coarse[..., 1::2, 1::2], head)
    assert fine.proj.in_features == joined.shape[1]
