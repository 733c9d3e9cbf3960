"""``grainvl compress``: recipes that compose in order (distill -> prune -> shrink -> theseus -> quantize).

Each stage starts from the previous stage's model and writes ``OUT/<stage>/`` (``config.json`` +
``model.safetensors`` + tokenizer) that ``XVLM.from_pretrained`` loads:

* ``distill``: a student from the teacher's layers (:mod:`.distill`), trained with the task-agnostic
  distillation loss on the world's pre-training data.
* ``prune``: hard-concrete masks + Lagrangian (:mod:`.prune`) while training with distillation from
  the teacher (the teacher itself when ``prune`` comes first: a frozen copy, as CoFi distils from
  the unpruned model). Writes the dense weights plus ``masks.safetensors`` (the final masks) and
  ``prune.json`` (target vs achieved sparsity per modality).
* ``shrink``: the masks -> a smaller dense model (:mod:`.shrink`), checked against the masked model.
* ``theseus``: progressive module replacing (:mod:`.theseus`) of the BERT stack (text and fusion
  segments): successor layers trained on the world's pre-training objectives (ITC + ITM + MLM, the
  model's own losses, no distillation term, as BERT-of-Theseus) under the replacement scheduler, then
  compacted (:func:`~.theseus.compact_xvlm`) into a plain, shallower :class:`XVLM`.
* ``quantize``: dynamic int8 of the linear layers (:mod:`.quantize`), saved as the fp32 weights + a
  ``quantize.json`` flag; every loader of the toolkit (fine-tuning, ``grainvl bench``) re-applies it,
  so the model runs int8 on CPU. It must be the last stage (an int8 model does not train).

The run ends with zero-shot retrieval of the final model on the world's test split and one
``OUT/results.jsonl`` line per metric carrying parameters, FLOPs, wall time, energy and CO₂.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from grainvl.bench.energy import EnergyTracker, count_parameters, flops_per_sample, hardware_tags
from grainvl.bench.results import append_result
from grainvl.compress.prune import (
    LOG_ALPHA_TRAVEL,
    PAPER_GAME_MIN_STEPS,
    PAPER_TASK_DEFAULTS,
    SHORT_RUN_PENALTY_TRAVEL,
    ModalPruner,
    PruneConfig,
    masks_applied,
    short_run_reg_lr,
)
from grainvl.compress.quantize import (
    count_quantized_linears,
    median_latency_ms,
    quantize_dynamic_int8,
    save_quantized_xvlm,
    serialized_size,
)
from grainvl.compress.shrink import shrink, shrink_decoder
from grainvl.compress.theseus import TheseusConfig, compact_xvlm, install_theseus_xvlm, make_scheduler
from grainvl.config import with_values
from grainvl.data.iterators import StreamDict
from grainvl.data.pretrain import build_pretrain_loaders
from grainvl.models.factory import ResolvedModel, get_tokenizer, load_model, resolve_model
from grainvl.models.xvlm import XVLM
from grainvl.recipes.finetune import FinetuneConfig, finetune, load_finetuned, save_finetuned
from grainvl.recipes.pretrain import PretrainData, data_config, evaluate, zeroshot_tasks
from grainvl.recipes.scaffold import cost_columns, format_energy, metric_rows, prepare_run_dir
from grainvl.tasks.base import DownstreamTask, TaskModule, split_tag
from grainvl.tasks.distill import (
    DistillTask,
    LayerMap,
    PruneTask,
    default_layer_map,
    init_student_from_teacher,
    stack_sizes,
)
from grainvl.tasks.pretrain import PretrainTask
from grainvl.tasks.task_distill import TaskDistill, copy_head_from_teacher
from grainvl.tasks.theseus import SuccessorTask
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, lr_multiplier, param_groups, resolve_warmup
from grainvl.utils.distributed import detect_env
from grainvl.utils.fileio import load_model_safetensors, save_model_safetensors

STAGES = ("distill", "prune", "shrink", "theseus", "quantize")
STUDENT_INITS = ("pretrained", "task_teacher")
MASKS_FILE = "masks.safetensors"


# Task names as everywhere else in grainvl (``grainvl finetune nlvr2``) -> the keys of the paper's stage-2 settings,
# which follow EfficientVLM's config files (``nlvr``). ``nlvr`` stays accepted as an alias of ``nlvr2``.
PAPER_TASK_KEYS = {"nlvr2": "nlvr"}
TASK_ALIASES = {paper: ours for ours, paper in PAPER_TASK_KEYS.items()}
COMPRESS_TASKS = tuple(next((t for t, k in PAPER_TASK_KEYS.items() if k == key), key) for key in PAPER_TASK_DEFAULTS)
# Stage 2 runs on these downstream tasks; grounding is not in EfficientVLM and takes retrieval's settings (ours).
STAGE2_TASKS = (*COMPRESS_TASKS, "grounding")
PAPER_SETTINGS_OF = {"grounding": "retrieval"}


@dataclass
class CompressConfig:
    """One ``grainvl compress`` run. ``steps`` is per training stage (distill, prune)."""

    teacher: str
    recipe: list[str]
    world: str
    out: str
    steps: int = 100
    target_sparsity: float | None = None  # None: the paper's value for ``task``
    # None: the prune stage trains on the world's pre-training objectives with the general distillation loss
    # (retrieval's paper settings). A task (STAGE2_TASKS): EfficientVLM's stage 2, pruning *during that task's
    # fine-tuning* with the paper's task distillation mix from the teacher fine-tuned on it (tasks/task_distill.py).
    task: str | None = None
    task_teacher: str | None = None  # the teacher's fine-tuned run folder on ``task``; None: fine-tuned here first
    teacher_steps: int | None = None  # fine-tuning steps of that teacher (None: ``steps``)
    # FinetuneConfig values (dotted or nested) for the teacher's fine-tuning and the task data of the prune stage,
    # e.g. {"optim": {"lr": 1e-4}, "data": {"batch_size": 16}, "options": {"k_test": 16}}.
    finetune: dict[str, Any] = field(default_factory=dict)
    head_from_teacher: bool = True  # start the student's task head from the fine-tuned teacher's (short runs)
    # Stage 2's starting backbone. "pretrained": the given model (EfficientVLM: the stage-1 GD student).
    # "task_teacher": CoFi's start (ours for EfficientVLM) - the teacher fine-tuned on the task, whole (full depth,
    # its head too), at ``student_resolution`` if given: pruning then removes from a model that already solves
    # the task, so sparsity 0 is the teacher itself. Takes the recipe prune[,shrink] (no distill stage).
    student_init: str = "pretrained"
    student_resolution: int | None = None  # a student vision tower at a smaller input (EfficientNet towers)
    evaluate_teacher: bool = True  # stage 2: score the fine-tuned teacher too (a benchmark that has its scores: False)
    per_modality: dict[str, float] | None = None
    student: str = "half"  # layer-map preset: "half" (every other layer) or "efficientvlm" (6/3/3)
    student_layers: tuple[int, int, int] | None = None  # (vision, text, fusion) layer counts; overrides ``student``
    distill_lr: float = 1e-4  # GD: AdamW 1e-4, wd 0.01, betas (0.9, 0.98), linear schedule
    prune_lr: float | None = None  # None: the paper's lr for ``task``
    reg_lr: float | None = None  # None: the paper's reg_learning_rate for ``task``
    lagrangian_warmup: float = 0.1  # fraction of the prune steps (paper: 1 epoch of 10)
    # Short runs: reg lr raised to travel/steps so log α can move that far (None: the paper's fixed reg lr);
    # the final masks are then calibrated onto the target (prune.ModalPruner.calibrate_; False: never).
    reg_lr_travel: float | None = LOG_ALPHA_TRAVEL
    calibrate: bool = True
    # The Lagrangian: "paper" (λ1·gap + λ2·gap², log α travel ``reg_lr_travel``), "penalty" (λ2·gap² alone,
    # travel SHORT_RUN_PENALTY_TRAVEL: λ1 winds up in short runs and the game stops far from the target) or
    # "auto": penalty in runs shorter than PAPER_GAME_MIN_STEPS (1,000) or too short for the paper's reg lr, else the
    # paper's game.
    lagrangian: str = "auto"
    fast_dropout: bool = False  # TrainConfig.fast_dropout for the distill and prune stages
    # lr of λ relative to log α's (1: one rate, the paper's). 10 makes the short-run penalty reach the target by
    # itself, but in 100-step runs it pruned by cost rather than by the task and kept less (docs/compression.md).
    lambda_lr_scale: float = 1.0
    theseus_text: int | None = None  # successor layers of the text segment (None: half of it, at least 1)
    theseus_fusion: int | None = None  # ... of the fusion segment (None: half of it, at least 1)
    theseus_scheduler: str = "linear"  # "linear" p(t) = min(1, k t + b) or "constant" p
    theseus_rate: float = 0.3  # b (linear) or p (constant); official README values
    theseus_k: float | None = None  # linear slope; None: reach p = 1 at 2/3 of the steps
    theseus_lr: float = 1e-4  # successor layers only (the official optimizer holds nothing else)
    prune_layers: bool = False  # CoFi whole-sub-layer masks too
    prune_cnn_channels: bool = False  # MBConv expansion channels of an EfficientNet tower too (our extension)
    image_batch_size: int = 8
    region_images: int = 4
    seed: int = 42
    eval_split: str = "test"
    track_energy: bool = True
    progress: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        if not self.recipe:
            raise ValueError("empty recipe; choose stages from " + ", ".join(STAGES))
        unknown = [s for s in self.recipe if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown recipe stage(s) {unknown}; available: {', '.join(STAGES)}")
        if len(set(self.recipe)) != len(self.recipe):
            raise ValueError(f"recipe {self.recipe} repeats a stage")
        if self.task is not None:
            self.task = TASK_ALIASES.get(self.task, self.task)
            if self.task not in STAGE2_TASKS:
                raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(STAGE2_TASKS)}")
        if self.task is not None and ("prune" not in self.recipe or set(self.recipe) - {"distill", "prune", "shrink"}):
            raise ValueError(
                f"pruning during {self.task} fine-tuning takes the stages distill, prune, shrink (prune required), "
                f"got {','.join(self.recipe)}"
            )
        if self.task is None and self.task_teacher is not None:
            raise ValueError("task_teacher needs task (the task it was fine-tuned on)")
        if self.student_init not in STUDENT_INITS:
            raise ValueError(f"student_init must be one of {', '.join(STUDENT_INITS)}, got {self.student_init!r}")
        cofi = self.student_init == "task_teacher"
        if cofi and (self.task is None or "distill" in self.recipe):
            raise ValueError(
                "student_init task_teacher starts stage 2 from the fine-tuned teacher: it needs --task and a recipe "
                "without distill (prune[,shrink])"
            )
        if self.student_resolution is not None and "distill" not in self.recipe and not cofi:
            raise ValueError(
                "student_resolution needs the distill stage or student_init task_teacher (the student is built there)"
            )
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if (
            "shrink" in self.recipe
            and "prune" in self.recipe
            and self.recipe.index("shrink") < self.recipe.index("prune")
        ):
            raise ValueError("shrink must come after prune (it removes what pruning masked)")
        if "quantize" in self.recipe and self.recipe[-1] != "quantize":
            raise ValueError("quantize must be the last stage (an int8 model cannot be trained or pruned further)")
        if "prune" in self.recipe:
            after_prune = self.recipe[self.recipe.index("prune") + 1 :]
            later = [s for s in after_prune if s in ("theseus", "quantize", "distill")]
            if later and ("shrink" not in after_prune or after_prune.index("shrink") > after_prune.index(later[0])):
                raise ValueError(
                    f"{later[0]} after prune needs shrink in between (the saved prune stage keeps dense weights "
                    "and separate masks, which later stages would drop)"
                )
        if self.lagrangian not in ("auto", "paper", "penalty"):
            raise ValueError(f"lagrangian must be auto, paper or penalty, got {self.lagrangian!r}")
        if self.lambda_lr_scale <= 0:
            raise ValueError(f"lambda_lr_scale must be > 0, got {self.lambda_lr_scale}")
        if self.theseus_scheduler not in ("constant", "linear"):
            raise ValueError(f"theseus_scheduler must be 'constant' or 'linear', got {self.theseus_scheduler!r}")

    def paper(self, key: str) -> float:
        task = PAPER_SETTINGS_OF.get(self.task or "retrieval", self.task or "retrieval")
        return PAPER_TASK_DEFAULTS[PAPER_TASK_KEYS.get(task, task)][key]


@dataclass
class _State:
    """What flows between stages."""

    model: XVLM
    teacher: XVLM
    tokenizer: Any
    layer_map: LayerMap | None = None
    masks: dict[str, torch.Tensor] | None = None
    pruner: ModalPruner | None = None
    stages: dict[str, Any] = field(default_factory=dict)
    theseus_step: Any = None  # the replacement scheduler's step() while the theseus stage trains
    task: DownstreamTask | None = None  # stage 2: the task, the student's task module, the teacher's
    module: TaskModule | None = None
    teacher_module: TaskModule | None = None


# ----------------------------------------------------------------------------------------- loading
def read_masks(source: ResolvedModel) -> dict[str, torch.Tensor] | None:
    """The ``masks.safetensors`` saved next to a pruned model's weights (a ``prune`` stage folder), or None."""

    folder = source.folder
    if folder is None or source.weights is None or source.weights.parent != folder:
        return None  # a preset, or a training checkpoint: no masks
    if not (folder / MASKS_FILE).is_file():
        return None

    return load_model_safetensors(folder / MASKS_FILE)  # a truncated file: one line naming it


# ----------------------------------------------------------------------------------------- training
def _streams(model: XVLM, tokenizer: Any, cfg: CompressConfig) -> Any:
    data = PretrainData(world=cfg.world, image_batch_size=cfg.image_batch_size, region_images=cfg.region_images)
    dcfg = data_config(model, data)
    streams = build_pretrain_loaders(cfg.world, "train", tokenizer, dcfg, seed=cfg.seed)
    streams.pop("video", None)  # distillation runs on image-text (+ region) batches, as GeneralDistill.py
    return StreamDict(streams)


def _optimizer(
    task: nn.Module, model: nn.Module, lr: float, pruner: ModalPruner | None, steps: int
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """X²-VLM's AdamW groups (lr_mult 2 on new parameters) + constant-lr groups for log α and λ.

    ``model``: the XVLM, or (stage 2) the student's task module, whose task head gets the lr_mult too.
    """

    ocfg = OptimConfig(lr=lr)
    if isinstance(model, XVLM):
        fresh = model.newly_initialised()
    else:  # a task module: its head (outside ``model.``) and the backbone's new parts, as grainvl finetune
        heads = {name.split(".")[0] + "." for name, _ in model.named_parameters() if not name.startswith("model.")}
        fresh = sorted(heads) + [f"model.{p}" for p in model.model.newly_initialised()]
    groups = param_groups(model, ocfg.weight_decay, lr, lr_mult_params=fresh, lr_mult=ocfg.lr_mult)
    for group in groups:
        group["params"] = [(f"model.{n}", p) for n, p in group["params"]]
    if pruner is not None:
        groups += pruner.param_groups()
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=ocfg.betas, eps=ocfg.eps)
    warmup = resolve_warmup(0.1, steps)

    def linear(step: int) -> float:
        return lr_multiplier("linear", step, warmup, steps)

    def constant(step: int) -> float:  # log α and λ keep their lr (EfficientVLM's separate optimizers)
        return 1.0

    schedule = [constant if g.get("constant_lr") else linear for g in optimizer.param_groups]
    return optimizer, LambdaLR(optimizer, schedule)


def _train(
    task: nn.Module, model: nn.Module, state: _State, cfg: CompressConfig, stage: str, lr: float, stream: Any = None
) -> dict[str, Any]:
    """Train ``task`` (whose parameters are ``model``'s, plus the pruner's in the prune stage) for ``cfg.steps``.

    ``stream``: the batches (default: the world's pre-training image-text + region streams)."""
    env = detect_env()
    if env.world_size > 1:
        raise ValueError("grainvl compress runs in one process; launch it with python, not torchrun")
    pruner = state.pruner if stage == "prune" else None
    optimizer, scheduler = _optimizer(task, model, lr, pruner, cfg.steps)
    tcfg = TrainConfig(
        steps=cfg.steps,
        run_dir=str(Path(cfg.out) / stage),
        save_final=False,
        track_energy=False,  # the whole compress run is tracked once
        tensorboard=False,
        progress=cfg.progress,
        log_every=cfg.log_every,
        seed=cfg.seed,
        count_flops=False,  # the final model's FLOPs are measured once, at batch 1, in the report
        fast_dropout=cfg.fast_dropout,
    )

    def on_step(step: int, losses: dict[str, float], metrics: dict[str, float]) -> None:
        if pruner is not None:
            pruner.on_step(step)  # one global counter: the warm-up never restarts at an epoch boundary
        if state.theseus_step is not None:
            state.theseus_step()

    if stream is None:
        # Distillation batches are built at the teacher's resolution (a smaller student gets them downsampled).
        stream = _streams(state.teacher if stage in ("distill", "prune") else model, state.tokenizer, cfg)
    summary = train(task, stream, optimizer, scheduler, tcfg, env, on_step=on_step)
    return {"steps": summary.steps, "wall_s": summary.wall_s, "final_losses": summary.final_losses}


# ----------------------------------------------------------------------------------------- stages
def _save(model: XVLM, state: _State, folder: Path) -> None:
    model.save_pretrained(folder, tokenizer=state.tokenizer)


def _save_stage(state: _State, cfg: CompressConfig, folder: Path) -> None:
    """A stage's model: a ``save_pretrained`` folder, or in stage 2 a fine-tuned run folder (model/, head, task.json)
    that ``grainvl eval``, ``grainvl bench`` (``finetuned``) and :func:`load_finetuned` read."""
    if state.module is None:
        _save(state.model, state, folder)
        return
    state.module.eval()
    save_finetuned(state.task, state.module, state.tokenizer, folder, Path(cfg.world))


def stage2_finetune_config(cfg: CompressConfig, run_dir: Path) -> FinetuneConfig:
    """The teacher's fine-tuning run on ``cfg.task`` (``cfg.finetune`` values, no checkpoint, no evaluation)."""
    base = with_values(FinetuneConfig(), cfg.finetune)
    return with_values(
        base,
        {
            "task": cfg.task,
            "model": cfg.teacher,
            "world": cfg.world,
            "eval_splits": (),
            "train.run_dir": str(run_dir),
            "train.steps": cfg.teacher_steps or cfg.steps,
            "train.ckpt_every": 0,
            "train.save_final": False,
            "train.seed": cfg.seed,
            "train.track_energy": False,  # the whole compress run is tracked once
            "train.progress": cfg.progress,
        },
    )


def _task_teacher(cfg: CompressConfig) -> tuple[DownstreamTask, TaskModule, dict[str, Any]]:
    """The teacher fine-tuned on ``cfg.task``: ``cfg.task_teacher`` as given, or fine-tuned now (OUT/teacher_<task>)."""
    world = Path(cfg.world)
    if cfg.task_teacher is not None:
        task, module, _ = load_finetuned(cfg.task_teacher, world)
        if task.name != cfg.task:
            raise ValueError(f"task_teacher {cfg.task_teacher} was fine-tuned on {task.name}, not {cfg.task}")
        info: dict[str, Any] = {"run": cfg.task_teacher, "fine_tuned_here": False}
    else:
        run_dir = Path(cfg.out) / f"teacher_{cfg.task}"
        summary = finetune(stage2_finetune_config(cfg, run_dir))
        task, module, _ = load_finetuned(run_dir, world)
        info = {"run": str(run_dir), "fine_tuned_here": True, "steps": summary["train"]["steps_run"]}
    task.with_data(with_values(FinetuneConfig(), cfg.finetune).data)  # the prune stage's batch sizes
    for param in module.parameters():
        param.requires_grad_(False)
    return task, module.eval(), info


def _prune_on_task(state: _State, cfg: CompressConfig, pcfg: PruneConfig, lr: float) -> dict[str, Any]:
    """Masks learned while fine-tuning the student on ``cfg.task`` with the paper's task distillation mix."""
    task, teacher_module, teacher_info = _task_teacher(cfg)
    world = Path(cfg.world)
    if cfg.student_init == "task_teacher":  # CoFi: the fine-tuned teacher's whole backbone, full depth
        full = default_layer_map(teacher_module.model.config, sizes=stack_sizes(teacher_module.model.config))
        state.model, state.layer_map = init_student_from_teacher(teacher_module.model, full, cfg.student_resolution)
    torch.manual_seed(cfg.seed)  # the student's head initialisation
    student = task.build(state.model, world, state.tokenizer)
    copied = copy_head_from_teacher(student, teacher_module) if cfg.head_from_teacher else []
    state.pruner = ModalPruner(state.model, pcfg, decoder=getattr(student, "text_decoder", None))
    kd = TaskDistill(student, teacher_module, task.name, state.layer_map)
    state.task, state.module, state.teacher_module = task, student, teacher_module
    # Batches at the teacher's resolution (TaskDistill downsamples the student's copy).
    stream = task.train_stream(teacher_module, state.tokenizer, world, task.data, 0, 1)
    info = _train(PruneTask(kd.train(), state.pruner), student, state, cfg, "prune", lr, stream=stream)
    return {
        **info,
        "task": task.name,
        "teacher_task_run": teacher_info,
        "head_tensors_from_teacher": len(copied),
        "kd_weights": dataclasses.asdict(kd.weights),
    }


def _stage_distill(state: _State, cfg: CompressConfig) -> dict[str, Any]:
    layer_map = default_layer_map(state.model.config, cfg.student, sizes=cfg.student_layers)
    student, layer_map = init_student_from_teacher(state.model, layer_map, cfg.student_resolution)
    state.layer_map = layer_map
    task = DistillTask(student, state.teacher, layer_map)
    info = _train(task, student, state, cfg, "distill", cfg.distill_lr)
    state.model = student.eval()
    _save(student, state, Path(cfg.out) / "distill")
    return {**info, "layer_map": layer_map.to_dict()}


@dataclass(frozen=True)
class PruneGame:
    """How the prune stage's Lagrangian is played (:func:`prune_game`)."""

    penalty: bool  # λ2·gap² alone (True) or the paper's λ1·gap + λ2·gap²
    reg_lr_requested: float  # the paper's reg_learning_rate for the task, or the user's
    reg_lr: float  # log α's lr, raised in short runs (short_run_reg_lr)
    lambda_lr_scale: float  # λ's lr over log α's

    @property
    def lambda_lr(self) -> float:
        return self.reg_lr * self.lambda_lr_scale


def prune_game(cfg: CompressConfig) -> PruneGame:
    """The Lagrangian, reg lr and λ lr that ``cfg.lagrangian`` gives for ``cfg.steps`` prune steps.

    ``auto``: a run shorter than ``PAPER_GAME_MIN_STEPS``, or too short for the paper's reg lr to move log α
    ``reg_lr_travel`` (short_run_reg_lr), plays the penalty with log α at ``max(reg lr, 8 / steps)``; a longer one
    the paper's game at the paper's rate. λ learns at log α's rate times ``lambda_lr_scale``.
    """
    reg_lr = cfg.reg_lr if cfg.reg_lr is not None else cfg.paper("reg_lr")
    short = short_run_reg_lr(reg_lr, cfg.steps, cfg.reg_lr_travel) > reg_lr or cfg.steps < PAPER_GAME_MIN_STEPS
    penalty = cfg.lagrangian == "penalty" or (cfg.lagrangian == "auto" and short)
    travel = SHORT_RUN_PENALTY_TRAVEL if penalty and cfg.reg_lr_travel is not None else cfg.reg_lr_travel
    reg_lr_used = short_run_reg_lr(reg_lr, cfg.steps, travel)
    return PruneGame(penalty, reg_lr, reg_lr_used, cfg.lambda_lr_scale)


def _stage_prune(state: _State, cfg: CompressConfig) -> dict[str, Any]:
    target = cfg.target_sparsity if cfg.target_sparsity is not None else cfg.paper("target_sparsity")
    game = prune_game(cfg)
    pcfg = PruneConfig(
        target_sparsity=target,
        per_modality=cfg.per_modality,
        warmup_steps=max(1, round(cfg.lagrangian_warmup * cfg.steps)),
        reg_lr=game.reg_lr,
        layers=cfg.prune_layers,
        cnn_channels=cfg.prune_cnn_channels,
        calibrate_tolerance=0.01 if cfg.calibrate else None,
        linear_term=not game.penalty,
        lambda_lr_scale=game.lambda_lr_scale,
    )
    if state.model is state.teacher and cfg.student_init == "pretrained":
        state.model = copy.deepcopy(state.teacher)  # pruning the teacher itself: train a copy, keep the original
    model, teacher = state.model, state.teacher
    lr = cfg.prune_lr if cfg.prune_lr is not None else cfg.paper("lr")
    if cfg.task is None:  # on the pre-training objectives with the general distillation loss
        state.pruner = ModalPruner(model, pcfg)
        task = PruneTask(DistillTask(model, teacher, state.layer_map), state.pruner)
        info = _train(task, model, state, cfg, "prune", lr)
    else:  # EfficientVLM stage 2: during the task's fine-tuning, KD from the teacher fine-tuned on it
        info = _prune_on_task(state, cfg, pcfg, lr)
    state.pruner.eval()
    expected = float(state.pruner.expected_sparsity().detach())  # where the Lagrangian game ended
    learned = state.pruner.achieved_sparsity()
    calibration = state.pruner.calibrate_()  # no-op when the learned masks are within 1 point of the target
    state.masks = state.pruner.final_masks()
    achieved = state.pruner.achieved_sparsity()
    state.pruner.detach()  # the saved dense weights load unmasked; the masks travel in masks.safetensors
    folder = Path(cfg.out) / "prune"
    _save_stage(state, cfg, folder)

    save_model_safetensors(folder / MASKS_FILE, {k: v.contiguous() for k, v in state.masks.items()})
    report = {
        **info,
        "target_sparsity": target,
        "per_modality_targets": cfg.per_modality,
        "achieved_sparsity": achieved,
        "learned_sparsity": learned,  # the deterministic masks before calibration
        "expected_sparsity": expected,
        "calibration": calibration,
        "kept_units": state.pruner.describe(),
        "reg_lr": game.reg_lr,
        "reg_lr_requested": game.reg_lr_requested,
        "lambda_lr": game.lambda_lr,
        "lagrangian": "penalty" if game.penalty else "paper",
        "reached_target_unaided": abs(learned["all"] - target) <= 0.02 if cfg.per_modality is None else None,
        "lr": lr,
    }
    (folder / "prune.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


@torch.no_grad()
def _masked_output_gap(model: XVLM, small: XVLM, masks: dict[str, torch.Tensor]) -> float:
    """Largest |difference| between the masked model and the shrunk one on a random input (a self-check)."""
    gen = torch.Generator().manual_seed(0)
    res = model.config.vision.resolution
    batch = {
        "image": torch.randn(2, 3, res, res, generator=gen),
        "text_ids": torch.randint(1, model.config.text.vocab_size, (2, 9), generator=gen),
        "text_atts": torch.ones(2, 9, dtype=torch.long),
    }
    model.eval()
    small.eval()
    with masks_applied(model, masks):
        a = model.extract_features(batch)
    b = small.extract_features(batch)
    return max(float((x - y).abs().max()) for x, y in ((a.image_embeds, b.image_embeds), (a.fused, b.fused)))


def _stage_shrink(state: _State, cfg: CompressConfig) -> dict[str, Any]:
    if state.masks is None:
        raise ValueError("shrink needs pruning masks: run the prune stage first or pass a pruned folder as --teacher")
    before = sum(p.numel() for p in state.model.parameters())
    small = shrink(state.model, state.masks)
    gap = _masked_output_gap(state.model, small, state.masks)
    state.model = small
    report: dict[str, Any] = {}
    if state.module is not None:  # stage 2: the task module keeps its (possibly pruned) head around the small model
        before = count_parameters(state.module)
        state.module.model = small
        decoder = getattr(state.module, "text_decoder", None)
        if decoder is not None:  # VQA: the answer decoder's own masks (none pruned: the same decoder)
            decoder = shrink_decoder(decoder, state.masks)
            state.module.replace_decoder(decoder)
        report["decoder_params"] = count_parameters(decoder) if decoder is not None else 0
    _save_stage(state, cfg, Path(cfg.out) / "shrink")
    after = count_parameters(state.module) if state.module is not None else sum(p.numel() for p in small.parameters())
    return {**report, "params_before": before, "params_after": after, "max_abs_gap_vs_masked": gap}


def _half(layers: int) -> int | None:
    """Default successor count of a segment: half its layers (a divisor, at least 1); None when empty."""
    if layers == 0:
        return None
    return next(c for c in range(max(1, layers // 2), layers + 1) if layers % c == 0)


def _stage_theseus(state: _State, cfg: CompressConfig) -> dict[str, Any]:
    model = copy.deepcopy(state.model)  # the predecessor (teacher or previous stage) stays untouched
    layers, fusion_start = model.config.text.num_layers, model.bert.fusion_start
    text = cfg.theseus_text if cfg.theseus_text is not None else _half(fusion_start)
    fusion = cfg.theseus_fusion if cfg.theseus_fusion is not None else _half(layers - fusion_start)
    k = cfg.theseus_k if cfg.theseus_k is not None else (1.0 - cfg.theseus_rate) / max(1.0, 2 * cfg.steps / 3)
    tcfg = TheseusConfig(
        text_successors=text,
        fusion_successors=fusion,
        scheduler=cfg.theseus_scheduler,
        replacing_rate=cfg.theseus_rate,
        replacing_steps=(2 * cfg.steps) // 3 if cfg.theseus_scheduler == "constant" else None,
        linear_k=k,
        steps=cfg.steps,
        lr=cfg.theseus_lr,
        seed=cfg.seed,
    )
    encoder = install_theseus_xvlm(model, text, fusion)
    scheduler = make_scheduler(encoder, tcfg)
    rates: list[float] = []
    state.theseus_step = lambda: rates.append(scheduler.step())  # after each optimizer step (official)
    try:
        info = _train(SuccessorTask(PretrainTask(model.train())), model, state, cfg, "theseus", cfg.theseus_lr)
    finally:
        state.theseus_step = None
    small = compact_xvlm(model).eval()
    for param in small.parameters():
        param.requires_grad_(True)
    before = sum(p.numel() for p in state.model.parameters())
    state.model = small
    _save(small, state, Path(cfg.out) / "theseus")
    return {
        **info,
        "text_successors": text,
        "fusion_successors": fusion,
        "successor_sources": encoder.sources,
        "scheduler": cfg.theseus_scheduler,
        "replacing_rate": {"first": rates[0] if rates else None, "last": rates[-1] if rates else None},
        "params_before": before,
        "params_after": sum(p.numel() for p in small.parameters()),
        "text_layers": small.config.text.num_layers,
    }


def _stage_quantize(state: _State, cfg: CompressConfig) -> dict[str, Any]:
    fp32 = state.model.to("cpu").eval()
    folder = save_quantized_xvlm(fp32, Path(cfg.out) / "quantize", tokenizer=state.tokenizer)
    int8 = quantize_dynamic_int8(fp32)
    state.model = int8  # the evaluation below runs the int8 model (CPU)
    return {
        "folder": str(folder),
        "quantized_linears": count_quantized_linears(int8),
        "size_fp32_bytes": serialized_size(fp32),
        "size_int8_bytes": serialized_size(int8),
    }


# ----------------------------------------------------------------------------------------- the run
def run_compress(cfg: CompressConfig) -> dict[str, Any]:
    """Run the recipe; returns the report (also written to ``OUT/compress.json``)."""

    out = Path(cfg.out)
    prepare_run_dir(out)  # before the teacher loads: a bad --out is one line, a foreign non-empty folder refused
    torch.manual_seed(cfg.seed)
    source = resolve_model(cfg.teacher)  # a preset, architecture file, model folder or run folder
    teacher = load_model(source).eval()
    state = _State(model=teacher, teacher=teacher, tokenizer=get_tokenizer(source), masks=read_masks(source))
    tracker = EnergyTracker().start() if cfg.track_energy else None
    start = time.perf_counter()
    stages = {
        "distill": _stage_distill,
        "prune": _stage_prune,
        "shrink": _stage_shrink,
        "theseus": _stage_theseus,
        "quantize": _stage_quantize,
    }
    for stage in cfg.recipe:
        state.stages[stage] = stages[stage](state, cfg)
    wall = time.perf_counter() - start
    energy = tracker.stop() if tracker is not None else None
    report = {
        "config": dataclasses.asdict(cfg),
        "stages": state.stages,
        "wall_s": wall,
        "energy": energy.to_dict() if energy is not None else None,
        "model_dir": str(out / cfg.recipe[-1]),
    }
    evaluate_fn = _evaluate if state.module is None else _evaluate_task
    report["evaluation"] = evaluate_fn(state, cfg, {**report, "energy_report": energy})
    (out / "compress.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    return report


def _cost(model: XVLM) -> dict[str, float]:
    """Parameters (M) and forward GFLOPs of one image-text pair through every tower (batch 1)."""

    res = model.config.vision.resolution
    batch = {
        "image": torch.zeros(1, 3, res, res),
        "text_ids": torch.ones(1, model.config.max_tokens, dtype=torch.long),
        "text_atts": torch.ones(1, model.config.max_tokens, dtype=torch.long),
    }
    model.eval()
    return {
        "params_M": count_parameters(model) / 1e6,
        "gflops": flops_per_sample(lambda b: model.extract_features(b), batch, batch_size=1) / 1e9,
        # batch 1, median of 5 after one warm-up call (see benchmarks/ for ratios)
        "latency_ms": median_latency_ms(lambda: model.extract_features(batch), warmup=1, repeats=5),
    }


def _evaluate(state: _State, cfg: CompressConfig, report: dict[str, Any]) -> dict[str, Any]:
    """Zero-shot retrieval (ITC) of the teacher and the final model; results.jsonl lines for the final model."""

    data = PretrainData(world=cfg.world)

    scores = {}
    for name, model in (("teacher", state.teacher), ("student", state.model)):
        model.eval()
        result = evaluate(model, state.tokenizer, data_config(model, data), cfg.world, cfg.eval_split, k_test=0)
        scores[name] = {**result["metrics"], **_cost(model)}
    # Random scores on the same split: a teacher near this level has nothing to retain.
    chance = dict(result["chance"])
    ranks = [chance[f"{side}_r{k}"] for side in ("txt", "img") for k in (1, 5, 10)]
    scores["chance"] = {**chance, "r_mean": sum(ranks) / len(ranks)}
    final = scores["student"]
    energy = report.get("energy_report")
    costs = cost_columns(params=int(final["params_M"] * 1e6), seed=cfg.seed, hardware=hardware_tags(),
                         gflops=final["gflops"], energy=energy, latency_ms=final["latency_ms"])  # fmt: skip
    metrics = {k: v for k, v in final.items() if k not in ("params_M", "gflops", "latency_ms")}
    grouped = {**zeroshot_tasks(metrics), "compress": {"compress_wall_s": report["wall_s"]}}  # + the run's own cost
    model = f"{state.teacher.config.name}+{'+'.join(cfg.recipe)}"
    for task, values in grouped.items():
        for row in metric_rows(
            values, model=model, task=task, dataset="world", split=split_tag(cfg.eval_split), costs=costs
        ):
            append_result(Path(cfg.out) / "results.jsonl", row)
    return scores


def _task_cost(task: DownstreamTask, module: TaskModule, tokenizer: Any, world: Path) -> dict[str, float]:
    """Parameters (M, task head included) and the batch-1 latency of the task's own inference call."""
    call = task.latency_call(module, tokenizer, world, 1)
    return {"params_M": count_parameters(module) / 1e6, "latency_ms": median_latency_ms(call, warmup=2, repeats=10)}


def _evaluate_task(state: _State, cfg: CompressConfig, report: dict[str, Any]) -> dict[str, Any]:
    """Stage 2: the fine-tuned teacher and the final student on the task's ID and OOD test splits."""
    assert state.task is not None and state.module is not None and state.teacher_module is not None
    world, out = Path(cfg.world), Path(cfg.out)
    scores: dict[str, Any] = {"task": state.task.name, "primary_metric": state.task.primary_metric}
    models = (("teacher", state.teacher_module), ("student", state.module))
    for name, module in models if cfg.evaluate_teacher else models[1:]:
        module.eval()
        per_split = {}
        for split in ("test", "test_ood"):
            folder = out / "predictions" / name / split_tag(split)
            per_split[split_tag(split)] = state.task.evaluate(module, state.tokenizer, world, split, out_dir=folder)
        scores[name] = {"metrics": per_split, **_task_cost(state.task, module, state.tokenizer, world)}
    final = scores["student"]
    energy = report.get("energy_report")
    costs = cost_columns(params=int(final["params_M"] * 1e6), seed=cfg.seed, hardware=hardware_tags(),
                         energy=energy, latency_ms=final["latency_ms"])  # fmt: skip
    model = f"{state.teacher.config.name}+{'+'.join(cfg.recipe)}@{state.task.name}"
    for split, values in final["metrics"].items():
        for row in metric_rows(values, model=model, task=state.task.name, dataset="world", split=split, costs=costs):
            append_result(out / "results.jsonl", row)
    return scores


def _format_task_evaluation(ev: dict[str, Any]) -> list[str]:
    metric = ev["primary_metric"]
    lines = [f"  {ev['task']} ({metric}){'':<4}{'params_M':>10}{'ms@1':>9}{'ID':>8}{'OOD':>8}"]
    for name in ("teacher", "student"):
        if name not in ev:
            continue
        e = ev[name]
        score = [e["metrics"].get(s, {}).get(metric, float("nan")) for s in ("id", "ood")]
        lines.append(f"  {name:<{len(ev['task']) + len(metric) + 7}}{e['params_M']:>10.2f}{e['latency_ms']:>9.2f}"
                     f"{score[0]:>8.2f}{score[1]:>8.2f}")  # fmt: skip
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The end-of-run summary: stages, sparsity, teacher vs compressed model, cost."""
    lines = [f"compress: {' -> '.join(report['config']['recipe'])}  ({report['wall_s']:.0f} s)"]
    stages = report["stages"]
    if "distill" in stages:
        lines.append(f"  distill: layer map {stages['distill']['layer_map']}")
    if "prune" in stages:
        p = stages["prune"]
        achieved = ", ".join(f"{k} {v:.3f}" for k, v in p["achieved_sparsity"].items())
        lines.append(f"  prune: target {p['target_sparsity']:.3f}; achieved {achieved}")
        if "learned_sparsity" in p:
            shifts = ", ".join(f"{k} {v['delta']:+.2f}" for k, v in p["calibration"].items()) or "none"
            lines.append(
                f"    ({p.get('lagrangian', 'paper')} Lagrangian, reg lr {p['reg_lr']:.3g}"
                f"{f' (λ {lam:.3g})' if (lam := p.get('lambda_lr', p['reg_lr'])) != p['reg_lr'] else ''}; "
                f"learned alone: expected "
                f"{p['expected_sparsity']:.3f}, masks {p['learned_sparsity']['all']:.3f}; calibration shift of "
                f"log α: {shifts})"
            )
    if "shrink" in stages:
        s = stages["shrink"]
        lines.append(
            f"  shrink: {s['params_before'] / 1e6:.2f}M -> {s['params_after'] / 1e6:.2f}M params "
            f"(max |masked - shrunk| {s['max_abs_gap_vs_masked']:.1e})"
        )
    if "theseus" in stages:
        t = stages["theseus"]
        lines.append(
            f"  theseus: {t['text_layers']} BERT layers (successors of {t['successor_sources']}), "
            f"{t['params_before'] / 1e6:.2f}M -> {t['params_after'] / 1e6:.2f}M params"
        )
    if "quantize" in stages:
        q = stages["quantize"]
        lines.append(
            f"  quantize: {q['quantized_linears']} int8 linears, {q['size_fp32_bytes'] / 1e6:.2f} -> "
            f"{q['size_int8_bytes'] / 1e6:.2f} MB (CPU only)"
        )
    ev = report["evaluation"]
    if "task" in ev:  # stage 2 on a downstream task
        lines += _format_task_evaluation(ev)
        lines.append(f"  {format_energy(report.get('energy'))}; run folder (grainvl eval) {report['model_dir']}")
        return "\n".join(lines)
    lines.append(f"  {'':<10}{'params_M':>10}{'GFLOPs':>10}{'txt_r1':>8}{'img_r1':>8}{'r_mean':>8}")
    for name in ("teacher", "student"):
        e = ev[name]
        row = f"{e['params_M']:>10.2f}{e['gflops']:>10.3f}{e['txt_r1']:>8.1f}{e['img_r1']:>8.1f}"
        lines.append(f"  {name:<10}{row}{e.get('r_mean', float('nan')):>8.1f}")
    if "chance" in ev:
        c = ev["chance"]
        lines.append(f"  {'chance':<10}{'':>20}{c['txt_r1']:>8.1f}{c['img_r1']:>8.1f}{c['r_mean']:>8.1f}")
    lines.append(f"  {format_energy(report.get('energy'))}; model saved to {report['model_dir']}")
    return "\n".join(lines)
