"""``grainvl transfer`` end to end on three tiny tasks with a tiny random BERT (seconds, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.data.world.generate import WorldConfig, _generate_text
from grainvl.recipes.transfer import tiny_bert_folder


@pytest.mark.slow
def test_transfer_tune_embed_rank_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _generate_text(WorldConfig(text_scenes=40, text_train=12, text_dev=6), tmp_path / "world")
    bert = tiny_bert_folder(tmp_path / "bert")
    common = ["--tasks", str(tmp_path / "world"), "--model", str(bert), "--names", "color_sst,shape_sst,color_squad"]
    common += ["--batch-size", "4", "--max-length", "48"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "transfer",
                "tune",
                *common,
                "--out",
                str(run),
                "--method",
                "lora",
                "--steps",
                "2",
                "--snapshot-steps",
                "1",
            ]
        )
        == 0
    )
    assert main(["transfer", "embed", "--run", str(run), "--method", "lora", "--variant", "centered"]) == 0
    assert (run / "embeddings" / "lora-centered.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["transfer", "rank", "--run", str(run), "--method", "lora", "--target", "color_sst", "--top", "2"]) == 0
    assert "color_sst: " in capsys.readouterr().out

    out = tmp_path / "eval"
    args = [*common, "--out", str(out), "--methods", "prompt,bitfit", "--pet-steps", "2", "--ft-steps", "2"]
    args += ["--baseline-examples", "4", "--max-dev", "4"]
    assert main(["transfer", "evaluate", *args]) == 0
    printed = capsys.readouterr().out
    for row in ("prompt/delta", "bitfit/centered", "textemb", "taskemb/cls_output", "random"):
        assert row in printed
    results = json.loads((out / "results.json").read_text())
    truth = results["ground_truth"]
    assert set(truth["transfer"]["color_sst"]) == {"shape_sst"}  # in-class sources only, target excluded
    assert truth["transfer"]["color_squad"] == {}  # the only QA task has no source
    assert 0.0 <= truth["baseline"]["color_squad"] <= 1.0
    assert (out / "similarity_prompt_delta.png").read_bytes()[:4] == b"\x89PNG"
    cached = len(list((out / "cache").glob("*.json")))
    assert main(["transfer", "evaluate", *args]) == 0  # second run: every fine-tuning comes from the cache
    assert "ground truth: 0 new fine-tuning runs" in capsys.readouterr().out
    assert len(list((out / "cache").glob("*.json"))) == cached


def test_bad_task_root_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(
            main(["transfer", "evaluate", "--tasks", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
        )
    assert exit_info.value.code != 0
