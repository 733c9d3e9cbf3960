"""``grainvl davinci tokenizer``: train DaVinci's image tokenizer on a world, or convert a taming VQGAN.

Training (issue 17 §1): a small :class:`~grainvl.models.vq.VQTokenizer` (:data:`WORLD_TOKENIZER`) learns on the
world's ``train`` images resized to ``data.resolution`` (default 128, davinci-small's image side; 0 keeps the native
size), whole (default) or as random ``data.crop``-pixel crops, so a code covers the same share of the scene in
training and at use, through :func:`grainvl.train.loop.train` (checkpoints, exact resume, DDP). The first
``quantizer_warmup`` share of the steps trains an unquantised autoencoder; the codebook is then placed on the
encoder's outputs. It is then frozen and measured on whole ``test`` (ID) and ``test_ood`` (OOD) images at the same
resolution: PSNR, share of codes used, code perplexity (``results.jsonl``, ``summary.json``), and
``reconstructions.png`` shows originals above their reconstructions. The tokenizer is saved as ``RUN/tokenizer``
(``VQTokenizer.from_pretrained`` accepts the run folder too).

Conversion: :func:`convert_taming` loads a taming-transformers VQGAN (``.ckpt`` + ``.yaml``) through
:func:`grainvl.models.vq.load_taming_checkpoint` and saves it as a tokenizer folder.

With ``data.resolution`` 0, world images whose side is not a multiple of the stride are a one-line DataError naming
the file.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from grainvl.data.iterators import BatchSequence
from grainvl.data.pretrain import to_rgb
from grainvl.errors import DataError
from grainvl.models.vq import VQConfig, VQTokenizer, load_taming_checkpoint
from grainvl.recipes.scaffold import Run, format_cost, metric_rows, run_recipe, seed_model_init, summary_costs
from grainvl.tasks.vq import VQTrainTask, evaluate_tokenizer, random_crops, reconstruct
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler
from grainvl.utils.fileio import atomic_write_bytes

# The world tokenizer: taming's layout at CPU size. 5 levels (stride 16, as DaVinci's VQGAN), widths 16-64,
# one ResNet block per level, attention only in the middle, 512 codes of 16 dimensions looked up in plain L2 (EMA
# codebook with restarts). Plain L2, not cosine: after the quantiser warm-up (DavinciTokenizerConfig.quantizer_warmup)
# the decoder has learned to read the encoder's unnormalised outputs, and the codebook is placed on exactly those
# (docs/davinci.md §1 has the runs).
WORLD_TOKENIZER = VQConfig(
    codebook_size=512,
    embed_dim=16,
    z_channels=64,
    channels=16,
    channel_mult=(1, 2, 2, 4, 4),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=128,
    norm_groups=8,
)
EVAL_SPLITS = {"id": "test", "ood": "test_ood"}
TOKENIZER_DIR = "tokenizer"
GRID_FILE = "reconstructions.png"


@dataclass
class TokenizerData:
    world: str = ""
    """World folder (required): images/{train,test,test_ood}/*.jpg."""
    resolution: int = 128
    """Side in pixels every world image is resized to (PIL bicubic, as the data pipeline's test transform) before
    training and evaluation: the image side of the DaVinci model that will use the tokenizer (davinci-small 128,
    davinci-tiny 64), so a code covers the same share of the scene in training and at use; a multiple of the stride.
    0: the world's native size (which must then be a multiple of the stride)."""
    crop: int = 0
    """Training crop side in pixels (a multiple of the stride), after the resize; 0: whole images (measured better than
    64 px crops, which are mostly background and normalise differently from the whole images the tokenizer is used
    on)."""
    batch_size: int = 4
    eval_batch_size: int = 8
    max_train_images: int = 0
    """> 0: only the first N train images (quick runs); 0: all."""
    max_eval_images: int = 0
    """> 0: only the first N images of each evaluation split; 0: all."""
    grid_images: int = 8
    """Images per split in reconstructions.png."""


@dataclass
class DavinciTokenizerConfig:
    model: VQConfig = field(default_factory=lambda: WORLD_TOKENIZER)
    recon_loss: str = "l2"
    """``l2`` (VQ-VAE; PSNR's own measure) or ``l1`` (taming's VQGAN, whose median favours the flat background)."""
    edge_weight: float = 0.0
    """Weight of the L1 loss on pixel differences (``tasks.vq.edge_loss``: the shapes' outlines); 0: none (measured:
    it sharpens outlines but the decoder then paints every shape one brownish colour)."""
    quantizer_warmup: float = 0.3
    """Share of the steps trained without quantisation (the decoder reads the continuous encoder output) before the
    codebook is placed on the encoder's outputs (EMA counts start at 0: the first quantised step restarts every code
    on the batch). Without it the codes carried no colour and the decoder painted the mean; 0: quantise from step 1."""
    data: TokenizerData = field(default_factory=TokenizerData)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.0, lr_mult=1.0, betas=(0.9, 0.99))
    )
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="cosine", warmup_steps=0.05))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, log_every=100, run_dir="runs/davinci_tokenizer", tensorboard=False
        )
    )
    torch_threads: int = 0

    def __post_init__(self) -> None:
        stride = self.model.stride
        if self.data.crop < 0 or self.data.crop % stride:
            raise ValueError(
                f"data.crop must be 0 (whole images) or a multiple of the stride {stride}, got {self.data.crop}"
            )
        if self.data.batch_size < 1 or self.data.eval_batch_size < 1 or self.data.grid_images < 0:
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1, data.grid_images >= 0")
        if self.data.resolution < 0 or self.data.resolution % stride:
            raise ValueError(
                f"data.resolution must be 0 (native size) or a multiple of the stride {stride}, "
                f"got {self.data.resolution}"
            )
        if self.data.resolution and self.data.crop > self.data.resolution:
            raise ValueError(f"data.crop {self.data.crop} is larger than data.resolution {self.data.resolution}")
        if not 0.0 <= self.quantizer_warmup < 1.0:
            raise ValueError(f"quantizer_warmup must be in [0, 1), got {self.quantizer_warmup}")


# ---------------------------------------------------------------------------------------------- images
def load_split_images(world: Path, split: str, stride: int, limit: int = 0, resolution: int = 0) -> torch.Tensor:
    """The images of ``world/images/split`` (sorted by name) as uint8 (N, 3, H, W).

    ``resolution`` > 0 resizes each image to ``resolution`` x ``resolution`` with PIL bicubic (the data pipeline's
    test transform, so the tokenizer sees the pixels DaVinci feeds it); 0 keeps the native size. A missing split, an
    unreadable image, a size that differs from the first image's or (native size) is not a multiple of ``stride`` is
    a DataError naming the file.
    """
    folder = world / "images" / split
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise DataError(folder, None, f"no images for split {split!r} (is {world} a grainvl world?)")
    arrays = [_read_image(path, stride, resolution) for path in paths[: limit or None]]
    for path, array in zip(paths, arrays):
        if array.shape != arrays[0].shape:
            raise DataError(
                path, None, f"image size {array.shape[:2]} differs from {paths[0].name}'s {arrays[0].shape[:2]}"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def _read_image(path: Path, stride: int, resolution: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = to_rgb(image)
            if resolution:
                rgb = rgb.resize((resolution, resolution), Image.Resampling.BICUBIC)
            array = np.asarray(rgb)  # (H, W, 3) uint8
    except OSError as error:
        raise DataError(path, None, f"cannot read the image: {error}") from None
    h, w = array.shape[:2]
    if h % stride or w % stride:
        raise DataError(
            path,
            None,
            f"image size {h}x{w} (HxW) is not a multiple of the tokenizer stride {stride}; "
            "set data.resolution (--resolution) or regenerate the world with --resolution a multiple of 16",
        )
    return array


def save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    """One PNG of image rows (each (n, 3, H, W) in [0, 1], equal image sizes; a shorter row leaves white),
    2-pixel white gaps, written atomically."""
    n, (h, w) = max(row.shape[0] for row in rows), rows[0].shape[-2:]
    gap = 2
    canvas = np.full(((h + gap) * len(rows) + gap, (w + gap) * n + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        pixels = (row.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)
        for c in range(row.shape[0]):
            top, left = gap + r * (h + gap), gap + c * (w + gap)
            canvas[top : top + h, left : left + w] = pixels[c]
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------- run
def run_tokenizer_training(cfg: DavinciTokenizerConfig, resume: str | None = None) -> dict[str, Any]:
    """Train, freeze, evaluate on ID and OOD and save the tokenizer; returns the report (rank 0, else ``{}``)."""
    if not cfg.data.world:
        raise ValueError("data.world is required (--world W)")
    return run_recipe(cfg.train.run_dir, lambda run: _run(cfg, run, resume), cfg.torch_threads)


def _run(cfg: DavinciTokenizerConfig, run: Run, resume: str | None) -> dict[str, Any]:
    world, stride = Path(cfg.data.world), cfg.model.stride
    side, limit = cfg.data.resolution, cfg.data.max_eval_images
    train_images = load_split_images(world, "train", stride, cfg.data.max_train_images, side)
    eval_images = {tag: load_split_images(world, s, stride, limit, side) for tag, s in EVAL_SPLITS.items()}
    seed_model_init(cfg.train.seed)
    tokenizer = VQTokenizer(cfg.model)
    task = VQTrainTask(tokenizer, cfg.recon_loss, cfg.edge_weight)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run.write_config(cfg)

    crop = cfg.data.crop or min(train_images.shape[-2:])  # 0: whole (square) images, random flips only
    warmup_steps = round(cfg.quantizer_warmup * cfg.train.steps)

    def batch(step: int) -> dict[str, Any]:
        # Crops and the warm-up flag depend on (seed, rank, step) only: a resumed run sees exactly the batches it
        # would have seen. ``step`` counts from 0, so steps 0 .. warmup_steps - 1 run unquantised.
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + run.env.rank * 7919 + step)
        images = random_crops(train_images, cfg.data.batch_size, crop, generator)
        return {"images": images, "quantize": step >= warmup_steps}

    summary = train(
        task, BatchSequence(batch, cfg.train.steps), optimizer, scheduler, cfg.train, run.env, resume=resume
    )
    if not run.is_main:
        return {}
    tokenizer.eval().requires_grad_(False)
    start = time.perf_counter()
    metrics = {
        tag: evaluate_tokenizer(tokenizer, images, cfg.data.eval_batch_size) for tag, images in eval_images.items()
    }
    eval_s = time.perf_counter() - start
    tokenizer.save_pretrained(run.dir / TOKENIZER_DIR)
    if cfg.data.grid_images:
        rows = []
        for images in eval_images.values():
            shown = images[: cfg.data.grid_images]
            rows += [shown.float() / 255.0, reconstruct(tokenizer, shown, cfg.data.eval_batch_size)[0]]
        save_grid(run.dir / GRID_FILE, rows)
    costs = summary_costs(summary, cfg.train.seed)
    for tag, values in metrics.items():
        scores = {k: v for k, v in values.items() if k != "images"}
        run.append(
            metric_rows(
                scores, model="vq-tokenizer", task="image_tokenizer", dataset=str(world), split=tag, costs=costs
            )
        )
    report = {
        "summary": summary.to_dict(),
        "metrics": metrics,
        "eval_s": eval_s,
        "train_images": len(train_images),
        "tokenizer_dir": str(run.dir / TOKENIZER_DIR),
        "grid": str(run.dir / GRID_FILE) if cfg.data.grid_images else None,
        "codebook_size": cfg.model.codebook_size,
    }
    run.write_summary(report)
    return report


def convert_taming(checkpoint: Path, config_yaml: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Load a taming VQGAN (``.ckpt`` or ``.safetensors`` + ``.yaml``) and save it as a tokenizer folder."""
    tokenizer = load_taming_checkpoint(checkpoint, config_yaml)
    tokenizer.save_pretrained(out, overwrite=overwrite)
    params = sum(p.numel() for p in tokenizer.parameters())
    return {"tokenizer_dir": str(out), "params": params, "config": tokenizer.config.to_dict()}


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{tag}: PSNR {m['psnr']:.2f} dB, codes used {m['code_usage']:.1%} of {report['codebook_size']} "
        f"(perplexity {m['code_perplexity']:.0f}) on {m['images']} images"
        for tag, m in report["metrics"].items()
    ]
    lines.append(format_cost(report["summary"]))
    lines.append(
        f"tokenizer saved to {report['tokenizer_dir']}" + (f"; grid {report['grid']}" if report["grid"] else "")
    )
    return "\n".join(lines)
