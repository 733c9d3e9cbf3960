"""Physical removal: final pruning masks -> a smaller dense X²-VLM (compression.md §A.4 quirk 4, §D.4).

The official EfficientVLM code multiplies masks into the activations but never removes anything,
so its speed-up cannot come from its code. Here every zero head loses its q/k/v rows, its output
projection columns and its relative-position column; every zero FFN neuron loses its ``fc1`` row and
``fc2`` column; a zero whole-sub-layer mask (CoFi) removes all heads/neurons of that sub-layer and
its output bias. Soft kept values (CoFi mode) and layer-mask values are folded into the output
projection, so the small model computes what the masked model computes (tested to 1e-5).

An EfficientNet vision tower pruned on its MBConv expansion channels (``vision_channel_*`` groups, our
opt-in extension) loses, per zero channel, its expand-conv row, BatchNorm entries, depthwise filter and
project-conv column; kept mask values are folded into the project-conv columns.

The VQA answer decoder (``decoder_*`` groups) is shrunk the same way by :func:`shrink_decoder`.

The result is an ordinary :class:`XVLM` whose config carries per-layer shapes (``layer_heads``,
``layer_mlp`` for the vision tower: FFN widths of a ViT, expansion channels per MBConv block of an
EfficientNet; ``layer_heads``, ``layer_cross_heads``, ``layer_intermediate``
for the text tower), so ``save_pretrained`` / ``XVLM.from_pretrained`` round-trip it like any model.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from grainvl.models.decoder import TextDecoder
from grainvl.models.text import BertEncoderModel
from grainvl.models.xvlm import XVLM

T = TypeVar("T", bound=nn.Module)


def _row(masks: dict[str, Tensor], name: str, row: int, units: int) -> Tensor:
    """Row ``row`` of mask group ``name`` as a float vector of ``units`` (all ones when the group is absent)."""
    if name not in masks:
        return torch.ones(units)
    value = masks[name][row].detach().float().cpu().reshape(-1)
    if value.numel() != units:
        raise ValueError(f"mask {name}[{row}] has {value.numel()} entries, the model has {units}")
    return value


def _layer_scale(masks: dict[str, Tensor], name: str, row: int) -> float:
    return float(_row(masks, name, row, 1)[0]) if name in masks else 1.0


def _head_rows(keep: Tensor, head_dim: int, offset: int = 0) -> Tensor:
    """Row indices of the kept heads in a projection whose heads are consecutive ``head_dim`` blocks."""
    return (offset + keep[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _shrink_heads(
    state: dict[str, Tensor],
    qkv: list[str],
    out: str,
    head_mask: Tensor,
    layer_scale: float,
    head_dim: int,
    fused_qkv: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> int:
    """Keep the heads with a non-zero mask in one attention block of ``state`` (in place); -> heads kept.

    ``qkv``: weight/bias names whose rows are per head (``fused_qkv``: one ``(3·inner, ·)`` tensor
    holding q, k, v one after the other); ``out``: the output projection prefix (its columns are per
    head; the mask values and the layer scale are folded into them and its bias takes the layer scale);
    ``extra_columns``: tensors with one column per head (the relative position table).
    """
    scale = head_mask * layer_scale  # (H,)
    keep = torch.nonzero(scale != 0).flatten()
    heads = head_mask.numel()
    inner = heads * head_dim
    for name in qkv:
        if name not in state:
            continue
        if fused_qkv:
            rows = torch.cat([_head_rows(keep, head_dim, part * inner) for part in range(3)])
        else:
            rows = _head_rows(keep, head_dim)
        state[name] = state[name][rows].clone()
    for name in extra_columns:
        state[name] = state[name][:, keep].clone()
    columns = _head_rows(keep, head_dim)
    column_scale = scale[keep].repeat_interleave(head_dim)  # (kept·hd,)
    weight = state[f"{out}.weight"]
    state[f"{out}.weight"] = (weight[:, columns] * column_scale.to(weight.dtype)[None, :]).contiguous()
    state[f"{out}.bias"] = state[f"{out}.bias"] * layer_scale
    return int(keep.numel())


def _shrink_ffn(state: dict[str, Tensor], fc1: str, fc2: str, neuron_mask: Tensor, layer_scale: float) -> int:
    """Keep the FFN neurons with a non-zero mask: ``fc1`` rows, ``fc2`` columns (mask folded in); -> width."""
    scale = neuron_mask * layer_scale  # (F,)
    keep = torch.nonzero(scale != 0).flatten()
    state[f"{fc1}.weight"] = state[f"{fc1}.weight"][keep].clone()
    state[f"{fc1}.bias"] = state[f"{fc1}.bias"][keep].clone()
    weight = state[f"{fc2}.weight"]
    state[f"{fc2}.weight"] = (weight[:, keep] * scale[keep].to(weight.dtype)[None, :]).contiguous()
    state[f"{fc2}.bias"] = state[f"{fc2}.bias"] * layer_scale
    return int(keep.numel())


def _shrink_vision(model: XVLM, state: dict[str, Tensor], masks: dict[str, Tensor]) -> tuple[list[int], list[int]]:
    blocks = model.vision_encoder.blocks
    heads_out, mlp_out = [], []
    for i, block in enumerate(blocks):
        p = f"vision_encoder.blocks.{i}."
        attn = block.attn
        hz = _row(masks, "vision_head", i, attn.num_heads)
        qkv = [p + "attn.qkv.weight", p + "attn.qkv.bias"]
        rows_only = [p + "attn.q_bias", p + "attn.v_bias"]
        extra = (p + "attn.relative_position_bias_table",) if p + "attn.relative_position_bias_table" in state else ()
        scale = _layer_scale(masks, "vision_attn_layer", i)
        kept = _shrink_heads(state, qkv, p + "attn.proj", hz, scale, attn.head_dim, fused_qkv=True, extra_columns=extra)
        # q/v biases are per-head rows but not fused: slice them with the same kept heads.
        keep = torch.nonzero(hz * scale != 0).flatten()
        for name in rows_only:
            if name in state:
                state[name] = state[name][_head_rows(keep, attn.head_dim)].clone()
        heads_out.append(kept)
        fz = _row(masks, "vision_ffn", i, block.mlp.fc1.out_features)
        mlp_out.append(_shrink_ffn(state, p + "mlp.fc1", p + "mlp.fc2", fz, _layer_scale(masks, "vision_ffn_layer", i)))
    return heads_out, mlp_out


def _shrink_cnn_channels(model: XVLM, state: dict[str, Tensor], masks: dict[str, Tensor]) -> list[int]:
    """Keep the MBConv expansion channels with a non-zero mask (``vision_channel_<width>`` groups, rows in
    block order among the blocks of that width); -> expanded channels per block, over all blocks."""
    blocks = model.vision_encoder.backbone._blocks
    rows: dict[int, int] = {}  # next row of each width group
    widths = []
    for i, block in enumerate(blocks):
        width = block._depthwise_conv.out_channels
        name = f"vision_channel_{width}"
        if block._block_args.expand_ratio == 1 or name not in masks:
            widths.append(width)
            continue
        row = rows.get(width, 0)
        rows[width] = row + 1
        scale = _row(masks, name, row, width)  # (C,)
        keep = torch.nonzero(scale != 0).flatten()
        if keep.numel() == 0:
            # A zero-channel conv is invalid; one channel whose project-conv column is zeroed by its
            # mask value (0) adds nothing, so the block still computes exactly what the masked one does.
            keep = torch.zeros(1, dtype=torch.long)
        p = f"vision_encoder.backbone._blocks.{i}."
        for key in ["_expand_conv.weight", "_depthwise_conv.weight"] + [
            f"{bn}.{x}" for bn in ("_bn0", "_bn1") for x in ("weight", "bias", "running_mean", "running_var")
        ]:
            state[p + key] = state[p + key][keep].clone()
        weight = state[p + "_project_conv.weight"]  # (out, C, 1, 1): mask values folded into its input columns
        state[p + "_project_conv.weight"] = (
            weight[:, keep] * scale[keep].to(weight.dtype)[None, :, None, None]
        ).contiguous()
        widths.append(int(keep.numel()))
    return widths


def _shrink_text(
    bert: BertEncoderModel, state: dict[str, Tensor], masks: dict[str, Tensor], prefix: str, fusion: str = "fusion"
) -> tuple[list[int], list[int], list[int]]:
    """Shrink every layer of ``bert`` inside ``state`` (keys ``{prefix}{i}.…``, in place); -> per-layer
    (self-attention heads, cross-attention heads, FFN width) kept.

    Layers before ``bert.fusion_start`` read the ``text_*`` groups, the others the ``{fusion}_*`` groups
    (``fusion`` for X²-VLM's stack, ``decoder`` for a :class:`TextDecoder`), rows counted from there."""
    cfg = bert.config
    heads_out, cross_out, ffn_out = [], [], []
    for i, layer in enumerate(bert.encoder.layer):
        modality, row = ("text", i) if i < bert.fusion_start else (fusion, i - bert.fusion_start)
        p = f"{prefix}{i}."
        hz = _row(masks, f"{modality}_head", row, layer.attention.self.num_heads)
        names = [p + f"attention.self.{x}.{y}" for x in ("query", "key", "value") for y in ("weight", "bias")]
        scale = _layer_scale(masks, f"{modality}_attn_layer", row)
        heads_out.append(_shrink_heads(state, names, p + "attention.output.dense", hz, scale, cfg.head_dim))
        if layer.crossattention is not None:
            cz = _row(masks, f"{modality}_cross_head", row, layer.crossattention.self.num_heads)
            names = [p + f"crossattention.self.{x}.{y}" for x in ("query", "key", "value") for y in ("weight", "bias")]
            scale = _layer_scale(masks, f"{modality}_cross_layer", row)
            cross_out.append(_shrink_heads(state, names, p + "crossattention.output.dense", cz, scale, cfg.head_dim))
        else:
            cross_out.append(0)
        fz = _row(masks, f"{modality}_ffn", row, layer.intermediate.dense.out_features)
        scale = _layer_scale(masks, f"{modality}_ffn_layer", row)
        ffn_out.append(_shrink_ffn(state, p + "intermediate.dense", p + "output.dense", fz, scale))
    return heads_out, cross_out, ffn_out


@torch.no_grad()
def shrink(model: XVLM, masks: dict[str, Tensor]) -> XVLM:
    """A new, smaller :class:`XVLM` equal to ``model`` run under ``masks`` (``ModalPruner.final_masks()``).

    ``masks`` maps group names (``vision_head`` ``(Lv, H)``, ``vision_ffn`` ``(Lv, F)``, ``text_head``,
    ``text_ffn``, ``fusion_head``, ``fusion_cross_head``, ``fusion_ffn``, the optional ``*_layer``
    groups ``(L, 1)`` and, for an EfficientNet tower, ``vision_channel_<width>``) to mask values; a missing
    group keeps everything; ``decoder_*`` groups belong to the VQA decoder (:func:`shrink_decoder`) and
    are ignored here. ``model`` is not modified.
    """
    if model.config.text.layout != "single":
        raise ValueError("shrink supports the X²-VLM 'single' text layout only")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    vision_cfg = model.config.vision
    if any(name.startswith("vision_channel_") for name in masks):
        # pretrained=False: the shrunk state dict carries every weight (the packaged ones would be overwritten).
        vision_cfg = dataclasses.replace(
            vision_cfg, layer_mlp=_shrink_cnn_channels(model, state, masks), pretrained=False
        )
    elif any(name.startswith("vision_") for name in masks):
        layer_heads, layer_mlp = _shrink_vision(model, state, masks)
        vision_cfg = dataclasses.replace(vision_cfg, layer_heads=layer_heads, layer_mlp=layer_mlp, pretrained=False)
    text_cfg = model.config.text
    if any(name.startswith(("text_", "fusion_")) for name in masks):
        heads, cross, ffn = _shrink_text(model.bert, state, masks, "text_encoder.bert.encoder.layer.")
        text_cfg = dataclasses.replace(text_cfg, layer_heads=heads, layer_cross_heads=cross, layer_intermediate=ffn)
    config = dataclasses.replace(model.config, vision=vision_cfg, text=text_cfg, text_init=None)
    with warnings.catch_warnings():  # fully pruned blocks hold zero-element weights; their init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        small = XVLM(config)
    small.load_state_dict(state, strict=True)
    small.to(next(model.parameters()).device)
    small.train(model.training)
    return small


def _rebuilt(cls: type[T], config: Any, state: dict[str, Tensor], like: nn.Module) -> T:
    """A new ``cls(config)`` holding ``state``, on ``like``'s device and in its train/eval mode."""
    with warnings.catch_warnings():  # fully pruned layers hold zero-element weights; their init is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        small = cls(config)
    small.load_state_dict(state, strict=True)
    small.to(next(like.parameters()).device)
    return small.train(like.training)


@torch.no_grad()
def shrink_text_tower(tower: BertEncoderModel, masks: dict[str, Tensor]) -> BertEncoderModel:
    """A new, smaller :class:`BertEncoderModel` equal to ``tower`` run under ``masks`` (text-only towers
    such as a :class:`~grainvl.tasks.text_classification.TextClassifier`'s encoder, or X²-VLM's BERT stack).

    ``masks``: the ``text_*`` groups (and ``fusion_*`` for layers from ``tower.fusion_start`` on) of
    :meth:`ModalPruner.final_masks`, rows indexed per modality as in :func:`shrink`. ``tower`` is not modified.
    """
    state = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    heads, cross, ffn = _shrink_text(tower, state, masks, "encoder.layer.")
    has_cross = any(layer.crossattention is not None for layer in tower.encoder.layer)
    config = dataclasses.replace(
        tower.config, layer_heads=heads, layer_cross_heads=cross if has_cross else None, layer_intermediate=ffn
    )
    return _rebuilt(BertEncoderModel, config, state, tower)


@torch.no_grad()
def shrink_decoder(decoder: TextDecoder, masks: dict[str, Tensor]) -> TextDecoder:
    """A new, smaller :class:`TextDecoder` equal to ``decoder`` run under ``masks`` (the VQA answer decoder).

    ``masks``: the ``decoder_*`` groups of :meth:`ModalPruner.final_masks` (``decoder_head``,
    ``decoder_cross_head`` ``(L, H)``, ``decoder_ffn`` ``(L, F)``, optional ``decoder_*_layer`` ``(L, 1)``);
    other groups are ignored, a missing group keeps everything. The per-layer shapes go to the new
    decoder's ``config`` (``layer_heads``, ``layer_cross_heads``, ``layer_intermediate``); embeddings and
    the LM head are untouched, and the new decoder's LM head is tied to its own word embeddings, as
    every :class:`TextDecoder`'s is. ``decoder`` is not modified.
    """
    state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
    heads, cross, ffn = _shrink_text(decoder.bert, state, masks, "bert.encoder.layer.", fusion="decoder")
    config = dataclasses.replace(decoder.config, layer_heads=heads, layer_cross_heads=cross, layer_intermediate=ffn)
    # The two clones of the tied table hold equal values; loading both into the one tied Parameter is exact.
    return _rebuilt(TextDecoder, config, state, decoder)
