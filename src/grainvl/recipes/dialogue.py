"""Persona prediction jobs (arXiv 2111.15093): train a predictor, train a responder, evaluate, predict.

* :func:`run_train_predictor`: a persona generator or approximator on (history -> self / partner
  persona) examples; saves ``OUT/predictor/`` and scores the test split per role.
* :func:`run_train_responder`: the persona-conditioned responder on gold personas; ``OUT/responder/``.
* :func:`run_evaluate`: the headline table -- the responder in the five conditioning settings (none /
  predicted self / predicted partner / both / gold) with consistency (C-score from an NLI judge
  trained here or loaded, the world oracle) and engagingness (follow-up rate), then the predictor on
  DailyDialog-style conversations, with the responder used as is and fine-tuned there.
* :func:`predict_personas`: the predicted facts, with scores, for one typed or filed history.

Data comes from :mod:`grainvl.dialogue.data` (the in-memory world, a world folder, or a ParlAI ConvAI2
folder). Every metric is a ``results.jsonl`` row whose ``task`` names what was measured
(``persona:self``, ``response:gold``, ``dailydialog:tuned+predicted`` ...).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.bench.energy import hardware_tags
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.dialogue.data import (
    ROLES,
    ResponseExample,
    dailydialog_examples,
    load_episodes,
    mentioned_personas,
    nli_examples,
    nli_file,
    persona_bank,
    persona_examples,
    response_examples,
    world_clashes,
    world_follow_ups,
    world_hints,
)
from grainvl.dialogue.nli import ConsistencyJudge, NLIConfig
from grainvl.dialogue.predictor import PredictorConfig, evaluate_predictor, load_predictor, train_predictor
from grainvl.dialogue.responder import (
    SETTINGS,
    Responder,
    ResponderConfig,
    WorldReadings,
    evaluate_responses,
    predicted_personas,
    setting_personas,
)
from grainvl.dialogue.tokens import DialogueVocab
from grainvl.recipes.scaffold import Run, cost_columns, metric_rows, run_recipe

PREDICTOR_DIR, RESPONDER_DIR, JUDGE_DIR = "predictor", "responder", "judge"


@dataclass
class DialogueData:
    """Where the dialogues come from (see :mod:`grainvl.dialogue.data`)."""

    source: str | None = None  # world folder or ParlAI ConvAI2 folder; none: the world, built in memory
    train_episodes: int = 1500  # in-memory world: train episodes
    valid_episodes: int = 40  # in-memory world: held-out episodes (the approximator's threshold)
    test_episodes: int = 60  # in-memory world: test episodes
    max_train: int | None = None  # read at most this many train episodes
    max_test: int | None = None  # read at most this many test episodes
    test_split: str = "test"  # test or valid


@dataclass
class TrainPredictorConfig:
    """``grainvl dialogue train-predictor``."""

    out: str = "runs/persona-predictor"
    data: DialogueData = field(default_factory=DialogueData)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)


@dataclass
class TrainResponderConfig:
    """``grainvl dialogue train-responder``."""

    out: str = "runs/persona-responder"
    data: DialogueData = field(default_factory=DialogueData)
    responder: ResponderConfig = field(default_factory=ResponderConfig)
    # The vocabulary also covers DailyDialog's train text, so that fine-tuning there can write its words.
    dailydialog_vocab: bool = True
    dailydialog_source: str | None = None  # DailyDialog folder; none: the world's, in memory
    dailydialog_dialogues: int = 60  # in-memory: train dialogues (as EvaluateConfig's)


@dataclass
class EvaluateConfig:
    """``grainvl dialogue evaluate``."""

    out: str = "runs/persona-eval"
    predictor: str = "runs/persona-predictor"  # a train-predictor run (or its predictor/ folder)
    responder: str = "runs/persona-responder"  # a train-responder run (or its responder/ folder)
    judge: str | None = None  # an NLI judge folder; none: train one (pairs: nli.source, --data's DNLI, memory)
    nli: NLIConfig = field(default_factory=NLIConfig)
    data: DialogueData = field(default_factory=DialogueData)
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    dailydialog: bool = True  # the transfer rows (DailyDialog-style conversations)
    dailydialog_source: str | None = None  # DailyDialog folder; none: the in-memory stand-in
    dailydialog_dialogues: int = 60  # in-memory stand-in: train dialogues (test: a third)
    dailydialog_steps: int = 150  # fine-tuning steps of the responder on DailyDialog


@dataclass
class PredictConfig:
    """``grainvl dialogue predict``."""

    predictor: str = "runs/persona-predictor"  # a train-predictor run (or its predictor/ folder)
    history: str | None = None  # utterances separated by ' || ', oldest first, the partner's last
    history_file: str | None = None  # a text file, one utterance per line
    roles: list[str] = field(default_factory=lambda: list(ROLES))
    threshold: float | None = None  # approximator: override the saved score threshold


# ---------------------------------------------------------------------------------------------- helpers
def _episodes(data: DialogueData, split: str) -> list[dict]:
    if split == "train":
        return load_episodes(data.source, split, data.train_episodes, data.max_train)
    size = data.valid_episodes if split == "valid" and data.test_split != "valid" else data.test_episodes
    return load_episodes(data.source, split, size, data.max_test)


def _held_out(data: DialogueData, train: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held-out) episodes for choices made after training: the valid split when it is not the test
    split and exists, else the last tenth of train (taken out of training)."""
    if data.test_split != "valid":
        try:
            return train, _episodes(data, "valid")
        except FileNotFoundError:
            pass
    cut = len(train) - max(len(train) // 10, 1) if len(train) > 1 else len(train)
    return train[:cut], train[cut:]


def _model_folder(path: str, name: str) -> Path:
    """A run folder's ``name/`` subfolder, or ``path`` itself when it is the model folder."""
    return Path(path) / name if (Path(path) / name).is_dir() else Path(path)


def _rows(run: Run, metrics: dict[str, float], model: str, task: str, dataset: str, split: str, costs: dict) -> None:
    run.append(metric_rows(metrics, model=model, task=task, dataset=dataset, split=split, costs=costs))


def _costs(params: int, seed: int, seconds: float, samples: int) -> dict[str, Any]:
    return cost_columns(params=params, seed=seed, hardware=hardware_tags(), throughput=samples / max(seconds, 1e-9))


def _dataset(data: DialogueData) -> str:
    return "world-memory" if data.source is None else Path(data.source).name


# ---------------------------------------------------------------------------------------------- jobs
def run_train_predictor(cfg: TrainPredictorConfig) -> dict[str, Any]:
    """Train a persona predictor for both roles, save it, score it on the test split per role."""

    def body(run: Run) -> dict[str, Any]:
        run.write_config(cfg)
        train, held_out = _held_out(cfg.data, _episodes(cfg.data, "train"))
        test = _episodes(cfg.data, cfg.data.test_split)
        bank = persona_bank(train)
        start = time.perf_counter()
        predictor = train_predictor(persona_examples(train), bank, cfg.predictor, persona_examples(held_out))
        seconds = time.perf_counter() - start
        predictor.save(run.dir / PREDICTOR_DIR)
        params = sum(p.numel() for p in predictor.model.parameters())
        costs = _costs(params, cfg.predictor.fit.seed, seconds, cfg.predictor.fit.steps * cfg.predictor.fit.batch_size)
        report: dict[str, Any] = {
            "predictor": str(run.dir / PREDICTOR_DIR),
            "kind": cfg.predictor.kind,
            "train_s": seconds,
            "threshold": predictor.cfg.threshold if cfg.predictor.kind == "approximator" else None,
        }
        for role in ROLES:
            metrics = evaluate_predictor(predictor, persona_examples(test, (role,)), bank)
            _rows(run, metrics, cfg.predictor.kind, f"persona:{role}", _dataset(cfg.data), cfg.data.test_split, costs)
            report[role] = metrics
        run.write_summary(report)
        return report

    return run_recipe(cfg.out, body)


def run_train_responder(cfg: TrainResponderConfig) -> dict[str, Any]:
    """Train the persona-conditioned responder on gold personas and save it."""

    def body(run: Run) -> dict[str, Any]:
        run.write_config(cfg)
        examples = response_examples(_episodes(cfg.data, "train"))
        start = time.perf_counter()
        texts = [e.response for e in examples]
        if cfg.dailydialog_vocab:
            daily = dailydialog_examples(cfg.dailydialog_source, "train", cfg.dailydialog_dialogues)
            texts += [u for e in daily for u in (*e.history, e.response)]
        vocab = DialogueVocab.build(load_tokenizer(packaged_minilm_path()), texts)  # what it may have to write
        responder = Responder.train(examples, vocab, cfg.responder)
        seconds = time.perf_counter() - start
        responder.save(run.dir / RESPONDER_DIR)
        report = {"responder": str(run.dir / RESPONDER_DIR), "train_s": seconds}
        run.write_summary(report)
        return report

    return run_recipe(cfg.out, body)


def _nli_source(cfg: EvaluateConfig) -> str | None:
    """Where the judge's pairs come from: ``nli.source``, else ``--data`` when it holds Dialogue NLI files, else
    None (the world's generator, in memory)."""
    if cfg.nli.source is not None:
        return cfg.nli.source
    if cfg.data.source is not None and nli_file(Path(cfg.data.source), "train") is not None:
        return cfg.data.source
    return None


def _judge(cfg: EvaluateConfig, run: Run) -> tuple[ConsistencyJudge, dict[str, Any]]:
    """The NLI judge (loaded, or trained and saved) and its accuracy on held-out pairs (none seen in training)."""
    source = _nli_source(cfg)
    train = nli_examples(source, "train", cfg.nli.train_pairs, cfg.nli.seed)
    if cfg.judge is not None:
        judge = ConsistencyJudge.load(Path(cfg.judge))
    else:
        judge = ConsistencyJudge.train(train, cfg.nli)
        judge.save(run.dir / JUDGE_DIR)
    seen = {(u, p) for u, p, _ in train}
    test = [t for t in nli_examples(source, "test", cfg.nli.test_pairs, cfg.nli.seed) if (t[0], t[1]) not in seen]
    info = {"pairs": "world-memory" if source is None else str(source), "train": len(train), "test": len(test)}
    return judge, {**info, "accuracy": judge.accuracy(test)}


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """The five-setting table on the test split, then the DailyDialog transfer rows."""

    def body(run: Run) -> dict[str, Any]:
        run.write_config(cfg)
        predictor = load_predictor(_model_folder(cfg.predictor, PREDICTOR_DIR))
        responder = Responder.load(_model_folder(cfg.responder, RESPONDER_DIR))
        judge, judge_report = _judge(cfg, run)
        examples = response_examples(_episodes(cfg.data, cfg.data.test_split))
        world = WorldReadings(world_hints(), world_clashes(), world_follow_ups())
        predicted = predicted_personas(predictor, examples)
        costs = _costs(sum(p.numel() for p in responder.model.parameters()), responder.cfg.fit.seed, 1.0, 0)
        table: dict[str, dict[str, float]] = {}
        for setting in cfg.settings:
            metrics, _ = evaluate_responses(
                responder, examples, setting_personas(setting, examples, predicted), judge, world
            )
            _rows(run, metrics, "responder", f"response:{setting}", _dataset(cfg.data), cfg.data.test_split, costs)
            table[setting] = metrics
        report: dict[str, Any] = {
            "settings": table,
            "judge_accuracy": judge_report["accuracy"],
            "judge": judge_report,
            "examples": len(examples),
        }
        if cfg.dailydialog:
            report["dailydialog"], report["dailydialog_personas"] = _dailydialog(cfg, run, predictor, responder, costs)
        run.write_summary(report)
        return report

    return run_recipe(cfg.out, body)


def _dailydialog(
    cfg: EvaluateConfig, run: Run, predictor: Any, responder: Responder, costs: dict
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Response relevance on persona-free conversations, with no persona or the predicted ones (self and
    partner), from the responder as trained on PersonaChat (zero-shot) and after fine-tuning there; and
    the predictor's facts on those turns against the hints said in them (:func:`mentioned_personas`).

    Fine-tuning trains the responder on the DailyDialog responses with the personas the frozen
    predictor reads from each history (there are no gold personas to fine-tune the predictor on).
    """
    train = dailydialog_examples(cfg.dailydialog_source, "train", cfg.dailydialog_dialogues)
    test = dailydialog_examples(cfg.dailydialog_source, "test", max(cfg.dailydialog_dialogues // 3, 1))
    fit = dataclasses.replace(responder.cfg.fit, steps=cfg.dailydialog_steps)
    tuned_none = responder.clone().fine_tune(train, fit)
    tuned_predicted = responder.clone().fine_tune(_with_predicted(predictor, train), fit)
    none = setting_personas("none", test, None)
    predicted = setting_personas("both", test, predicted_personas(predictor, test))
    table: dict[str, Any] = {}
    for name, model, personas in (
        ("zero-shot+none", responder, none),
        ("zero-shot+predicted", responder, predicted),
        ("tuned+none", tuned_none, none),
        ("tuned+predicted", tuned_predicted, predicted),
    ):
        metrics, _ = evaluate_responses(model, test, personas)
        _rows(run, metrics, "responder", f"dailydialog:{name}", "dailydialog-style", "test", costs)
        table[name] = metrics
    mentions = mentioned_personas(test, world_hints())
    facts: dict[str, Any] = {"mentions": sum(bool(e.target) for e in mentions)}  # (turn, role) pairs with a hint
    for role in ROLES:
        metrics = evaluate_predictor(predictor, [e for e in mentions if e.role == role], persona_bank())
        _rows(run, metrics, "predictor", f"dailydialog-persona:{role}", "dailydialog-style", "test", costs)
        facts[role] = metrics
    return table, facts


def _with_predicted(predictor: Any, examples: list[ResponseExample]) -> list[ResponseExample]:
    """``examples`` carrying the predictor's self and partner personas in place of (absent) gold ones."""
    mine, theirs = predicted_personas(predictor, examples)
    return [
        dataclasses.replace(e, your_persona=tuple(m), partner_persona=tuple(t))
        for e, m, t in zip(examples, mine, theirs)
    ]


def format_table(report: dict[str, Any]) -> str:
    """The evaluation report as Markdown tables: the settings, then the DailyDialog rows when present."""
    lines = []
    for title, table in (("setting", report["settings"]), ("DailyDialog-style", report.get("dailydialog") or {})):
        if not table:
            continue
        columns = list(dict.fromkeys(k for metrics in table.values() for k in metrics))
        lines += [f"| {title} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [
            f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in columns) + " |"
            for name, m in table.items()
        ]
        lines.append("")
    personas = report.get("dailydialog_personas")
    if personas:
        columns = ["fact_precision", "fact_recall", "fact_f1"]
        lines += ["| DailyDialog-style personas | " + " | ".join(columns) + " |", "|---" * 4 + "|"]
        lines += [f"| {role} | " + " | ".join(f"{personas[role][c]:.3f}" for c in columns) + " |" for role in ROLES]
        lines += [f"({personas['mentions']} (turn, role) pairs whose speaker said a persona hint)", ""]
    judge = report.get("judge", {})
    lines.append(
        f"NLI judge accuracy {report['judge_accuracy']:.3f} on {judge.get('test', '?')} held-out Dialogue NLI pairs "
        f"({judge.get('pairs', '?')}); {report['examples']} test turns"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- predict
def read_history(cfg: PredictConfig) -> list[str]:
    """The typed (``a || b``) or filed (one utterance per line) history; a one-line error when neither or empty."""
    if (cfg.history is None) == (cfg.history_file is None):
        raise ValueError("give exactly one of --history 'utt1 || utt2' and --history-file FILE")
    if cfg.history is not None:
        utterances = [u.strip() for u in cfg.history.split("||")]
    else:
        path = Path(cfg.history_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such history file")
        utterances = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    utterances = [u for u in utterances if u]
    if not utterances:
        raise ValueError("the history is empty")
    return utterances


def predict_personas(cfg: PredictConfig) -> dict[str, list[tuple[str, float]]]:
    """Role -> predicted persona facts with scores for one history (a generator reads its newest
    ``model.max_items`` sentences; the approximator's sums read all of it)."""
    overrides = {"threshold": cfg.threshold} if cfg.threshold is not None else {}
    predictor = load_predictor(_model_folder(cfg.predictor, PREDICTOR_DIR), overrides)
    history = read_history(cfg)
    return {role: predictor.predict([history], [role])[0] for role in cfg.roles}


__all__ = [
    "DialogueData",
    "EvaluateConfig",
    "PredictConfig",
    "TrainPredictorConfig",
    "TrainResponderConfig",
    "format_table",
    "predict_personas",
    "read_history",
    "run_evaluate",
    "run_train_predictor",
    "run_train_responder",
]
