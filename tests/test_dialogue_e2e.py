"""A tiny end-to-end run: train a predictor and a responder, read the five-setting table, predict from the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.data.formats.convai2 import write_convai2
from grainvl.data.formats.dialogue_nli import write_dialogue_nli
from grainvl.data.world.dialogue import build_dialogue_nli, build_dialogues
from grainvl.dialogue.nli import NLIConfig
from grainvl.dialogue.responder import SETTINGS
from grainvl.recipes.dialogue import DialogueData, EvaluateConfig, _held_out, _nli_source

TINY = [
    "data.train_episodes=6",
    "data.test_episodes=2",
    "model.architecture=bert-tiny",
    "model.decoder_layers=1",
    "model.max_items=24",
    "fit.steps=3",
    "fit.batch_size=4",
]


def _sets(section: str) -> list[str]:
    return [f"{section}.{item}" if not item.startswith("data.") else item for item in TINY]


def test_train_evaluate_and_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predictor, responder, evaluation = tmp_path / "pred", tmp_path / "resp", tmp_path / "eval"
    assert main(["dialogue", "train-predictor", "--out", str(predictor), "--set", *_sets("predictor")]) == 0
    assert "generator self persona (test): fact_precision" in capsys.readouterr().out
    assert main(["dialogue", "train-responder", "--out", str(responder), "--set", *_sets("responder")]) == 0
    args = ["dialogue", "evaluate", "--out", str(evaluation), "--predictor", str(predictor)]
    args += ["--responder", str(responder), "--set", "data.test_episodes=2", "nli.steps=2", "nli.train_pairs=30"]
    args += ["dailydialog_dialogues=3", "dailydialog_steps=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for setting in SETTINGS:
        assert f"| {setting} |" in out
    summary = json.loads((evaluation / "summary.json").read_text())
    assert set(summary["settings"]) == set(SETTINGS)
    assert {"ppl", "f1", "bleu2", "distinct1", "distinct2", "hits1", "c_score", "oracle", "follow_up"} <= set(
        summary["settings"]["gold"]
    )
    assert set(summary["dailydialog"]) == {"zero-shot+none", "zero-shot+predicted", "tuned+none", "tuned+predicted"}
    assert {"fact_f1", "fact_precision"} <= set(summary["dailydialog_personas"]["partner"])
    assert "| DailyDialog-style personas |" in out
    rows = [json.loads(line) for line in (evaluation / "results.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} >= {f"response:{s}" for s in SETTINGS}

    history = "hi , how are you ? || hi ! i am good . || max barked at the mailman again this morning ."
    assert main(["dialogue", "predict", "--predictor", str(predictor), "--history", history]) == 0
    out = capsys.readouterr().out
    assert "self persona" in out and "partner persona" in out


def test_parlai_folder_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "convai2"
    folder.mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        write_convai2(folder / f"{split}_both_original.txt", build_dialogues(4, random.Random(seed)))
    out = tmp_path / "pred"
    args = ["dialogue", "train-predictor", "--data", str(folder), "--out", str(out), "--kind", "approximator"]
    assert main([*args, "--set", *_sets("predictor"), "predictor.model.sentence_encoder=bert-tiny"]) == 0
    assert "approximator partner persona (test)" in capsys.readouterr().out
    assert main(["dialogue", "predict", "--predictor", str(out)]) == 2  # no history: one line, exit 2
    assert "--history" in capsys.readouterr().err
    assert main(["dialogue", "train-predictor", "--data", str(tmp_path), "--out", str(out)]) == 2
    assert "train_both_original.txt" in capsys.readouterr().err


def test_held_out_episodes_and_judge_pairs_follow_the_data(tmp_path: Path) -> None:
    train = build_dialogues(10, random.Random(0))
    kept, held_out = _held_out(DialogueData(valid_episodes=3), train)
    assert kept == train and len(held_out) == 3  # the valid split, never the test split
    kept, held_out = _held_out(DialogueData(test_split="valid"), train)  # valid IS the test: carve train
    assert kept == train[:9] and held_out == train[9:]
    folder = tmp_path / "convai2"
    folder.mkdir()
    write_convai2(folder / "train_both_original.txt", train)  # no valid file either
    assert _held_out(DialogueData(source=str(folder)), train)[1] == train[9:]

    assert _nli_source(EvaluateConfig()) is None  # in memory: the world's generator
    assert _nli_source(EvaluateConfig(data=DialogueData(source=str(folder)))) is None  # no DNLI files there
    write_dialogue_nli(
        folder / "dialogue" / "dnli" / "dialogue_nli_train.jsonl", build_dialogue_nli(3, random.Random(0))
    )
    assert _nli_source(EvaluateConfig(data=DialogueData(source=str(folder)))) == str(folder)
    assert _nli_source(EvaluateConfig(nli=NLIConfig(source="elsewhere"))) == "elsewhere"
