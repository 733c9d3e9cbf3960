"""The downstream-task interface: one :class:`DownstreamTask` per task (retrieval, VQA, NLVR2, ...).

A task object is a small, stateless recipe (its ``options`` are plain JSON values saved in the run's
``task.json``). It builds a :class:`TaskModule` (an ``nn.Module`` owning the X²-VLM model, the task
head and the losses, whose ``forward(batch)`` returns ``(losses, metrics)`` as
:func:`grainvl.train.loop.train` wants), a resumable training stream, an evaluation on a world split
that writes predictions in the official result format, and a zero-argument latency call for the
benchmark.

Evaluation may run on several processes: each rank scores its shard of the split
(:func:`shard_indices`, batched by :func:`iter_shard_batches`) and :func:`gather_predictions` merges the
per-rank predictions on rank 0, de-duplicated by key, so metrics are computed once over exactly the split.

A fine-tuned run folder holds ``model/`` (``XVLM.save_pretrained`` + tokenizer), ``head.safetensors``
(every task-module parameter/buffer outside ``model.``; :meth:`DownstreamTask.save_head`) and
``task.json`` (task name + options); :func:`grainvl.recipes.finetune.load_finetuned` rebuilds it exactly.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.distributed as dist
from torch import nn

from grainvl.data.downstream import warn_small_split
from grainvl.data.iterators import StatefulIterator
from grainvl.data.layout import layout_for
from grainvl.data.pretrain import PretrainDataConfig
from grainvl.data.world.ontology import SPLITS
from grainvl.models.xvlm import XVLM
from grainvl.utils.distributed import get_rank, get_world_size
from grainvl.utils.fileio import atomic_write_text, load_model_safetensors, save_model_safetensors, write_json

HEAD_FILE = "head.safetensors"
TASK_FILE = "task.json"
SPLIT_ALIASES = {"id": "test", "ood": "test_ood"}


# ---------------------------------------------------------------------------------------------- splits
def resolve_split(split: str) -> str:
    """CLI split names to world split names: ``id`` -> ``test``, ``ood`` -> ``test_ood``; others pass through."""

    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS and not SPLIT_NAME.fullmatch(name):
        raise ValueError(f"unknown split {split!r}; use id, ood, a world split {SPLITS} or an official name (testA)")
    return name


SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


# ---------------------------------------------------------------------------------------------- data files
def data_files(world: Path, task: str, split: str) -> list[Path]:
    """The annotation files of ``task``'s ``split`` under a data root (:mod:`grainvl.data.layout`).

    A split that does not exist is FileNotFoundError naming where it was looked for.
    """
    layout = layout_for(world)
    files = layout.split_files(task, resolve_split(split))
    if not files:
        raise FileNotFoundError(layout.describe_missing(task, resolve_split(split)))
    return files


def has_split(world: Path, task: str, split: str) -> bool:
    """Whether ``task``'s ``split`` exists under the data root (the recipes check every split before step 1)."""
    return bool(layout_for(world).split_files(task, resolve_split(split)))


def latency_split(world: Path, task: str) -> str:
    """The split latency and FLOPs are measured on: ``test``, else ``val``, else ``train`` (real data may lack test)."""
    return next((s for s in ("test", "val") if has_split(world, task, s)), "train")


def image_root(world: Path, task: str, source: str = "") -> Path:
    """The folder image paths of ``task``'s records are relative to: one answer for training, eval and check."""
    return layout_for(world).image_root(task, source)


def split_tag(split: str) -> str:
    """The results.jsonl ``split`` value: ``id`` for ``test``, ``ood`` for ``test_ood``, else the split name."""
    name = SPLIT_ALIASES.get(split, split)
    return {"test": "id", "test_ood": "ood"}.get(name, name)


# ---------------------------------------------------------------------------------------------- data options
@dataclass
class DataOptions:
    """Per-task data settings shared by every task's ``train_stream``/``evaluate``.

    Geometry (resolution, patch size, normalisation, max tokens) always comes from the model
    (:func:`model_data_config`), so a run can never feed a model images it was not built for.
    """

    batch_size: int = 16  # training batch per rank (NLVR2: pairs; retrieval: image-caption pairs)
    eval_batch_size: int = 32
    augment: bool = True  # RandAugment in the training transform, as the official fine-tuning configs
    max_train_samples: int = 0  # 0: the whole train split; > 0: its first N records (quick demos)
    max_eval_samples: int = 0  # 0: the whole evaluation split; > 0: its first N records
    seed: int = 42

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_size}, {self.eval_batch_size}")
        if self.max_train_samples < 0 or self.max_eval_samples < 0:
            raise ValueError("max_train_samples and max_eval_samples must be >= 0")


def model_data_config(model: XVLM, augment: bool = True, **overrides: Any) -> PretrainDataConfig:
    """The data geometry a model expects (resolution, patch, normalisation, text length)."""
    tower, vision = model.vision_encoder, model.config.vision
    fields = {
        "resolution": vision.resolution,
        "patch_size": tower.patch_size,
        "max_tokens": model.config.max_tokens,
        "max_words": model.config.max_tokens,
        "mean": tuple(tower.input_mean),
        "std": tuple(tower.input_std),
        "augment": augment,
        "frame_len": model.config.frame_len,
    }
    fields.update(overrides)
    return PretrainDataConfig(**fields)


# ---------------------------------------------------------------------------------------------- modules
class TaskModule(nn.Module):
    """Base of every task module: ``self.model`` is the X²-VLM; heads are other sub-modules.

    ``forward(batch) -> (losses, metrics)``: ``losses`` maps names ending in ``_loss`` to scalars.
    """

    def __init__(self, model: XVLM) -> None:
        super().__init__()
        self.model = model

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the task adds to the model (``model.*`` is saved by ``XVLM.save_pretrained``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}


# ---------------------------------------------------------------------------------------------- the task
class DownstreamTask(abc.ABC):
    """One downstream task: build, train stream, evaluate, latency call, head save/load.

    Subclasses set ``name``, ``primary_metric`` (a key of :meth:`evaluate`'s result, higher is better)
    and ``default_options`` (JSON-able values); ``DownstreamTask(**options)`` overrides them and rejects
    unknown keys. Whatever a head's shape depends on (e.g. the number of answers read from the world)
    should be recorded in ``self.options`` by :meth:`build`, so that ``task.json`` rebuilds the same head.
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    default_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; known: {sorted(self.default_options)}")
        self.options: dict[str, Any] = {**self.default_options, **options}
        self.data = DataOptions()

    def with_data(self, data: DataOptions) -> DownstreamTask:
        """Set the data options (batch sizes, augmentation, sample caps); returns self."""
        self.data = data
        return self

    @abc.abstractmethod
    def build(self, model: XVLM, world: Path, tokenizer: Any) -> TaskModule:
        """The task module around ``model`` (heads sized from the world's files, e.g. an answer list)."""

    @abc.abstractmethod
    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        """An endless, resumable stream of training batches of this rank's shard of the ``train`` split."""

    @abc.abstractmethod
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        """Metrics on a world split (``test``/``test_ood``/``val``; ``id``/``ood`` accepted).

        Collective under a process group: every rank must call it; rank 0 returns the metrics (and
        writes ``out_dir``), the other ranks return ``{}``.
        """

    @abc.abstractmethod
    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        """A zero-argument callable running one inference on ``batch_size`` real test samples."""

    # ------------------------------------------------------------------ evaluation helpers
    def eval_batches(self, module: nn.Module, data: EvalData) -> Iterator[tuple[list[int], list[Any], dict[str, Any]]]:
        """This rank's share of ``data`` in ``eval_batch_size`` batches on the module's device."""
        return iter_shard_batches(data, self.data.eval_batch_size, module_device(module))

    def publish(
        self,
        predictions: Sequence[dict[str, Any]],
        key: str,
        out_dir: Path | None,
        file_name: str,
        view: Callable[[list[dict[str, Any]]], Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Merge every rank's predictions (:func:`gather_predictions`) and write them as ``out_dir/file_name``.

        ``view`` turns the merged list into what the file holds when the official format is not the
        list itself. Collective; rank 0 gets the merged list (written only when non-empty; one warning line when
        it has fewer than ``SMALL_SPLIT`` examples), the others ``[]``.
        """
        merged = gather_predictions(predictions, key)
        if merged:
            write_json_result(out_dir, file_name, merged if view is None else view(merged))
            warn_small_split(f"{self.name} ({Path(file_name).stem})", len(merged), "examples")  # one line, rank 0
        return merged

    def latency_batch(self, module: nn.Module, data: EvalData, batch_size: int) -> dict[str, Any]:
        """``batch_size`` real items (cycling through a smaller split), collated on the module's device."""
        return to_device(data.collate([data[i % len(data)] for i in range(batch_size)]), module_device(module))

    # ------------------------------------------------------------------ persistence
    def save_head(self, module: TaskModule, directory: str | Path) -> None:
        """Write ``head.safetensors`` (task parameters outside the model) and ``task.json`` atomically."""

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = module.head_state_dict()
        if state:
            save_model_safetensors(directory / HEAD_FILE, state)
        meta = {"task": self.name, "options": self.options, "data": dataclasses.asdict(self.data)}
        atomic_write_text(directory / TASK_FILE, json.dumps(meta, indent=2))

    def load_head(self, module: TaskModule, directory: str | Path) -> None:
        """Load ``head.safetensors`` into ``module`` strictly (every head key present, nothing extra)."""

        path = Path(directory) / HEAD_FILE
        expected = set(module.head_state_dict())
        if not expected:
            return
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {self.name} head weights are missing")
        state = load_model_safetensors(path)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{path}: missing head keys {missing[:10]}, unexpected {unexpected[:10]}")
        module.load_state_dict(state, strict=False)


def inference_call(module: nn.Module, run: Callable[[], Any]) -> Callable[[], Any]:
    """``run`` as a latency call: the module in eval mode, no autograd (what every task's inference does)."""

    @torch.no_grad()
    def call() -> Any:
        module.eval()
        return run()

    return call


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a parameter-free module)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch dict moved to ``device``; other values untouched."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- multi-process eval
def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """This rank's items of ``range(n)``: positions ``rank, rank + W, ...`` padded so every rank has as many.

    Padding repeats items from the start (as ``DistributedSampler`` does) so collective calls inside
    evaluation stay in step; :func:`gather_predictions` drops the repeats by key.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if n == 0:
        return []
    per_rank = -(-n // world_size)  # ceil
    padded = [i % n for i in range(per_rank * world_size)]
    return padded[rank::world_size]


class EvalData(Protocol):
    """What :func:`iter_shard_batches` needs of an evaluation dataset: indexable items and a ``collate``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def collate(self, items: list[Any]) -> dict[str, Any]: ...


def iter_shard_batches(
    data: EvalData, batch_size: int, device: torch.device, rank: int | None = None, world_size: int | None = None
) -> Iterator[tuple[list[int], list[Any], dict[str, Any]]]:
    """This rank's share of ``data`` (:func:`shard_indices`) in batches: ``(indices, items, batch)``.

    ``items`` are ``data[i]`` for each dataset index in ``indices``; ``batch`` is their ``collate``
    with its tensors on ``device``. Items come along for the fields a collate drops (grounding's
    original image sizes).
    """
    mine = shard_indices(len(data), rank, world_size)
    for start in range(0, len(mine), batch_size):
        indices = mine[start : start + batch_size]
        items = [data[i] for i in indices]
        yield indices, items, to_device(data.collate(items), device)


def gather_predictions(
    predictions: Sequence[dict[str, Any]], key: str | Callable[[dict[str, Any]], Hashable]
) -> list[dict[str, Any]]:
    """Merge every rank's predictions on rank 0, de-duplicated by ``key``, sorted by it.

    A collective under a process group (call on every rank). Rank 0 gets the merged list; other ranks
    get ``[]``. Without a process group it just de-duplicates and sorts. Duplicates (from padding)
    keep the first occurrence in rank order.
    """
    get_key = (lambda p: p[key]) if isinstance(key, str) else key
    world_size = get_world_size()
    if world_size > 1:
        gathered: list[Any] = [None] * world_size if get_rank() == 0 else None  # type: ignore[assignment]
        dist.gather_object(list(predictions), gathered, dst=0)
        if get_rank() != 0:
            return []
        merged = [p for part in gathered for p in part]
    else:
        merged = list(predictions)
    unique: dict[Hashable, dict[str, Any]] = {}
    for p in merged:
        unique.setdefault(get_key(p), p)
    return [unique[k] for k in sorted(unique, key=_sort_key)]


def _sort_key(value: Hashable) -> tuple[int, Any]:
    # Ids may be ints or strings in official files; sort numbers numerically, then strings.
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def write_json_result(out_dir: Path | None, name: str, obj: Any) -> Path | None:
    """Write ``obj`` as ``out_dir/name`` atomically (rank 0 only); returns the path or None."""
    if out_dir is None or get_rank() != 0:
        return None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / name, obj)
    return out_dir / name
