"""CLIP-ViT and Swin towers vs. plain-tensor re-computations of the official X-VLM formulas.

The references below are written from the official ``models/clip_vit.py`` / ``models/swin_transformer.py``
semantics (not from grainvl's modules): loops over windows, explicit softmax, the official
slice-labelled shifted-window mask, and they read the weights by their official key names.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from grainvl.models.vision import (
    VisionConfig,
    build_vision_tower,
    clip_vit_tiny,
    interpolate_window_bias,
    shifted_window_mask,
    swin_base,
    swin_tiny,
)

ATOL = 1e-5


def _random_state(tower: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """Random values for every parameter (LayerNorm weights near 1) keyed by the tower's names."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in tower.state_dict().items():
        if value.dtype.is_floating_point and "attn_mask" not in name:
            scale = 0.2 if value.dim() > 1 else 0.1
            base = 1.0 if (name.endswith("weight") and value.dim() == 1) else 0.0
            out[name] = base + scale * torch.randn(value.shape, generator=gen)
        else:
            out[name] = value
    return out


def _layer_norm(x: Tensor, state: dict[str, Tensor], prefix: str, eps: float = 1e-5) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[prefix + ".weight"] + state[prefix + ".bias"]


def _linear(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    y = x @ state[prefix + ".weight"].t()
    return y + state[prefix + ".bias"] if prefix + ".bias" in state else y


def _softmax(x: Tensor) -> Tensor:
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


# --------------------------------------------------------------------------------------------- CLIP-ViT
def _clip_official_keys(depth: int) -> set[str]:
    keys = {"patch_embed.weight", "class_embedding", "pos_embed.weight", "position_ids", "pre_layrnorm.weight"}
    keys |= {"pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias"}
    for i in range(depth):
        for sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "layer_norm1",
                    "layer_norm2", "mlp.fc1", "mlp.fc2"):  # fmt: skip
            keys |= {f"encoder.layers.{i}.{sub}.weight", f"encoder.layers.{i}.{sub}.bias"}
    return keys


def clip_reference(state: dict[str, Tensor], images: Tensor, heads: int, patch: int, depth: int) -> Tensor:
    """Official ``CLIPVisionTransformer.forward`` with plain tensor ops."""
    x = F.conv2d(images, state["patch_embed.weight"], stride=patch)  # no bias
    x = x.flatten(2).transpose(1, 2)
    cls = state["class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + state["pos_embed.weight"][state["position_ids"][0]]
    x = _layer_norm(x, state, "pre_layrnorm")
    batch, tokens, dim = x.shape
    hd = dim // heads
    for i in range(depth):
        p = f"encoder.layers.{i}."
        h = _layer_norm(x, state, p + "layer_norm1")
        q = _linear(h, state, p + "self_attn.q_proj") * hd**-0.5  # official scales q before the product
        k = _linear(h, state, p + "self_attn.k_proj")
        v = _linear(h, state, p + "self_attn.v_proj")
        q, k, v = (t.reshape(batch, tokens, heads, hd).transpose(1, 2) for t in (q, k, v))
        attn = _softmax(q @ k.transpose(-1, -2)) @ v
        x = x + _linear(attn.transpose(1, 2).reshape(batch, tokens, dim), state, p + "self_attn.out_proj")
        h = _linear(_layer_norm(x, state, p + "layer_norm2"), state, p + "mlp.fc1")
        x = x + _linear(h * torch.sigmoid(1.702 * h), state, p + "mlp.fc2")  # quick_gelu
    return _layer_norm(x, state, "post_layernorm")


def test_clip_vit_matches_official_formulas() -> None:
    cfg = clip_vit_tiny(32)
    tower = build_vision_tower(cfg).eval()
    assert set(tower.state_dict()) == _clip_official_keys(cfg.depth)
    assert tower.patch_embed.bias is None
    state = _random_state(tower, 0)
    tower.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = tower(images)
    ref = clip_reference(state, images, cfg.heads, cfg.patch_size, cfg.depth)
    assert out.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_clip_vit_resizes_pos_embed_on_load() -> None:
    """A 32-px checkpoint loads into a 48-px tower: the class row kept, the 4x4 grid bicubically resized to 6x6."""
    small = build_vision_tower(clip_vit_tiny(32))
    state = _random_state(small, 1)
    big = build_vision_tower(clip_vit_tiny(48)).eval()
    big.load_state_dict(state, strict=True)
    pos = big.pos_embed.weight.detach()
    assert pos.shape == (1 + 36, 32)
    torch.testing.assert_close(pos[0], state["pos_embed.weight"][0])
    grid = state["pos_embed.weight"][1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(pos[1:], expected.reshape(36, 32))
    assert big.position_ids.tolist() == [list(range(37))]
    with torch.no_grad():
        assert big(torch.randn(1, 3, 48, 48)).shape == (1, 37, 32)


# --------------------------------------------------------------------------------------------- Swin
def official_swin_mask(rows: int, cols: int, window: int, shift: int) -> Tensor:
    """The official ``SwinTransformerBlock.__init__`` mask: slice-labelled image, windows, pairwise test."""
    img = torch.zeros(rows, cols)
    count = 0
    for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[h, w] = count
            count += 1
    wins = [
        img[r : r + window, c : c + window].reshape(-1) for r in range(0, rows, window) for c in range(0, cols, window)
    ]
    labels = torch.stack(wins)  # (nW, W²)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _rel_index(window: int) -> Tensor:
    idx = torch.zeros(window * window, window * window, dtype=torch.long)
    for i in range(window * window):
        for j in range(window * window):
            dr, dc = i // window - j // window, i % window - j % window
            idx[i, j] = (dr + window - 1) * (2 * window - 1) + (dc + window - 1)
    return idx


def swin_reference(state: dict[str, Tensor], images: Tensor, cfg: VisionConfig) -> Tensor:
    """Official ``SwinTransformer.forward`` (ape=False, patch_norm=True) with loops over windows."""
    stages = len(cfg.depths)
    patch = cfg.patch_size // 2 ** (stages - 1)
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    batch, _, rows, cols = x.shape
    x = _layer_norm(x.flatten(2).transpose(1, 2), state, "patch_embed.norm")
    for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.stage_heads, strict=True)):
        for i in range(depth):
            p = f"layers.{s}.blocks.{i}."
            window, shift = cfg.window_size, (cfg.window_size // 2 if i % 2 else 0)
            if min(rows, cols) <= window:
                window, shift = min(rows, cols), 0
            dim = x.shape[-1]
            hd = dim // heads
            h = _layer_norm(x, state, p + "norm1").reshape(batch, rows, cols, dim)
            if shift:
                h = torch.roll(h, (-shift, -shift), (1, 2))
            mask = official_swin_mask(rows, cols, window, shift) if shift else None
            table = state[p + "attn.relative_position_bias_table"]
            bias = table[_rel_index(window).reshape(-1)].reshape(window**2, window**2, heads).permute(2, 0, 1)
            out = torch.zeros_like(h)
            n = 0
            for r in range(0, rows, window):
                for c in range(0, cols, window):
                    tok = h[:, r : r + window, c : c + window].reshape(batch, -1, dim)
                    qkv = _linear(tok, state, p + "attn.qkv").reshape(batch, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
                    q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
                    logits = q @ k.transpose(-1, -2) + bias
                    if mask is not None:
                        logits = logits + mask[n]
                    y = (_softmax(logits) @ v).transpose(1, 2).reshape(batch, -1, dim)
                    y = _linear(y, state, p + "attn.proj")
                    out[:, r : r + window, c : c + window] = y.reshape(batch, window, window, dim)
                    n += 1
            if shift:
                out = torch.roll(out, (shift, shift), (1, 2))
            x = x + out.reshape(batch, rows * cols, dim)
            m = _linear(_layer_norm(x, state, p + "norm2"), state, p + "mlp.fc1")
            x = x + _linear(F.gelu(m), state, p + "mlp.fc2")
        if s < stages - 1:
            g = x.reshape(batch, rows, cols, -1)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
            g = _layer_norm(g.reshape(batch, -1, g.shape[-1]), state, f"layers.{s}.downsample.norm")
            x = _linear(g, state, f"layers.{s}.downsample.reduction")
            rows, cols = rows // 2, cols // 2
    x = _layer_norm(x, state, "norm")
    return torch.cat([x.mean(1, keepdim=True), x], 1)


def _swin_official_keys(cfg: VisionConfig, shifted: set[tuple[int, int]]) -> set[str]:
    keys = {f"patch_embed.{m}.{t}" for m in ("proj", "norm") for t in ("weight", "bias")} | {"norm.weight", "norm.bias"}
    for s, depth in enumerate(cfg.depths):
        for i in range(depth):
            p = f"layers.{s}.blocks.{i}."
            keys |= {p + "attn.relative_position_bias_table", p + "attn.relative_position_index"}
            keys |= {p + f"{m}.{t}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
                     for t in ("weight", "bias")}  # fmt: skip
            if (s, i) in shifted:
                keys.add(p + "attn_mask")
        if s < len(cfg.depths) - 1:
            keys |= {f"layers.{s}.downsample.reduction.weight", f"layers.{s}.downsample.norm.weight"}
            keys.add(f"layers.{s}.downsample.norm.bias")
    return keys


def test_swin_mask_matches_official_construction() -> None:
    torch.testing.assert_close(shifted_window_mask((16, 12), 4, 2), official_swin_mask(16, 12, 4, 2))
    mask = shifted_window_mask((16, 16), 4, 2)
    assert mask.shape == (16, 16, 16)
    assert (mask[0] == 0).all()  # interior windows are never split
    assert (mask[-1] != 0).any()  # the wrapped corner window is


def test_swin_matches_official_formulas_with_shifted_windows() -> None:
    cfg = swin_tiny(64)  # 16x16 grid (16 windows of 4, shifted by 2) then 8x8 (4 windows, shifted)
    tower = build_vision_tower(cfg).eval()
    assert set(tower.state_dict()) == _swin_official_keys(cfg, {(0, 1), (1, 1)})
    state = _random_state(tower, 2)
    tower.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = tower(images)
    ref = swin_reference(state, images, cfg)
    assert out.shape == (2, 1 + 64, 32)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    # The mask matters: without it the shifted blocks compute something else.
    for stage in tower.layers:
        stage.blocks[1].attn_mask.zero_()
    with torch.no_grad():
        assert (tower(images) - ref).abs().max() > 1e-3


def test_swin_window_clamped_to_small_grid() -> None:
    """At 32 px the second stage is 4x4 = the window: the official rule drops the shift (no mask)."""
    cfg = swin_tiny(32)
    tower = build_vision_tower(cfg).eval()
    assert set(tower.state_dict()) == _swin_official_keys(cfg, {(0, 1)})
    state = _random_state(tower, 3)
    tower.load_state_dict(state, strict=True)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower(images), swin_reference(state, images, cfg), atol=ATOL, rtol=0)


def test_swin_relative_table_resized_when_window_changes() -> None:
    small = build_vision_tower(swin_tiny(64))
    state = _random_state(small, 4)
    cfg = VisionConfig(**{**swin_tiny(96).__dict__, "window_size": 6})  # 24x24 then 12x12 grids
    big = build_vision_tower(cfg).eval()
    big.load_state_dict(state, strict=True)
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    table = big.state_dict()[key]
    assert table.shape == (11 * 11, 2)
    torch.testing.assert_close(table, interpolate_window_bias(state[key], 4, 6))
    # Corners map onto corners (the geometric source grid reaches the new extent), the centre (0, 0) onto itself.
    torch.testing.assert_close(table[0], state[key][0])
    torch.testing.assert_close(table[60], state[key][24])
    assert big.state_dict()["layers.0.blocks.1.attn_mask"].shape == (16, 36, 36)
    with torch.no_grad():
        assert big(torch.randn(1, 3, 96, 96)).shape == (1, 1 + 144, 32)


def test_swin_base_shapes() -> None:
    cfg = swin_base(224)
    assert (cfg.window_size, swin_base(384).window_size) == (7, 12)
    with torch.device("meta"):
        tower = build_vision_tower(cfg)
    state = tower.state_dict()
    assert state["patch_embed.proj.weight"].shape == (128, 3, 4, 4)
    assert state["layers.2.blocks.17.attn.relative_position_bias_table"].shape == (169, 16)
    assert state["layers.3.blocks.1.attn.relative_position_bias_table"].shape == (169, 32)
    assert "layers.3.blocks.1.attn_mask" not in state  # 7x7 last stage = one window, no shift
    assert state["layers.2.blocks.1.attn_mask"].shape == (4, 49, 49)
    assert state["norm.weight"].shape == (1024,)
    n = sum(p.numel() for p in tower.parameters())
    assert math.isclose(n, 86_743_224, rel_tol=1e-6)  # Swin-B (87.8M) minus its 1000-class head


def test_swin_config_validation() -> None:
    with pytest.raises(ValueError, match="depths and stage_heads"):
        VisionConfig("swin", 64, 8, 32, 4, 4, depths=[2, 2], stage_heads=[2])
    with pytest.raises(ValueError, match="sum"):
        VisionConfig("swin", 64, 8, 32, 3, 4, depths=[2, 2], stage_heads=[2, 4])


def test_swin_runs_at_another_grid_with_a_recomputed_mask() -> None:
    """Built for 64 px, run at 96 px (24x24 then 12x12 tokens): the mask is rebuilt for the new grid."""
    cfg = swin_tiny(64)
    tower = build_vision_tower(cfg).eval()
    state = _random_state(tower, 5)
    tower.load_state_dict(state, strict=True)
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(tower(images), swin_reference(state, images, cfg), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="not a multiple of the window"):
        tower(torch.randn(1, 3, 80, 80))  # 20x20 then 10x10: 10 is not a multiple of 4
