"""Ground-truth bookkeeping: which runs the full -> full and full -> limited regimes train, and caching."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from grainvl.transfer.ground_truth import FinetuneSettings, TaskRef, TransferLab, compute_ground_truth


class _FakeLab(TransferLab):
    """Records every fine-tuning run instead of training; the score encodes the run's budget."""

    def __init__(self, settings: FinetuneSettings, cache: Path) -> None:
        super().__init__(settings, cache)
        self.calls: list[tuple[str, bool]] = []

    def pretrained(self) -> nn.Module:
        return nn.Identity()

    def _finetune(self, init: nn.Module, task: TaskRef, as_target: bool = False) -> tuple[nn.Module, float, float]:
        self.calls.append((task.name, as_target))
        self.runs += 1
        return nn.Identity(), (0.25 if as_target else 0.75), 0.0


def _tasks(tmp_path: Path) -> list[TaskRef]:
    tasks = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.tsv").write_text(f"sentence\tlabel\n{name}\t0\n", encoding="utf-8")
        tasks.append(TaskRef(name, "classification", tmp_path / name))
    return tasks


@pytest.mark.parametrize("target_train", [None, 16])
def test_limited_target_regime_trains_targets_on_the_budget(tmp_path: Path, target_train: int | None) -> None:
    tasks = _tasks(tmp_path)
    settings = FinetuneSettings(encoder="unused", target_train_examples=target_train)
    lab = _FakeLab(settings, tmp_path / "cache")
    truth = compute_ground_truth(tasks, lab)
    sources = sorted(name for name, as_target in lab.calls if not as_target)
    targets = [name for name, as_target in lab.calls if as_target]
    assert sources == ["a", "b", "c"]  # each source fine-tuned once, on its full data
    assert len(targets) == 6 + (3 if target_train else 0)  # 6 transfers (+ 3 limited target-only runs)
    expected_baseline = 0.25 if target_train else 0.75  # full -> full reuses the source run as the baseline
    assert truth.baseline == {"a": expected_baseline, "b": expected_baseline, "c": expected_baseline}
    assert truth.gain("a", "b") == pytest.approx(0.25 - expected_baseline)
    # A second pass reads everything from the cache.
    again = _FakeLab(settings, tmp_path / "cache")
    assert compute_ground_truth(tasks, again).transfer == truth.transfer and again.calls == []
