"""Where the dialogue models' data comes from: the one module that reads dialogue files or builds them.

A *source* is a folder or ``None``:

* ``None``: the synthetic world's dialogues built in memory (``build_dialogues``, one seed per split),
  with their annotations (which persona facts each turn reveals);
* a world folder ``W`` (``W/dialogue/convai2/{split}_both_original.txt``) or a folder in ParlAI's
  ConvAI2 layout (``{split}_both_original.txt``; ``valid`` is ConvAI2's name for the dev split), read
  with :func:`~grainvl.data.formats.convai2.read_convai2`. Without annotations the prediction target
  of every turn is the whole persona (the paper's setting); the world's annotations make it the facts
  the history has revealed so far.

From episodes come the training examples: :class:`PersonaExample` (history up to the partner's
latest utterance -> a speaker's persona) and :class:`ResponseExample` (history + both personas -> the
agent's response and its 20 candidates). The world also gives the exact readings the metrics need:
each fact's implicit hints, which facts clash, and (DNLI-style) utterance/persona NLI pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grainvl.data.formats.convai2 import read_convai2, read_revealed
from grainvl.data.formats.dailydialog import read_dailydialog
from grainvl.data.formats.dialogue_nli import read_dialogue_nli
from grainvl.data.world.daily_dialogue import build_daily_dialogues
from grainvl.data.world.dialogue import (
    FOLLOW_UPS,
    PERSONA_BANK,
    build_dialogue_nli,
    build_dialogues,
    contradicts,
    convai2_tokenize,
)

SPLITS = ("train", "valid", "test")
ROLES = ("self", "partner")
ROLE_PROMPTS = {"self": "your persona:", "partner": "partner's persona:"}
SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}  # in-memory world: one stream per split, never overlapping
DAILYDIALOG_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # our split -> its folder
NLI_SPLITS = {"train": "train", "valid": "dev", "test": "test"}  # our split -> Dialogue NLI's file name


@dataclass(frozen=True)
class PersonaExample:
    """Predict ``role``'s persona from ``history`` (oldest first, the partner's latest utterance last)."""

    history: tuple[str, ...]
    role: str  # "self" (the agent) or "partner"
    target: tuple[str, ...]  # the facts to predict: revealed so far (world) or the whole persona
    persona: tuple[str, ...]  # the role's whole persona


@dataclass(frozen=True)
class ResponseExample:
    """The agent's ``response`` to ``history``, with both gold personas and the ranking candidates."""

    history: tuple[str, ...]
    your_persona: tuple[str, ...]
    partner_persona: tuple[str, ...]
    response: str
    candidates: tuple[str, ...]  # gold last (ConvAI2 convention); may be empty


# ---------------------------------------------------------------------------------------------- episodes
def convai2_file(folder: Path, split: str) -> Path:
    """``{split}_both_original.txt`` in a world folder's ``dialogue/convai2/`` or a ParlAI ConvAI2 folder."""
    for candidate in (folder / "dialogue" / "convai2", folder):
        path = candidate / f"{split}_both_original.txt"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{folder}: no {split}_both_original.txt (expected W/dialogue/convai2/ or a ParlAI ConvAI2 folder)"
    )


def load_episodes(
    source: str | Path | None, split: str, n_episodes: int = 200, max_episodes: int | None = None
) -> list[dict]:
    """The ``split`` episodes of ``source`` (see the module doc); ``n_episodes`` sizes an in-memory world."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source is None:
        episodes = build_dialogues(n_episodes, random.Random(SPLIT_SEEDS[split]))
    else:
        path = convai2_file(Path(source), split)
        episodes = read_convai2(path)
        side = path.with_name(f"{split}_revealed.jsonl")
        if side.is_file():  # the world's per-turn annotations, matched to the episodes by the reader
            for episode, record in zip(episodes, read_revealed(side, episodes=episodes)):
                episode["annotations"] = {k: record[k] for k in ("revealed", "partner_revealed", "follow_up")}
    return episodes[:max_episodes] if max_episodes is not None else episodes


def _revealed(facts: Sequence[str], per_turn: Sequence[Sequence[int]], upto: int) -> tuple[str, ...]:
    """Facts revealed by turns ``< upto``, in the order they were revealed."""
    order = [i for turn in per_turn[:upto] for i in turn]
    return tuple(facts[i] for i in dict.fromkeys(order))


def persona_examples(episodes: Sequence[dict], roles: Sequence[str] = ROLES) -> list[PersonaExample]:
    """One example per turn and role: the history up to the partner's utterance of turn t.

    With annotations the self target is what the agent's responses before t revealed, the partner
    target what the partner's utterances up to t revealed; without, the whole persona.
    """
    examples = []
    for episode in episodes:
        notes = episode.get("annotations")
        history: list[str] = []
        for t, turn in enumerate(episode["turns"]):
            history.append(turn["text"])
            for role in roles:
                persona = tuple(episode["your_persona" if role == "self" else "partner_persona"])
                if notes is None:
                    target = persona
                elif role == "self":
                    target = _revealed(persona, notes["revealed"], t)
                else:
                    target = _revealed(persona, notes["partner_revealed"], t + 1)
                examples.append(PersonaExample(tuple(history), role, target, persona))
            history.append(turn["labels"][0])
    return examples


def response_examples(episodes: Sequence[dict]) -> list[ResponseExample]:
    """One example per turn: the history up to the partner's utterance -> the agent's response."""
    examples = []
    for episode in episodes:
        history: list[str] = []
        for turn in episode["turns"]:
            history.append(turn["text"])
            response = turn["labels"][0]
            examples.append(
                ResponseExample(
                    tuple(history),
                    tuple(episode["your_persona"]),
                    tuple(episode["partner_persona"]),
                    response,
                    tuple(turn["candidates"]),
                )
            )
            history.append(response)
    return examples


def dailydialog_file(folder: Path, split: str) -> Path:
    """``{split}/dialogues_{split}.txt`` under a world's ``dialogue/dailydialog/`` or an official DailyDialog folder."""
    name = DAILYDIALOG_SPLITS[split]
    for candidate in (folder / "dialogue" / "dailydialog", folder):
        path = candidate / name / f"dialogues_{name}.txt"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder}: no {name}/dialogues_{name}.txt (a world folder or DailyDialog's layout)")


def dailydialog_examples(source: str | Path | None, split: str, n_dialogues: int = 100) -> list[ResponseExample]:
    """Persona-free conversations (DailyDialog) as response examples without personas or candidates.

    Every utterance after the first is a response to the ones before it. ``None``: the world's
    DailyDialog analogue built in memory (``n_dialogues``, one seed per split).
    """
    if source is None:
        dialogues = build_daily_dialogues(n_dialogues, random.Random(100 + SPLIT_SEEDS[split]))
    else:
        dialogues = read_dailydialog(dailydialog_file(Path(source), split))
    return [
        ResponseExample(tuple(d["turns"][:i]), (), (), d["turns"][i], ())
        for d in dialogues
        for i in range(1, len(d["turns"]))
    ]


def mentioned_personas(examples: Sequence[ResponseExample], hints: dict[str, list[str]]) -> list[PersonaExample]:
    """Persona-free turns (DailyDialog) as persona-prediction examples, one per turn and role, whose target
    is the facts whose implicit hints that role's speaker has said so far (case-insensitive).

    The world's DailyDialog analogue slips a persona-bank hint into half of its dialogues, so this
    reading scores a predictor trained on ConvAI2 out of domain; on real DailyDialog no hint matches
    and every target is empty (then only false positives can be counted).
    """
    personas = []
    for e in examples:
        n = len(e.history)
        for role in ROLES:
            said = [
                convai2_tokenize(u) for i, u in enumerate(e.history) if ((n - 1 - i) % 2 == 0) == (role == "partner")
            ]
            target = tuple(f for f, phrases in hints.items() if any(h in u for u in said for h in phrases))
            personas.append(PersonaExample(e.history, role, target, target))
    return personas


# ---------------------------------------------------------------------------------------------- world readings
def persona_bank(episodes: Sequence[dict] = ()) -> list[str]:
    """Every persona sentence a predictor may retrieve: the world's bank, plus those of ``episodes``."""
    sentences = [fact.text for fact in PERSONA_BANK]
    sentences += [p for e in episodes for p in [*e["your_persona"], *e["partner_persona"]]]
    return list(dict.fromkeys(sentences))


def world_hints() -> dict[str, list[str]]:
    """World fact -> its implicit hints, in the dialogues' tokenisation."""
    return {fact.text: [convai2_tokenize(h) for h in fact.hints] for fact in PERSONA_BANK}


def world_clashes() -> dict[str, set[str]]:
    """World fact -> the facts no persona may hold with it (its topic's other facts, ``CLASHING_FACTS``)."""
    return {f.text: {g.text for g in PERSONA_BANK if contradicts(f, g)} for f in PERSONA_BANK}


def world_follow_ups() -> dict[str, list[str]]:
    """World fact -> the phrases with which an agent follows up on a partner who revealed it (its topic's)."""
    return {f.text: [convai2_tokenize(p) for p in FOLLOW_UPS[f.topic]] for f in PERSONA_BANK}


def nli_file(folder: Path, split: str) -> Path | None:
    """``dialogue_nli_{split}.jsonl`` in a world's ``dialogue/dnli/`` or a Dialogue NLI folder; None if absent."""
    name = f"dialogue_nli_{NLI_SPLITS[split]}.jsonl"
    for candidate in (folder / "dialogue" / "dnli", folder):
        if (candidate / name).is_file():
            return candidate / name
    return None


def nli_examples(source: str | Path | None, split: str, n_examples: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Dialogue-NLI (utterance, persona sentence, label) triples of ``split``, at most ``n_examples``.

    ``source`` None: drawn by the world's generator (:func:`~grainvl.data.world.dialogue.build_dialogue_nli`,
    balanced over entail/contradict/neutral; one stream per split and ``seed``); a folder: its
    ``dialogue_nli_{train,dev,test}.jsonl`` (the world's or the official release), the first
    ``n_examples`` pairs.
    """
    if source is None:
        pairs = build_dialogue_nli(n_examples, random.Random(1000 * seed + SPLIT_SEEDS[split]))
    else:
        path = nli_file(Path(source), split)
        if path is None:
            raise FileNotFoundError(
                f"{source}: no dialogue_nli_{NLI_SPLITS[split]}.jsonl "
                "(expected W/dialogue/dnli/ or a Dialogue NLI folder)"
            )
        pairs = read_dialogue_nli(path)[:n_examples]
    return [(p["utterance"], p["persona"], p["label"]) for p in pairs]


__all__ = [
    "ROLES",
    "ROLE_PROMPTS",
    "SPLITS",
    "PersonaExample",
    "ResponseExample",
    "convai2_file",
    "dailydialog_examples",
    "dailydialog_file",
    "load_episodes",
    "mentioned_personas",
    "nli_examples",
    "nli_file",
    "persona_bank",
    "persona_examples",
    "response_examples",
    "world_clashes",
    "world_follow_ups",
    "world_hints",
]
