"""A small encoder-decoder for dialogue text: a BERT text tower + the causal cross-attention decoder.

Both the persona generator (history -> persona sentences) and the response model (persona + history ->
response) are this model. The encoder is :class:`~grainvl.models.text.BertEncoderModel` and the
decoder :class:`~grainvl.models.decoder.TextDecoder` (causal self-attention -> cross-attention to the
encoder states -> FFN, LM head tied to its embeddings), both shaped by a text preset
(``models/architectures/bert-*.json``; ``bert-tiny`` by default) over the compact vocabulary of
:mod:`grainvl.dialogue.tokens`, randomly initialised: the world's text is small enough to learn from
scratch on two CPU cores. Training is token cross-entropy through the one training loop
(:func:`~grainvl.tasks.text_classification.fit_in_memory`); decoding is the repo's beam search
(:func:`~grainvl.models.decoder.beam_search`) on cached per-layer states
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
from grainvl.dialogue.tokens import BOS, EOS, DialogueVocab, pad_batch
from grainvl.models.decoder import SearchConfig, TextDecoder, beam_search, greedy_search, incremental_forward
from grainvl.models.factory import resolve_model
from grainvl.models.text import BertEncoderModel, TextConfig
from grainvl.tasks.text_classification import batch_order, fit_in_memory
from grainvl.utils.fileio import load_model_safetensors, read_json, save_model_safetensors, write_json

CONFIG_NAME, WEIGHTS_NAME = "dialogue_model.json", "model.safetensors"


@dataclass
class ModelConfig:
    """Shape of a dialogue model; ``architecture`` is a text preset (or architecture JSON) for the layer sizes."""

    architecture: str = "bert-tiny"
    decoder_layers: int = 2
    max_source_tokens: int = 192  # longer histories are cut from the left
    max_target_tokens: int = 48


@dataclass
class FitConfig:
    """How a dialogue model is trained: AdamW + linear warm-up/decay through the one training loop."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3  # from scratch, a tiny model: far above BERT fine-tuning rates
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 0


def text_config(cfg: ModelConfig, vocab_size: int) -> TextConfig:
    """The preset's text shape over the compact vocabulary (no cross-attention: the encoder's)."""
    base = resolve_model(cfg.architecture).expect("text").config
    assert isinstance(base, TextConfig)
    return dataclasses.replace(base, vocab_size=vocab_size, pad_token_id=0, fusion_start=None)


def save_folder(folder: Path, kind: str, state: dict[str, Tensor], vocab: DialogueVocab, extra: dict[str, Any]) -> None:
    """``folder/dialogue_model.json`` (kind, config, vocabulary) + ``model.safetensors`` (``state``), both atomic."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG_NAME, {"kind": kind, "token_ids": vocab.global_ids, **extra})
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
    """Source ids (B, Ls) -> encoder states (B, Ls, H); the decoder scores and generates targets."""

    def __init__(self, vocab: DialogueVocab, cfg: ModelConfig) -> None:
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        encoder_cfg = text_config(cfg, len(vocab))
        decoder_cfg = dataclasses.replace(
            encoder_cfg, num_layers=cfg.decoder_layers, fusion_start=0, encoder_width=encoder_cfg.hidden_size
        )
        self.encoder = BertEncoderModel(encoder_cfg)
        self.decoder = TextDecoder(decoder_cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ ids
    def sources(self, prefixes: Sequence[str], histories: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """Padded source ids and mask (B, Ls) of (prefix, history) pairs, histories cut from the left."""
        ids = [self.vocab.source(p, h, self.cfg.max_source_tokens) for p, h in zip(prefixes, histories)]
        return pad_batch(ids, self.device)

    def targets(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return pad_batch([self.vocab.target(t, self.cfg.max_target_tokens) for t in texts], self.device)

    # ------------------------------------------------------------------ likelihood
    def encode(self, source_ids: Tensor, source_mask: Tensor) -> Tensor:
        return self.encoder(source_ids, source_mask)  # (B, Ls, H)

    def target_logprob(
        self, source_ids: Tensor, source_mask: Tensor, target_ids: Tensor, target_mask: Tensor
    ) -> Tensor:
        """log p(target | source) summed over the target tokens after ``[CLS]`` (EOS included) -> (B,)."""
        states = self.encode(source_ids, source_mask)
        return self.decoder.sequence_logprob(target_ids, target_mask, states, source_mask)

    def loss(self, inputs: dict[str, Tensor]) -> Tensor:
        """Mean token cross-entropy of a batch ``{source_ids, source_mask, target_ids, target_mask}``."""
        logp = self.target_logprob(
            inputs["source_ids"], inputs["source_mask"], inputs["target_ids"], inputs["target_mask"]
        )
        return -logp.sum() / (inputs["target_mask"][:, 1:].sum())

    @torch.no_grad()
    def score(
        self, prefixes: Sequence[str], histories: Sequence[Sequence[str]], targets: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        """-> (log p(target | source) (B,), target token counts (B,), EOS included) for perplexity and ranking."""
        source_ids, source_mask = self.sources(prefixes, histories)
        target_ids, target_mask = self.targets(targets)
        logp = self.target_logprob(source_ids, source_mask, target_ids, target_mask)
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
    def generate(
        self, prefixes: Sequence[str], histories: Sequence[Sequence[str]], search: SearchConfig, batch_size: int = 64
    ) -> list[str]:
        """Decoded targets for (prefix, history) sources: beam search (greedy when ``num_beams`` is 1)."""
        was_training = self.training
        self.eval()
        decode = greedy_search if search.num_beams == 1 else beam_search
        texts: list[str] = []
        for start in range(0, len(prefixes), batch_size):
            source_ids, source_mask = self.sources(
                prefixes[start : start + batch_size], histories[start : start + batch_size]
            )
            step, reorder = self._stepper(self.encode(source_ids, source_mask), source_mask)
            texts += [self.vocab.decode(ids) for ids in decode(step, reorder, len(source_ids), EOS, search)]
        self.train(was_training)
        return texts

    # ------------------------------------------------------------------ training, files
    def fit(
        self, prefixes: Sequence[str], histories: Sequence[Sequence[str]], targets: Sequence[str], cfg: FitConfig
    ) -> list[float]:
        """Token cross-entropy on (source, target) examples for ``cfg.steps`` steps; -> the loss of every step."""
        sources = [self.vocab.source(p, h, self.cfg.max_source_tokens) for p, h in zip(prefixes, histories)]
        goals = [self.vocab.target(t, self.cfg.max_target_tokens) for t in targets]
        order = batch_order(len(sources), min(cfg.batch_size, len(sources)), cfg.steps, cfg.seed)

        def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
            source_ids, source_mask = pad_batch([sources[i] for i in order[step]], self.device)
            target_ids, target_mask = pad_batch([goals[i] for i in order[step]], self.device)
            inputs = {"source_ids": source_ids, "source_mask": source_mask}
            return {**inputs, "target_ids": target_ids, "target_mask": target_mask}, target_ids

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
