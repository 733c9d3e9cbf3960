"""A small encoder-decoder for dialogue text: a sentence memory + the causal cross-attention decoder.

Both the persona generator (history -> persona sentences) and the response model (persona + history ->
response) are this model. The encoder is :class:`~grainvl.dialogue.memory.SentenceMemory` over the
frozen MiniLM vectors of the source's sentences (cached once per sentence; only the projection, the
kind/position embeddings and its self-attention layers train) and the decoder
:class:`~grainvl.models.decoder.TextDecoder` (causal self-attention -> cross-attention to the memory
states -> FFN, LM head tied to its embeddings), both shaped by a text preset
(``models/architectures/bert-*.json``) over the compact target vocabulary of
:mod:`grainvl.dialogue.tokens`, randomly initialised. Training is token cross-entropy through the one
training loop (:func:`~grainvl.tasks.text_classification.fit_in_memory`); decoding is the repo's beam
search (:func:`~grainvl.models.decoder.beam_search`) on cached per-layer states
(:func:`~grainvl.models.decoder.incremental_forward`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.config import to_dict
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.dialogue.memory import Item, SentenceMemory, Source, memory_batch, sentence_encoder, source_items
from grainvl.dialogue.tokens import BOS, EOS, DialogueVocab, pad_batch
from grainvl.models.decoder import SearchConfig, TextDecoder, beam_search, greedy_search, incremental_forward
from grainvl.models.factory import resolve_model
from grainvl.models.text import TextConfig
from grainvl.tasks.text_classification import batch_order, fit_in_memory
from grainvl.utils.fileio import load_model_safetensors, read_json, save_model_safetensors, write_json

CONFIG_NAME, WEIGHTS_NAME = "dialogue_model.json", "model.safetensors"


@dataclass
class ModelConfig:
    """Shape of a dialogue model; ``architecture`` is a text preset (or architecture JSON) for the layer sizes."""

    architecture: str = "bert-tiny"
    memory_layers: int = 0  # self-attention layers over the memory items (measured: 1 and 2 learn slower)
    decoder_layers: int = 2
    max_items: int = 48  # memory items (sentences); a longer history loses its OLDEST sentences
    max_target_tokens: int = 48
    sentence_encoder: str | None = None  # frozen sentence vectors: a HF BERT folder; None: the packaged MiniLM


@dataclass
class FitConfig:
    """How a dialogue model is trained: AdamW + linear warm-up/decay through the one training loop."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3  # from scratch, a small model: far above BERT fine-tuning rates
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 0


def text_config(cfg: ModelConfig, vocab_size: int) -> TextConfig:
    """The preset's text shape over the compact vocabulary (no cross-attention)."""
    base = resolve_model(cfg.architecture).expect("text").config
    assert isinstance(base, TextConfig)
    return dataclasses.replace(base, vocab_size=vocab_size, pad_token_id=0, fusion_start=None)


def save_folder(
    folder: Path, kind: str, state: dict[str, Tensor], vocab: DialogueVocab | None, extra: dict[str, Any]
) -> None:
    """``folder/dialogue_model.json`` (kind, config, vocabulary) + ``model.safetensors`` (``state``), both atomic.

    ``vocab`` None: a model that writes no text (the approximator)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG_NAME, {"kind": kind, "token_ids": vocab.global_ids if vocab else [], **extra})
    save_model_safetensors(folder / WEIGHTS_NAME, state)


def read_folder(folder: Path, kind: str | None) -> tuple[dict[str, Any], DialogueVocab, dict[str, Tensor]]:
    """The saved config, vocabulary and weights of a model folder of ``kind`` (None: any kind)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (not a dialogue model folder)")
    meta = read_json(path)
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{folder} holds a {meta.get('kind')!r} model, expected {kind!r}")
    vocab = DialogueVocab(load_tokenizer(packaged_minilm_path()), meta["token_ids"])
    return meta, vocab, load_model_safetensors(Path(folder) / WEIGHTS_NAME)


class Seq2Seq(nn.Module):
    """Sources -> memory states (B, L, H); the decoder scores and generates targets (compact token ids)."""

    def __init__(self, vocab: DialogueVocab, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        self.sentences = sentence_encoder(cfg.sentence_encoder)  # frozen, shared; not a submodule (not saved)
        text = text_config(cfg, len(vocab))
        self.memory = SentenceMemory(self.sentences.dim, text, cfg.memory_layers)
        decoder_cfg = dataclasses.replace(
            text, num_layers=cfg.decoder_layers, fusion_start=0, encoder_width=text.hidden_size
        )
        self.decoder = TextDecoder(decoder_cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ inputs
    def items(self, sources: Sequence[Source]) -> list[list[Item]]:
        return [source_items(s, self.cfg.max_items) for s in sources]

    def memory_inputs(self, items: Sequence[Sequence[Item]]) -> dict[str, Tensor]:
        """Padded memory inputs (vectors (B, L, D), kinds, positions, mask (B, L)) of items."""
        return memory_batch(self.sentences, items, self.device)

    def targets(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return pad_batch([self.vocab.target(t, self.cfg.max_target_tokens) for t in texts], self.device)

    # ------------------------------------------------------------------ likelihood
    def encode(self, memory: dict[str, Tensor]) -> Tensor:
        return self.memory(**memory)  # (B, L, H)

    def target_logprob(self, memory: dict[str, Tensor], target_ids: Tensor, target_mask: Tensor) -> Tensor:
        """log p(target | source) summed over the target tokens after ``[CLS]`` (EOS included) -> (B,)."""
        states = self.encode(memory)
        return self.decoder.sequence_logprob(target_ids, target_mask, states, memory["mask"])

    def loss(self, inputs: dict[str, Any]) -> Tensor:
        """Mean token cross-entropy of a batch ``{memory, target_ids, target_mask}``."""
        logp = self.target_logprob(inputs["memory"], inputs["target_ids"], inputs["target_mask"])
        return -logp.sum() / (inputs["target_mask"][:, 1:].sum())

    @torch.no_grad()
    def score(self, sources: Sequence[Source], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> (log p(target | source) (B,), target token counts (B,), EOS included) for perplexity and ranking."""
        target_ids, target_mask = self.targets(targets)
        logp = self.target_logprob(self.memory_inputs(self.items(sources)), target_ids, target_mask)
        return logp, target_mask[:, 1:].sum(1)

    # ------------------------------------------------------------------ generation
    def _stepper(
        self, states: Tensor, mask: Tensor
    ) -> tuple[Callable[[Tensor | None], Tensor], Callable[[Tensor], None]]:
        """``(step, reorder)`` for beam search: per-layer input states of generated tokens are cached."""
        bert, b = self.decoder.bert, states.shape[0]
        cache: dict[str, Any] = {"history": None, "states": states, "mask": mask, "next": 0}

        def step(tokens: Tensor | None) -> Tensor:
            ids = torch.full((b, 1), BOS, device=states.device) if tokens is None else tokens[:, None]  # (N, 1)
            positions = torch.full_like(ids, cache["next"])
            out, inputs = incremental_forward(bert, ids, positions, cache["history"], cache["states"], cache["mask"])
            history = cache["history"]
            cache["history"] = inputs if history is None else [torch.cat([h, x], 1) for h, x in zip(history, inputs)]
            cache["next"] += 1
            return torch.log_softmax(self.decoder.cls(out[:, -1]).float(), dim=-1)  # (N, V)

        def reorder(rows: Tensor) -> None:
            cache["history"] = [h[rows] for h in cache["history"]]
            cache["states"], cache["mask"] = cache["states"][rows], cache["mask"][rows]

        return step, reorder

    @torch.no_grad()
    def generate(self, sources: Sequence[Source], search: SearchConfig, batch_size: int = 64) -> list[str]:
        """Decoded targets for ``sources``: beam search (greedy when ``num_beams`` is 1)."""
        was_training = self.training
        self.eval()
        decode = greedy_search if search.num_beams == 1 else beam_search
        texts: list[str] = []
        for start in range(0, len(sources), batch_size):
            memory = self.memory_inputs(self.items(sources[start : start + batch_size]))
            step, reorder = self._stepper(self.encode(memory), memory["mask"])
            texts += [self.vocab.decode(ids) for ids in decode(step, reorder, len(memory["mask"]), EOS, search)]
        self.train(was_training)
        return texts

    # ------------------------------------------------------------------ training, files
    def fit(self, sources: Sequence[Source], targets: Sequence[str], cfg: FitConfig) -> list[float]:
        """Token cross-entropy on (source, target) examples for ``cfg.steps`` steps; -> the loss of every step."""
        items = self.items(sources)
        self.sentences.add([text for row in items for text, _, _ in row])  # every distinct sentence, once
        goals = [self.vocab.target(t, self.cfg.max_target_tokens) for t in targets]
        order = batch_order(len(items), min(cfg.batch_size, len(items)), cfg.steps, cfg.seed)

        def batches(step: int) -> tuple[dict[str, Any], Tensor]:
            target_ids, target_mask = pad_batch([goals[i] for i in order[step]], self.device)
            memory = self.memory_inputs([items[i] for i in order[step]])
            return {"memory": memory, "target_ids": target_ids, "target_mask": target_mask}, target_ids

        return fit_in_memory(self, batches, lambda m, x, _y: m.loss(x), cfg.steps, cfg.lr, cfg.weight_decay, cfg.warmup)

    def save(self, folder: Path, kind: str, extra: dict[str, Any] | None = None) -> None:
        """Save as a ``kind`` model (``generator``, ``responder``) with ``extra`` fields beside its config."""
        save_folder(Path(folder), kind, self.state_dict(), self.vocab, {"model": to_dict(self.cfg), **(extra or {})})

    @classmethod
    def load(cls, folder: Path, kind: str) -> tuple[Seq2Seq, dict[str, Any]]:
        """The ``kind`` model saved in ``folder`` and the extra fields saved with it."""
        meta, vocab, state = read_folder(folder, kind)
        model = cls(vocab, ModelConfig(**meta["model"]))
        model.load_state_dict(state)
        return model.eval(), meta


__all__ = ["FitConfig", "ModelConfig", "Seq2Seq", "read_folder", "save_folder", "text_config"]
