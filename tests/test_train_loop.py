"""The training loop, optimiser grouping, schedules, checkpoints and metrics on a tiny regression Task."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from grainvl.bench.results import RESULT_FIELDS, append_result
from grainvl.data.iterators import BatchSequence, RepeatingLoader, StatefulIterator, StreamDict
from grainvl.errors import DataError
from grainvl.train.checkpoint import (
    CHECKSUM_FILE,
    MODEL_FILE,
    STATE_FILE,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler, param_groups
from grainvl.utils.distributed import DistEnv
from grainvl.utils.fileio import ALIASES_KEY, load_model_safetensors, save_model_safetensors

# ---------------------------------------------------------------------------------------------- fixtures


class ToyTask(nn.Module):
    """Tiny MLP regression returning the Task convention ``({"mse_loss": ...}, {"pred_mean": ...})``."""

    def __init__(self, dropout: float = 0.0, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        pred = self.net(batch["x"])  # (B, 1)
        return {"mse_loss": F.mse_loss(pred, batch["y"])}, {"pred_mean": float(pred.detach().mean())}


def toy_dataset(n: int = 64, seed: int = 0, nan_at: set[int] | None = None) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])).tanh() + 0.01 * torch.randn(n, 1, generator=g)
    samples = [{"x": x[i], "y": y[i].clone()} for i in range(n)]
    for i in nan_at or set():
        samples[i]["y"] = torch.full((1,), float("nan"))
    return samples


def make_cfg(tmp_path: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "steps": 10,
        "log_every": 5,
        "run_dir": str(tmp_path / "run"),
        "track_energy": False,
        "progress": False,
        "tensorboard": False,
        "count_flops": False,
        "save_final": False,
    }
    base.update(overrides)
    return TrainConfig(**base)


def build(seed: int = 0, dropout: float = 0.0, lr: float = 1e-2, total: int = 10, warmup: int = 2) -> tuple:
    torch.manual_seed(seed)
    task = ToyTask(dropout=dropout)
    opt = build_optimizer(task, OptimConfig(lr=lr, weight_decay=0.01, lr_mult=1.0))
    sched = build_scheduler(opt, SchedConfig(kind="linear", warmup_steps=warmup, total_steps=total))
    return task, opt, sched


ENV = DistEnv()  # one CPU process, no process group


# ---------------------------------------------------------------------------------------------- loop
def test_loss_decreases_and_summary_accounts_energy_flops_params(tmp_path: Path) -> None:
    task, opt, sched = build(lr=3e-2, total=80, warmup=5)
    data = RepeatingLoader(toy_dataset(), batch_size=8, seed=1)
    assert isinstance(data, StatefulIterator)
    losses: list[float] = []
    cfg = make_cfg(tmp_path, steps=80, log_every=20, track_energy=True, count_flops=True, grad_accum=2)
    summary = train(task, data, opt, sched, cfg, ENV, on_step=lambda s, loss, m: losses.append(loss["mse_loss"]))
    assert len(losses) == 80 and summary.steps == summary.steps_run == 80
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10
    assert summary.samples == 80 * 2 * 8
    assert summary.skipped_steps == 0
    assert summary.final_losses["mse_loss"] == pytest.approx(losses[-1])
    assert summary.params == summary.trainable_params == 4 * 16 + 16 + 2 * 16 + 16 + 1
    # Forward: 2B(4·16 + 16·1) FLOPs; backward: weight grads of both layers + the input grad of the
    # second (x needs no grad), 2B(4·16 + 16 + 16). Two micro-batches of B=8 per step.
    per_micro = 2 * 8 * (4 * 16 + 16) + 2 * 8 * (4 * 16 + 16 + 16)
    assert summary.flops_per_step == 2 * per_micro
    assert summary.total_flops == 80 * 2 * per_micro
    assert summary.energy is not None and summary.energy.energy_kWh > 0
    assert "estimate" in summary.energy.method or "measured" in summary.energy.method
    last = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert last["energy/energy_kWh"] == summary.energy.energy_kWh and last["energy/method"] == summary.energy.method
    assert summary.hardware["precision"] == "fp32" and summary.hardware["torch"] == torch.__version__


def test_grad_accumulation_of_two_batches_equals_one_double_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = ToyTask()
    runs = []
    for batch_size, accum in ((4, 2), (8, 1)):
        task = copy.deepcopy(reference)
        opt = torch.optim.SGD(task.parameters(), lr=0.5)
        data = RepeatingLoader(toy_dataset(), batch_size=batch_size, shuffle=False)
        cfg = make_cfg(tmp_path / f"b{batch_size}", steps=1, grad_accum=accum, clip_grad=0.0)
        train(task, data, opt, None, cfg, ENV)
        runs.append(torch.cat([p.detach().flatten() for p in task.parameters()]))
    moved = (runs[0] - torch.cat([p.detach().flatten() for p in reference.parameters()])).abs().max()
    assert moved > 1e-3  # the step did something
    torch.testing.assert_close(runs[0], runs[1], atol=1e-6, rtol=0)


def test_nan_guard_skips_the_step_and_leaves_parameters_unchanged(tmp_path: Path) -> None:
    task, opt, sched = build()
    data = RepeatingLoader(toy_dataset(nan_at={2}), batch_size=1, shuffle=False)  # step 3 sees the NaN
    snapshots: dict[int, torch.Tensor] = {}

    def snapshot(step: int, losses: dict[str, float], metrics: dict[str, float]) -> None:
        snapshots[step] = torch.cat([p.detach().flatten() for p in task.parameters()]).clone()

    summary = train(task, data, opt, sched, make_cfg(tmp_path, steps=5), ENV, on_step=snapshot)
    assert summary.skipped_steps == 1
    assert torch.equal(snapshots[3], snapshots[2])
    assert not torch.equal(snapshots[4], snapshots[3])
    assert all(torch.isfinite(p).all() for p in task.parameters())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_nan_guard_raises_after_consecutive_bad_steps(tmp_path: Path) -> None:
    task, opt, sched = build()
    data = RepeatingLoader(toy_dataset(n=8, nan_at=set(range(8))), batch_size=2, shuffle=False)
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        train(task, data, opt, sched, make_cfg(tmp_path, steps=10, max_bad_steps=3), ENV)


def run_losses(tmp_path: Path, name: str, resume: Path | None = None, **cfg: Any) -> list[tuple[int, float]]:
    """Train the dropout Task; a resumed run starts from a *different* init to prove everything is restored."""
    task, opt, sched = build(seed=123 if resume else 0, dropout=0.3, total=10)
    data = RepeatingLoader(toy_dataset(n=40), batch_size=8, seed=7)  # 5 batches/epoch: crosses epochs
    out: list[tuple[int, float]] = []
    config = make_cfg(tmp_path / name, **cfg)
    train(
        task, data, opt, sched, config, ENV, on_step=lambda s, loss, m: out.append((s, loss["mse_loss"])), resume=resume
    )
    return out


def test_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path: Path) -> None:
    full = run_losses(tmp_path, "full", steps=10, ckpt_every=5)
    resumed = run_losses(tmp_path, "resumed", resume=tmp_path / "full/run/checkpoints/step_00000005", steps=10)
    assert [s for s, _ in resumed] == list(range(6, 11))
    assert resumed == full[5:]  # exact equality, dropout included
    # An interrupted run (stopped at 5) resumed through its run folder's ``latest`` pointer.
    interrupted = run_losses(tmp_path, "cut", steps=5, save_final=True)
    assert interrupted == full[:5]
    continued = run_losses(tmp_path, "cut", resume=tmp_path / "cut/run", steps=10)
    assert continued == full[5:]


def test_eval_fn_runs_in_eval_mode_and_does_not_change_the_training_stream(tmp_path: Path) -> None:
    plain = run_losses(tmp_path, "plain", steps=6)
    task, opt, sched = build(dropout=0.3, total=10)
    data = RepeatingLoader(toy_dataset(n=40), batch_size=8, seed=7)
    seen: list[tuple[int, bool]] = []

    def eval_fn(step: int) -> dict[str, float]:
        seen.append((step, task.training))
        torch.rand(100)  # consumes RNG: must not leak into training
        return {"score": float(step)}

    out: list[tuple[int, float]] = []
    cfg = make_cfg(tmp_path / "eval", steps=6, eval_every=2, log_every=2)
    summary = train(
        task, data, opt, sched, cfg, ENV, eval_fn=eval_fn, on_step=lambda s, loss, m: out.append((s, loss["mse_loss"]))
    )
    assert out == plain
    assert seen == [(2, False), (4, False), (6, False)]
    assert task.training
    assert summary.eval_results == {"score": 6.0}
    records = [json.loads(line) for line in (tmp_path / "eval/run/metrics.jsonl").read_text().splitlines()]
    assert [r["eval/score"] for r in records if "eval/score" in r] == [2.0, 4.0, 6.0]


def test_checkpoint_folder_contents_pruning_and_weights_only_state(tmp_path: Path) -> None:
    task, opt, sched = build()
    data = RepeatingLoader(toy_dataset(), batch_size=8)
    summary = train(task, data, opt, sched, make_cfg(tmp_path, steps=5, ckpt_every=1, keep_ckpts=2), ENV)
    root = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000004", "step_00000005"]
    assert (root / "latest").read_text().strip() == "step_00000005"
    assert summary.last_checkpoint == str(root / "step_00000005")
    folder = root / "step_00000005"
    assert sorted(p.name for p in folder.iterdir()) == [CHECKSUM_FILE, MODEL_FILE, STATE_FILE]
    state = torch.load(folder / STATE_FILE, weights_only=True)
    assert state["step"] == 5 and state["extra"]["data"][0]["batch_index"] == 5
    assert set(state) >= {"optimizer", "scheduler", "rng", "extra"}
    weights = load_model_safetensors(folder / MODEL_FILE)
    for name, value in task.state_dict().items():
        assert torch.equal(weights[name], value)
    assert resolve_checkpoint(tmp_path / "run") == folder


def test_resolve_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder and no checkpoints inside"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/latest").write_text("step_00000009\n")
    with pytest.raises(DataError, match=r"no intact checkpoint to resume from: step_00000009 \(folder missing\)"):
        resolve_checkpoint(tmp_path)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    from grainvl.train.checkpoint import capture_rng_state, restore_rng_state

    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    first = (random.random(), float(np.random.normal()), torch.rand(3).tolist())
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.normal()), torch.rand(3).tolist()) == first


class TiedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 12, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_survive_a_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedModel()
    opt = torch.optim.AdamW(model.parameters())
    folder = save_checkpoint(tmp_path, 3, model, opt, None, {"note": "x"})
    with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
        stored = set(f.keys())
        aliases = json.loads(f.metadata()[ALIASES_KEY])
    assert stored == {"embed.weight", "proj.weight", "proj.bias"}
    assert aliases == {"head.weight": "embed.weight"}
    torch.manual_seed(1)
    fresh = TiedModel()
    extra = load_checkpoint(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))
    assert extra["note"] == "x" and extra["step"] == 3
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)


def test_safetensors_helpers_store_partial_views_as_copies(tmp_path: Path) -> None:
    fused = torch.arange(12.0).reshape(4, 3)
    state = {"fused": fused, "first": fused[:2], "same": fused}
    save_model_safetensors(tmp_path / "m.safetensors", state)
    loaded = load_model_safetensors(tmp_path / "m.safetensors")
    assert torch.equal(loaded["first"], fused[:2]) and torch.equal(loaded["same"], fused)
    assert loaded["same"] is loaded["fused"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_amp_on_cpu_warns_and_runs_fp32(tmp_path: Path) -> None:
    task, opt, sched = build()
    data = RepeatingLoader(toy_dataset(), batch_size=8)
    with pytest.warns(UserWarning, match="CUDA only"):
        summary = train(task, data, opt, sched, make_cfg(tmp_path, steps=2, amp="bf16"), ENV)
    assert all(p.dtype == torch.float32 for p in task.parameters())
    assert math.isfinite(summary.final_losses["mse_loss"])


def test_temperature_clamp_hook_runs_after_each_step(tmp_path: Path) -> None:
    class WithTemp(ToyTask):
        def __init__(self) -> None:
            super().__init__()
            self.temp = nn.Parameter(torch.tensor(0.07))
            self.clamps = 0

        def clamp_temperature_(self) -> None:
            self.clamps += 1
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)

        def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
            losses, metrics = super().forward(batch)
            losses["temp_loss"] = -10.0 * self.temp  # pushes temp up past the clamp
            return losses, metrics

    task = WithTemp()
    opt = torch.optim.SGD(task.parameters(), lr=1.0)
    train(task, RepeatingLoader(toy_dataset(), batch_size=8), opt, None, make_cfg(tmp_path, steps=3), ENV)
    assert task.clamps == 3
    assert task.temp.item() == pytest.approx(0.5)


def test_task_without_loss_keys_is_a_clear_error(tmp_path: Path) -> None:
    class NoLoss(ToyTask):
        def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
            losses, metrics = super().forward(batch)
            return {"mse": losses["mse_loss"]}, metrics

    task = NoLoss()
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="must end in '_loss'"):
        train(task, RepeatingLoader(toy_dataset(), batch_size=8), opt, None, make_cfg(tmp_path, steps=1), ENV)


def test_in_memory_run_writes_nothing_and_keeps_the_callers_rng(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):
        task, opt, sched = build(dropout=0.3)
        torch.manual_seed(11)  # with seed=None the loop continues this stream (dropout) instead of reseeding
        data = RepeatingLoader(toy_dataset(), batch_size=8, seed=1)
        cfg = make_cfg(tmp_path, run_dir=None, seed=None, save_final=True, ckpt_every=2)
        runs.append(train(task, data, opt, sched, cfg, ENV))
    assert runs[0].final_losses == runs[1].final_losses and runs[0].last_checkpoint is None
    assert list(tmp_path.iterdir()) == []  # no metrics, no checkpoints
    task, opt, sched = build(dropout=0.3)
    torch.manual_seed(12)
    data = RepeatingLoader(toy_dataset(), batch_size=8, seed=1)
    other = train(task, data, opt, sched, make_cfg(tmp_path, run_dir=None, seed=None), ENV)
    assert other.final_losses != runs[0].final_losses


# ---------------------------------------------------------------------------------------------- data
def test_repeating_loader_shards_reshuffles_and_resumes_mid_epoch() -> None:
    dataset = [{"i": torch.tensor(i)} for i in range(22)]
    ranks = [RepeatingLoader(dataset, batch_size=3, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == 3  # 22 // 2 = 11 per rank, 3 full batches
    epoch0 = [[int(i) for _ in range(3) for i in next(loader)["i"]] for loader in ranks]
    assert not set(epoch0[0]) & set(epoch0[1]) and len(set(epoch0[0]) | set(epoch0[1])) == 18
    epoch1 = [int(i) for _ in range(3) for i in next(ranks[0])["i"]]
    assert epoch1 != epoch0[0]  # reshuffled
    loader = RepeatingLoader(dataset, batch_size=3, seed=5, rank=1, world_size=2)
    for _ in range(4):
        next(loader)
    saved = loader.state_dict()
    expected = [next(loader)["i"].tolist() for _ in range(4)]
    restored = RepeatingLoader(dataset, batch_size=3, seed=5, rank=1, world_size=2)
    restored.load_state_dict(saved)
    assert [next(restored)["i"].tolist() for _ in range(4)] == expected
    with pytest.raises(ValueError, match="saved world_size=2"):
        RepeatingLoader(dataset, batch_size=3, seed=5).load_state_dict(saved)
    with pytest.raises(ValueError, match="no full batch"):
        RepeatingLoader(dataset[:4], batch_size=3, world_size=2)


def test_batch_sequence_and_stream_dict_resume_exactly() -> None:
    sequence = BatchSequence(lambda step: {"step": torch.tensor([step])}, length=5)
    assert isinstance(sequence, StatefulIterator) and [int(next(sequence)["step"]) for _ in range(2)] == [0, 1]
    restored = BatchSequence(lambda step: {"step": torch.tensor([step])}, length=5)
    restored.load_state_dict(sequence.state_dict())
    assert [int(next(restored)["step"]) for _ in range(3)] == [2, 3, 4]
    with pytest.raises(StopIteration):
        next(restored)
    with pytest.raises(ValueError, match="batch sequence"):
        BatchSequence(lambda step: step, length=4).load_state_dict(sequence.state_dict())
    dataset = [{"i": torch.tensor(i)} for i in range(10)]
    mixed = StreamDict({"a": RepeatingLoader(dataset, 2, seed=1), "b": RepeatingLoader(dataset, 3, seed=2)})
    for _ in range(4):
        next(mixed)
    saved = json.loads(json.dumps(mixed.state_dict()))
    expected = next(mixed)
    again = StreamDict({"a": RepeatingLoader(dataset, 2, seed=1), "b": RepeatingLoader(dataset, 3, seed=2)})
    again.load_state_dict(saved)
    batch = next(again)
    assert all(torch.equal(batch[k]["i"], expected[k]["i"]) for k in ("a", "b"))


# ---------------------------------------------------------------------------------------------- optim
class VisionTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.norm1 = nn.LayerNorm(3)
        self.unnamed = nn.Sequential(nn.LayerNorm(3))  # "unnamed.0.weight": no name token, so decayed


class GroupedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision_encoder = VisionTower()
        self.fusion = nn.Linear(3, 3)
        self.fusion_norm = nn.LayerNorm(3)
        self.itm_head = nn.Linear(3, 2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 3))
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.init_params = ["itm_head.weight", "itm_head.bias", "vision_encoder.proj.weight"]

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _groups_by_param(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: g for g in groups for name, _ in g["params"]}


def test_param_groups_follow_the_official_rules() -> None:
    model = GroupedModel()
    groups = param_groups(model, 0.01, 1e-4, lr_overrides={"vision_encoder.": 2e-5}, lr_mult=2.0)
    by = _groups_by_param(groups)
    assert "frozen.weight" not in by
    for no_decay in (
        "fusion.bias",
        "fusion_norm.weight",
        "fusion_norm.bias",
        "vision_encoder.norm1.weight",
        "pos_embed",
    ):
        assert by[no_decay]["weight_decay"] == 0.0, no_decay
    # Official substring rule: the 0-d temp and a LayerNorm without a norm-like name keep weight decay.
    for decay in ("fusion.weight", "temp", "itm_head.weight", "vision_encoder.unnamed.0.weight"):
        assert by[decay]["weight_decay"] == 0.01, decay
    assert by["itm_head.weight"]["lr"] == pytest.approx(2e-4) and by["itm_head.weight"]["lr_scale"] == 2.0
    assert by["itm_head.bias"]["name"] == "lr_mult/no_decay"
    assert by["vision_encoder.proj.weight"]["lr"] == 2e-5  # the tower lr wins over lr_mult (official order)
    assert by["vision_encoder.proj.bias"]["name"] == "vision_encoder./no_decay"
    assert by["fusion.weight"]["lr"] == 1e-4 and by["fusion.weight"]["name"] == "base/decay"
    timm_style = _groups_by_param(param_groups(model, 0.01, 1e-4, exclude_1d=True))
    assert timm_style["temp"]["weight_decay"] == timm_style["vision_encoder.unnamed.0.weight"]["weight_decay"] == 0.0


def test_build_optimizer_uses_official_adamw_settings() -> None:
    model = GroupedModel()
    opt = build_optimizer(model, OptimConfig(lr=1e-4, lr_mult_params=["fusion."]))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    names = {g["name"]: g for g in opt.param_groups}
    assert names["lr_mult/decay"]["lr"] == pytest.approx(2e-4)
    assert names["lr_mult/decay"]["param_names"] == ["fusion.weight"]
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def _official_linear(step: int, warmup: int, total: int) -> float:
    """The official X²-VLM ``lr_lambda`` (scheduler.py), written out as the reference."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


@pytest.mark.parametrize("warmup", [10, 0.1, 0])
def test_linear_schedule_matches_the_official_formula(warmup: int | float) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, SchedConfig(kind="linear", warmup_steps=warmup, total_steps=100))
    warm = 10 if warmup else 0
    for step in range(105):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * _official_linear(step, warm, 100)), step
        opt.step()
        sched.step()


def test_cosine_and_constant_schedules_and_bad_kind() -> None:
    def lrs(kind: str) -> list[float]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, SchedConfig(kind=kind, warmup_steps=4, total_steps=24))
        out = []
        for _ in range(25):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    cosine, constant = lrs("cosine"), lrs("constant")
    assert cosine[2] == pytest.approx(0.5) and cosine[4] == pytest.approx(1.0)
    assert cosine[14] == pytest.approx(0.5) and cosine[24] == pytest.approx(0.0, abs=1e-12)
    assert constant[2] == pytest.approx(0.5) and constant[4:] == [1.0] * 21
    with pytest.raises(ValueError, match="unknown schedule kind"):
        build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), SchedConfig(kind="step"))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        build_scheduler(opt, SchedConfig(kind="linear", warmup_steps=1.5, total_steps=10))


# ---------------------------------------------------------------------------------------------- logging
def test_metrics_jsonl_and_tensorboard(tmp_path: Path) -> None:
    task, opt, sched = build()
    data = RepeatingLoader(toy_dataset(), batch_size=8)
    train(task, data, opt, sched, make_cfg(tmp_path, steps=6, log_every=2, tensorboard=True), ENV)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert {"mse_loss", "loss", "pred_mean", "lr", "samples_per_s", "time", "skipped_steps"} <= set(r)
        assert r["loss"] == pytest.approx(r["mse_loss"])
    assert records[0]["lr"] == pytest.approx(1e-2 * 1 / 2)  # step 2 ran at warm-up multiplier 1/2
    assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))


class AlternatingTask(ToyTask):
    """Reports ``odd_loss`` on every other step only, as CCLM's alternating image / parallel-text batches do."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses, metrics = super().forward(batch)
        self.calls += 1
        if self.calls % 2:
            losses["odd_loss"] = torch.tensor(float(self.calls))  # 1, 3, 5, ...: a constant, no gradient
        return losses, metrics


def test_a_loss_reported_on_some_steps_is_averaged_over_those_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = AlternatingTask()
    opt = build_optimizer(task, OptimConfig(lr=1e-2, weight_decay=0.01, lr_mult=1.0))
    sched = build_scheduler(opt, SchedConfig(kind="constant", warmup_steps=0, total_steps=8))
    train(task, RepeatingLoader(toy_dataset(), batch_size=8), opt, sched, make_cfg(tmp_path, steps=8, log_every=4), ENV)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    # Window 1 saw odd_loss 1 and 3 (steps 1, 3), window 2 saw 5 and 7: their means, not halved by 4 steps.
    assert [r["odd_loss"] for r in records] == [2.0, 6.0]


def test_append_result_writes_the_long_schema(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    append_result(path, {"model": "toy", "task": "regression", "metric": "mse", "value": 0.1, "seed": 0})
    append_result(path, {"model": "toy", "value": float("nan")})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert list(records[0]) == list(RESULT_FIELDS)
    assert records[0]["energy_kWh"] is None and records[0]["value"] == 0.1
    assert records[1]["value"] is None  # strict JSON: NaN becomes null
    with pytest.raises(ValueError, match="energy_kwh"):
        append_result(path, {"energy_kwh": 1.0})


# ---------------------------------------------------------------------------------------------- DDP (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world_size: int, port: int, run_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from grainvl.utils.distributed import cleanup, detect_env, init_distributed

    torch.set_num_threads(1)
    env = init_distributed(detect_env(use_cuda=False))
    torch.manual_seed(0)
    task = ToyTask()
    opt = torch.optim.SGD(task.parameters(), lr=0.5)
    data = RepeatingLoader(toy_dataset(), batch_size=4, seed=3, rank=env.rank, world_size=env.world_size)
    cfg = TrainConfig(
        steps=4, ckpt_every=2, log_every=2, run_dir=run_dir, track_energy=False, progress=False, tensorboard=False
    )
    summary = train(task, data, opt, None, cfg, env)
    flat = torch.cat([p.detach().flatten() for p in task.parameters()])
    torch.save({"params": flat, "flops": summary.flops_per_step}, Path(run_dir) / f"rank{rank}.pt")
    cleanup()


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(run_dir)), nprocs=2, join=True)
    ranks = [torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # DDP kept the replicas identical
    # One process with batch 8 sees exactly the union of the two ranks' batches of 4 (same permutation).
    torch.manual_seed(0)
    single = ToyTask()
    data = RepeatingLoader(toy_dataset(), batch_size=8, seed=3)
    train(single, data, torch.optim.SGD(single.parameters(), lr=0.5), None, make_cfg(tmp_path, steps=4), ENV)
    torch.testing.assert_close(ranks[0]["params"], torch.cat([p.detach().flatten() for p in single.parameters()]))
    assert ranks[0]["flops"] == 2 * (2 * 4 * 80 + 2 * 4 * 96)  # two ranks × one micro-batch of 4, fwd + bwd
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    state = torch.load(root / "step_00000004" / STATE_FILE, weights_only=True)
    assert len(state["rng"]) == 2 and [d["batch_index"] for d in state["extra"]["data"]] == [4, 4]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]  # rank 0 only wrote


def test_fast_dropout_is_on_for_the_run_only_and_changes_nothing_else(tmp_path: Path) -> None:
    # TrainConfig.fast_dropout switches grainvl's CPU dropout masks on for this call and restores the previous
    # setting afterwards, also when the run fails; off, a run is exactly what it was before the switch existed.
    from grainvl.models.layers import fast_dropout_applies, set_fast_cpu_dropout

    probe = torch.zeros(1)
    seen: list[bool] = []
    task, opt, sched = build(dropout=0.3)
    data = RepeatingLoader(toy_dataset(), batch_size=8, seed=1)
    cfg = make_cfg(tmp_path, steps=2, fast_dropout=True)
    train(task, data, opt, sched, cfg, ENV, on_step=lambda *_: seen.append(fast_dropout_applies(probe, 0.1, True)))
    assert seen == [True, True] and not fast_dropout_applies(probe, 0.1, True)
    set_fast_cpu_dropout(True)  # an outer setting survives a run that asks for torch's dropout
    try:
        task, opt, sched = build(dropout=0.3)
        train(task, RepeatingLoader(toy_dataset(), batch_size=8, seed=1), opt, sched, make_cfg(tmp_path), ENV)
        assert fast_dropout_applies(probe, 0.1, True)
    finally:
        set_fast_cpu_dropout(False)


def test_heap_reuse_is_on_for_the_run_only_and_changes_no_loss(tmp_path: Path) -> None:
    # TrainConfig.reuse_heap (default on) keeps glibc from mapping large blocks afresh during the run and puts the
    # previous setting back afterwards; where memory comes from cannot change a loss.
    from grainvl.utils import memory

    if not memory.heap_reuse_supported():
        pytest.skip("needs Linux with glibc")
    seen: list[bool] = []
    previous = memory.set_heap_reuse(False)
    try:
        runs = []
        for reuse in (True, False):
            task, opt, sched = build(dropout=0.3)
            data = RepeatingLoader(toy_dataset(), batch_size=8, seed=1)
            cfg = make_cfg(tmp_path / str(reuse), steps=3, reuse_heap=reuse)
            track = lambda *_: seen.append(memory._reuse)  # noqa: E731
            summary = train(task, data, opt, sched, cfg, ENV, on_step=track)
            runs.append(summary.final_losses)
            assert memory._reuse is False  # restored after the run
        assert seen == [True] * 3 + [False] * 3
        assert runs[0] == runs[1]
    finally:
        memory.set_heap_reuse(previous)
