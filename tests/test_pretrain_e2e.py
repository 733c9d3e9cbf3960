"""End-to-end pre-training on a tiny world: one process, resume, and torchrun with 2 CPU processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.models.xvlm import XVLM


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "w"
    # 16 training images, 8 videos; 64 px matches xvlm-tiny's resolution.
    cfg = WorldConfig(images=24, videos=8, resolution=64, split_fractions=(16, 3, 2, 3), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


COMMON = [
    "--model",
    "xvlm-tiny",
    "--set",
    "train.progress=false",
    "train.track_energy=false",
    "train.log_every=1",
    "train.tensorboard=false",
    "data.image_batch_size=4",
    "data.region_images=2",
    "data.video_batch_size=2",
]


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_pretrain_runs_end_to_end_and_reports(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(world), "--steps", "4", "--out", str(run), *COMMON]) == 0
    out = capsys.readouterr().out
    assert "zero-shot on test" in out and "zero-shot on test_ood" in out and "chance" in out
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v and v < 100 for v in losses.values())
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["split"] for r in results} == {"id", "ood"}
    assert {"txt_r1", "img_r10", "grounding_acc"} <= {r["metric"] for r in results}
    assert all(r["params_M"] > 0 for r in results)
    model = XVLM.from_pretrained(run / "model")
    assert model.config.name == "xvlm-tiny"


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted(world: Path, tmp_path: Path) -> None:
    # A run interrupted after its step-3 checkpoint and resumed from it continues exactly:
    # same weights, optimizer, schedule, RNG streams and data position.
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = ["pretrain", "--data", str(world), "--steps", "6", *COMMON, "train.ckpt_every=3"]
    assert main([*args, "--out", str(full)]) == 0
    checkpoint = full / "checkpoints" / "step_00000003"
    assert (checkpoint / "model.safetensors").exists()
    assert main([*args, "--out", str(resumed), "--resume", str(checkpoint)]) == 0
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [4, 5, 6]
    assert [a[s] for s in (4, 5, 6)] == pytest.approx([b[s] for s in (4, 5, 6)], abs=1e-6)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as probe:  # a free port: torchrun's static rendezvous cannot use port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "grainvl",
        "pretrain",
        "--data",
        str(world),
        "--steps",
        "3",
        "--out",
        str(run),
        *COMMON,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "zero-shot on test_ood" in done.stdout
    assert sorted(_losses(run)) == [1, 2, 3]
    assert (run / "model" / "model.safetensors").exists()
