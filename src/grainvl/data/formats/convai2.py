"""ConvAI2 / PersonaChat dialogues in ParlAI's text format (``train_both_original.txt`` and friends).

Each line starts with a line number; the numbers count up from 1 within an episode and restart at
1 for the next one. An episode opens with persona lines, ``N your persona: <sentence>`` and (in the
``both_*`` files) ``N partner's persona: <sentence>``, followed by turn lines::

    N <partner utterance>\\t<response>\\t\\t<cand 1>|<cand 2>|...|<cand K>

The empty field between the two tabs is ParlAI's reward column, unused by ConvAI2. ``<response>``
may hold several ``|``-separated labels (ConvAI2 has one), and each label is one of the
candidates (the last one in the official files). ``self_*`` files carry only ``your persona``
lines, ``other_*`` only ``partner's persona``, ``none_*`` none.

An episode is ``{"your_persona": [str], "partner_persona": [str], "turns": [{"text": str,
"labels": [str], "candidates": [str]}]}``; a turn without a candidate field has ``candidates == []``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import atomic_write_text, iter_text_lines

YOUR_PERSONA = "your persona: "
PARTNER_PERSONA = "partner's persona: "


def write_convai2(path: str | Path, episodes: list[dict]) -> None:
    """Write episodes as numbered ParlAI lines, atomically.

    Anything the format cannot hold or the reader would reject (a tab or line break in a field, a
    ``|`` inside a label or candidate, a label missing from the candidates, an episode without
    turns) is a ValueError naming the episode and turn.
    """
    lines: list[str] = []
    for e, episode in enumerate(episodes):
        lines.extend(_episode_lines(episode, f"episode {e}"))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _episode_lines(episode: dict, where: str) -> list[str]:
    for persona in [*episode["your_persona"], *episode["partner_persona"]]:
        _check_field(persona, where, "persona")
    persona_lines = [YOUR_PERSONA + p for p in episode["your_persona"]]
    persona_lines += [PARTNER_PERSONA + p for p in episode["partner_persona"]]
    if not episode["turns"]:
        raise ValueError(f"{where}: no dialogue turns")
    turn_lines = []
    for t, turn in enumerate(episode["turns"]):
        here = f"{where}, turn {t}"
        _check_field(turn["text"], here, "text")
        for item in [*turn["labels"], *turn["candidates"]]:
            _check_field(item, here, "label/candidate")
            if "|" in item:
                raise ValueError(f"{here}: label/candidate {item!r} contains '|', the candidate separator")
        problem = _label_problem(turn["labels"], turn["candidates"])
        if problem:
            raise ValueError(f"{here}: {problem}")
        line = f"{turn['text']}\t{'|'.join(turn['labels'])}"
        turn_lines.append(line + f"\t\t{'|'.join(turn['candidates'])}" if turn["candidates"] else line)
    return [f"{n} {content}" for n, content in enumerate(persona_lines + turn_lines, start=1)]


def _check_field(value: str, where: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {what} should be a non-empty string, got {value!r}")
    if any(ch in value for ch in "\t\n\r"):
        raise ValueError(f"{where}: {what} {value!r} contains a tab or line break, which the format cannot hold")


def _label_problem(labels: list[str], candidates: list[str]) -> str | None:
    """Why ``labels`` are not a valid response for ``candidates``, or None when they are."""
    if not labels or any(not label.strip() for label in labels):
        return "empty response"
    missing = [label for label in labels if candidates and label not in candidates]
    if missing:
        return f"response {missing[0]!r} is not among the {len(candidates)} candidates"
    return None


@dataclass
class _EpisodeBuilder:
    """One episode being read; ``start_line`` is where it began, for errors about the whole episode."""

    start_line: int
    your_persona: list[str] = field(default_factory=list)
    partner_persona: list[str] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"your_persona": self.your_persona, "partner_persona": self.partner_persona, "turns": self.turns}


def read_convai2(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[dict]:
    """Read a ParlAI ConvAI2 file into episode dicts, validating numbering, tabs and candidates.

    Errors name the 1-based line. With ``bad.skip_bad`` a bad line is recorded and left out (the
    rest of its episode is kept) and numbering resumes after it. ``image_root`` is ignored.
    """
    path = Path(path)
    bad = bad or BadRecords()
    episodes: list[dict] = []
    current: _EpisodeBuilder | None = None
    expected = 1
    for lineno, line in iter_text_lines(path, bad):
        if not line.strip():
            continue  # blank lines carry nothing; the official files have none
        try:
            number, content = _split_number(line, path, lineno)
            expected, previous = number + 1, expected
            if number == 1:
                _finish(current, episodes, path, bad)
                current = _EpisodeBuilder(start_line=lineno)
            elif number != previous or current is None:
                wanted = f"{previous} or 1" if current is not None else "1"
                raise DataError(path, f"line {lineno}", f"line number {number} out of sequence: expected {wanted}")
            _add_line(current, content, path, lineno)
        except DataError as error:
            bad.handle(error)
    _finish(current, episodes, path, bad)
    return episodes


def _split_number(line: str, path: Path, lineno: int) -> tuple[int, str]:
    head, _, content = line.partition(" ")
    if not (head.isascii() and head.isdigit()) or not content:
        raise DataError(path, f"line {lineno}", f"expected '<line number> <text>', got {line[:60]!r}")
    return int(head), content


def _finish(episode: _EpisodeBuilder | None, episodes: list[dict], path: Path, bad: BadRecords) -> None:
    if episode is None:
        return
    if not episode.turns:
        bad.handle(DataError(path, f"line {episode.start_line}", "episode has no dialogue turns"))
        return
    episodes.append(episode.as_dict())


def _add_line(episode: _EpisodeBuilder, content: str, path: Path, lineno: int) -> None:
    where = f"line {lineno}"
    for prefix, personas in ((YOUR_PERSONA, episode.your_persona), (PARTNER_PERSONA, episode.partner_persona)):
        if content.startswith(prefix):
            if episode.turns:
                raise DataError(path, where, "persona line after the dialogue has started")
            if "\t" in content or not content[len(prefix) :].strip():
                raise DataError(path, where, "persona line should be one non-empty sentence without tabs")
            personas.append(content[len(prefix) :])
            return
    episode.turns.append(_parse_turn(content, path, where))


def _parse_turn(content: str, path: Path, where: str) -> dict:
    fields = content.split("\t")
    if len(fields) < 2:
        raise DataError(path, where, "missing tab: expected '<text>\\t<response>\\t\\t<candidates>'")
    if len(fields) > 4:
        raise DataError(path, where, f"expected at most 4 tab-separated fields, got {len(fields)}")
    if len(fields) >= 3 and fields[2]:
        raise DataError(path, where, f"unexpected value {fields[2]!r} in the reward field (ConvAI2 leaves it empty)")
    if not fields[0].strip():
        raise DataError(path, where, "empty utterance text")
    labels = fields[1].split("|")
    candidates = fields[3].split("|") if len(fields) == 4 and fields[3] else []
    problem = _label_problem(labels, candidates)
    if problem:
        raise DataError(path, where, problem)
    return {"text": fields[0], "labels": labels, "candidates": candidates}


SPEC = register(
    FormatSpec(
        name="convai2",
        description="ConvAI2/PersonaChat in ParlAI text form: numbered persona and turn lines with candidates",
        patterns=tuple(
            f"*_{persona}_{version}.txt"
            for persona in ("both", "self", "other", "none")
            for version in ("original", "revised")
            if (persona, version) != ("none", "revised")
        ),
        read=read_convai2,
    )
)
