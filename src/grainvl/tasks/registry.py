"""Registered downstream tasks by name.

``TASKS`` maps a task name to its :class:`~grainvl.tasks.base.DownstreamTask` class. Entries are
``"module:Class"`` paths imported on first access, so ``import grainvl.tasks.registry`` stays cheap
and a task module is only loaded when it is used. To add a task, add one line to ``_TASK_PATHS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from grainvl.tasks.base import DownstreamTask

VLUE_TASKS: tuple[str, ...] = ("retrieval", "vqa", "nlvr2", "grounding", "captioning")

_TASK_PATHS: dict[str, str] = {
    "retrieval": "grainvl.tasks.retrieval:RetrievalTask",
    "video_retrieval": "grainvl.tasks.retrieval:VideoRetrievalTask",
    "nlvr2": "grainvl.tasks.nlvr:NLVR2Task",
    "grounding": "grainvl.tasks.grounding:GroundingTask",
    "vqa": "grainvl.tasks.vqa:VQATask",
    "captioning": "grainvl.tasks.captioning:CaptioningTask",
    "videoqa": "grainvl.tasks.videoqa:VideoQATask",
    "xvnli": "grainvl.tasks.iglue:XVNLITask",
    "xgqa": "grainvl.tasks.iglue:XGQATask",
    "marvl": "grainvl.tasks.iglue:MarvlTask",
    "xflickrco": "grainvl.tasks.iglue:XFlickrCOTask",
    "multi_retrieval": "grainvl.tasks.iglue:MultiRetrievalTask",
}
# DaVinci (model family "davinci") has its own heads under the same task names (tasks/davinci_downstream.py).
_DAVINCI_TASK_PATHS: dict[str, str] = {
    "retrieval": "grainvl.tasks.davinci_downstream:DaVinciRetrievalTask",
    "captioning": "grainvl.tasks.davinci_downstream:DaVinciCaptioningTask",
    "vqa": "grainvl.tasks.davinci_downstream:DaVinciVQATask",
    "nlvr2": "grainvl.tasks.davinci_downstream:DaVinciNLVR2Task",
    "ve": "grainvl.tasks.davinci_downstream:DaVinciVETask",
    "linear_probe": "grainvl.tasks.davinci_downstream:DaVinciLinearProbeTask",
    "glue": "grainvl.tasks.davinci_downstream:DaVinciGlueTask",
    "grounding": "grainvl.tasks.davinci_downstream:DaVinciGroundingTask",  # our addition: no official head
}
IGLUE_TASKS: tuple[str, ...] = ("xvnli", "xgqa", "marvl", "xflickrco")
"""The IGLUE-style cross-lingual tasks (``multi_retrieval`` is tested per language too: ``tasks.iglue``)."""


class _LazyTasks(Mapping[str, type[DownstreamTask]]):
    """A read-only ``name -> class`` mapping that imports each task module on first access."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths
        self._loaded: dict[str, type[DownstreamTask]] = {}

    def __getitem__(self, name: str) -> type[DownstreamTask]:
        if name not in self._loaded:
            module_name, class_name = self._paths[name].split(":")  # KeyError for an unknown name
            cls = getattr(importlib.import_module(module_name), class_name)
            if not (isinstance(cls, type) and issubclass(cls, DownstreamTask)):
                raise TypeError(f"{self._paths[name]} is not a DownstreamTask subclass")
            self._loaded[name] = cls
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


TASKS: Mapping[str, type[DownstreamTask]] = _LazyTasks(_TASK_PATHS)
DAVINCI_TASKS: Mapping[str, type[DownstreamTask]] = _LazyTasks(_DAVINCI_TASK_PATHS)
_BY_FAMILY = {"vl": TASKS, "davinci": DAVINCI_TASKS}


class UnsupportedTask(ValueError):
    """A registered task name that a model family cannot do (the benchmark row gives the reason)."""


def list_tasks(family: str | None = None) -> list[str]:
    """Names of the registered tasks: of one model family (``"vl"``, ``"davinci"``), or of any (None)."""
    if family is None:
        return list(dict.fromkeys([*_TASK_PATHS, *_DAVINCI_TASK_PATHS]))
    return list(_BY_FAMILY[family]) if family in _BY_FAMILY else []


def get_task(name: str, family: str = "vl", **options: Any) -> DownstreamTask:
    """A fresh task object by name for a model family (the model's ``ResolvedModel.family``); ``options``
    override its defaults. ValueError on unknown names/options; :class:`UnsupportedTask` for a name the
    family cannot do."""
    tasks = _BY_FAMILY.get(family)
    if tasks is None:
        raise ValueError(f"no downstream tasks for model family {family!r}; families: {', '.join(_BY_FAMILY)}")
    if name not in tasks:
        if name in list_tasks():
            raise UnsupportedTask(f"task {name!r} has no {family!r} variant; {family} tasks: {', '.join(tasks)}")
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}")
    return tasks[name](**options)
