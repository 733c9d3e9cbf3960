"""What the world says, independent of language: semantic records and the grammar interface.

``annotate.py`` and ``language.py`` decide *what* to say with these records (which object, which
attributes, which relation, which sentence frame); each ``lang_xx`` grammar decides *how* to say
it in its own word order and morphology. Because one record is realised in every language, the
outputs are translations of each other, which is what makes them parallel sentence pairs.

``Grammar`` holds the sentence scaffolding all languages share; a language module supplies its
lexicon, sentence templates, agreement and word order through small hooks.

The records are NamedTuples: they are hashable (plans are deduplicated with them, grammars cache
noun phrases keyed by them) and cheap to build in the annotation hot path.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

from grainvl.data.world.scene import WorldObject

# Attribute names in canonical order; a description lists a subset of them.
ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "texture")

# Sentence frames of an image caption ("there is ...", "we can see ...", "an image showing ...",
# "X is left of Y.", or a bare noun phrase as in many COCO captions).
CAPTION_FRAMES: tuple[str, ...] = ("there_is", "we_see", "showing", "predicate", "bare")
# Sentence frames of a video caption, and how two simultaneous actions are joined.
VIDEO_FRAMES: tuple[str, ...] = ("plain", "in_video", "clip", "we_see")
CONNECTIVES: tuple[str, ...] = ("while", "and")
# "stay" is not an ontology event: it lets a caption say that an object does not change.
STAY = "stay"

# Statement kinds (NLVR2 and XVNLI), and properties no image can decide (XVNLI neutral).
CLAIM_KINDS: tuple[str, ...] = ("exist", "count", "none", "more", "relation")
NEUTRAL_KINDS: tuple[str, ...] = ("wood", "plastic", "heavy", "drawn_by_child")

# VQA skills (VQAItem.skill).
SKILLS: tuple[str, ...] = ("color", "shape", "count", "exist", "relation", "size")
# The NLVR2 side a "more" claim compares with.
OTHER_SIDE: dict[str, str] = {"left": "right", "right": "left"}


class Desc(NamedTuple):
    """The attributes a phrase mentions; None means "not mentioned".

    ``shape`` None gives a generic noun ("object"); all fields None is "an object".
    """

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    texture: str | None = None


class Fact(NamedTuple):
    """One piece of a caption: ``subject`` alone, or ``subject relation object``."""

    subject: Desc
    relation: str | None = None
    object: Desc | None = None


class Claim(NamedTuple):
    """A statement about one image (scope "image", XVNLI) or an NLVR2 pair (scope left/right/both).

    kind: exist (there is a ``desc``), count (exactly ``number`` of ``desc``, number >= 1),
    none (no ``desc``), more (``scope`` side has more ``desc`` than the other side),
    relation (some ``desc`` is ``relation`` some ``other``), or a NEUTRAL_KINDS property of the
    one object ``desc`` describes (``drawn_by_child`` is about the picture and has no desc).
    """

    kind: str
    scope: str = "image"
    desc: Desc | None = None
    number: int = 0
    relation: str | None = None
    other: Desc | None = None


class Action(NamedTuple):
    """What one object does over a clip: ``events`` are (kind, to_color) with kind in VIDEO_EVENTS or STAY."""

    subject: Desc
    events: tuple[tuple[str, str | None], ...]


def describe(obj: WorldObject, attributes: Sequence[str]) -> Desc:
    """The description of ``obj`` that mentions exactly ``attributes``."""
    return Desc(
        obj.shape if "shape" in attributes else None,
        obj.color if "color" in attributes else None,
        obj.size if "size" in attributes else None,
        obj.texture if "texture" in attributes else None,
    )


def full_desc(obj: WorldObject) -> Desc:
    return Desc(obj.shape, obj.color, obj.size, obj.texture)


def matches(desc: Desc, obj: WorldObject) -> bool:
    """True when every attribute ``desc`` mentions has ``obj``'s value."""
    return (
        (desc.shape is None or desc.shape == obj.shape)
        and (desc.color is None or desc.color == obj.color)
        and (desc.size is None or desc.size == obj.size)
        and (desc.texture is None or desc.texture == obj.texture)
    )


def pick(rng: random.Random, options: Sequence[str]) -> str:
    """One of ``options`` uniformly; a single option consumes no randomness.

    Cheaper than ``rng.choice`` (one float draw), which matters in the per-word hot path.
    """
    if len(options) == 1:
        return options[0]
    return options[int(rng.random() * len(options))]


def capitalize(text: str) -> str:
    """First character upper-cased, the rest untouched (``str.capitalize`` would lower nouns)."""
    return text[:1].upper() + text[1:]


class PredicateSentences(NamedTuple):
    """The sentences of the "predicate" caption frame: one per fact, then one for the unnamed rest.

    Templates are ``str.format`` patterns with the fields {subject} (the fact's indefinite phrase),
    {Subject} (the same, capitalised), {place} (``Grammar._place``), {others} (``Grammar._others``)
    and {number} (the count of the unnamed rest as a word).
    """

    related: str  # a fact with a relation: "{Subject} is {place}."
    first: str  # the first fact without one: "{Subject} is visible."
    also: str  # a later fact without one: "{Subject} is also visible."
    one_other: str  # one unnamed further shape
    more_others: str  # several unnamed further shapes (verbs agree in number)


class Grammar(ABC):
    """One language's realisation of the semantic records.

    The sentence scaffolding every language shares (empty scenes, frames, fact lists, predicate
    sentences, referring phrases, question dispatch, video frames) lives here; a subclass supplies
    the tables below and the hooks ``_phrase``, ``_place``, ``_others``, ``_video_body`` and
    ``statement``, and overrides a scaffolding method only where its word order really differs.

    ``answers[kind][value]`` gives the canonical short answer for kind in color/shape/size/yesno/
    action (values are the ontology keys, "yes"/"no", or VIDEO_EVENTS); numbers are digits in
    every language, as VQA v2 normalises them.

    Templates are ``str.format`` patterns; where a table holds several paraphrases, one is drawn
    with ``pick`` (a single one consumes no randomness).
    """

    code: str = ""
    answers: ClassVar[dict[str, dict[str, str]]] = {}
    number_words: ClassVar[tuple[str, ...]] = ()  # 0..10 as words, for {number}
    # Image captions: frame -> caption of an empty scene; frame -> paraphrases around the listed
    # facts ({body}, {Body} capitalised); frame -> grammatical case of the listed phrases.
    empty_captions: ClassVar[dict[str, str]] = {}
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {}
    frame_cases: ClassVar[dict[str, str]] = {}
    predicate_sentences: ClassVar[PredicateSentences]
    sentence_gap: ClassVar[str] = " "  # between the predicate frame's sentences
    list_separators: ClassVar[tuple[str, str]] = (", ", " and ")  # (between items, before the last)
    # VQA: skill -> paraphrases around ``_question_phrase`` ({phrase}); the relation question has
    # the fields {phrase} (the definite subject) and {place}.
    questions: ClassVar[dict[str, tuple[str, ...]]] = {}
    relation_question: ClassVar[str] = ""
    # Videos: frame -> caption of a clip without actions; frame -> template around the clauses
    # ({body}, {Body}); kind -> question ({phrase}: the definite subject, {event}: which_events).
    empty_videos: ClassVar[dict[str, str]] = {}
    video_frames: ClassVar[dict[str, str]] = {}
    video_questions: ClassVar[dict[str, str]] = {}
    which_events: ClassVar[dict[str, str]] = {}  # VIDEO_EVENTS -> predicate of "which shape ...?"

    def answer(self, kind: str, value: str | int) -> str:
        if kind == "number":
            return str(value)
        return self.answers[kind][str(value)]

    # ------------------------------------------------------------------ language hooks
    @abstractmethod
    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        """``desc`` as a noun phrase with determiner ``det`` ("a" or "the") in grammatical ``case``
        (nom/acc/dat; only a language that declines noun phrases reads it)."""
        ...

    @abstractmethod
    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        """Where something is: ``relation`` with ``landmark`` (determiner ``det``), "left of a square"."""
        ...

    @abstractmethod
    def _others(self, n: int, case: str) -> str:
        """The ``n`` further shapes a caption only counts ("two other shapes"), in ``case``."""
        ...

    @abstractmethod
    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        """The clauses of a video caption (``actions`` is not empty), to fill ``video_frames[frame]``."""
        ...

    def _anchored(
        self,
        desc: Desc,
        det: str,
        rng: random.Random,
        relation: str | None = None,
        other: Desc | None = None,
        case: str = "nom",
    ) -> str:
        """``desc``'s phrase, placed relative to ``other`` when a relation is given (``_attach``).

        The landmark takes the subject's determiner ("the circle left of the square").
        """
        head = self._phrase(desc, det, rng, case)
        if relation is None or other is None:
            return head
        return self._attach(head, relation, other, det, rng)

    def _attach(self, head: str, relation: str, other: Desc, det: str, rng: random.Random) -> str:
        """``head`` placed ``relation`` ``other``; the place follows the noun ("the circle left of ...")."""
        return f"{head} {self._place(relation, other, det, rng)}"

    def _join(self, items: Sequence[str], nested: bool = False) -> str:
        """``items`` as one list ("a, b and c"); ``nested`` says some item has an inner "and" or a
        relation, which only English marks (with a comma before its "and")."""
        if len(items) == 1:
            return items[0]
        separator, last = self.list_separators
        return separator.join(items[:-1]) + last + items[-1]

    # ------------------------------------------------------------------ shared scaffolding
    def region(self, desc: Desc, definite: bool, rng: random.Random) -> str:
        """A lower-case noun phrase (``a large striped red star``); German keeps its nouns capitalised."""
        return self._phrase(desc, "the" if definite else "a", rng)

    def caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        """A caption in ``frame`` mentioning ``facts`` and ``others`` unnamed further shapes."""
        if not facts:
            return self.empty_captions[frame]
        if frame == "predicate":
            return self._predicate_caption(facts, others, rng)
        case = self.frame_cases.get(frame, "nom")
        items = [self._anchored(fact.subject, "a", rng, fact.relation, fact.object, case) for fact in facts]
        if others:
            items.append(self._others(others, case))
        body = self._join(items, nested=any(fact.relation for fact in facts))
        # The frame is drawn after the phrases: the order of draws is part of every seeded world.
        return pick(rng, self.caption_frames[frame]).format(body=body, Body=capitalize(body))

    def _predicate_place(self, relation: str, landmark: Desc, rng: random.Random) -> str:
        """The place in a predicate sentence; a hook only so that English can keep its draw order."""
        return self._place(relation, landmark, "a", rng)

    def _predicate_caption(self, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        """One sentence per fact, then one for the unnamed rest (``predicate_sentences``)."""
        templates = self.predicate_sentences
        sentences = []
        for k, fact in enumerate(facts):
            subject = self._phrase(fact.subject, "a", rng)
            if fact.relation and fact.object:
                template, place = templates.related, self._predicate_place(fact.relation, fact.object, rng)
            else:
                template, place = (templates.also if k else templates.first), ""
            sentences.append(template.format(subject=subject, Subject=capitalize(subject), place=place))
        if others:
            template = templates.one_other if others == 1 else templates.more_others
            sentences.append(template.format(others=self._others(others, "nom"), number=self.number_words[others]))
        return self.sentence_gap.join(sentences)

    def refexp(self, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None) -> str:
        """A definite referring phrase, optionally anchored by ``relation`` to ``other``."""
        return self._anchored(desc, "the", rng, relation, other)

    def question(
        self, skill: str, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None
    ) -> str:
        """A VQA question of ``skill`` about ``desc`` (for relation: is desc ``relation`` other?)."""
        if skill == "relation" and relation and other:
            return self._relation_question(desc, relation, other, rng)
        templates = self.questions.get(skill)
        if templates is None:
            raise ValueError(f"unknown question skill {skill!r}")
        # The phrase's draws come before the paraphrase's: seeded worlds depend on that order.
        phrase = self._question_phrase(skill, desc, rng)
        return pick(rng, templates).format(phrase=phrase)

    def _question_phrase(self, skill: str, desc: Desc, rng: random.Random) -> str:
        """What a ``questions[skill]`` template asks about: "exist" an indefinite phrase, every other
        skill the definite one. A language overrides the skills that want another form."""
        return self._phrase(desc, "a" if skill == "exist" else "the", rng)

    def _relation_question(self, desc: Desc, relation: str, other: Desc, rng: random.Random) -> str:
        phrase = self._phrase(desc, "the", rng)
        return self.relation_question.format(phrase=phrase, place=self._place(relation, other, "the", rng))

    @abstractmethod
    def statement(self, claim: Claim, rng: random.Random) -> str: ...

    def video_caption(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        if not actions:
            return self.empty_videos[frame]
        body = self._video_body(frame, actions, connective, rng)
        return self.video_frames[frame].format(body=body, Body=capitalize(body))

    def video_question(self, kind: str, rng: random.Random, desc: Desc | None = None, event: str | None = None) -> str:
        """kind "action" (what does desc do?), "turn_color" (what colour does desc turn?) or
        "which_shape" (which shape does ``event``?)."""
        if kind in ("action", "turn_color"):
            return self.video_questions[kind].format(phrase=self._phrase(desc or Desc(), "the", rng))
        if kind == "which_shape" and event:
            return self.video_questions[kind].format(event=self.which_events[event])
        raise ValueError(f"unknown video question kind {kind!r}")


def adjective_form(gender: str, plural: bool) -> int:
    """Index into an adjective's (masc. sg, fem. sg, masc. pl, fem. pl) forms (French, Spanish)."""
    return (gender == "f") + 2 * plural


class GenderedGrammar(Grammar):
    """A grammar whose nouns carry a gender (m/f/n) and an irregular plural: German, French, Spanish."""

    nouns: ClassVar[dict[str, tuple[str, str, str]]] = {}  # shape -> (gender, singular, plural)
    generic_noun: ClassVar[tuple[str, str, str]] = ("", "", "")  # when no shape is named ("object")

    def _noun(self, desc: Desc) -> tuple[str, str, str]:
        return self.nouns[desc.shape] if desc.shape else self.generic_noun

    def _gender(self, desc: Desc) -> str:
        return self._noun(desc)[0]


class RomanceGrammar(GenderedGrammar):
    """French and Spanish noun phrases: [article] [small/large] noun [colour] [texture] [medium].

    Every adjective agrees with the noun; the adjective tables hold the four forms in
    ``adjective_form`` order. Phrases are cached per (description, determiner, count): these
    languages have no synonyms here, so the cache is exact.
    """

    colors: ClassVar[dict[str, tuple[str, str, str, str]]] = {}
    textures: ClassVar[dict[str, tuple[str, str, str, str]]] = {}
    pre_sizes: ClassVar[dict[str, tuple[str, str, str, str]]] = {}  # the sizes that precede the noun
    medium: ClassVar[tuple[str, str, str, str]] = ("", "", "", "")  # "medium" follows it
    indefinite: ClassVar[tuple[str, str]] = ("", "")  # (masculine, feminine) article with its space
    definite: ClassVar[tuple[str, str]] = ("", "")

    def __init__(self) -> None:
        self._cache: dict[tuple[Desc, str, int], str] = {}

    def _np(self, desc: Desc, det: str, count: int = 1) -> str:
        """det: "a", "the", "bare" (singular, no article), "pl" (plural, no article) or "num"
        (number word; 1 takes the indefinite article)."""
        key = (desc, det, count)
        phrase = self._cache.get(key)
        if phrase is None:
            phrase = self._cache[key] = self._build_np(desc, det, count)
        return phrase

    def _build_np(self, desc: Desc, det: str, count: int) -> str:
        gender, singular, plural_noun = self._noun(desc)
        plural = det == "pl" or (det == "num" and count != 1)
        form = adjective_form(gender, plural)
        words = []
        if desc.size in self.pre_sizes:
            words.append(self.pre_sizes[desc.size][form])
        words.append(plural_noun if plural else singular)
        if desc.color:
            words.append(self.colors[desc.color][form])
        if desc.texture:
            words.append(self.textures[desc.texture][form])
        if desc.size == "medium":
            words.append(self.medium[form])
        body = " ".join(words)
        if det == "a" or (det == "num" and count == 1):
            return self.indefinite[gender == "f"] + body
        if det == "the":
            return self._definite(body, gender)
        if det == "num":
            return f"{self.number_words[count]} {body}"
        return body

    def _definite(self, body: str, gender: str) -> str:
        """The definite article before ``body``; French overrides it to elide ("l'étoile")."""
        return self.definite[gender == "f"] + body

    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        return self._np(desc, det)
