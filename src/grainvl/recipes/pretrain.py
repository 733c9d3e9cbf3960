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
from dataclasses import dataclass, field
from typing import Any

import torch

from grainvl.data.iterators import StreamDict
from grainvl.data.pretrain import PretrainDataConfig, build_pretrain_loaders, eval_grounding, eval_image_text
from grainvl.data.world.ontology import SPLITS
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.scaffold import Run, format_cost, metric_rows, run_recipe, seed_model_init, summary_costs
from grainvl.tasks.base import split_tag
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights
from grainvl.tasks.zeroshot import chance_retrieval, zero_shot_grounding, zero_shot_retrieval
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler


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
    return run_recipe(cfg.train.run_dir, lambda run: _run(cfg, run, resume), cfg.torch_threads)


def _run(cfg: PretrainConfig, run: Run, resume: str | None) -> dict[str, Any]:
    env = run.env
    seed_model_init(cfg.train.seed)
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
    run.write_config(cfg)

    def eval_fn(step: int) -> dict[str, float]:
        if not run.is_main or step == cfg.train.steps:  # the final evaluation runs below, on every split
            return {}
        out = evaluate(model, tokenizer, dcfg, cfg.data.world, cfg.eval.interval_split, cfg.eval.k_test)
        return {f"{cfg.eval.interval_split}/{k}": v for k, v in out["metrics"].items()}

    summary = train(task, StreamDict(streams), optimizer, scheduler, cfg.train, env, eval_fn=eval_fn, resume=resume)
    if not run.is_main:
        return {}
    model.save_pretrained(run.dir / "model", tokenizer=tokenizer)
    evaluations = {s: evaluate(model, tokenizer, dcfg, cfg.data.world, s, cfg.eval.k_test) for s in cfg.eval.splits}
    costs = summary_costs(summary, cfg.train.seed)
    for split, result in evaluations.items():
        for task_name, values in zeroshot_tasks(result["metrics"]).items():
            run.append(
                metric_rows(
                    values, model=cfg.model, task=task_name, dataset="world", split=split_tag(split), costs=costs
                )
            )
    report = {"summary": summary.to_dict(), "evaluations": evaluations, "model_dir": str(run.dir / "model")}
    run.write_summary(report)
    return report


def zeroshot_tasks(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Zero-shot metrics split by task: ``grounding*`` metrics belong to grounding, the rest to retrieval."""
    grouped: dict[str, dict[str, float]] = {}
    for metric, value in metrics.items():
        task = "zeroshot_grounding" if metric.startswith("grounding") else "zeroshot_retrieval"
        grouped.setdefault(task, {})[metric] = value
    return grouped


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
    lines.append(format_cost(report["summary"]))
    lines.append(f"model saved to {report['model_dir']}")
    return "\n".join(lines)
