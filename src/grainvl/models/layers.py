"""Transformer building blocks shared by every model family: attention, MLP, stochastic depth, masks.

Conventions:

* Sequences are ``(B, N, D)``; attention heads split ``D`` into ``H × head_dim``.
* Boolean masks mean **True = keep** (attend to this key), the same as Hugging Face's
  ``attention_mask`` of ones and zeros.
* Every mask is turned into one *additive* float mask (0 where kept, a large negative number where
  dropped) and handed to :func:`torch.nn.functional.scaled_dot_product_attention`, so padding masks,
  relative position biases and box masks compose by addition.
* Dropout (:func:`dropout`, :class:`Dropout`, attention probabilities through :func:`attend`) is torch's
  by default, so a seed gives the official code's masks. Switched on (``train.fast_dropout``), it draws
  its CPU masks from 16-bit lanes of 64-bit random words, 3-4x faster than torch's ``bernoulli_`` (9% of
  the demo's pre-training step); on CUDA it stays torch's own. See :func:`dropout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QkvBias = Literal["none", "qv", "full"]

# ---------------------------------------------------------------------------------------------- dropout
_LANES = 1 << 16  # a keep decision per 16-bit lane: four per 64-bit random word
_fast_cpu_dropout = False


def set_fast_cpu_dropout(enabled: bool) -> bool:
    """Process-wide switch of :func:`dropout`'s CPU masks; returns the previous setting.

    Off (default): every dropout is torch's (``F.dropout``, dropout inside SDPA), so the random stream,
    and with it every loss under a seed, is the official code's. :func:`grainvl.train.loop.train` sets it
    from ``TrainConfig.fast_dropout`` for the run and puts the previous value back afterwards.
    """
    global _fast_cpu_dropout
    previous, _fast_cpu_dropout = _fast_cpu_dropout, bool(enabled)
    return previous


def fast_dropout_applies(x: Tensor, p: float, training: bool) -> bool:
    """Whether :func:`dropout` draws its own mask for ``x`` (CPU tensor, training, 0 < p < 1, switch on)."""
    return _fast_cpu_dropout and training and 0.0 < p < 1.0 and x.device.type == "cpu"


class _ScaleByMask(torch.autograd.Function):
    """``x · keep · scale`` saving only the bool mask (one byte per element, as torch's dropout)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

    Why not ``F.dropout`` on the CPU: its ``bernoulli_`` draws one Mersenne-Twister number per element
    and then divides and multiplies in separate passes, 13 ms for a (60, 12, 30, 101) attention tensor on
    this 2-core machine. Here one 64-bit draw (the same generator, so ``torch.manual_seed`` and the
    checkpointed RNG state reproduce every mask) gives four uniform 16-bit lanes and an element is dropped
    when its lane is below ``round(p · 65536)``: 3 ms for the same tensor. The drop probability is thus
    ``p`` rounded to a multiple of 1/65536 (0.1 -> 0.1000061) and the scale is the exact inverse of the
    keep probability actually used, so the expectation is unchanged. Masks differ from torch's draws (a
    different use of the random stream), not in distribution, so losses under a seed no longer equal the
    official code's; that is why it is off unless asked for (``train.fast_dropout``). On other devices, in
    eval mode, or with :func:`set_fast_cpu_dropout` off it is ``F.dropout``.
    """
    if not fast_dropout_applies(x, p, training):
        return F.dropout(x, p, training)
    threshold = round(p * _LANES)  # drop when the lane, read as 0..65535, is below this
    if threshold == 0:  # p under 1/131072 rounds to "never drop"
        return x
    if threshold == _LANES:
        return x * 0.0
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # the full 64-bit range
    lanes = words.view(torch.int16)[:n].view(x.shape)  # int16: lane value - 32768, uniform on [-32768, 32767]
    keep = lanes >= threshold - _LANES // 2  # (x.shape) bool
    return _ScaleByMask.apply(x, keep, _LANES / (_LANES - threshold))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same name in state dicts, same ``p``) through :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


@dataclass(frozen=True)
class SharedTokens:
    """``B`` vision sequences ``(B, 1+N, D)`` stored once per distinct source: row ``b`` is
    ``tokens[index[b]]``, except that its first token is ``first[b]`` when ``first`` is given (a region's
    box-pooled token, :func:`grainvl.data.region.region_features`).

    Why: ITM runs the fusion layers over ``3B`` text-image pairs made of ``B`` images, and a region batch
    pairs tens of texts with a few images, so the cross-attention key/value projections, which are linear
    per token, were computed up to 20 times over the same rows (20% of the demo pre-training forward).
    :meth:`project` applies them to the distinct rows and then gathers: the same numbers up to fp32
    summation order (the backward's index_add sums what the copies' gradients summed).

    ``cache`` (a dict, decoding only): each projection of ``tokens`` is kept by module, so an incremental
    decoder's cross-attention projects the image tokens once per caption instead of once per generated
    token; :meth:`select` (beam reordering) keeps the cache, since it only moves ``index``.
    """

    tokens: Tensor  # (U, 1+N, D) distinct sequences
    index: Tensor  # (B,) long, the source of each row
    first: Tensor | None = None  # (B, D) replaces each row's token 0 (regions)
    cache: dict[int, Tensor] | None = None  # id(linear) -> linear(tokens) (U, 1+N, out); None: no caching

    def select(self, rows: Tensor) -> SharedTokens:
        """Rows ``rows`` (indices into this object's ``B`` rows), still shared."""
        first = None if self.first is None else self.first[rows]
        return SharedTokens(self.tokens, self.index[rows], first, self.cache)

    def project(self, linear: nn.Module) -> Tensor:
        """``linear`` applied to every row's tokens -> (B, 1+N, out), computed on the distinct rows."""
        if self.first is None:
            if self.cache is None:
                return linear(self.tokens).index_select(0, self.index)  # (B, 1+N, out)
            if id(linear) not in self.cache:
                self.cache[id(linear)] = linear(self.tokens)  # (U, 1+N, out), once per module
            return self.cache[id(linear)].index_select(0, self.index)
        patches = linear(self.tokens[:, 1:]).index_select(0, self.index)  # (B, N, out)
        return torch.cat([linear(self.first).unsqueeze(1), patches], dim=1)


def select_vision_rows(tokens: Tensor | SharedTokens, rows: Tensor, share: bool = True) -> Tensor | SharedTokens:
    """``tokens[rows]`` for vision sequences: shared (no copy, projected once per source) when ``share`` or when
    ``tokens`` already is (only a model sharing rows makes :class:`SharedTokens`)."""
    if isinstance(tokens, SharedTokens):
        return tokens.select(rows)
    return SharedTokens(tokens, rows) if share else tokens.index_select(0, rows)


def mask_value(dtype: torch.dtype) -> float:
    """The "minus infinity" used for dropped keys in additive masks of ``dtype``.

    A quarter of ``finfo(dtype).min`` rather than ``finfo.min`` itself (Hugging Face's choice) so that
    up to four such masks (padding + box mask + ...) can be summed without overflowing to ``-inf``:
    a row whose keys are all masked then stays finite and softmax gives a uniform row instead of NaN.
    Still far below any real attention logit (fp16: -16376, fp32: -8.5e37), so ``exp`` gives exactly 0.
    """
    return torch.finfo(dtype).min / 4


def additive_mask(keep: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn a key-keep mask into an additive attention mask.

    Args:
        keep: ``(B, Nk)`` bool, or 0/1 numbers; True/1 = attend to this key.
        dtype: floating dtype of the result (the attention's compute dtype).

    Returns:
        ``(B, 1, 1, Nk)`` with 0 where kept and :func:`mask_value` where dropped, broadcastable over
        heads and queries.
    """
    if keep.dim() != 2:
        raise ValueError(f"keep mask must be (B, Nk), got shape {tuple(keep.shape)}")
    keep = keep.bool() if keep.dtype != torch.bool else keep
    zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return zeros.masked_fill(~keep, mask_value(dtype))[:, None, None, :]  # (B, 1, 1, Nk)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of a random subset of samples.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged. Identity when ``p``
    is 0 or outside training.
    """
    if p == 0.0 or not training:
        return x
    keep_prob = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (drop probability ``p``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Transformer feed-forward: ``fc2(drop(act(fc1(x))))``; ``(B, N, dim) -> (B, N, out_dim)``.

    Dropout only after ``fc2``, as BEiT's Mlp ("for the original BERT implementation").
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        act: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, through SDPA.

    ``qkv_bias`` chooses the bias of the fused projection:

    * ``"none"``: no bias at all;
    * ``"qv"``: BEiT/BEiT-v2 style, ``qkv`` has no bias and separate ``q_bias``/``v_bias`` parameters
      are used, the key bias being fixed at zero (a key bias only adds a per-query constant to the
      logits, which softmax ignores, so BEiT drops it);
    * ``"full"``: ``qkv`` carries an ordinary ``(3D,)`` bias (plain ViT/timm).

    Subclasses add position information by overriding :meth:`forward` and passing ``attn_bias``
    (see ``vision.BeitAttention``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        qkv_bias: QkvBias = "full",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and (heads < 1 or dim % heads != 0):
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if qkv_bias not in ("none", "qv", "full"):
            raise ValueError(f"qkv_bias must be 'none', 'qv' or 'full', got {qkv_bias!r}")
        self.num_heads = heads
        # ``head_dim`` given: a pruned block keeps the original head width with fewer (maybe 0) heads,
        # so the attention's inner width ``heads * head_dim`` differs from ``dim``.
        self.head_dim = dim // heads if head_dim is None else head_dim
        inner = heads * self.head_dim
        self.qkv_bias_mode: QkvBias = qkv_bias
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias == "full")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(inner))
            self.v_bias = nn.Parameter(torch.zeros(inner))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = Dropout(proj_drop)
        # Distillation hook: when a list, each forward appends its attention probabilities
        # (B, H, N, N) to it, computed explicitly; None (default) keeps the fused SDPA path.
        self.attention_sink: list[Tensor] | None = None

    def _qkv_bias(self) -> Tensor | None:
        """The bias of the fused projection: ``(3D,)`` or None."""
        if self.qkv_bias_mode == "qv":
            # The k part is a constant zero (no gradient), as BEiT builds it.
            return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        return self.qkv.bias

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        head_mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention over ``x``.

        Args:
            x: ``(B, N, D)``.
            key_padding_mask: ``(B, N)`` bool (or 0/1), True = real token; None = attend everywhere.
            attn_bias: additive float ``(B|1, H|1, N, N)``, e.g. a relative position bias or a box mask.
            head_mask: ``(H,)`` or ``(B, H)`` float multiplying each head's output before ``proj``
                (CoFi/EfficientVLM pruning masks); a zero entry makes the output independent of
                that head.

        Returns:
            ``(B, N, D)``.
        """
        batch, n_tokens, _ = x.shape
        inner = self.num_heads * self.head_dim
        if self.num_heads == 0:  # every head pruned away: the block only adds proj's bias
            return self.proj_drop(self.proj(x.new_zeros(batch, n_tokens, 0)))
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias())  # (B, N, 3·inner)
        qkv = qkv.view(batch, n_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)

        mask = combine_masks(key_padding_mask, attn_bias, q.dtype)  # (B|1, H|1, N|1, N) or None
        dropout_p = self.attn_drop if self.training else 0.0
        out = attend(q, k, v, mask, dropout_p, self.attention_sink)  # (B, H, N, hd)
        out = apply_head_mask(out, head_mask)
        out = out.transpose(1, 2).reshape(batch, n_tokens, inner)  # (B, N, inner)
        return self.proj_drop(self.proj(out))


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, sink: list[Tensor] | None = None
) -> Tensor:
    """Scaled dot-product attention ``(B, H, Nq, d)``: fused SDPA, or :func:`explicit_attention` when the
    probabilities are wanted (``sink``) or dropped by :func:`dropout`'s CPU masks. On the CPU, SDPA with
    dropout runs its unfused math path anyway (the same steps), so nothing fused is lost there.

    ``dropout_p`` is the caller's (0 in eval mode).
    """
    if sink is not None or fast_dropout_applies(q, dropout_p, True):
        return explicit_attention(q, k, v, mask, dropout_p, sink)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, sink: list[Tensor] | None = None
) -> Tensor:
    """Attention computed step by step, so its probabilities can be kept (distillation: appended to ``sink``
    when given) and dropped by :func:`dropout`.

    Same result as :func:`torch.nn.functional.scaled_dot_product_attention` (up to rounding):
    ``q`` ``(B, H, Nq, d)``, ``k``/``v`` ``(B, H, Nk, d)``, ``mask`` additive, broadcastable to
    ``(B, H, Nq, Nk)``. The appended probabilities are post-softmax and pre-dropout, as the official
    ``output_attentions`` returns them.
    """
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    if sink is not None:
        sink.append(probs)
    return dropout(probs, dropout_p, True) @ v if dropout_p > 0 else probs @ v  # (B, H, Nq, d)


def combine_masks(key_padding_mask: Tensor | None, attn_bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Sum a keep-mask and an additive bias into one additive float mask (or None when both are None).

    Shapes: ``key_padding_mask`` ``(B, Nk)``; ``attn_bias`` ``(B|1, H|1, Nq, Nk)``; result broadcastable
    to ``(B, H, Nq, Nk)``.
    """
    mask = None if key_padding_mask is None else additive_mask(key_padding_mask, dtype)  # (B, 1, 1, Nk)
    if attn_bias is not None:
        attn_bias = attn_bias.to(dtype)
        mask = attn_bias if mask is None else mask + attn_bias
    return mask


def apply_head_mask(per_head: Tensor, head_mask: Tensor | None) -> Tensor:
    """Scale each head's attention output: ``(B, H, N, hd)`` times ``(H,)`` or ``(B, H)``."""
    if head_mask is None:
        return per_head
    if head_mask.dim() == 1:
        head_mask = head_mask[None, :]  # (1, H)
    if head_mask.dim() != 2 or head_mask.shape[-1] != per_head.shape[1]:
        raise ValueError(f"head_mask must be (H,) or (B, H) with H={per_head.shape[1]}, got {tuple(head_mask.shape)}")
    return per_head * head_mask[:, :, None, None].to(per_head.dtype)
