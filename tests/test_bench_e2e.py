"""End to end on the real tasks: two tiny models x two tasks, fine-tuned, evaluated ID/OOD, measured, reported.

The second model is a different architecture variant saved as a ``save_pretrained`` folder (xvlm-tiny
with a one-block vision tower), which also covers the "model folder" kind of entry.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from grainvl.config import load_config
from grainvl.models.factory import get_model_config, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.bench import BenchOptions, run_bench
from grainvl.recipes.finetune import FinetuneConfig

QUIET = ["train.progress=false", "train.tensorboard=false", "train.save_final=false"]
TASKS = ["retrieval", "nlvr2"]
PRIMARY = {"retrieval": "r_mean", "nlvr2": "acc"}


@pytest.mark.slow
def test_bench_two_tiny_models_two_tasks(tmp_path: Path, vlue_world: Path) -> None:
    world = vlue_world
    tiny = get_model_config("xvlm-tiny")
    shallow = dataclasses.replace(tiny, name="xvlm-tiny-shallow", vision=dataclasses.replace(tiny.vision, depth=1))
    torch.manual_seed(0)
    XVLM(shallow).save_pretrained(tmp_path / "shallow", tokenizer=get_tokenizer(shallow))

    options = BenchOptions(
        finetune_steps=2,
        finetune=load_config(FinetuneConfig, None, [*QUIET, "data.batch_size=4", "data.eval_batch_size=8"]),
        country="DEU",
        warmup=1,
        repeats=5,
        throughput_batch=8,
        throughput_repeats=1,
    )
    out = tmp_path / "bench"
    rows = run_bench(["xvlm-tiny", str(tmp_path / "shallow")], TASKS, world, out, options, progress=None)

    assert not [r for r in rows if r.get("status") == "failed"], [r.get("error") for r in rows]
    for model in ("xvlm-tiny", "shallow"):
        for task in TASKS:
            mine = {(r["split"], r["metric"]): r for r in rows if r["model"] == model and r["task"] == task}
            metric = PRIMARY[task]
            id_row, ood_row, diff = mine[("id", metric)], mine[("ood", metric)], mine[("ood", f"{metric}_diff")]
            assert id_row["primary"] and 0 <= id_row["value"] <= 100
            assert diff["value"] == pytest.approx(ood_row["value"] - id_row["value"])
            for key in ("params_M", "gflops", "latency_ms", "latency_p90_ms", "throughput", "peak_mem_MB"):
                assert id_row[key] > 0, key
            assert id_row["latency_ms"] <= id_row["latency_p90_ms"]
            assert id_row["energy_kWh"] > 0 and id_row["co2_g"] > 0 and "DEU" in id_row["energy_method"]
            assert id_row["finetune_wall_s"] > 0 and id_row["finetune_energy_kWh"] > 0
            assert id_row["torch"] == torch.__version__ and id_row["hardware"] and id_row["precision"] == "fp32"
            run = Path(id_row["run_dir"])
            assert (run / "task.json").exists() and any((run / "predictions" / "ood").iterdir())
    by_model = {r["model"]: r for r in rows if r["task"] == "retrieval" and r["split"] == "id"}
    assert by_model["shallow"]["params_M"] < by_model["xvlm-tiny"]["params_M"]  # one vision block fewer
    assert by_model["shallow"]["gflops"] < by_model["xvlm-tiny"]["gflops"]

    with open(out / "leaderboard.csv", newline="", encoding="utf-8") as f:
        wide = list(csv.DictReader(f))
    assert {(w["model"], w["task"]) for w in wide} == {(m, t) for m in ("xvlm-tiny", "shallow") for t in TASKS}
    assert all(w["status"] == "ok" and w["id"] and w["ood"] and w["latency_ms"] for w in wide)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| xvlm-tiny | retrieval | r_mean |" in report and "| shallow | nlvr2 | acc |" in report
    assert "estimate" in report and "codecarbon" in report
    for name in ("pareto.png", "id_vs_ood.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(rows) and all(json.loads(line)["model"] for line in lines)
