"""`grainvl compress` recipes theseus and quantize: composition rules, tiny end-to-end runs, loading the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.compress.quantize import QUANTIZE_FILE, count_quantized_linears, load_with_quantization
from grainvl.models.xvlm import XVLM
from grainvl.recipes.compress import CompressConfig

QUIET = ["--quiet", "--no-energy", "--batch-size", "4"]


@pytest.fixture(scope="module")
def world(image_world: Path) -> Path:
    return image_world  # tests/conftest.py: the shared 24-image world


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (["quantize", "distill"], "quantize must be the last stage"),
        (["prune", "quantize"], "quantize after prune needs shrink"),
        (["prune", "theseus", "shrink"], "theseus after prune needs shrink"),
        (["theseus", "theseus"], "repeats a stage"),
        (["distill", "lora"], "unknown recipe stage"),
    ],
)
def test_recipe_composition_is_validated(recipe: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompressConfig(teacher="xvlm-tiny", recipe=recipe, world="w", out="o")


@pytest.mark.parametrize(
    "recipe", [["distill", "prune", "shrink", "quantize"], ["prune", "shrink", "theseus"], ["theseus", "quantize"]]
)
def test_valid_compositions(recipe: list[str]) -> None:
    assert CompressConfig(teacher="xvlm-tiny", recipe=recipe, world="w", out="o").recipe == recipe


def test_cli_rejects_a_bad_recipe(world: Path, tmp_path: Path, capsys) -> None:
    args = ["compress", "--teacher", "xvlm-tiny", "--recipe", "quantize,distill", "--world", str(world)]
    assert main([*args, "--out", str(tmp_path / "o"), *QUIET]) == 2
    assert "quantize must be the last stage" in capsys.readouterr().err


@pytest.mark.slow
def test_theseus_recipe_end_to_end(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["compress", "--teacher", "xvlm-tiny", "--recipe", "theseus", "--world", str(world), "--out", str(out)]
    assert main([*args, "--steps", "3", *QUIET]) == 0
    assert "theseus:" in capsys.readouterr().out
    teacher = XVLM.from_pretrained(out / "theseus")  # a plain XVLM: no predecessor layers left
    report = json.loads((out / "compress.json").read_text())
    stage = report["stages"]["theseus"]
    from grainvl.models.factory import create_model

    full = create_model("xvlm-tiny").config.text
    assert teacher.config.text.num_layers == stage["text_successors"] + stage["fusion_successors"]
    assert teacher.config.text.num_layers < full.num_layers
    assert stage["params_after"] == sum(p.numel() for p in teacher.parameters()) < stage["params_before"]
    assert 0.3 <= stage["replacing_rate"]["first"] <= stage["replacing_rate"]["last"] <= 1.0
    assert not any(".scc_layer." in k for k in teacher.state_dict())
    chance = report["evaluation"]["chance"]  # random scores on the same split, next to teacher and student
    ranks = [chance[f"{side}_r{k}"] for side in ("txt", "img") for k in (1, 5, 10)]
    assert chance["r_mean"] == pytest.approx(sum(ranks) / 6) and 0 < chance["img_r1"] < chance["img_r10"] <= 100


@pytest.mark.slow
def test_distill_quantize_recipe_end_to_end(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["compress", "--teacher", "xvlm-tiny", "--recipe", "distill,quantize", "--world", str(world)]
    assert main([*args, "--out", str(out), "--steps", "2", *QUIET]) == 0
    assert (out / "quantize" / QUANTIZE_FILE).is_file()
    fp32 = XVLM.from_pretrained(out / "quantize")
    int8 = load_with_quantization(out / "quantize", XVLM.from_pretrained)
    assert count_quantized_linears(fp32) == 0 and count_quantized_linears(int8) > 0
    distilled = XVLM.from_pretrained(out / "distill")
    assert fp32.config.text.num_layers == distilled.config.text.num_layers  # quantize keeps the student's shape
    report = json.loads((out / "compress.json").read_text())
    q = report["stages"]["quantize"]
    assert q["size_int8_bytes"] < q["size_fp32_bytes"] and q["quantized_linears"] == count_quantized_linears(int8)
    res = fp32.config.vision.resolution
    batch = {
        "image": torch.randn(2, 3, res, res),
        "text_ids": torch.randint(1, 100, (2, 7)),
        "text_atts": torch.ones(2, 7, dtype=torch.long),
    }
    with torch.no_grad():
        a, b = fp32.eval().extract_features(batch).fused, int8.extract_features(batch).fused
    assert 0 < float((a - b).abs().max()) < 0.5 * float(a.abs().max())  # really int8, still close


@pytest.mark.slow
def test_quantised_source_finetunes_and_loads_int8(world: Path, tmp_path: Path) -> None:
    """A quantize folder fine-tunes in fp32, the run is flagged, load_finetuned gives an int8 module."""
    from grainvl.compress.quantize import save_quantized_xvlm
    from grainvl.config import load_config
    from grainvl.models.factory import create_model, get_tokenizer
    from grainvl.recipes.bench import _on_device
    from grainvl.recipes.finetune import FinetuneConfig, finetune, load_finetuned

    model = create_model("xvlm-tiny")
    src = save_quantized_xvlm(model, tmp_path / "q", tokenizer=get_tokenizer(model.config))
    quiet = ["train.progress=false", "train.tensorboard=false", "train.save_final=false", "train.track_energy=false"]
    over = [*quiet, "train.steps=1", "data.batch_size=4", "data.eval_batch_size=8", "eval_splits=[]"]
    finetune(
        load_config(
            FinetuneConfig,
            None,
            over,
            {"task": "nlvr2", "model": src, "world": world, "train.run_dir": tmp_path / "run"},
        )
    )
    assert (tmp_path / "run" / "model" / QUANTIZE_FILE).is_file()
    _, module, _ = load_finetuned(tmp_path / "run", world)
    assert count_quantized_linears(module) > 0
    with pytest.raises(ValueError, match="CPU only"):
        _on_device(module, torch.device("cuda"), tmp_path / "run")
