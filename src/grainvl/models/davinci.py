"""DaVinci (arXiv 2206.07699): one encoder–decoder that writes text and paints discrete image codes.

Read top to bottom (davinci_cclm_vlue.md A.2, the released ``models/davinci_pretrain.py``):

* **Image tokens.** A stride-16 vision stem turns ``(B, 3, h·16, w·16)`` pixels into an ``h × w`` grid
  (``stem="efficientnet"``: the packaged ImageNet EfficientNet-Lite0 cut after its last stride-16 block,
  the counterpart of the official ResNet-101 stem + layer1–3; ``stem="conv"``: four stride-2 3×3
  convolutions for tiny presets), ``vision_proj`` to the hidden width, a learned CLS in front, learned
  absolute positions (``pos_embed``, 1 + grid² rows) and a LayerNorm (ours: the text half of the
  sequence leaves BERT's embedding LayerNorm, so both halves start at the same scale).
* **Encoder.** ``[image tokens] ++ [text tokens]`` (text positions count from 0) through bidirectional
  post-LN BERT layers. Every layer owns a learnable 2-D relative position bias added to the
  image–image scores only, **keyed by the actual (rows, cols) grid** (pitfall A.8.2): a prefix of r
  rows reads the table at its true offsets; a grid larger than the table (fine-tuning at a higher
  resolution) interpolates it the BEiT way (:func:`grainvl.models.vision.interpolate_rel_pos_bias`).
* **Decoder.** :class:`grainvl.models.decoder.TextDecoder`: causal self-attention, cross-attention to
  the encoder states, FFN, an LM head.
* **One joint vocabulary** of ``text_vocab_size + codebook_size + 1`` ids: text ids, then image code
  ``c`` at ``image_code_offset + c`` (``image_code_offset == text_vocab_size``), then ``img_bos_id``.
  One table serves three ways: encoder input, decoder input, decoder output (pitfall A.8.5).
* **Prefix image** (PIM): the encoder is given only the top ``r`` patch rows of the pixels (whole rows
  in raster order, so the stem's rows line up with the tokenizer's codes, pitfall A.8.3); the position
  embedding is sliced to those rows. ``r = 0`` leaves the CLS token alone.

Images enter in ``[0, 1]`` (the image tokenizer's range); the stems map them to ``[-1, 1]``.
Generation: :meth:`DaVinci.generate_image_codes` (top-k sampling, logits restricted to image codes,
pitfall A.8.1) and :meth:`DaVinci.generate_text` (beam search restricted to text ids).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.models.decoder import NEG_INF, SearchConfig, TextDecoder, beam_search, greedy_search, incremental_forward
from grainvl.models.text import BertEncoderModel, TextConfig, additive_attention_mask
from grainvl.models.vision import interpolate_rel_pos_bias, load_efficientnet_lite0, resize_pos_embed
from grainvl.utils.fileio import (
    atomic_write_text,
    is_grainvl_folder,
    load_model_safetensors,
    save_model_safetensors,
    staged_dir,
)

STRIDE = 16  # pixels per image token and per tokenizer code (VQGAN f=16)
STEMS = ("conv", "efficientnet")


# ----------------------------------------------------------------------------------------- config
@dataclass
class DaVinciConfig:
    """Shape of a DaVinci model (an architecture file with ``"family": "davinci"``)."""

    name: str = "davinci"
    image_resolution: int = 256  # square training images; the grid is image_resolution / 16 per side
    stem: Literal["conv", "efficientnet"] = "efficientnet"
    stem_channels: int = 64  # conv stem only: its output channels
    stem_pretrained: bool = True  # efficientnet only: the packaged ImageNet weights
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    encoder_layers: int = 6
    decoder_layers: int = 6
    text_vocab_size: int = 30522  # the text tokenizer's vocabulary (packaged MiniLM WordPiece)
    codebook_size: int = 1024  # the image tokenizer's codes
    max_text_positions: int = 128  # encoder text and decoder text positions
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    tokenizer: str = "minilm"
    pad_token_id: int = 0
    cls_token_id: int = 101  # text BOS ([CLS]) of the tokenizer
    sep_token_id: int = 102  # text EOS ([SEP])

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.image_resolution < STRIDE or self.image_resolution % STRIDE:
            raise ValueError(f"image_resolution {self.image_resolution} is not a positive multiple of {STRIDE}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if min(self.encoder_layers, self.decoder_layers, self.codebook_size, self.text_vocab_size) < 1:
            raise ValueError("encoder_layers, decoder_layers, codebook_size and text_vocab_size must be >= 1")

    @property
    def stride(self) -> int:
        return STRIDE

    @property
    def grid(self) -> int:
        """Patch rows (= columns) of a training image."""
        return self.image_resolution // STRIDE

    @property
    def image_code_offset(self) -> int:
        """Joint id of image code 0."""
        return self.text_vocab_size

    @property
    def img_bos_id(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.codebook_size + 1

    @property
    def decoder_positions(self) -> int:
        """Decoder positions: IMG_BOS + a whole grid of codes, or the longest text."""
        return max(1 + self.grid**2, self.max_text_positions)

    def text_config(self, layers: int, decoder: bool) -> TextConfig:
        """The BERT stack of the encoder (no cross-attention) or of the decoder (cross-attention everywhere)."""
        return TextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=layers,
            num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.decoder_positions if decoder else self.max_text_positions,
            layer_norm_eps=self.layer_norm_eps,
            hidden_dropout=self.hidden_dropout,
            attention_dropout=self.attention_dropout,
            pad_token_id=self.pad_token_id,
            fusion_start=0 if decoder else layers,
            encoder_width=self.hidden_size,
            initializer_range=self.initializer_range,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"family": "davinci", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> DaVinciConfig:
        """From an architecture file or ``config.json``; unknown keys are a one-line ValueError."""
        fields = {k: v for k, v in fields.items() if k != "family"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown DaVinciConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**fields)


# ----------------------------------------------------------------------------------------- stems
class ConvStem(nn.Module):
    """Four stride-2 3×3 convolutions with GELU between them: (B, 3, H, W) -> (B, C, H/16, W/16)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [max(channels // 8, 8), max(channels // 4, 8), max(channels // 2, 8), channels]
        layers: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, stride=2, padding=1), nn.GELU()]
            in_channels = width
        self.layers = nn.Sequential(*layers[:-1])  # the last convolution stays linear; vision_proj follows
        self.out_channels = channels

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class EfficientNetStem(nn.Module):
    """EfficientNet-Lite0 cut after its last stride-16 MBConv block: (B, 3, H, W) -> (B, 112, H/16, W/16).

    Like the official ResNet-101 "stem + layer1–3" the deepest stage is dropped. BatchNorm statistics
    stay frozen (batches are small; per-process statistics would also make DDP differ from one process).
    Its "SAME" padding is static but equal for every even input size, so a cropped prefix works.
    """

    def __init__(self, pretrained: bool, resolution: int) -> None:
        super().__init__()
        net = load_efficientnet_lite0(pretrained, resolution, drop_connect_rate=0.0)
        strides = [_block_stride(block) for block in net._blocks]
        last = max(i for i, stride in enumerate(strides) if stride == 2) - 1  # before the stride-32 stage
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[: last + 1])
        self.out_channels = int(self.blocks[-1]._project_conv.out_channels)
        self._freeze_batchnorm()

    def train(self, mode: bool = True) -> EfficientNetStem:
        super().train(mode)
        self._freeze_batchnorm()
        return self

    def _freeze_batchnorm(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def forward(self, images: Tensor) -> Tensor:
        x = self.act(self.bn0(self.conv_stem(images)))  # (B, 32, H/2, W/2)
        for block in self.blocks:
            x = block(x)
        return x  # (B, 112, H/16, W/16)


def _block_stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def build_stem(config: DaVinciConfig) -> nn.Module:
    if config.stem == "conv":
        return ConvStem(config.stem_channels)
    return EfficientNetStem(config.stem_pretrained, config.image_resolution)


# ----------------------------------------------------------------------------------------- 2-D bias
@functools.lru_cache(maxsize=32)
def _offset_index(rows: int, cols: int, span_rows: int, span_cols: int) -> Tensor:
    """(N, N) rows of a ``(2·span_rows−1)·(2·span_cols−1)`` offset table for a ``rows × cols`` grid, raster order."""
    coords = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")).flatten(1)  # (2, N)
    offset = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (offset[0] + span_rows - 1) * (2 * span_cols - 1) + (offset[1] + span_cols - 1)  # (N, N)


class RelativePositionBias2D(nn.Module):
    """Per-head bias of image–image scores by the (row, col) offset between two patches.

    ``table``: ``((2G−1)², heads)`` for the training grid ``G``, zero at init (BEiT). A grid that fits in
    ``G × G`` (a prefix of rows, or a smaller image) reads its true offsets; a larger one interpolates.
    """

    def __init__(self, grid: int, heads: int) -> None:
        super().__init__()
        self.grid = grid
        self.table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2, heads))

    def forward(self, rows: int, cols: int) -> Tensor:
        """-> (heads, rows·cols, rows·cols)."""
        table, span = self.table, (self.grid, self.grid)
        if rows > self.grid or cols > self.grid:
            span = (max(rows, self.grid), max(cols, self.grid))
            # interpolate_rel_pos_bias expects BEiT's 3 CLS rows after the offsets: add and drop them.
            padded = torch.cat([table, table.new_zeros(3, table.shape[1])])
            table = interpolate_rel_pos_bias(padded, self.grid, span)[:-3]
        index = _offset_index(rows, cols, *span).to(table.device)
        return table[index].permute(2, 0, 1)  # (heads, N, N)


# ----------------------------------------------------------------------------------------- model
class DaVinci(nn.Module):
    """The DaVinci encoder–decoder (see the module docstring)."""

    def __init__(self, config: DaVinciConfig) -> None:
        super().__init__()
        self.config = config
        h, grid = config.hidden_size, config.grid
        self.stem = build_stem(config)
        self.vision_proj = nn.Linear(self.stem.out_channels, h)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, h))
        self.image_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        # The encoder owns the joint table; the decoder reads from it and its output layer is tied to it.
        self.encoder = BertEncoderModel(config.text_config(config.encoder_layers, decoder=False))
        self.rel_pos_bias = nn.ModuleList(
            RelativePositionBias2D(grid, config.num_heads) for _ in range(config.encoder_layers)
        )
        self.decoder = TextDecoder(
            config.text_config(config.decoder_layers, decoder=True), self.encoder.embeddings.word_embeddings
        )
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=config.initializer_range)
        nn.init.trunc_normal_(self.vision_proj.weight, std=config.initializer_range)
        nn.init.zeros_(self.vision_proj.bias)

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The joint table (text ids, image codes, IMG_BOS) shared by encoder, decoder and output layer."""
        return self.encoder.embeddings.word_embeddings

    # ------------------------------------------------------------------ encoder
    def image_tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Pixels (B, 3, r·16, c·16) in [0, 1] -> ([CLS] + r·c patch tokens (B, 1+r·c, H), grid (r, c)).

        ``r`` below the training grid with ``c`` equal to it is a prefix of whole rows: the position
        embedding is sliced. Any other grid resizes it (bicubic). ``r = 0``: the CLS token alone.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % STRIDE or width % STRIDE or width == 0:
            raise ValueError(f"image size {height}x{width} is not a multiple of the {STRIDE}-pixel patch")
        rows, cols, b = height // STRIDE, width // STRIDE, images.shape[0]
        if rows == 0:
            patches = images.new_zeros(b, 0, self.config.hidden_size)
        else:
            features = self.stem(images * 2 - 1)  # (B, C, r, c)
            patches = self.vision_proj(features.flatten(2).transpose(1, 2))  # (B, r·c, H)
        grid = self.config.grid
        if cols == grid and rows <= grid:
            pos = self.pos_embed[:, : 1 + rows * cols]  # (1, 1+r·c, H): raster order, so a prefix is a slice
        else:
            pos = resize_pos_embed(self.pos_embed, (rows, cols))
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), patches], dim=1) + pos  # (B, 1+r·c, H)
        return self.image_norm(tokens), (rows, cols)

    def encode(self, images: Tensor | None, text_ids: Tensor, text_atts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``[image tokens] ++ [text tokens]`` -> encoder states (B, Ni+L, H) and their mask (B, Ni+L).

        ``images``: (B, 3, r·16, W) in [0, 1] (a prefix of r rows, or the whole image), or None for text
        alone (the C4 stream). ``text_ids`` (B, L) with mask ``text_atts`` (None: all real).
        """
        text_atts = torch.ones_like(text_ids) if text_atts is None else text_atts
        text = self.encoder.embeddings(text_ids)  # (B, L, H), positions 0..L-1
        if images is None:
            x, atts, grid = text, text_atts, None
        else:
            image, grid = self.image_tokens(images)  # (B, 1+N, H)
            x = torch.cat([image, text], dim=1)  # (B, 1+N+L, H)
            atts = torch.cat([text_atts.new_ones(image.shape[:2]), text_atts], dim=1)
        mask = additive_attention_mask(atts, x.dtype)  # (B, 1, 1, T)
        for layer, bias in zip(self.encoder.encoder.layer, self.rel_pos_bias):
            layer_mask = mask
            if grid is not None and grid[0] > 0:
                layer_mask = mask + self._image_bias(bias, grid, x.shape[1])  # (B, heads, T, T)
            x = layer(x, layer_mask, None, None)  # bidirectional: fused SDPA with an additive mask
        return x, atts

    @staticmethod
    def _image_bias(bias: RelativePositionBias2D, grid: tuple[int, int], length: int) -> Tensor:
        """The layer's 2-D bias placed on the image–image block (tokens 1..N; CLS and text get 0): (1, h, T, T)."""
        block = bias(*grid)  # (heads, N, N)
        after = length - 1 - block.shape[-1]
        return F.pad(block, (1, after, 1, after))[None]

    # ------------------------------------------------------------------ decoder
    def decode(self, input_ids: Tensor, attention_mask: Tensor, encoder_states: Tensor, encoder_atts: Tensor) -> Tensor:
        """Teacher-forced decoder logits over the joint vocabulary: (B, L) ids -> (B, L, V)."""
        return self.decoder(input_ids, attention_mask, encoder_states, encoder_atts)

    def decoder_states(
        self, input_ids: Tensor, attention_mask: Tensor, encoder_states: Tensor, encoder_atts: Tensor
    ) -> Tensor:
        """Causal decoder hidden states (B, L, H) (classification heads read the last real token)."""
        return self.decoder.hidden_states(input_ids, attention_mask, encoder_states, encoder_atts)

    def forward(
        self,
        images: Tensor | None,
        text_ids: Tensor,
        text_atts: Tensor,
        decoder_ids: Tensor,
        decoder_atts: Tensor,
    ) -> Tensor:
        """Encode (image prefix or image, text) and decode ``decoder_ids``: -> logits (B, Ld, V)."""
        states, atts = self.encode(images, text_ids, text_atts)
        return self.decode(decoder_ids, decoder_atts, states, atts)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_image_codes(
        self,
        text_ids: Tensor,
        text_atts: Tensor | None = None,
        top_k: int = 4000,
        temperature: float = 1.0,
        n: int = 1,
        prefix_images: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample the image codes that follow ``[IMG_BOS]`` for each text: -> (B, n, G, G) codes in [0, codebook).

        Top-k sampling at ``temperature`` (official text-to-image: k 4000, T 1.0) with the logits
        restricted to the image codes, so every sample is a valid image (the official code instead skips
        samples that contain a text id). ``prefix_images`` (B, 3, r·16, G·16): complete those images from
        their top r rows; the output holds the sampled rows r..G-1 and zeros in rows 0..r-1 (the caller
        puts the tokenizer's codes of the prefix there). None: from nothing (text-to-image).
        """
        if top_k < 1 or temperature <= 0 or n < 1:
            raise ValueError(f"top_k and n must be >= 1 and temperature > 0, got {top_k}, {n}, {temperature}")
        cfg, b, grid = self.config, text_ids.shape[0], self.config.grid
        if prefix_images is None:
            prefix_images = torch.zeros(b, 3, 0, grid * STRIDE, device=text_ids.device)
        rows = prefix_images.shape[-2] // STRIDE
        states, atts = self.encode(prefix_images, text_ids, text_atts)
        states, atts = states.repeat_interleave(n, dim=0), atts.repeat_interleave(n, dim=0)  # (B·n, T, H)
        tokens = torch.full((b * n, 1), cfg.img_bos_id, dtype=torch.long, device=text_ids.device)
        history: list[Tensor] | None = None
        codes = []
        for position in range((grid - rows) * grid):
            positions = torch.full_like(tokens, position)
            out, inputs = incremental_forward(self.decoder.bert, tokens, positions, history, states, atts)
            history = inputs if history is None else [torch.cat([h, x], dim=1) for h, x in zip(history, inputs)]
            logits = self.decoder.cls(out[:, -1]).float()  # (B·n, V)
            image_logits = logits[:, cfg.image_code_offset : cfg.img_bos_id] / temperature  # (B·n, K)
            top, index = image_logits.topk(min(top_k, cfg.codebook_size), dim=-1)  # (B·n, k)
            choice = torch.multinomial(top.softmax(dim=-1), 1, generator=generator)  # (B·n, 1)
            code = index.gather(1, choice)  # (B·n, 1)
            codes.append(code)
            tokens = code + cfg.image_code_offset
        sampled = torch.cat(codes, dim=1)  # (B·n, (G-r)·G)
        full = sampled.new_zeros(b * n, grid * grid)
        full[:, rows * grid :] = sampled
        return full.view(b, n, grid, grid)

    @torch.no_grad()
    def generate_text(
        self, images: Tensor, prompt_ids: Sequence[int] = (), search: SearchConfig | None = None
    ) -> list[list[int]]:
        """Text for images (B, 3, H, W) in [0, 1]: the encoder sees the image and an empty text, the decoder
        starts from ``[CLS] + prompt_ids`` (captioning: "a picture of") and beam-searches (greedy when
        ``num_beams`` is 1) over **text ids only**; -> the generated ids per image (prompt and EOS dropped)."""
        cfg, b, device = self.config, images.shape[0], images.device
        empty = torch.tensor([[cfg.cls_token_id, cfg.sep_token_id]], device=device).expand(b, -1)
        states, atts = self.encode(images, empty)
        return self.generate_text_from_states(states, atts, prompt_ids, search)

    def generate_text_from_states(
        self, states: Tensor, atts: Tensor, prompt_ids: Sequence[int] = (), search: SearchConfig | None = None
    ) -> list[list[int]]:
        """Text ids per row of encoder ``states`` (B, T, H) / ``atts`` (B, T), whatever text the encoder read
        (zero-shot captioning puts a prompt there, free VQA the question): the decoder starts from
        ``[CLS] + prompt_ids`` and searches over text ids only; -> the new ids (prompt and EOS dropped)."""
        cfg, b, device = self.config, states.shape[0], states.device
        search = search or SearchConfig()
        start = torch.tensor([cfg.cls_token_id, *prompt_ids], device=device)
        state: dict[str, Any] = {"history": None, "states": states, "atts": atts, "next": len(start)}

        def step(tokens: Tensor | None) -> Tensor:
            if tokens is None:  # the start sequence
                ids = start[None].expand(b, -1)
                positions = torch.arange(len(start), device=device)[None].expand(b, -1)
            else:  # each row's chosen token at the next position
                ids, positions = tokens[:, None], torch.full_like(tokens[:, None], state["next"])
                state["next"] += 1
            out, inputs = incremental_forward(
                self.decoder.bert, ids, positions, state["history"], state["states"], state["atts"]
            )
            history = state["history"]
            state["history"] = inputs if history is None else [torch.cat([h, x], 1) for h, x in zip(history, inputs)]
            logits = self.decoder.cls(out[:, -1]).float()  # (N, V)
            logits[:, cfg.text_vocab_size :] = float("-inf")  # image codes and IMG_BOS are never text
            return torch.log_softmax(logits, dim=-1).clamp(min=2 * NEG_INF)  # finite: beam sums stay ordered

        def reorder(rows: Tensor) -> None:
            state["history"] = [h[rows] for h in state["history"]]
            state["states"], state["atts"] = state["states"][rows], state["atts"][rows]

        decode = greedy_search if search.num_beams == 1 else beam_search
        return decode(step, reorder, b, cfg.sep_token_id, search)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, overwrite: bool = False) -> Path:
        """``config.json`` (with ``"family": "davinci"``) + ``model.safetensors`` (the shared table once)."""
        directory = Path(directory)
        with staged_dir(directory, overwrite=overwrite, replaceable=is_grainvl_folder) as staged:
            atomic_write_text(staged / "config.json", json.dumps(self.config.to_dict(), indent=2))
            save_model_safetensors(staged / "model.safetensors", self.state_dict())
            if tokenizer is not None:
                tokenizer.save_pretrained(staged)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DaVinci:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: no config.json (not a grainvl model folder)")
        config = DaVinciConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        model = cls(dataclasses.replace(config, stem_pretrained=False))  # the file's weights replace ImageNet's
        model.load_state_dict(load_model_safetensors(directory / "model.safetensors"))
        return model


def count_parameters_meta(config: DaVinciConfig) -> int:
    """Distinct parameters of a DaVinci built on the meta device: no memory, no weights read."""
    with torch.device("meta"):
        model = DaVinci(dataclasses.replace(config, stem_pretrained=False))
    return sum(p.numel() for p in model.parameters())  # parameters() yields the shared table once


__all__ = [
    "STRIDE",
    "DaVinci",
    "DaVinciConfig",
    "RelativePositionBias2D",
    "count_parameters_meta",
]
