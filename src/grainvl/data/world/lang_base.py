"""What the world says, independent of language: semantic records and the grammar interface.

``annotate.py`` and ``language.py`` decide *what* to say with these records (which object, which
attributes, which relation, which sentence frame); each ``lang_xx`` grammar decides *how* to say
it in its own word order and morphology. Because one record is realised in every language, the
outputs are translations of each other, which is what makes them parallel sentence pairs.

The records are NamedTuples: they are hashable (plans are deduplicated with them, grammars cache
noun phrases keyed by them) and cheap to build in the annotation hot path.
"""

from __future__ import annotations

import random
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


class Grammar:
    """One language's realisation of the semantic records. Subclasses set the tables and methods.

    ``answers[kind][value]`` gives the canonical short answer for kind in color/shape/size/yesno/
    action (values are the ontology keys, "yes"/"no", or VIDEO_EVENTS); numbers are digits in
    every language, as VQA v2 normalises them.
    """

    code: str = ""
    answers: ClassVar[dict[str, dict[str, str]]] = {}

    def answer(self, kind: str, value: str | int) -> str:
        if kind == "number":
            return str(value)
        return self.answers[kind][str(value)]

    def region(self, desc: Desc, definite: bool, rng: random.Random) -> str:
        """A lower-case noun phrase (``a large striped red star``); German keeps its nouns capitalised."""
        raise NotImplementedError

    def caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        """A caption in ``frame`` mentioning ``facts`` and ``others`` unnamed further shapes."""
        raise NotImplementedError

    def refexp(self, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None) -> str:
        """A definite referring phrase, optionally anchored by ``relation`` to ``other``."""
        raise NotImplementedError

    def question(
        self, skill: str, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None
    ) -> str:
        """A VQA question of ``skill`` about ``desc`` (for relation: is desc ``relation`` other?)."""
        raise NotImplementedError

    def statement(self, claim: Claim, rng: random.Random) -> str:
        raise NotImplementedError

    def video_caption(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        raise NotImplementedError

    def video_question(self, kind: str, rng: random.Random, desc: Desc | None = None, event: str | None = None) -> str:
        """kind "action" (what does desc do?), "turn_color" (what colour does desc turn?) or
        "which_shape" (which shape does ``event``?)."""
        raise NotImplementedError
