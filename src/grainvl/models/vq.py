"""The image tokenizer of DaVinci (issue 17 §1): a VQGAN-family autoencoder with a discrete codebook.

DaVinci's prefix image modelling predicts the codes of a frozen VQGAN (1024 codes, stride 16;
``davinci_cclm_vlue.md`` §A.4). This module is that tokenizer, in the architecture family of
taming-transformers (``taming/modules/diffusionmodules/model.py``: ResNet blocks with GroupNorm and swish,
asymmetric-padded stride-2 downsampling, nearest-neighbour upsampling, one self-attention block in the
middle and optional ones at chosen resolutions), so that the same code runs

* the small tokenizer trained on world images here (``grainvl davinci tokenizer``), and
* a real VQGAN checkpoint in the taming layout, loaded through :func:`load_taming_state_dict` with the
  key map :data:`TAMING_KEY_MAP` (every size comes from the checkpoint's ``ddconfig``: :func:`config_from_taming`).

Interface (shared with ``models/davinci.py``): :meth:`VQTokenizer.encode` takes images ``(B, 3, H, W)`` in
[0, 1] and returns codes ``(B, H / stride, W / stride)`` (long, raster order); :meth:`VQTokenizer.decode` maps
codes back to images in [0, 1]. ``H`` and ``W`` must be multiples of :attr:`VQTokenizer.stride`; anything else
is a one-line ``ValueError`` naming the size (no silent resize). Pixels go in as ``2x - 1`` as taming expects.

The quantiser (:class:`VectorQuantizer`) picks the nearest code in squared L2 distance, passes gradients
straight through (``z + sg[e - z]``) and adds the VQ-VAE commitment loss ``beta * |z - sg[e]|^2`` (beta 0.25).
The codebook learns either by exponential moving averages of its assigned encoder outputs (``"ema"``, VQ-VAE-2,
with restarts of dead codes on random encoder outputs) or by gradient on ``|sg[z] - e|^2``
(``"straight_through"``, the original VQ-VAE / taming's loss). Use a frozen tokenizer under ``torch.no_grad()``
in ``eval()`` mode: the EMA updates and restarts run only in training mode.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.utils.fileio import (
    atomic_write_text,
    is_weights_folder,
    load_model_safetensors,
    save_model_safetensors,
    staged_dir,
)

QUANTIZERS = ("ema", "straight_through")


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class VQConfig:
    """Sizes of a VQ tokenizer. The defaults are taming's ``vqgan_imagenet_f16_1024`` (DaVinci's tokenizer).

    Field names follow taming's ``ddconfig`` where one exists: ``channels`` = ``ch``, ``channel_mult`` =
    ``ch_mult``, ``embed_dim``/``codebook_size`` = ``embed_dim``/``n_embed``. ``resolution`` is nominal: as in
    taming it only decides at which levels ``attn_resolutions`` puts attention; any multiple of the stride runs.
    """

    codebook_size: int = 1024
    embed_dim: int = 256
    z_channels: int = 256
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    quantizer: str = "ema"
    beta: float = 0.25
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    restart_threshold: float = 0.03
    """EMA mode: a code whose moving-average count (assignments per step) falls below this is restarted on a
    random encoder output of the batch; 0 turns restarts off."""
    normalize_codes: bool = False
    """l2-normalise encoder outputs and codes before the lookup (ViT-VQGAN's cosine lookup; taming: False). The
    quantised vector is then the unit-length code, so the encoder cannot shrink its outputs onto a few codes."""

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.codebook_size < 2 or self.embed_dim < 1 or not self.channel_mult:
            raise ValueError("codebook_size must be >= 2, embed_dim >= 1 and channel_mult non-empty")
        widths = [self.channels * m for m in self.channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every level width {widths} must be divisible by norm_groups={self.norm_groups}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    @property
    def stride(self) -> int:
        """Pixels per code along each side: one halving per level after the first."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"family": "vq", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VQConfig:
        """The config of a ``config.json``; unknown keys are an error (a file of another model family)."""
        values = {k: v for k, v in values.items() if k != "family"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQConfig field(s) {unknown}; known: {sorted(known)}")
        for name in ("channel_mult", "attn_resolutions"):
            if name in values:
                values[name] = tuple(int(v) for v in values[name])
        return cls(**values)


# ---------------------------------------------------------------------------------------------- building blocks
def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    # taming's Normalize: eps 1e-6 (not torch's 1e-5), which matters for logit-exact parity with its weights.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a (1x1-projected when the width changes) residual."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (proj(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C); scale 1/sqrt(C) as taming
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom only (taming's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """One resolution level: ResNet blocks, each followed by attention when the level has it, then resampling."""

    def __init__(
        self, widths: list[tuple[int, int]], attention: bool, resample: nn.Module | None, groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResnetBlock(i, o, groups, dropout) for i, o in widths)
        self.attns = nn.ModuleList(AttnBlock(o, groups) for _, o in widths) if attention else nn.ModuleList()
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if len(self.attns):
                x = self.attns[i](x)
        return x if self.resample is None else self.resample(x)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn = AttnBlock(channels, groups)
        self.block2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> features ``(B, z_channels, H/stride, W/stride)``."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.channel_mult)
        self.conv_in = nn.Conv2d(3, cfg.channels, 3, padding=1)
        stages, width, res = [], cfg.channels, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            out = cfg.channels * mult
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks)]
            resample = Downsample(out) if level < levels - 1 else None
            stages.append(Stage(widths, res in cfg.attn_resolutions, resample, g, cfg.dropout))
            width, res = out, res // 2 if level < levels - 1 else res
        self.stages = nn.ModuleList(stages)
        self.mid = MidBlock(width, g, cfg.dropout)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Quantised features ``(B, z_channels, h, w)`` -> images ``(B, 3, h*stride, w*stride)`` in about [-1, 1].

    ``stages[level]`` is stored in the encoder's level order (0 = full resolution) and run from the deepest
    level up, as taming's ``decoder.up``; each level has ``num_res_blocks + 1`` blocks.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.channel_mult)
        width = cfg.channels * cfg.channel_mult[-1]
        res = cfg.resolution // cfg.stride
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, g, cfg.dropout)
        stages: list[Stage] = []
        for level in reversed(range(levels)):
            out = cfg.channels * cfg.channel_mult[level]
            widths = [(width if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            resample = Upsample(out) if level > 0 else None
            stages.insert(0, Stage(widths, res in cfg.attn_resolutions, resample, g, cfg.dropout))
            width, res = out, res * 2 if level > 0 else res
        self.stages = nn.ModuleList(stages)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.stages):
            h = stage(h)
        return self.conv_out(swish(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------- quantiser
def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code (squared L2) for each row of ``z`` (N, D) in ``codebook`` (K, D) -> (N,)."""
    # |z|^2 - 2 z.e + |e|^2 without the (N, K, D) difference tensor; |z|^2 is constant per row.
    distances = codebook.pow(2).sum(1)[None, :] - 2 * z @ codebook.t()  # (N, K)
    return distances.argmin(dim=1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient and the commitment loss.

    ``codebook`` is a parameter in ``"straight_through"`` mode and a buffer (updated without gradient) in
    ``"ema"`` mode; both save under the same key. ``cluster_size`` / ``embed_sum`` are the EMA statistics
    (kept in both modes so every tokenizer folder has the same keys).
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        init = torch.randn(cfg.codebook_size, cfg.embed_dim) / cfg.embed_dim**0.5
        if cfg.quantizer == "ema":
            self.register_buffer("codebook", init)
        else:
            self.codebook = nn.Parameter(init)
        # With restarts, counts start at 0: the first training step restarts every code on an encoder output of
        # the batch (a data-dependent init; random codes far from the encoder's outputs would mostly stay unused).
        restarts = cfg.quantizer == "ema" and cfg.restart_threshold > 0
        counts = torch.zeros(cfg.codebook_size) if restarts else torch.ones(cfg.codebook_size)
        self.register_buffer("cluster_size", counts)
        self.register_buffer("embed_sum", init * counts[:, None])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``z`` (B, D, h, w) -> (quantised z with straight-through gradient (B, D, h, w), codes (B, h, w), losses).

        Losses: ``commit_loss`` = beta * mean |z - sg[e]|^2; in straight-through mode also ``codebook_loss`` =
        mean |sg[z] - e|^2. With ``normalize_codes`` both ``z`` and ``e`` are unit vectors in these formulas. In
        training mode with ``"ema"`` the codebook is updated from this batch after the lookup.
        """
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        if self.cfg.normalize_codes:
            flat = F.normalize(flat, dim=1)  # on the unit sphere, nearest in L2 = largest cosine
        codebook = self.lookup_table()  # (K, D)
        codes = nearest_codes(flat.detach(), codebook.detach())
        chosen = codebook[codes]  # (B*h*w, D): a copy, so the EMA step below does not change this batch
        if self.training and self.cfg.quantizer == "ema":
            self.ema_update(flat.detach(), codes)
        losses = {"commit_loss": self.cfg.beta * F.mse_loss(flat, chosen.detach())}
        if self.cfg.quantizer == "straight_through":
            losses["codebook_loss"] = F.mse_loss(chosen, flat.detach())
        quantised = flat + (chosen - flat).detach()  # forward: the code; backward: identity to the encoder
        return quantised.reshape(b, h, w, d).permute(0, 3, 1, 2), codes.reshape(b, h, w), losses

    def lookup_table(self) -> Tensor:
        """The codes as the lookup compares and returns them (K, D): unit vectors under ``normalize_codes``.

        The EMA codebook stays the mean of its (unit) assigned outputs, shorter than 1; normalising it here makes
        the lookup spherical k-means (ViT-VQGAN)."""
        return F.normalize(self.codebook, dim=1) if self.cfg.normalize_codes else self.codebook

    def embed(self, codes: Tensor) -> Tensor:
        """Codes (...) long -> their vectors (..., D), exactly what :meth:`forward` puts in place of ``z``."""
        return self.lookup_table()[codes]

    @torch.no_grad()
    def ema_update(self, flat: Tensor, codes: Tensor) -> None:
        """One EMA step of counts and sums (all-reduced over ranks), Laplace-smoothed, then dead-code restarts.

        ``N_k <- g N_k + (1-g) n_k``, ``m_k <- g m_k + (1-g) sum_{z -> k} z``, ``e_k = m_k / N~_k`` with
        ``N~_k = (N_k + eps) / (sum N + K eps) * sum N`` (so a code with no assignments keeps a finite vector).
        """
        k, g = self.cfg.codebook_size, self.cfg.ema_decay
        onehot = F.one_hot(codes, k).type_as(flat)  # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ flat  # (K,), (K, D)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(g).add_(counts, alpha=1 - g)
        self.embed_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.cfg.ema_eps) / (total + k * self.cfg.ema_eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        if self.cfg.restart_threshold > 0:
            self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: Tensor) -> int:
        """Move every code whose EMA count is below the threshold onto a random encoder output of the batch.

        A restarted code gets count = threshold (and the matching sum), so unless it wins assignments at the next
        step it is dead again and moves on to another output: unused codes keep searching the data. Rank 0 draws the
        outputs and broadcasts them, so every rank keeps the same codebook. -> how many codes were restarted.
        """
        dead = (self.cluster_size < self.cfg.restart_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        picks = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]  # (n_dead, D)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(picks, src=0)
        self.codebook[dead] = picks
        self.embed_sum[dead] = picks * self.cfg.restart_threshold
        self.cluster_size[dead] = self.cfg.restart_threshold
        return int(dead.numel())


# ---------------------------------------------------------------------------------------------- the tokenizer
class VQTokenizer(nn.Module):
    """Encoder -> 1x1 ``quant_conv`` -> quantiser -> 1x1 ``post_quant_conv`` -> decoder (taming's VQModel)."""

    def __init__(self, config: VQConfig | None = None) -> None:
        super().__init__()
        self.config = config or VQConfig()
        self.encoder = Encoder(self.config)
        self.quant_conv = nn.Conv2d(self.config.z_channels, self.config.embed_dim, 1)
        self.quantizer = VectorQuantizer(self.config)
        self.post_quant_conv = nn.Conv2d(self.config.embed_dim, self.config.z_channels, 1)
        self.decoder = Decoder(self.config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def stride(self) -> int:
        return self.config.stride

    def check_size(self, images: Tensor) -> None:
        """One-line ValueError unless ``images`` is (B, 3, H, W) with H and W multiples of the stride."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        s = self.stride
        if h % s or w % s:
            raise ValueError(
                f"image size {h}x{w} (HxW) is not a multiple of the tokenizer stride {s}; "
                f"resize or crop it, e.g. to {max(s, h // s * s)}x{max(s, w // s * s)}"
            )

    def quantise(self, images: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Images (B, 3, H, W) in [0, 1] -> (quantised latents (B, D, h, w), codes (B, h, w), quantiser losses)."""
        self.check_size(images)
        z = self.quant_conv(self.encoder(images * 2 - 1))  # (B, D, H/s, W/s)
        return self.quantizer(z)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> codes (B, H/stride, W/stride), long, raster order."""
        return self.quantise(images)[1]

    def decode_latents(self, quantised: Tensor) -> Tensor:
        """Quantised latents (B, D, h, w) -> images (B, 3, h*stride, w*stride), unclamped, in the [0, 1] scale."""
        return (self.decoder(self.post_quant_conv(quantised)) + 1) / 2

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) (values in [0, codebook_size)) -> images (B, 3, h*stride, w*stride) in [0, 1]."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, h, w), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        latents = self.quantizer.embed(codes).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decode_latents(latents).clamp(0, 1)

    def forward(self, images: Tensor, quantize: bool = True) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Training pass: images in [0, 1] -> (reconstruction (unclamped), codes, quantiser losses).

        ``quantize=False`` decodes the continuous ``quant_conv`` output instead (codes None, no losses, no EMA step):
        the quantiser warm-up of ``tasks.vq.VQTrainTask``, in which encoder and decoder first learn an
        autoencoder whose latents carry colour, so that the codebook is then placed on informative outputs.
        """
        if not quantize:
            self.check_size(images)
            return self.decode_latents(self.quant_conv(self.encoder(images * 2 - 1))), None, {}
        quantised, codes, losses = self.quantise(images)
        return self.decode_latents(quantised), codes, losses

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> Path:
        """``config.json`` + ``model.safetensors``, assembled beside ``directory`` and swapped in atomically.

        A model folder (``config.json`` + ``model.safetensors``) is replaced; another non-empty folder only with
        ``overwrite``.
        """
        directory = Path(directory)
        with staged_dir(directory, overwrite=overwrite, replaceable=is_weights_folder) as staged:
            atomic_write_text(staged / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
            save_model_safetensors(staged / "model.safetensors", self.state_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VQTokenizer:
        """The tokenizer of a :meth:`save_pretrained` folder, or of a ``grainvl davinci tokenizer`` run folder
        (its ``tokenizer/``), in eval mode (weights checked strictly)."""
        directory = Path(directory)
        if (directory / "tokenizer" / "config.json").is_file():
            directory = directory / "tokenizer"
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no config.json (not a VQ tokenizer folder)")
        values = json.loads(config_path.read_text(encoding="utf-8"))
        if values.get("family") != "vq":
            raise ValueError(f"{config_path}: not a VQ tokenizer config (family {values.get('family')!r})")
        model = cls(VQConfig.from_dict(values))
        state = load_model_safetensors(directory / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory}: missing keys {missing[:10]}, unexpected keys {list(unexpected)[:10]}")
        return model.eval()


def is_tokenizer_folder(path: Path) -> bool:
    """A folder :meth:`VQTokenizer.save_pretrained` wrote (what ``grainvl davinci tokenizer`` may replace)."""
    try:
        return is_weights_folder(path) and json.loads((path / "config.json").read_text("utf-8")).get("family") == "vq"
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- taming converter
# taming-transformers VQModel key (regex) -> VQTokenizer key. Keys not listed keep their name: conv_in, norm_out,
# conv_out of both towers, quant_conv, post_quant_conv and the insides of ResNet blocks (norm1, conv1, norm2, conv2,
# nin_shortcut) and attention blocks (norm, q, k, v, proj_out) are named as in taming.
TAMING_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
    (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", r"encoder.stages.\1.attns.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.stages.\1.resample.conv."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.stages.\1.blocks.\2."),
    (r"^decoder\.up\.(\d+)\.attn\.(\d+)\.", r"decoder.stages.\1.attns.\2."),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.", r"decoder.stages.\1.resample.conv."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid.block1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid.attn."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid.block2."),
    (r"^quantize\.embedding\.weight$", "quantizer.codebook"),
)
# Training-only parts of a taming checkpoint: the GAN discriminator and the LPIPS network of ``loss``.
TAMING_DROPPED = re.compile(r"^loss\.")
EMA_STATE = ("quantizer.cluster_size", "quantizer.embed_sum")  # ours only: rebuilt from the codebook


def taming_key(key: str) -> str | None:
    """The :class:`VQTokenizer` name of a taming ``VQModel`` key; None for a training-only (``loss.*``) key."""
    if TAMING_DROPPED.match(key):
        return None
    for pattern, target in TAMING_KEY_MAP:
        renamed, hits = re.subn(pattern, target, key)
        if hits:
            return renamed
    return key


def config_from_taming(ddconfig: dict[str, Any], n_embed: int, embed_dim: int, **overrides: Any) -> VQConfig:
    """The :class:`VQConfig` of a taming ``ddconfig`` (+ ``n_embed``, ``embed_dim``); unsupported options raise."""
    if (
        ddconfig.get("double_z", False)
        or int(ddconfig.get("in_channels", 3)) != 3
        or int(ddconfig.get("out_ch", 3)) != 3
    ):
        raise ValueError("only RGB VQGAN configs with double_z: false are supported (in_channels = out_ch = 3)")
    if not ddconfig.get("resamp_with_conv", True):
        raise ValueError("resamp_with_conv: false (pooling instead of strided convs) is not supported")
    return VQConfig(
        codebook_size=int(n_embed),
        embed_dim=int(embed_dim),
        z_channels=int(ddconfig["z_channels"]),
        channels=int(ddconfig["ch"]),
        channel_mult=tuple(int(m) for m in ddconfig["ch_mult"]),
        num_res_blocks=int(ddconfig["num_res_blocks"]),
        attn_resolutions=tuple(int(r) for r in ddconfig.get("attn_resolutions", ())),
        resolution=int(ddconfig["resolution"]),
        dropout=float(ddconfig.get("dropout", 0.0)),
        **overrides,
    )


def read_taming_config(path: str | Path) -> VQConfig:
    """A taming ``*.yaml`` (``model.params`` with ``ddconfig``, ``n_embed``, ``embed_dim``) as a :class:`VQConfig`."""
    import yaml  # Deferred: PyYAML is needed only to read a taming config

    tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    params = (tree.get("model") or tree).get("params") or {}
    missing = [k for k in ("ddconfig", "n_embed", "embed_dim") if k not in params]
    if missing:
        raise ValueError(f"{path}: not a taming VQGAN config (model.params lacks {missing})")
    return config_from_taming(params["ddconfig"], params["n_embed"], params["embed_dim"])


def load_taming_state_dict(state: dict[str, Tensor], config: VQConfig) -> VQTokenizer:
    """A :class:`VQTokenizer` (eval mode) holding a taming ``VQModel`` state dict (the checkpoint's ``state_dict``).

    Keys are renamed by :data:`TAMING_KEY_MAP`; ``loss.*`` is dropped. Every tokenizer weight must be present
    with its shape and nothing else may remain, else one ValueError lists the differences.
    """
    model = VQTokenizer(config)
    renamed = {new: value for key, value in state.items() if (new := taming_key(key)) is not None}
    expected = {k: v for k, v in model.state_dict().items() if k not in EMA_STATE}
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    wrong = [
        f"{k} {tuple(renamed[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in renamed and renamed[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"taming weights do not fit the config: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shapes {wrong[:8]}"
        )
    codebook = renamed["quantizer.codebook"]
    renamed["quantizer.embed_sum"] = codebook.clone()  # as if each code had count 1: fine-tuning starts from it
    renamed["quantizer.cluster_size"] = torch.ones(config.codebook_size)
    model.load_state_dict({k: v.float() for k, v in renamed.items()})
    return model.eval()


def load_taming_checkpoint(checkpoint: str | Path, config_yaml: str | Path) -> VQTokenizer:
    """A taming VQGAN ``.ckpt`` (Lightning: weights under ``state_dict``) or ``.safetensors`` with its YAML config.

    The checkpoint is read with ``torch.load(weights_only=True)``: no pickled code runs.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        state = load_model_safetensors(path)
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle's many error types: one line naming the file
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint: {reason}") from None
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: no state dict in the checkpoint")
    return load_taming_state_dict(state, read_taming_config(config_yaml))
