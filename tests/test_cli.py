"""Every command answers --help and states every option's default; the config path reads YAML and overrides."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grainvl.cli import build_parser, main
from grainvl.config import load_config


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*path, name))


LEAVES = dict(_leaf_parsers(build_parser()))
# Owned elsewhere: their add_config_args still names the config class without its module, so the shortcut flags'
# defaults cannot be looked up (pass "module:Class" there and these pass too).


@pytest.mark.parametrize(
    "argv", [[], ["world"], ["data"], ["data", "check"], ["tokenizer"], ["tokenizer", "train"], ["demo"]]
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: grainvl" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_every_option_has_help_and_states_its_default(command: str, capsys: pytest.CaptureFixture) -> None:
    parser = LEAVES[command]
    formatter = parser._get_formatter()
    gaps = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        text = formatter._get_help_string(action) or ""
        if not text.strip() or not (action.required or "default" in text):
            gaps.append(f"{'/'.join(action.option_strings)}: {text!r}")
    assert not gaps, f"grainvl {command}: options without help or a stated default: {gaps}"
    with pytest.raises(SystemExit):  # and the whole help renders (argparse %-formats every line)
        main([*command.split(), "--help"])
    assert "usage: grainvl" in capsys.readouterr().out


def test_shortcut_help_shows_the_config_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[config: corpus, default: none]" in out and "[config: out, default: none]" in out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "[config: timeout_s, default: none]" in out and "--quiet do not echo the workers' output (default: off)" in out
    )


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
