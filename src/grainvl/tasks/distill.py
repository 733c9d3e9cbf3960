"""EfficientVLM stage 1: a student built from the teacher's layers and task-agnostic distillation.

* :func:`default_layer_map` / :func:`student_config` / :func:`init_student_from_teacher`: the student
  keeps a subset of each stack (vision blocks, text-only layers, fusion layers) with unchanged
  widths, every kept layer copied from the teacher with its cross-attention (the unreleased
  ``half_teacher.pth`` of compression.md §A.2). The default keeps every other layer counted from
  layer 1 (``2i+1 -> i``) in each stack; the rule is :func:`uniform_layers` ``(i+1)·T/S − 1``.
* :class:`DistillTask`: a Task with a frozen teacher (eval mode, no gradient) computing
  ``0.6·(ITC + ITM + MLM [+ bbox + GIoU]) + 0.4·L_kd`` (``GeneralDistill.py``, §A.3) with
  ``L_kd = KL(itm) + KL(mlm) + [attn+hid](text) + [attn + 0.1·hid_noLast](image)
  + [attn+hid](itm_pos) + [attn+hid](itm_neg) + [attn+hid](mlm)``.

Layer matching follows the layer map: student layer ``j`` is compared with the teacher layer it was
copied from, and the hidden state after it with the teacher's state after that layer (embeddings
with embeddings). For the default map this is exactly the official ``get_cor_teacher`` rule
(hidden ``i·(T−1)/(S−1)``, attention ``(i+1)·T/S − 1``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.compress.prune import ModalPruner
from grainvl.losses.bbox import bbox_loss
from grainvl.losses.itc import itc_loss
from grainvl.losses.itm import itm_loss, sample_hard_negatives
from grainvl.losses.mlm import gather_labelled, mlm_loss
from grainvl.models.xvlm import XVLM, XVLMConfig

STUDENT_PRESETS = ("half", "efficientvlm")


# ----------------------------------------------------------------------------------------- layer maps
def uniform_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a ``student_layers``-deep stack keeps: ``(i+1)·T/S − 1`` ("last of each block").

    12 -> 6 gives 1, 3, ..., 11 (EfficientVLM's ``2i+1 -> i``); 12 -> 3 gives 3, 7, 11; 6 -> 3 gives 1, 3, 5.
    """
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"a student stack needs 1..{teacher_layers} layers, got {student_layers}")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


@dataclass
class LayerMap:
    """Teacher layer of each student layer, per stack: ``vision`` blocks, ``text`` layers (indices in
    ``[0, fusion_start)``) and ``fusion`` layers (indices counted from the teacher's ``fusion_start``)."""

    vision: list[int]
    text: list[int]
    fusion: list[int]

    def to_dict(self) -> dict[str, list[int]]:
        return dataclasses.asdict(self)


def stack_sizes(config: XVLMConfig) -> tuple[int, int, int]:
    text = config.text
    fusion_start = text.fusion_start if text.fusion_start is not None else text.num_layers
    return config.vision.depth, fusion_start, text.num_layers - fusion_start


def default_layer_map(teacher: XVLMConfig, preset: str = "half", sizes: Sequence[int] | None = None) -> LayerMap:
    """The student's layers: ``sizes`` = (vision, text, fusion) layer counts, or a preset.

    ``"half"``: every other layer of each stack (``2i+1 -> i``; x2vlm-base: 6 vision / 6 text / 3
    fusion). ``"efficientvlm"``: EfficientVLM's X-VLM-small shape, 6 vision / 3 text / 3 fusion layers
    (from x2vlm-base: vision 1,3,..,11; text 3,7,11; fusion 1,3,5), capped at the teacher's depths.
    """
    vision, text, fusion = stack_sizes(teacher)
    cnn = teacher.vision.kind == "efficientnet_lite0"  # no blocks to select: the CNN tower is kept whole
    if teacher.text.layout != "single":
        raise ValueError("student initialisation supports the X²-VLM 'single' text layout only")
    if sizes is None:
        if preset == "half":
            sizes = (max(1, vision // 2), max(1, text // 2), max(1, fusion // 2) if fusion else 0)
        elif preset == "efficientvlm":
            sizes = (min(6, vision), min(3, text), min(3, fusion))
        else:
            raise ValueError(f"unknown student preset {preset!r}; expected one of {STUDENT_PRESETS}")
    v, t, f = sizes
    if f and not fusion:
        raise ValueError("the teacher has no fusion layers")
    return LayerMap(
        [] if cnn else uniform_layers(vision, v), uniform_layers(text, t), uniform_layers(fusion, f) if f else []
    )


def _pick(values: list[int] | None, indices: list[int]) -> list[int] | None:
    return None if values is None else [values[i] for i in indices]


def student_config(teacher: XVLMConfig, layer_map: LayerMap, resolution: int | None = None) -> XVLMConfig:
    """The teacher's config with the student's depths (widths, heads and heads' shapes kept).

    ``resolution``: a smaller input for the student's vision tower (EfficientNet towers only: a ViT's
    relative position tables are tied to its grid). Its position embedding is resized when the
    teacher's weights load (``EfficientNetLiteTower``'s load hook).
    """
    vision, text_layers, fusion_layers = stack_sizes(teacher)
    for name, chosen, total in (("vision", layer_map.vision, vision), ("text", layer_map.text, text_layers),
                                ("fusion", layer_map.fusion, fusion_layers)):  # fmt: skip
        if any(not 0 <= i < total for i in chosen) or len(set(chosen)) != len(chosen):
            raise ValueError(f"layer map {name} {chosen} must be distinct layers in [0, {total})")
    cnn = teacher.vision.kind == "efficientnet_lite0"
    if (not layer_map.vision and not cnn) or not layer_map.text:
        raise ValueError("the student needs at least one vision block and one text layer")
    v = teacher.vision
    vcfg = (
        v
        if cnn
        else dataclasses.replace(
            v,
            depth=len(layer_map.vision),
            layer_heads=_pick(v.layer_heads, layer_map.vision),
            layer_mlp=_pick(v.layer_mlp, layer_map.vision),
            pretrained=False,
        )
    )
    t = teacher.text
    absolute = layer_map.text + [text_layers + i for i in layer_map.fusion]
    tcfg = dataclasses.replace(
        t,
        num_layers=len(absolute),
        fusion_start=len(layer_map.text),
        layer_heads=_pick(t.layer_heads, absolute),
        layer_cross_heads=_pick(t.layer_cross_heads, absolute),
        layer_intermediate=_pick(t.layer_intermediate, absolute),
    )
    if resolution is not None and resolution != v.resolution:
        if not cnn:
            raise ValueError("a student resolution needs an EfficientNet vision tower (a ViT's tables fit one grid)")
        if not 32 <= resolution <= v.resolution:
            raise ValueError(f"student resolution must be in [32, {v.resolution}] (the teacher's), got {resolution}")
        vcfg = dataclasses.replace(vcfg, resolution=resolution)
    return dataclasses.replace(teacher, name=f"{teacher.name}-student", vision=vcfg, text=tcfg, text_init=None)


def _remap_key(key: str, vision: dict[int, int] | None, text: dict[int, int]) -> str | None:
    """Teacher state-dict key -> student key (None: a layer the student drops; ``vision`` None: keep all)."""
    for prefix, mapping in (("vision_encoder.blocks.", vision), ("text_encoder.bert.encoder.layer.", text)):
        if mapping is not None and key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            new = mapping.get(int(index))
            return None if new is None else f"{prefix}{new}.{rest}"
    return key


@torch.no_grad()
def init_student_from_teacher(
    teacher: XVLM, layer_map: LayerMap | None = None, resolution: int | None = None
) -> tuple[XVLM, LayerMap]:
    """A student whose every weight is copied from ``teacher`` (its kept layers, embeddings and heads);
    ``resolution``: a smaller input for its (EfficientNet) vision tower, see :func:`student_config`."""
    layer_map = layer_map or default_layer_map(teacher.config)
    config = student_config(teacher.config, layer_map, resolution)
    _, text_layers, _ = stack_sizes(teacher.config)
    vision = {t: s for s, t in enumerate(layer_map.vision)}
    if teacher.config.vision.kind == "efficientnet_lite0":
        vision = None  # the CNN tower is copied whole
    absolute = layer_map.text + [text_layers + i for i in layer_map.fusion]
    text = {t: s for s, t in enumerate(absolute)}
    state = {}
    for key, value in teacher.state_dict().items():
        new = _remap_key(key, vision, text)
        if new is not None:
            state[new] = value.detach().clone()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        student = XVLM(config)
    student.load_state_dict(state, strict=True)
    return student.to(next(teacher.parameters()).device), layer_map


# ------------------------------------------------------------------------- resolution (a student with smaller input)
def resize_images(batch: Any, source: int, target: int) -> Any:
    """``batch`` with every image tensor ``(..., 3, source, source)`` resized to ``target`` (bicubic, antialiased)."""
    if source == target:
        return batch
    if isinstance(batch, dict):
        return {k: resize_images(v, source, target) for k, v in batch.items()}
    image = isinstance(batch, Tensor) and batch.is_floating_point() and batch.dim() >= 4
    if image and tuple(batch.shape[-3:]) == (3, source, source):
        flat = batch.reshape(-1, 3, source, source)
        out = F.interpolate(flat, size=(target, target), mode="bicubic", antialias=True, align_corners=False)
        return out.reshape(*batch.shape[:-2], target, target)
    return batch


def pool_tokens(teacher: Tensor, student_tokens: int) -> Tensor:
    """Teacher vision tokens ``(B, 1+Nt, D)`` -> ``(B, 1+Ns, D)``: CLS kept, grid area-pooled to the student's."""
    if teacher.shape[1] == student_tokens:
        return teacher
    side_t, side_s = math.isqrt(teacher.shape[1] - 1), math.isqrt(student_tokens - 1)
    if side_t * side_t != teacher.shape[1] - 1 or side_s * side_s != student_tokens - 1:
        raise ValueError(f"cannot pool {teacher.shape[1]} vision tokens to {student_tokens}: not square grids")
    grid = teacher[:, 1:].transpose(1, 2).reshape(teacher.shape[0], -1, side_t, side_t)  # (B, D, St, St)
    pooled = F.adaptive_avg_pool2d(grid, side_s).flatten(2).transpose(1, 2)  # (B, Ns, D)
    return torch.cat([teacher[:, :1], pooled], dim=1)


# ----------------------------------------------------------------------------------------- KD losses
def attention_kd(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """``Σ_layers MSE(A_s, A_t) · N_k`` over paired post-softmax maps ``(B, H, Nq, Nk)`` (official scaling).

    Maps of a student with fewer heads (already shrunk) are compared head-averaged.
    """
    total = student[0].new_zeros(()) if student else torch.zeros(())
    for a_s, a_t in zip(student, teacher, strict=True):
        if a_s.shape[1] != a_t.shape[1]:
            a_s, a_t = a_s.mean(dim=1, keepdim=True), a_t.mean(dim=1, keepdim=True)
        total = total + F.mse_loss(a_s, a_t) * a_t.shape[-1]
    return total


def hidden_kd(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """``Σ_layers MSE(H_s, H_t)`` over paired hidden states ``(B, N, D)`` (equal widths, no projection)."""
    total = student[0].new_zeros(()) if student else torch.zeros(())
    for h_s, h_t in zip(student, teacher, strict=True):
        total = total + F.mse_loss(h_s, h_t)
    return total


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(z_t/T) ‖ softmax(z_s/T))``, batch-mean over the rows of ``(N, C)``; no T² factor (official)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


# ----------------------------------------------------------------------------------------- capture
def attention_modules(model: XVLM) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module | None]]:
    """(vision attention per block, text self-attention per layer, cross-attention per layer or None)."""
    blocks = getattr(model.vision_encoder, "blocks", [])
    layers = model.bert.encoder.layer
    cross = [lay.crossattention.self if lay.crossattention is not None else None for lay in layers]
    return [b.attn for b in blocks], [lay.attention.self for lay in layers], cross


@contextmanager
def recording(modules: Sequence[nn.Module | None]) -> Iterator[list[list[Tensor]]]:
    """Inside the block every module in ``modules`` appends its attention probabilities to its own list."""
    sinks: list[list[Tensor]] = [[] for _ in modules]
    for module, sink in zip(modules, sinks):
        if module is not None:
            module.attention_sink = sink
    try:
        yield sinks
    finally:
        for module in modules:
            if module is not None:
                module.attention_sink = None


@dataclass
class Stream:
    """One pass of one model: hidden states ``[input, after each layer run]`` and the attention maps of the
    layers run (one per layer, in order), plus which absolute layers ran."""

    hidden: list[Tensor]
    attentions: list[Tensor]
    layers: list[int]


def _vision_stream(model: XVLM, image: Tensor) -> tuple[Tensor, Stream]:
    """Vision tokens (B, 1+N, Dv) and the tower's stream."""
    vision, _, _ = attention_modules(model)
    if not hasattr(model.vision_encoder, "forward_intermediates"):  # a CNN tower: KD on its output tokens only
        tokens = model.vision_encoder(image)
        return tokens, Stream([tokens], [], [])
    with recording(vision) as sinks:
        tokens, hidden = model.vision_encoder.forward_intermediates(image)
    return tokens, Stream(hidden, [s[0] for s in sinks], list(range(len(vision))))


def _text_stream(model: XVLM, mode: str, **kwargs: Any) -> Stream:
    _, self_attn, _ = attention_modules(model)
    layers = list(model.bert.layer_range(mode))  # type: ignore[arg-type]
    with recording(self_attn) as sinks:
        hidden = model.bert.forward_intermediates(mode=mode, **kwargs)
    return Stream(hidden, [sinks[i][0] for i in layers], layers)


# ----------------------------------------------------------------------------------------- the task
@dataclass
class DistillWeights:
    """Loss mix of ``GeneralDistill.py``: ``task·(ITC+ITM+MLM) + kd·L_kd``; the 0.1 image-hidden factor."""

    task: float = 0.6
    kd: float = 0.4
    image_hidden: float = 0.1
    image_skip_last: bool = True  # the official image-hidden KD leaves out the student's last state
    temperature: float = 1.0
    bbox: bool = True  # region batches add the box losses to the task part (official GD)
    hidden: bool = True
    attention: bool = True


@dataclass
class _Pairs:
    hidden: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    attn: list[tuple[Tensor, Tensor]] = field(default_factory=list)


class DistillTask(nn.Module):
    """Task-agnostic distillation of ``teacher`` into ``student`` (module docstring); the teacher is frozen.

    ``forward(batch)`` takes the pre-training batches (``{"image": ..., "region": ...}``, as
    :class:`grainvl.tasks.pretrain.PretrainTask`) and returns ``(losses, metrics)``. ``layer_map`` says
    which teacher layer each student layer mirrors (identity when student and teacher have the same depths).
    """

    def __init__(
        self, student: XVLM, teacher: XVLM, layer_map: LayerMap | None = None, weights: DistillWeights | None = None
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if layer_map is None:
            _, t_text, t_fusion = stack_sizes(teacher.config)
            s_vision, s_text, s_fusion = stack_sizes(student.config)
            layer_map = LayerMap(
                uniform_layers(teacher.config.vision.depth, s_vision)
                if hasattr(student.vision_encoder, "blocks")
                else [],
                uniform_layers(t_text, s_text),
                uniform_layers(t_fusion, s_fusion) if s_fusion else [],
            )
        self.layer_map = layer_map
        _, t_text, _ = stack_sizes(teacher.config)
        self._text_abs = layer_map.text + [t_text + i for i in layer_map.fusion]  # student layer -> teacher layer
        self.weights = weights or DistillWeights()

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self.teacher.eval()  # frozen teacher: no dropout, no drop-path, whatever the loop asks
        return self

    def clamp_temperature_(self) -> None:
        self.model.clamp_temperature_()

    # -------------------------------------------------------------- pairing
    def _pair(self, s: Stream, t: Stream, mapping: list[int], out: _Pairs, skip_last: bool = False) -> None:
        """Pair student and teacher states/maps through ``mapping`` (student absolute layer -> teacher layer)."""
        position = {layer: k for k, layer in enumerate(t.layers)}
        hidden = [(s.hidden[0], t.hidden[0])]
        for k, layer in enumerate(s.layers):
            tk = position[mapping[layer]]
            hidden.append((s.hidden[k + 1], t.hidden[tk + 1]))
            out.attn.append((s.attentions[k], t.attentions[tk]))
        out.hidden += hidden[:-1] if skip_last else hidden

    def _kd(self, pairs: _Pairs, hidden_weight: float = 1.0) -> Tensor:
        w = self.weights
        zero = pairs.hidden[0][0].new_zeros(())
        attn = attention_kd(*zip(*pairs.attn)) if w.attention and pairs.attn else zero
        hid = hidden_kd(*zip(*pairs.hidden)) if w.hidden and pairs.hidden else zero
        return attn + hidden_weight * hid

    # -------------------------------------------------------------- forward
    def forward(self, batch: dict[str, dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, float]]:
        if "image" not in batch:
            raise ValueError(f"distillation needs an 'image' batch, got {sorted(batch)}")
        b = batch["image"]
        w = self.weights
        losses: dict[str, Tensor] = {}
        # A student with a smaller input (a compressed vision tower) sees the batch's images downsampled.
        s_res, t_res = self.model.config.vision.resolution, self.teacher.config.vision.resolution
        s_vis, s_img = _vision_stream(self.model, resize_images(b["image"], t_res, s_res))  # (B, 1+N, Dv)
        s_txt = _text_stream(self.model, "text", input_ids=b["text_ids"], attention_mask=b["text_atts"])
        with torch.no_grad():
            t_vis, t_img = _vision_stream(self.teacher, b["image"])
            t_txt = _text_stream(self.teacher, "text", input_ids=b["text_ids"], attention_mask=b["text_atts"])
        if not s_img.layers and s_vis.shape[1] != t_vis.shape[1]:  # a CNN at another resolution: pooled targets
            t_img = Stream([pool_tokens(h, s_vis.shape[1]) for h in t_img.hidden], t_img.attentions, t_img.layers)
        m = self.model
        text = s_txt.hidden[-1]  # (B, L, H)
        vis_feat, text_feat = m.image_feat(s_vis), m.text_feat(text)
        itc = itc_loss(vis_feat, text_feat, m.temp, idx=b.get("image_ids"))

        # ITM on positives + hard negatives mined from the student's similarities; the teacher sees the same pairs.
        with torch.no_grad():
            sim = vis_feat @ text_feat.t() / m.temp  # (B, B)
            neg_image, neg_text = sample_hard_negatives(sim, sim.t(), b.get("image_ids"))
        atts = b["text_atts"]
        pair_text = torch.cat([atts, atts, atts[neg_text]])  # (3B, L)
        order_text = torch.cat([torch.arange(len(atts), device=atts.device)] * 2 + [neg_text])
        order_vis = torch.cat(
            [torch.arange(len(atts), device=atts.device), neg_image, torch.arange(len(atts), device=atts.device)]
        )

        def fusion(model: XVLM, txt: Tensor, vis: Tensor) -> Stream:
            return _text_stream(
                model,
                "fusion",
                input_ids=None,
                attention_mask=pair_text,
                inputs_embeds_for_fusion=txt.index_select(0, order_text),  # backward: index_add (see itm.py)
                encoder_hidden_states=vis.index_select(0, order_vis),
                encoder_attention_mask=_ones(vis)[order_vis],  # teacher and student grids may differ
            )

        s_itm = fusion(m, text, s_vis)
        with torch.no_grad():
            t_itm = fusion(self.teacher, t_txt.hidden[-1], t_vis)
        s_itm_logits = m.itm_logits(s_itm.hidden[-1])  # (3B, 2)
        itm = itm_loss(s_itm_logits)

        mlm_kwargs = {"input_ids": b["text_ids_masked"], "attention_mask": atts}
        s_mlm = _text_stream(m, "multimodal", **mlm_kwargs, encoder_hidden_states=s_vis,
                             encoder_attention_mask=_ones(s_vis))  # fmt: skip
        with torch.no_grad():
            t_mlm = _text_stream(self.teacher, "multimodal", **mlm_kwargs, encoder_hidden_states=t_vis,
                                 encoder_attention_mask=_ones(t_vis))  # fmt: skip
        s_rows, labels = gather_labelled(s_mlm.hidden[-1], b["masked_pos"], b["masked_ids"])  # (N, H), (N,)
        s_mlm_logits = m.mlm_logits(s_rows)  # (N, V): the real masked tokens only
        mlm = mlm_loss(s_mlm_logits, labels)
        with torch.no_grad():
            t_rows, _ = gather_labelled(t_mlm.hidden[-1], b["masked_pos"], b["masked_ids"])
            t_mlm_logits = self.teacher.mlm_logits(t_rows)  # (N, V)
            t_itm_logits = self.teacher.itm_logits(t_itm.hidden[-1])

        losses["itc_loss"] = w.task * itc
        losses["itm_loss"] = w.task * itm
        losses["mlm_loss"] = w.task * mlm
        if w.bbox and "region" in batch:
            l1, giou = self._box_losses(resize_images(batch["region"], t_res, s_res))
            losses["bbox_loss"], losses["giou_loss"] = w.task * l1, w.task * giou
        losses.update({f"kd_{k}_loss": w.kd * v for k, v in self._kd_terms(
            s_img, t_img, s_txt, t_txt, s_itm, t_itm, s_mlm, t_mlm, len(atts)).items()})  # fmt: skip
        losses["kd_itm_logits_loss"] = w.kd * soft_cross_entropy(s_itm_logits, t_itm_logits, w.temperature)
        if len(labels):
            mlm_kl = soft_cross_entropy(s_mlm_logits, t_mlm_logits, w.temperature)
        else:
            mlm_kl = s_mlm_logits.sum() * 0.0
        losses["kd_mlm_logits_loss"] = w.kd * mlm_kl
        return losses, {"temp": float(m.temp.detach())}

    def _kd_terms(
        self, s_img: Stream, t_img: Stream, s_txt: Stream, t_txt: Stream, s_itm: Stream, t_itm: Stream,
        s_mlm: Stream, t_mlm: Stream, batch: int,
    ) -> dict[str, Tensor]:  # fmt: skip
        """The attention + hidden KD of every stream (image, text, ITM positives/negatives, MLM)."""
        vision_map = self.layer_map.vision
        image = _Pairs()
        self._pair(s_img, t_img, vision_map, image, skip_last=self.weights.image_skip_last and bool(s_img.layers))
        text = _Pairs()
        self._pair(s_txt, t_txt, self._text_abs, text)
        itm = _Pairs()
        self._pair(s_itm, t_itm, self._text_abs, itm)
        # Official: separate positive and negative streams, each with its own mean.
        pos = _Pairs([(a[:batch], c[:batch]) for a, c in itm.hidden], [(a[:batch], c[:batch]) for a, c in itm.attn])
        neg = _Pairs([(a[batch:], c[batch:]) for a, c in itm.hidden], [(a[batch:], c[batch:]) for a, c in itm.attn])
        mlm = _Pairs()
        self._pair(s_mlm, t_mlm, self._text_abs, mlm)
        return {
            "image": self._kd(image, self.weights.image_hidden),
            "text": self._kd(text),
            "itm_pos": self._kd(pos),
            "itm_neg": self._kd(neg),
            "mlm": self._kd(mlm),
        }

    def _box_losses(self, r: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Box regression of the student on a region batch (the region text against the whole image)."""
        m = self.model
        image_embeds, _ = m.encode_image(r["image"])  # (I, 1+N, Dv)
        text = m.encode_text(r["text_ids"], r["text_atts"])
        full = image_embeds[r["region_image_index"]]
        full_atts = torch.ones(full.shape[:2], dtype=torch.long, device=full.device)
        fused = m.fuse(text, r["text_atts"], full, full_atts)
        return bbox_loss(m.predict_box(fused, full), r["region_boxes"], r["is_image"])


def _ones(tokens: Tensor) -> Tensor:
    """An all-ones attention mask (B, N) for vision tokens (B, N, D)."""
    return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)


def teacher_copy(model: XVLM) -> XVLM:
    """A frozen deep copy to serve as the teacher of ``model`` itself (pruning without a separate teacher)."""

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class PruneTask(nn.Module):
    """A Task that trains ``inner`` (any Task over ``model``) under the pruner's masks plus the Lagrangian.

    ``forward(batch)`` -> ``(losses, metrics)`` with ``lagrangian_loss`` added. Training mode samples
    new masks every forward; eval mode uses the deterministic ones.
    """

    def __init__(self, inner: nn.Module, pruner: ModalPruner) -> None:
        super().__init__()
        self.inner = inner
        self.pruner = pruner

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        self.pruner.refresh()
        losses, metrics = self.inner(batch)
        lagrangian, lag_metrics = self.pruner.lagrangian()
        return {**losses, "lagrangian_loss": lagrangian}, {**metrics, **lag_metrics}
