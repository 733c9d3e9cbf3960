"""X²-VLM: a modular multi-grained vision-language model (images, regions, video).

Layout (xvlm.md §0–§1): a vision tower whose token 0 is a mean-pooled "CLS"; a BERT whose first
``fusion_start`` layers encode text alone and whose last layers fuse text with vision tokens through
cross-attention (or, in the CCLM layout, a text encoder plus a separate cross encoder); ITC
projections with a learnable temperature, an ITM head, a tied MLM head and a box head.

Module names follow the official pre-training checkpoint (``vision_encoder.*``,
``text_encoder.bert.*``, ``text_encoder.cls.*``, ``vision_proj``, ``text_proj``, ``itm_head``,
``bbox_head``, ``temp``, ``absolute_frame_pos_embed``) so that conversion is a documented key map.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grainvl.data.region import region_features
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path, resolve_tokenizer_folder, shared_token_rows
from grainvl.models.layers import SharedTokens
from grainvl.models.text import (
    BertEncoderModel,
    CrossEncoder,
    MLMHead,
    TextConfig,
    copy_embedding_rows,
    load_hf_bert,
)
from grainvl.models.vision import VisionConfig, build_vision_tower
from grainvl.utils.fileio import (
    atomic_write_text,
    is_grainvl_folder,
    load_model_safetensors,
    save_model_safetensors,
    staged_dir,
)

# Query/key size of the attention box head (``box_head="attention"``, our extension).
BOX_ATTENTION_DIM = 128
# The pre-training objective sets a config may name (``XVLMConfig.objectives``).
OBJECTIVES = ("xvlm", "cclm")


def build_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """The official head MLP: Linear(in, 2in) -> LayerNorm -> GELU -> Linear(2in, out) (indices 0, 1, 3)."""
    return nn.Sequential(
        nn.Linear(in_dim, 2 * in_dim), nn.LayerNorm(2 * in_dim), nn.GELU(), nn.Linear(2 * in_dim, out_dim)
    )


@dataclass
class XVLMConfig:
    """Architecture of one X²-VLM variant; serialised as ``config.json`` next to the weights."""

    name: str
    vision: VisionConfig
    text: TextConfig
    embed_dim: int = 256  # ITC projection size
    temp: float = 0.07  # initial ITC temperature, clamped to [0.001, 0.5]
    frame_len: int = 3  # frames per video in pre-training
    add_frame_pos: bool = True
    video_encoding: str = "avgpool"  # "avgpool" (official) or "temporal_attention" (our extension, off by default)
    text_init: str | None = None  # "minilm" (the packaged all-MiniLM-L6-v2) or a local Hugging Face BERT folder
    # "minilm", a packaged tokenizer ("world-multilingual", data/tokenizers/) or a local tokenizer folder;
    # "" = the model folder's own tokenizer files (see data.tokenization.resolve_tokenizer_folder).
    tokenizer: str = "minilm"
    # Which pre-training the model is made for: "xvlm" (X²-VLM's image/region/video losses) or "cclm"
    # (CCLM's cross-view losses, which add parallel text); ``grainvl pretrain`` reads it.
    objectives: str = "xvlm"
    max_tokens: int = 40
    # "mlp" (official: bbox_head(CLS).sigmoid()) or "attention" (our extension, see ``predict_box``).
    box_head: str = "mlp"

    def __post_init__(self) -> None:
        if self.objectives not in OBJECTIVES:
            raise ValueError(f"objectives must be one of {OBJECTIVES}, got {self.objectives!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> XVLMConfig:
        d = dict(d)
        d["vision"] = VisionConfig(**d["vision"])
        d["text"] = TextConfig(**d["text"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown XVLMConfig keys {unknown}")
        return cls(**d)


class TextEncoderForMLM(nn.Module):
    """``text_encoder.bert`` + ``text_encoder.cls``: the official BertForMaskedLM layout."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.bert = BertEncoderModel(cfg)
        self.cls = MLMHead(cfg)
        self.cls.tie_weights(self.bert.embeddings)


class TemporalAttention(nn.Module):
    """Our extension (not in X²-VLM): one self-attention layer over frames at each token position.

    The official video path averages frames per patch, so frame order is invisible to it
    (xvlm.md §1.3). This optional layer lets a token attend across time before the same mean.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, F, T, D)
        b, f, t, d = x.shape
        seq = x.permute(0, 2, 1, 3).reshape(b * t, f, d)  # (B*T, F, D): attend across frames
        h = self.norm(seq)
        seq = seq + self.attn(h, h, h, need_weights=False)[0]
        return seq.reshape(b, t, f, d).permute(0, 2, 1, 3)


@dataclass
class Features:
    """Outputs of :meth:`XVLM.extract_features`.

    image_embeds: (B, 1+N, Dv) vision tokens; text_embeds: (B, L, H) text-only states;
    image_feat / text_feat: (B, embed_dim) L2-normalised ITC features; fused: (B, L, H) fusion states.
    """

    image_embeds: torch.Tensor | None = None
    image_atts: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_feat: torch.Tensor | None = None
    text_feat: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class XVLM(nn.Module):
    """The X²-VLM model (X-VLM family); see the module docstring for the layout."""

    def __init__(self, config: XVLMConfig) -> None:
        super().__init__()
        self.config = config
        # Pairs that repeat vision rows (ITM's 3B pairs, region texts) pass them as SharedTokens, whose
        # cross-attention K/V are projected once per distinct row (models/layers.py); False copies them.
        self.share_vision_rows = True
        self.vision_encoder = build_vision_tower(config.vision)
        vision_width, text_width = self.vision_encoder.width, config.text.hidden_size
        if config.text.encoder_width != vision_width:
            raise ValueError(f"text.encoder_width {config.text.encoder_width} != vision width {vision_width}")
        if config.text.layout == "cross":
            self.text_encoder = BertEncoderModel(dataclasses.replace(config.text, fusion_start=config.text.num_layers))
            self.cross_encoder = CrossEncoder(config.text)
            self.mlm_head = MLMHead(config.text)  # CCLM: untied decoder (xvlm.md §7.13)
        else:
            self.text_encoder = TextEncoderForMLM(config.text)
        self.vision_proj = nn.Linear(vision_width, config.embed_dim)
        self.text_proj = nn.Linear(text_width, config.embed_dim)
        self.temp = nn.Parameter(torch.tensor(config.temp))
        self.itm_head = build_mlp(text_width, 2)
        self.bbox_head = build_mlp(text_width, 4)
        if config.box_head == "attention":
            self.box_query = nn.Linear(text_width, BOX_ATTENTION_DIM)
            self.box_key = nn.Linear(vision_width, BOX_ATTENTION_DIM)
        elif config.box_head != "mlp":
            raise ValueError(f"box_head must be 'mlp' or 'attention', got {config.box_head!r}")
        if config.add_frame_pos:
            self.absolute_frame_pos_embed = nn.Parameter(torch.zeros(1, config.frame_len, 1, vision_width))
            nn.init.trunc_normal_(self.absolute_frame_pos_embed, std=0.02)
        if config.video_encoding == "temporal_attention":
            self.temporal = TemporalAttention(vision_width, config.vision.heads)
        elif config.video_encoding != "avgpool":
            raise ValueError(f"video_encoding must be 'avgpool' or 'temporal_attention', got {config.video_encoding!r}")
        for head in (self.vision_proj, self.text_proj, self.itm_head, self.bbox_head):
            head.apply(_init_linear)
        if config.box_head == "attention":
            self.box_query.apply(_init_linear)
            self.box_key.apply(_init_linear)

    # ------------------------------------------------------------------ towers
    @property
    def bert(self) -> BertEncoderModel:
        return self.text_encoder if self.config.text.layout == "cross" else self.text_encoder.bert

    @property
    def mlm(self) -> MLMHead:
        return self.mlm_head if self.config.text.layout == "cross" else self.text_encoder.cls

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B,3,R,R) -> (tokens (B,1+N,Dv), attention mask (B,1+N) of ones)."""
        tokens = self.vision_encoder(image)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)

    def encode_video(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B,F,3,R,R) -> (tokens (B,1+N,Dv), mask): frames encoded independently, then pooled per token."""
        b, f = video.shape[:2]
        tokens = self.vision_encoder(video.flatten(0, 1))  # (B*F, 1+N, D)
        tokens = tokens.reshape(b, f, *tokens.shape[1:])  # (B, F, 1+N, D)
        if self.config.add_frame_pos:
            if f > self.config.frame_len:
                raise ValueError(f"video has {f} frames but the model was built for frame_len={self.config.frame_len}")
            tokens = tokens + self.absolute_frame_pos_embed[:, :f]
        if self.config.video_encoding == "temporal_attention":
            tokens = self.temporal(tokens)
        tokens = tokens.mean(dim=1)  # (B, 1+N, D): X²-VLM's per-token average over frames
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)

    def encode_text(self, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """The text-only layers: (B,L) ids -> (B,L,H)."""
        return self.bert(text_ids, text_atts, mode="text")

    def fuse(
        self,
        text_embeds: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor | SharedTokens,
        image_atts: torch.Tensor,
    ) -> torch.Tensor:
        """The fusion layers from text-only states: (B,L,H) x (B,1+N,Dv) -> (B,L,H)."""
        if self.config.text.layout == "cross":
            return self.cross_encoder(text_embeds, text_atts, image_embeds, image_atts)
        return self.bert(
            None,
            text_atts,
            mode="fusion",
            inputs_embeds_for_fusion=text_embeds,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        )

    def encode_multimodal(
        self,
        text_ids: torch.Tensor,
        text_atts: torch.Tensor,
        image_embeds: torch.Tensor | SharedTokens,
        image_atts: torch.Tensor,
    ) -> torch.Tensor:
        """All layers (text then fusion) in one pass, as MLM does: (B,L) -> (B,L,H)."""
        return self.fuse(self.encode_text(text_ids, text_atts), text_atts, image_embeds, image_atts)

    # ------------------------------------------------------------------ heads
    def image_feat(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)  # (B, E)

    def text_feat(self, text_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)  # (B, E)

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        return self.itm_head(fused[:, 0])  # (B, 2); index 1 = match

    def predict_box(self, fused: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) fusion states of the region text against the whole image -> (B, 4) normalised (cx, cy, w, h).

        ``box_head="mlp"`` is X²-VLM's ``bbox_head(CLS).sigmoid()``. ``box_head="attention"`` is our
        extension for short CPU runs: the CLS attends over the (B, 1+N, Dv) ``image_embeds`` patches
        (``box_query`` · ``box_key``), the centre is the attention-weighted mean of the patch-cell
        centres plus a bounded offset (``tanh`` of ``bbox_head``'s first two outputs, at most half a
        cell), and width/height stay ``bbox_head``'s sigmoid outputs. Regressing coordinates from
        the CLS alone stayed at chance after 300 box-loss steps on the demo world, while this
        soft-argmax head reached 11.5% accuracy (prior 0.0%) from the same checkpoint (docs/models.md).
        """
        raw = self.bbox_head(fused[:, 0])  # (B, 4)
        if self.config.box_head == "mlp":
            return raw.sigmoid()
        if image_embeds is None:
            raise ValueError("box_head='attention' needs the image tokens: predict_box(fused, image_embeds)")
        patches = image_embeds[:, 1:]  # (B, N, Dv), row-major grid
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"box_head='attention' needs a square patch grid, got {patches.shape[1]} patches")
        logits = torch.einsum("bd,bnd->bn", self.box_query(fused[:, 0]), self.box_key(patches))
        weights = (logits / math.sqrt(BOX_ATTENTION_DIM)).softmax(dim=-1)  # (B, N)
        cells = (torch.arange(side, device=patches.device, dtype=patches.dtype) + 0.5) / side  # (side,)
        ys, xs = torch.meshgrid(cells, cells, indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()], dim=1)  # (N, 2) as (cx, cy)
        centre = weights @ centres + torch.tanh(raw[:, :2]) * (0.5 / side)  # (B, 2)
        return torch.cat([centre, raw[:, 2:].sigmoid()], dim=1)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm(hidden)  # (..., H) -> (..., vocab)

    def region_sequence(
        self, image_embeds: torch.Tensor, region_image_index: torch.Tensor, region_atts: torch.Tensor
    ) -> torch.Tensor:
        """Per-region visual sequence: token 0 = masked mean of the box patches (xvlm.md §2.4)."""
        return region_features(image_embeds, region_image_index, region_atts)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Keep the ITC temperature in [0.001, 0.5] after every optimizer step, as the official code does."""
        self.temp.clamp_(0.001, 0.5)

    # ------------------------------------------------------------------ public feature API
    def extract_features(self, batch: Mapping[str, torch.Tensor], mode: str = "multimodal") -> Features:
        """``mode``: "image" (needs batch["image"] or batch["video"]), "text" (text ids and mask) or "multimodal".

        The text may come as ``text_ids`` / ``text_atts`` (the datasets' keys) or as a Hugging Face tokenizer's
        ``input_ids`` / ``attention_mask``, so ``{"image": images, **tokenizer(texts, padding=True,
        return_tensors="pt")}`` works as it is; other tokenizer keys (``token_type_ids``) are ignored.
        """
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be image, text or multimodal, got {mode!r}")
        out = Features()
        if mode in ("image", "multimodal"):
            if "video" in batch:
                out.image_embeds, out.image_atts = self.encode_video(batch["video"])
            else:
                out.image_embeds, out.image_atts = self.encode_image(batch["image"])
            out.image_feat = self.image_feat(out.image_embeds)
        if mode in ("text", "multimodal"):
            text_ids, text_atts = text_inputs(batch)
            out.text_embeds = self.encode_text(text_ids, text_atts)
            out.text_feat = self.text_feat(out.text_embeds)
            if mode == "multimodal":
                out.fused = self.fuse(out.text_embeds, text_atts, out.image_embeds, out.image_atts)
        return out

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay besides biases and norms (the optimizer adds those)."""
        names = {"temp", "vision_encoder.cls_token", "vision_encoder.pos_embed", "absolute_frame_pos_embed"}
        names |= {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}
        return {n for n in names if n in dict(self.named_parameters())}

    def newly_initialised(self) -> list[str]:
        """Prefixes X²-VLM trains with ``lr_mult`` (2x): parameters not loaded from unimodal checkpoints."""
        prefixes = ["vision_proj.", "text_proj.", "itm_head.", "bbox_head.", "box_query.", "box_key.", "temp"]
        prefixes += [n for n, _ in self.named_parameters() if "crossattention" in n]
        return prefixes

    def set_shared_vision_rows(self, enable: bool = True) -> None:
        """Project repeated vision rows once in cross-attention (default on; off: the copying reference)."""
        self.share_vision_rows = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_encoder.set_grad_checkpointing(enable)
        self.bert.set_grad_checkpointing(enable)
        if self.config.text.layout == "cross":
            self.cross_encoder.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, overwrite: bool = False) -> Path:
        """``config.json`` + ``model.safetensors`` (+ tokenizer files), assembled beside ``directory`` and swapped in.

        A folder grainvl wrote (a model or run folder: ``fileio.is_grainvl_folder``) is replaced; any other non-empty
        folder only with ``overwrite``, since it was not ours to delete.
        """
        directory = Path(directory)
        with staged_dir(directory, overwrite=overwrite, replaceable=is_grainvl_folder) as staged:
            atomic_write_text(staged / "config.json", json.dumps(self.config.to_dict(), indent=2))
            save_model_safetensors(staged / "model.safetensors", self.state_dict())
            if tokenizer is not None:
                tokenizer.save_pretrained(staged)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, strict: bool = True) -> XVLM:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory}: no config.json (not a grainvl model folder)")
        config = XVLMConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        config = dataclasses.replace(
            config, text_init=None, vision=dataclasses.replace(config.vision, pretrained=False)
        )
        model = cls(config)
        state = load_model_safetensors(directory / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not _is_tied_alias(k)]
        if strict and (missing or unexpected):
            raise ValueError(f"{directory}: missing keys {missing[:10]}, unexpected keys {list(unexpected)[:10]}")
        return model


def text_inputs(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, attention mask) of a batch keyed ``text_ids`` / ``text_atts`` or ``input_ids`` / ``attention_mask``.

    The dataset keys win when both are present. A missing mask means every token counts; missing ids raise
    a one-line ValueError naming both accepted keys.
    """
    ids = next((batch[k] for k in ("text_ids", "input_ids") if k in batch), None)
    if ids is None:
        raise ValueError(
            f"the batch has no text: expected 'text_ids' (or a tokenizer's 'input_ids'), got keys {sorted(batch)}"
        )
    atts = next((batch[k] for k in ("text_atts", "attention_mask") if k in batch), None)
    return ids, torch.ones_like(ids) if atts is None else atts


def _is_tied_alias(key: str) -> bool:
    """The MLM decoder weight/bias are the word embeddings / predictions.bias under another name."""
    return key.endswith("predictions.decoder.weight") or key.endswith("predictions.decoder.bias")


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_text_from_pretrained(model: XVLM) -> dict[str, Any]:
    """Load the configured unimodal text checkpoint into the text tower (X²-VLM's init, xvlm.md §1.7).

    When the model's vocabulary is not the checkpoint's (the ``cclm-*`` presets' world-multilingual
    Unigram on MiniLM), the word-embedding table cannot load whole: the rows of tokens that the
    checkpoint's tokenizer also has (``data.tokenization.shared_token_rows``) are copied and the rest
    keep their random init. Only when the widths agree (MiniLM: 384); otherwise the table stays random.
    -> ``missing`` / ``unexpected`` keys and ``word_rows_copied`` of ``word_rows``.
    """
    source = model.config.text_init
    if source is None:
        return {"missing": [], "unexpected": [], "word_rows_copied": 0, "word_rows": model.config.text.vocab_size}
    folder = _resolve_hf_folder(source)
    text = model.config.text
    _, loaded, report = load_hf_bert(
        folder,
        num_layers=text.num_layers if text.layout == "single" else None,
        fusion_start=text.fusion_start,
        encoder_width=text.encoder_width,
    )
    own, theirs = model.bert.state_dict(), loaded.state_dict()
    compatible = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    model.bert.load_state_dict(compatible, strict=False)
    copied = text.vocab_size if _WORD_TABLE in compatible else _copy_shared_rows(model, folder, theirs[_WORD_TABLE])
    return {
        "missing": sorted(set(own) - set(compatible)),
        "unexpected": list(report.get("unexpected", [])),
        "word_rows_copied": copied,
        "word_rows": text.vocab_size,
    }


_WORD_TABLE = "embeddings.word_embeddings.weight"


def _copy_shared_rows(model: XVLM, checkpoint_folder: Path, checkpoint_words: torch.Tensor) -> int:
    """Copy the checkpoint's (V', H) word rows into the model's (V, H) table for tokens both vocabularies hold."""
    table = model.bert.embeddings.word_embeddings
    if not model.config.tokenizer or checkpoint_words.shape[1] != table.embedding_dim:
        return 0  # no tokenizer named in the config, or another width: nothing to match row by row
    ours = load_tokenizer(resolve_tokenizer_folder(model.config.tokenizer))
    rows = shared_token_rows(ours, load_tokenizer(checkpoint_folder).get_vocab())
    return copy_embedding_rows(table, checkpoint_words, rows)


def _resolve_hf_folder(source: str) -> Path:
    if source == "minilm":
        return packaged_minilm_path()
    return Path(source)
