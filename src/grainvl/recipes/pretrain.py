"""``grainvl pretrain``: X²-VLM pre-training on X-VLM-format data (the world by default).

One entry point for ``python -m grainvl pretrain`` and ``torchrun --nproc_per_node N -m grainvl
pretrain``: the process group exists only when torchrun/SLURM start several processes. Each step
draws one image batch, one region batch and (when the data has videos) one video batch, as the
official ``mixed_in_batch`` loop does (xvlm.md §2.5). The run ends with zero-shot retrieval and
grounding on the ID test split and the OOD split next to chance level, the model saved with
``save_pretrained``, and one ``results.jsonl`` line per metric with the run's cost.

Before step 1 :func:`preflight` finds every file the run reads: a missing training stream stops the
run (one line naming what was looked for); an evaluation split that does not exist is skipped with one
line. ``--config`` also takes an official X-VLM / X²-VLM pre-training YAML (``train_file``,
``train_file_regions``, ``train_file_videos``, ``images``/``regions``/``videos`` sections), translated
by :func:`config_tree`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grainvl.data.formats.validate import allow_outside_root, skipping_bad_records
from grainvl.data.iterators import StreamDict
from grainvl.data.layout import DataLayout, split_of
from grainvl.data.parallel_text import CrossViewDataConfig
from grainvl.data.pretrain import (
    TRAIN_KEYS,
    GroundingEval,
    ImageTextEval,
    PretrainDataConfig,
    PretrainDataFiles,
    PretrainFiles,
    build_pretrain_loaders,
    describe_search,
    entries,
    eval_grounding,
    eval_image_text,
    resolve_under,
)
from grainvl.data.world.ontology import SPLITS
from grainvl.errors import BadRecords
from grainvl.models.factory import create_model, get_model_config, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.scaffold import (
    OFFICIAL_OPTIM_SECTIONS,
    Run,
    announce_unused,
    format_cost,
    map_official_sections,
    metric_rows,
    run_recipe,
    seed_model_init,
    summary_costs,
)
from grainvl.tasks.base import split_tag
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights
from grainvl.tasks.zeroshot import chance_retrieval, zero_shot_grounding, zero_shot_retrieval
from grainvl.train.checkpoint import capture_rng_state, restore_rng_state
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
    min_perc_in_image: float = 0.5  # a region is kept when more than this share of it is in the crop
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
    files: PretrainDataFiles = field(default_factory=PretrainDataFiles)
    """Explicit files by the official config keys (``train_file``, ``train_file_regions``, ``image_root``, ...);
    empty: the files of ``data.split`` are found under ``data.world`` by their names."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    sched: SchedConfig = field(default_factory=lambda: SchedConfig(kind="linear", warmup_steps=0.05))
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: PretrainWeights = field(default_factory=PretrainWeights)
    eval: PretrainEval = field(default_factory=PretrainEval)
    grad_checkpointing: bool = False
    torch_threads: int = 0  # 0: torch's default
    skip_bad: bool = False  # skip bad records (each listed, the count in summary.json) instead of stopping
    objectives: str = ""
    """``xvlm`` (X²-VLM: image, region, video) or ``cclm`` (cross-view: multilingual images + parallel text,
    recipes/cclm.py); empty: the model preset's ``"objectives"`` field, else ``xvlm``."""
    cclm: CrossViewDataConfig = field(default_factory=CrossViewDataConfig)
    """CCLM settings (parallel-text batch, languages, swap and schedule probabilities); read only by cclm runs."""

    def __post_init__(self) -> None:
        if self.objectives not in OBJECTIVES:
            raise ValueError(
                f"objectives must be one of {OBJECTIVES} (or empty: the preset's), got {self.objectives!r}"
            )


OBJECTIVES = ("", "xvlm", "cclm")


def objectives_of(cfg: PretrainConfig) -> str:
    """The objectives a run trains: ``cfg.objectives``, else the model preset's ``objectives`` field, else ``xvlm``."""
    if cfg.objectives:
        return cfg.objectives
    return getattr(get_model_config(cfg.model), "objectives", "xvlm") or "xvlm"


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
        min_perc_in_image=data.min_perc_in_image,
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
    """Zero-shot retrieval and grounding on one split of a world, with chance-level references."""

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; world splits are {SPLITS}")
    retrieval_data = eval_image_text(world, split, tokenizer, dcfg)
    return evaluate_sets(model, EvalData(retrieval_data, eval_grounding(world, split, tokenizer, dcfg)), k_test)


@dataclass
class EvalData:
    """The zero-shot sets of one split (either may be absent from a real data root)."""

    retrieval: ImageTextEval | None
    grounding: GroundingEval | None


def evaluate_sets(model: XVLM, data: EvalData, k_test: int) -> dict:
    """Zero-shot retrieval and/or grounding with chance-level references."""
    metrics: dict[str, float] = {}
    chance: dict[str, float] = {}
    out: dict[str, Any] = {"metrics": metrics, "chance": chance}
    if data.retrieval is not None:
        metrics.update(zero_shot_retrieval(model, data.retrieval, k_test=k_test))
        per_image = len(data.retrieval.text_ids) / max(1, len(data.retrieval.image_text_index))
        chance.update(chance_retrieval(len(data.retrieval.image_text_index), round(per_image)))
        out.update(images=len(data.retrieval.image_text_index), texts=len(data.retrieval.text_ids))
    if data.grounding is not None:
        grounding = zero_shot_grounding(model, data.grounding)
        chance["grounding_acc"] = grounding.pop("prior_grounding_acc")
        grounding.pop("prior_grounding_miou")
        metrics.update(grounding)
        out["refexps"] = len(data.grounding)
    return out


# ---------------------------------------------------------------------------------------------- preflight
@dataclass
class EvalFiles:
    """The files of one zero-shot evaluation split."""

    retrieval: Path | None = None  # image–caption JSON lines or an ALBEF retrieval JSON list
    grounding: Path | None = None  # refcoco+ JSON with a bbox per refexp

    def load(self, root: Path, image_root: Path, tokenizer: Any, dcfg: PretrainDataConfig) -> EvalData:
        """Read, validate and tokenise the files; every image path is checked (a stat each) so that a missing
        image fails now, not after training."""
        retrieval = grounding = None
        if self.retrieval is not None:
            retrieval = eval_image_text(root, "", tokenizer, dcfg, self.retrieval, image_root)
            retrieval.images.check_paths()
        if self.grounding is not None:
            grounding = eval_grounding(root, "", tokenizer, dcfg, self.grounding, image_root)
            grounding.check_paths()
        return EvalData(retrieval, grounding)


@dataclass
class PretrainPlan:
    """What :func:`preflight` found: the training streams and each evaluation split's files."""

    root: Path
    files: PretrainFiles
    evals: dict[str, EvalFiles]
    interval: EvalFiles | None

    @property
    def image_root(self) -> Path:
        return self.files.root


def explicit_eval_files(root: Path, files: PretrainDataFiles) -> dict[str, EvalFiles]:
    """``files.test_file`` by split: retrieval and ``refcoco*`` grounding files (a lone one of a kind: ``test``)."""
    values = entries(files.test_file)
    grounding = [v for v in values if Path(v).name.startswith("refcoco")]
    retrieval = [v for v in values if v not in grounding]
    out: dict[str, EvalFiles] = {}
    for kind, group in (("retrieval", retrieval), ("grounding", grounding)):
        for value in group:
            split = "test" if len(group) == 1 else split_of(value)
            setattr(out.setdefault(split, EvalFiles()), kind, resolve_under(root, value))
    return out


def find_eval_files(root: Path, split: str, files: PretrainDataFiles) -> EvalFiles:
    """A split's evaluation files: explicit ``test_file`` entries, else by name under the data root: the world's
    ``annotations/pretrain/{split}/image_text.jsonl`` (or ``data/pretrain/{split}/``, ``pretrain/{split}/``), else
    the retrieval files of the fine-tuning layout (``coco_{split}.json``, ``flickr30k_{split}.json``); grounding:
    ``refcoco+_{split}.json`` where the fine-tuning layout finds it."""
    explicit = explicit_eval_files(root, files)
    if explicit:
        found = explicit.get(split, EvalFiles())
    else:
        found = EvalFiles()
        image = PretrainFiles.find(root, split).image  # the training streams' own discovery, for this split
        found.retrieval = image[0] if isinstance(image, tuple) else image
        if found.retrieval is None and root.is_dir():
            found.retrieval = next(iter(DataLayout(root).split_files("retrieval", split)), None)
    if found.grounding is None and root.is_dir():
        found.grounding = next(iter(DataLayout(root).split_files("grounding", split)), None)
    return found


def preflight(cfg: PretrainConfig, announce: bool = True) -> PretrainPlan:
    """Find every file the run reads, before the model is built; skipped evaluation splits get one line each.

    A missing training stream is a FileNotFoundError naming what was looked for.
    """
    root = Path(cfg.data.world)
    if cfg.files.has_training():
        files = PretrainFiles.from_sources(root, cfg.files)
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"pretrain: data root not found: {root} (make a world with `grainvl world`)")
        image_root = resolve_under(root, cfg.files.image_root) if cfg.files.image_root else None
        files = PretrainFiles.find(root, cfg.data.split, image_root)
        if files.empty():
            split, keys = cfg.data.split, ", ".join(TRAIN_KEYS.values())
            raise FileNotFoundError(
                f"pretrain: no training files for split {split!r}: looked for {describe_search(root, split)} "
                f"(or name them with {keys})"
            )
    if not files.root.is_dir():
        raise FileNotFoundError(f"pretrain: image root not found: {files.root}")
    if cfg.files.allow_outside_root:
        for folder in (root, files.root):
            allow_outside_root(folder)

    def say(line: str) -> None:
        if announce:
            print(f"pretrain: {line}", file=sys.stderr)

    evals: dict[str, EvalFiles] = {}
    for split in dict.fromkeys(cfg.eval.splits):
        found = find_eval_files(root, split, cfg.files)
        if found.retrieval is None and found.grounding is None:
            say(f"skipping zero-shot evaluation on {split!r}: no image–caption or grounding file for it under {root}")
            continue
        if found.retrieval is None or found.grounding is None:
            missing = "retrieval (no image–caption file)" if found.retrieval is None else "grounding (no refcoco+ file)"
            say(f"zero-shot evaluation on {split!r} without {missing}")
        evals[split] = found
    interval = None
    if cfg.train.eval_every > 0:
        interval = find_eval_files(root, cfg.eval.interval_split, cfg.files)
        if interval.retrieval is None and interval.grounding is None:
            say(f"no evaluation every {cfg.train.eval_every} steps: split {cfg.eval.interval_split!r} does not exist")
            interval = None
    return PretrainPlan(root, files, evals, interval)


# ---------------------------------------------------------------------------------------------- run


def run_pretrain(cfg: PretrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Build everything from ``cfg``, train, evaluate on rank 0; returns the run summary (rank 0)."""

    def body(run: Run) -> dict[str, Any]:
        # Every reader of the run (training streams and evaluation files) skips into one collector.
        with skipping_bad_records(cfg.skip_bad) as bad:
            return _run(cfg, run, resume, bad)

    return run_recipe(cfg.train.run_dir, body, cfg.torch_threads)


def _run(cfg: PretrainConfig, run: Run, resume: str | None, bad: BadRecords) -> dict[str, Any]:
    env = run.env
    plan = preflight(cfg, announce=run.is_main)
    seed_model_init(cfg.train.seed)
    model = create_model(cfg.model)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    tokenizer = get_tokenizer(model.config)
    dcfg = data_config(model, cfg.data)
    # Every evaluation file is read (and its texts tokenised) now: a bad file fails before step 1. The RNG
    # state is put back afterwards, so reading them changes nothing in training (same draws as without).
    rng = capture_rng_state()
    eval_sets = {s: f.load(plan.root, plan.image_root, tokenizer, dcfg) for s, f in plan.evals.items()}
    interval = plan.interval.load(plan.root, plan.image_root, tokenizer, dcfg) if plan.interval else None
    restore_rng_state(rng)
    streams = build_pretrain_loaders(
        plan.files,
        cfg.data.split,
        tokenizer,
        dcfg,
        seed=cfg.train.seed,
        rank=env.rank,
        world_size=env.world_size,
        num_threads=cfg.data.threads,
        bad=bad,
    )
    if run.is_main and cfg.skip_bad:  # every file is read now: say what was left out before step 1
        print(f"pretrain: {bad.summary()}", file=sys.stderr)
    task = PretrainTask(model, cfg.weights)
    optimizer = _optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, dataclasses.replace(cfg.sched, total_steps=cfg.train.steps))
    run.write_config(cfg)

    def eval_fn(step: int) -> dict[str, float]:
        if not run.is_main or step == cfg.train.steps or interval is None:  # the final evaluation runs below
            return {}
        out = evaluate_sets(model, interval, cfg.eval.k_test)
        return {f"{cfg.eval.interval_split}/{k}": v for k, v in out["metrics"].items()}

    summary = train(task, StreamDict(streams), optimizer, scheduler, cfg.train, env, eval_fn=eval_fn, resume=resume)
    if not run.is_main:
        return {}
    model.save_pretrained(run.dir / "model", tokenizer=tokenizer)
    evaluations = {s: evaluate_sets(model, data, cfg.eval.k_test) for s, data in eval_sets.items()}
    costs = summary_costs(summary, cfg.train.seed)
    dataset = "world" if (plan.root / "manifest.json").exists() else str(cfg.data.world)
    for split, result in evaluations.items():
        for task_name, values in zeroshot_tasks(result["metrics"]).items():
            run.append(
                metric_rows(
                    values, model=cfg.model, task=task_name, dataset=dataset, split=split_tag(split), costs=costs
                )
            )
    report = {
        "summary": summary.to_dict(),
        "evaluations": evaluations,
        "model_dir": str(run.dir / "model"),
        "skipped_records": len(bad.errors),
    }
    run.write_summary(report)
    return report


def zeroshot_tasks(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Zero-shot metrics split by task: ``grounding*`` metrics belong to grounding, the rest to retrieval."""
    grouped: dict[str, dict[str, float]] = {}
    for metric, value in metrics.items():
        task = "zeroshot_grounding" if metric.startswith("grounding") else "zeroshot_retrieval"
        grouped.setdefault(task, {})[metric] = value
    return grouped


SIZES = (("images", "images"), ("texts", "captions"), ("refexps", "referring expressions"))


def format_report(report: dict[str, Any]) -> str:
    """The end-of-run table: zero-shot metrics per split next to chance, then the run's cost."""
    lines = []
    for split, result in report["evaluations"].items():
        m, c = result["metrics"], result["chance"]
        sizes = [f"{result[k]} {name}" for k, name in SIZES if k in result]
        lines.append(f"zero-shot on {split} ({', '.join(sizes)}):")
        lines.append(f"  {'metric':<16}{'model':>10}{'chance':>10}")
        for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "grounding_acc"):
            if key in m:
                lines.append(f"  {key:<16}{m[key]:>10.1f}{c.get(key, float('nan')):>10.1f}")
    lines.append(format_cost(report["summary"]))
    lines.append(f"model saved to {report['model_dir']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- official configs
OFFICIAL_FILE_KEYS = (*TRAIN_KEYS.values(), "train_file_text", "image_root", "test_file")
# official section -> {official key: PretrainData field}
SECTIONS = {
    "images": {"batch_size": "image_batch_size"},
    "regions": {"batch_size": "region_batch_size", "max_images": "region_images", "max_regions": "max_regions",
                "min_perc_in_image": "min_perc_in_image"},
    "videos": {"batch_size": "video_batch_size", "frame_len": "frame_len"},
}  # fmt: skip
# the record fields grainvl reads: section -> (image keys, caption keys)
READ_KEYS = {
    "images": (("image", "binary"), ("caption", "desc")),
    "regions": (("image", "binary"), ("caption",)),
    "videos": (("video_frames",), ("text",)),
}
ACCELERATOR = {
    "accelerator": ("train", {"CLIP_GRAD_NORM": "clip_grad", "GRAD_ACCUMULATE_STEPS": "grad_accum", "RNG_SEED": "seed"})
}
# settings of the official code that grainvl's readers already follow (not "ignored")
HONOURED = {"image_key", "is_image_rpath", "caption_key", "tokenized"}


def is_official_config(tree: Any) -> bool:
    """Whether a YAML mapping is an official X-VLM / X²-VLM pre-training config (it has ``train_file*`` keys)."""
    return isinstance(tree, dict) and any(k in tree for k in TRAIN_KEYS.values())


def _check_section(name: str, section: dict[str, Any]) -> None:
    """grainvl reads ``image`` as a path and ``binary`` as base64, captions from the official keys; anything else
    in ``image_key`` / ``caption_key`` is a one-line error rather than a silently different reading."""
    images, captions = READ_KEYS[name]
    key, caption = section.get("image_key", images[0]), section.get("caption_key", captions[0])
    rpath = section.get("is_image_rpath")
    if key not in images or (rpath is not None and name != "videos" and bool(rpath) != (key == "image")):
        raise ValueError(
            f"official config: {name}.image_key {key!r} with is_image_rpath {rpath}: grainvl reads "
            + ("'video_frames'" if name == "videos" else "image paths from 'image' and base64 images from 'binary'")
        )
    if caption not in captions:
        raise ValueError(f"official config: {name}.caption_key {caption!r}: grainvl reads {' or '.join(captions)}")
    if section.get("tokenized"):
        raise ValueError(f"official config: {name}.tokenized is true: grainvl reads raw text (as the official code)")


def config_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """A :class:`PretrainConfig` mapping from an official X-VLM / X²-VLM pre-training config; grainvl's own keys
    pass through, official keys grainvl has no use for are listed on one line.

    Mapped: ``train_file``, ``train_file_regions``, ``train_file_videos``, ``image_root``, ``test_file`` →
    ``files`` (``test_file`` also → ``eval.splits``); ``images.batch_size`` → ``data.image_batch_size``;
    ``regions.{batch_size, max_images, max_regions, min_perc_in_image}`` → ``data.{region_batch_size,
    region_images, max_regions, min_perc_in_image}``; ``videos.{batch_size, frame_len}`` → ``data``;
    ``mask_prob``, ``max_masks`` → ``data``; ``optimizer.{lr, weight_decay, lr_mult}`` → ``optim``;
    ``schedular.num_warmup_steps`` → ``sched.warmup_steps``; ``accelerator.{CLIP_GRAD_NORM,
    GRAD_ACCUMULATE_STEPS, RNG_SEED}`` → ``train.{clip_grad, grad_accum, seed}``. ``data.world`` defaults to
    ``.`` (official paths are relative to where the official code runs; ``--data-root`` sets it).
    """
    if not is_official_config(tree):
        return tree
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items() if k in known}
    used: set[str] = set(out)
    files = {k: tree[k] for k in OFFICIAL_FILE_KEYS if tree.get(k) is not None}
    out["files"] = {**files, **(out.get("files") or {})}
    used |= set(files)
    data = out.setdefault("data", {})
    data.setdefault("world", ".")
    ignored: list[str] = []
    for name, mapping in SECTIONS.items():
        section = tree.get(name)
        if not isinstance(section, dict):
            continue
        used.add(name)
        _check_section(name, section)
        for key, value in section.items():
            if key in mapping:
                data.setdefault(mapping[key], value)
            elif key not in HONOURED:
                ignored.append(f"{name}.{key}")
    for key in ("mask_prob", "max_masks"):
        if key in tree:
            data.setdefault(key, tree[key])
            used.add(key)
    consumed, unmapped = map_official_sections(tree, out, {**OFFICIAL_OPTIM_SECTIONS, **ACCELERATOR})
    used |= consumed
    ignored += unmapped
    tests = explicit_eval_files(Path("."), PretrainDataFiles(test_file=files.get("test_file")))
    if tests:
        out.setdefault("eval", {}).setdefault("splits", list(tests))
    announce_unused(sorted(k for k in tree if k not in used) + ignored)
    return out
