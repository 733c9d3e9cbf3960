"""EfficientVLM stage 2: task-specific distillation from a fine-tuned teacher (compression.md §A.4).

The student's task module (retrieval, VQA, NLVR2, captioning, grounding) trains on its own task loss
plus knowledge distillation from the teacher's fine-tuned module on the same batch:

    L = task · L_task + kd · L_kd
    L_kd = logits + text·[attn + hid](text layers) + image·[attn + image_hidden·hid](vision)
         + cross·[hid + self-attn + cross-attn](fusion layers) + decoder·[attn + hid + cross-attn](VQA decoder)

with the paper's per-task mix (:data:`TASK_KD_WEIGHTS`; the ``Eff_*.py`` scripts):

==========  ====  ====  ======================================================================
task        task  kd    L_kd
==========  ====  ====  ======================================================================
retrieval   0.5   0.5   KL(itm) + 0.33·(text + img(attn + 0.2·hid) + 0.5·cross)
vqa         0.6   0.4   KL(decoder) + text + img(attn + 0.2·hid) + 0.5·cross + decoder
nlvr2       0.8   0.2   KL(cls) + text + 0.33·(img(attn + 0.1·hid) + 0.5·cross)
captioning  0.7   0.3   KL(lm) + img(attn + 0.1·hid) + decoder(attn + hid + cross) [the BERT stack]
grounding   0.5   0.5   MSE(box) + 0.33·(text + img(attn + 0.2·hid) + 0.5·cross)   (ours: not in the paper)
==========  ====  ====  ======================================================================

How the two forwards are paired, whatever the task code does inside: hooks record every output of every
text/fusion layer, vision block (or the CNN tower's output tokens), decoder layer and task head, and the
attention maps of every attention module (:func:`~grainvl.tasks.distill.recording`), call by call. Both
modules run the same task code on the same batch, so the ``k``-th call of student layer ``j`` pairs with
the ``k``-th call of the teacher layer it was copied from (the layer map). The ITM hard negatives the
student draws are replayed to the teacher (:func:`~grainvl.losses.itm.negatives_tape`).

A student at a lower input resolution than the teacher (a compressed vision tower) receives the batch's
images downsampled (bicubic, antialiased); its vision tokens are compared with the teacher's pooled to the
student's grid, and cross-attention maps (whose key length then differs) are left out of the KD.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.losses.itm import negatives_tape
from grainvl.losses.mlm import IGNORE_INDEX
from grainvl.tasks.base import TaskModule
from grainvl.tasks.captioning import CaptionModule
from grainvl.tasks.distill import (
    LayerMap,
    attention_kd,
    attention_modules,
    hidden_kd,
    pool_tokens,
    recording,
    resize_images,
    soft_cross_entropy,
    stack_sizes,
    uniform_layers,
)
from grainvl.tasks.grounding import GroundingModule


@dataclass(frozen=True)
class TaskKDWeights:
    """One task's loss mix (module docstring): ``task·L_task + kd·L_kd`` and the weights inside ``L_kd``."""

    task: float
    kd: float
    text: float  # [attn + hid] of the text-only layers
    image: float  # [attn + image_hidden·hid] of the vision tower
    image_hidden: float
    cross: float  # [hid + self-attn + cross-attn] of the fusion layers
    decoder: float = 0.0  # [attn + hid + cross-attn] of a separate answer decoder (VQA)
    logits: float = 1.0  # KL of the head's logits (MSE of the box for grounding)
    temperature: float = 1.0


# Eff_Retrieval.py, Eff_VQA.py, Eff_NLVR.py, Eff_Captioning.py (compression.md §A.4); grounding is ours.
TASK_KD_WEIGHTS: dict[str, TaskKDWeights] = {
    "retrieval": TaskKDWeights(task=0.5, kd=0.5, text=0.33, image=0.33, image_hidden=0.2, cross=0.33 * 0.5),
    "vqa": TaskKDWeights(task=0.6, kd=0.4, text=1.0, image=1.0, image_hidden=0.2, cross=0.5, decoder=1.0),
    "nlvr2": TaskKDWeights(task=0.8, kd=0.2, text=1.0, image=0.33, image_hidden=0.1, cross=0.33 * 0.5),
    # X²-VLM captions with its BERT stack itself (UniLM-style): the paper's "decoder" KD is that stack's.
    "captioning": TaskKDWeights(task=0.7, kd=0.3, text=1.0, image=1.0, image_hidden=0.1, cross=1.0),
    "grounding": TaskKDWeights(task=0.5, kd=0.5, text=0.33, image=0.33, image_hidden=0.2, cross=0.33 * 0.5),
}


# ----------------------------------------------------------------------------------------- what a forward leaves
@dataclass
class _Tape:
    """Per-call records of one task-module forward, keyed by layer index within each stack."""

    vision_out: list[Tensor] = field(default_factory=list)  # (B, 1+N, Dv) per tower call
    vision_hidden: dict[int, list[Tensor]] = field(default_factory=dict)  # ViT block outputs
    text_hidden: dict[int, list[Tensor]] = field(default_factory=dict)  # BERT layer outputs (absolute index)
    decoder_hidden: dict[int, list[Tensor]] = field(default_factory=dict)
    head: list[Tensor] = field(default_factory=list)  # the task head's outputs per call
    # attention sinks: one list per module, filled by the modules themselves
    vision_attn: list[list[Tensor]] = field(default_factory=list)
    self_attn: list[list[Tensor]] = field(default_factory=list)
    cross_attn: list[list[Tensor | None]] = field(default_factory=list)
    decoder_self: list[list[Tensor]] = field(default_factory=list)
    decoder_cross: list[list[Tensor]] = field(default_factory=list)


def _append_to(store: list[Tensor] | dict[int, list[Tensor]], key: int | None = None) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        value = output[0] if isinstance(output, tuple) else output
        if key is None:
            store.append(value)  # type: ignore[union-attr]
        else:
            store.setdefault(key, []).append(value)  # type: ignore[union-attr]

    return hook


def head_module(module: TaskModule) -> nn.Module:
    """The module whose output is the task's prediction: what the logit KD compares."""
    for name in ("cls_head", "text_decoder"):  # NLVR2 / VQA classifier; VQA decoder (its LM head below)
        head = getattr(module, name, None)
        if head is not None:
            return head.cls if name == "text_decoder" else head
    if isinstance(module, GroundingModule):
        return module.model.bbox_head
    if isinstance(module, CaptionModule):
        return module.model.mlm
    return module.model.itm_head  # retrieval: the ITM head on positives and the drawn negatives


@contextmanager
def _recorded(module: TaskModule) -> Iterator[_Tape]:
    """Inside the block every layer, tower, head and attention module of ``module`` records into one tape."""
    tape = _Tape()
    model = module.model
    handles = [model.vision_encoder.register_forward_hook(_append_to(tape.vision_out))]
    for i, block in enumerate(getattr(model.vision_encoder, "blocks", [])):
        handles.append(block.register_forward_hook(_append_to(tape.vision_hidden, i)))
    for i, layer in enumerate(model.bert.encoder.layer):
        handles.append(layer.register_forward_hook(_append_to(tape.text_hidden, i)))
    decoder = getattr(module, "text_decoder", None)
    decoder_layers = list(decoder.bert.encoder.layer) if decoder is not None else []
    for i, layer in enumerate(decoder_layers):
        handles.append(layer.register_forward_hook(_append_to(tape.decoder_hidden, i)))
    handles.append(head_module(module).register_forward_hook(_append_to(tape.head)))
    vision, self_attn, cross = attention_modules(model)
    with ExitStack() as stack:
        tape.vision_attn = stack.enter_context(recording(vision))
        tape.self_attn = stack.enter_context(recording(self_attn))
        tape.cross_attn = stack.enter_context(recording(cross))
        tape.decoder_self = stack.enter_context(recording([lay.attention.self for lay in decoder_layers]))
        tape.decoder_cross = stack.enter_context(
            recording([lay.crossattention.self for lay in decoder_layers if lay.crossattention is not None])
        )
        try:
            yield tape
        finally:
            for handle in handles:
                handle.remove()


# ----------------------------------------------------------------------------------------- the task
class TaskDistill(nn.Module):
    """Student task module trained on its task loss + KD from a frozen, fine-tuned teacher task module.

    ``forward(batch) -> (losses, metrics)``: the student's own losses scaled by ``weights.task`` and the
    KD terms (``kd_*_loss``) scaled by ``weights.kd``. The batch is built at the teacher's resolution.
    """

    def __init__(
        self,
        student: TaskModule,
        teacher: TaskModule,
        task: str,
        layer_map: LayerMap | None = None,
        weights: TaskKDWeights | None = None,
    ) -> None:
        super().__init__()
        if task not in TASK_KD_WEIGHTS and weights is None:
            raise ValueError(f"no distillation weights for task {task!r}; known: {sorted(TASK_KD_WEIGHTS)}")
        self.student = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task = task
        self.weights = weights or TASK_KD_WEIGHTS[task]
        s_cfg, t_cfg = student.model.config, teacher.model.config
        self.student_resolution, self.teacher_resolution = s_cfg.vision.resolution, t_cfg.vision.resolution
        _, t_text, t_fusion = stack_sizes(t_cfg)
        s_vision, s_text, s_fusion = stack_sizes(s_cfg)
        if layer_map is None:  # identity when the depths agree, else the uniform rule of stage 1
            has_blocks = hasattr(student.model.vision_encoder, "blocks")
            layer_map = LayerMap(
                uniform_layers(t_cfg.vision.depth, s_vision) if has_blocks else [],
                uniform_layers(t_text, s_text),
                uniform_layers(t_fusion, s_fusion) if s_fusion else [],
            )
        self.layer_map = layer_map
        self.text_map = layer_map.text + [t_text + i for i in layer_map.fusion]  # student layer -> teacher layer
        self.fusion_start = s_text
        s_dec, t_dec = getattr(student, "text_decoder", None), getattr(teacher, "text_decoder", None)
        self.decoder_map = (
            uniform_layers(len(t_dec.bert.encoder.layer), len(s_dec.bert.encoder.layer))
            if s_dec is not None and t_dec is not None
            else []
        )

    @property
    def model(self) -> nn.Module:
        """The student's X²-VLM (what the pruner masks and the optimiser groups read)."""
        return self.student.model

    def train(self, mode: bool = True) -> TaskDistill:
        super().train(mode)
        self.teacher.eval()  # frozen teacher: no dropout whatever the loop asks
        return self

    def clamp_temperature_(self) -> None:
        self.student.model.clamp_temperature_()

    # -------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        w = self.weights
        drawn: list[tuple[Tensor, Tensor]] = []
        student_batch = resize_images(batch, self.teacher_resolution, self.student_resolution)
        with _recorded(self.student) as s_tape, negatives_tape("record", drawn):
            losses, metrics = self.student(student_batch)
        with torch.no_grad(), _recorded(self.teacher) as t_tape, negatives_tape("replay", drawn):
            self.teacher(batch)
        out = {name: w.task * value for name, value in losses.items()}
        kd = {
            "logits": w.logits * self._head_kd(s_tape.head, t_tape.head, batch),
            "image": w.image * self._vision_kd(s_tape, t_tape),
            "text": w.text * self._text_kd(s_tape, t_tape, fusion=False),
            "cross": w.cross * self._text_kd(s_tape, t_tape, fusion=True),
        }
        if self.decoder_map and w.decoder:
            kd["decoder"] = w.decoder * self._decoder_kd(s_tape, t_tape)
        for name, value in kd.items():
            out[f"kd_{name}_loss"] = w.kd * value
        return out, metrics

    # -------------------------------------------------------------- KD terms
    def _zero(self) -> Tensor:
        return next(self.student.parameters()).new_zeros(())

    def _head_kd(self, student: list[Tensor], teacher: list[Tensor], batch: dict[str, Any]) -> Tensor:
        """KL of the head's logits over the rows that carry a prediction (MSE of the raw box for grounding)."""
        if len(student) != len(teacher):
            raise RuntimeError(f"student and teacher heads ran {len(student)} and {len(teacher)} times")
        total = self._zero()
        for s, t in zip(student, teacher, strict=True):
            if self.task == "grounding":
                total = total + F.mse_loss(s, t)
                continue
            rows = self._prediction_rows(s, batch)  # (N, C) flattened rows that carry a prediction
            total = total + soft_cross_entropy(s.flatten(0, -2)[rows], t.flatten(0, -2)[rows], self.weights.temperature)
        return total

    def _prediction_rows(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        """Which rows of ``logits.flatten(0, -2)`` are real predictions (padding and unmasked positions are not)."""
        if self.task == "captioning" and "masked_ids" in batch and logits.dim() == 3:
            return (batch["masked_ids"] != IGNORE_INDEX).flatten()  # (B·M,)
        if (
            self.task == "vqa"
            and "answer_atts" in batch
            and logits.dim() == 3
            and logits.shape[:2] == batch["answer_atts"].shape
        ):
            return batch["answer_atts"].bool().flatten()  # (A·La,)
        return torch.ones(logits.flatten(0, -2).shape[0], dtype=torch.bool, device=logits.device)

    def _vision_kd(self, s: _Tape, t: _Tape) -> Tensor:
        """``attn + image_hidden·hid`` over the vision blocks through the layer map (a CNN: its output tokens)."""
        w = self.weights
        if not self.layer_map.vision:  # a CNN tower: MSE of the output tokens, pooled to the student's grid
            pairs = [(a, pool_tokens(b, a.shape[1])) for a, b in zip(s.vision_out, t.vision_out, strict=True)]
            return w.image_hidden * hidden_kd(*zip(*pairs)) if pairs else self._zero()
        hid, attn = [], []
        for j, tj in enumerate(self.layer_map.vision):
            for a, b in zip(s.vision_hidden.get(j, []), t.vision_hidden.get(tj, []), strict=True):
                hid.append((a, pool_tokens(b, a.shape[1])))
            maps = list(zip(s.vision_attn[j], t.vision_attn[tj], strict=True))
            attn += [(a, b) for a, b in maps if a.shape[-1] == b.shape[-1]]  # other resolution: grids differ
        total = attention_kd(*zip(*attn)) if attn else self._zero()
        return total + w.image_hidden * (hidden_kd(*zip(*hid)) if hid else self._zero())

    def _text_kd(self, s: _Tape, t: _Tape, fusion: bool) -> Tensor:
        """Text layers: ``attn + hid``; fusion layers: ``hid + self-attn + cross-attn`` (paired call by call)."""
        hid, attn = [], []
        for j, tj in enumerate(self.text_map):
            if (j >= self.fusion_start) != fusion:
                continue
            hid += list(zip(s.text_hidden.get(j, []), t.text_hidden.get(tj, []), strict=True))
            attn += list(zip(s.self_attn[j], t.self_attn[tj], strict=True))
            if fusion:
                cross = zip(s.cross_attn[j], t.cross_attn[tj], strict=True)
                attn += [(a, b) for a, b in cross if a.shape[-1] == b.shape[-1]]
        if not hid:
            return self._zero()
        return (attention_kd(*zip(*attn)) if attn else self._zero()) + hidden_kd(*zip(*hid))

    def _decoder_kd(self, s: _Tape, t: _Tape) -> Tensor:
        hid, attn = [], []
        for j, tj in enumerate(self.decoder_map):
            hid += list(zip(s.decoder_hidden.get(j, []), t.decoder_hidden.get(tj, []), strict=True))
            attn += list(zip(s.decoder_self[j], t.decoder_self[tj], strict=True))
            attn += list(zip(s.decoder_cross[j], t.decoder_cross[tj], strict=True))
        if not hid:
            return self._zero()
        return (attention_kd(*zip(*attn)) if attn else self._zero()) + hidden_kd(*zip(*hid))


def with_weights(task: str, **changes: float) -> TaskKDWeights:
    """The paper's weights of ``task`` with some fields changed (e.g. ``kd=0`` for a no-KD ablation)."""
    return replace(TASK_KD_WEIGHTS[task], **changes)


@torch.no_grad()
def copy_head_from_teacher(student: TaskModule, teacher: TaskModule) -> list[str]:
    """Copy every task-head tensor (outside ``model.``) whose name and shape match; VQA decoder layers through
    the uniform layer map. Returns the names copied. Why: in short CPU runs a fresh head (NLVR2's classifier)
    learns little; the fine-tuned teacher's is a far better start (the paper trains 10-20 epochs instead)."""
    t_state = teacher.head_state_dict()
    s_state = student.head_state_dict()
    t_dec, s_dec = getattr(teacher, "text_decoder", None), getattr(student, "text_decoder", None)
    layer_of: dict[int, int] = {}
    if t_dec is not None and s_dec is not None:
        layer_of = dict(enumerate(uniform_layers(len(t_dec.bert.encoder.layer), len(s_dec.bert.encoder.layer))))
    copied, prefix = [], "text_decoder.bert.encoder.layer."
    update = {}
    for name, value in s_state.items():
        source = name
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            source = f"{prefix}{layer_of.get(int(index), int(index))}.{rest}"
        if source in t_state and t_state[source].shape == value.shape:
            update[name] = t_state[source].clone()
            copied.append(name)
    student.load_state_dict(update, strict=False)
    return copied
