"""Resume under damage (issue 15): checksummed checkpoints, fallback to the newest intact one, no stale
temp folders, no duplicate metrics lines, umask permissions; all on a tiny dropout Task (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grainvl.data.iterators import RepeatingLoader
from grainvl.errors import DataError, OutputError
from grainvl.train.checkpoint import (
    CHECKSUM_FILE,
    LATEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    checkpoint_problem,
    find_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from grainvl.train.loop import TrainConfig, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler
from grainvl.utils import fileio
from grainvl.utils.distributed import DistEnv

ENV = DistEnv()
STEPS = 6  # the interrupted run: a checkpoint after every step
TOTAL = 8  # the resumed run and the uninterrupted reference go this far


class DropoutTask(nn.Module):
    """Tiny regression with dropout, so an exact resume also needs the RNG state back."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 128), nn.Tanh(), nn.Dropout(0.3), nn.Linear(128, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return {"mse_loss": F.mse_loss(self.net(batch["x"]), batch["y"])}, {}  # net(x): (B, 1)


def dataset(n: int = 40) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(dim=1, keepdim=True).tanh()  # (n, 1)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def run(run_dir: Path, steps: int, resume: Path | None = None, **cfg: Any) -> dict[int, float]:
    """Train (or resume) into ``run_dir``; returns ``{step: loss}`` of the steps this call ran.

    A resumed run starts from a different initialisation, so equal losses prove everything was restored.
    """
    torch.manual_seed(123 if resume else 0)
    task = DropoutTask()
    opt = build_optimizer(task, OptimConfig(lr=1e-2, weight_decay=0.01, lr_mult=1.0))
    sched = build_scheduler(opt, SchedConfig(kind="linear", warmup_steps=2, total_steps=TOTAL))
    data = RepeatingLoader(dataset(), batch_size=8, seed=7)  # 5 batches per epoch: crosses epochs
    settings: dict[str, Any] = {
        "steps": steps,
        "log_every": 1,
        "ckpt_every": 1,
        "keep_ckpts": 10,
        "run_dir": str(run_dir),
        "track_energy": False,
        "progress": False,
        "tensorboard": False,
        "count_flops": False,
        "save_final": False,
    }
    losses: dict[int, float] = {}
    train(
        task,
        data,
        opt,
        sched,
        TrainConfig(**{**settings, **cfg}),
        ENV,
        on_step=lambda step, loss, m: losses.__setitem__(step, loss["mse_loss"]),
        resume=resume,
    )
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """The uninterrupted run's losses, steps 1..TOTAL."""
    return run(tmp_path_factory.mktemp("reference") / "run", TOTAL)


@pytest.fixture
def interrupted(tmp_path: Path, reference: dict[int, float]) -> Path:
    """A run folder stopped after step STEPS, with checkpoints 1..STEPS."""
    folder = tmp_path / "run"
    assert run(folder, STEPS) == {s: reference[s] for s in range(1, STEPS + 1)}
    return folder


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


# ---------------------------------------------------------------------------------------------- damage
def truncate(folder: Path, name: str = MODEL_FILE) -> None:
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_1000_bytes(folder: Path) -> None:
    """Same size, 1000 bytes of the weights replaced: only the checksum can tell."""
    path = folder / MODEL_FILE
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header size, JSON header, tensors
    assert len(data) - header_end >= 1000
    data[-1000:] = bytes((i * 37 + 11) % 256 for i in range(1000))
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated model": (truncate, f"is damaged ({MODEL_FILE}: truncated ("),
    "deleted folder": (shutil.rmtree, "is missing"),
    "1000 bytes overwritten": (overwrite_1000_bytes, f"is damaged ({MODEL_FILE}: sha256 mismatch)"),
    "deleted state": (lambda folder: (folder / STATE_FILE).unlink(), f"is damaged ({STATE_FILE}: missing)"),
    "garbage manifest": (lambda folder: (folder / CHECKSUM_FILE).write_text("{"), f"({CHECKSUM_FILE}: unreadable)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_falls_back_with_one_line_and_continues_exactly(
    damage: str, interrupted: Path, reference: dict[int, float], capsys: pytest.CaptureFixture
) -> None:
    harm, said = DAMAGE[damage]
    harm(ckpt(interrupted, STEPS))
    capsys.readouterr()
    resumed = run(interrupted, TOTAL, resume=interrupted)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and said in lines[0]
    assert lines[0].startswith(f"checkpoint {ckpt(interrupted, STEPS)} ")
    assert lines[0].endswith(f"; resuming from step_{STEPS - 1:08d}")
    # Steps STEPS..TOTAL again from the older checkpoint, exactly as the uninterrupted run.
    assert sorted(resumed) == list(range(STEPS, TOTAL + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], abs=1e-6)
    # The damaged folder was not deleted: rewriting its step moved it aside for the user.
    if damage != "deleted folder":
        assert (ckpt(interrupted, STEPS).parent / f"step_{STEPS:08d}.damaged").is_dir()
    assert checkpoint_problem(ckpt(interrupted, STEPS)) is None


def test_several_damaged_checkpoints_are_passed_over_in_one_line(
    interrupted: Path, reference: dict[int, float], capsys: pytest.CaptureFixture
) -> None:
    shutil.rmtree(ckpt(interrupted, STEPS))  # the folder ``latest`` names
    truncate(ckpt(interrupted, STEPS - 1), STATE_FILE)
    capsys.readouterr()
    resumed = run(interrupted, TOTAL, resume=interrupted)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert f"step_{STEPS:08d} is missing; " in lines[0]
    assert f"step_{STEPS - 1:08d} is damaged ({STATE_FILE}: truncated (" in lines[0]
    assert lines[0].endswith(f"resuming from step_{STEPS - 2:08d}")
    assert resumed == pytest.approx({s: reference[s] for s in range(STEPS - 1, TOTAL + 1)}, abs=1e-6)


def test_deleted_latest_pointer_resumes_from_the_newest_intact_folder(
    interrupted: Path, reference: dict[int, float], capsys: pytest.CaptureFixture
) -> None:
    (interrupted / "checkpoints" / LATEST_FILE).unlink()
    capsys.readouterr()
    resumed = run(interrupted, TOTAL, resume=interrupted)
    assert capsys.readouterr().err == ""  # nothing was damaged: nothing to say
    assert resumed == pytest.approx({s: reference[s] for s in range(STEPS + 1, TOTAL + 1)}, abs=1e-6)


def test_all_checkpoints_damaged_is_one_data_error_naming_the_folder(interrupted: Path) -> None:
    for step in range(1, STEPS + 1):
        truncate(ckpt(interrupted, step))
    with pytest.raises(DataError, match="no intact checkpoint to resume from: step_00000006 ") as caught:
        run(interrupted, TOTAL, resume=interrupted)
    assert caught.value.path == str(interrupted / "checkpoints")
    assert "\n" not in str(caught.value) and "step_00000001 (model.safetensors: truncated" in str(caught.value)
    assert all(ckpt(interrupted, step).is_dir() for step in range(1, STEPS + 1))  # nothing deleted


def test_a_damaged_checkpoint_named_exactly_is_an_error_without_fallback(interrupted: Path) -> None:
    folder = ckpt(interrupted, STEPS)
    overwrite_1000_bytes(folder)
    expected = rf"{folder}: checkpoint is damaged \({MODEL_FILE}: sha256 mismatch\); name another checkpoint"
    with pytest.raises(DataError, match=expected):
        resolve_checkpoint(folder)
    with pytest.raises(DataError, match=expected):
        run(interrupted, TOTAL, resume=folder)
    with pytest.raises(DataError, match="checkpoint is missing"):
        resolve_checkpoint(ckpt(interrupted, 99))
    assert find_checkpoint(ckpt(interrupted, STEPS - 1)).folder == ckpt(interrupted, STEPS - 1)


def test_a_checkpoint_without_checksums_still_loads_unverified(
    interrupted: Path, reference: dict[int, float], capsys: pytest.CaptureFixture
) -> None:
    # Written before checksums existed: no manifest. It loads, and nothing is said.
    (ckpt(interrupted, STEPS) / CHECKSUM_FILE).unlink()
    capsys.readouterr()
    resumed = run(interrupted, TOTAL, resume=interrupted)
    assert capsys.readouterr().err == ""
    assert resumed == pytest.approx({s: reference[s] for s in range(STEPS + 1, TOTAL + 1)}, abs=1e-6)


def test_checksums_record_every_file_and_catch_a_grown_file(interrupted: Path) -> None:
    folder = ckpt(interrupted, STEPS)
    manifest = json.loads((folder / CHECKSUM_FILE).read_text())
    assert manifest["algorithm"] == "sha256" and sorted(manifest["files"]) == [MODEL_FILE, STATE_FILE]
    assert manifest["files"][MODEL_FILE]["bytes"] == (folder / MODEL_FILE).stat().st_size
    with (folder / STATE_FILE).open("ab") as f:
        f.write(b"x")
    written = manifest["files"][STATE_FILE]["bytes"]
    assert checkpoint_problem(folder) == f"{STATE_FILE}: wrong size ({written + 1} bytes, {written} written)"
    assert checkpoint_problem(folder, hash_files=False) is not None  # sizes are the cheap check


# ---------------------------------------------------------------------------------------------- rotation
def test_rotation_never_deletes_a_damaged_checkpoint_and_does_not_count_it(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    run(folder, 3)
    truncate(ckpt(folder, 2))
    run(folder, 5, resume=folder, keep_ckpts=2)  # resumes from 3 (intact), writes 4 and 5
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == [LATEST_FILE, "step_00000002", "step_00000004", "step_00000005"]


# ---------------------------------------------------------------------------------------------- temp folders
def test_stale_temp_folders_of_the_run_are_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    stale = root / ".tmp_step_00000003_123_abcdef"
    stale.mkdir(parents=True)
    (stale / MODEL_FILE).write_bytes(b"half a checkpoint")
    others = [root / ".tmp_other", root / "step_00000003.tmp_step_1_x", tmp_path / "run" / ".tmp_step_00000001_1_x"]
    for other in others:
        other.mkdir()
    (root / ".tmp_step_00000004_1_file").write_text("a file, not a temp folder")
    run(tmp_path / "run", 1)
    assert not stale.exists()
    assert all(other.is_dir() for other in others) and (root / ".tmp_step_00000004_1_file").is_file()


def test_a_failed_save_leaves_no_temp_folder_and_no_checkpoint(tmp_path: Path, monkeypatch: Any) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    model = nn.Linear(2, 2)
    with pytest.raises(OutputError) as error:
        save_checkpoint(tmp_path, 1, model, None, None)
    # One line naming the checkpoint folder (not the temp folder) and the disk.
    assert str(error.value) == f"{tmp_path / 'checkpoints' / 'step_00000001'}: no space left on device"
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_torch_save_unexpected_pos_on_a_full_disk_is_named_as_such(tmp_path: Path, monkeypatch: Any) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 470")

    monkeypatch.setattr(torch, "save", fail)
    monkeypatch.setattr(fileio, "_disk_full", lambda folder: True)
    with pytest.raises(OutputError, match=r"step_00000001: no space left on device$"):
        save_checkpoint(tmp_path, 1, nn.Linear(2, 2), None, None)
    monkeypatch.setattr(fileio, "_disk_full", lambda folder: False)  # space left: torch's own error passes through
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(tmp_path, 1, nn.Linear(2, 2), None, None)


# ---------------------------------------------------------------------------------------------- metrics
def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_have_one_line_per_step_after_a_resume(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    run(folder, 5, ckpt_every=2, tensorboard=True)  # interrupted at 5, last checkpoint at 4
    with (folder / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # the append the crash cut short
    run(folder, TOTAL, resume=folder, tensorboard=True)
    assert metric_steps(folder) == list(range(1, TOTAL + 1))
    # TensorBoard: the resumed writer purges the interrupted run's step 5, so each step has one value.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("mse_loss")] == list(range(1, TOTAL + 1))


def test_metrics_are_rewound_to_the_fallback_checkpoint(interrupted: Path) -> None:
    truncate(ckpt(interrupted, STEPS))
    run(interrupted, TOTAL, resume=interrupted)
    assert metric_steps(interrupted) == list(range(1, TOTAL + 1))


# ---------------------------------------------------------------------------------------------- permissions
@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_checkpoint_files_and_folders_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    folder = tmp_path / "run"
    run(folder, 2, keep_ckpts=1)
    root = folder / "checkpoints"
    modes = {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    assert modes == {
        "checkpoints": 0o755,
        "checkpoints/latest": 0o644,
        "checkpoints/step_00000002": 0o755,
        f"checkpoints/step_00000002/{MODEL_FILE}": 0o644,
        f"checkpoints/step_00000002/{STATE_FILE}": 0o644,
        f"checkpoints/step_00000002/{CHECKSUM_FILE}": 0o644,
    }
    assert stat.S_IMODE((folder / "metrics.jsonl").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_train(env: DistEnv, run_dir: Path, steps: int, resume: Path | None) -> dict[str, Any]:
    """Train on this rank; returns the steps run and the parameters, or the error message."""
    torch.manual_seed(0)
    task = DropoutTask()
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    data = RepeatingLoader(dataset(), batch_size=4, seed=3, rank=env.rank, world_size=env.world_size)
    cfg = TrainConfig(steps=steps, ckpt_every=1, log_every=1, run_dir=str(run_dir), track_energy=False, progress=False)
    try:
        summary = train(task, data, opt, None, cfg, env, resume=resume)
    except DataError as error:
        return {"error": str(error)}
    return {"steps_run": summary.steps_run, "params": [p.tolist() for p in task.parameters()]}


def _resume_worker(rank: int, world_size: int, port: int, run_dir: Path, out: Path) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from grainvl.utils.distributed import barrier, cleanup, detect_env, init_distributed

    torch.set_num_threads(1)
    env = init_distributed(detect_env(use_cuda=False))
    results = {"first": _ddp_train(env, run_dir, 4, None)}
    if rank == 0:
        truncate(ckpt(run_dir, 4))  # only rank 0 sees it happen; every rank must still resume from step 3
    barrier()
    results["resumed"] = _ddp_train(env, run_dir, 5, run_dir)
    if rank == 0:
        for folder in (run_dir / "checkpoints").glob("step_????????"):
            truncate(folder)
    barrier()
    results["all_damaged"] = _ddp_train(env, run_dir, 6, run_dir)  # the same error on every rank, no hang
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    cleanup()


@pytest.mark.slow
def test_under_two_processes_every_rank_falls_back_to_the_same_checkpoint(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    run_dir = tmp_path / "ddp"
    mp.spawn(_resume_worker, args=(2, _free_port(), run_dir, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for results in ranks:
        assert results["resumed"]["steps_run"] == 2  # from step 3 to 5: step 4 was damaged
        assert "no intact checkpoint to resume from" in results["all_damaged"]["error"]
    assert ranks[0]["resumed"]["params"] == ranks[1]["resumed"]["params"]
    assert ranks[0]["all_damaged"] == ranks[1]["all_damaged"]


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_resume_falls_back_then_fails_in_one_line_with_rc_2(
    image_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from grainvl.cli import main

    run_dir = tmp_path / "run"
    args = ["pretrain", "--data", str(image_world), "--model", "xvlm-tiny", "--out", str(run_dir), "--set"]
    args += ["train.progress=false", "train.track_energy=false", "train.tensorboard=false", "train.ckpt_every=1"]
    args += ["train.log_every=1", "data.image_batch_size=4", "data.region_images=2"]
    assert main([*args, "--steps", "2"]) == 0
    truncate(ckpt(run_dir, 2))
    capsys.readouterr()
    assert main([*args, "--steps", "3", "--resume", str(run_dir)]) == 0
    assert f"{ckpt(run_dir, 2)} is damaged ({MODEL_FILE}: truncated (" in capsys.readouterr().err
    assert metric_steps(run_dir) == [1, 2, 3]
    for step in (1, 2, 3):
        overwrite_1000_bytes(ckpt(run_dir, step))
    assert main([*args, "--steps", "4", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir / 'checkpoints'}: no intact checkpoint to resume from: step_00000003 (")
    assert err.count("\n") == 1 and "sha256 mismatch" in err
