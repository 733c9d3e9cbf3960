"""English: the canonical language, with meaning-preserving synonyms and varied constructions.

Synonyms are chosen per use from ``rng`` (gray/grey, disc for a filled circle, "left of"/"to the
left of"), so paraphrases of one plan read differently while saying the same thing. Canonical
VQA answers use the first (American) form of every word.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import STAY, Action, Claim, Desc, Grammar, PredicateSentences, capitalize, pick

# First entry of every tuple is the canonical word (VQA answers use it).
_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "hexagon": ("hexagon",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross",),
    "heart": ("heart",),
    "pentagon": ("pentagon",),
    "oval": ("oval", "ellipse"),
}
_PLURALS = {"cross": "crosses", "rhombus": "rhombuses", "object": "objects"}
_COLORS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "orange": ("orange",),
    "purple": ("purple",),
    "pink": ("pink",),
    "brown": ("brown",),
    "gray": ("gray", "grey"),
    "white": ("white",),
    "black": ("black",),
    "cyan": ("cyan",),
}
_SIZES: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium", "medium-sized"),
    "large": ("large", "big"),
}
_TEXTURES: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain"),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot"),
    "checkered": ("checkered", "checked"),
}
_RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
    "next to": ("next to", "beside"),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Video events: (third person singular, bare infinitive) paraphrases; {c} is the new colour.
_EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "move_left": (("moves to the left", "move to the left"), ("moves left", "move left")),
    "move_right": (("moves to the right", "move to the right"), ("moves right", "move right")),
    "move_up": (("moves up", "move up"), ("moves upward", "move upward")),
    "move_down": (("moves down", "move down"), ("moves downward", "move downward")),
    "grow": (("grows", "grow"), ("gets bigger", "get bigger")),
    "shrink": (("shrinks", "shrink"), ("gets smaller", "get smaller")),
    "change_color": (("turns {c}", "turn {c}"), ("changes color to {c}", "change color to {c}")),
    STAY: (("stays still", "stay still"), ("does not move", "not move")),
}
_SIDES = {"left": ("left", "right"), "right": ("right", "left")}


def _plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


class English(Grammar):
    code = "en"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": {k: v[0] for k, v in _COLORS.items()},
        "shape": {k: v[0] for k, v in _SHAPES.items()},
        "size": {"small": "small", "medium": "medium", "large": "large"},
        "yesno": {"yes": "yes", "no": "no"},
        "action": {
            "move_left": "move left",
            "move_right": "move right",
            "move_up": "move up",
            "move_down": "move down",
            "grow": "grow",
            "shrink": "shrink",
            "change_color": "change color",
        },
    }
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "There are no shapes.",
        "we_see": "We can see an empty background.",
        "showing": "An image showing only the background.",
        "predicate": "The picture is empty.",
        "bare": "An empty background.",
    }
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {
        "there_is": ("There is {body}.",),
        "we_see": ("We can see {body}.", "We see {body}.", "You can see {body}."),
        "showing": ("An image showing {body}.", "A picture showing {body}.", "A picture of {body}."),
        "bare": ("{Body}.",),
    }
    predicate_sentences = PredicateSentences(
        related="{Subject} is {place}.",
        first="{Subject} is visible.",
        also="{Subject} is also visible.",
        one_other="There is also {others}.",
        more_others="There are also {others}.",
    )
    # The first words must stay the VQA v2 question_type prefix ("what color is the", ...).
    # "count" is asked in ``question``.
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("What color is {phrase}?",),
        "shape": ("What shape is {phrase}?",),
        "size": ("What size is {phrase}?",),
        "exist": ("Is there {phrase}?", "Is there {phrase} in the picture?", "Is there {phrase} in the image?"),
    }
    relation_question = "Is {phrase} {place}?"
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "Nothing happens.",
        "in_video": "In this video, nothing happens.",
        "clip": "A clip in which nothing happens.",
        "we_see": "We see an empty background.",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{Body}.",
        "in_video": "In this video, {body}.",
        "clip": "A clip in which {body}.",
        "we_see": "We see {body}.",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "What does {phrase} do?",
        "turn_color": "What color does {phrase} turn?",
        "which_shape": "Which shape {event}?",
    }
    which_events: ClassVar[dict[str, str]] = {
        "move_left": "moves to the left",
        "move_right": "moves to the right",
        "move_up": "moves up",
        "move_down": "moves down",
        "grow": "grows",
        "shrink": "shrinks",
        "change_color": "changes color",
    }

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc, det: str, rng: random.Random, count: int = 1) -> str:
        """det: "a" (indefinite), "the", "pl" (bare plural) or "num" (``count`` as a word)."""
        words = []
        if desc.size:
            words.append(pick(rng, _SIZES[desc.size]))
        if desc.texture:
            words.append(pick(rng, _TEXTURES[desc.texture]))
        if desc.color:
            words.append(pick(rng, _COLORS[desc.color]))
        noun = pick(rng, _SHAPES[desc.shape]) if desc.shape else "object"
        if det == "pl" or (det == "num" and count != 1):
            noun = _plural(noun)
        words.append(noun)
        body = " ".join(words)
        if det == "a":
            return ("an " if body[0] in "aeiou" else "a ") + body
        if det == "the":
            return "the " + body
        if det == "num":
            return f"{NUMBER_WORDS[count]} {body}"
        return body

    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        return self._np(desc, det, rng)

    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        relation_words = pick(rng, _RELATIONS[relation])  # drawn before the landmark's words
        return f"{relation_words} {self._np(landmark, det, rng)}"

    def _predicate_place(self, relation: str, landmark: Desc, rng: random.Random) -> str:
        # Here, unlike everywhere else, the landmark's words have always been drawn before the
        # relation's; seeded worlds must not change, so the order stays.
        landmark_phrase = self._np(landmark, "a", rng)
        return f"{pick(rng, _RELATIONS[relation])} {landmark_phrase}"

    def _others(self, n: int, case: str) -> str:
        return f"{NUMBER_WORDS[n]} other {'shape' if n == 1 else 'shapes'}"

    def _join(self, items: Sequence[str], nested: bool = False) -> str:
        """Joins as "a, b, and c"; ``nested`` also puts a comma before "and" for two items (to end a
        relation's scope, or to set off a clause with its own "and")."""
        if len(items) == 1:
            return items[0]
        if len(items) == 2:
            return f"{items[0]}{',' if nested else ''} and {items[1]}"
        return ", ".join(items[:-1]) + ", and " + items[-1]

    # ------------------------------------------------------------------ VQA
    def question(
        self, skill: str, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None
    ) -> str:
        if skill == "count":
            # Unlike the shared paraphrases, the ending is drawn before the noun phrase's synonyms.
            ending = pick(rng, ("are there?", "can you see?", "are in the picture?"))
            return f"How many {self._np(desc, 'pl', rng)} {ending}"
        return super().question(skill, desc, rng, relation, other)

    # ------------------------------------------------------------------ statements (NLVR2, XVNLI)
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        side = "" if scope in ("image", "both") else f"the {scope} image"
        if kind == "exist":
            if scope == "image":
                return f"There is {self._np(desc, 'a', rng)}."
            subject = "Both images contain" if scope == "both" else f"{capitalize(side)} contains"
            return f"{subject} {self._np(desc, 'a', rng)}."
        if kind == "count":
            phrase = self._np(desc, "num", rng, claim.number)
            if scope == "image":
                return f"There {'is' if claim.number == 1 else 'are'} exactly {phrase}."
            subject = "Each image contains" if scope == "both" else f"{capitalize(side)} contains"
            return f"{subject} exactly {phrase}."
        if kind == "none":
            if scope == "image":
                return f"There are no {self._np(desc, 'pl', rng)}."
            if scope == "both":
                return f"Neither image contains {self._np(desc, 'a', rng)}."
            return f"{capitalize(side)} contains no {self._np(desc, 'pl', rng)}."
        if kind == "more":
            this, that = _SIDES[scope]
            return f"There are more {self._np(desc, 'pl', rng)} in the {this} image than in the {that} image."
        if kind == "relation":
            core = f"{self._np(desc, 'a', rng)} is {self._place(claim.relation or '', claim.other or Desc(), 'a', rng)}"
            return capitalize(core) + "." if scope == "image" else f"In {side}, {core}."
        return self._neutral(kind, desc, rng)

    def _neutral(self, kind: str, desc: Desc, rng: random.Random) -> str:
        if kind == "drawn_by_child":
            return "The picture was drawn by a child."
        predicate = {"wood": "is made of wood", "plastic": "is made of plastic", "heavy": "is heavy"}[kind]
        return f"{capitalize(self._np(desc, 'the', rng))} {predicate}."

    # ------------------------------------------------------------------ video
    def _verb_phrase(self, action: Action, form: int, rng: random.Random) -> str:
        """form 0: third person singular ("moves left"), 1: bare infinitive ("move left")."""
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))][form]
            if to_color:
                phrase = phrase.replace("{c}", pick(rng, _COLORS[to_color]))
            phrases.append(phrase)
        return " and ".join(phrases)

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        clauses = []
        for k, action in enumerate(actions):
            # After "we see" the verbs are bare infinitives, except inside a "while" clause.
            bare = frame == "we_see" and (k == 0 or connective == "and")
            clauses.append(f"{self._np(action.subject, 'a', rng)} {self._verb_phrase(action, int(bare), rng)}")
        if connective == "while" and len(clauses) > 1:
            return f"{clauses[0]} {pick(rng, ('while', 'as'))} {' and '.join(clauses[1:])}"
        # a comma keeps "X moves left and turns red, and Y grows" readable
        return self._join(clauses, nested=any(len(a.events) > 1 for a in actions))
