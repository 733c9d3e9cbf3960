"""Text generation pieces for X²-VLM's generative heads: the VQA answer decoder, incremental decoding, beam search.

* :class:`TextDecoder` is the official ``text_decoder`` of ``XVLMForVQA`` (xvlm.md §4.1): a BERT
  with language-model head (``bert.*`` + ``cls.*``) whose every layer is causal self-attention ->
  cross-attention to the *question states* of the fusion encoder -> FFN. It is initialised as the
  official code does: embeddings and MLM head copied from the model's text tower, layer ``k`` from
  fusion layer ``fusion_start + k`` (or every second fusion layer for a half-depth decoder); the
  cross-attention key/value projections are copied only when the vision width equals the text width
  (they read question states of width H instead of vision tokens of width Dv).
* :func:`incremental_forward` runs any range of layers of a :class:`BertEncoderModel` on new tokens
  given the per-layer *input* states of the tokens before them (the official "history states" of
  UniLM's s2s decoding): keys/values of self-attention are ``[history; new]``, so decoding one token
  costs one token's work per layer, and the result equals a full causal pass (tested).
* :func:`beam_search` / :func:`greedy_search` decode from a step function; the beam search is the
  UniLM ``s2s-ft`` one that X²-VLM's captioner uses: K beams, a beam that emits EOS is recorded as a
  finished hypothesis and its slot is dead from then on, decoding stops when every slot has ended or
  at ``max_length``; the answer is the best finished (or last-step) hypothesis by
  ``score / ((5 + length) / 6) ** length_penalty`` (GNMT; 0 = raw log-likelihood); EOS is
  forbidden before ``min_length`` tokens and repeated n-grams can be blocked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from grainvl.models.layers import SharedTokens
from grainvl.models.text import BertEncoderModel, MLMHead, TextConfig, additive_attention_mask

NEG_INF = -1e4  # the official "forbidden" score; finite so that sums of several stay ordered
SHAPE_FIELDS = ("layer_heads", "layer_cross_heads", "layer_intermediate")  # a pruned decoder's per-layer shapes


# ----------------------------------------------------------------------------------------- masks
def causal_mask(attention_mask: Tensor) -> Tensor:
    """Key-padding mask (B, L) of 1 = real -> (B, L, L) lower-triangular mask: query i sees real keys j <= i."""
    length = attention_mask.shape[1]
    tril = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()  # (L, L)
    return tril[None] & attention_mask.bool()[:, None, :]  # (B, L, L)


# ----------------------------------------------------------------------------------------- decoder
def fusion_sources(tower: BertEncoderModel, num_layers: int | None = None) -> list[int]:
    """The tower layers a ``num_layers``-layer decoder is copied from: every fusion layer (default) or,
    for half as many, the odd absolute layer numbers (official: the even ones are dropped)."""
    fusion = range(tower.fusion_start, tower.config.num_layers)
    num_layers = len(fusion) if num_layers is None else num_layers
    if num_layers < 1 or num_layers not in (len(fusion), len(fusion) // 2):
        raise ValueError(
            f"num_dec_layers must be {len(fusion)} or {len(fusion) // 2} (the fusion layers), got {num_layers}"
        )
    return list(fusion) if num_layers == len(fusion) else [i for i in fusion if i % 2 == 1][:num_layers]


def fusion_decoder_shapes(tower: BertEncoderModel, num_layers: int | None = None) -> dict[str, list[int]]:
    """The per-layer shapes (:meth:`TextDecoder.layer_shapes`) that :meth:`TextDecoder.from_fusion_layers`
    gives without ``shapes``: those of its source layers."""
    cfg = tower.config
    sources = fusion_sources(tower, num_layers)
    return {
        "layer_heads": [cfg.layer_num_heads(i) for i in sources],
        "layer_cross_heads": [cfg.layer_num_heads(i, cross=True) for i in sources],
        "layer_intermediate": [cfg.layer_ffn(i) for i in sources],
    }


class TextDecoder(nn.Module):
    """Causal BERT decoder with cross-attention to encoder states and a tied LM head (official names)."""

    def __init__(self, config: TextConfig, word_embeddings: nn.Embedding | None = None) -> None:
        """``word_embeddings``: an external token table (config.vocab_size x hidden) to read inputs from and
        tie the output layer to, instead of a table of its own (DaVinci shares one table with its encoder)."""
        super().__init__()
        self.config = config
        self.bert = BertEncoderModel(config)
        if word_embeddings is not None:
            if tuple(word_embeddings.weight.shape) != (config.vocab_size, config.hidden_size):
                raise ValueError(
                    f"word_embeddings {tuple(word_embeddings.weight.shape)} do not fit the decoder "
                    f"({config.vocab_size}, {config.hidden_size})"
                )
            self.bert.embeddings.word_embeddings = word_embeddings
        self.cls = MLMHead(config)
        self.cls.tie_weights(self.bert.embeddings)  # BertLMHeadModel ties its output embeddings

    @classmethod
    def from_fusion_layers(
        cls,
        tower: BertEncoderModel,
        head: MLMHead,
        num_layers: int | None = None,
        shapes: dict[str, list[int]] | None = None,
    ) -> TextDecoder:
        """The official initialisation from an X²-VLM text tower (xvlm.md §7.11, ``XVLMForVQA.load_pretrained``).

        ``num_layers``: the number of fusion layers (default) or half of it (every second one).
        ``shapes``: per-layer shapes of the decoder itself (:meth:`layer_shapes`; a pruned decoder, or an
        unpruned one over a pruned tower) instead of those of its source layers; a layer whose shapes
        differ from its source keeps its fresh init (its weights are expected from a saved head).
        """
        text = tower.config
        sources = fusion_sources(tower, num_layers)
        num_layers = len(sources)
        if shapes is None:  # a pruned (shrunk) tower: each decoder layer keeps the shape of the layer it is copied from
            shapes = {
                name: None if getattr(text, name) is None else [getattr(text, name)[i] for i in sources]
                for name in SHAPE_FIELDS
            }
        elif set(shapes) != set(SHAPE_FIELDS):
            raise ValueError(f"decoder shapes need exactly {list(SHAPE_FIELDS)}, got {sorted(shapes)}")
        else:
            shapes = {name: [int(v) for v in values] for name, values in shapes.items()}  # a copy, JSON lists ok
        config = dataclasses.replace(
            text, num_layers=num_layers, fusion_start=0, encoder_width=text.hidden_size, drop_path_rate=0.0, **shapes
        )
        decoder = cls(config)
        state = {f"embeddings.{k}": v for k, v in tower.embeddings.state_dict().items()}
        for target, source in enumerate(sources):
            copied = {
                key: value
                for key, value in tower.encoder.layer[source].state_dict().items()
                # Question states are H wide, vision tokens Dv wide: those keys/values keep the fresh init.
                if text.encoder_width == text.hidden_size
                or not key.startswith(("crossattention.self.key", "crossattention.self.value"))
            }
            own = decoder.bert.encoder.layer[target].state_dict()
            if any(own[key].shape != value.shape for key, value in copied.items()):
                continue  # pruned differently from its source (``shapes``): nothing of it is copied
            state.update({f"encoder.layer.{target}.{key}": value for key, value in copied.items()})
        decoder.bert.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
        decoder.cls.load_state_dict(head.state_dict(), strict=False)  # copies the values
        decoder.cls.tie_weights(decoder.bert.embeddings)
        return decoder

    def layer_shapes(self) -> dict[str, list[int]]:
        """Per-layer self-attention heads, cross-attention heads and FFN widths (``SHAPE_FIELDS``), JSON-able."""
        cfg, n = self.config, self.config.num_layers
        return {
            "layer_heads": [cfg.layer_num_heads(i) for i in range(n)],
            "layer_cross_heads": [cfg.layer_num_heads(i, cross=True) for i in range(n)],
            "layer_intermediate": [cfg.layer_ffn(i) for i in range(n)],
        }

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, encoder_states: Tensor, encoder_atts: Tensor
    ) -> Tensor:
        """ids (B, L) with padding mask (B, L), encoder states (B, Lq, H) with mask (B, Lq) -> logits (B, L, V)."""
        return self.cls(self.hidden_states(input_ids, attention_mask, encoder_states, encoder_atts))

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor, encoder_states: Tensor, encoder_atts: Tensor
    ) -> Tensor:
        """Causal decoder states (B, L, H) of ``input_ids`` cross-attending to the encoder states."""
        return self.bert(
            input_ids,
            causal_mask(attention_mask),
            mode="multimodal",
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=encoder_atts,
        )

    def sequence_logprob(
        self, input_ids: Tensor, attention_mask: Tensor, encoder_states: Tensor, encoder_atts: Tensor
    ) -> Tensor:
        """Sum over t >= 1 of log p(ids[t] | ids[<t]) on real tokens -> (B,). ``ids[:, 0]`` is the start token."""
        # (B, L-1, H): state t predicts token t+1
        hidden = self.hidden_states(input_ids, attention_mask, encoder_states, encoder_atts)[:, :-1]
        real = attention_mask[:, 1:].bool()  # (B, L-1)
        # The LM head (a vocabulary-wide matmul) runs on real targets only, not on padding.
        logits = self.cls(hidden[real]).float()  # (T, V)
        targets = input_ids[:, 1:][real]  # (T,)
        token_logp = logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(dim=1)  # (T,)
        sums = torch.zeros(input_ids.shape[0], dtype=token_logp.dtype, device=token_logp.device)
        return sums.index_add(0, real.nonzero()[:, 0], token_logp)  # (B,)


# ----------------------------------------------------------------------------------------- incremental
def incremental_forward(
    bert: BertEncoderModel,
    input_ids: Tensor,
    position_ids: Tensor,
    history: Sequence[Tensor] | None,
    encoder_states: Tensor | SharedTokens | None,
    encoder_atts: Tensor | None,
    new_mask: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Run all layers of ``bert`` on new tokens that attend to earlier ones through ``history``.

    Args:
        input_ids, position_ids: (B, l) the new tokens and their positions.
        history: per layer, the *input* states (B, Lh, H) of the earlier tokens (None: no history).
        encoder_states / encoder_atts: (B, N, Dv) / (B, N) for the cross-attention layers; encoder_states
            may be :class:`~grainvl.models.layers.SharedTokens` with a cache (keys/values projected once).
        new_mask: (l, l) bool, which new tokens a new token sees (default causal); every new token
            sees the whole history.
    Returns:
        (output states (B, l, H), per-layer input states of the new tokens, each (B, l, H)).
    """
    x = bert.embeddings(input_ids, None, position_ids)  # (B, l, H)
    b, length = input_ids.shape
    past = 0 if history is None else history[0].shape[1]
    if new_mask is None:
        new_mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    keep = torch.cat([torch.ones(length, past, dtype=torch.bool, device=x.device), new_mask], dim=1)  # (l, Lh+l)
    mask = additive_attention_mask(keep[None].expand(b, -1, -1), x.dtype)  # (B, 1, l, Lh+l)
    enc_mask = None if encoder_states is None else additive_attention_mask(encoder_atts, x.dtype)
    inputs: list[Tensor] = []
    for i, layer in enumerate(bert.encoder.layer):
        inputs.append(x)
        keys = x if history is None else torch.cat([history[i], x], dim=1)  # (B, Lh+l, H)
        h = layer.attention(x, keys, mask, None)  # causal self-attention over [history; new]
        if layer.crossattention is not None and encoder_states is not None:
            h = layer.crossattention(h, encoder_states, enc_mask, None)
        x = layer.output(layer.intermediate(h), h)
    return x, inputs


# ----------------------------------------------------------------------------------------- search
# A step function maps the last chosen token of each live sequence (N,) to next-token log-probs (N, V).
# ``reorder(index)`` keeps the rows ``index`` of its internal state (beam bookkeeping).
StepFn = Callable[[Tensor], Tensor]


@dataclass
class SearchConfig:
    """Decoding settings; the defaults are X²-VLM's COCO captioning config (xvlm.md §1.8)."""

    num_beams: int = 3
    max_length: int = 50  # generated tokens, EOS included
    min_length: int = 5  # EOS is forbidden while fewer tokens than this have been generated
    length_penalty: float = 0.0  # GNMT: score / ((5 + len) / 6) ** length_penalty
    no_repeat_ngram: int = 3  # block repeated n-grams of this size in a hypothesis (0: off)

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_length < 1 or self.min_length < 0:
            raise ValueError("num_beams and max_length must be >= 1, min_length >= 0")


def _blocked_tokens(sequence: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in ``sequence`` (official trigram blocking)."""
    if n < 1 or len(sequence) < n:
        return []
    tail = list(sequence[len(sequence) - (n - 1) :]) if n > 1 else []
    return sorted({sequence[i + n - 1] for i in range(len(sequence) - n + 1) if list(sequence[i : i + n - 1]) == tail})


def _apply_constraints(
    logp: Tensor, sequences: Sequence[Sequence[int]], step: int, eos_id: int, cfg: SearchConfig
) -> Tensor:
    """Forbid EOS before ``min_length`` and tokens that repeat an n-gram (scores set to NEG_INF)."""
    if step + 1 <= cfg.min_length:
        logp[:, eos_id] = NEG_INF
    if cfg.no_repeat_ngram > 0:
        for row, sequence in enumerate(sequences):
            blocked = _blocked_tokens(sequence, cfg.no_repeat_ngram)
            if blocked:
                logp[row, blocked] = NEG_INF
    return logp


def _penalised(score: float, length: int, length_penalty: float) -> float:
    return score / math.pow((5 + length) / 6.0, length_penalty) if length_penalty > 0 else score


def greedy_search(
    step: StepFn, reorder: Callable[[Tensor], None], batch_size: int, eos_id: int, cfg: SearchConfig
) -> list[list[int]]:
    """Arg-max decoding with the same constraints as :func:`beam_search`; -> token ids per sample (EOS dropped)."""
    sequences: list[list[int]] = [[] for _ in range(batch_size)]
    live = list(range(batch_size))  # which samples the step function's rows are
    tokens: Tensor | None = None
    for t in range(cfg.max_length):
        logp = step(tokens)  # (N, V)
        logp = _apply_constraints(logp.clone(), [sequences[i] for i in live], t, eos_id, cfg)
        chosen = logp.argmax(dim=-1)  # (N,)
        keep_rows = []
        for row, (sample, token) in enumerate(zip(live, chosen.tolist())):
            if token == eos_id:
                continue
            sequences[sample].append(token)
            keep_rows.append(row)
        if not keep_rows:
            break
        index = torch.tensor(keep_rows, device=chosen.device)
        live = [live[r] for r in keep_rows]
        tokens = chosen[index]
        reorder(index)
    return sequences


def beam_search(
    step: StepFn, reorder: Callable[[Tensor], None], batch_size: int, eos_id: int, cfg: SearchConfig
) -> list[list[int]]:
    """UniLM/X²-VLM beam search (see the module docstring); -> best token ids per sample (EOS dropped).

    ``step(tokens)`` is first called with None (rows = samples), then with (B*K,) tokens whose rows are
    ``sample * K + beam`` after ``reorder`` was given the (B*K,) rows of the previous call to keep.
    """
    k = cfg.num_beams
    scores: Tensor | None = None  # (B, K) running log-likelihood of each slot
    dead: Tensor | None = None  # (B, K) slot emitted EOS (or was never alive)
    sequences: list[list[int]] = []  # per slot b*K + j
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    tokens: Tensor | None = None
    for t in range(cfg.max_length):
        logp = step(tokens).float()  # (B, V) at t = 0, then (B*K, V)
        vocab = logp.shape[-1]
        logp = _apply_constraints(logp.clone(), sequences or [[] for _ in range(batch_size)], t, eos_id, cfg)
        if scores is None:  # the first step expands the single start state of each sample
            top_scores, top_ids = logp.topk(k, dim=-1)  # (B, K)
            back = torch.zeros(batch_size, k, dtype=torch.long, device=logp.device)
        else:
            total = scores[..., None] + logp.view(batch_size, k, vocab) + dead[..., None].float() * NEG_INF  # (B, K, V)
            top_scores, flat = total.view(batch_size, k * vocab).topk(k, dim=-1)  # (B, K)
            back, top_ids = flat // vocab, flat % vocab
        rows = (back + torch.arange(batch_size, device=back.device)[:, None] * (k if scores is not None else 1)).view(
            -1
        )
        parents = sequences or [[] for _ in range(batch_size)]
        sequences = [parents[r] + [w] for r, w in zip(rows.tolist(), top_ids.view(-1).tolist())]
        parent_dead = dead.gather(1, back) if dead is not None else torch.zeros_like(top_ids, dtype=torch.bool)
        ends = top_ids.eq(eos_id) & ~parent_dead  # (B, K) a live hypothesis emits EOS here
        for b, j in ends.nonzero().tolist():
            hypothesis = sequences[b * k + j][:-1]
            finished[b].append((_penalised(float(top_scores[b, j]), t + 1, cfg.length_penalty), hypothesis))
        scores, dead = top_scores, ends | parent_dead
        if bool(dead.all()):
            break
        reorder(rows)
        tokens = top_ids.view(-1)
    else:  # max_length reached: the live hypotheses of the last step compete too
        for b in range(batch_size):
            for j in range(k):
                if not dead[b, j]:
                    length = len(sequences[b * k + j])
                    finished[b].append(
                        (_penalised(float(scores[b, j]), length, cfg.length_penalty), sequences[b * k + j])
                    )
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


__all__ = [
    "SHAPE_FIELDS",
    "SearchConfig",
    "TextDecoder",
    "beam_search",
    "causal_mask",
    "fusion_decoder_shapes",
    "fusion_sources",
    "greedy_search",
    "incremental_forward",
]
