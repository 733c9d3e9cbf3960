"""``grainvl pretrain``: X²-VLM pre-training on X-VLM-format data (the world by default).

One entry point for ``python -m grainvl pretrain`` and ``torchrun --nproc_per_node N -m grainvl
pretrain``: the process group exists only when torchrun/SLURM start several processes. Each step
draws one image batch, one region batch and (when the data has videos) one video batch, as the
official ``mixed_in_batch`` loop does (xvlm.md §2.5). The run ends with zero-shot retrieval and
grounding on the ID test split and the OOD split next to chance level, the model saved with
``save_pretrained``, and one ``results.jsonl`` line per metric with the run's cost.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grainvl.bench.results import append_result
from grainvl.config import to_dict
from grainvl.data.pretrain import PretrainDataConfig, build_pretrain_loaders, eval_grounding, eval_image_text
from grainvl.data.world.ontology import SPLITS
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights
from grainvl.tasks.zeroshot import chance_retrieval, zero_shot_grounding, zero_shot_retrieval
from grainvl.train.loop import TrainConfig, TrainSummary, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler
from grainvl.utils.distributed import DistEnv, run_in_process_group


@dataclass
class PretrainData:
    """Batch sizes and text settings; geometry (resolution, patch, normalisation) comes from the model."""

    world: str = "runs/world"
    split: str = "train"
    image_batch_size: int = 16
    region_images: int = 8  # images per region batch (official regions.max_images)
    region_batch_size: int = 32  # most region texts per batch
    max_regions: int = 5
    video_batch_size: int = 4
    frame_len: int = 3
    mask_prob: float = 0.5
    max_masks: int = 12
    augment: bool = True
    threads: int = 0  # decoding threads per process (0: in the training thread)


@dataclass
class PretrainEval:
    splits: tuple[str, ...] = ("test", "test_ood")  # zero-shot evaluation at the end (and every eval_every steps)
    interval_split: str = "val"
    k_test: int = 0  # > 0: re-rank ITC top-k by ITM (official retrieval); 0: ITC only
    max_images: int = 0  # 0: all images of the split


@dataclass
class PretrainConfig:
    model: str = "xvlm-tiny"
    data: PretrainData = field(default_factory=PretrainData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="linear", warmup_steps=0.05))
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: PretrainWeights = field(default_factory=PretrainWeights)
    eval: PretrainEval = field(default_factory=PretrainEval)
    grad_checkpointing: bool = False
    torch_threads: int = 0  # 0: torch's default


class MixedStream:
    """One step's batches from every stream: ``{"image": ..., "region": ..., "video": ...}``, resumable."""

    def __init__(self, streams: dict[str, Any]) -> None:
        self.streams = streams

    def __iter__(self) -> MixedStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return {kind: next(stream) for kind, stream in self.streams.items()}

    def state_dict(self) -> dict[str, Any]:
        return {kind: stream.state_dict() for kind, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind, stream in self.streams.items():
            stream.load_state_dict(state[kind])


def data_config(model: XVLM, data: PretrainData) -> PretrainDataConfig:
    tower, vision = model.vision_encoder, model.config.vision
    return PretrainDataConfig(
        resolution=vision.resolution,
        patch_size=tower.patch_size,
        max_tokens=model.config.max_tokens,
        max_words=model.config.max_tokens,
        mask_prob=data.mask_prob,
        max_masks=data.max_masks,
        image_batch_size=data.image_batch_size,
        region_batch_size=data.region_batch_size,
        max_images_per_region_batch=data.region_images,
        max_regions=data.max_regions,
        video_batch_size=data.video_batch_size,
        frame_len=min(data.frame_len, model.config.frame_len),
        mean=tuple(tower.input_mean),
        std=tuple(tower.input_std),
        augment=data.augment,
    )


def _optimizer(task: PretrainTask, cfg: OptimConfig) -> torch.optim.Optimizer:
    """X²-VLM's groups: new parameters (heads, cross-attention) at lr x lr_mult; names are under ``model.``."""
    mult = [f"model.{p}" for p in task.model.newly_initialised()]
    overrides = {f"model.{k}" if not k.startswith("model.") else k: v for k, v in cfg.lr_overrides.items()}
    return build_optimizer(task, dataclasses.replace(cfg, lr_mult_params=mult, lr_overrides=overrides))


def evaluate(model: XVLM, tokenizer: Any, dcfg: PretrainDataConfig, world: str, split: str, k_test: int) -> dict:
    """Zero-shot retrieval and grounding on one split, with chance-level references."""

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; world splits are {SPLITS}")
    retrieval_data = eval_image_text(world, split, tokenizer, dcfg)
    metrics = zero_shot_retrieval(model, retrieval_data, k_test=k_test)
    per_image = len(retrieval_data.text_ids) / max(1, len(retrieval_data.image_text_index))
    chance = chance_retrieval(len(retrieval_data.image_text_index), round(per_image))
    grounding_data = eval_grounding(world, split, tokenizer, dcfg)
    grounding = zero_shot_grounding(model, grounding_data)
    chance["grounding_acc"] = grounding.pop("prior_grounding_acc")
    grounding.pop("prior_grounding_miou")
    metrics.update(grounding)
    return {
        "metrics": metrics,
        "chance": chance,
        "images": len(retrieval_data.image_text_index),
        "texts": len(retrieval_data.text_ids),
        "refexps": len(grounding_data),
    }


def run_pretrain(cfg: PretrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Build everything from ``cfg``, train, evaluate on rank 0; returns the run summary (rank 0)."""
    return run_in_process_group(lambda env: _run(cfg, env, resume), cfg.torch_threads)


def _run(cfg: PretrainConfig, env: DistEnv, resume: str | None) -> dict[str, Any]:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    random.seed(cfg.train.seed)
    model = create_model(cfg.model)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    tokenizer = get_tokenizer(model.config)
    dcfg = data_config(model, cfg.data)
    streams = build_pretrain_loaders(
        cfg.data.world,
        cfg.data.split,
        tokenizer,
        dcfg,
        seed=cfg.train.seed,
        rank=env.rank,
        world_size=env.world_size,
        num_threads=cfg.data.threads,
    )
    task = PretrainTask(model, cfg.weights)
    optimizer = _optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run_dir = Path(cfg.train.run_dir)
    if env.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2), encoding="utf-8")

    def eval_fn(step: int) -> dict[str, float]:
        if env.rank != 0 or step == cfg.train.steps:  # the final evaluation runs below, on every split
            return {}
        out = evaluate(model, tokenizer, dcfg, cfg.data.world, cfg.eval.interval_split, cfg.eval.k_test)
        return {f"{cfg.eval.interval_split}/{k}": v for k, v in out["metrics"].items()}

    summary = train(task, MixedStream(streams), optimizer, scheduler, cfg.train, env, eval_fn=eval_fn, resume=resume)
    if env.rank != 0:
        return {}
    model.save_pretrained(run_dir / "model", tokenizer=tokenizer)
    evaluations = {s: evaluate(model, tokenizer, dcfg, cfg.data.world, s, cfg.eval.k_test) for s in cfg.eval.splits}
    _write_results(run_dir, cfg, summary, evaluations)
    report = {"summary": summary.to_dict(), "evaluations": evaluations, "model_dir": str(run_dir / "model")}
    (run_dir / "summary.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


def _write_results(run_dir: Path, cfg: PretrainConfig, summary: TrainSummary, evaluations: dict) -> None:
    """One results.jsonl line per metric in the long schema, with the run's cost on every line."""
    energy = summary.energy
    hw = summary.hardware
    # Training FLOPs (forward + backward) per sample: one step's counted FLOPs over its samples.
    samples_per_step = summary.samples / summary.steps_run if summary.steps_run else 0
    gflops_per_sample = (
        summary.flops_per_step / samples_per_step / 1e9 if summary.flops_per_step and samples_per_step else None
    )
    for split, result in evaluations.items():
        for metric, value in result["metrics"].items():
            append_result(
                run_dir / "results.jsonl",
                {
                    "model": cfg.model,
                    "task": "zeroshot_retrieval" if not metric.startswith("grounding") else "zeroshot_grounding",
                    "dataset": "world",
                    "split": "ood" if split == "test_ood" else "id",
                    "metric": metric,
                    "value": value,
                    "params_M": summary.params / 1e6,
                    "gflops": gflops_per_sample,
                    "throughput": summary.samples / summary.wall_s if summary.wall_s else None,
                    "energy_kWh": energy.energy_kWh if energy else None,
                    "co2_g": energy.co2_g if energy else None,
                    "hardware": hw.get("cpu") or hw.get("gpu"),
                    "torch": hw.get("torch"),
                    "commit": hw.get("commit"),
                    "seed": cfg.train.seed,
                },
            )


def format_report(report: dict[str, Any]) -> str:
    """The end-of-run table: zero-shot metrics per split next to chance, then the run's cost."""
    lines = []
    for split, result in report["evaluations"].items():
        m, c = result["metrics"], result["chance"]
        lines.append(
            f"zero-shot on {split} ({result['images']} images, {result['texts']} captions, "
            f"{result['refexps']} referring expressions):"
        )
        lines.append(f"  {'metric':<16}{'model':>10}{'chance':>10}")
        for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "grounding_acc"):
            lines.append(f"  {key:<16}{m[key]:>10.1f}{c.get(key, float('nan')):>10.1f}")
    s = report["summary"]
    energy = s.get("energy") or {}
    lines.append(
        f"run: {s['steps']} steps, {s['samples']} samples, {s['wall_s']:.0f} s, {s['params'] / 1e6:.1f}M params, "
        f"{(s.get('total_flops') or 0) / 1e12:.2f} TFLOPs, energy {energy.get('energy_kWh', float('nan')):.2e} kWh, "
        f"{energy.get('co2_g', float('nan')):.2e} g CO2-eq ({energy.get('method', 'not tracked')})"
    )
    lines.append(f"model saved to {report['model_dir']}")
    return "\n".join(lines)


def main_print(report: dict[str, Any]) -> None:
    if report:
        print(format_report(report), file=sys.stdout)
