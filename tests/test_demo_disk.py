"""What the demo leaves on disk: benchmark task runs without optimizer state, weights dropped on request, and
the demo's stage timings and disk usage (``OUT/demo.json``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from grainvl.config import load_config
from grainvl.recipes.bench import BenchOptions, FinetuneBackend, ModelEntry, bench_task
from grainvl.recipes.demo import SUMMARY_FILE, DemoConfig, disk_bytes, run_demo, stage_disk
from grainvl.recipes.finetune import FinetuneConfig

# save_final is left at its default (True) on purpose: the benchmark itself must turn the checkpoint off.
QUIET = ["train.progress=false", "train.tensorboard=false", "data.batch_size=4", "data.eval_batch_size=8"]
TINY = ModelEntry("xvlm-tiny", "xvlm-tiny")


def _options(**values: object) -> BenchOptions:
    finetune = load_config(FinetuneConfig, None, QUIET)
    return BenchOptions(
        finetune_steps=1, finetune=finetune, use_codecarbon=False, warmup=0, repeats=1, throughput_batch=2,
        throughput_repeats=1, budget_s=1.0, **values,
    )  # fmt: skip


def test_bench_task_runs_keep_no_checkpoint_and_drop_weights_on_request(tmp_path: Path, vlue_world: Path) -> None:
    backend, tags = FinetuneBackend(), {}
    rows = bench_task(TINY, "nlvr2", vlue_world, tmp_path / "kept", _options(), backend, tags)
    kept = Path(rows[0]["run_dir"])
    assert {"model", "head.safetensors", "task.json", "predictions"} <= {p.name for p in kept.iterdir()}
    assert not (kept / "checkpoints").exists()  # no optimizer state, no intermediate checkpoint
    assert json.loads((kept / "summary.json").read_text(encoding="utf-8"))["train"]["last_checkpoint"] is None

    # A run given to the benchmark is never touched, even with keep_weights off.
    given = _options(keep_weights=False, finetuned={"xvlm-tiny:nlvr2": str(kept)})
    again = bench_task(TINY, "nlvr2", vlue_world, tmp_path / "given", given, backend, tags)
    assert (kept / "model").is_dir() and (kept / "task.json").is_file()
    primary = {(r["split"], r["metric"]): r["value"] for r in rows}
    assert {(r["split"], r["metric"]): r["value"] for r in again if r["metric"] in ("acc", "acc_diff")} == {
        k: v for k, v in primary.items() if k[1] in ("acc", "acc_diff")
    }

    rows = bench_task(TINY, "nlvr2", vlue_world, tmp_path / "dropped", _options(keep_weights=False), backend, tags)
    dropped = Path(rows[0]["run_dir"])
    names = {p.name for p in dropped.iterdir()}
    assert not names & {"model", "head.safetensors", "task.json", "checkpoints"}, names
    assert {"config.json", "summary.json", "predictions"} <= names
    assert any((dropped / "predictions" / "ood").iterdir())
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.skipif(shutil.which("du") is None, reason="needs du")
def test_disk_bytes_is_du_and_stages_add_up(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    for relative, size in {"world/a.jpg": 5000, "contact_sheet.png": 300, "pretrain/model/w": 70_000,
                           "compress/shrink/w": 9000, "runs/m/t/p.json": 100, "report.md": 20}.items():  # fmt: skip
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(os.urandom(size))
    os.link(out / "pretrain/model/w", out / "pretrain/model/w_link")  # a hard link counts once, as in du
    (out / SUMMARY_FILE).write_text("{}", encoding="utf-8")
    du = subprocess.run(["du", "-s", "--block-size=1", str(out)], capture_output=True, text=True, check=True)
    assert disk_bytes(out) == int(du.stdout.split()[0])
    disk = stage_disk(out, ["world", "pre-training", "compression", "benchmark"])
    assert disk["world"] == disk_bytes(out / "world") + disk_bytes(out / "contact_sheet.png")
    assert disk["pre-training"] >= 70_000 and disk["pre-training"] < 2 * 70_000  # the link is not a second copy
    assert sum(disk.values()) + disk_bytes(out / SUMMARY_FILE) == disk_bytes(out)
    assert disk["benchmark"] >= disk_bytes(out / "runs") + disk_bytes(out / "report.md")
    assert disk_bytes(tmp_path / "missing") == 0


def test_demo_prints_and_writes_stage_time_and_disk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    demo = DemoConfig(out=str(out), images=12, videos=0, resolution=64, workers=1, skip_pretrain=True)
    assert run_demo(demo) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert list(summary["stages"]) == ["world"]
    world = summary["stages"]["world"]
    assert 0 < world["seconds"] <= summary["total"]["seconds"]
    assert world["disk_bytes"] == disk_bytes(out / "world") + disk_bytes(out / "contact_sheet.png") > 0
    assert world["disk_bytes"] <= summary["total"]["disk_bytes"]
    printed = capsys.readouterr().out
    table = printed[printed.index("demo stages") :]
    assert "world" in table and "total" in table and f"{summary['total']['disk_bytes'] / 1e6:.1f}" in table
    assert "demo finished in" in printed
