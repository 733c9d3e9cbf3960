"""One config system: shipped YAMLs load into their dataclasses, every command takes --config/--set."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from grainvl.cli import build_parser
from grainvl.config import apply_overrides, load_config, to_dict, with_values
from grainvl.recipes.demo import DemoConfig
from grainvl.recipes.finetune import FinetuneConfig
from grainvl.recipes.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


def config_class(path: Path) -> type:
    """The dataclass a shipped YAML serialises; a YAML nobody claims is a test failure."""
    relative = path.relative_to(CONFIGS)
    if relative == Path("demo.yaml"):
        return DemoConfig
    by_folder = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
    folder = relative.parts[0] if len(relative.parts) > 1 else ""
    if folder not in by_folder:
        pytest.fail(f"{relative}: no known config dataclass for this YAML (add it to tests/test_configs.py)")
    return by_folder[folder]


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(CONFIGS)) for p in SHIPPED])
def test_shipped_yaml_loads_into_its_dataclass(path: Path) -> None:
    cls = config_class(path)
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)
    # Every key of the file reached the dataclass: a round trip through to_dict keeps the file's values.
    assert load_config(cls, path) == cfg and to_dict(cfg)


def test_there_are_shipped_configs() -> None:
    assert any(p.parent.name == "finetune" for p in SHIPPED) and any(p.parent.name == "pretrain" for p in SHIPPED)


# ---------------------------------------------------------------------------------------------- in memory
def test_overrides_keep_nested_field_defaults() -> None:
    """``train.steps=2`` changes one field; the others keep FinetuneConfig's own defaults (clip_grad 0, lr 3e-5)."""
    cfg = load_config(FinetuneConfig, None, ["train.steps=2", "optim.weight_decay=0"])
    assert (cfg.train.steps, cfg.train.clip_grad, cfg.optim.lr, cfg.optim.weight_decay) == (2, 0.0, 3e-5, 0.0)


def test_with_values_and_apply_overrides_are_in_memory() -> None:
    base = FinetuneConfig(options={"k_test": 8})
    cfg = with_values(base, {"train.steps": 3, "options.score": "itc", "eval_splits": ["test"]})
    assert cfg.train.steps == 3 and cfg.options == {"k_test": 8, "score": "itc"} and cfg.eval_splits == ("test",)
    assert base.train.steps == 100 and base.options == {"k_test": 8}  # the original is untouched
    assert apply_overrides(base, ["optim.lr=1e-4", "world=W"]) == with_values(base, {"optim.lr": 1e-4, "world": "W"})
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(base, ["train.stpes=3"])
    with pytest.raises(ValueError, match="should be an integer"):
        with_values(base, {"train.steps": "many"})


# ---------------------------------------------------------------------------------------------- every command
def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, (*path, name))


COMMANDS = dict(commands(build_parser()))
EXPECTED = {
    "world", "data check", "tokenizer train", "pretrain", "pretrain-text", "finetune", "eval", "bench", "compress",
    "convert", "export onnx", "score", "transfer evaluate", "transfer tune", "transfer embed", "transfer rank", "demo",
}  # fmt: skip


def test_every_expected_command_exists() -> None:
    assert {" ".join(path) for path in COMMANDS} >= EXPECTED


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=[" ".join(p) for p in sorted(COMMANDS)])
def test_help_lists_config_and_set(path: tuple[str, ...]) -> None:
    text = COMMANDS[path].format_help()
    assert "--config FILE.yaml" in text and "--set" in text


# ---------------------------------------------------------------------------------------------- end to end
def grainvl(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "grainvl", *argv], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``grainvl world --config --set``: the YAML says 30 images, the override 12 (and videos 0)."""
    root = tmp_path_factory.mktemp("configs")
    config = root / "world.yaml"
    config.write_text("images: 30\nresolution: 96\ntext_scenes: 0\ndialogues: 0\n")
    out = root / "w"
    done = grainvl("world", "--out", str(out), "--config", str(config), "--set", "images=12", "videos=0", "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def test_world_config_and_override_took_effect(world: Path) -> None:
    options = json.loads((world / "manifest.json").read_text())["options"]
    assert (options["images"], options["videos"], options["resolution"]) == (12, 0, 96)


def test_data_check_config_and_override(world: Path, tmp_path: Path) -> None:
    config = tmp_path / "check.yaml"
    config.write_text(f"path: {json.dumps(str(world))}\n")
    per_file = grainvl("data", "check", "--config", str(config))
    per_format = grainvl("data", "check", "--config", str(config), "--set", "by_format=true")
    assert per_file.returncode == 0 and per_format.returncode == 0, per_file.stderr + per_format.stderr
    assert "manifest.json" in per_file.stdout and "manifest.json" not in per_format.stdout
    assert per_format.stdout.startswith("format ")


def test_score_config_and_override(world: Path, tmp_path: Path) -> None:
    gt = world / "annotations" / "nlvr2" / "nlvr_train.json"
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([r["label"] for r in json.loads(gt.read_text())]))
    config = tmp_path / "score.yaml"
    config.write_text(f"task: nlvr2\npred: {json.dumps(str(pred))}\ngt: {json.dumps(str(gt))}\n")
    out = tmp_path / "metrics.json"
    done = grainvl("score", "--config", str(config), "--set", f"out={json.dumps(str(out))}")
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["acc"] == pytest.approx(100.0)


def test_bad_override_key_is_one_line_and_exit_2(world: Path) -> None:
    done = grainvl("data", "check", str(world), "--set", "by_fromat=true")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config key(s) ['by_fromat']" in lines[0]
