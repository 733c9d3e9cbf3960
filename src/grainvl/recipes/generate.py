"""``grainvl generate``: DaVinci text-to-image (issue 17 §5) and its evaluation on the world's test captions.

Generation (official ``image_sampling.py``, A.5): the caption alone goes to the encoder (no image prefix),
the decoder samples ``samples`` code grids from ``[IMG_BOS]`` with top-k sampling restricted to the image
codes (:meth:`DaVinci.generate_image_codes`), the frozen image tokenizer decodes them, and an ITC model
(``rerank_model``: any grainvl vision-language model, e.g. a pre-trained ``xvlm-small`` run; the paper uses
CLIP ViT-B/32) keeps the sample whose image embedding has the highest cosine with the caption's. Without a
re-ranking model the first sample is kept.

Forms: ``prompt`` -> one PNG at ``out``; ``captions`` (a text file, one caption per line) -> ``out`` is a folder
with one PNG per line, ``grid.png`` and ``generations.jsonl``; ``world`` -> the evaluation run ``out``: the
first caption of each ``test`` (ID) and ``test_ood`` (OOD) image, scored by :mod:`grainvl.metrics.generation`
(FID on EfficientNet-Lite0 features, attribute accuracy of a probe trained on real images and its ceiling on
the real test images, caption R@1 by the independent ``judge_model``), rows in ``results.jsonl`` and a grid
per split.
"""

from __future__ import annotations

import io
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from grainvl.bench.energy import hardware_tags
from grainvl.data.masking import pre_caption
from grainvl.errors import DataError
from grainvl.metrics.generation import (
    FID_METRIC,
    AttributeProbe,
    EfficientNetFeatures,
    caption_r_at_1,
    efficientnet_fid,
    read_scene_labels,
    stated_attributes,
)
from grainvl.models.davinci import DaVinci
from grainvl.models.factory import get_tokenizer, load_davinci_model, load_model, resolve_model
from grainvl.models.vq import VQTokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.scaffold import Run, cost_columns, metric_rows, run_recipe
from grainvl.tasks.davinci import TextEncoder
from grainvl.utils.fileio import atomic_write_bytes, iter_jsonl, iter_text_lines, write_jsonl

SPLITS = {"id": "test", "ood": "test_ood"}
GRID_COLUMNS = 8  # prompts shown per grid


@dataclass
class GenerateConfig:
    model: str = ""
    """The DaVinci model: a ``grainvl davinci pretrain`` run folder, a DaVinci folder or a preset."""
    tokenizer: str = ""
    """The frozen image tokenizer folder the model was pre-trained with (``grainvl davinci tokenizer``)."""
    prompt: str = ""
    captions: str = ""
    """A UTF-8 text file, one caption per line (the batch form)."""
    world: str = ""
    """A world folder: evaluate on its test (ID) and test_ood (OOD) captions instead of generating from prompts."""
    out: str = "generated.png"
    samples: int = 4  # sampled images per caption, re-ranked (official 128)
    top_k: int = 4000  # official; capped at the codebook size
    temperature: float = 1.0
    rerank_model: str = ""
    """ITC model (a grainvl vision-language model) that picks the best sample; empty: the first sample."""
    judge_model: str = ""
    """Evaluation: the independent ITC model of caption R@1 (not the re-ranker); empty: R@1 is not measured."""
    limit: int = 0  # evaluation: images per split (0 = all)
    max_tokens: int = 30  # prompt tokens with [CLS] and [SEP] (pre-training's caption limit)
    batch_size: int = 8  # captions per generation call
    feature_resolution: int = 128  # EfficientNet-Lite0 input side for FID and the attribute probe
    seed: int = 0
    torch_threads: int = 0


# ---------------------------------------------------------------------------------------------- prompts
def check_prompt(text: str, tokenizer: Any, max_tokens: int, source: str, record: str | None) -> str:
    """The cleaned prompt (``pre_caption``, as pre-training cleans captions) or a one-line DataError.

    Errors: empty; more word pieces than ``max_tokens - 2``; no word that is a whole word of the text
    tokenizer's vocabulary (the model has never seen any of it).
    """
    if not re.search(r"\w", text):
        raise DataError(source, record, "empty prompt")
    cleaned = pre_caption(text, max_words=10_000)
    pieces = len(tokenizer.encode(cleaned, add_special_tokens=False))
    if pieces > max_tokens - 2:
        raise DataError(
            source, record, f"prompt is {pieces} word pieces, the limit is {max_tokens - 2} (max_tokens {max_tokens})"
        )
    vocab = tokenizer.get_vocab()
    if not any(word in vocab for word in re.findall(r"\w+", cleaned)):
        raise DataError(source, record, f"no known words in the prompt {text.strip()[:60]!r}")
    return cleaned


def read_captions(path: str | Path, tokenizer: Any, max_tokens: int) -> list[str]:
    """Every line of a caption file, checked by :func:`check_prompt` (an empty line is an error)."""
    prompts = [check_prompt(t, tokenizer, max_tokens, str(path), f"line {n}") for n, t in iter_text_lines(path)]
    if not prompts:
        raise DataError(path, None, "no captions")
    return prompts


# ---------------------------------------------------------------------------------------------- models
def load_generator(cfg: GenerateConfig) -> tuple[DaVinci, VQTokenizer, Any]:
    """The DaVinci model (eval), its frozen image tokenizer and its text tokenizer."""
    if not cfg.model or not cfg.tokenizer:
        raise ValueError("generate needs --model (a DaVinci run or folder) and --tokenizer (its image tokenizer)")
    if not Path(cfg.tokenizer).is_dir():
        raise FileNotFoundError(f"image tokenizer folder not found: {cfg.tokenizer}")
    resolved = resolve_model(cfg.model).expect("davinci")
    model, vq = load_davinci_model(resolved).eval(), VQTokenizer.from_pretrained(cfg.tokenizer).eval()
    if vq.codebook_size != model.config.codebook_size:
        raise ValueError(
            f"{cfg.tokenizer} has {vq.codebook_size} codes but {cfg.model} predicts {model.config.codebook_size}"
        )
    return model, vq, get_tokenizer(resolved)


class ItcScorer:
    """An X²-VLM-family model's ITC embeddings: images in [0, 1] and texts -> L2-normalised (N, E) features."""

    def __init__(self, source: str) -> None:
        resolved = resolve_model(source).expect("vl")
        self.model: XVLM = load_model(resolved).eval()
        self.tokenizer = get_tokenizer(resolved)
        tower = self.model.vision_encoder
        self.mean = torch.tensor(tower.input_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(tower.input_std).view(1, 3, 1, 1)
        self.resolution = self.model.config.vision.resolution

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        size = (self.resolution, self.resolution)
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.model.image_feat(self.model.encode_image((x - self.mean) / self.std)[0])  # (N, E)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> Tensor:
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=40, return_tensors="pt")
        return self.model.text_feat(self.model.encode_text(enc["input_ids"], enc["attention_mask"]))  # (N, E)


# ---------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(
    model: DaVinci, vq: VQTokenizer, prompts: list[str], text_tokenizer: Any, cfg: GenerateConfig
) -> tuple[Tensor, Tensor | None]:
    """-> samples (B, n, 3, H, W) in [0, 1], the first of each row the kept one (re-ranked when a model is
    given), and the re-ranking cosines (B, n) in the same order (None without a re-ranking model)."""
    encoder = TextEncoder(text_tokenizer, cfg.max_tokens)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = []
    for start in range(0, len(prompts), cfg.batch_size):
        ids, atts = encoder.batch(prompts[start : start + cfg.batch_size])  # (b, L)
        codes = model.generate_image_codes(ids, atts, cfg.top_k, cfg.temperature, cfg.samples, generator=generator)
        decoded = vq.decode(codes.flatten(0, 1)).clamp(0, 1)  # (b·n, 3, H, W)
        images.append(decoded.view(*codes.shape[:2], *decoded.shape[1:]))  # (b, n, 3, H, W)
    samples = torch.cat(images)
    if not cfg.rerank_model:
        return samples, None
    scorer = ItcScorer(cfg.rerank_model)
    text = scorer.text_features(prompts)  # (B, E)
    image = scorer.image_features(samples.flatten(0, 1)).view(*samples.shape[:2], -1)  # (B, n, E)
    cosines = (image * text[:, None]).sum(-1)  # (B, n)
    order = cosines.argsort(dim=1, descending=True)  # best first
    rows = torch.arange(len(prompts))[:, None]
    return samples[rows, order], cosines[rows, order]


def png_bytes(image: Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG file bytes."""
    pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(samples: Tensor, prompts: list[str], scale: int = 1) -> bytes:
    """Columns of prompts (at most :data:`GRID_COLUMNS`), each with its samples (best first) above its text."""
    samples, prompts = samples[:GRID_COLUMNS], prompts[:GRID_COLUMNS]
    b, n, _, h, w = samples.shape
    h, w = h * scale, w * scale
    width = max(w, 96)
    lines = [textwrap.wrap(p, width=max(width // 6, 8))[:6] for p in prompts]
    text_h = 12 * max(len(line) for line in lines) + 4
    gap = 4
    canvas = Image.new("RGB", (gap + b * (width + gap), gap + n * (h + gap) + text_h), "white")
    draw = ImageDraw.Draw(canvas)
    for col in range(b):
        left = gap + col * (width + gap)
        for row in range(n):
            pixels = (samples[col, row].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            tile = Image.fromarray(pixels).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (left + (width - w) // 2, gap + row * (h + gap)))
        for k, line in enumerate(lines[col]):
            draw.text((left, gap + n * (h + gap) + 12 * k), line, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """The prompt form (one PNG at ``out``) or the caption-file form (a folder); -> what was written."""
    if bool(cfg.prompt) == bool(cfg.captions):
        raise ValueError("give exactly one of --prompt TEXT and --captions FILE (or --world W to evaluate)")
    model, vq, text_tokenizer = load_generator(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.prompt:
        prompts = [check_prompt(cfg.prompt, text_tokenizer, cfg.max_tokens, "--prompt", None)]
    else:
        prompts = read_captions(cfg.captions, text_tokenizer, cfg.max_tokens)
    start = time.perf_counter()
    samples, cosines = generate(model, vq, prompts, text_tokenizer, cfg)
    seconds = time.perf_counter() - start
    out = Path(cfg.out)
    if cfg.prompt:
        atomic_write_bytes(out, png_bytes(samples[0, 0]))
        files = [str(out)]
    else:
        out.mkdir(parents=True, exist_ok=True)
        files = [str(out / f"{i:04d}.png") for i in range(len(prompts))]
        for i, path in enumerate(files):
            atomic_write_bytes(path, png_bytes(samples[i, 0]))
        atomic_write_bytes(out / "grid.png", grid_png(samples, prompts, scale=2))
        rows = [
            {"prompt": p, "image": Path(f).name, "rerank_cosine": None if cosines is None else float(cosines[i, 0])}
            for i, (p, f) in enumerate(zip(prompts, files))
        ]
        write_jsonl(out / "generations.jsonl", rows)
    return {
        "files": files,
        "prompts": len(prompts),
        "samples": cfg.samples,
        "seconds": seconds,
        "reranked": bool(cfg.rerank_model),
    }


# ---------------------------------------------------------------------------------------------- evaluation
def load_split(world: Path, split: str, resolution: int, limit: int) -> tuple[list[str], list[str], Tensor]:
    """First caption, image path and pixels (N, 3, R, R) in [0, 1] (bicubic resize to R) of a split's images."""
    source = world / "annotations" / "pretrain" / split / "image_text.jsonl"
    captions, paths, pixels = [], [], []
    for line, record in iter_jsonl(source):
        caption = record.get("caption")
        caption = caption[0] if isinstance(caption, list) and caption else caption
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(source, f"line {line}", "empty caption")
        try:
            with Image.open(world / record["image"]) as image:
                rgb = image.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        except OSError as e:
            raise DataError(source, f"line {line}", f"cannot read image {record['image']}: {e}") from e
        captions.append(caption)
        paths.append(str(record["image"]))
        pixels.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255).permute(2, 0, 1))
        if limit and len(captions) >= limit:
            break
    if len(captions) < 2:
        raise DataError(source, None, f"{len(captions)} images; the evaluation needs at least 2 per split")
    return captions, paths, torch.stack(pixels)


def fit_probe(
    world: Path, features: EfficientNetFeatures, resolution: int, limit: int = 0
) -> tuple[AttributeProbe, dict[str, float]]:
    """The attribute probe on (the first ``limit``, 0 = all) real train images, its ridge strength chosen on the
    val images."""
    data = {}
    for split in ("train", "val"):
        labels = read_scene_labels(world / "annotations" / "pretrain" / split / "region.jsonl")
        _, paths, pixels = load_split(world, split, resolution, limit)
        data[split] = (features(pixels), [labels[p] for p in paths])
    probe = AttributeProbe()
    return probe, probe.fit(*data["train"], *data["val"])


def evaluate_split(
    cfg: GenerateConfig,
    split: str,
    generator: tuple[DaVinci, VQTokenizer, Any],
    features: EfficientNetFeatures,
    probe: AttributeProbe,
    judge: ItcScorer | None,
) -> tuple[dict[str, float], dict[str, float], Tensor, list[str]]:
    """-> (generated-image metrics, probe ceiling on the real images, samples, captions) of one world split."""
    model, vq, text_tokenizer = generator
    world = Path(cfg.world)
    captions, paths, real = load_split(world, split, model.config.image_resolution, cfg.limit)
    prompts = [check_prompt(c, text_tokenizer, cfg.max_tokens, str(world), p) for c, p in zip(captions, paths)]
    start = time.perf_counter()
    samples, _ = generate(model, vq, prompts, text_tokenizer, cfg)
    ms_per_caption = 1000 * (time.perf_counter() - start) / len(prompts)
    generated = samples[:, 0]  # (N, 3, H, W): the kept sample per caption
    labels = read_scene_labels(world / "annotations" / "pretrain" / split / "region.jsonl")
    stated = [stated_attributes(c) for c in captions]
    counts = [labels[p].count for p in paths]
    real_features, generated_features = features(real), features(generated)
    metrics = {FID_METRIC: efficientnet_fid(real_features, generated_features)}
    metrics.update(probe.accuracy(generated_features, stated, counts))
    if judge is not None:
        metrics["caption_r@1"] = caption_r_at_1(
            judge.text_features(captions), judge.image_features(generated), judge.image_features(real)
        )
    metrics["ms_per_caption"] = ms_per_caption
    ceiling = probe.accuracy(real_features, stated, counts)
    return metrics, ceiling, samples, captions


def run_generation_eval(cfg: GenerateConfig) -> dict[str, Any]:
    """Evaluate text-to-image on the world's ID and OOD test captions in the run folder ``out``."""
    return run_recipe(cfg.out, lambda run: _evaluate(cfg, run), cfg.torch_threads)


def _evaluate(cfg: GenerateConfig, run: Run) -> dict[str, Any]:
    if not Path(cfg.world).is_dir():
        raise FileNotFoundError(f"world folder not found: {cfg.world}")
    torch.manual_seed(cfg.seed)
    generator = load_generator(cfg)
    features = EfficientNetFeatures(cfg.feature_resolution)
    probe, probe_val = fit_probe(Path(cfg.world), features, cfg.feature_resolution)
    judge = ItcScorer(cfg.judge_model) if cfg.judge_model else None
    run.write_config(cfg)
    costs = cost_columns(
        params=sum(p.numel() for p in generator[0].parameters()), seed=cfg.seed, hardware=hardware_tags()
    )
    report: dict[str, Any] = {"probe_val": probe_val, "splits": {}, "judge_model": cfg.judge_model or None}
    for name, split in SPLITS.items():
        metrics, ceiling, samples, captions = evaluate_split(cfg, split, generator, features, probe, judge)
        costs_split = {**costs, "latency_ms": metrics.pop("ms_per_caption")}
        run.append(
            metric_rows(metrics, model=cfg.model, task="text_to_image", dataset="world", split=name, costs=costs_split)
        )
        ceiling_model = "real images (attribute probe ceiling)"
        run.append(
            metric_rows(
                ceiling,
                model=ceiling_model,
                task="text_to_image",
                dataset="world",
                split=name,
                costs={"seed": cfg.seed},
            )
        )
        if run.is_main:
            atomic_write_bytes(run.dir / f"grid_{name}.png", grid_png(samples, captions, scale=2))
        report["splits"][name] = {
            "metrics": metrics,
            "latency_ms": costs_split["latency_ms"],
            "ceiling": ceiling,
            "images": len(captions),
        }
    run.write_summary(report)
    return report


def format_eval_report(report: dict[str, Any]) -> str:
    """One line per split: the generated images' metrics, then the probe's ceiling on the real images."""
    lines = ["text-to-image on the world's test captions (FID: EfficientNet-Lite0 features, not Inception):"]
    for name, split in report["splits"].items():
        values = ", ".join(f"{k} {v:.3f}" for k, v in split["metrics"].items())
        ceiling = ", ".join(f"{k} {v:.3f}" for k, v in split["ceiling"].items())
        lines.append(f"  {name} ({split['images']} captions, {split['latency_ms']:.0f} ms each): {values}")
        lines.append(f"  {name} real images (probe ceiling): {ceiling}")
    if not report["judge_model"]:
        lines.append("  caption R@1 not measured: no --judge-model")
    return "\n".join(lines)
