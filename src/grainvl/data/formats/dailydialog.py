"""DailyDialog (Li et al. 2017) in its official text layout (``ijcnlp_dailydialog``).

The official zip ships ``dialogues_text.txt`` (all dialogues) and, per split, ``train/``,
``validation/`` and ``test/`` folders holding ``dialogues_{split}.txt``,
``dialogues_act_{split}.txt`` and ``dialogues_emotion_{split}.txt``. Line N of each file is
dialogue N:

- text: every utterance followed by `` __eou__``, joined by spaces, e.g.
  ``Can you do push-ups ? __eou__ Of course I can . __eou__`` (nothing after the last ``__eou__``);
- act and emotion: one integer per utterance, each followed by a space (``2 1 \\n``), as the
  Hugging Face loader's ``line.split(" ")[:-1]`` expects. Acts: 1 inform, 2 question,
  3 directive, 4 commissive. Emotions: 0 none, 1 anger, 2 disgust, 3 fear, 4 happiness,
  5 sadness, 6 surprise.

A dialogue is ``{"turns": [str], "acts": [int] | None, "emotions": [int] | None}``, utterances
stripped of the spaces around ``__eou__``; ``acts`` / ``emotions`` are None when the sibling file is
absent.
"""

from __future__ import annotations

from pathlib import Path

from grainvl.data.formats.registry import FormatSpec, register
from grainvl.errors import BadRecords, DataError
from grainvl.utils.fileio import atomic_write_text, iter_text_lines

EOU = "__eou__"
LABEL_RANGES = {"act": range(1, 5), "emotion": range(7)}  # the official codes (the dataset's readme)
LABEL_FIELDS = {"act": "acts", "emotion": "emotions"}


def label_file(text_path: str | Path, kind: str) -> Path:
    """The act or emotion file beside a text file: ``dialogues_train.txt`` -> ``dialogues_act_train.txt``.

    The full-set ``dialogues_text.txt`` pairs with ``dialogues_act.txt``.
    """
    text_path = Path(text_path)
    stem = text_path.name.removeprefix("dialogues_").removesuffix(".txt")
    return text_path.with_name(f"dialogues_{kind}.txt" if stem == "text" else f"dialogues_{kind}_{stem}.txt")


def read_dailydialog(path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None) -> list[dict]:
    """Read a DailyDialog text file and, when present, its act and emotion files.

    Errors name the file and 1-based line: an empty utterance, text after the last ``__eou__``, a
    label file with another number of lines or of labels on a line, a label out of range. With
    ``bad.skip_bad`` a bad dialogue is left out (a label file of the wrong length is dropped whole).
    ``image_root`` is ignored.
    """
    path = Path(path)
    bad = bad or BadRecords()
    numbered: list[tuple[int, list[str] | None]] = []
    for lineno, line in iter_text_lines(path, bad):
        try:
            numbered.append((lineno, _split_utterances(line, path, lineno)))
        except DataError as error:
            bad.handle(error)
            numbered.append((lineno, None))
    labels = {kind: _labels_for(path, kind, len(numbered), bad) for kind in LABEL_RANGES}
    dialogues = []
    for lineno, turns in numbered:
        if turns is not None and _labels_fit(path, lineno, turns, labels, bad):
            dialogue: dict = {"turns": turns}
            for kind, field in LABEL_FIELDS.items():
                dialogue[field] = labels[kind][lineno] if labels[kind] is not None else None
            dialogues.append(dialogue)
    return dialogues


def _split_utterances(line: str, path: Path, lineno: int) -> list[str]:
    pieces = line.split(EOU)
    if pieces[-1].strip():
        raise DataError(path, f"line {lineno}", f"text after the last {EOU} (every utterance ends with ' {EOU}')")
    turns = [piece.strip() for piece in pieces[:-1]]
    if not turns:
        raise DataError(path, f"line {lineno}", f"no utterances (expected 'utterance {EOU} utterance {EOU}')")
    for k, turn in enumerate(turns):
        if not turn:
            raise DataError(path, f"line {lineno}", f"empty utterance {k + 1}")
    return turns


def _labels_for(path: Path, kind: str, n_lines: int, bad: BadRecords) -> dict[int, list[int]] | None:
    """``{line: labels}`` from the ``kind`` file beside ``path``; None when it is absent or has the wrong length."""
    sibling = label_file(path, kind)
    if not sibling.is_file():
        return None
    labels, total = _read_label_lines(sibling, kind, bad)
    if total != n_lines:
        bad.handle(DataError(sibling, None, f"{total} lines, but {path.name} has {n_lines} dialogues"))
        return None
    return labels


def _labels_fit(path: Path, lineno: int, turns: list[str], labels: dict, bad: BadRecords) -> bool:
    for kind, by_line in labels.items():
        if by_line is None:
            continue
        if lineno not in by_line:  # its own line was bad (already recorded)
            return False
        if len(by_line[lineno]) != len(turns):
            reason = f"{len(by_line[lineno])} {kind} labels for the {len(turns)} utterances of {path.name}"
            bad.handle(DataError(label_file(path, kind), f"line {lineno}", reason))
            return False
    return True


def read_dailydialog_labels(
    path: str | Path, bad: BadRecords | None = None, image_root: Path | None = None
) -> list[list[int]]:
    """Read a ``dialogues_act*.txt`` or ``dialogues_emotion*.txt`` file on its own: one list of codes per line."""
    path = Path(path)
    kind = "emotion" if path.name.startswith("dialogues_emotion") else "act"
    labels, _ = _read_label_lines(path, kind, bad or BadRecords())
    return list(labels.values())


def _read_label_lines(path: Path, kind: str, bad: BadRecords) -> tuple[dict[int, list[int]], int]:
    """``({line: codes}, number of lines)``; bad lines are handed to ``bad`` and left out."""
    allowed = LABEL_RANGES[kind]
    labels: dict[int, list[int]] = {}
    total = 0
    for lineno, line in iter_text_lines(path, bad):
        total = lineno
        tokens = line.split()
        if not tokens or not all(t.isascii() and t.isdigit() and int(t) in allowed for t in tokens):
            reason = f"expected space-separated {kind} codes {allowed.start}-{allowed.stop - 1}, got {line[:60]!r}"
            bad.handle(DataError(path, f"line {lineno}", reason))
            continue
        labels[lineno] = [int(t) for t in tokens]
    return labels, total


def write_dailydialog(path: str | Path, dialogues: list[dict]) -> None:
    """Write the text file and, when the dialogues carry them, the act and emotion files beside it, atomically.

    ``acts`` / ``emotions`` must be given for all dialogues or for none. Anything the reader would
    reject (an empty utterance, ``__eou__`` or a line break inside one, a label count or code that
    does not fit) is a ValueError naming the dialogue.
    """
    path = Path(path)
    for d, dialogue in enumerate(dialogues):
        _check_dialogue(dialogue, f"dialogue {d}")
    text = "".join(" ".join(f"{turn} {EOU}" for turn in dialogue["turns"]) + "\n" for dialogue in dialogues)
    for kind, field in LABEL_FIELDS.items():
        given = [dialogue.get(field) is not None for dialogue in dialogues]
        if any(given) and not all(given):
            raise ValueError(f"{field} given for some dialogues but not all: the {kind} file needs every line")
        if dialogues and all(given):
            codes = "".join("".join(f"{code} " for code in dialogue[field]) + "\n" for dialogue in dialogues)
            atomic_write_text(label_file(path, kind), codes)
    atomic_write_text(path, text)


def _check_dialogue(dialogue: dict, where: str) -> None:
    turns = dialogue["turns"]
    if not turns:
        raise ValueError(f"{where}: no utterances")
    for k, turn in enumerate(turns):
        if not isinstance(turn, str) or not turn.strip() or EOU in turn or any(ch in turn for ch in "\n\r"):
            raise ValueError(f"{where}, utterance {k}: {turn!r} is empty or holds {EOU} or a line break")
    for kind, field in LABEL_FIELDS.items():
        codes = dialogue.get(field)
        if codes is None:
            continue
        if len(codes) != len(turns) or not all(type(c) is int and c in LABEL_RANGES[kind] for c in codes):
            raise ValueError(f"{where}: {field} {codes!r} should be one {kind} code per utterance ({len(turns)})")


register(
    FormatSpec(
        name="dailydialog",
        description="DailyDialog text (utterances ending in __eou__), with its act and emotion files",
        patterns=("dialogues_text.txt", "dialogues_train.txt", "dialogues_validation.txt", "dialogues_test.txt"),
        read=read_dailydialog,
    )
)
register(
    FormatSpec(
        name="dailydialog-labels",
        description="DailyDialog dialogue act or emotion codes, one line per dialogue",
        patterns=("dialogues_act*.txt", "dialogues_emotion*.txt"),
        read=read_dailydialog_labels,
    )
)
