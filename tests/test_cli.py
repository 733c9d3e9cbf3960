"""Every command answers --help; the config path reads YAML and dotted overrides."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.config import load_config


@pytest.mark.parametrize(
    "argv", [[], ["world"], ["data"], ["data", "check"], ["tokenizer"], ["tokenizer", "train"], ["demo"]]
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: grainvl" in capsys.readouterr().out


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "grainvl", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("grainvl ")


@dataclass
class Inner:
    rate: float = 0.1


@dataclass
class Outer:
    name: str = "a"
    sizes: tuple[int, int] = (1, 2)
    inner: Inner = field(default_factory=Inner)


def test_load_config_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: b\nsizes: [3, 4]\ninner:\n  rate: 0.5\n")
    cfg = load_config(Outer, path, ["inner.rate=0.25"])
    assert cfg == Outer(name="b", sizes=(3, 4), inner=Inner(rate=0.25))


def test_load_config_rejects_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(Outer, None, ["nmae=x"])


def test_tokenizer_train_on_a_world(tmp_path: Path) -> None:
    from grainvl.data.tokenization import load_tokenizer
    from grainvl.data.world.generate import WorldConfig, generate_world

    world = tmp_path / "w"
    cfg = WorldConfig(images=8, videos=0, resolution=64, text_scenes=0, dialogues=0)
    generate_world(cfg, world)
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--corpus",
                str(world),
                "--kind",
                "unigram",
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    tok = load_tokenizer(tmp_path / "tok")
    text = "Ein großer roter Stern."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_tokenizer_train_on_missing_corpus_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tokenizer", "train", "--corpus", str(tmp_path), "--out", str(tmp_path / "tok")]) == 2
    assert "not a world folder" in capsys.readouterr().err
