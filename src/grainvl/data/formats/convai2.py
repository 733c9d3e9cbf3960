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
A candidate field holds at least 2 candidates. The file name says which personas every episode
must carry: ``self`` your persona, ``other`` the partner's, ``both`` both.

Two more files share the episode dicts:

- Hugging Face's ``personachat_self_original.json`` (transfer-learning-conv-ai): ``{"train":
  [{"personality": [str], "utterances": [{"history": [str], "candidates": [str]}]}], "valid":
  [...]}``. Utterance t's history holds the 2t+1 utterances so far (partner first, so the last
  one is the partner's), and its candidates end with the gold response. ``read_convai2_json``.
- The world's per-turn persona annotations, ``{split}_revealed.jsonl`` (our side file, one JSON
  object per episode, line N holding episode N-1)::

    {"episode": int, "your_persona": [str], "partner_persona": [str],
     "revealed": [[int]],          # per turn: your_persona indices the response reveals
     "partner_revealed": [[int]],  # per turn: partner_persona indices the partner utterance reveals
     "follow_up": [int | null]}    # per turn: the partner_persona index the response follows up on

  ``read_revealed`` / ``write_revealed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.data.formats.validate import ImageChecker, read_validated_jsonl, require_fields, write_validated_jsonl
from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import atomic_write_text, iter_text_lines, read_json, write_json

YOUR_PERSONA = "your persona: "
PARTNER_PERSONA = "partner's persona: "
VARIANTS = ("self", "other", "both", "none")  # which personas a file carries: ParlAI's file-name word
# the episode fields a variant's file gives every episode (ParlAI writes none of the other's lines)
REQUIRED_PERSONAS: dict[str, tuple[str, ...]] = {
    "self": ("your_persona",),
    "other": ("partner_persona",),
    "both": ("your_persona", "partner_persona"),
    "none": (),
}
_VARIANT_NAME = re.compile(r"_(self|other|both|none)_(original|revised)\.txt$")
_PERSONA_LINE = {"your_persona": YOUR_PERSONA, "partner_persona": PARTNER_PERSONA}


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


def as_variant(episodes: list[dict], variant: str) -> list[dict]:
    """The episodes as a ``{split}_{variant}_original.txt`` file holds them: personas the variant drops emptied.

    ParlAI's ``self`` files keep only your persona, ``other`` only the partner's, ``none`` neither.
    """
    if variant not in REQUIRED_PERSONAS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    kept = REQUIRED_PERSONAS[variant]
    return [
        {**episode, **{name: [] for name in ("your_persona", "partner_persona") if name not in kept}}
        for episode in episodes
    ]


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
    if len(candidates) == 1:  # ranking against a single candidate measures nothing
        return "only 1 candidate: a candidate list needs at least 2"
    if any(not candidate.strip() for candidate in candidates):
        return "empty candidate"
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
    rest of its episode is kept) and numbering resumes after it. An episode that lacks the personas
    its file's variant promises (``required_personas``) is an error at its first line, or skipped
    whole. ``image_root`` is ignored.
    """
    path = Path(path)
    bad = bad or BadRecords()
    required = required_personas(path)
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
                _finish(current, episodes, path, bad, required)
                current = _EpisodeBuilder(start_line=lineno)
            elif number != previous or current is None:
                wanted = f"{previous} or 1" if current is not None else "1"
                raise DataError(path, f"line {lineno}", f"line number {number} out of sequence: expected {wanted}")
            _add_line(current, content, path, lineno)
        except DataError as error:
            bad.handle(error)
    _finish(current, episodes, path, bad, required)
    return episodes


def required_personas(path: str | Path) -> tuple[str, ...]:
    """The persona fields (``your_persona``, ``partner_persona``) every episode of ``path`` must have.

    ParlAI names the variant in the file name (``train_self_original.txt``); a name without one
    promises nothing.
    """
    match = _VARIANT_NAME.search(Path(path).name)
    return REQUIRED_PERSONAS[match.group(1)] if match else ()


def _split_number(line: str, path: Path, lineno: int) -> tuple[int, str]:
    head, _, content = line.partition(" ")
    if not (head.isascii() and head.isdigit()) or not content:
        raise DataError(path, f"line {lineno}", f"expected '<line number> <text>', got {line[:60]!r}")
    return int(head), content


def _finish(
    episode: _EpisodeBuilder | None, episodes: list[dict], path: Path, bad: BadRecords, required: tuple[str, ...]
) -> None:
    if episode is None:
        return
    where = f"line {episode.start_line}"
    if not episode.turns:
        bad.handle(DataError(path, where, "episode has no dialogue turns"))
        return
    record = episode.as_dict()
    for name in required:
        if not record[name]:
            prefix = _PERSONA_LINE[name].strip()
            bad.handle(
                DataError(path, where, f"episode has no '{prefix}' lines, which every episode of this file needs")
            )
            return
    episodes.append(record)


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
    candidates = fields[3].split("|") if len(fields) == 4 else []
    if len(fields) == 4 and not fields[3].strip():
        raise DataError(path, where, "empty candidate list (leave out the field, or give at least 2 candidates)")
    problem = _label_problem(labels, candidates)
    if problem:
        raise DataError(path, where, problem)
    return {"text": fields[0], "labels": labels, "candidates": candidates}


# --- Hugging Face JSON (personachat_self_original.json) -----------------------------------------


def read_convai2_json(
    path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None, split: str = "train"
) -> list[dict]:
    """Read one split of HF's ``personachat_self_original.json`` into :func:`read_convai2`'s episodes.

    ``your_persona`` is the ``personality``; ``partner_persona`` is ``[]`` (the file has none).
    Turn t's text is the last history entry, its label the last candidate. A dialogue whose
    history does not grow by exactly the previous gold response and one partner utterance is an
    error naming ``{split} index {i}, utterance {t}``; with ``bad.skip_bad`` the dialogue is left out.
    """
    path = Path(path)
    return _split_episodes(_json_splits(path), split, path, bad or BadRecords())


def _json_splits(path: Path) -> dict:
    document = read_json(path)
    if not isinstance(document, dict) or not document:
        raise DataError(path, None, "expected a JSON object of splits at top level ({'train': [...], 'valid': [...]})")
    return document


def _split_episodes(document: dict, split: str, path: Path, bad: BadRecords) -> list[dict]:
    if not isinstance(document.get(split), list):
        raise DataError(path, None, f"no list for split {split!r} (the file has: {', '.join(map(str, document))})")
    episodes = []
    for i, dialogue in enumerate(document[split]):
        try:
            episodes.append(_json_episode(dialogue, path, f"{split} index {i}"))
        except DataError as error:
            bad.handle(error)
    return episodes


def _json_episode(dialogue: Any, path: Path, where: str) -> dict:
    require_fields(dialogue, {"personality": list, "utterances": list}, path, where)
    persona = dialogue["personality"]
    if not persona or not all(isinstance(p, str) and p.strip() for p in persona):
        raise DataError(path, where, "'personality' should be a non-empty list of non-empty sentences")
    if not dialogue["utterances"]:
        raise DataError(path, where, "no utterances")
    turns: list[dict] = []
    said: list[str] = []  # the dialogue so far: partner, gold, partner, gold, ...
    for t, utterance in enumerate(dialogue["utterances"]):
        here = f"{where}, utterance {t}"
        require_fields(utterance, {"history": list, "candidates": list}, path, here)
        history, candidates = utterance["history"], utterance["candidates"]
        if not all(isinstance(x, str) for x in [*history, *candidates]):
            raise DataError(path, here, "history and candidates should hold strings")
        if len(history) != len(said) + 1:
            raise DataError(path, here, f"history should hold {len(said) + 1} utterances (2t+1), got {len(history)}")
        if history[:-1] != said:  # each history repeats the previous one, its gold response, then one new line
            raise DataError(path, here, "history does not repeat the previous utterance's history and gold response")
        if not history[-1].strip():
            raise DataError(path, here, "empty utterance text")
        problem = "fewer than 2 candidates" if len(candidates) < 2 else _label_problem(candidates[-1:], candidates)
        if problem:
            raise DataError(path, here, problem)
        turns.append({"text": history[-1], "labels": [candidates[-1]], "candidates": list(candidates)})
        said = [*history, candidates[-1]]
    return {"your_persona": list(persona), "partner_persona": [], "turns": turns}


def write_convai2_json(path: str | Path, splits: dict[str, list[dict]]) -> None:
    """Write ``{split: episodes}`` as HF's JSON, atomically (``partner_persona`` is not stored).

    Every episode needs a persona and every turn at least 2 candidates ending with its one label;
    anything else is a ValueError naming the split, episode and turn.
    """
    document = {
        split: [_json_dialogue(e, f"{split} episode {i}") for i, e in enumerate(eps)] for split, eps in splits.items()
    }
    write_json(path, document)


def _json_dialogue(episode: dict, where: str) -> dict:
    if not episode["your_persona"]:
        raise ValueError(f"{where}: the JSON form needs a persona ('personality')")
    said: list[str] = []
    utterances = []
    for t, turn in enumerate(episode["turns"]):
        labels, candidates = turn["labels"], turn["candidates"]
        if len(labels) != 1 or len(candidates) < 2 or candidates[-1] != labels[0]:
            raise ValueError(f"{where}, turn {t}: the JSON form needs >= 2 candidates ending with the one label")
        said = [*said, turn["text"]]
        utterances.append({"candidates": list(candidates), "history": said})
        said = [*said, labels[0]]
    return {"personality": list(episode["your_persona"]), "utterances": utterances}


def _read_convai2_json_splits(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list:
    """Every split of an HF JSON file, concatenated (what ``grainvl data check`` validates); the file is read once."""
    path, bad = Path(path), bad or BadRecords()
    document = _json_splits(path)
    return [episode for split in document for episode in _split_episodes(document, split, path, bad)]


# --- The world's per-turn reveal annotations ({split}_revealed.jsonl) ------------------------------

REVEALED_LISTS = ("revealed", "partner_revealed", "follow_up")


def read_revealed(
    path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None, episodes: list[dict] | None = None
) -> list[dict]:
    """Read and validate a ``{split}_revealed.jsonl`` side file (schema in the module docstring).

    Indices must fall inside their persona, and the three per-turn lists must have one entry per
    turn. With ``episodes`` (the same split's ConvAI2 episodes) each record must also match its
    episode: same personas, one entry per turn, and the file one record per episode.
    """
    path = Path(path)
    bad = bad or BadRecords()
    errors_before = len(bad.errors)
    records = read_validated_jsonl(path, _check_revealed, bad)
    if episodes is None:
        return records
    kept = []
    for record in records:
        try:
            _match_episode(record, episodes, path)
            kept.append(record)
        except DataError as error:
            bad.handle(error)
    if len(bad.errors) == errors_before and len(records) != len(episodes):  # a skipped line explains a shortfall
        raise DataError(path, None, f"{len(records)} records for {len(episodes)} episodes")
    return kept


def write_revealed(path: str | Path, records: list[dict]) -> None:
    """Validate ``records`` as :func:`read_revealed` does, then write them as JSON lines, atomically."""
    write_validated_jsonl(path, records, _check_revealed)


def _check_revealed(record: Any, path: Path, where: str, images: ImageChecker) -> None:
    fields: dict[str, type] = {"episode": int, "your_persona": list, "partner_persona": list}
    require_fields(record, {**fields, **dict.fromkeys(REVEALED_LISTS, list)}, path, where)
    line = int(where.split()[-1])
    if record["episode"] != line - 1:
        raise DataError(path, where, f"episode {record['episode']} on line {line}: line N holds episode N-1")
    n_turns = len(record["revealed"])
    if n_turns == 0 or any(len(record[name]) != n_turns for name in REVEALED_LISTS):
        counts = ", ".join(f"{name} {len(record[name])}" for name in REVEALED_LISTS)
        raise DataError(path, where, f"per-turn lists should have one entry per turn (>= 1), got {counts}")
    sizes = {"revealed": len(record["your_persona"]), "partner_revealed": len(record["partner_persona"])}
    for name, size in sizes.items():
        for t, indices in enumerate(record[name]):
            if not isinstance(indices, list) or not all(_is_index(i, size) for i in indices):
                raise DataError(path, where, f"{name}[{t}] = {indices!r}: expected indices in 0..{size - 1}")
    for t, index in enumerate(record["follow_up"]):
        if index is not None and not _is_index(index, sizes["partner_revealed"]):
            raise DataError(path, where, f"follow_up[{t}] = {index!r}: expected null or a partner_persona index")


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _match_episode(record: dict, episodes: list[dict], path: Path) -> None:
    where = f"line {record['episode'] + 1}"
    if record["episode"] >= len(episodes):
        raise DataError(path, where, f"episode {record['episode']} but the dialogue file has {len(episodes)}")
    episode = episodes[record["episode"]]
    for name in ("your_persona", "partner_persona"):
        if episode[name] and record[name] != episode[name]:
            raise DataError(path, where, f"{name} differs from the dialogue file's episode")
    if len(record["revealed"]) != len(episode["turns"]):
        raise DataError(
            path, where, f"{len(record['revealed'])} turns annotated, the episode has {len(episode['turns'])}"
        )


def _read_revealed_with_dialogues(
    path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None
) -> list[dict]:
    """:func:`read_revealed`, matched against the ``{split}_both_original.txt`` beside it when that reads cleanly."""
    path = Path(path)
    dialogues = path.with_name(path.name.removesuffix("_revealed.jsonl") + "_both_original.txt")
    episodes = None
    if dialogues.is_file():
        own = BadRecords(skip_bad=True)  # the dialogue file's own errors are its own row in a check
        episodes = read_convai2(dialogues, own)
        episodes = None if own.errors else episodes
    return read_revealed(path, bad, episodes=episodes)


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

register(
    FormatSpec(
        name="convai2-json",
        description="PersonaChat as HF transfer-learning-conv-ai JSON (personachat_self_original.json)",
        patterns=("personachat_*.json",),
        read=_read_convai2_json_splits,
    )
)
register(
    FormatSpec(
        name="convai2-revealed",
        description="the world's per-turn persona reveals beside its ConvAI2 files ({split}_revealed.jsonl)",
        patterns=("*_revealed.jsonl",),
        read=_read_revealed_with_dialogues,
    )
)
