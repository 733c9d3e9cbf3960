"""The benchmark runner on a fake task: subprocess isolation of crashes and exceptions, rows, report, resume.

The worker subprocesses import this module (``PYTHONPATH`` gets the tests folder) to reach
:class:`FakeBackend`, which stands in for :mod:`grainvl.recipes.finetune`: a "fine-tuned" model is a
two-layer MLP whose width comes from the model name (``fake-8``), and its "score" is a function of
that width, so the expected rows are known exactly.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from grainvl.bench.results import RESULT_FIELDS
from grainvl.cli import main as cli_main
from grainvl.recipes.bench import BenchOptions, ModelEntry, ordered_record, parse_models, run_bench

TESTS = Path(__file__).resolve().parent
FAKE_BACKEND = "test_bench_runner:FakeBackend"


class FakeTask:
    primary_metric = "acc"

    def __init__(self, name: str) -> None:
        self.name = name

    def evaluate(self, module: nn.Module, tokenizer: Any, world: Path, split: str, out_dir: Path) -> dict[str, float]:
        width = module[0].out_features
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "pred.json").write_text("[]", encoding="utf-8")
        base = 50.0 + width / 2
        return {"acc": base if split == "test" else base - 10.0, "loss": 1.0 / width}

    def latency_call(self, module: nn.Module, tokenizer: Any, world: Path, batch_size: int):
        x = torch.randn(batch_size, 16)
        return lambda: module(x)


class FakeBackend:
    def finetune(self, model: ModelEntry, task: str, world: Path, out: Path, options: BenchOptions) -> dict:
        kind, _, width = model.source.partition("-")
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        if kind == "raise" and task == "t2":
            raise RuntimeError("boom in t2")
        out.mkdir(parents=True, exist_ok=True)
        (out / "task.json").write_text(
            json.dumps({"task": task, "width": int(width), "steps": options.finetune_steps}), encoding="utf-8"
        )
        return {"cost": {"wall_s": 0.5, "energy_kWh": 1e-7, "co2_g": 1e-5}}

    def load(self, run_dir: Path, world: Path):
        meta = json.loads((run_dir / "task.json").read_text(encoding="utf-8"))
        torch.manual_seed(0)
        width = meta["width"]
        return FakeTask(meta["task"]), nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 2)), None

    def evaluate(self, task, module, tokenizer, world: Path, split: str, out_dir: Path) -> dict[str, float]:
        return task.evaluate(module, tokenizer, world, split, out_dir)


def fast_options(**overrides: Any) -> BenchOptions:
    base = dict(backend=FAKE_BACKEND, use_codecarbon=False, warmup=1, repeats=5, throughput_batch=4)
    return BenchOptions(**{**base, "throughput_repeats": 2, "finetune_steps": 3, **overrides})


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    world = tmp_path / "world"
    world.mkdir()
    return world


@pytest.mark.slow
def test_crash_and_exception_fail_only_their_rows(fake_env: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    models = ["crash-4", "raise-32"]
    rows = run_bench(models, ["t1", "t2"], fake_env, out, fast_options(), progress=None)
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["task"]), []).append(row)
    assert set(by_key) == {(m, t) for m in models for t in ("t1", "t2")}
    for task in ("t1", "t2"):  # the hard crash: one failure row per task, with the signal as the reason
        (row,) = by_key[("crash-4", task)]
        assert row["status"] == "failed" and "SIGKILL" in row["error"] and row["value"] is None
    (row,) = by_key[("raise-32", "t2")]  # an exception fails that task only
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom in t2"
    good = by_key[("raise-32", "t1")]
    assert all(r["status"] == "ok" for r in good)
    values = {(r["split"], r["metric"]): r["value"] for r in good}
    assert values == {
        ("id", "acc"): 66.0,
        ("ood", "acc"): 56.0,
        ("id", "loss"): 1 / 32,
        ("ood", "loss"): 1 / 32,
        ("ood", "acc_diff"): -10.0,
        ("ood", "loss_diff"): 0.0,
    }
    first = good[0]
    assert list(first)[: len(RESULT_FIELDS)] == list(RESULT_FIELDS)
    assert first["params_M"] == pytest.approx((16 * 32 + 32 + 32 * 2 + 2) / 1e6)
    assert first["gflops"] == pytest.approx(2 * (16 * 32 + 32 * 2) / 1e9)
    assert first["latency_ms"] <= first["latency_p90_ms"] and first["throughput"] > 0
    assert first["peak_mem_MB"] > 0 and first["precision"] == "fp32" and first["torch"] == torch.__version__
    assert first["finetune_wall_s"] == 0.5 and first["finetune_energy_kWh"] == 1e-7
    id_row = next(r for r in good if r["split"] == "id" and r["metric"] == "acc")
    assert id_row["primary"] is True and id_row["energy_kWh"] > 0 and "fallback estimate" in id_row["energy_method"]
    assert (out / "runs" / "raise-32" / "t1" / "predictions" / "ood" / "pred.json").exists()
    assert "SIGKILL" in (out / "report.md").read_text(encoding="utf-8")
    for name in ("results.jsonl", "results.csv", "leaderboard.csv", "pareto.png", "id_vs_ood.png"):
        assert (out / name).stat().st_size > 0

    # Resume keeps the successful (model, task) rows and runs only what is missing: here nothing (no worker starts).
    log = out / "logs" / "raise-32.log"
    log.unlink()
    again = run_bench(["raise-32"], ["t1"], fake_env, out, fast_options(), resume=True, report=False, progress=None)
    assert again == good and not log.exists()


def test_timeout_fails_the_model(fake_env: Path, tmp_path: Path) -> None:
    rows = run_bench(["fake-8"], ["t1"], fake_env, tmp_path / "b", fast_options(timeout_s=0.05), progress=None)
    assert rows[0]["status"] == "failed" and "timed out" in rows[0]["error"]


@pytest.mark.slow
def test_cli_fine_tunes_reuses_runs_and_reports(fake_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    given = tmp_path / "given-run"  # an already fine-tuned t1 run (width 16), given for t1 and, wrongly, for t3
    given.mkdir()
    (given / "task.json").write_text(json.dumps({"task": "t1", "width": 16}), encoding="utf-8")
    out = tmp_path / "cli"
    args = ["bench", "--models", "small=fake-8", "--tasks", "t1,t2,t3", "--world", str(fake_env), "--out", str(out)]
    args += [
        "--no-codecarbon",
        "--repeats",
        "5",
        "--warmup",
        "1",
        "--throughput-batch",
        "4",
        "--budget",
        "5",
        "--quiet",
    ]
    args += ["--finetuned", f"small:t1={given}", f"small:t3={given}", "--backend", FAKE_BACKEND]
    assert cli_main(args) == 1  # one (model, task) failed
    printed = capsys.readouterr().out
    assert "wrote" in printed and "1 (model, task) run(s) failed: small/t3" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["model"] for r in rows} == {"small"} and {r["model_source"] for r in rows} == {"fake-8"}
    acc = {(r["task"], r["split"]): r["value"] for r in rows if r["metric"] == "acc"}
    assert acc == {("t1", "id"): 58.0, ("t1", "ood"): 48.0, ("t2", "id"): 54.0, ("t2", "ood"): 44.0}
    t1 = next(r for r in rows if r["task"] == "t1")
    assert t1["run_dir"] == str(given) and t1["finetune_steps"] is None  # reused, not fine-tuned
    (t3,) = [r for r in rows if r["task"] == "t3"]
    assert t3["status"] == "failed" and "is a fine-tuned t1 run, not t3" in t3["error"]
    (out / "report.md").unlink()
    assert cli_main(["bench", "--out", str(out), "--report-only"]) == 0
    assert "| small | t2 | acc | 54.00 | 44.00 | -10.00 |" in (out / "report.md").read_text(encoding="utf-8")


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_models(["a=xvlm-tiny", "a=xvlm-small"])
    assert [m.label for m in parse_models(["xvlm-tiny", " s = /x/run/model "])] == ["xvlm-tiny", "s"]
    with pytest.raises(ValueError, match="looks like the schema field"):
        ordered_record({"model": "m", "energy_kwh": 1.0})
    with pytest.raises(ValueError, match="precision"):
        BenchOptions(precision="int3")
    assert cli_main(["bench", "--out", "/nonexistent-dir-for-test", "--report-only"]) == 2


def test_unknown_names_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world = tmp_path / "world"
    world.mkdir()
    base = ["bench", "--world", str(world), "--out", str(tmp_path / "out")]
    assert cli_main([*base, "--models", "xvlm-tiny", "--tasks", "retrieval,nope"]) == 2
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    assert cli_main([*base, "--models", "no-such-model", "--tasks", "retrieval"]) == 2
    assert "neither a folder nor a registered name" in capsys.readouterr().err
    assert cli_main([*base[:2], str(tmp_path / "missing"), *base[3:], "--models", "xvlm-tiny"]) == 2
    assert "world folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out" / "workers").exists()


def test_bad_finetune_options_fail_once_before_any_worker(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world = tmp_path / "world"
    world.mkdir()
    base = ["bench", "--world", str(world), "--out", str(tmp_path / "out"), "--models", "xvlm-tiny"]
    cases = {
        "finetune.optim.lr=abc": "OptimConfig.lr should be a number",
        "finetune.nope=1": "unknown config key(s) ['nope']",
        "task_finetune.nlvr2.nope=1": "unknown config key(s) ['nope']",
        "task_finetune.nlvr.optim.lr=0.1": "task_finetune: unknown task(s) ['nlvr']",
        "finetune.options.bogus=1": "finetune.options / task_finetune.nlvr2.options: nlvr2: unknown option(s)",
        "task_finetune.nlvr2.options.k_test=4": "unknown option(s) ['k_test']",
    }
    for override, message in cases.items():
        assert cli_main([*base, "--tasks", "nlvr2", "--set", override]) == 2, override
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (override, err)
    assert not (tmp_path / "out" / "workers").exists()
    # An option of another task is fine when that task is not benchmarked... and checked when it is.
    with pytest.raises(ValueError, match=r"retrieval\.options"):
        from grainvl.recipes.bench import check_inputs

        options = BenchOptions(task_finetune={"retrieval": {"options": {"nope": 1}}})
        check_inputs(parse_models(["xvlm-tiny"]), ["nlvr2"], options)
        check_inputs(parse_models(["xvlm-tiny"]), ["retrieval"], options)
