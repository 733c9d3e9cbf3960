"""Task registry, the finetune/eval CLI, exact reload, results.jsonl, and 2-process evaluation merging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from grainvl.bench.results import RESULT_FIELDS
from grainvl.cli import main
from grainvl.tasks.base import DownstreamTask, gather_predictions, resolve_split, shard_indices, split_tag
from grainvl.tasks.registry import TASKS, VLUE_TASKS, get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.save_final=false"]
MINE = ("retrieval", "video_retrieval", "nlvr2", "grounding")


@pytest.fixture(scope="module")
def world(vlue_world: Path) -> Path:
    return vlue_world  # the shared session world (conftest.py)


@pytest.fixture(scope="module")
def runs(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two runs fine-tuned through the CLI (2 steps each); the retrieval one with energy tracking on."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task, extra in (("retrieval", ["options.k_test=4"]), ("nlvr2", ["train.track_energy=false"])):
        run = root / task
        args = ["finetune", task, "--model", "xvlm-tiny", "--world", str(world), "--out", str(run), "--steps", "2"]
        assert main([*args, "--set", "data.batch_size=4", *QUIET, *extra]) == 0
        out[task] = run
    return out


# ---------------------------------------------------------------------------------------------- registry / base
def test_registry_lists_and_resolves_tasks() -> None:
    assert set(VLUE_TASKS) <= set(TASKS) and set(MINE) <= set(TASKS)
    for name in MINE:
        task = get_task(name)
        assert isinstance(task, DownstreamTask) and task.name == name and task.primary_metric
    with pytest.raises(ValueError, match="unknown task 'nope'; registered tasks: retrieval"):
        get_task("nope")


def test_splits() -> None:
    assert (resolve_split("id"), resolve_split("ood"), resolve_split("val")) == ("test", "test_ood", "val")
    assert (split_tag("test"), split_tag("ood"), split_tag("val")) == ("id", "ood", "val")
    assert resolve_split("testA") == "testA"  # official split names pass through (RefCOCO+, MSR-VTT test1k)
    for bad in ("../test", "a b", ""):
        with pytest.raises(ValueError, match="unknown split"):
            resolve_split(bad)


def test_shards_cover_every_item_with_equal_counts() -> None:
    for n, world_size in ((5, 2), (7, 3), (2, 4), (6, 3)):
        shards = [shard_indices(n, r, world_size) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1
        assert sorted(set(i for s in shards for i in s)) == list(range(n))
    merged = gather_predictions([{"k": 3}, {"k": 1}, {"k": 3, "dup": True}], "k")
    assert merged == [{"k": 1}, {"k": 3}]


# ---------------------------------------------------------------------------------------------- CLI runs
@pytest.mark.slow
def test_preflight_evaluates_what_was_asked_and_nothing_when_asked_for_nothing(world: Path, capsys) -> None:
    """Three branches: the splits asked for; none of them exists -> val instead (one line); nothing asked (the
    benchmark's and stage-2 compression's fine-tunes, which evaluate themselves) -> no evaluation at all."""
    from grainvl.recipes.finetune import FinetuneConfig, preflight

    def splits(asked: tuple[str, ...]) -> list[str]:
        return preflight(FinetuneConfig(task="nlvr2", model="xvlm-tiny", world=str(world), eval_splits=asked))

    assert splits(("id", "ood")) == ["test", "test_ood"]
    assert splits(("testA",)) == ["val"]
    assert "skipping evaluation split 'testA'" in capsys.readouterr().err
    assert splits(()) == []
    assert capsys.readouterr().err == ""


def test_finetune_cli_writes_results_with_cost(runs: dict[str, Path]) -> None:
    run = runs["retrieval"]
    for name in ("model/config.json", "model/model.safetensors", "task.json", "summary.json", "config.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"id", "ood"}
    assert {line["metric"] for line in lines} >= {"txt_r1", "img_r1", "r_mean"}
    for line in lines:
        assert list(line) == list(RESULT_FIELDS)
        assert line["task"] == "retrieval" and line["model"] == "xvlm-tiny" and line["dataset"] == "world"
        assert line["params_M"] > 0 and line["gflops"] > 0 and line["energy_kWh"] > 0 and line["co2_g"] > 0
    cost = json.loads((run / "summary.json").read_text())["cost"]
    assert cost["wall_s"] > 0 and cost["train_tflops"] > 0 and cost["steps"] == 2


@pytest.mark.slow
def test_eval_cli_reloads_exactly(runs: dict[str, Path], world: Path, tmp_path: Path, capsys) -> None:
    for task, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        capsys.readouterr()
        out = tmp_path / task
        args = ["eval", task, "--model", str(run), "--world", str(world), "--split", "ood", "--out", str(out)]
        assert main(args) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["metrics"] == summary["evaluations"]["test_ood"]
        assert (out / "metrics.json").is_file() and any(out.glob(f"{task}_test_ood.json"))
    assert main(["eval", "grounding", "--model", str(runs["nlvr2"]), "--world", str(world)]) == 2  # wrong task


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WORKER = """
import json, sys
from pathlib import Path
from grainvl.tasks.base import gather_predictions, shard_indices
from grainvl.recipes.finetune import load_finetuned
from grainvl.utils.distributed import cleanup, detect_env, get_rank, init_distributed

world, out, runs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
init_distributed(detect_env(use_cuda=False))
rank = get_rank()
mine = shard_indices(5)  # 2 ranks: [0, 2, 4] and [1, 3, 0] - item 0 twice (padding)
merged = gather_predictions([{"index": i, "rank": rank} for i in mine], "index")
metrics = {}
for run in runs:
    task, module, tokenizer = load_finetuned(run, world)
    metrics[task.name] = task.evaluate(module, tokenizer, world, "ood")
if rank == 0:
    (out / "rank0.json").write_text(json.dumps({"merged": merged, "metrics": metrics}))
else:
    assert merged == [] and all(m == {} for m in metrics.values())
cleanup()
"""


@pytest.mark.slow
def test_two_process_evaluation_merges_on_rank0(runs: dict[str, Path], world: Path, tmp_path: Path) -> None:
    from grainvl.recipes.finetune import evaluate_run

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script)]
    cmd += [str(world), str(tmp_path), *(str(r) for r in runs.values())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "rank0.json").read_text())
    # Every item once, in order; the padded duplicate of item 0 (from rank 1) was dropped.
    assert result["merged"] == [{"index": i, "rank": i % 2} for i in range(5)]
    for task, run in runs.items():
        single = evaluate_run(run, world, "ood")
        assert result["metrics"][task] == pytest.approx(single)


def test_model_folder_errors(tmp_path: Path) -> None:
    from grainvl.models.factory import resolve_model
    from grainvl.recipes.finetune import load_finetuned

    assert resolve_model("xvlm-tiny").folder is None
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a fine-tuned run"):
        load_finetuned(tmp_path)
