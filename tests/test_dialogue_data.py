"""Dialogue data for persona prediction (issue 18): the world's ConvAI2 variants, reveal side files,
DailyDialog and Dialogue NLI sets, and the readers of the real formats, checked on fixtures written
by hand in the official layouts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from grainvl.data.check import check_path
from grainvl.data.formats import convai2, dailydialog, dialogue_nli
from grainvl.data.formats.registry import FORMATS, sniff
from grainvl.data.world.daily_dialogue import build_daily_dialogues
from grainvl.data.world.dialogue import (
    FOLLOW_UPS,
    PERSONA_BANK,
    build_dialogue_nli,
    build_dialogues,
    contradicts,
    convai2_tokenize,
    revealed_records,
)
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.errors import BadRecords, DataError

FACTS = {fact.text: fact for fact in PERSONA_BANK}
HINTS = {fact.text: [convai2_tokenize(h) for h in fact.hints] for fact in PERSONA_BANK}


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def raises(reader, path: Path, record: str | None, reason: str) -> None:
    with pytest.raises(DataError) as error:
        reader(path)
    message = str(error.value)
    assert path.name in message and reason in message, message
    assert error.value.record == record, message


# --- the world's dialogue folder ------------------------------------------------------------------

SMALL = WorldConfig(images=2, videos=0, resolution=64, text_scenes=0, dialogues=20, daily_dialogues=10, nli_pairs=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dialogue_world")
    generate_world(SMALL, out)
    return out


def test_world_writes_every_dialogue_file_and_passes_data_check(world: Path) -> None:
    files = {p.relative_to(world).as_posix() for p in (world / "dialogue").rglob("*") if p.is_file()}
    convai = {f"dialogue/convai2/{s}_{v}_original.txt" for s in ("train", "valid", "test") for v in convai2.VARIANTS}
    revealed = {f"dialogue/convai2/{s}_revealed.jsonl" for s in ("train", "valid", "test")}
    daily = {
        f"dialogue/dailydialog/{s}/dialogues_{kind}{s}.txt"
        for s in ("train", "validation", "test")
        for kind in ("", "act_", "emotion_")
    }
    dnli = {f"dialogue/dnli/dialogue_nli_{s}.jsonl" for s in ("train", "dev", "test")}
    assert files == convai | revealed | daily | dnli
    report = check_path(world / "dialogue")
    assert report.ok and not report.unrecognised, [str(e) for e in report.errors]
    assert {row.format for row in report.rows} == {
        "convai2",
        "convai2-revealed",
        "dailydialog",
        "dailydialog-labels",
        "dialogue-nli",
    }
    counts = {
        s: len(convai2.read_convai2(world / f"dialogue/convai2/{s}_both_original.txt"))
        for s in ("train", "valid", "test")
    }
    assert counts == {"train": 16, "valid": 2, "test": 2}
    assert len(dialogue_nli.read_dialogue_nli(world / "dialogue/dnli/dialogue_nli_train.jsonl")) == 48


def test_world_dialogues_are_byte_identical_for_the_same_options(world: Path, tmp_path: Path) -> None:
    generate_world(SMALL, tmp_path)
    for file in sorted((world / "dialogue").rglob("*.*")):
        assert (tmp_path / file.relative_to(world)).read_bytes() == file.read_bytes(), file


def test_variants_hold_the_same_episodes_with_their_personas(world: Path) -> None:
    folder = world / "dialogue" / "convai2"
    both = convai2.read_convai2(folder / "valid_both_original.txt")
    for variant, kept in convai2.REQUIRED_PERSONAS.items():
        episodes = convai2.read_convai2(folder / f"valid_{variant}_original.txt")
        assert [e["turns"] for e in episodes] == [e["turns"] for e in both]
        for episode, full in zip(episodes, both):
            for name in ("your_persona", "partner_persona"):
                assert episode[name] == (full[name] if name in kept else [])
    text = (folder / "valid_self_original.txt").read_text()
    assert "your persona: " in text and "partner's persona: " not in text


def test_revealed_side_file_matches_the_episode_text(world: Path) -> None:
    """Each revealed fact's hint is in that turn's response (or partner utterance); follow-ups follow the partner."""
    folder = world / "dialogue" / "convai2"
    episodes = convai2.read_convai2(folder / "train_both_original.txt")
    records = convai2.read_revealed(folder / "train_revealed.jsonl", episodes=episodes)
    assert [r["episode"] for r in records] == list(range(len(episodes)))
    for record, episode in zip(records, episodes):
        for t, turn in enumerate(episode["turns"]):
            response, text = turn["labels"][0], turn["text"]
            for i in record["revealed"][t]:
                assert any(h.rstrip(" .") in response for h in HINTS[record["your_persona"][i]])
            for i in record["partner_revealed"][t]:
                assert any(h.rstrip(" .") in text for h in HINTS[record["partner_persona"][i]])
            if record["follow_up"][t] is not None:
                assert record["follow_up"][t] in record["partner_revealed"][t]
                topic = FACTS[record["partner_persona"][record["follow_up"][t]]].topic
                assert any(response.startswith(convai2_tokenize(p)) for p in FOLLOW_UPS[topic])


def test_follow_ups_come_at_about_half_of_partner_reveals_and_reveal_nothing() -> None:
    episodes = build_dialogues(300, random.Random(3))
    reveals = follow_ups = 0
    for record in revealed_records(episodes):
        reveals += sum(1 for indices in record["partner_revealed"] if indices)
        follow_ups += sum(1 for index in record["follow_up"] if index is not None)
    assert 0.4 < follow_ups / reveals < 0.6
    phrases = [convai2_tokenize(p) for ps in FOLLOW_UPS.values() for p in ps]
    for fact in PERSONA_BANK:
        plain = fact.text.rstrip(".")
        assert not any(plain in p or h.rstrip(" .") in p for p in phrases for h in HINTS[fact.text])


def test_thousands_of_episodes_build() -> None:
    episodes = build_dialogues(1500, random.Random(0))
    assert len(episodes) == 1500
    assert all(len(set(t["candidates"])) == 20 for e in episodes[:50] for t in e["turns"])


# --- ConvAI2 text: personas the variant promises, candidates --------------------------------------

TURN = "hi\thello\t\tbye|hello\n"


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("train_self_original.txt", "1 " + TURN, "no 'your persona:' lines"),
        ("train_both_original.txt", "1 your persona: i sing.\n2 " + TURN, "no 'partner's persona:' lines"),
        ("valid_other_original.txt", "1 your persona: i sing.\n2 " + TURN, "no 'partner's persona:' lines"),
    ],
)
def test_convai2_episode_without_the_variants_persona_is_an_error(tmp_path: Path, name: str, text: str, reason: str):
    path = write_text(tmp_path / name, "1 your persona: i sing.\n2 partner's persona: i run.\n3 " + TURN + text)
    raises(convai2.read_convai2, path, "line 4", reason)
    bad = BadRecords(skip_bad=True)
    assert len(convai2.read_convai2(path, bad)) == 1 and [e.record for e in bad.errors] == ["line 4"]


def test_convai2_none_file_and_unnamed_file_need_no_persona(tmp_path: Path) -> None:
    assert convai2.read_convai2(write_text(tmp_path / "test_none_original.txt", "1 " + TURN))[0]["your_persona"] == []
    assert len(convai2.read_convai2(write_text(tmp_path / "mine.txt", "1 " + TURN))) == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hi\thello\t\thello", "only 1 candidate"),
        ("hi\thello\t\t", "empty candidate list"),
        ("hi\thello\t\thello||bye", "empty candidate"),
        (" \thello\t\thello|bye", "empty utterance text"),
        ("hi\t\t\thello|bye", "empty response"),
    ],
)
def test_convai2_bad_turns_name_the_line(tmp_path: Path, line: str, reason: str) -> None:
    path = write_text(tmp_path / "train_self_original.txt", f"1 your persona: i sing.\n2 {line}\n")
    raises(convai2.read_convai2, path, "line 2", reason)


def test_convai2_writer_refuses_a_single_candidate(tmp_path: Path) -> None:
    episode = {
        "your_persona": ["p."],
        "partner_persona": [],
        "turns": [{"text": "a", "labels": ["b"], "candidates": ["b"]}],
    }
    with pytest.raises(ValueError, match="only 1 candidate"):
        convai2.write_convai2(tmp_path / "x_self_original.txt", [episode])


# --- HF transfer-learning-conv-ai JSON ------------------------------------------------------------

CANDS = ["i like dogs .", "hello there ."]
HF_JSON = {
    "train": [
        {
            "personality": ["i like to remodel homes .", "i like to go hunting ."],
            "utterances": [
                {"candidates": ["no .", "you must be very fast ."], "history": ["hi , i'm chasing cheetahs ."]},
                {
                    "candidates": ["ok .", "i also remodel homes ."],
                    "history": ["hi , i'm chasing cheetahs .", "you must be very fast .", "i am ! i like canning ."],
                },
            ],
        }
    ],
    "valid": [{"personality": ["i am a nurse ."], "utterances": [{"candidates": CANDS, "history": ["__ SILENCE __"]}]}],
}


def test_convai2_json_reads_hf_file_into_episodes_and_writes_it_back(tmp_path: Path) -> None:
    path = tmp_path / "personachat_self_original.json"
    path.write_text(json.dumps(HF_JSON, indent=2))
    (episode,) = convai2.read_convai2_json(path)
    assert episode["your_persona"] == ["i like to remodel homes .", "i like to go hunting ."]
    assert episode["partner_persona"] == []
    assert episode["turns"][1] == {
        "text": "i am ! i like canning .",
        "labels": ["i also remodel homes ."],
        "candidates": ["ok .", "i also remodel homes ."],
    }
    valid = convai2.read_convai2_json(path, split="valid")
    assert valid[0]["turns"][0]["text"] == "__ SILENCE __"
    out = tmp_path / "again" / "personachat_self_original.json"
    convai2.write_convai2_json(out, {"train": [episode], "valid": valid})
    assert json.loads(out.read_text()) == HF_JSON
    assert sniff(out).name == "convai2-json" and check_path(out).ok


def test_convai2_json_bad_dialogues(tmp_path: Path) -> None:
    path = tmp_path / "personachat_self_original.json"
    broken = json.loads(json.dumps(HF_JSON))
    broken["train"][0]["utterances"][1]["history"][1] = "something else ."
    broken["valid"][0]["utterances"][0]["candidates"] = ["only one ."]
    path.write_text(json.dumps(broken))
    raises(convai2.read_convai2_json, path, "train index 0, utterance 1", "does not repeat the previous")
    raises(lambda p: convai2.read_convai2_json(p, split="valid"), path, "valid index 0, utterance 0", "fewer than 2")
    raises(lambda p: convai2.read_convai2_json(p, split="test"), path, None, "no list for split 'test'")
    bad = BadRecords(skip_bad=True)
    assert convai2.read_convai2_json(path, bad) == [] and len(bad.errors) == 1


# --- reveal side file -----------------------------------------------------------------------------

RECORD = {"episode": 0, "your_persona": ["a.", "b."], "partner_persona": ["c."], "revealed": [[1], []]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"revealed": [[2], []]}, "revealed[0] = [2]: expected indices in 0..1"),
        ({"partner_revealed": [[0]]}, "one entry per turn"),
        ({"follow_up": [None, 1]}, "follow_up[1] = 1"),
        ({"episode": 3}, "line N holds episode N-1"),
        ({"revealed": [[True], []]}, "expected indices"),
    ],
)
def test_revealed_bad_records_name_the_line(tmp_path: Path, change: dict, reason: str) -> None:
    record = {**RECORD, "partner_revealed": [[], [0]], "follow_up": [None, 0], **change}
    path = write_text(tmp_path / "train_revealed.jsonl", json.dumps(record) + "\n")
    raises(convai2.read_revealed, path, "line 1", reason)


def test_revealed_must_match_its_episodes(tmp_path: Path) -> None:
    record = {**RECORD, "partner_revealed": [[], [0]], "follow_up": [None, 0]}
    path = tmp_path / "train_revealed.jsonl"
    convai2.write_revealed(path, [record])
    turn = {"text": "x", "labels": ["y"], "candidates": []}
    episode = {"your_persona": ["a.", "b."], "partner_persona": ["c."], "turns": [turn]}
    raises(lambda p: convai2.read_revealed(p, episodes=[episode]), path, "line 1", "2 turns annotated")
    episode["turns"] = [turn, turn]
    assert convai2.read_revealed(path, episodes=[episode]) == [record]
    raises(lambda p: convai2.read_revealed(p, episodes=[episode, episode]), path, None, "1 records for 2 episodes")


def test_data_check_matches_revealed_with_its_dialogue_file(world: Path, tmp_path: Path) -> None:
    folder = tmp_path / "convai2"
    folder.mkdir()
    for name in ("valid_both_original.txt", "valid_revealed.jsonl"):
        (folder / name).write_bytes((world / "dialogue" / "convai2" / name).read_bytes())
    lines = (folder / "valid_revealed.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[1])
    for name in ("revealed", "partner_revealed", "follow_up"):
        record[name] = record[name][:-1]
    lines[1] = json.dumps(record) + "\n"
    (folder / "valid_revealed.jsonl").write_text("".join(lines))
    errors = [str(e) for e in check_path(folder).errors]
    assert len(errors) == 1 and "valid_revealed.jsonl: line 2" in errors[0] and "turns annotated" in errors[0]


# --- DailyDialog ------------------------------------------------------------------------------------

# Official layout, hand-written: utterances each followed by " __eou__", label lines ending in a space.
DD_TEXT = (
    "Say , Jim , how about going for a few beers after dinner ? __eou__ "
    "You know that is tempting but is really not good for our fitness . __eou__\n"
    "Can you do push-ups ? __eou__ Of course I can . It's a piece of cake ! __eou__ Really ? __eou__\n"
)
DD_ACTS = "3 4 \n2 1 2 \n"
DD_EMOTIONS = "0 0 \n0 4 6 \n"


def dailydialog_folder(root: Path, acts: str = DD_ACTS, emotions: str = DD_EMOTIONS, text: str = DD_TEXT) -> Path:
    path = write_text(root / "train" / "dialogues_train.txt", text)
    write_text(root / "train" / "dialogues_act_train.txt", acts)
    write_text(root / "train" / "dialogues_emotion_train.txt", emotions)
    return path


def test_dailydialog_reads_official_files_and_rewrites_them_byte_identically(tmp_path: Path) -> None:
    path = dailydialog_folder(tmp_path / "official")
    dialogues = dailydialog.read_dailydialog(path)
    assert dialogues[0] == {
        "turns": [
            "Say , Jim , how about going for a few beers after dinner ?",
            "You know that is tempting but is really not good for our fitness .",
        ],
        "acts": [3, 4],
        "emotions": [0, 0],
    }
    assert dialogues[1]["emotions"] == [0, 4, 6]
    out = tmp_path / "again" / "train" / "dialogues_train.txt"
    dailydialog.write_dailydialog(out, dialogues)
    for name in ("dialogues_train.txt", "dialogues_act_train.txt", "dialogues_emotion_train.txt"):
        assert (out.parent / name).read_bytes() == (path.parent / name).read_bytes(), name


def test_dailydialog_world_files_load_as_the_hf_loader_splits_them(world: Path) -> None:
    folder = world / "dialogue" / "dailydialog" / "validation"
    text = (folder / "dialogues_validation.txt").read_text().splitlines(keepends=True)
    acts = (folder / "dialogues_act_validation.txt").read_text().splitlines(keepends=True)
    ours = dailydialog.read_dailydialog(folder / "dialogues_validation.txt")
    for line, act_line, dialogue in zip(text, acts, ours):
        # the HF script: line.split("__eou__")[:-1] and act_line.split(" ")[:-1], without stripping
        assert [u.strip() for u in line.split("__eou__")[:-1]] == dialogue["turns"]
        assert [int(a) for a in act_line.split(" ")[:-1]] == dialogue["acts"]


def test_dailydialog_without_label_files_has_none(tmp_path: Path) -> None:
    path = write_text(tmp_path / "dialogues_text.txt", DD_TEXT)
    assert [d["acts"] for d in dailydialog.read_dailydialog(path)] == [None, None]
    assert dailydialog.label_file(path, "act").name == "dialogues_act.txt"


@pytest.mark.parametrize(
    ("files", "bad_file", "record", "reason"),
    [
        ({"acts": "3 4 \n2 1 \n"}, "dialogues_act_train.txt", "line 2", "2 act labels for the 3 utterances"),
        ({"emotions": "0 0 \n"}, "dialogues_emotion_train.txt", None, "1 lines, but dialogues_train.txt has 2"),
        ({"acts": "3 5 \n2 1 2 \n"}, "dialogues_act_train.txt", "line 1", "act codes 1-4"),
        ({"text": "Hi . __eou__ Hello .\n"}, "dialogues_train.txt", "line 1", "text after the last __eou__"),
        ({"text": "Hi . __eou__  __eou__\n"}, "dialogues_train.txt", "line 1", "empty utterance 2"),
    ],
)
def test_dailydialog_bad_input_names_file_and_line(tmp_path: Path, files: dict, bad_file: str, record, reason) -> None:
    path = dailydialog_folder(tmp_path, **files)
    with pytest.raises(DataError) as error:
        dailydialog.read_dailydialog(path)
    assert error.value.path.endswith(bad_file) and error.value.record == record and reason in str(error.value)


def test_dailydialog_skip_bad_drops_only_the_bad_dialogue(tmp_path: Path) -> None:
    bad = BadRecords(skip_bad=True)
    dialogues = dailydialog.read_dailydialog(dailydialog_folder(tmp_path, acts="3 4 \n2 1 \n"), bad)
    assert [len(d["turns"]) for d in dialogues] == [2] and len(bad.errors) == 1


def test_dailydialog_writer_refuses_what_the_reader_would_reject(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="__eou__"):
        dailydialog.write_dailydialog(tmp_path / "dialogues_test.txt", [{"turns": ["a __eou__ b"]}])
    with pytest.raises(ValueError, match="not all"):
        dailydialog.write_dailydialog(
            tmp_path / "dialogues_test.txt", [{"turns": ["a"], "acts": [1]}, {"turns": ["b"]}]
        )
    with pytest.raises(ValueError, match="one emotion code per utterance"):
        dailydialog.write_dailydialog(tmp_path / "dialogues_test.txt", [{"turns": ["a"], "emotions": [7]}])


def test_world_daily_dialogues_are_persona_free_in_style_and_deterministic() -> None:
    dialogues = build_daily_dialogues(200, random.Random(1))
    assert dialogues == build_daily_dialogues(200, random.Random(1))
    assert all(4 <= len(d["turns"]) <= 7 and len(d["acts"]) == len(d["turns"]) for d in dialogues)
    assert all(turn[0].isupper() and " i " not in f" {turn} " for d in dialogues for turn in d["turns"])
    mentions = sum(any(t.startswith("By the way") for t in d["turns"]) for d in dialogues)
    assert 60 < mentions < 140  # about half carry one persona-bank hint


# --- Dialogue NLI -----------------------------------------------------------------------------------

# The official record layout (key order as released), hand-written.
DNLI = [
    {
        "label": "positive",
        "sentence1": "i am only 22 so i would not know .",
        "sentence2": "i am twenty two years old .",
        "triple1": ["i", "has_age", "22"],
        "triple2": ["i", "has_age", "22"],
        "dtype": "matchingtriple_up",
        "id": "dialogue_nli_train_83252",
    },
    {
        "label": "neutral",
        "sentence1": "definitely ! ribeye is my favorite .",
        "sentence2": "i used to be enlisted in the army .",
        "triple1": ["<none>", "<none>", "<none>"],
        "triple2": ["i", "previous_profession", "army"],
        "dtype": "miscutterance_up",
        "id": "dialogue_nli_train_166990",
    },
    {
        "label": "negative",
        "sentence1": "my father is a mechanic .",
        "sentence2": "my dad is a priest .",
        "triple1": ["my father", "has_profession", "mechanic"],
        "triple2": ["my father", "has_profession", "priest"],
        "dtype": "e2swap_up",
        "id": "dialogue_nli_train_298308",
    },
]


def test_dialogue_nli_reads_the_official_list_and_writes_it_back(tmp_path: Path) -> None:
    path = write_text(tmp_path / "dialogue_nli_train.jsonl", json.dumps(DNLI))  # one JSON list, one line
    pairs = dialogue_nli.read_dialogue_nli(path)
    assert [p["label"] for p in pairs] == ["entail", "neutral", "contradict"]
    assert pairs[0]["utterance"] == DNLI[0]["sentence1"] and pairs[0]["persona"] == DNLI[0]["sentence2"]
    out = tmp_path / "out" / "dialogue_nli_dev.jsonl"
    dialogue_nli.write_dialogue_nli(out, pairs)
    assert json.loads(out.read_text()) == DNLI and len(out.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"label": "entailment"}, "label 'entailment' should be one of positive, neutral, negative"),
        ({"sentence1": "  "}, "empty sentence1"),
        ({"triple2": ["i", "has_age"]}, "triple2 should be [subject, relation, object]"),
    ],
)
def test_dialogue_nli_bad_records_name_the_index(tmp_path: Path, change: dict, reason: str) -> None:
    path = write_text(tmp_path / "dialogue_nli_test.jsonl", json.dumps([DNLI[0], {**DNLI[1], **change}]))
    raises(dialogue_nli.read_dialogue_nli, path, "index 1", reason)
    bad = BadRecords(skip_bad=True)
    assert len(dialogue_nli.read_dialogue_nli(path, bad)) == 1 and len(bad.errors) == 1


def test_world_nli_labels_follow_the_persona_bank() -> None:
    pairs = build_dialogue_nli(900, random.Random(2))
    assert pairs == build_dialogue_nli(900, random.Random(2))
    assert len({(p["utterance"], p["persona"]) for p in pairs}) == 900
    assert all(sum(p["label"] == label for p in pairs) == 300 for label in ("entail", "neutral", "contradict"))
    by_sentence = {convai2_tokenize(f.text): f for f in PERSONA_BANK}
    for pair in pairs:
        persona = by_sentence[pair["persona"]]
        hinted = [f for f in PERSONA_BANK if any(h in pair["utterance"] for h in HINTS[f.text])]
        assert len(hinted) <= 1
        if pair["label"] == "entail":
            assert hinted == [persona]
        elif pair["label"] == "contradict":
            assert len(hinted) == 1 and contradicts(hinted[0], persona)
        else:
            assert not hinted or (hinted[0].topic != persona.topic and not contradicts(hinted[0], persona))


def test_dialogue_formats_register_their_official_names_unambiguously() -> None:
    names = {
        "train_self_original.txt": "convai2",
        "personachat_self_original.json": "convai2-json",
        "valid_revealed.jsonl": "convai2-revealed",
        "dialogues_text.txt": "dailydialog",
        "dialogues_validation.txt": "dailydialog",
        "dialogues_act_train.txt": "dailydialog-labels",
        "dialogues_emotion.txt": "dailydialog-labels",
        "dialogue_nli_verified_test.jsonl": "dialogue-nli",
    }
    matches = {name: [s.name for s in FORMATS.values() if s.matches(Path(name))] for name in names}
    assert matches == {name: [expected] for name, expected in names.items()}  # exactly one format each
