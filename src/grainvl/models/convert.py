"""Checkpoint conversion: official X-VLM / X²-VLM / CCLM checkpoints and Hugging Face towers <-> grainvl.

Every conversion is a documented **key map** plus a config translation; nothing is re-implemented
per format (research note ``xvlm.md`` §1.6–§1.8 lists the official layouts):

* ``official-x2vlm`` / ``official-xvlm``: ``torch.save({'model': state_dict, 'config': ...})`` files
  (or a bare state dict, or safetensors). Text layouts:

  - pre-training (``text_encoder.bert.*`` + ``text_encoder.cls.*``): grainvl's own names;
  - fine-tuning (``text_encoder.embeddings.*``, ``text_encoder.encoder.layer.N.*``): ``bert.`` added;
  - RoBERTa pre-training (X-VLM ``use_roberta``: ``text_encoder.roberta.*`` + ``text_encoder.lm_head.*``).

  Vision variants: BEiT-v2 (X²-VLM), X-VLM's DeiT ViT, Swin (X-VLM v1 / CCLM ``use_swin``) and
  CLIP-ViT (``use_clip_vit``) all load with their ``vision_encoder.*`` names unchanged (grainvl's
  towers keep the official module names); Swin-v2 is refused with :class:`UnsupportedVariant`.
* ``official-cclm``: both CCLM layouts, told apart by their keys (xvlm.md §7.13). X²-VLM's ``CrossViewLM``
  (``text_encoder.*`` without cross-attention, ``cross_encoder.encoder.layer.N.*`` built from its own BERT
  config, untied ``mlm_head.predictions.*``) = grainvl's ``layout="cross"``; the CCLM repo's single stack
  (XLM-R inside ``text_encoder.bert.*``, BERT position ids 0…L−1) = ``layout="single"``.
* ``hf-bert``, ``hf-xlmr``, ``hf-vit``, ``hf-beit``: Hugging Face folders (``config.json`` +
  safetensors/bin, the on-disk layout every transformers version writes), converted to a grainvl
  *tower folder* and back.

Strict by default: every missing, unexpected or mis-shaped key is reported by name in one
:class:`ConversionError`. Derived buffers (``position_ids``, ``relative_position_index``) and the
tied MLM decoder aliases are recomputed / checked rather than copied. Relative position tables (and
absolute ``pos_embed``) are resized when the checkpoint's resolution differs from the target, exactly as
the official loader of the format does (BEiT-v2 / X-VLM Swin: ``interp2d`` on a geometric grid).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from grainvl.errors import DataError
from grainvl.models.text import (
    BertEncoderModel,
    TextConfig,
    hf_bert_dims,
    normalise_hf_bert_keys,
    read_hf_state_dict,
)
from grainvl.models.vision import (
    VisionConfig,
    WindowResize,
    build_vision_tower,
    interpolate_rel_pos_bias,
    interpolate_window_bias,
    resize_pos_embed,
    resize_state_dict,
    window_from_table,
)
from grainvl.models.xvlm import XVLM, XVLMConfig
from grainvl.utils.fileio import (
    atomic_file,
    atomic_write_text,
    is_grainvl_folder,
    load_model_safetensors,
    save_model_safetensors,
    staged_dir,
)

OFFICIAL_FORMATS = ("official-x2vlm", "official-xvlm", "official-cclm")
HF_FORMATS = ("hf-bert", "hf-xlmr", "hf-vit", "hf-beit")
FORMATS = OFFICIAL_FORMATS + HF_FORMATS
OFFICIAL_VISION_KINDS = ("beit2", "vit", "swin", "clip_vit")  # towers with an official X-VLM/X²-VLM layout
TOWER_FILE_KEY = "grainvl_tower"  # marks a tower folder's config.json
# Keys the official Hugging Face-derived modules register as persistent buffers; recomputed, never copied.
# Swin's ``attn_mask`` and CLIP-ViT's ``position_ids`` are functions of the grid, rebuilt by the towers.
_DERIVED = (
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "relative_position_index",
    "attn_mask",
    "vision_encoder.position_ids",
)


class ConversionError(ValueError):
    """A checkpoint does not fit the target: one line naming the file and every offending key."""

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} conversion problem(s): " + "; ".join(problems))


class UnsupportedVariant(ConversionError):
    """A recognised official variant that no grainvl tower can represent (Swin, CLIP-ViT)."""


@dataclass
class ConversionReport:
    """What a conversion did. ``missing``: target keys the checkpoint did not provide (left at init);
    ``unexpected``: checkpoint keys not used; ``mismatched``: ``"key: checkpoint (..) vs model (..)"``;
    ``resized``: position tables interpolated to a new grid; ``ignored``: known non-model keys
    (poolers, classifier heads); ``notes``: assumptions (e.g. heads inferred from widths)."""

    source: str
    format: str
    layout: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return (
            [f"mis-shaped {m}" for m in self.mismatched]
            + [f"missing {k}" for k in self.missing]
            + [f"unexpected {k}" for k in self.unexpected]
        )

    def check(self, strict: bool) -> None:
        """Raise :class:`ConversionError` listing every problem when ``strict``; mis-shapes always raise."""
        if self.mismatched or (strict and self.problems()):
            raise ConversionError(self.source, self.problems())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# =============================================================================================== reading
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.th``/``.pth``/``.pt``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    Unwraps ``{'model': ...}`` (the official format, which also carries ``'config'``), ``{'state_dict': ...}``
    and ``{'module': ...}``. Raises :class:`DataError` (one line) for anything that is not a state dict.
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        loaded: Any = load_model_safetensors(path)  # a corrupt or truncated file is a DataError naming it
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError ...: all mean "not loadable"
            raise DataError(
                path, None, f"not a checkpoint torch.load(weights_only=True) can read ({_first_line(error)})"
            ) from None
    state = _unwrap(loaded)
    if not isinstance(state, Mapping) or not state:
        raise DataError(
            path, None, f"expected a state dict (or {{'model': state_dict}}), found {type(loaded).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise DataError(path, None, f"not a state dict: entries {bad[:5]} are not tensors")
    return dict(state)


def _unwrap(loaded: Any) -> Any:
    for key in ("model", "state_dict", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            return loaded[key]
    return loaded


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def read_official_config(path: str | Path) -> dict[str, Any]:
    """An official ``configs/*.yaml`` (pre-training or fine-tuning) as a dict."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(path, None, f"not valid YAML ({_first_line(error)})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, "an official config must be a YAML mapping")
    return data


def read_json_config(path: str | Path) -> dict[str, Any]:
    """A BERT/RoBERTa ``config.json`` (or X-VLM ``configs/config_bert.json``) as a dict."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(path, f"line {error.lineno}", f"not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, "a config.json must hold a JSON object")
    return data


# =============================================================================================== official: detection
def detect_vision_variant(state: Mapping[str, Tensor], source: str = "checkpoint") -> str:
    """``"beit2"``, ``"vit"`` (X-VLM's DeiT), ``"swin"`` (``vision_encoder.layers.N.blocks.M.*``) or
    ``"clip_vit"`` (``vision_encoder.class_embedding`` / ``pre_layrnorm``): the grainvl ``vision.kind``."""
    keys = [k for k in state if k.startswith("vision_encoder.")]
    if not keys:
        raise ConversionError(source, ["no vision_encoder.* keys: not an official X-VLM/X²-VLM/CCLM checkpoint"])
    if any(k.startswith("vision_encoder.layers.") for k in keys):
        if any(k.endswith(("logit_scale", "cpb_mlp.0.weight")) for k in keys):
            raise UnsupportedVariant(source, ["Swin-v2 vision encoder (cpb_mlp/logit_scale) is not supported"])
        return "swin"
    if any(k.startswith(("vision_encoder.class_embedding", "vision_encoder.pre_layrnorm")) for k in keys):
        return "clip_vit"
    if any(k.endswith("attn.q_bias") or k.endswith("relative_position_bias_table") for k in keys):
        return "beit2"
    if "vision_encoder.pos_embed" in state and any(k.endswith("attn.qkv.bias") for k in keys):
        return "vit"
    raise ConversionError(source, ["vision_encoder.* matches none of BEiT-v2, DeiT-ViT, Swin, CLIP-ViT"])


def detect_text_layout(state: Mapping[str, Tensor]) -> str:
    """``"cclm"`` (cross_encoder.*), ``"pretrain"`` (text_encoder.bert.*), ``"roberta"`` (text_encoder.roberta.*)
    or ``"finetune"`` (text_encoder.embeddings.* / encoder.*)."""
    if any(k.startswith("cross_encoder.") for k in state):
        return "cclm"
    if any(k.startswith("text_encoder.bert.") for k in state):
        return "pretrain"
    if any(k.startswith("text_encoder.roberta.") for k in state):
        return "roberta"
    return "finetune"


# =============================================================================================== official: key maps
_LM_HEAD_MAP = {  # RobertaForMaskedLM's lm_head -> BERT's cls.predictions (same computation)
    "dense.": "predictions.transform.dense.",
    "layer_norm.": "predictions.transform.LayerNorm.",
    "decoder.": "predictions.decoder.",
    "bias": "predictions.bias",
}


def official_key_to_grainvl(key: str, layout: str) -> str | None:
    """One official key -> its grainvl name (None: a derived buffer, recomputed instead)."""
    if key.endswith(_DERIVED) and "relative_position_bias_table" not in key:
        return None
    if layout == "cclm":
        for prefix in ("text_encoder.roberta.", "text_encoder.bert."):  # tolerated, as the official loader strips them
            if key.startswith(prefix):
                return "text_encoder." + key[len(prefix) :]
        return key
    if not key.startswith("text_encoder."):
        return key
    rest = key[len("text_encoder.") :]
    if layout == "pretrain":
        return key
    if layout == "roberta":
        if rest.startswith("roberta."):
            return "text_encoder.bert." + rest[len("roberta.") :]
        if rest.startswith("lm_head."):
            tail = rest[len("lm_head.") :]
            for old, new in _LM_HEAD_MAP.items():
                if tail.startswith(old):
                    return "text_encoder.cls." + new + tail[len(old) :]
        return key
    return "text_encoder.bert." + rest  # fine-tuning layout: BertModel without the bert. prefix


def grainvl_key_to_official(key: str, layout: str) -> str | None:
    """The inverse of :func:`official_key_to_grainvl` for ``layout`` in pretrain / finetune / cclm / roberta."""
    if layout in ("pretrain", "cclm") or not key.startswith("text_encoder."):
        return key
    rest = key[len("text_encoder.") :]
    if layout == "finetune":
        return None if rest.startswith("cls.") else "text_encoder." + rest[len("bert.") :]
    if rest.startswith("bert."):
        return "text_encoder.roberta." + rest[len("bert.") :]
    tail = rest[len("cls.") :]
    for old, new in _LM_HEAD_MAP.items():
        if tail.startswith(new):
            return "text_encoder.lm_head." + old + tail[len(new) :]
    raise ValueError(f"no official RoBERTa name for {key}")


def _layer_numbers(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


# =============================================================================================== official: configs
def official_config(
    state: Mapping[str, Tensor],
    fmt: str,
    yaml_config: Mapping[str, Any] | None = None,
    text_config: Mapping[str, Any] | None = None,
    name: str = "converted",
    source: str = "checkpoint",
    notes: list[str] | None = None,
    key_layout: str | None = None,
    cross_config: Mapping[str, Any] | None = None,
) -> XVLMConfig:
    """The :class:`XVLMConfig` of an official checkpoint (keys already in grainvl names).

    Shapes come from the weights; the official YAML supplies ``image_res`` (resolution to convert
    to; position tables are resized), ``max_tokens``, ``text_encoder`` and is checked against the
    weights for ``patch_size``, ``text_num_hidden_layers``, ``text_fusion_start_at``,
    ``cross_num_hidden_layers`` and ``embed_dim``. The BERT JSON supplies heads, vocabulary, epsilons
    and dropouts; without it heads are ``hidden // 64`` (every released model) and the assumption is
    recorded in ``notes``. ``cross_config`` is the cross encoder's own BERT JSON (CrossViewLM).

    Position ids follow the module the official code builds for ``key_layout`` (the text key layout of
    the raw checkpoint, :func:`detect_text_layout`), not the config's model type (xvlm.md §7.13):
    ``text_encoder.bert.*`` (and any CCLM-repo checkpoint) is xbert's ``BertModel``, which numbers
    positions 0…L−1 even over an XLM-R table; ``text_encoder.roberta.*`` is RoBERTa; a fine-tuning
    layout or a CrossViewLM follows the ``text_encoder`` path / JSON model type, as the official code.
    """
    notes = notes if notes is not None else []
    yaml_config = dict(yaml_config or {})
    problems: list[str] = []
    vision = _vision_config_from_state(state, yaml_config, problems, notes)
    configs = _TextSources(fmt, key_layout, yaml_config, text_config, cross_config)
    text = _text_config_from_state(state, configs, vision, problems, notes)
    embed_dim = (
        int(state["vision_proj.weight"].shape[0])
        if "vision_proj.weight" in state
        else yaml_config.get("embed_dim", 256)
    )
    if "embed_dim" in yaml_config and yaml_config["embed_dim"] != embed_dim:
        problems.append(f"config embed_dim {yaml_config['embed_dim']} != vision_proj rows {embed_dim}")
    frame = state.get("absolute_frame_pos_embed")
    if problems:
        raise ConversionError(source, problems)
    vocab_is_bert_uncased = text.vocab_size == 30522 and not text.roberta_positions
    if not vocab_is_bert_uncased:
        notes.append(f"vocabulary of {text.vocab_size}: pass the matching tokenizer folder (tokenizer set to '')")
    return XVLMConfig(
        name=name,
        vision=vision,
        text=text,
        embed_dim=embed_dim,
        temp=float(state["temp"]) if "temp" in state else float(yaml_config.get("temp", 0.07)),
        frame_len=int(frame.shape[1]) if frame is not None else int(yaml_config.get("frame_len", 3)),
        add_frame_pos=frame is not None,
        video_encoding="avgpool",
        text_init=None,
        # bert-base-uncased's WordPiece vocabulary is the packaged MiniLM's (same 30522 entries).
        tokenizer="minilm" if vocab_is_bert_uncased else "",
        max_tokens=int(yaml_config.get("max_tokens", 40)),
    )


def _vit_dims(
    state: Mapping[str, Tensor], yaml_config: dict[str, Any], problems: list[str], patch_key: str, blocks: str
) -> tuple[int, int, int, float]:
    """``(width, patch, depth, mlp_ratio)`` of a ViT-style tower, read off its patch embedding ``patch_key``
    and its numbered ``blocks`` prefix; a YAML ``patch_size`` that disagrees is a problem."""
    patch_weight = state[patch_key]  # (D, 3, P, P)
    width, patch = int(patch_weight.shape[0]), int(patch_weight.shape[-1])
    depth = len(_layer_numbers(state, blocks))
    mlp_ratio = state[f"{blocks}0.mlp.fc1.weight"].shape[0] / width
    if "patch_size" in yaml_config and yaml_config["patch_size"] != patch:
        problems.append(f"config patch_size {yaml_config['patch_size']} != checkpoint patch size {patch}")
    return width, patch, depth, mlp_ratio


def _vision_config_from_state(
    state: Mapping[str, Tensor], yaml_config: dict[str, Any], problems: list[str], notes: list[str]
) -> VisionConfig:
    if "vision_encoder.layers.0.blocks.0.attn.qkv.weight" in state:
        return _swin_config_from_state(state, yaml_config, problems, notes)
    if "vision_encoder.class_embedding" in state:
        return _clip_config_from_state(state, yaml_config, problems, notes)
    width, patch, depth, mlp_ratio = _vit_dims(
        state, yaml_config, problems, "vision_encoder.patch_embed.proj.weight", "vision_encoder.blocks."
    )
    table = state.get("vision_encoder.blocks.0.attn.relative_position_bias_table")
    if table is not None:  # BEiT-v2: heads and the trained grid are in the relative position table
        heads = int(table.shape[1])
        grid = (math.isqrt(int(table.shape[0]) - 3) + 1) // 2
        init = 0.1 if "vision_encoder.blocks.0.gamma_1" in state else 0.0
        kind, drop_path = "beit2", 0.1
    else:  # X-VLM's DeiT-B/16: 12 heads of 64
        heads, grid, init, kind, drop_path = (
            width // 64,
            math.isqrt(state["vision_encoder.pos_embed"].shape[1] - 1),
            0.0,
            "vit",
            0.0,
        )
        notes.append(f"ViT heads inferred as width/64 = {heads}")
    resolution = int(yaml_config.get("image_res", grid * patch))
    if resolution != grid * patch:
        notes.append(f"vision position tables resized from {grid * patch} to {resolution} px")
    return VisionConfig(kind, resolution, patch, width, depth, heads, mlp_ratio, drop_path, init)


def _swin_config_from_state(
    state: Mapping[str, Tensor], yaml_config: dict[str, Any], problems: list[str], notes: list[str]
) -> VisionConfig:
    """X-VLM's Swin: stages, blocks, heads and window from the tables; resolution from the YAML.

    The official YAML's ``patch_size`` is the total stride (32 for 4 stages); the window lives in the
    vision JSON (``config_swinB_*.json``), which a YAML may carry inline as ``window_size``; otherwise
    the checkpoint's window is kept. Without ``image_res`` the resolution is the one the stored
    ``attn_mask`` buffers were built for (:func:`swin_trained_resolution`, applied by :func:`load_official`),
    else ``window · stride`` (every official config: 7·32 = 224, 12·32 = 384, 15·32 = 480).
    """
    prefix = "vision_encoder.layers."
    stages = _layer_numbers(state, prefix)
    depths = [len(_layer_numbers(state, f"{prefix}{s}.blocks.")) for s in stages]
    tables = [state[f"{prefix}{s}.blocks.0.attn.relative_position_bias_table"] for s in stages]
    stage_heads = [int(t.shape[1]) for t in tables]
    trained_window = window_from_table(int(tables[0].shape[0]))
    patch = int(state["vision_encoder.patch_embed.proj.weight"].shape[-1]) * 2 ** (len(stages) - 1)
    width = int(state["vision_encoder.norm.weight"].shape[0])
    if "patch_size" in yaml_config and yaml_config["patch_size"] != patch:
        problems.append(f"config patch_size {yaml_config['patch_size']} != Swin total stride {patch}")
    window = int(yaml_config.get("window_size", trained_window))
    resolution = int(yaml_config.get("image_res", trained_window * patch))
    first_grid = resolution // (patch // 2 ** (len(stages) - 1))
    tiles = all(g <= window or g % window == 0 for g in (first_grid // 2**s for s in range(len(stages))))
    if "window_size" not in yaml_config and not tiles and resolution % patch == 0:
        # The official configs pair each resolution with window = image_res / 32 (config_swinB_384.json: 12).
        window = resolution // patch
        notes.append(
            f"Swin window {trained_window} does not tile {resolution} px: window {window} = image_res / stride"
        )
    if window != trained_window:
        notes.append(f"Swin relative position tables resized from window {trained_window} to {window}")
    if "image_res" not in yaml_config:
        notes.append(f"Swin resolution inferred as window x stride = {resolution} px (no image_res, no attn_mask)")
    return VisionConfig(
        "swin",
        resolution,
        patch,
        width,
        depth=sum(depths),
        heads=stage_heads[-1],
        mlp_ratio=4.0,
        drop_path_rate=0.1,
        init_values=0.0,
        layer_norm_eps=1e-5,
        depths=depths,
        stage_heads=stage_heads,
        window_size=window,
    )


def swin_trained_resolution(raw: Mapping[str, Tensor]) -> int | None:
    """The input size an official Swin state dict's first shifted ``attn_mask`` ``(nW, W², W²)`` was built
    for: ``sqrt(nW) · W`` tokens of ``patch_embed`` patches per side (None when the buffer is absent,
    e.g. after the official ``load_pretrained``, which deletes it)."""
    mask = raw.get("vision_encoder.layers.0.blocks.1.attn_mask")
    patch = raw.get("vision_encoder.patch_embed.proj.weight")
    if mask is None or patch is None or mask.dim() != 3:
        return None
    window = math.isqrt(int(mask.shape[1]))
    return math.isqrt(int(mask.shape[0])) * window * int(patch.shape[-1])


def _clip_config_from_state(
    state: Mapping[str, Tensor], yaml_config: dict[str, Any], problems: list[str], notes: list[str]
) -> VisionConfig:
    """CLIP-ViT: width/patch from ``patch_embed.weight``, grid from ``pos_embed.weight``; heads are
    ``num_attention_heads`` of the YAML when given, else ``width // 64`` (CLIP ViT-B/16: 12)."""
    width, patch, depth, mlp_ratio = _vit_dims(
        state, yaml_config, problems, "vision_encoder.patch_embed.weight", "vision_encoder.encoder.layers."
    )
    heads = int(yaml_config.get("num_attention_heads", width // 64))
    if "num_attention_heads" not in yaml_config:
        notes.append(f"CLIP-ViT heads inferred as width/64 = {heads}")
    grid = math.isqrt(int(state["vision_encoder.pos_embed.weight"].shape[0]) - 1)
    resolution = int(yaml_config.get("image_res", grid * patch))
    if resolution != grid * patch:
        notes.append(f"vision position embedding resized from {grid * patch} to {resolution} px")
    return VisionConfig(
        "clip_vit",
        resolution,
        patch,
        width,
        depth,
        heads,
        mlp_ratio,
        drop_path_rate=0.0,
        init_values=0.0,
        layer_norm_eps=1e-5,
    )


@dataclass(frozen=True)
class _TextSources:
    """What decides an official text tower besides its weights: format, key layout and the three configs."""

    fmt: str
    key_layout: str | None
    yaml: Mapping[str, Any]
    hf: Mapping[str, Any] | None
    cross_hf: Mapping[str, Any] | None


XLMR_POSITION_ROWS = 514  # XLM-R / RoBERTa: 512 positions after the padding offset of 2


def _text_config_from_state(
    state: Mapping[str, Tensor], src: _TextSources, vision: VisionConfig, problems: list[str], notes: list[str]
) -> TextConfig:
    cross = any(k.startswith("cross_encoder.") for k in state)
    if cross and src.fmt != "official-cclm":
        problems.append(f"format {src.fmt} but the checkpoint has cross_encoder.* keys (a CrossViewLM: official-cclm)")
    if src.fmt == "official-cclm" and not cross and vision.kind == "beit2":
        problems.append(
            "format official-cclm but the checkpoint has no cross_encoder.* keys (CrossViewLM) and a BEiT-v2 vision "
            "encoder, which the CCLM repo's single stack (Swin / CLIP-ViT / DeiT) never has"
        )
    bert = "text_encoder." if cross else "text_encoder.bert."
    words = state.get(bert + "embeddings.word_embeddings.weight")
    if words is None:
        problems.append(f"no {bert}embeddings.word_embeddings.weight")
        return TextConfig()
    num_layers = len(_layer_numbers(state, bert + "encoder.layer."))
    fused = [
        i
        for i in _layer_numbers(state, bert + "encoder.layer.")
        if f"{bert}encoder.layer.{i}.crossattention.self.query.weight" in state
    ]
    fusion_start = num_layers if cross else (fused[0] if fused else num_layers)
    cross_layers = len(_layer_numbers(state, "cross_encoder.encoder.layer.")) if cross else 0
    position_rows = int(state[bert + "embeddings.position_embeddings.weight"].shape[0])
    roberta = _roberta_positions(cross, src, position_rows, notes)
    # XLM-R-trained embeddings (its 514-row table, RoBERTa numbering or a CCLM checkpoint) mean XLM-R's
    # pad id 1 and LayerNorm eps 1e-5 when no JSON says otherwise.
    xlmr = roberta or position_rows == XLMR_POSITION_ROWS or src.fmt == "official-cclm"
    yaml_config = src.yaml
    for key, expected in (("text_num_hidden_layers", num_layers), ("cross_num_hidden_layers", cross_layers)):
        if key in yaml_config and yaml_config[key] != expected and (cross or key == "text_num_hidden_layers"):
            problems.append(f"config {key} {yaml_config[key]} != {expected} layers in the checkpoint")
    declared = yaml_config.get("text_fusion_start_at", (src.hf or {}).get("fusion_layer"))
    if not cross and declared is not None and declared != fusion_start:
        problems.append(
            f"config fusion start {declared} != first cross-attention layer {fusion_start} in the checkpoint"
        )
    hidden = int(words.shape[1])
    values: dict[str, Any] = {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_heads": hidden // 64,
        "intermediate_size": int(state[f"{bert}encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": position_rows,
        "type_vocab_size": int(state[bert + "embeddings.token_type_embeddings.weight"].shape[0]),
        "layer_norm_eps": 1e-5 if xlmr else 1e-12,
        "pad_token_id": 1 if xlmr else 0,
        "roberta_positions": roberta,
    }
    if src.hf is not None:
        from_hf = TextConfig.from_hf_config(dict(src.hf), num_layers=num_layers)
        for key in ("num_heads", "layer_norm_eps", "hidden_dropout", "attention_dropout", "initializer_range"):
            values[key] = getattr(from_hf, key)
        values["pad_token_id"] = from_hf.pad_token_id
        for key in ("vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(from_hf, key) != values[key]:
                problems.append(f"text config {key} {getattr(from_hf, key)} != checkpoint {values[key]}")
    else:
        notes.append(f"text heads inferred as hidden/64 = {hidden // 64} (pass --text-config to set them)")
    if cross:
        values.update(_cross_encoder_fields(state, src.cross_hf, values, problems, notes))
    return TextConfig(
        num_layers=num_layers,
        fusion_start=fusion_start,
        encoder_width=vision.width,
        layout="cross" if cross else "single",
        cross_layers=cross_layers,
        drop_path_rate=float(yaml_config.get("text_drop_path_rate", 0.0)),
        cross_drop_path_rate=float(yaml_config.get("cross_drop_path_rate", 0.0)),
        **values,
    )


def _roberta_positions(cross: bool, src: _TextSources, position_rows: int, notes: list[str]) -> bool:
    """Whether the official code numbers this text tower's positions RoBERTa's way (see :func:`official_config`)."""
    path_says = "roberta" in str(src.yaml.get("text_encoder", "")) or bool(src.yaml.get("use_roberta"))
    json_says = src.hf is not None and src.hf.get("model_type") in ("roberta", "xlm-roberta")
    if src.key_layout == "roberta":
        return True
    if not cross and (src.key_layout == "pretrain" or src.fmt == "official-cclm"):
        if path_says or json_says or position_rows == XLMR_POSITION_ROWS:
            notes.append(
                "BERT-style position ids 0..L-1 over an XLM-R position table: the official text encoder here is "
                "xbert's BertModel (text_encoder.bert.* or the CCLM repo), whatever the config's model type"
            )
        return False
    if cross and not (path_says or json_says) and src.hf is None and "text_encoder" not in src.yaml:
        notes.append(
            "CCLM text encoder assumed XLM-R (RoBERTa positions, pad 1, eps 1e-5) as every released CrossViewLM"
        )
        return True
    return path_says or json_says


def _cross_encoder_fields(
    state: Mapping[str, Tensor],
    cross_hf: Mapping[str, Any] | None,
    text: Mapping[str, Any],
    problems: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """``cross_num_heads`` / ``cross_intermediate_size`` / ``cross_layer_norm_eps`` (None = the text's).

    The official CrossViewLM builds its cross encoder from the BERT config at ``cross_encoder``
    (bert-base/large-uncased: LayerNorm eps 1e-12), separate from the text encoder's XLM-R config. The
    FFN width is in the weights; heads and epsilon only in that JSON. Without it, a cross encoder of
    the text encoder's shape is assumed to have its heads and BERT's epsilon (noted); one of another
    shape cannot be guessed and is refused.
    """
    layer = "cross_encoder.encoder.layer.0."
    hidden = int(state[layer + "attention.self.query.weight"].shape[0])
    ffn = int(state[layer + "intermediate.dense.weight"].shape[0])
    if hidden != text["hidden_size"]:
        problems.append(f"cross encoder width {hidden} != text encoder width {text['hidden_size']}")
        return {}
    if cross_hf is None:
        if ffn != text["intermediate_size"]:
            problems.append(
                f"the cross encoder's FFN width {ffn} differs from the text encoder's {text['intermediate_size']}: "
                "its heads and LayerNorm epsilon are in its own BERT config.json, pass it with --cross-config"
            )
            return {}
        notes.append(
            f"cross encoder assumed built from a BERT config as every official CrossViewLM: {text['num_heads']} heads "
            "(the text encoder's), LayerNorm eps 1e-12 (pass --cross-config to set them)"
        )
        heads, eps = int(text["num_heads"]), 1e-12
    else:
        heads, eps = int(cross_hf["num_attention_heads"]), float(cross_hf.get("layer_norm_eps", 1e-12))
        for key, expected in (("hidden_size", hidden), ("intermediate_size", ffn)):
            if key in cross_hf and cross_hf[key] != expected:
                problems.append(f"cross config {key} {cross_hf[key]} != checkpoint {expected}")
        if cross_hf.get("hidden_act", "gelu") != "gelu":
            problems.append(f"cross config hidden_act {cross_hf['hidden_act']!r}: only exact 'gelu' is supported")
        if hidden % heads:
            problems.append(f"cross config num_attention_heads {heads} does not divide the width {hidden}")
            return {}
    return {
        "cross_num_heads": None if heads == text["num_heads"] else heads,
        "cross_intermediate_size": None if ffn == text["intermediate_size"] else ffn,
        "cross_layer_norm_eps": None if eps == text["layer_norm_eps"] else eps,
    }


# =============================================================================================== official -> grainvl
def load_official(
    checkpoint: str | Path | Mapping[str, Tensor],
    fmt: str = "official-x2vlm",
    config: str | Path | Mapping[str, Any] | None = None,
    text_config: str | Path | Mapping[str, Any] | None = None,
    strict: bool = True,
    name: str = "converted",
    cross_config: str | Path | Mapping[str, Any] | None = None,
) -> tuple[XVLM, ConversionReport]:
    """An official checkpoint (file or state dict) as a grainvl :class:`XVLM` in eval mode, plus the report.

    ``config``: the official YAML (path or dict); ``text_config``: the BERT/RoBERTa ``config.json``;
    ``cross_config``: the CrossViewLM cross encoder's own BERT ``config.json`` (``official-cclm``).
    ``official-cclm`` takes both CCLM layouts, told apart by their keys (xvlm.md §7.13): X²-VLM's
    CrossViewLM (``cross_encoder.*``) and the CCLM repo's single stack (``text_encoder.bert.*``, BERT
    position ids over XLM-R's table).
    Strict: any missing, unexpected or mis-shaped key raises :class:`ConversionError` naming all of them.
    """
    if fmt not in OFFICIAL_FORMATS:
        raise ValueError(f"format must be one of {OFFICIAL_FORMATS}, got {fmt!r}")
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state dict"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    yaml_config = read_official_config(config) if isinstance(config, (str, Path)) else config
    hf_config = read_json_config(text_config) if isinstance(text_config, (str, Path)) else text_config
    cross_hf = read_json_config(cross_config) if isinstance(cross_config, (str, Path)) else cross_config
    _refuse_unsupported_config(yaml_config or {}, str(config) if isinstance(config, (str, Path)) else "config")
    variant = detect_vision_variant(raw, source)
    _check_config_variant(yaml_config or {}, variant, source)
    trained = swin_trained_resolution(raw) if variant == "swin" else None
    if trained is not None and "image_res" not in (yaml_config or {}):
        yaml_config = {**(yaml_config or {}), "image_res": trained}
    layout = detect_text_layout(raw)
    report = ConversionReport(source=source, format=fmt, layout=layout)
    state = {}
    for key, value in raw.items():
        new = official_key_to_grainvl(key, layout)
        if new is not None:
            state[new] = value
    model_config = official_config(
        state, fmt, yaml_config, hf_config, name, source, report.notes, key_layout=layout, cross_config=cross_hf
    )
    model = XVLM(model_config).eval()
    load_into(model, state, report, strict, swin_resize=official_swin_resize(fmt, layout))
    return model, report


def official_swin_resize(fmt: str, layout: str) -> WindowResize:
    """How the official loader of ``fmt`` resizes Swin tables: X-VLM and the CCLM repo fit ``interp2d`` on a
    geometric grid; X²-VLM's code (``official-x2vlm`` and the CrossViewLM) uses ``load_pretrained_swin``'s
    torch bicubic."""
    x2vlm_code = fmt == "official-x2vlm" or (fmt == "official-cclm" and layout == "cclm")
    return "bicubic" if x2vlm_code else "geometric"


def _refuse_unsupported_config(yaml_config: Mapping[str, Any], source: str) -> None:
    """An official YAML that selects Swin-v2 is refused before any weight is read."""
    if yaml_config.get("use_swin_v2"):
        raise UnsupportedVariant(
            source, ["use_swin_v2: True selects a Swin-v2 vision encoder, which no grainvl tower can represent"]
        )


def _check_config_variant(yaml_config: Mapping[str, Any], variant: str, source: str) -> None:
    """The YAML's ``use_swin`` / ``use_clip_vit`` / ``use_beit_v2`` must name the tower the weights hold."""
    for flag, kind in (("use_swin", "swin"), ("use_clip_vit", "clip_vit"), ("use_beit_v2", "beit2")):
        if yaml_config.get(flag) and variant != kind:
            raise ConversionError(source, [f"config {flag}: True but the checkpoint's vision encoder is {variant!r}"])


def load_into(
    model: nn.Module,
    state: dict[str, Tensor],
    report: ConversionReport,
    strict: bool,
    swin_resize: WindowResize = "geometric",
) -> None:
    """Load grainvl-named ``state`` into ``model`` after checking every key and shape (see module doc);
    ``swin_resize``: which official loader's Swin table resize to reproduce."""
    own = model.state_dict()
    state = _resize_positions(state, own, report, swin_resize)
    tied = _tied_aliases(model)
    for alias, target in tied.items():
        if alias in state and target in state and not torch.equal(state[alias], state[target]):
            report.mismatched.append(f"{alias}: differs from {target}, which grainvl ties it to")
        elif alias in state and target not in state:
            state[target] = state[alias]
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    derived = {k for k in own if k.endswith(_DERIVED)}
    report.missing = sorted(k for k in own if k not in state and k not in tied and k not in derived)
    report.unexpected = sorted(k for k in state if k not in own)
    report.check(strict)
    loadable = {k: v for k, v in state.items() if k in own and k not in tied}
    model.load_state_dict(loadable, strict=False)


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    """``alias -> parameter name`` for parameters reachable under two names (the tied MLM decoder)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _resize_positions(
    state: dict[str, Tensor], own: Mapping[str, Tensor], report: ConversionReport, swin_resize: WindowResize
) -> dict[str, Tensor]:
    """Interpolate relative position tables / ``pos_embed`` whose grid differs from the model's, as the official
    loaders do: BEiT tables the BEiT-v2 way (exact), Swin tables by ``swin_resize``, ``pos_embed`` bicubically."""
    out = dict(state)
    for key, value in state.items():
        target = own.get(key)
        if target is None or target.shape == value.shape:
            continue
        if ".layers." in key and key.endswith("relative_position_bias_table") and value.dim() == 2:
            old, new = window_from_table(value.shape[0]), window_from_table(target.shape[0])
            out[key] = interpolate_window_bias(value, old, new, swin_resize)
            report.resized.append(f"{key}: window {old} -> {new} ({swin_resize})")
        elif key.endswith("pos_embed.weight") and value.dim() == 2 and value.shape[-1] == target.shape[-1]:
            side = math.isqrt(target.shape[0] - 1)
            out[key] = resize_pos_embed(value[None], (side, side))[0]  # CLIP-ViT's nn.Embedding rows
            report.resized.append(f"{key}: {value.shape[0]} -> {target.shape[0]} positions")
        elif key.endswith("relative_position_bias_table") and value.dim() == 2 and value.shape[1] == target.shape[1]:
            old = (math.isqrt(value.shape[0] - 3) + 1) // 2
            new = (math.isqrt(target.shape[0] - 3) + 1) // 2
            out[key] = interpolate_rel_pos_bias(value, old, new)
            report.resized.append(f"{key}: {old}x{old} -> {new}x{new} grid")
        elif key.endswith("pos_embed") and value.dim() == 3 and value.shape[-1] == target.shape[-1]:
            patch = own[key.replace("pos_embed", "patch_embed.proj.weight")].shape[-1]
            side = math.isqrt(target.shape[1] - 1)
            out.update({key: resize_state_dict({"pos_embed": value}, side * patch, patch)["pos_embed"]})
            report.resized.append(f"{key}: {value.shape[1]} -> {target.shape[1]} positions")
    return out


# =============================================================================================== grainvl -> official
def to_official(model: XVLM, fmt: str = "official-x2vlm", layout: str = "pretrain") -> dict[str, Tensor]:
    """The state dict the official code builds for this model (key for key, derived buffers included).

    ``layout``: ``"pretrain"`` (``text_encoder.bert.*`` + ``text_encoder.cls.*``, official
    ``model_pretrain.XVLM``), ``"finetune"`` (``text_encoder.*``, no MLM head) or ``"roberta"``
    (``text_encoder.roberta.*`` + ``lm_head``). ``official-cclm`` writes a ``cross`` model as X²-VLM's
    CrossViewLM (``layout`` unused) and a ``single`` one as the CCLM repo's stack (pretrain or finetune).
    Tied tensors are stored under both names, as ``state_dict()`` does.
    """
    if fmt not in OFFICIAL_FORMATS:
        raise ValueError(f"format must be one of {OFFICIAL_FORMATS}, got {fmt!r}")
    _check_official_text(model.config.text, fmt, layout)
    cross = model.config.text.layout == "cross"
    if model.config.vision.kind not in OFFICIAL_VISION_KINDS or model.config.video_encoding != "avgpool":
        raise ValueError(
            f"only {'/'.join(OFFICIAL_VISION_KINDS)} towers with 'avgpool' video encoding have an official layout"
        )
    if model.config.box_head != "mlp":
        raise ValueError(f"box_head {model.config.box_head!r} is our extension; only 'mlp' has an official layout")
    layout = "cclm" if cross else layout
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        new = grainvl_key_to_official(key, layout)
        if new is not None:
            out[new] = value.detach().clone()
    embeddings = (
        "text_encoder.embeddings."
        if layout in ("cclm", "finetune")
        else ("text_encoder.roberta.embeddings." if layout == "roberta" else "text_encoder.bert.embeddings.")
    )
    out[embeddings + "position_ids"] = torch.arange(model.config.text.max_position_embeddings)[None]
    return out


def _check_official_text(text: TextConfig, fmt: str, layout: str) -> None:
    """Refuse a text tower the official code of ``fmt`` / ``layout`` would number or build differently."""
    cross = text.layout == "cross"
    if cross and fmt != "official-cclm":
        raise ValueError(f"a model with text layout 'cross' (a CrossViewLM) cannot be written as {fmt}")
    if cross:
        return
    if layout not in ("pretrain", "finetune", "roberta"):
        raise ValueError(f"layout must be pretrain, finetune or roberta, got {layout!r}")
    if layout == "roberta" and not text.roberta_positions:
        raise ValueError("layout 'roberta' (text_encoder.roberta.*) needs a text tower with RoBERTa positions")
    if text.roberta_positions and (layout == "pretrain" or fmt == "official-cclm"):
        # text_encoder.bert.* and every CCLM-repo checkpoint are xbert's BertModel: positions 0..L-1 (xvlm.md §7.13).
        raise ValueError(
            f"{fmt} layout {layout!r} is the official xbert BertModel, which numbers positions 0..L-1; this model "
            "has RoBERTa positions: write it with --layout roberta (official-xvlm / official-x2vlm)"
        )


def to_official_config(config: XVLMConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(official YAML keys, BERT/RoBERTa ``config.json``) describing ``config``: the inverse of :func:`official_config`.

    The YAML holds the model keys of ``configs/pretrain/*.yaml`` (data and optimiser keys are the
    user's); ``text_encoder`` is a placeholder path whose name carries ``roberta`` when the official
    code must build RoBERTa/XLM-R embeddings. The JSON carries X-VLM's ``fusion_layer`` and
    ``encoder_width`` as ``configs/config_bert.json`` does.
    """
    text, vision = config.text, config.vision
    roberta = text.roberta_positions
    yaml_config: dict[str, Any] = {
        "use_beit_v2": vision.kind == "beit2",
        "use_swin": vision.kind == "swin",
        "use_clip_vit": vision.kind == "clip_vit",
        "vision_config": f"configs/config_{vision.kind}_{vision.width}.json",
        "image_res": vision.resolution,
        "patch_size": vision.patch_size,
        "text_encoder": "data/xlm-roberta" if roberta else "data/bert-base-uncased",
        "text_num_hidden_layers": text.num_layers,
        "embed_dim": config.embed_dim,
        "temp": config.temp,
        "max_tokens": config.max_tokens,
        "max_words": config.max_tokens,
    }
    if vision.kind == "swin":  # the official vision JSON's keys, inline (the YAML's vision_config names that file)
        yaml_config.update(window_size=vision.window_size, depths=vision.depths, num_heads=vision.stage_heads)
    elif vision.kind == "clip_vit":
        yaml_config.update(num_attention_heads=vision.heads, hidden_act="quick_gelu")
    if text.layout == "cross":
        yaml_config.update(model_type="CrossViewLM", cross_encoder="data/bert-base-uncased")
        yaml_config["cross_num_hidden_layers"] = text.cross_layers
    else:
        yaml_config["text_fusion_start_at"] = text.fusion_start
    if config.add_frame_pos:
        yaml_config.update(frame_len=config.frame_len, add_frame_pos=True, video_encoding=config.video_encoding)
    bert = {
        "architectures": ["XLMRobertaForMaskedLM" if roberta else "BertForMaskedLM"],
        "model_type": "xlm-roberta" if roberta else "bert",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_layers,
        "num_attention_heads": text.num_heads,
        "intermediate_size": text.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": text.hidden_dropout,
        "attention_probs_dropout_prob": text.attention_dropout,
        "max_position_embeddings": text.max_position_embeddings,
        "type_vocab_size": text.type_vocab_size,
        "initializer_range": text.initializer_range,
        "layer_norm_eps": text.layer_norm_eps,
        "pad_token_id": text.pad_token_id,
        "fusion_layer": text.fusion_start,
        "encoder_width": text.encoder_width,
    }
    return yaml_config, bert


def to_official_cross_config(config: XVLMConfig) -> dict[str, Any] | None:
    """The BERT ``config.json`` of a CrossViewLM's cross encoder (the official ``cross_encoder`` path's file,
    read by ``--cross-config``); None for a single-stack model."""
    text = config.text
    if text.layout != "cross":
        return None
    cross = text.cross_encoder_config()
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": text.vocab_size,
        "hidden_size": cross.hidden_size,
        "num_hidden_layers": text.cross_layers,
        "num_attention_heads": cross.num_heads,
        "intermediate_size": cross.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": cross.hidden_dropout,
        "attention_probs_dropout_prob": cross.attention_dropout,
        "max_position_embeddings": text.max_position_embeddings,
        "type_vocab_size": text.type_vocab_size,
        "initializer_range": cross.initializer_range,
        "layer_norm_eps": cross.layer_norm_eps,
        "pad_token_id": text.pad_token_id,
    }


def official_config_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """``(<stem>.yaml, <stem>_config_bert.json, <stem>_config_cross.json)``: what :func:`save_official` writes
    beside ``path`` (the cross JSON only for a CrossViewLM)."""
    path = Path(path)
    return (
        path.with_suffix(".yaml"),
        path.with_name(path.stem + "_config_bert.json"),
        path.with_name(path.stem + "_config_cross.json"),
    )


def save_official(model: XVLM, path: str | Path, fmt: str = "official-x2vlm", layout: str = "pretrain") -> Path:
    """Write ``{'model': state_dict}`` (``.th``/``.pth``: what ``torch.load`` + the official loader read) or a
    safetensors file (by suffix), atomically, plus ``<stem>.yaml`` and ``<stem>_config_bert.json``
    (:func:`to_official_config`) next to it, and for a CrossViewLM ``<stem>_config_cross.json``
    (:func:`to_official_cross_config`, the ``--cross-config`` of the way back)."""

    path = Path(path)
    state = to_official(model, fmt, layout)
    yaml_config, bert = to_official_config(model.config)
    yaml_path, bert_path, cross_path = official_config_paths(path)
    atomic_write_text(yaml_path, yaml.safe_dump(yaml_config, sort_keys=False))
    atomic_write_text(bert_path, json.dumps(bert, indent=2))
    cross = to_official_cross_config(model.config)
    if cross is not None:
        atomic_write_text(cross_path, json.dumps(cross, indent=2))
    if path.suffix == ".safetensors":
        save_model_safetensors(path, state)
        return path
    with atomic_file(path) as tmp:
        torch.save({"model": state}, tmp)
    return path


# =============================================================================================== Hugging Face towers
_HF_BERT_IGNORED = ("pooler.", "cls.", "lm_head.", "classifier.", "qa_outputs.")
_HF_SHARED_TABLE = "encoder.relative_position_bias.relative_position_bias_table"  # BEiT's shared table
_HF_VISION_IGNORED = ("pooler.dense.", "classifier.", "lm_head.", "embeddings.mask_token", "decoder.")


def load_hf_tower(
    fmt: str, folder: str | Path, strict: bool = True
) -> tuple[nn.Module, TextConfig | VisionConfig, ConversionReport]:
    """A Hugging Face folder (``config.json`` + weights) as a grainvl tower in eval mode.

    ``hf-bert`` / ``hf-xlmr`` -> :class:`BertEncoderModel` (pooler and heads ignored, listed);
    ``hf-vit`` -> ``PlainViT``; ``hf-beit`` -> ``BeitV2`` (needs ``use_mean_pooling`` and no absolute
    position embedding; a shared relative position table is copied into every block, as the official
    BEiT-v2 loader does). q/k/v are fused into ``qkv``.
    """
    if fmt not in HF_FORMATS:
        raise ValueError(f"format must be one of {HF_FORMATS}, got {fmt!r}")
    folder = Path(folder)
    hf_config = read_json_config(folder)
    report = ConversionReport(source=str(folder), format=fmt)
    raw = read_hf_state_dict(folder)
    builders: dict[str, Callable[..., tuple[nn.Module, Any, dict[str, Tensor]]]] = {
        "hf-bert": _hf_text,
        "hf-xlmr": _hf_text,
        "hf-vit": _hf_vision,
        "hf-beit": _hf_vision,
    }
    module, config, state = builders[fmt](fmt, hf_config, raw, report)
    load_into(module, state, report, strict)
    return module.eval(), config, report


def _hf_text(
    fmt: str, hf: dict[str, Any], raw: dict[str, Tensor], report: ConversionReport
) -> tuple[nn.Module, TextConfig, dict[str, Tensor]]:
    model_type = hf.get("model_type")
    wanted = ("bert",) if fmt == "hf-bert" else ("xlm-roberta", "roberta")
    if model_type not in wanted:
        raise ConversionError(
            report.source, [f"config.json model_type {model_type!r} is not {' or '.join(wanted)} (format {fmt})"]
        )
    config = TextConfig.from_hf_config(hf)
    state, other = normalise_hf_bert_keys(raw)
    report.ignored = sorted(
        k for k in other if k.startswith(_HF_BERT_IGNORED) or k.split(".", 1)[-1].startswith(_HF_BERT_IGNORED)
    )
    report.unexpected = sorted(set(other) - set(report.ignored))
    for key in report.unexpected:
        state[key] = raw[key]  # reported by load_into
    return BertEncoderModel(config), config, state


def _strip_prefix(raw: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    out = {}
    for key, value in raw.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def _hf_vision(
    fmt: str, hf: dict[str, Any], raw: dict[str, Tensor], report: ConversionReport
) -> tuple[nn.Module, VisionConfig, dict[str, Tensor]]:
    beit = fmt == "hf-beit"
    expected_type = "beit" if beit else "vit"
    problems = []
    if hf.get("model_type") != expected_type:
        problems.append(f"config.json model_type {hf.get('model_type')!r} is not {expected_type!r}")
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {hf.get('hidden_act')!r}: only exact 'gelu' is supported")
    if hf.get("num_channels", 3) != 3:
        problems.append("only 3-channel images are supported")
    if beit and hf.get("use_absolute_position_embeddings", False):
        problems.append("use_absolute_position_embeddings: grainvl's BEiT tower has relative position bias only")
    if beit and not hf.get("use_mean_pooling", True):
        problems.append("use_mean_pooling=False: grainvl's BEiT tower always reads fc_norm(patches) (pooler.layernorm)")
    if not beit and not hf.get("qkv_bias", True):
        problems.append("qkv_bias=False is not supported by the ViT tower")
    if problems:
        raise ConversionError(report.source, problems)
    width = hf["hidden_size"]
    config = VisionConfig(
        kind="beit2" if beit else "vit",
        resolution=int(hf["image_size"]),
        patch_size=int(hf["patch_size"]),
        width=width,
        depth=hf["num_hidden_layers"],
        heads=hf["num_attention_heads"],
        mlp_ratio=hf["intermediate_size"] / width,
        drop_path_rate=0.0,
        init_values=float(hf.get("layer_scale_init_value", 0.1)) if beit else 0.0,
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
    )
    raw = _strip_prefix(raw, ("beit.", "vit."))
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        new = _hf_vision_key(key, beit)
        if new is None:
            if key.startswith(_HF_VISION_IGNORED):
                report.ignored.append(key)
            elif not key.endswith("relative_position_index") and not (beit and key == _HF_SHARED_TABLE):
                state[key] = value  # reported as unexpected
        else:
            state[new] = value
    _fuse_qkv(state, config.depth, beit)
    shared = raw.get(_HF_SHARED_TABLE)
    if beit and shared is not None:
        report.notes.append("shared relative position table copied into every block (official BEiT-v2 loader)")
        for i in range(config.depth):
            state[f"blocks.{i}.attn.relative_position_bias_table"] = shared.clone()
    return build_vision_tower(config), config, state


_HF_VISION_BLOCK = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "lambda_1": "gamma_1",
    "lambda_2": "gamma_2",
    "attention.attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.attention.query.": "attn.q.",  # fused into qkv by _fuse_qkv
    "attention.attention.key.": "attn.k.",
    "attention.attention.value.": "attn.v.",
}


def _hf_vision_key(key: str, beit: bool) -> str | None:
    """Hugging Face ViT/BEiT on-disk name -> grainvl tower name (q/k/v kept apart for fusing)."""
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
        "pooler.layernorm.weight": "fc_norm.weight",
        "pooler.layernorm.bias": "fc_norm.bias",
    }
    if key in fixed:
        return fixed[key]
    match = re.match(r"encoder\.layer\.(\d+)\.(.+)", key)
    if not match:
        return None
    index, rest = match.groups()
    for old, new in _HF_VISION_BLOCK.items():
        if rest.startswith(old):
            return f"blocks.{index}.{new}{rest[len(old) :]}"
    return None


def _fuse_qkv(state: dict[str, Tensor], depth: int, beit: bool) -> None:
    """``attn.{q,k,v}.*`` -> ``attn.qkv.weight`` (+ ``qkv.bias`` for ViT, ``q_bias``/``v_bias`` for BEiT)."""
    for i in range(depth):
        p = f"blocks.{i}.attn."
        names = [p + part + ".weight" for part in "qkv"]
        if not all(n in state for n in names):
            continue  # reported as missing qkv.weight
        state[p + "qkv.weight"] = torch.cat([state.pop(n) for n in names])  # (3D, D)
        if beit:
            state[p + "q_bias"] = state.pop(p + "q.bias")
            state[p + "v_bias"] = state.pop(p + "v.bias")
            # BEiT has no key bias; a stray one would change nothing (softmax is shift-invariant per query).
            stray = state.pop(p + "k.bias", None)
            if stray is not None and stray.abs().max() > 0:
                state[p + "k.bias"] = stray  # reported as unexpected
        else:
            state[p + "qkv.bias"] = torch.cat([state.pop(p + part + ".bias") for part in "qkv"])


def to_hf_tower(
    module: nn.Module, config: TextConfig | VisionConfig, fmt: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict in the Hugging Face on-disk layout, ``config.json`` dict) of a grainvl tower.

    Text towers export their text-only layers ``[0, fusion_start)`` (transformers' BertModel cannot
    hold cross-attention in only some layers).
    """
    if fmt in ("hf-bert", "hf-xlmr"):
        assert isinstance(config, TextConfig)
        return _to_hf_text(module, config, fmt)
    if fmt in ("hf-vit", "hf-beit"):
        assert isinstance(config, VisionConfig)
        if config.kind != ("beit2" if fmt == "hf-beit" else "vit"):
            raise ValueError(f"a {config.kind!r} tower cannot be written as {fmt}")
        return _to_hf_vision(module, config, fmt == "hf-beit")
    raise ValueError(f"format must be one of {HF_FORMATS}, got {fmt!r}")


def _to_hf_text(module: nn.Module, config: TextConfig, fmt: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if (fmt == "hf-xlmr") != config.roberta_positions:
        raise ValueError(f"{fmt} needs roberta_positions={fmt == 'hf-xlmr'}")
    layers = config.fusion_start
    state = {}
    for key, value in module.state_dict().items():
        match = re.match(r"encoder\.layer\.(\d+)\.", key)
        if match and int(match.group(1)) >= layers:
            continue
        state[key] = value.detach().clone()
    hf = {
        "architectures": ["XLMRobertaModel" if fmt == "hf-xlmr" else "BertModel"],
        "model_type": "xlm-roberta" if fmt == "hf-xlmr" else "bert",
        **hf_bert_dims(config, layers),
    }
    return state, hf


def _to_hf_vision(module: nn.Module, config: VisionConfig, beit: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    inverse_fixed = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
        "fc_norm.weight": "pooler.layernorm.weight",
        "fc_norm.bias": "pooler.layernorm.bias",
    }
    inverse_block = {v: k for k, v in _HF_VISION_BLOCK.items()}
    state: dict[str, Tensor] = {}
    for key, value in module.state_dict().items():
        value = value.detach().clone()
        if key in inverse_fixed:
            state[inverse_fixed[key]] = value
            continue
        match = re.match(r"blocks\.(\d+)\.(.+)", key)
        assert match, key
        index, rest = match.groups()
        head = f"encoder.layer.{index}."
        if rest.endswith("relative_position_index"):
            continue
        if rest == "attn.qkv.weight":
            for part, chunk in zip("qkv", value.chunk(3)):
                state[head + inverse_block[f"attn.{part}."] + "weight"] = chunk.clone()
        elif rest == "attn.qkv.bias":
            for part, chunk in zip("qkv", value.chunk(3)):
                state[head + inverse_block[f"attn.{part}."] + "bias"] = chunk.clone()
        elif rest in ("attn.q_bias", "attn.v_bias"):
            state[head + inverse_block[f"attn.{rest[5]}."] + "bias"] = value
        else:
            old = next(o for o in inverse_block if rest.startswith(o))
            state[head + inverse_block[old] + rest[len(old) :]] = value
    hf: dict[str, Any] = {
        "architectures": ["BeitModel" if beit else "ViTModel"],
        "model_type": "beit" if beit else "vit",
        "image_size": config.resolution,
        "patch_size": config.patch_size,
        "num_channels": 3,
        "hidden_size": config.width,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.heads,
        "intermediate_size": int(config.width * config.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": config.layer_norm_eps,
        "qkv_bias": True,
    }
    if beit:
        hf.update(
            use_absolute_position_embeddings=False,
            use_relative_position_bias=True,
            use_shared_relative_position_bias=False,
            use_mean_pooling=True,
            layer_scale_init_value=config.init_values,
            drop_path_rate=0.0,
        )
    return state, hf


def save_hf_tower(
    module: nn.Module, config: TextConfig | VisionConfig, fmt: str, folder: str | Path, overwrite: bool = False
) -> Path:
    """Write a Hugging Face folder (``config.json`` + ``model.safetensors``) that transformers loads; assembled
    beside ``folder`` and swapped in (a non-empty folder that is not a model folder only with ``overwrite``)."""

    folder = Path(folder)
    state, hf = to_hf_tower(module, config, fmt)
    with staged_dir(folder, overwrite=overwrite, replaceable=is_grainvl_folder) as staged:
        save_model_safetensors(staged / "model.safetensors", state)
        atomic_write_text(staged / "config.json", json.dumps(hf, indent=2))
    return folder


# =============================================================================================== grainvl tower folders
def save_tower(
    module: nn.Module,
    config: TextConfig | VisionConfig,
    folder: str | Path,
    source_format: str = "",
    overwrite: bool = False,
) -> Path:
    """A grainvl tower folder: ``config.json`` (``{"grainvl_tower": "text"|"vision", "config": ...}``) + weights,
    assembled beside ``folder`` and swapped in (a non-empty folder that is not a model folder only with
    ``overwrite``)."""

    folder = Path(folder)
    kind = "text" if isinstance(config, TextConfig) else "vision"
    payload = {TOWER_FILE_KEY: kind, "source_format": source_format, "config": dataclasses.asdict(config)}
    with staged_dir(folder, overwrite=overwrite, replaceable=is_grainvl_folder) as staged:
        save_model_safetensors(staged / "model.safetensors", module.state_dict())
        atomic_write_text(staged / "config.json", json.dumps(payload, indent=2))
    return folder


def load_tower(folder: str | Path) -> tuple[nn.Module, TextConfig | VisionConfig]:
    """Read a folder written by :func:`save_tower` (strict load)."""

    folder = Path(folder)
    payload = read_json_config(folder)
    kind = payload.get(TOWER_FILE_KEY)
    if kind not in ("text", "vision"):
        raise DataError(folder / "config.json", None, "not a grainvl tower folder (no 'grainvl_tower' entry)")
    config: TextConfig | VisionConfig
    if kind == "text":
        config = TextConfig(**payload["config"])
        module: nn.Module = BertEncoderModel(config)
    else:
        config = VisionConfig(**payload["config"])
        module = build_vision_tower(config)
    module.load_state_dict(load_model_safetensors(folder / "model.safetensors"), strict=True)
    return module.eval(), config


def model_tower(model: XVLM, fmt: str) -> tuple[nn.Module, TextConfig | VisionConfig]:
    """The tower of a converted :class:`XVLM` that ``fmt`` (an ``hf-*`` format) describes."""
    if fmt in ("hf-bert", "hf-xlmr"):
        return model.bert, model.bert.config
    return model.vision_encoder, model.config.vision


__all__ = [
    "FORMATS",
    "HF_FORMATS",
    "OFFICIAL_FORMATS",
    "OFFICIAL_VISION_KINDS",
    "ConversionError",
    "ConversionReport",
    "UnsupportedVariant",
    "detect_text_layout",
    "detect_vision_variant",
    "grainvl_key_to_official",
    "load_hf_tower",
    "load_official",
    "load_tower",
    "model_tower",
    "official_config",
    "official_config_paths",
    "official_key_to_grainvl",
    "official_swin_resize",
    "read_checkpoint",
    "read_json_config",
    "read_official_config",
    "save_hf_tower",
    "save_official",
    "save_tower",
    "swin_trained_resolution",
    "to_hf_tower",
    "to_official",
    "to_official_config",
    "to_official_cross_config",
]


@dataclass
class ConvertConfig:
    """``grainvl convert``: an import (``source_format`` set) or an export (``target_format`` set)."""

    input: str  # checkpoint file (.th/.pth/.safetensors) or folder
    output: str  # folder (import, export to hf-*) or checkpoint file (export to official-*)
    source_format: str | None = None  # official-x2vlm, official-xvlm, official-cclm, hf-bert, hf-xlmr, hf-vit, hf-beit
    target_format: str | None = None  # the same formats, written from a grainvl folder
    official_config: str | None = None  # official config YAML (image_res, text layers, text_encoder path ...)
    text_config: str | None = None  # BERT/RoBERTa config.json of the official text encoder
    cross_config: str | None = None  # official-cclm CrossViewLM: the cross encoder's own BERT config.json
    tokenizer: str | None = None  # tokenizer folder copied into the output
    layout: str = "pretrain"  # export of a single stack: pretrain, finetune or roberta (not official-cclm) key layout
    strict: bool = True  # fail on missing/unexpected keys (mis-shaped keys always fail)
    name: str = "converted"  # model name stored in config.json
    overwrite: bool = False  # replace an output folder that is not empty and not a model folder

    def __post_init__(self) -> None:
        if (self.source_format is None) == (self.target_format is None):
            raise ValueError("convert needs exactly one of source_format (--from) and target_format (--to)")
