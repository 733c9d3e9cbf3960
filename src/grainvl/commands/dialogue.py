"""``grainvl dialogue train-predictor|predict|train-responder|evaluate``: persona prediction (arXiv 2111.15093)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, comma_list, config_from_args, shortcut

ROLES = ("self", "partner")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dialogue",
        help="persona prediction: predict personas from dialogue history, persona-conditioned responses",
        description="Learn a speaker's persona from the dialogue history (generator or approximator), condition a "
        "responder on the predicted personas, and measure consistency and engagingness (docs/persona.md).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser(
        "train-predictor", help="train a persona predictor (self and partner) and score it per turn"
    )
    add_config_args(train, "grainvl.recipes.dialogue:TrainPredictorConfig")
    _data(train)
    shortcut(train, "--kind", field="predictor.kind", choices=("generator", "approximator"), help="predictor design")
    shortcut(train, "--steps", field="predictor.fit.steps", type=int, help="training steps")
    train.set_defaults(func=_train_predictor)

    predict = actions.add_parser(
        "predict", help="print the persona facts (with scores) a trained predictor reads from a history"
    )
    add_config_args(predict, "grainvl.recipes.dialogue:PredictConfig")
    shortcut(predict, "--predictor", field="predictor", help="a train-predictor run folder (or its predictor/)")
    shortcut(
        predict,
        "--history",
        field="history",
        help="utterances separated by ' || ', oldest first, the partner's last; a history longer than the model "
        "limit (model.max_items sentences) loses its OLDEST sentences",
    )
    shortcut(predict, "--history-file", field="history_file", help="a text file with one utterance per line instead")
    shortcut(predict, "--roles", field="roles", parse=comma_list, help="whose persona: self, partner or both")
    shortcut(predict, "--threshold", field="threshold", type=float, help="approximator: minimum fact score")
    predict.set_defaults(func=_predict)

    responder = actions.add_parser("train-responder", help="train the persona-conditioned responder on gold personas")
    add_config_args(responder, "grainvl.recipes.dialogue:TrainResponderConfig")
    _data(responder)
    shortcut(responder, "--steps", field="responder.fit.steps", type=int, help="training steps")
    responder.set_defaults(func=_train_responder)

    evaluate = actions.add_parser(
        "evaluate", help="the five conditioning settings (none/self/partner/both/gold) and the DailyDialog transfer"
    )
    add_config_args(evaluate, "grainvl.recipes.dialogue:EvaluateConfig")
    _data(evaluate)
    shortcut(evaluate, "--predictor", field="predictor", help="a train-predictor run folder")
    shortcut(evaluate, "--responder", field="responder", help="a train-responder run folder")
    shortcut(evaluate, "--judge", field="judge", help="an NLI judge folder (default: none, train one)")
    shortcut(evaluate, "--settings", field="settings", parse=comma_list, help="comma-separated conditioning settings")
    shortcut(evaluate, "--no-dailydialog", field="dailydialog", action="store_const", const=False, help="skip transfer")
    evaluate.set_defaults(func=_evaluate)


def _data(parser: argparse.ArgumentParser) -> None:
    shortcut(parser, "--out", field="out", help="output run folder")
    shortcut(
        parser,
        "--data",
        field="data.source",
        help="world folder or ParlAI ConvAI2 folder ({split}_both_original.txt) (default: none, the world in memory)",
    )
    shortcut(parser, "--max-train", field="data.max_train", type=int, help="at most this many train episodes")
    shortcut(parser, "--max-test", field="data.max_test", type=int, help="at most this many test episodes")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    print(f"{title}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def _train_predictor(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.dialogue import TrainPredictorConfig, run_train_predictor

    report = run_train_predictor(config_from_args(TrainPredictorConfig, args))
    for role in ROLES:
        _print_metrics(f"{report['kind']} {role} persona (test)", report[role])
    print(f"saved {report['predictor']} ({report['train_s']:.0f} s)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.dialogue import PredictConfig, predict_personas

    for role, facts in predict_personas(config_from_args(PredictConfig, args)).items():
        print(f"{role} persona:" + ("" if facts else " (nothing revealed)"))
        for sentence, score in facts:
            print(f"  {score:.3f}  {sentence}")
    return 0


def _train_responder(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.dialogue import TrainResponderConfig, run_train_responder

    report = run_train_responder(config_from_args(TrainResponderConfig, args))
    print(f"saved {report['responder']} ({report['train_s']:.0f} s)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.dialogue import EvaluateConfig, format_table, run_evaluate

    cfg = config_from_args(EvaluateConfig, args)
    print(format_table(run_evaluate(cfg)))
    print(f"results: {Path(cfg.out) / 'results.jsonl'}")
    return 0
