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


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return list(_TASK_PATHS)


def get_task(name: str, **options: Any) -> DownstreamTask:
    """A fresh task object by name; ``options`` override its defaults (ValueError on unknown names/options)."""
    if name not in _TASK_PATHS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}")
    return TASKS[name](**options)
