"""BERT-family text tower, X²-VLM fusion layers, the CCLM cross encoder and the MLM head.

One stack of post-LN BERT layers serves three roles (xvlm.md §1.4):

* layers ``[0, fusion_start)`` encode text alone (self-attention -> FFN);
* layers ``[fusion_start, num_layers)`` are **fusion** layers: self-attention over the text ->
  cross-attention from the text to vision tokens (keys/values ``Linear(encoder_width -> hidden)``)
  -> FFN, each sub-block ``LayerNorm(x + dropout(dense(.)))`` as in BERT;
* ``forward(mode=...)`` runs ``"text"`` = the text layers, ``"fusion"`` = the fusion layers starting
  from given text states, ``"multimodal"`` = all of them, exactly the official ``mode`` switch.

The CCLM / X²-VLM "Plus" layout (``layout="cross"``) instead keeps a text encoder without any
cross-attention and a separate :class:`CrossEncoder` whose every layer has cross-attention.

Parameter names are Hugging Face BERT's (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``...crossattention.self.key``, ``...intermediate.dense``,
``cls.predictions.*`` for the head) so Hugging Face folders and the official X²-VLM checkpoints
load by name; :func:`load_hf_bert` adds X²-VLM's 12 -> 18 layer expansion (xvlm.md §1.7).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from grainvl.models.layers import Dropout, SharedTokens, attend
from grainvl.utils.fileio import (
    atomic_write_text,
    is_grainvl_folder,
    load_model_safetensors,
    save_model_safetensors,
    staged_dir,
)

Mode = Literal["text", "fusion", "multimodal"]
# Per-layer head multipliers: ``masks[i]`` is (H,) or (B, H) for layer i, or None (no masking).
LayerHeadMasks = Tensor | Sequence[Tensor | None]


# ----------------------------------------------------------------------------------------- config
@dataclass
class TextConfig:
    """Shape and regularisation of the text tower (defaults: BERT-base, text-only)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12  # total layers of the stack, text + fusion (X²-VLM base: 18)
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    fusion_start: int | None = None  # first layer with cross-attention; None or num_layers = no fusion layers
    encoder_width: int = 768  # width of the vision tokens that cross-attention keys/values read
    drop_path_rate: float = 0.0  # stochastic depth, linear 0 -> rate over the text layers
    cross_drop_path_rate: float = 0.0  # ... and separately over the fusion (or cross-encoder) layers
    layout: Literal["single", "cross"] = "single"  # "single": X²-VLM; "cross": CCLM text + cross encoder
    cross_layers: int = 0  # layers of the separate cross encoder (layout "cross" only)
    # The official cross encoder is built from its own BERT config (CCLM / X²-VLM-Plus ``cross_encoder``),
    # whose heads, FFN width and LayerNorm epsilon may differ from the text encoder's; None = the text's.
    cross_num_heads: int | None = None
    cross_intermediate_size: int | None = None
    cross_layer_norm_eps: float | None = None
    roberta_positions: bool = False  # RoBERTa/XLM-R position ids (pads at pad_token_id, tokens from pad+1)
    initializer_range: float = 0.02
    # Per-layer shapes of a pruned (shrunk) stack, layout "single" only; None = uniform. Heads keep
    # their width ``hidden_size // num_heads``; a layer may have 0 heads or 0 FFN neurons.
    # ``layer_cross_heads`` entries of layers without cross-attention are ignored (write 0).
    layer_heads: list[int] | None = None
    layer_cross_heads: list[int] | None = None
    layer_intermediate: list[int] | None = None

    def __post_init__(self) -> None:
        if self.fusion_start is None:
            self.fusion_start = self.num_layers
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if not 0 <= self.fusion_start <= self.num_layers:
            raise ValueError(f"fusion_start {self.fusion_start} must lie in [0, num_layers={self.num_layers}]")
        if self.layout not in ("single", "cross"):
            raise ValueError(f"layout must be 'single' or 'cross', got {self.layout!r}")
        if self.layout == "cross" and (self.fusion_start != self.num_layers or self.cross_layers < 1):
            raise ValueError(
                "layout 'cross' needs a text encoder without cross-attention (fusion_start == num_layers, got "
                f"{self.fusion_start} vs {self.num_layers}) and cross_layers >= 1 (got {self.cross_layers})"
            )
        own_cross = (self.cross_num_heads, self.cross_intermediate_size, self.cross_layer_norm_eps)
        if self.layout != "cross" and any(v is not None for v in own_cross):
            raise ValueError("cross_num_heads / cross_intermediate_size / cross_layer_norm_eps need layout 'cross'")
        if self.cross_num_heads is not None and (self.cross_num_heads < 1 or self.hidden_size % self.cross_num_heads):
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of cross_num_heads {self.cross_num_heads}"
            )
        for name in ("layer_heads", "layer_cross_heads", "layer_intermediate"):
            values = getattr(self, name)
            if values is None:
                continue
            if self.layout != "single":
                raise ValueError(f"{name} (a pruned stack) is only supported with layout 'single'")
            if len(values) != self.num_layers or min(values, default=0) < 0:
                raise ValueError(f"{name} must list {self.num_layers} non-negative numbers, got {values}")
            if name != "layer_intermediate" and max(values, default=0) > self.num_heads:
                raise ValueError(f"{name} {values} exceeds num_heads={self.num_heads}")

    def layer_num_heads(self, index: int, cross: bool = False) -> int:
        """Self- (or cross-) attention heads of layer ``index``."""
        values = self.layer_cross_heads if cross else self.layer_heads
        return self.num_heads if values is None else values[index]

    def layer_ffn(self, index: int) -> int:
        """FFN (intermediate) width of layer ``index``."""
        return self.intermediate_size if self.layer_intermediate is None else self.layer_intermediate[index]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def cross_encoder_config(self) -> TextConfig:
        """The config the separate cross encoder is built from: the text's, with its own heads, FFN and epsilon."""
        return dataclasses.replace(
            self,
            num_heads=self.cross_num_heads or self.num_heads,
            intermediate_size=self.cross_intermediate_size or self.intermediate_size,
            layer_norm_eps=self.layer_norm_eps if self.cross_layer_norm_eps is None else self.cross_layer_norm_eps,
            cross_num_heads=None,
            cross_intermediate_size=None,
            cross_layer_norm_eps=None,
        )

    @classmethod
    def from_hf_config(cls, source: str | Path | dict[str, Any], **overrides: Any) -> TextConfig:
        """Read a Hugging Face BERT/RoBERTa ``config.json`` (folder, file or dict); ``overrides`` win.

        Overrides set to None are ignored, so ``from_hf_config(folder, num_layers=None)`` keeps the checkpoint's.
        """
        hf = _read_json_config(source) if not isinstance(source, dict) else dict(source)
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{_describe(source)}: hidden_act {act!r} is not supported (only exact 'gelu')")
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{_describe(source)}: position_embedding_type {position_type!r} is not supported")
        values: dict[str, Any] = {
            "vocab_size": hf["vocab_size"],
            "hidden_size": hf["hidden_size"],
            "num_layers": hf["num_hidden_layers"],
            "num_heads": hf["num_attention_heads"],
            "intermediate_size": hf["intermediate_size"],
            "max_position_embeddings": hf.get("max_position_embeddings", 512),
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
            "hidden_dropout": hf.get("hidden_dropout_prob", 0.1),
            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
            "pad_token_id": hf.get("pad_token_id") or 0,
            "encoder_width": hf["hidden_size"],
            "roberta_positions": hf.get("model_type") in ("roberta", "xlm-roberta", "camembert"),
            "initializer_range": hf.get("initializer_range", 0.02),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _describe(source: str | Path | dict[str, Any]) -> str:
    return "config dict" if isinstance(source, dict) else str(source)


def _read_json_config(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Hugging Face config.json here")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- masks
def additive_attention_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Key-padding mask (B, K) or per-query mask (B, L, K) of 1/True = attend -> additive (B, 1, 1|L, K).

    The official code adds ``(1 - m) * -10000``; we add the dtype's lowest value (as transformers 5
    does) so that even huge scores on masked tokens are ignored. Both give exp(.) == 0 in fp32.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[:, None, None, :]  # (B, 1, 1, K): same for every head and query
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]  # (B, 1, L, K)
    else:
        raise ValueError(f"attention mask must be (B, K) or (B, L, K), got shape {tuple(mask.shape)}")
    keep = mask.bool()
    return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)


def _head_multiplier(head_mask: Tensor, num_heads: int) -> Tensor:
    """(H,) or (B, H) head mask -> broadcastable against a (B, H, L, d) context."""
    if head_mask.shape[-1] != num_heads or head_mask.dim() not in (1, 2):
        raise ValueError(f"head mask must be (H,) or (B, H) with H={num_heads}, got shape {tuple(head_mask.shape)}")
    if head_mask.dim() == 1:
        return head_mask[None, :, None, None]  # (1, H, 1, 1)
    return head_mask[:, :, None, None]  # (B, H, 1, 1)


def _layer_entry(masks: LayerHeadMasks | None, index: int) -> Tensor | None:
    return None if masks is None else masks[index]


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: drop the whole branch for a random subset of samples.

    The official ``xbert.drop_path`` draws its keep mask with shape ``(1, L, 1)``, i.e. it drops the
    same *token positions* for the whole batch; stochastic depth (Huang et al.) drops a residual
    branch per *sample*, which is what we do (shape ``(B, 1, 1)``). Official bug, paper followed.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


# ----------------------------------------------------------------------------------------- modules
class BertEmbeddings(nn.Module):
    """word + token type + position embeddings -> LayerNorm -> dropout: (B, L) ids -> (B, L, H)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        position_pad = config.pad_token_id if config.roberta_positions else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h, padding_idx=position_pad)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)
        # Non-persistent like transformers 5; the official checkpoints (and HF 4.x files) still carry
        # ``embeddings.position_ids``, which the pre-hook below drops so both load strictly.
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)
        self.register_load_state_dict_pre_hook(_drop_derived_buffers)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """``position_ids`` (B, L) or (1, L) overrides the default numbering (UniLM-style generation
        gives a ``[MASK]`` the position of the token it predicts, and decodes a suffix from position k)."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if position_ids is not None:
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(f"position id {int(position_ids.max())} exceeds max_position_embeddings")
        elif self.config.roberta_positions:
            # RoBERTa numbering: real tokens count up from pad+1, pads keep the pad position.
            real = input_ids.ne(self.config.pad_token_id).long()  # (B, L)
            position_ids = torch.cumsum(real, dim=1) * real + self.config.pad_token_id
        else:
            position_ids = self.position_ids[:, :length]  # (1, L): BERT numbering 0..L-1
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, L, H)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


def _drop_derived_buffers(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-time pre-hook: ``position_ids`` / ``token_type_ids`` are derived buffers, not weights."""
    for name in ("position_ids", "token_type_ids"):
        state_dict.pop(prefix + name, None)


class BertSelfAttention(nn.Module):
    """Multi-head attention with HF names; ``kv_width`` != hidden makes it cross-attention.

    Queries come from the text (B, L, H); keys/values from ``key_value_states`` (B, K, kv_width):
    the text itself for self-attention, vision tokens for cross-attention.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, kv_width: int, dropout: float, head_dim: int | None = None
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        # ``head_dim`` given: a pruned layer keeps the original head width with fewer (maybe 0) heads.
        self.head_dim = hidden_size // num_heads if head_dim is None else head_dim
        inner = num_heads * self.head_dim
        self.query = nn.Linear(hidden_size, inner)
        self.key = nn.Linear(kv_width, inner)
        self.value = nn.Linear(kv_width, inner)
        self.dropout = dropout
        # Distillation hook: when a list, each forward appends its attention probabilities
        # (B, heads, L, K) to it, computed explicitly; None (default) keeps the fused SDPA path.
        self.attention_sink: list[Tensor] | None = None

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(
        self,
        hidden_states: Tensor,
        key_value_states: Tensor | SharedTokens,
        mask: Tensor | None,
        head_mask: Tensor | None,
    ) -> Tensor:
        """-> per-head contexts concatenated, (B, L, heads*d), before the output dense.

        ``key_value_states`` may be :class:`SharedTokens` (cross-attention): K/V are projected once per source.
        """
        if self.num_heads == 0:  # every head pruned away: nothing reaches the output dense
            return hidden_states.new_zeros(*hidden_states.shape[:2], 0)
        q = self._split_heads(self.query(hidden_states))  # (B, h, L, d)
        if isinstance(key_value_states, SharedTokens):
            k = self._split_heads(key_value_states.project(self.key))  # (B, h, K, d)
            v = self._split_heads(key_value_states.project(self.value))  # (B, h, K, d)
        else:
            k = self._split_heads(self.key(key_value_states))  # (B, h, K, d)
            v = self._split_heads(self.value(key_value_states))  # (B, h, K, d)
        p = self.dropout if self.training else 0.0
        context = attend(q, k, v, mask, p, self.attention_sink)  # (B, h, L, d)
        if head_mask is not None:
            # Scaling a head's context == scaling its attention probabilities (the official place).
            context = context * _head_multiplier(head_mask, self.num_heads).to(context.dtype)
        b, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)


class BertSelfOutput(nn.Module):
    """Post-LN residual: LayerNorm(residual + drop_path(dropout(dense(x))))."""

    def __init__(self, in_features: int, config: TextConfig, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.drop_path(self.dropout(self.dense(x))) + residual)


class BertAttention(nn.Module):
    """``self`` (Q/K/V) + ``output`` (dense, LayerNorm): one attention sub-block."""

    def __init__(
        self, config: TextConfig, kv_width: int, dropout: float, drop_path: float, num_heads: int | None = None
    ) -> None:
        super().__init__()
        heads = config.num_heads if num_heads is None else num_heads
        self.self = BertSelfAttention(
            config.hidden_size, heads, kv_width, config.attention_dropout, head_dim=config.head_dim
        )
        self.output = BertSelfOutput(heads * config.head_dim, config, dropout, drop_path)

    def forward(
        self, hidden_states: Tensor, key_value_states: Tensor, mask: Tensor | None, head_mask: Tensor | None
    ) -> Tensor:
        context = self.self(hidden_states, key_value_states, mask, head_mask)  # (B, L, H)
        return self.output(context, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig, width: int | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size if width is None else width)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, BERT's "gelu"


class BertLayer(nn.Module):
    """Self-attention -> [cross-attention to vision tokens] -> FFN, each with a post-LN residual."""

    def __init__(
        self,
        config: TextConfig,
        has_cross_attention: bool,
        drop_path: float,
        dropout: float,
        index: int | None = None,
    ) -> None:
        """``index``: the layer's position in its stack, which picks its per-layer shape in a pruned config."""
        super().__init__()
        heads = None if index is None else config.layer_num_heads(index)
        cross_heads = None if index is None else config.layer_num_heads(index, cross=True)
        ffn = config.intermediate_size if index is None else config.layer_ffn(index)
        self.attention = BertAttention(config, config.hidden_size, dropout, drop_path, num_heads=heads)
        self.crossattention = (
            BertAttention(config, config.encoder_width, dropout, drop_path, num_heads=cross_heads)
            if has_cross_attention
            else None
        )
        self.intermediate = BertIntermediate(config, ffn)
        self.output = BertSelfOutput(ffn, config, dropout, drop_path)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        encoder_mask: Tensor | None,
        head_mask: Tensor | None = None,
        cross_head_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, L, H) text states [+ (B, N, Dv) vision tokens] -> (B, L, H).

        ``mask`` / ``encoder_mask`` are additive masks from :func:`additive_attention_mask`.
        A fusion layer given no vision tokens skips its cross-attention (official behaviour, used
        to run text-only data through the fusion layers).
        """
        x = self.attention(hidden_states, hidden_states, mask, head_mask)  # (B, L, H)
        if self.crossattention is not None and encoder_hidden_states is not None:
            x = self.crossattention(x, encoder_hidden_states, encoder_mask, cross_head_mask)  # (B, L, H)
        return self.output(self.intermediate(x), x)


LayerStep = tuple[nn.Module, Tensor | None, Tensor | None]  # a layer module and its (self, cross) head mask


class LayerStack(nn.Module, abc.ABC):
    """Runs the layers of a :class:`BertEncoderModel`; :class:`BertEncoder` and its drop-in replacements
    (``compress.theseus``) share this ``forward`` and differ only in which modules a range runs."""

    checkpointable = True  # False: ``grad_checkpointing`` is ignored (a replacement that cannot replay)
    grad_checkpointing: bool

    @abc.abstractmethod
    def _steps(
        self, layers: range, head_mask: LayerHeadMasks | None, cross_head_mask: LayerHeadMasks | None
    ) -> list[LayerStep]:
        """The modules that run predecessor range ``layers``, in order, each with its head masks."""

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        layers: range,
        encoder_hidden_states: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        head_mask: LayerHeadMasks | None = None,
        cross_head_mask: LayerHeadMasks | None = None,
        collect: bool = False,
    ) -> list[Tensor]:
        """Run ``layers`` in order: (B, L, H) -> [final states] or, with ``collect``, [input, output of each run]."""
        states = [hidden_states]
        for layer, self_mask, cross_mask in self._steps(layers, head_mask, cross_head_mask):
            args = (hidden_states, mask, encoder_hidden_states, encoder_mask, self_mask, cross_mask)
            if self.checkpointable and self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute the layer in backward; the RNG state is replayed, so dropout matches.
                hidden_states = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden_states = layer(*args)
            if collect:
                states.append(hidden_states)
        return states if collect else [hidden_states]


class BertEncoder(LayerStack):
    """``layer``: the list of :class:`BertLayer`; runs any contiguous range of them."""

    def __init__(self, config: TextConfig, num_layers: int, fusion_start: int) -> None:
        super().__init__()
        text_rates = _linspace(config.drop_path_rate, fusion_start)
        fusion_rates = _linspace(config.cross_drop_path_rate, num_layers - fusion_start)
        # Official: with stochastic depth on, the layers' hidden dropout is switched off (the
        # embeddings keep theirs, since they were built before the config was changed).
        dropout = 0.0 if config.drop_path_rate > 0 else config.hidden_dropout
        self.layer = nn.ModuleList(
            BertLayer(config, i >= fusion_start, rate, dropout, index=i)
            for i, rate in enumerate(text_rates + fusion_rates)
        )
        self.grad_checkpointing = False

    def _steps(
        self, layers: range, head_mask: LayerHeadMasks | None, cross_head_mask: LayerHeadMasks | None
    ) -> list[LayerStep]:
        return [(self.layer[i], _layer_entry(head_mask, i), _layer_entry(cross_head_mask, i)) for i in layers]


def _linspace(end: float, count: int) -> list[float]:
    """``torch.linspace(0, end, count)`` in plain Python, so models can be built on the meta device."""
    return [end * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT init for one module (use with ``.apply``): N(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEncoderModel(nn.Module):
    """The text tower (``embeddings`` + ``encoder.layer.N``), also X²-VLM's ``text_encoder.bert``. No pooler."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config, config.num_layers, self.fusion_start)
        self.init_weights()

    @property
    def fusion_start(self) -> int:
        assert self.config.fusion_start is not None  # resolved in TextConfig.__post_init__
        return self.config.fusion_start

    def init_weights(self) -> None:
        self.apply(lambda m: init_bert_weights(m, self.config.initializer_range))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable

    def layer_range(self, mode: Mode) -> range:
        """Layers a mode runs: text [0, fusion_start), fusion [fusion_start, N), multimodal [0, N)."""
        n = self.config.num_layers
        if mode == "text":
            return range(0, self.fusion_start)
        if mode == "fusion":
            if self.fusion_start == n:
                raise ValueError("mode 'fusion': this text tower has no fusion layers (fusion_start == num_layers)")
            return range(self.fusion_start, n)
        if mode == "multimodal":
            return range(0, n)
        raise ValueError(f"mode must be 'text', 'fusion' or 'multimodal', got {mode!r}")

    def forward(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        mode: Mode = "text",
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        inputs_embeds_for_fusion: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        head_mask: LayerHeadMasks | None = None,
        cross_head_mask: LayerHeadMasks | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """-> last hidden states (B, L, H).

        input_ids (B, L) for modes "text"/"multimodal"; ``inputs_embeds_for_fusion`` (B, L, H) text
        states for mode "fusion". attention_mask (B, L) 1 = real token (None: all real).
        encoder_hidden_states (B, N, Dv) vision tokens with encoder_attention_mask (B, N) (or
        (B, L, N)); None skips cross-attention. head_mask / cross_head_mask: indexed by absolute
        layer number, each entry (H,) or (B, H) multiplying every head's context (pruning masks);
        entries of layers that do not run or have no cross-attention are ignored. position_ids (B, L)
        overrides BERT's 0..L-1 numbering (modes "text"/"multimodal").
        """
        hidden, mask, encoder_mask, layers = self._prepare(
            input_ids,
            attention_mask,
            mode,
            encoder_hidden_states,
            encoder_attention_mask,
            inputs_embeds_for_fusion,
            token_type_ids,
            position_ids,
        )
        states = self.encoder(hidden, mask, layers, encoder_hidden_states, encoder_mask, head_mask, cross_head_mask)
        return states[-1]

    def forward_intermediates(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        mode: Mode = "text",
        **inputs: Tensor | None,
    ) -> list[Tensor]:
        """Like :meth:`forward` but -> [input states, output of every layer run], each (B, L, H) (distillation).

        ``inputs``: the other tensors of :meth:`forward` that shape the states, by name
        (``encoder_hidden_states``, ``encoder_attention_mask``, ``inputs_embeds_for_fusion``, ``token_type_ids``,
        ``position_ids``).
        """
        hidden, mask, encoder_mask, layers = self._prepare(input_ids, attention_mask, mode, **inputs)
        vision = inputs.get("encoder_hidden_states")
        return self.encoder(hidden, mask, layers, vision, encoder_mask, collect=True)

    def _prepare(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        mode: Mode,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        inputs_embeds_for_fusion: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, range]:
        """-> (first states (B, L, H), additive text mask, additive vision mask, layers to run)."""
        layers = self.layer_range(mode)
        if mode == "fusion":
            if inputs_embeds_for_fusion is None:
                raise ValueError("mode 'fusion' needs inputs_embeds_for_fusion (B, L, H): the text layers' output")
            hidden = inputs_embeds_for_fusion  # (B, L, H)
        else:
            if input_ids is None:
                raise ValueError(f"mode {mode!r} needs input_ids (B, L)")
            hidden = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, L, H)
        mask = additive_attention_mask(attention_mask, hidden.dtype)
        encoder_mask = None
        if encoder_hidden_states is not None:
            encoder_mask = additive_attention_mask(encoder_attention_mask, hidden.dtype)
        return hidden, mask, encoder_mask, layers


class CrossEncoder(nn.Module):
    """CCLM / X²-VLM-Plus ``cross_encoder``: ``cross_layers`` layers, all with cross-attention, no embeddings."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.cross_layers < 1:
            raise ValueError(f"CrossEncoder needs cross_layers >= 1, got {config.cross_layers}")
        config = config.cross_encoder_config()
        self.config = config
        self.encoder = BertEncoder(config, config.cross_layers, fusion_start=0)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        encoder_attention_mask: Tensor | None = None,
        head_mask: LayerHeadMasks | None = None,
        cross_head_mask: LayerHeadMasks | None = None,
    ) -> Tensor:
        """Text states (B, L, H) with mask (B, L), vision tokens (B, N, Dv) with mask (B, N) -> (B, L, H)."""
        mask = additive_attention_mask(attention_mask, hidden_states.dtype)
        encoder_mask = additive_attention_mask(encoder_attention_mask, hidden_states.dtype)
        layers = range(self.config.cross_layers)
        return self.encoder(
            hidden_states, mask, layers, encoder_hidden_states, encoder_mask, head_mask, cross_head_mask
        )[-1]


# ----------------------------------------------------------------------------------------- MLM head
class _PredictionTransform(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class _LMPrediction(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.transform = _PredictionTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # One output bias known under two names, ``predictions.bias`` and ``predictions.decoder.bias``,
        # exactly as in Hugging Face / the official checkpoints.
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    """BERT's ``cls`` head: ``predictions.transform.{dense, LayerNorm}`` -> ``predictions.decoder`` (+ bias).

    (..., H) -> (..., vocab). X²-VLM ties ``decoder.weight`` to the word embeddings
    (:meth:`tie_weights`); the CCLM layout leaves it untied.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.predictions = _LMPrediction(config)
        self.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def tie_weights(self, embeddings: BertEmbeddings | nn.Embedding) -> None:
        """Make ``predictions.decoder.weight`` the very Parameter of the word embeddings."""
        table = embeddings.word_embeddings if isinstance(embeddings, BertEmbeddings) else embeddings
        if table.weight.shape != self.predictions.decoder.weight.shape:
            raise ValueError(
                f"cannot tie: word embeddings {tuple(table.weight.shape)} vs decoder "
                f"{tuple(self.predictions.decoder.weight.shape)}"
            )
        self.predictions.decoder.weight = table.weight

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.predictions(hidden_states)


# ----------------------------------------------------------------------------------------- loading
class LoadReport(TypedDict):
    """What :func:`load_hf_bert` did: keys left at init, checkpoint keys not used, layers copied (new <- old)."""

    missing: list[str]
    unexpected: list[str]
    copied_layers: dict[int, int]


_HF_PREFIXES = ("bert.", "roberta.")


def read_hf_state_dict(folder: str | Path) -> dict[str, Tensor]:
    """All tensors of a local Hugging Face folder: model.safetensors (single or sharded) or pytorch_model.bin."""

    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_model_safetensors(single)  # a truncated file is one line naming it
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_model_safetensors(folder / shard))
        return state
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        loaded = torch.load(binary, map_location="cpu", weights_only=True)
        return dict(loaded.get("state_dict", loaded)) if isinstance(loaded, dict) else loaded
    raise FileNotFoundError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def normalise_hf_bert_keys(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Strip ``bert.``/``roberta.`` prefixes and rename TF-era LayerNorm ``gamma``/``beta`` (as the
    official ``rename_tf_layernorm``). -> (tower weights by our names, keys that are not tower weights)."""
    tower: dict[str, Tensor] = {}
    other: list[str] = []
    for key, value in state.items():
        name = key
        for prefix in _HF_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if "LayerNorm." in name:
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name in ("embeddings.position_ids", "embeddings.token_type_ids"):
            continue  # derived buffers, not weights
        if name.startswith(("embeddings.", "encoder.layer.")):
            tower[name] = value
        else:
            other.append(key)  # pooler, MLM/NSP heads, classifiers
    return tower, other


def expand_layers(
    tower: dict[str, Tensor], ckpt_layers: int, num_layers: int
) -> tuple[dict[str, Tensor], list[str], dict[int, int]]:
    """Fit a ``ckpt_layers``-layer state dict to ``num_layers`` layers (X²-VLM, xvlm.md §1.7).

    Growing by k copies the checkpoint's last k layers on top (BERT-base 12 -> 18: 6..11 -> 12..17);
    shrinking keeps the first ``num_layers``. -> (state, dropped keys, {new layer: source layer}).
    """
    extra = num_layers - ckpt_layers
    if extra > ckpt_layers:
        raise ValueError(f"cannot grow {ckpt_layers} layers to {num_layers}: at most {2 * ckpt_layers}")
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    copied = {new: new - extra for new in range(ckpt_layers, num_layers)}
    for key, value in tower.items():
        index = _layer_index(key)
        if index is not None and index >= num_layers:
            dropped.append(key)
            continue
        out[key] = value
    for new, source in copied.items():
        head = f"encoder.layer.{source}."
        for key, value in tower.items():
            if key.startswith(head):
                out[f"encoder.layer.{new}." + key[len(head) :]] = value.clone()
    return out, dropped, copied


def _layer_index(key: str) -> int | None:
    if not key.startswith("encoder.layer."):
        return None
    return int(key.split(".")[2])


def _checkpoint_layers(tower: dict[str, Tensor]) -> int:
    indices = [i for i in map(_layer_index, tower) if i is not None]
    return max(indices) + 1 if indices else 0


@torch.no_grad()
def copy_embedding_rows(table: nn.Embedding, source: Tensor, rows: dict[int, int]) -> int:
    """``table.weight[i] = source[j]`` for every ``{i: j}`` of ``rows``; -> the number of rows copied.

    ``table`` (V, H) and ``source`` (V', H): initialise a new vocabulary's embeddings from another
    model's wherever the two vocabularies share a token (``data.tokenization.shared_token_rows``).
    """
    if source.shape[1] != table.embedding_dim:
        raise ValueError(f"cannot copy rows of width {source.shape[1]} into embeddings of width {table.embedding_dim}")
    if not rows:
        return 0
    ours = torch.tensor(sorted(rows), dtype=torch.long)  # (R,)
    theirs = torch.tensor([rows[i] for i in sorted(rows)], dtype=torch.long)  # (R,)
    table.weight[ours] = source[theirs].to(table.weight.dtype)
    return len(rows)


def load_hf_bert(
    folder: str | Path,
    num_layers: int | None = None,
    fusion_start: int | None = None,
    encoder_width: int | None = None,
    **overrides: Any,
) -> tuple[TextConfig, BertEncoderModel, LoadReport]:
    """Build the text tower from a local Hugging Face BERT/RoBERTa folder, loading weights by name.

    ``num_layers`` above the checkpoint's applies X²-VLM's layer expansion (:func:`expand_layers`);
    ``fusion_start`` defaults to ``num_layers`` (no fusion layers); cross-attention weights stay at
    their random init and are listed in ``report["missing"]``; the pooler and any heads are listed
    in ``report["unexpected"]``. Other ``overrides`` are :class:`TextConfig` fields (e.g. dropout).
    """
    folder = Path(folder)
    hf_config = _read_json_config(folder)
    ckpt_layers = hf_config["num_hidden_layers"]
    num_layers = ckpt_layers if num_layers is None else num_layers
    fusion_start = num_layers if fusion_start is None else fusion_start
    config = TextConfig.from_hf_config(
        hf_config, num_layers=num_layers, fusion_start=fusion_start, encoder_width=encoder_width, **overrides
    )
    tower, other = normalise_hf_bert_keys(read_hf_state_dict(folder))
    found_layers = _checkpoint_layers(tower)
    if found_layers != ckpt_layers:
        raise ValueError(f"{folder}: config.json says {ckpt_layers} layers but the weights hold {found_layers}")
    tower, dropped, copied = expand_layers(tower, ckpt_layers, num_layers)
    model = BertEncoderModel(config)
    own = model.state_dict()
    for key, value in tower.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{folder}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
            )
    result = model.load_state_dict(tower, strict=False)
    report = LoadReport(
        missing=list(result.missing_keys),
        unexpected=sorted(other + dropped + list(result.unexpected_keys)),
        copied_layers=copied,
    )
    return config, model, report


__all__ = [
    "BertEmbeddings",
    "BertEncoderModel",
    "BertLayer",
    "CrossEncoder",
    "DropPath",
    "LoadReport",
    "MLMHead",
    "TextConfig",
    "additive_attention_mask",
    "copy_embedding_rows",
    "expand_layers",
    "hf_bert_dims",
    "init_bert_weights",
    "load_hf_bert",
    "normalise_hf_bert_keys",
    "read_hf_state_dict",
]


# ---------------------------------------------------------------------------------------------- export
def hf_bert_dims(config: TextConfig, layers: int) -> dict[str, Any]:
    """The size and regularisation fields of a Hugging Face BERT config, for a tower of ``layers`` layers.

    Key order is that of the written ``config.json``: callers put ``architectures``/``model_type`` first.
    """
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }


def hf_bert_config(config: TextConfig) -> dict[str, Any]:
    """The Hugging Face ``BertConfig`` dict of a text tower without fusion layers."""
    if config.fusion_start != config.num_layers or config.layout != "single" or config.roberta_positions:
        raise ValueError("only a plain BERT text tower (no fusion layers, BERT positions) exports as BertForMaskedLM")
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        **hf_bert_dims(config, config.num_layers),
        "tie_word_embeddings": True,
    }


def save_hf_bert(
    directory: str | Path, encoder: BertEncoderModel, head: MLMHead, tokenizer: Any, overwrite: bool = False
) -> Path:
    """Write a ``BertForMaskedLM`` folder: config.json, model.safetensors (``bert.*`` + ``cls.*``), tokenizer.

    The decoder weight is tied to the word embeddings and not stored (transformers re-ties it). The
    folder is assembled next to ``directory`` and swapped in, so a reader never sees half of it; a folder grainvl
    wrote (``fileio.is_grainvl_folder``) is replaced, any other non-empty folder only with ``overwrite``.
    """

    directory = Path(directory)
    state = {f"bert.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"cls.{k}": v for k, v in head.state_dict().items() if not k.startswith("predictions.decoder.")})
    with staged_dir(directory, overwrite=overwrite, replaceable=is_grainvl_folder) as staging:
        atomic_write_text(staging / "config.json", json.dumps(hf_bert_config(encoder.config), indent=2) + "\n")
        save_model_safetensors(staging / "model.safetensors", {k: v.detach() for k, v in state.items()})
        tokenizer.save_pretrained(str(staging))
    return directory
