"""A text-only task suite read off scene descriptions: GLUE-style classification and SQuAD v1.1 QA.

The suite exists for intermediate-task transfer (Vu et al. 2020; TuPaTE, arXiv 2210.11705): which
source task helps which target task. So the tasks deliberately share *skills* to graded degrees
(``TASK_SKILLS``, ``skill_overlap``): ``color_sst`` and ``color_nli`` share colour reading,
``relation_nli`` and ``relation_qqp`` share spatial relations, ``scene_cola`` shares nothing with
``count_parity``. Every task, both classes, reads a *scene description*: a short English paragraph
realised here from a :class:`Scene` (count, background, one sentence per object, pairwise relation
sentences and colour/shape tallies), with random template choices so one scene yields many texts.

Train and dev use disjoint scenes. Classification labels are balanced by construction (example k
asks its maker for label ``k mod num_labels``); QA answers are exact character spans of their context.
Everything draws from one seeded ``random.Random`` per task, derived from the caller's rng and the
task name, so adding a task never changes the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from grainvl.data.world.ontology import COLORS, SHAPES, SIZES, TEXTURES
from grainvl.data.world.scene import Scene, WorldObject, compute_relations

SKILLS: tuple[str, ...] = (
    "color",
    "shape",
    "size",
    "texture",
    "count",
    "relation",
    "background",  # what the scene holds
    "syntax",
    "paraphrase",
    "inference",
    "reading",  # what the task format asks of a model
)

NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
)

# "Sentiment" of a colour for color_sst; the neutrals (gray, white, black) are never asked about.
WARM_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "pink", "brown")
COOL_COLORS: tuple[str, ...] = ("green", "blue", "purple", "cyan")
CURVED_SHAPES: tuple[str, ...] = ("circle", "oval", "heart")
BACKGROUND_WORDS: dict[str, str] = {
    "plain": "plain",
    "gradient": "shaded",
    "noise": "noisy",
    "grid": "gridded",
    "waves": "wavy",
}
OPPOSITE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_ADJECTIVE_ORDER = ("size", "color", "texture")  # English order before the shape noun
_MAX_RELATION_SENTENCES = 6  # keeps crowded (OOD) scenes' paragraphs SQuAD-sized

SpanKey = tuple[str | int, ...]


def plural_shape(shape: str) -> str:
    """English plural of a shape noun ("cross" -> "crosses")."""
    return shape + "es" if shape.endswith(("s", "x", "sh", "ch")) else shape + "s"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


@dataclass
class TextTask:
    """One task of the suite, ready for the GLUE TSV or SQuAD v1.1 writer.

    Classification: ``columns`` is ``["sentence", "label"]`` or ``["sentence1", "sentence2", "label"]``;
    every row has exactly those keys; ``label_names`` lists the label strings used in the rows.
    QA: ``train``/``dev`` are SQuAD v1.1 dicts with one question per paragraph and ids unique
    across both splits. ``description`` says what the label or answer means.
    """

    name: str
    kind: str  # "classification" or "qa"
    skills: tuple[str, ...]
    description: str
    columns: list[str] = field(default_factory=list)
    label_names: tuple[str, ...] = ()
    train_rows: list[dict[str, str]] = field(default_factory=list)
    dev_rows: list[dict[str, str]] = field(default_factory=list)
    train: dict[str, Any] | None = None
    dev: dict[str, Any] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------------
# What a scene says: unique references and directional relations, computed once per scene.


class _SceneFacts:
    """A scene plus cached referring phrases and the directional relation of every ordered pair."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.objects = scene.objects
        relations = scene.relations or compute_relations(scene.objects)
        # Only the four directional relations: "next to" is symmetric and rides along with one of them.
        self.direction: dict[tuple[int, int], str] = {}
        for r in relations:
            if r.relation in OPPOSITE_RELATION:
                self.direction.setdefault((r.subject, r.object), r.relation)
        self._references: dict[tuple[int, str], str | None] = {}

    def reference(self, index: int, banned: str = "") -> str | None:
        """Shortest noun phrase (no article) that picks out object ``index`` alone, or None.

        ``banned`` names an attribute the phrase must not use (the one a question asks about);
        banning "shape" makes the head noun "object" ("large red object").
        """
        key = (index, banned)
        if key not in self._references:
            self._references[key] = _unique_reference(self.objects, index, banned)
        return self._references[key]

    def referable(self, banned: str = "") -> list[int]:
        return [i for i in range(len(self.objects)) if self.reference(i, banned) is not None]


_REFERENCE_SUBSETS: tuple[tuple[str, ...], ...] = (
    (),
    ("color",),
    ("size",),
    ("texture",),
    ("size", "color"),
    ("color", "texture"),
    ("size", "texture"),
    ("size", "color", "texture"),
)


def _unique_reference(objects: list[WorldObject], index: int, banned: str) -> str | None:
    target = objects[index]
    with_shape = banned != "shape"
    for subset in _REFERENCE_SUBSETS:
        if banned in subset or (not subset and not with_shape):
            continue
        attributes = (*subset, "shape") if with_shape else subset
        signature = tuple(getattr(target, a) for a in attributes)
        if sum(tuple(getattr(o, a) for a in attributes) == signature for o in objects) == 1:
            return " ".join(signature) if with_shape else " ".join((*signature, "object"))
    return None  # an exact duplicate (or nothing left to name it by)


# --------------------------------------------------------------------------------------------------
# Realising a description while remembering where each named word sits.


class _Paragraph:
    """Sentences joined by single spaces; ``spans[key] = (char_start, text)`` for the first mention of a key."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self._sentence_begin = 0
        self.spans: dict[SpanKey, tuple[int, str]] = {}
        self.sentences: list[tuple[str, str]] = []  # (kind, sentence)

    def begin(self) -> None:
        if self._parts:
            self.add(" ")
        self._sentence_begin = len(self._parts)

    def add(self, piece: str, key: SpanKey | None = None) -> int:
        start = self._length
        if key is not None and key not in self.spans:
            self.spans[key] = (start, piece)
        self._parts.append(piece)
        self._length += len(piece)
        return start

    def end(self, kind: str) -> None:
        self.sentences.append((kind, "".join(self._parts[self._sentence_begin :])))

    def text(self) -> str:
        return "".join(self._parts)


_COUNT_TEMPLATES = ("The picture shows {n} {objects}.", "In total {there_be} {n} {objects}.", "I count {n} {objects}.")
_BACKGROUND_TEMPLATES = (("The background is ", "."), ("Everything sits on a ", " background."))
_OBJECT_TEMPLATES = (
    ("There is {a} ", "."),
    ("I can see {a} ", "."),
    ("{A} ", " is in the picture."),
    ("The picture contains {a} ", "."),
)
_RELATION_TEMPLATES = (
    "The {a} is {rel} the {b}.",
    "The {a} sits {rel} the {b}.",
    "The {a} can be found {rel} the {b}.",
)


def _describe(
    facts: _SceneFacts,
    rng: random.Random,
    *,
    count: bool = True,
    background: bool = True,
    relations: bool = True,
    tallies: bool = True,
) -> _Paragraph:
    """A paragraph about the scene; span keys: ("count",), ("background",), (attr, i), ("phrase", i),
    ("relation", a, b), ("color_count", color), ("shape_count", shape)."""
    paragraph = _Paragraph()
    order = list(range(len(facts.objects)))
    rng.shuffle(order)
    if count:
        _add_count_sentence(paragraph, len(order), rng)
    if background:
        _add_background_sentence(paragraph, facts.scene.background, rng)
    for i in order:
        _add_object_sentence(paragraph, facts.objects[i], i, rng)
    if relations:
        _add_relation_sentences(paragraph, facts, order, rng)
    if tallies and order:
        _add_tally(paragraph, "color", [o.color for o in facts.objects])
        _add_tally(paragraph, "shape", [o.shape for o in facts.objects])
    return paragraph


def _add_count_sentence(paragraph: _Paragraph, n: int, rng: random.Random) -> None:
    head, tail = rng.choice(_COUNT_TEMPLATES).split("{n}")
    paragraph.begin()
    paragraph.add(head.format(there_be="there is" if n == 1 else "there are"))
    paragraph.add(_number(n), ("count",))
    paragraph.add(tail.format(objects="object" if n == 1 else "objects"))
    paragraph.end("count")


def _add_background_sentence(paragraph: _Paragraph, background: str, rng: random.Random) -> None:
    head, tail = rng.choice(_BACKGROUND_TEMPLATES)
    paragraph.begin()
    paragraph.add(head)
    paragraph.add(BACKGROUND_WORDS.get(background, background), ("background",))
    paragraph.add(tail)
    paragraph.end("background")


def _add_object_sentence(paragraph: _Paragraph, obj: WorldObject, index: int, rng: random.Random) -> None:
    head, tail = rng.choice(_OBJECT_TEMPLATES)
    article = _article(obj.size)
    paragraph.begin()
    paragraph.add(head.format(a=article, A=article.capitalize()))
    start = paragraph.add(obj.size, ("size", index))
    for attribute in ("color", "texture", "shape"):
        paragraph.add(" ")
        paragraph.add(getattr(obj, attribute), (attribute, index))
    paragraph.spans.setdefault(("phrase", index), (start, object_phrase(obj)))
    paragraph.add(tail)
    paragraph.end("object")


def object_phrase(obj: WorldObject) -> str:
    """Full noun phrase without article: "large red striped circle"."""
    return f"{obj.size} {obj.color} {obj.texture} {obj.shape}"


def _add_relation_sentences(paragraph: _Paragraph, facts: _SceneFacts, order: list[int], rng: random.Random) -> None:
    referable = [i for i in order if facts.reference(i) is not None]
    pairs = [(a, b) for k, a in enumerate(referable) for b in referable[k + 1 :]][:_MAX_RELATION_SENTENCES]
    for a, b in pairs:
        if rng.random() < 0.5:
            a, b = b, a  # state the pair from either side so inverse relations get exercised
        relation = facts.direction.get((a, b))
        if relation is None:
            continue
        head, rest = rng.choice(_RELATION_TEMPLATES).split("{rel}")
        paragraph.begin()
        paragraph.add(head.format(a=facts.reference(a)))
        paragraph.add(relation, ("relation", a, b))
        paragraph.add(rest.format(b=facts.reference(b)))
        paragraph.end("relation")


def _add_tally(paragraph: _Paragraph, attribute: str, values: list[str]) -> None:
    """ "By color there are two red objects and one blue object." (most frequent first, then first seen)."""
    counted = sorted(dict.fromkeys(values), key=lambda v: -values.count(v))  # stable sort keeps first-seen order
    paragraph.begin()
    paragraph.add(f"By {attribute} there {'is' if values.count(counted[0]) == 1 else 'are'} ")
    for k, value in enumerate(counted):
        if k:
            paragraph.add(" and " if k == len(counted) - 1 else ", ")
        n = values.count(value)
        paragraph.add(_number(n), (f"{attribute}_count", value))
        if attribute == "color":
            paragraph.add(f" {value} {'object' if n == 1 else 'objects'}")
        else:
            paragraph.add(" " + (value if n == 1 else plural_shape(value)))
    paragraph.add(".")
    paragraph.end("tally")


def _object_sentence(obj: WorldObject, rng: random.Random) -> str:
    paragraph = _Paragraph()
    _add_object_sentence(paragraph, obj, 0, rng)
    return paragraph.text()


# --------------------------------------------------------------------------------------------------
# Classification makers: maker(facts, rng, want) -> row with label == want, or None when this scene
# cannot give that label.

Row = dict[str, str]
ENTAIL, NOT_ENTAIL = "entailment", "not_entailment"


def _single_object_task(labels_of: Callable[[WorldObject], str | None]) -> Callable[..., Row | None]:
    """A single-sentence task over one object sentence, labelled by a property of the object."""

    def make(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
        fitting = [o for o in facts.objects if labels_of(o) == want]
        if not fitting:
            return None
        return {"sentence": _object_sentence(rng.choice(fitting), rng), "label": want}

    return make


def _warmth(obj: WorldObject) -> str | None:
    return "1" if obj.color in WARM_COLORS else "0" if obj.color in COOL_COLORS else None


def _make_size_sst(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    has_large = any(o.size == "large" for o in facts.objects)
    if has_large != (want == "1"):
        return None
    return {"sentence": _describe(facts, rng, relations=False, tallies=False).text(), "label": want}


def _make_count_parity(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    if (len(facts.objects) % 2 == 0) != (want == "1") or not facts.objects:
        return None
    # No count sentence and no tallies: the model has to count the object sentences.
    text = _describe(facts, rng, count=False, relations=False, tallies=False).text()
    return {"sentence": text, "label": want}


def _word_class(word: str) -> str:
    if word in ("a", "an", "the"):
        return "det"
    if word in COLORS or word in SIZES or word in TEXTURES or word in BACKGROUND_WORDS.values():
        return "adj"
    if word in SHAPES or word.rstrip("s") in SHAPES or word in ("object", "objects", "picture", "background"):
        return "noun"
    return word


def _shuffle_words(sentence: str, rng: random.Random) -> str | None:
    """A word-shuffled sentence whose word-class sequence differs from the original, so it is
    ungrammatical (swapping two nouns or two adjectives would stay grammatical); None if none found."""
    words = sentence.rstrip(".").lower().split()
    original = [_word_class(w) for w in words]
    for _ in range(20):
        shuffled = words[:]
        rng.shuffle(shuffled)
        if [_word_class(w) for w in shuffled] != original:
            # Restore the pronoun's capital so letter case gives no hint of shuffling.
            sentence = " ".join("I" if w == "i" else w for w in shuffled)
            return sentence[0].upper() + sentence[1:] + "."
    return None


def _make_scene_cola(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    paragraph = _describe(facts, rng, tallies=False)
    sentence = rng.choice(paragraph.sentences)[1]
    if want == "0":
        sentence = _shuffle_words(sentence, rng)
    return None if sentence is None else {"sentence": sentence, "label": want}


def _attribute_claim_task(attribute: str, values: tuple[str, ...]) -> Callable[..., Row | None]:
    """Premise: full description; hypothesis "The <ref> is <value>." about ``attribute``;
    entailment iff the value is the object's. False values prefer ones present elsewhere in the
    scene, so "the word appears in the premise" is no shortcut."""

    def make(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
        candidates = facts.referable(attribute)
        if not candidates:
            return None
        i = rng.choice(candidates)
        actual = getattr(facts.objects[i], attribute)
        value = actual if want == ENTAIL else _other_value(facts, attribute, actual, values, rng)
        hypothesis = f"The {facts.reference(i, attribute)} is {value}."
        return {"sentence1": _describe(facts, rng).text(), "sentence2": hypothesis, "label": want}

    return make


def _other_value(facts: _SceneFacts, attribute: str, actual: str, values: tuple[str, ...], rng: random.Random) -> str:
    present = sorted({getattr(o, attribute) for o in facts.objects} - {actual}, key=values.index)
    if present and rng.random() < 0.7:
        return rng.choice(present)
    return rng.choice([v for v in values if v != actual])


_make_size_claim = _attribute_claim_task("size", tuple(SIZES))


def _make_size_mnli(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    """Three-way: neutral claims are about a shape the scene does not contain."""
    sizes = tuple(SIZES)
    if want == "neutral":
        absent = [s for s in SHAPES if all(o.shape != s for o in facts.objects)]
        if not absent:
            return None
        hypothesis = f"The {rng.choice(absent)} is {rng.choice(sizes)}."
        return {"sentence1": _describe(facts, rng).text(), "sentence2": hypothesis, "label": want}
    row = _make_size_claim(facts, rng, ENTAIL if want == "entailment" else NOT_ENTAIL)
    return None if row is None else {**row, "label": want}


def _count_claims(facts: _SceneFacts) -> list[tuple[str, str, int]]:
    """(kind, value, true count) for the total, every present colour and every present shape."""
    colors = [o.color for o in facts.objects]
    shapes = [o.shape for o in facts.objects]
    claims = [("total", "", len(colors))]
    claims += [("color", c, colors.count(c)) for c in dict.fromkeys(colors)]
    claims += [("shape", s, shapes.count(s)) for s in dict.fromkeys(shapes)]
    return claims


def _count_sentence(kind: str, value: str, n: int) -> str:
    there_be = "There is" if n == 1 else "There are"
    if kind == "total":
        return f"{there_be} {_number(n)} {'object' if n == 1 else 'objects'} in total."
    if kind == "color":
        return f"{there_be} {_number(n)} {value} {'object' if n == 1 else 'objects'}."
    return f"{there_be} {_number(n)} {value if n == 1 else plural_shape(value)}."


def _make_count_nli(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    if not facts.objects:
        return None
    kind, value, n = rng.choice(_count_claims(facts))
    if want == NOT_ENTAIL:
        n = rng.choice([m for m in (n - 1, n + 1, n + 2) if m >= 1])  # never "zero": a free shortcut
    return {"sentence1": _describe(facts, rng).text(), "sentence2": _count_sentence(kind, value, n), "label": want}


def _make_relation_nli(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    paragraph = _describe(facts, rng, tallies=False)
    stated = [key[1:] for key in paragraph.spans if key[0] == "relation"]
    if not stated:
        return None
    a, b = rng.choice(stated)
    if rng.random() < 0.5:
        a, b = b, a  # the claim may take the other side of the stated sentence
    relation = facts.direction.get((a, b))
    if relation is None:
        return None  # caller-supplied relations may leave out the reverse direction
    if want == NOT_ENTAIL:
        relation = OPPOSITE_RELATION[relation]
    hypothesis = f"The {facts.reference(a)} is {relation} the {facts.reference(b)}."
    return {"sentence1": paragraph.text(), "sentence2": hypothesis, "label": want}


def _relation_sentence(a: str, relation: str, b: str, rng: random.Random) -> str:
    return rng.choice(_RELATION_TEMPLATES).format(a=a, rel=relation, b=b)


def _make_relation_qqp(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    """Same meaning: the inverse statement or another wording; different: swapped arguments or the
    opposite relation. Only the language decides the label, as in QQP."""
    pairs = [p for p in facts.direction if facts.reference(p[0]) and facts.reference(p[1])]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    ref_a, ref_b, relation = facts.reference(a) or "", facts.reference(b) or "", facts.direction[(a, b)]
    opposite = OPPOSITE_RELATION[relation]
    if want == "1":
        second = rng.choice([(ref_b, opposite, ref_a), (ref_a, relation, ref_b)])
    else:
        second = rng.choice([(ref_b, relation, ref_a), (ref_a, opposite, ref_b)])
    first = _relation_sentence(ref_a, relation, ref_b, rng)
    return {"sentence1": first, "sentence2": _relation_sentence(*second, rng), "label": want}


def _make_scene_mrpc(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    """Two descriptions of one scene (1) or of the scene with one attribute of one object changed (0)."""
    if not facts.objects:
        return None
    first = _describe(facts, rng, background=False, relations=False, tallies=False).text()
    other = facts if want == "1" else _SceneFacts(_perturbed_scene(facts.scene, rng))
    second = _describe(other, rng, background=False, relations=False, tallies=False).text()
    return {"sentence1": first, "sentence2": second, "label": want}


_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "texture": TEXTURES,
    "shape": SHAPES,
}


def _perturbed_scene(scene: Scene, rng: random.Random) -> Scene:
    objects = list(scene.objects)
    i = rng.randrange(len(objects))
    attribute = rng.choice(("color", "size", "texture", "shape"))
    current = getattr(objects[i], attribute)
    new_value = rng.choice([v for v in _ATTRIBUTE_VALUES[attribute] if v != current])
    objects[i] = replace(objects[i], **{attribute: new_value})
    return replace(scene, objects=objects)  # geometry unchanged, so the relations still hold


def _make_color_qnli(facts: _SceneFacts, rng: random.Random, want: str) -> Row | None:
    """Does the sentence answer "What color is the <ref>?" (its own object sentence) or not (another's)?"""
    candidates = facts.referable("color")
    if not candidates or (want == NOT_ENTAIL and len(facts.objects) < 2):
        return None
    i = rng.choice(candidates)
    j = i if want == ENTAIL else rng.choice([k for k in range(len(facts.objects)) if k != i])
    question = f"What color is the {facts.reference(i, 'color')}?"
    return {"sentence1": question, "sentence2": _object_sentence(facts.objects[j], rng), "label": want}


# --------------------------------------------------------------------------------------------------
# QA makers: maker(facts, rng) -> _QAExample or None.


@dataclass(frozen=True)
class _QAExample:
    image_id: int
    context: str
    question: str
    answer: str
    answer_start: int


def _qa(facts: _SceneFacts, paragraph: _Paragraph, question: str, key: SpanKey) -> _QAExample:
    start, answer = paragraph.spans[key]
    return _QAExample(facts.scene.image_id, paragraph.text(), question, answer, start)


_ATTRIBUTE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {ref}?", "Which color does the {ref} have?"),
    "shape": ("What shape is the {ref}?", "Which shape does the {ref} have?"),
    "size": ("What size is the {ref}?", "How big is the {ref}?"),
    "texture": ("What pattern does the {ref} have?", "What is the texture of the {ref}?"),
}


def _attribute_question_task(attribute: str) -> Callable[..., _QAExample | None]:
    def make(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
        candidates = facts.referable(attribute)
        if not candidates:
            return None
        i = rng.choice(candidates)
        question = rng.choice(_ATTRIBUTE_QUESTIONS[attribute]).format(ref=facts.reference(i, attribute))
        return _qa(facts, _describe(facts, rng), question, (attribute, i))

    return make


def _make_count_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    if not facts.objects:
        return None
    question = rng.choice(("How many objects are there?", "How many objects does the picture show?"))
    return _qa(facts, _describe(facts, rng), question, ("count",))


def _make_colorcount_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    if not facts.objects:
        return None
    color = rng.choice(list(dict.fromkeys(o.color for o in facts.objects)))
    return _qa(facts, _describe(facts, rng), f"How many {color} objects are there?", ("color_count", color))


def _make_shapecount_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    if not facts.objects:
        return None
    shape = rng.choice(list(dict.fromkeys(o.shape for o in facts.objects)))
    return _qa(facts, _describe(facts, rng), f"How many {plural_shape(shape)} are there?", ("shape_count", shape))


def _unique_related(facts: _SceneFacts) -> list[tuple[int, str, int]]:
    """(k, relation, j): k is the only object standing in ``relation`` to the referable object j."""
    found = []
    for j in facts.referable():
        for relation in OPPOSITE_RELATION:
            subjects = [k for k in range(len(facts.objects)) if facts.direction.get((k, j)) == relation]
            if len(subjects) == 1:
                found.append((subjects[0], relation, j))
    return found


def _related_attribute_task(attribute: str, template: str) -> Callable[..., _QAExample | None]:
    """ "What <attribute> is <relation> the <ref>?": answered from the subject's object sentence."""

    def make(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
        options = _unique_related(facts)
        if not options:
            return None
        k, relation, j = rng.choice(options)
        question = template.format(rel=relation, ref=facts.reference(j))
        return _qa(facts, _describe(facts, rng), question, (attribute, k))

    return make


def _make_where_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    if len(facts.referable()) < 2:
        return None
    paragraph = _describe(facts, rng)
    stated = [key for key in paragraph.spans if key[0] == "relation"]
    if not stated:
        return None
    key = rng.choice(stated)
    subject, reference = facts.reference(int(key[1])), facts.reference(int(key[2]))
    question = f"Where is the {subject} relative to the {reference}?"
    return _qa(facts, paragraph, question, key)


def _make_object_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    """ "Which object is striped?" for an attribute value held by exactly one object -> its full phrase."""
    options = []
    for attribute in _ADJECTIVE_ORDER:
        values = [getattr(o, attribute) for o in facts.objects]
        options += [(i, v) for i, v in enumerate(values) if values.count(v) == 1]
    if not options:
        return None
    i, value = rng.choice(options)
    question = rng.choice(("Which object is {v}?", "What is the {v} thing?")).format(v=value)
    return _qa(facts, _describe(facts, rng), question, ("phrase", i))


def _make_background_squad(facts: _SceneFacts, rng: random.Random) -> _QAExample | None:
    question = rng.choice(("What does the background look like?", "What kind of background is there?"))
    return _qa(facts, _describe(facts, rng), question, ("background",))


# --------------------------------------------------------------------------------------------------
# The suite.

SINGLE, PAIR = ["sentence", "label"], ["sentence1", "sentence2", "label"]
BINARY, NLI2, NLI3 = ("0", "1"), (ENTAIL, NOT_ENTAIL), ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class _TaskSpec:
    name: str
    kind: str
    skills: tuple[str, ...]
    description: str
    make: Callable[..., Any]
    columns: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()


def _cls(
    name: str,
    skills: tuple[str, ...],
    description: str,
    make: Callable[..., Any],
    columns: list[str],
    labels: tuple[str, ...],
) -> _TaskSpec:
    return _TaskSpec(name, "classification", skills, description, make, tuple(columns), labels)


def _qa_spec(name: str, skills: tuple[str, ...], description: str, make: Callable[..., Any]) -> _TaskSpec:
    return _TaskSpec(name, "qa", skills, description, make)


_SPECS: tuple[_TaskSpec, ...] = (
    _cls(
        "color_sst",
        ("color",),
        "object sentence; 1 = warm colour, 0 = cool colour",
        _single_object_task(_warmth),
        SINGLE,
        BINARY,
    ),
    _cls(
        "shape_sst",
        ("shape",),
        "object sentence; 1 = curved shape (circle, oval, heart), 0 = angular",
        _single_object_task(lambda o: "1" if o.shape in CURVED_SHAPES else "0"),
        SINGLE,
        BINARY,
    ),
    _cls(
        "texture_sst",
        ("texture",),
        "object sentence; 1 = patterned, 0 = solid",
        _single_object_task(lambda o: "0" if o.texture == "solid" else "1"),
        SINGLE,
        BINARY,
    ),
    _cls("size_sst", ("size",), "scene description; 1 = it mentions a large object", _make_size_sst, SINGLE, BINARY),
    _cls(
        "count_parity",
        ("count",),
        "description without counts; 1 = even number of objects",
        _make_count_parity,
        SINGLE,
        BINARY,
    ),
    _cls(
        "scene_cola",
        ("syntax",),
        "description sentence; 1 = acceptable, 0 = words shuffled",
        _make_scene_cola,
        SINGLE,
        BINARY,
    ),
    _cls(
        "color_nli",
        ("color", "inference"),
        "description / colour claim about one object",
        _attribute_claim_task("color", tuple(COLORS)),
        PAIR,
        NLI2,
    ),
    _cls(
        "texture_rte",
        ("texture", "inference"),
        "description / texture claim about one object",
        _attribute_claim_task("texture", TEXTURES),
        PAIR,
        NLI2,
    ),
    _cls(
        "size_mnli",
        ("size", "shape", "inference"),
        "description / size claim; neutral = absent shape",
        _make_size_mnli,
        PAIR,
        NLI3,
    ),
    _cls(
        "count_nli",
        ("count", "inference"),
        "description / claim about the total, a colour or a shape count",
        _make_count_nli,
        PAIR,
        NLI2,
    ),
    _cls(
        "relation_nli",
        ("relation", "inference"),
        "description / spatial relation claim (false = opposite)",
        _make_relation_nli,
        PAIR,
        NLI2,
    ),
    _cls(
        "relation_qqp",
        ("relation", "paraphrase"),
        "two relation sentences; 1 = same meaning",
        _make_relation_qqp,
        PAIR,
        BINARY,
    ),
    _cls(
        "scene_mrpc",
        ("paraphrase", "color", "shape", "size", "texture"),
        "two descriptions; 1 = same scene, 0 = one attribute of one object changed",
        _make_scene_mrpc,
        PAIR,
        BINARY,
    ),
    _cls(
        "color_qnli",
        ("color", "reading", "inference"),
        "colour question / object sentence; entailment = answers it",
        _make_color_qnli,
        PAIR,
        NLI2,
    ),
    _qa_spec("color_squad", ("color", "reading"), "what color is the <ref>", _attribute_question_task("color")),
    _qa_spec(
        "shape_squad", ("shape", "reading"), "what shape is the <ref without shape>", _attribute_question_task("shape")
    ),
    _qa_spec("size_squad", ("size", "reading"), "what size is the <ref>", _attribute_question_task("size")),
    _qa_spec(
        "texture_squad", ("texture", "reading"), "what pattern does the <ref> have", _attribute_question_task("texture")
    ),
    _qa_spec("count_squad", ("count", "reading"), "how many objects (number word)", _make_count_squad),
    _qa_spec("colorcount_squad", ("count", "color", "reading"), "how many <color> objects", _make_colorcount_squad),
    _qa_spec("shapecount_squad", ("count", "shape", "reading"), "how many <shapes>", _make_shapecount_squad),
    _qa_spec(
        "relation_squad",
        ("relation", "shape", "reading"),
        "what shape is <relation> the <ref>",
        _related_attribute_task("shape", "What shape is {rel} the {ref}?"),
    ),
    _qa_spec(
        "relcolor_squad",
        ("relation", "color", "reading"),
        "what color is the object <relation> the <ref>",
        _related_attribute_task("color", "What color is the object {rel} the {ref}?"),
    ),
    _qa_spec(
        "where_squad",
        ("relation", "reading"),
        "where is the <ref> relative to the <ref> (relation words)",
        _make_where_squad,
    ),
    _qa_spec(
        "object_squad",
        ("color", "size", "texture", "shape", "reading"),
        "which object is <unique value> (full noun phrase)",
        _make_object_squad,
    ),
    _qa_spec(
        "background_squad", ("background", "reading"), "what does the background look like", _make_background_squad
    ),
)

TASK_SKILLS: dict[str, tuple[str, ...]] = {spec.name: spec.skills for spec in _SPECS}


def skill_overlap(a: str, b: str) -> float:
    """Jaccard overlap of two tasks' skill sets: the intended relatedness, 1.0 for a task with itself."""
    for name in (a, b):
        if name not in TASK_SKILLS:
            raise ValueError(f"unknown text task {name!r}; known: {', '.join(TASK_SKILLS)}")
    skills_a, skills_b = set(TASK_SKILLS[a]), set(TASK_SKILLS[b])
    return len(skills_a & skills_b) / len(skills_a | skills_b)


def build_text_suite(
    scenes: list[Scene], rng: random.Random, n_train: int = 200, n_dev: int = 100
) -> dict[str, TextTask]:
    """Every task of the suite, keyed by name, with ``n_train``/``n_dev`` examples per split.

    Scenes are split into disjoint train and dev sets in proportion to ``n_train : n_dev``; each
    task draws examples by cycling over its split's scenes (a scene may serve several examples,
    each with its own wording). Raises ValueError when the scenes cannot produce a task at all
    (for example, no scene with two objects for the relation tasks).
    """
    if n_train < 1 or n_dev < 0:
        raise ValueError(f"need n_train >= 1 and n_dev >= 0, got {n_train} and {n_dev}")
    if len(scenes) < (2 if n_dev else 1):
        raise ValueError(f"need at least {2 if n_dev else 1} scenes for disjoint train/dev, got {len(scenes)}")
    facts = [_SceneFacts(s) for s in scenes]
    rng.shuffle(facts)
    n_train_scenes = len(facts)
    if n_dev:  # proportional, but at least one scene on each side
        n_train_scenes = min(len(facts) - 1, max(1, round(len(facts) * n_train / (n_train + n_dev))))
    train_facts, dev_facts = facts[:n_train_scenes], facts[n_train_scenes:]
    suite_seed = rng.getrandbits(64)
    suite: dict[str, TextTask] = {}
    for spec in _SPECS:
        task_rng = random.Random(f"{suite_seed}:{spec.name}")  # str seeds hash with SHA-512: stable
        suite[spec.name] = _build_task(spec, train_facts, dev_facts, task_rng, n_train, n_dev)
    return suite


def _build_task(
    spec: _TaskSpec,
    train_facts: list[_SceneFacts],
    dev_facts: list[_SceneFacts],
    rng: random.Random,
    n_train: int,
    n_dev: int,
) -> TextTask:
    task = TextTask(spec.name, spec.kind, spec.skills, spec.description)
    if spec.kind == "classification":
        task.columns, task.label_names = list(spec.columns), spec.label_names
        task.train_rows = _draw_rows(spec, train_facts, rng, n_train)
        task.dev_rows = _draw_rows(spec, dev_facts, rng, n_dev)
    else:
        task.train = _squad(spec.name, "train", _draw_examples(spec, train_facts, rng, n_train))
        task.dev = _squad(spec.name, "dev", _draw_examples(spec, dev_facts, rng, n_dev))
    return task


def _draw(
    spec: _TaskSpec, facts: list[_SceneFacts], rng: random.Random, n: int, label_of: Callable[[int], Any]
) -> list:
    """n examples from ``spec.make``, cycling over ``facts``; ``label_of(k)`` is the extra maker
    argument for example k (its wanted label) or None for QA."""
    examples: list = []
    cursor, failures = 0, 0
    while len(examples) < n:
        wanted = label_of(len(examples))
        scene_facts = facts[cursor % len(facts)]
        cursor += 1
        made = spec.make(scene_facts, rng) if wanted is None else spec.make(scene_facts, rng, wanted)
        if made is not None:
            examples.append(made)
            failures = 0
            continue
        failures += 1
        if failures > 4 * len(facts):
            # Four full passes without success: the scenes lack what this task needs.
            what = f"label {wanted!r}" if wanted is not None else "a question"
            raise ValueError(f"text task {spec.name}: {len(facts)} scenes cannot produce {what}")
    return examples


def _draw_rows(spec: _TaskSpec, facts: list[_SceneFacts], rng: random.Random, n: int) -> list[Row]:
    labels = spec.label_names
    rows: list[Row] = _draw(spec, facts, rng, n, lambda k: labels[k % len(labels)])
    rng.shuffle(rows)  # round-robin labels would otherwise alternate in the file
    return rows


def _draw_examples(spec: _TaskSpec, facts: list[_SceneFacts], rng: random.Random, n: int) -> list[_QAExample]:
    return _draw(spec, facts, rng, n, lambda k: None)


def _squad(task_name: str, split: str, examples: list[_QAExample]) -> dict[str, Any]:
    """SQuAD v1.1: one article per scene (in first-use order), one paragraph and question per example."""
    articles: dict[int, dict[str, Any]] = {}
    for k, ex in enumerate(examples):
        article = articles.setdefault(ex.image_id, {"title": f"scene_{ex.image_id:08d}", "paragraphs": []})
        qa = {
            "id": f"{task_name}-{split}-{k:06d}",
            "question": ex.question,
            "answers": [{"text": ex.answer, "answer_start": ex.answer_start}],
        }
        article["paragraphs"].append({"context": ex.context, "qas": [qa]})
    return {"version": "1.1", "data": list(articles.values())}


__all__ = [
    "SKILLS",
    "TASK_SKILLS",
    "TextTask",
    "build_text_suite",
    "object_phrase",
    "plural_shape",
    "skill_overlap",
]
