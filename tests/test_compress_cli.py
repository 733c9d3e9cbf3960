"""`grainvl compress` end to end on xvlm-tiny and a tiny world, and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.models.xvlm import XVLM


@pytest.fixture(scope="module")
def world(image_world: Path) -> Path:
    return image_world  # tests/conftest.py: the shared 24-image world


@pytest.mark.slow
def test_compress_distill_prune_shrink_end_to_end(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["compress", "--teacher", "xvlm-tiny", "--recipe", "distill,prune,shrink", "--world", str(world)]
    args += [
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--target-sparsity",
        "0.3",
        "--quiet",
        "--no-energy",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "prune: target 0.300" in printed and "shrink:" in printed
    models = {stage: XVLM.from_pretrained(out / stage) for stage in ("distill", "prune", "shrink")}
    assert models["distill"].config.vision.depth == 1 and models["distill"].config.text.num_layers == 2
    assert (out / "prune" / "masks.safetensors").is_file()
    shrunk = models["shrink"].config
    assert shrunk.vision.layer_heads is not None and shrunk.text.layer_intermediate is not None
    report = json.loads((out / "compress.json").read_text())
    assert report["stages"]["shrink"]["max_abs_gap_vs_masked"] < 1e-5
    assert report["stages"]["prune"]["achieved_sparsity"]["all"] >= 0
    n_params = sum(p.numel() for p in models["shrink"].parameters())
    assert report["stages"]["shrink"]["params_after"] == n_params
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows and {"txt_r1", "img_r1", "compress_wall_s"} <= {r["metric"] for r in rows}
    assert all(r["params_M"] == pytest.approx(n_params / 1e6) and r["gflops"] > 0 for r in rows)
    # Recipes compose across runs too: shrink a pruned folder on its own.
    again = tmp_path / "again"
    args = ["compress", "--teacher", str(out / "prune"), "--recipe", "shrink", "--world", str(world)]
    assert main([*args, "--out", str(again), "--quiet", "--no-energy"]) == 0
    assert XVLM.from_pretrained(again / "shrink").config.text.layer_heads == shrunk.text.layer_heads


def test_compress_input_errors(world: Path, tmp_path: Path, capsys) -> None:
    base = ["compress", "--teacher", "xvlm-tiny", "--world", str(world), "--out", str(tmp_path / "o")]
    assert main([*base, "--recipe", "distill,squash"]) == 2
    assert "unknown recipe stage" in capsys.readouterr().err
    assert main([*base, "--recipe", "shrink", "--no-energy", "--quiet"]) == 2
    assert "shrink needs pruning masks" in capsys.readouterr().err
    assert (
        main([*base[:-4], "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--recipe", "prune"]) == 2
    )
    assert "no such world folder" in capsys.readouterr().err
    assert (
        main(
            [
                "compress",
                "--teacher",
                str(tmp_path),
                "--world",
                str(world),
                "--out",
                str(tmp_path / "o"),
                "--recipe",
                "prune",
            ]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err
    assert main([*base, "--recipe", "distill", "--student-layers", "2,1"]) == 2
    assert "--student-layers expects three positive integers" in capsys.readouterr().err


def test_compress_task_is_nlvr2_with_nlvr_as_alias(world: Path, tmp_path: Path, capsys) -> None:
    from grainvl.recipes.compress import COMPRESS_TASKS, CompressConfig

    assert "nlvr2" in COMPRESS_TASKS and "nlvr" not in COMPRESS_TASKS
    for name in ("nlvr2", "nlvr"):
        cfg = CompressConfig(teacher="xvlm-tiny", recipe=["prune"], world=str(world), out="o", task=name)
        assert cfg.task == "nlvr2" and cfg.paper("reg_lr") == 0.1  # EfficientVLM's NLVR stage-2 setting
    base = ["compress", "--teacher", "xvlm-tiny", "--world", str(world), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices name the accepted values
        main([*base, "--recipe", "prune", "--task", "nlvr3"])
    assert exit_info.value.code == 2 and "'nlvr2'" in capsys.readouterr().err
    assert main([*base, "--recipe", "prune", "--set", "task=nlvr3"]) == 2
    assert "unknown task 'nlvr3'; expected one of retrieval, vqa, nlvr2, captioning" in capsys.readouterr().err
