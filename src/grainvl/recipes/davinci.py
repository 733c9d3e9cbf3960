"""``grainvl davinci pretrain``: DaVinci pre-training (PLM + PIM on image–caption pairs, PLM on text).

One entry point under ``python -m grainvl`` and ``torchrun -m grainvl`` (DDP when several processes).
Each step draws one image–caption batch (the X-VLM pre-training lines of ``data.split``; one caption
sampled) and, when ``objectives.text`` > 0, one batch of the text corpus (``data.text_corpus``: empty =
the world's English training text, the stand-in for the paper's C4 stream). The frozen image tokenizer
(``--tokenizer``: a ``VQTokenizer`` folder from ``grainvl davinci tokenizer``) gives the PIM targets; the
model takes the tokenizer's codebook size (one line when it differs from the preset's). The run saves
``RUN/model`` (``DaVinci.save_pretrained`` + the text tokenizer) and reports each objective's loss at the
start and the end of this call. ``--resume`` continues exactly (model, optimizer, schedule, RNG, stream
positions), through :func:`grainvl.train.loop.train`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.data.formats.validate import skipping_bad_records
from grainvl.data.iterators import StatefulIterator, StreamDict
from grainvl.data.pretrain import PretrainDataConfig, PretrainFiles, PretrainStream, describe_search
from grainvl.data.text_corpus import load_corpus
from grainvl.errors import BadRecords
from grainvl.models.davinci import STRIDE, DaVinci, DaVinciConfig
from grainvl.models.factory import get_tokenizer, load_davinci_model, resolve_model
from grainvl.models.vq import VQTokenizer
from grainvl.recipes.scaffold import Run, format_cost, run_recipe, seed_model_init
from grainvl.tasks.davinci import (
    DaVinciObjectives,
    DaVinciPretrainTask,
    PairDataset,
    TextEncoder,
    TextPrefixStream,
    check_documents,
)
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler

OBJECTIVES = ("plm", "pim", "text")


@dataclass
class DaVinciData:
    world: str = "runs/world"
    split: str = "train"
    batch_size: int = 8  # image–caption pairs per step and rank (official 64)
    text_batch_size: int = 8  # corpus documents per step and rank (official 64)
    max_tokens: int = 30  # caption prefix / suffix / full caption tokens (official MAX_TOKENS)
    text_max_tokens: int = 64  # corpus prefix / suffix tokens (official 256)
    text_corpus: str = ""
    """Text-only stream: a world folder, ``.jsonl``/text file or ``builtin:english``; empty = ``world``."""
    resolution: int = 0  # training image side in pixels (a multiple of 16); 0 = the preset's image_resolution
    threads: int = 0  # image decoding threads per process


@dataclass
class DaVinciPretrainConfig:
    model: str = "davinci-small"
    tokenizer: str = ""
    """The frozen image tokenizer: a ``VQTokenizer.save_pretrained`` folder (``grainvl davinci tokenizer``)."""
    data: DaVinciData = field(default_factory=DaVinciData)
    objectives: DaVinciObjectives = field(default_factory=DaVinciObjectives)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, weight_decay=0.01, lr_mult_params=[]))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="linear", warmup_steps=0.05))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/davinci"))
    torch_threads: int = 0
    skip_bad: bool = False


# ---------------------------------------------------------------------------------------------- pieces
def load_image_tokenizer(folder: str) -> VQTokenizer:
    if not folder:
        raise ValueError("davinci pretrain needs --tokenizer: an image tokenizer folder (grainvl davinci tokenizer)")
    if not Path(folder).is_dir():
        raise FileNotFoundError(
            f"image tokenizer folder not found: {folder} (train one with grainvl davinci tokenizer)"
        )
    return VQTokenizer.from_pretrained(folder)


def build_model(cfg: DaVinciPretrainConfig, image_tokenizer: VQTokenizer, text_tokenizer: Any) -> DaVinci:
    """The preset (fresh) or a DaVinci folder (continued), with the tokenizers' vocabulary and special ids."""
    resolved = resolve_model(cfg.model).expect("davinci")
    config = resolved.config
    assert isinstance(config, DaVinciConfig)
    if len(text_tokenizer) > config.text_vocab_size:
        raise ValueError(f"the text tokenizer has {len(text_tokenizer)} ids, the model only {config.text_vocab_size}")
    special = {
        "cls_token_id": text_tokenizer.cls_token_id,
        "sep_token_id": text_tokenizer.sep_token_id,
        "pad_token_id": text_tokenizer.pad_token_id,
        "codebook_size": image_tokenizer.codebook_size,
    }
    if resolved.pretrained:
        model = load_davinci_model(resolved)
        if any(getattr(model.config, k) != v for k, v in special.items()):
            raise ValueError(f"{cfg.model}: its vocabulary {model.config} does not match the tokenizers {special}")
        return model
    if config.codebook_size != image_tokenizer.codebook_size:
        print(
            f"davinci: {cfg.model} is built with the image tokenizer's {image_tokenizer.codebook_size} codes "
            f"(the preset says {config.codebook_size})"
        )
    return DaVinci(dataclasses.replace(config, **special))


def build_streams(
    cfg: DaVinciPretrainConfig, model: DaVinci, text_tokenizer: Any, run: Run, bad: BadRecords
) -> dict[str, StatefulIterator]:
    """``{"pair": image–caption batches, "text": corpus batches (when objectives.text > 0)}``."""
    world, env, seed = Path(cfg.data.world), run.env, cfg.train.seed or 0
    files = PretrainFiles.find(world, cfg.data.split) if world.is_dir() else PretrainFiles(world)
    if files.image is None:
        raise FileNotFoundError(
            f"davinci pretrain: no image–caption lines: looked for {describe_search(world, cfg.data.split)}"
        )
    resolution = cfg.data.resolution or model.config.image_resolution
    dcfg = PretrainDataConfig(
        resolution=resolution,
        patch_size=STRIDE,
        max_tokens=cfg.data.max_tokens,
        max_words=cfg.objectives.max_prefix_words,
        image_batch_size=cfg.data.batch_size,
        mean=(0.0, 0.0, 0.0),  # pixels stay in [0, 1]: the stem and the image tokenizer take that range
        std=(1.0, 1.0, 1.0),
        augment=False,  # crop + flip as the official transform, no RandAugment
    )
    pairs = PairDataset(files.image, files.root, text_tokenizer, dcfg, train=True, seed=seed, bad=bad)
    pairs.configure(TextEncoder(text_tokenizer, cfg.data.max_tokens), cfg.objectives, resolution // STRIDE)
    streams: dict[str, StatefulIterator] = {
        "pair": PretrainStream(pairs, cfg.data.batch_size, seed, env.rank, env.world_size, cfg.data.threads)
    }
    if cfg.objectives.text > 0:
        source = cfg.data.text_corpus or cfg.data.world
        documents = check_documents(load_corpus(source, bad=bad), source)
        encoder = TextEncoder(text_tokenizer, cfg.data.text_max_tokens)
        streams["text"] = TextPrefixStream(
            documents,
            cfg.data.text_batch_size,
            encoder,
            cfg.objectives.text_max_prefix_words,
            seed,
            env.rank,
            env.world_size,
        )
    return streams


class LossTrace:
    """Per objective, this call's per-step losses (rank 0's), for the report's first/last-window means."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def __call__(self, step: int, losses: dict[str, float], metrics: dict[str, float]) -> None:
        self.steps.append({k: v for k, v in losses.items() if k.endswith("_loss")})

    def window_means(self, window: int = 10) -> dict[str, dict[str, float]]:
        """``{objective: {"first": mean of the first window, "last": mean of the last window}}``."""
        out: dict[str, dict[str, float]] = {}
        for name in OBJECTIVES:
            values = [s[f"{name}_loss"] for s in self.steps if f"{name}_loss" in s]
            if values:
                w = min(window, len(values))
                out[name] = {"first": sum(values[:w]) / w, "last": sum(values[-w:]) / w}
        return out


# ---------------------------------------------------------------------------------------------- job
def run_davinci_pretrain(cfg: DaVinciPretrainConfig, resume: str | None = None) -> dict[str, Any]:
    """DaVinci pre-training from ``cfg`` (python or torchrun); the report on rank 0, ``{}`` elsewhere."""

    def body(run: Run) -> dict[str, Any]:
        with skipping_bad_records(cfg.skip_bad) as bad:
            return _run(cfg, run, resume, bad)

    return run_recipe(cfg.train.run_dir, body, cfg.torch_threads)


def _run(cfg: DaVinciPretrainConfig, run: Run, resume: str | None, bad: BadRecords) -> dict[str, Any]:
    image_tokenizer = load_image_tokenizer(cfg.tokenizer)
    text_tokenizer = get_tokenizer(resolve_model(cfg.model).expect("davinci"))
    seed_model_init(cfg.train.seed or 0)
    model = build_model(cfg, image_tokenizer, text_tokenizer)
    task = DaVinciPretrainTask(model, image_tokenizer, cfg.objectives)
    streams = build_streams(cfg, model, text_tokenizer, run, bad)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run.write_config(cfg)
    trace = LossTrace()
    summary = train(task, StreamDict(streams), optimizer, scheduler, cfg.train, run.env, on_step=trace, resume=resume)
    if not run.is_main:
        return {}
    model.save_pretrained(run.dir / "model", tokenizer=text_tokenizer)
    report = {
        "summary": summary.to_dict(),
        "losses": trace.window_means(),
        "model_config": model.config.to_dict(),
        "model_dir": str(run.dir / "model"),
        "image_tokenizer": str(cfg.tokenizer),
        "skipped_records": len(bad.errors),
    }
    run.write_summary(report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Per objective the mean loss of the first and last (up to) 10 steps of this call, then the cost line."""
    lines = ["DaVinci pre-training losses (mean of the first / last 10 steps):"]
    for name, values in report["losses"].items():
        lines.append(f"  {name:<5} {values['first']:8.4f} -> {values['last']:8.4f}")
    lines.append(format_cost(report["summary"]))
    lines.append(f"model saved to {report['model_dir']}")
    return "\n".join(lines)
