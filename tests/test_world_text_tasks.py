"""The world's text-only task suite (GLUE-style classification, SQuAD v1.1 QA) and its ConvAI2 dialogues.

Labels are checked against an independent oracle: the test re-reads the scene from the generated
English (object sentences have a fixed shape) rather than trusting the generator's bookkeeping.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from grainvl.data.formats.convai2 import read_convai2, write_convai2
from grainvl.data.formats.glue import read_tsv, write_tsv
from grainvl.data.formats.squad import read_squad, write_squad
from grainvl.data.world import ontology
from grainvl.data.world.dialogue import (
    CLASHING_FACTS,
    PERSONA_BANK,
    PERSONA_TOPICS,
    build_dialogues,
    convai2_tokenize,
)
from grainvl.data.world.scene import Scene, WorldObject, compute_relations
from grainvl.data.world.text_tasks import (
    COOL_COLORS,
    SKILLS,
    TASK_SKILLS,
    WARM_COLORS,
    build_text_suite,
    plural_shape,
    skill_overlap,
)

# --------------------------------------------------------------------------------------------------
# Scenes: a tiny local sampler (independent of sampler.py) and hand-built scenes with known answers.


def _random_scene(rng: random.Random, image_id: int) -> Scene:
    objects = [
        WorldObject(
            shape=rng.choice(ontology.SHAPES),
            color=rng.choice(list(ontology.COLORS)),
            size=rng.choice(list(ontology.SIZES)),
            texture=rng.choice(ontology.TEXTURES),
            box=(rng.randrange(200), rng.randrange(200), 40, 40),
        )
        for _ in range(rng.randint(1, 4))
    ]
    return Scene(
        image_id, "train", 256, 256, rng.choice(ontology.BACKGROUNDS), objects, image_id, compute_relations(objects)
    )


def _random_scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [_random_scene(rng, i + 1) for i in range(n)]


@pytest.fixture(scope="module")
def suite():
    return build_text_suite(_random_scenes(80), random.Random(7), n_train=60, n_dev=30)


CIRCLE = WorldObject("circle", "red", "large", "solid", (10, 100, 60, 60))  # left of the square
SQUARE = WorldObject("square", "blue", "small", "striped", (200, 110, 30, 30))
TRIANGLE = WorldObject("triangle", "green", "medium", "dotted", (100, 100, 50, 50))


def _known_scenes() -> list[Scene]:
    """Three copies each of a two-object scene (even, has a large warm object) and a one-object one."""
    scenes = []
    for k in range(3):
        pair = [CIRCLE, SQUARE]
        scenes.append(Scene(2 * k + 1, "train", 256, 256, "plain", pair, k, compute_relations(pair)))
        scenes.append(Scene(2 * k + 2, "train", 256, 256, "grid", [TRIANGLE], k, []))
    return scenes


# --------------------------------------------------------------------------------------------------
# Oracle: objects and relations read back from the text.

_PHRASE = r"(small|medium|large) (\w+) (solid|striped|dotted|checkered) (\w+)"
_OBJECT_SENTENCE = re.compile(
    rf"^(?:There is an? |I can see an? |An? |The picture contains an? ){_PHRASE}(?: is in the picture)?\.$"
)
_RELATION_SENTENCE = re.compile(r"^The (.+?) (?:is|sits|can be found) (left of|right of|above|below) the (.+)\.$")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) ", text)


def _objects(text: str) -> list[tuple[str, str, str, str]]:
    """(size, color, texture, shape) for every object sentence of a description."""
    return [m.groups() for s in _sentences(text) if (m := _OBJECT_SENTENCE.match(s))]  # type: ignore[misc]


def _resolve(reference: str, objects: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Objects carrying every word of a referring phrase ("object" is the shape-free head noun)."""
    words = [w for w in reference.split() if w != "object"]
    return [o for o in objects if all(w in o for w in words)]


def _stated_relations(text: str) -> dict[tuple[str, str], str]:
    stated = {}
    for sentence in _sentences(text):
        if m := _RELATION_SENTENCE.match(sentence):
            a, relation, b = m.groups()
            stated[(a, b)], stated[(b, a)] = relation, _OPPOSITE[relation]
    return stated


def _rows(task) -> list[dict[str, str]]:
    return task.train_rows + task.dev_rows


def _qas(task):
    for split in (task.train, task.dev):
        for article in split["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    yield paragraph["context"], qa


# --------------------------------------------------------------------------------------------------
# Suite shape, format and balance.


def test_suite_has_eleven_tasks_of_each_kind_with_known_skills(suite):
    kinds = Counter(task.kind for task in suite.values())
    assert kinds["classification"] >= 11 and kinds["qa"] >= 11
    assert set(suite) == set(TASK_SKILLS)
    for name, task in suite.items():
        assert name == name.lower() and re.fullmatch(r"[a-z_]+", name)
        assert task.skills == TASK_SKILLS[name] and set(task.skills) <= set(SKILLS)


def test_classification_rows_are_tsv_ready_and_balanced(suite):
    for task in (t for t in suite.values() if t.kind == "classification"):
        assert task.columns in (["sentence", "label"], ["sentence1", "sentence2", "label"])
        for rows, n in ((task.train_rows, 60), (task.dev_rows, 30)):
            assert len(rows) == n
            for row in rows:
                assert list(row) == task.columns
                assert all(value and not re.search(r"[\t\r\n]", value) for value in row.values())
            counts = Counter(row["label"] for row in rows)
            assert set(counts) == set(task.label_names) and task.num_labels == len(task.label_names)
            expected = n / task.num_labels
            assert all(abs(c - expected) <= 0.1 * expected for c in counts.values()), (task.name, counts)


def test_qa_answers_are_exact_spans_and_ids_unique(suite):
    for task in (t for t in suite.values() if t.kind == "qa"):
        assert task.train["version"] == task.dev["version"] == "1.1"
        ids = []
        for context, qa in _qas(task):
            ids.append(qa["id"])
            assert qa["question"].endswith("?")
            for answer in qa["answers"]:
                start = answer["answer_start"]
                assert answer["text"] and context[start : start + len(answer["text"])] == answer["text"]
        assert len(ids) == 90 and len(set(ids)) == 90, task.name


def test_train_and_dev_describe_disjoint_scenes(suite):
    task = suite["color_squad"]
    titles = {split: {a["title"] for a in getattr(task, split)["data"]} for split in ("train", "dev")}
    assert titles["train"] and titles["dev"] and not titles["train"] & titles["dev"]


def test_suite_is_deterministic_and_seed_dependent():
    scenes = _random_scenes(30, seed=3)
    first = build_text_suite(scenes, random.Random(1), n_train=20, n_dev=10)
    assert first == build_text_suite(scenes, random.Random(1), n_train=20, n_dev=10)
    other = build_text_suite(scenes, random.Random(2), n_train=20, n_dev=10)
    assert first["color_nli"].train_rows != other["color_nli"].train_rows


def test_too_simple_scenes_give_a_clear_error():
    lonely = [Scene(i, "train", 256, 256, "plain", [CIRCLE], i, []) for i in range(4)]
    with pytest.raises(ValueError, match="text task"):
        build_text_suite(lonely, random.Random(0), n_train=4, n_dev=2)
    with pytest.raises(ValueError, match="scenes"):
        build_text_suite(lonely[:1], random.Random(0), n_train=4, n_dev=2)


def test_suite_round_trips_through_the_glue_and_squad_formats(suite, tmp_path):
    write_tsv(tmp_path / "train.tsv", suite["count_nli"].columns, suite["count_nli"].train_rows)
    assert read_tsv(tmp_path / "train.tsv")["rows"] == suite["count_nli"].train_rows
    write_squad(tmp_path / "dev-v1.1.json", suite["where_squad"].dev)
    assert read_squad(tmp_path / "dev-v1.1.json") == suite["where_squad"].dev


# --------------------------------------------------------------------------------------------------
# Labels and answers are right (oracle over random scenes; exact checks on hand-built scenes).


def test_single_sentence_labels_follow_the_described_objects(suite):
    for row in _rows(suite["color_sst"]):
        ((_, color, _, _),) = _objects(row["sentence"])
        assert color in (WARM_COLORS if row["label"] == "1" else COOL_COLORS)
    for row in _rows(suite["texture_sst"]):
        ((_, _, texture, _),) = _objects(row["sentence"])
        assert (texture != "solid") == (row["label"] == "1")
    for row in _rows(suite["size_sst"]):
        assert any(o[0] == "large" for o in _objects(row["sentence"])) == (row["label"] == "1")
    for row in _rows(suite["count_parity"]):
        objects = _objects(row["sentence"])
        assert objects and (len(objects) % 2 == 0) == (row["label"] == "1")
        assert not any(word in row["sentence"].split() for word in ("one", "two", "three", "four"))


@pytest.mark.parametrize(("task_name", "attribute"), [("color_nli", 1), ("texture_rte", 2), ("size_mnli", 0)])
def test_attribute_claims_are_labelled_by_the_premise(suite, task_name, attribute):
    for row in _rows(suite[task_name]):
        reference, value = re.fullmatch(r"The (.+) is (\w+)\.", row["sentence2"]).groups()  # type: ignore[union-attr]
        matches = _resolve(reference, _objects(row["sentence1"]))
        if row["label"] == "neutral":
            assert not matches
            continue
        assert len(matches) == 1, (reference, row["sentence1"])  # references are unique
        assert (matches[0][attribute] == value) == (row["label"] == "entailment")


def test_count_claims_are_labelled_by_the_premise(suite):
    for row in _rows(suite["count_nli"]):
        objects = _objects(row["sentence1"])
        words = row["sentence2"].rstrip(".").split()
        n = ["zero", "one", "two", "three", "four", "five", "six"].index(words[2])
        if words[-2:] == ["in", "total"]:
            truth = len(objects)
        elif words[-1] in ("object", "objects"):
            truth = sum(o[1] == words[3] for o in objects)
        else:
            truth = sum(words[3] in (o[3], plural_shape(o[3])) for o in objects)
        assert (n == truth) == (row["label"] == "entailment"), row


def test_relation_and_paraphrase_labels(suite):
    for row in _rows(suite["relation_nli"]):
        a, relation, b = _RELATION_SENTENCE.match(row["sentence2"]).groups()  # type: ignore[union-attr]
        assert (_stated_relations(row["sentence1"])[(a, b)] == relation) == (row["label"] == "entailment")
    for row in _rows(suite["relation_qqp"]):
        a, r, b = _RELATION_SENTENCE.match(row["sentence1"]).groups()  # type: ignore[union-attr]
        a2, r2, b2 = _RELATION_SENTENCE.match(row["sentence2"]).groups()  # type: ignore[union-attr]
        same = (a2, r2, b2) == (a, r, b) or (b2, _OPPOSITE[r2], a2) == (a, r, b)
        assert same == (row["label"] == "1")
    for row in _rows(suite["scene_mrpc"]):
        same = Counter(_objects(row["sentence1"])) == Counter(_objects(row["sentence2"]))
        assert same == (row["label"] == "1")
    for row in _rows(suite["color_qnli"]):
        ((obj),) = _objects(row["sentence2"])
        reference = re.fullmatch(r"What color is the (.+)\?", row["sentence1"]).group(1)  # type: ignore[union-attr]
        assert bool(_resolve(reference, [obj])) == (row["label"] == "entailment")


def test_shuffled_sentences_are_unacceptable_and_distinct(suite):
    rows = _rows(suite["scene_cola"])
    good = {r["sentence"] for r in rows if r["label"] == "1"}
    for row in (r for r in rows if r["label"] == "0"):
        assert row["sentence"] not in good and row["sentence"].endswith(".")
        assert not _OBJECT_SENTENCE.match(row["sentence"]) and not _RELATION_SENTENCE.match(row["sentence"])


def test_attribute_and_count_answers_are_correct(suite):
    position = {"color": 1, "size": 0, "texture": 2}
    question = re.compile(
        r"(?:What color is|Which color does|What size is|How big is|What pattern does|"
        r"What is the texture of) the (.+?)(?: have)?\?"
    )
    for name, attribute in (("color_squad", "color"), ("size_squad", "size"), ("texture_squad", "texture")):
        for context, qa in _qas(suite[name]):
            reference = question.fullmatch(qa["question"]).group(1)  # type: ignore[union-attr]
            (obj,) = _resolve(reference, _objects(context))
            assert qa["answers"][0]["text"] == obj[position[attribute]]
    number_words = ["zero", "one", "two", "three", "four"]
    for context, qa in _qas(suite["count_squad"]):
        assert qa["answers"][0]["text"] == number_words[len(_objects(context))]
    for context, qa in _qas(suite["colorcount_squad"]):
        color = qa["question"].split()[2]
        assert qa["answers"][0]["text"] == number_words[sum(o[1] == color for o in _objects(context))]


def test_known_scenes_get_the_right_labels_and_answers():
    suite = build_text_suite(_known_scenes(), random.Random(0), n_train=24, n_dev=0)
    true_color = {"circle": "red", "square": "blue", "triangle": "green"}
    for row in suite["color_nli"].train_rows:
        shape, color = re.fullmatch(r"The (\w+) is (\w+)\.", row["sentence2"]).groups()  # type: ignore[union-attr]
        assert (true_color[shape] == color) == (row["label"] == "entailment")
    truths = {"The circle is left of the square.", "The square is right of the circle."}
    for row in suite["relation_nli"].train_rows:
        assert (row["sentence2"] in truths) == (row["label"] == "entailment")
    for row in suite["count_parity"].train_rows + suite["size_sst"].train_rows:
        assert ("circle" in row["sentence"]) == (row["label"] == "1")  # the pair scene: even, has a large object
    for _, qa in _qas(suite["where_squad"]):
        expected = {"circle": "left of", "square": "right of"}[qa["question"].split()[3]]
        assert qa["answers"][0]["text"] == expected
    for _, qa in _qas(suite["relation_squad"]):
        expected = {"What shape is left of the square?": "circle", "What shape is right of the circle?": "square"}
        assert qa["answers"][0]["text"] == expected[qa["question"]]
    assert {a["title"] for a in suite["background_squad"].train["data"]} <= {f"scene_{i:08d}" for i in range(1, 7)}


def test_skill_overlap_is_graded():
    names = list(TASK_SKILLS)
    overlaps = [skill_overlap(a, b) for a in names for b in names if a < b]
    assert any(x == 0 for x in overlaps) and any(0 < x < 0.5 for x in overlaps) and any(x >= 0.5 for x in overlaps)
    assert skill_overlap("color_nli", "color_nli") == 1.0
    assert skill_overlap("color_sst", "scene_cola") == 0.0
    assert 0 < skill_overlap("count_nli", "relation_nli") < skill_overlap("color_sst", "color_nli") < 1
    assert skill_overlap("color_squad", "color_qnli") == skill_overlap("color_qnli", "color_squad")
    with pytest.raises(ValueError, match="unknown text task"):
        skill_overlap("color_nli", "sst2")


# --------------------------------------------------------------------------------------------------
# Dialogues.


@pytest.fixture(scope="module")
def episodes():
    return build_dialogues(40, random.Random(5))


def test_persona_bank_is_large_and_varied():
    assert len(PERSONA_BANK) >= 60 and len(PERSONA_TOPICS) >= 8
    assert len({f.text for f in PERSONA_BANK}) == len(PERSONA_BANK)
    assert all(len(f.hints) >= 3 and f.text.endswith(".") for f in PERSONA_BANK)
    assert all(Counter(f.topic for f in PERSONA_BANK)[t] >= 6 for t in PERSONA_TOPICS)


def test_episodes_have_convai2_shape(episodes):
    for episode in episodes:
        assert 3 <= len(episode["your_persona"]) <= 5 and 3 <= len(episode["partner_persona"]) <= 5
        assert 4 <= len(episode["turns"]) <= 8
        for turn in episode["turns"]:
            (response,) = turn["labels"]
            candidates = turn["candidates"]
            assert len(candidates) == 20 and candidates[-1] == response and len(set(candidates)) == 20
            assert all("|" not in c and "\t" not in c for c in candidates)
            assert turn["text"] == convai2_tokenize(turn["text"])  # lower case, punctuation split off


def test_no_persona_sentence_appears_verbatim(episodes):
    texts = [t for e in episodes for turn in e["turns"] for t in (turn["text"], *turn["candidates"])]
    for fact in PERSONA_BANK:
        plain, tokenized = fact.text.rstrip("."), convai2_tokenize(fact.text).rstrip(" .")
        assert not any(plain in text or tokenized in text for text in texts), fact.text


def test_revealed_annotations_are_ground_truth(episodes):
    hints = {f.text: [convai2_tokenize(h).rstrip(" .") for h in f.hints] for f in PERSONA_BANK}
    for episode in episodes:
        speakers = (("revealed", "your_persona", "labels"), ("partner_revealed", "partner_persona", "text"))
        for key, persona, field in speakers:
            per_turn = episode["annotations"][key]
            assert len(per_turn) == len(episode["turns"])
            flat = [i for indices in per_turn for i in indices]
            assert len(flat) == len(set(flat)) and all(0 <= i < len(episode[persona]) for i in flat)
            for turn, indices in zip(episode["turns"], per_turn):
                said = turn[field][0] if field == "labels" else turn[field]
                shown = {i for i, fact in enumerate(episode[persona]) if any(h in said for h in hints[fact])}
                assert shown == set(indices)
    assert any(episode["annotations"]["revealed"][0] for episode in episodes)


def test_personas_are_consistent(episodes):
    topic = {f.text: f.topic for f in PERSONA_BANK}
    for episode in episodes:
        for persona in (episode["your_persona"], episode["partner_persona"]):
            assert len({topic[fact] for fact in persona}) == len(persona)  # one favourite colour, one job, ...
            assert not any(a in persona and b in persona for a, b in CLASHING_FACTS)
        assert not set(episode["your_persona"]) & set(episode["partner_persona"])


def test_dialogues_are_deterministic_and_round_trip(episodes, tmp_path):
    assert build_dialogues(40, random.Random(5)) == episodes
    single = build_dialogues(1, random.Random(0), n_candidates=5, min_turns=2, max_turns=2)
    assert len(single[0]["turns"]) == 2 and all(len(t["candidates"]) == 5 for t in single[0]["turns"])
    write_convai2(tmp_path / "train_both_original.txt", episodes)
    read_back = read_convai2(tmp_path / "train_both_original.txt")
    assert read_back == [{k: v for k, v in e.items() if k != "annotations"} for e in episodes]
    with pytest.raises(ValueError, match="min_turns"):
        build_dialogues(1, random.Random(0), min_turns=5, max_turns=4)
