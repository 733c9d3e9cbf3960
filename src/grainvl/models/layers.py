"""Transformer building blocks shared by every model family: attention, MLP, stochastic depth, masks.

Conventions:

* Sequences are ``(B, N, D)``; attention heads split ``D`` into ``H × head_dim``.
* Boolean masks mean **True = keep** (attend to this key), the same as Hugging Face's
  ``attention_mask`` of ones and zeros.
* Every mask is turned into one *additive* float mask (0 where kept, a large negative number where
  dropped) and handed to :func:`torch.nn.functional.scaled_dot_product_attention`, so padding masks,
  relative position biases and box masks compose by addition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QkvBias = Literal["none", "qv", "full"]


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
    """

    tokens: Tensor  # (U, 1+N, D) distinct sequences
    index: Tensor  # (B,) long, the source of each row
    first: Tensor | None = None  # (B, D) replaces each row's token 0 (regions)

    def select(self, rows: Tensor) -> SharedTokens:
        """Rows ``rows`` (indices into this object's ``B`` rows), still shared."""
        return SharedTokens(self.tokens, self.index[rows], None if self.first is None else self.first[rows])

    def project(self, linear: nn.Module) -> Tensor:
        """``linear`` applied to every row's tokens -> (B, 1+N, out), computed on the distinct rows."""
        if self.first is None:
            return linear(self.tokens).index_select(0, self.index)  # (B, 1+N, out)
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
        self.drop = nn.Dropout(drop)

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
        self.proj_drop = nn.Dropout(proj_drop)
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
        if self.attention_sink is not None:
            out = explicit_attention(q, k, v, mask, dropout_p, self.attention_sink)  # (B, H, N, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, H, N, hd)
        out = apply_head_mask(out, head_mask)
        out = out.transpose(1, 2).reshape(batch, n_tokens, inner)  # (B, N, inner)
        return self.proj_drop(self.proj(out))


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, sink: list[Tensor]
) -> Tensor:
    """Attention computed step by step so its probabilities can be kept (distillation); appends them to ``sink``.

    Same result as :func:`torch.nn.functional.scaled_dot_product_attention` (up to rounding):
    ``q`` ``(B, H, Nq, d)``, ``k``/``v`` ``(B, H, Nk, d)``, ``mask`` additive, broadcastable to
    ``(B, H, Nq, Nk)``. The appended probabilities are post-softmax and pre-dropout, as the official
    ``output_attentions`` returns them.
    """
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, Nq, Nk)
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    sink.append(probs)
    return F.dropout(probs, dropout_p) @ v if dropout_p > 0 else probs @ v  # (B, H, Nq, d)


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
