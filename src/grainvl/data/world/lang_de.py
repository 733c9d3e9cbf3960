"""German: grammatical gender, four-case articles, strong/mixed/weak adjective endings.

Noun phrases are declined for case (nominative subject, accusative after "es gibt"/"enthält",
dative after the local prepositions "links von", "über", "neben" ...), with "von dem" contracted
to "vom". Predicative adjectives ("wird blau") stay uninflected. Phrases are cached per
(description, determiner, case, count): German has no synonyms here, so the cache is exact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import (
    OTHER_SIDE,
    STAY,
    Action,
    Claim,
    Desc,
    GenderedGrammar,
    PredicateSentences,
    capitalize,
)

# shape -> (gender, singular, plural); gender m/f/n.
_NOUNS: dict[str, tuple[str, str, str]] = {
    "circle": ("m", "Kreis", "Kreise"),
    "square": ("n", "Quadrat", "Quadrate"),
    "triangle": ("n", "Dreieck", "Dreiecke"),
    "star": ("m", "Stern", "Sterne"),
    "hexagon": ("n", "Sechseck", "Sechsecke"),
    "diamond": ("f", "Raute", "Rauten"),
    "cross": ("n", "Kreuz", "Kreuze"),
    "heart": ("n", "Herz", "Herzen"),
    "pentagon": ("n", "Fünfeck", "Fünfecke"),
    "oval": ("n", "Oval", "Ovale"),
}
_GENERIC = ("n", "Objekt", "Objekte")
# "Herz" keeps its old dative singular "dem Herzen"; every other noun's dative equals its nominative.
_DATIVE_SINGULAR = {"Herz": "Herzen"}
# Attributive stems (declined) and predicative/answer forms (uninflected).
_COLOR_STEMS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "yellow": "gelb",
    "orange": "orangefarben",
    "purple": "violett",
    "pink": "rosafarben",
    "brown": "braun",
    "gray": "grau",
    "white": "weiß",
    "black": "schwarz",
    "cyan": "türkisfarben",
}
_COLOR_WORDS = {
    "red": "rot",
    "green": "grün",
    "blue": "blau",
    "yellow": "gelb",
    "orange": "orange",
    "purple": "violett",
    "pink": "rosa",
    "brown": "braun",
    "gray": "grau",
    "white": "weiß",
    "black": "schwarz",
    "cyan": "türkis",
}
_SIZE_STEMS = {"small": "klein", "medium": "mittelgroß", "large": "groß"}
_TEXTURE_STEMS = {"solid": "einfarbig", "striped": "gestreift", "dotted": "gepunktet", "checkered": "kariert"}

# (article kind, case) -> per gender (article, adjective ending).
_INDEFINITE = {
    "nom": {"m": ("ein", "er"), "f": ("eine", "e"), "n": ("ein", "es")},
    "acc": {"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")},
    "dat": {"m": ("einem", "en"), "f": ("einer", "en"), "n": ("einem", "en")},
}
_DEFINITE = {
    "nom": {"m": ("der", "e"), "f": ("die", "e"), "n": ("das", "e")},
    "acc": {"m": ("den", "en"), "f": ("die", "e"), "n": ("das", "e")},
    "dat": {"m": ("dem", "en"), "f": ("der", "en"), "n": ("dem", "en")},
}
NUMBER_WORDS = ("null", "ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn")
_RELATIONS = {"left of": "links von", "right of": "rechts von", "above": "über", "below": "unter", "next to": "neben"}
_SIDE_ADJ = {"left": ("linke", "linken"), "right": ("rechte", "rechten")}  # (nom neuter weak, dat weak)

# Video events: (main clause, verb-final subordinate clause); {c} is the new colour.
_EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "move_left": (("bewegt sich nach links", "sich nach links bewegt"),),
    "move_right": (("bewegt sich nach rechts", "sich nach rechts bewegt"),),
    "move_up": (("bewegt sich nach oben", "sich nach oben bewegt"),),
    "move_down": (("bewegt sich nach unten", "sich nach unten bewegt"),),
    "grow": (("wächst", "wächst"), ("wird größer", "größer wird")),
    "shrink": (("schrumpft", "schrumpft"), ("wird kleiner", "kleiner wird")),
    "change_color": (("wird {c}", "{c} wird"), ("färbt sich {c}", "sich {c} färbt")),
    STAY: (("bewegt sich nicht", "sich nicht bewegt"),),
}


class German(GenderedGrammar):
    code = "de"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": dict(_COLOR_WORDS),
        "shape": {k: v[1] for k, v in _NOUNS.items()},
        "size": {"small": "klein", "medium": "mittelgroß", "large": "groß"},
        "yesno": {"yes": "ja", "no": "nein"},
        "action": {
            "move_left": "nach links bewegen",
            "move_right": "nach rechts bewegen",
            "move_up": "nach oben bewegen",
            "move_down": "nach unten bewegen",
            "grow": "wachsen",
            "shrink": "schrumpfen",
            "change_color": "Farbe wechseln",
        },
    }
    nouns = _NOUNS
    generic_noun = _GENERIC
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "Es gibt keine Formen.",
        "we_see": "Man sieht einen leeren Hintergrund.",
        "showing": "Ein Bild, das nur den Hintergrund zeigt.",
        "predicate": "Das Bild ist leer.",
        "bare": "Ein leerer Hintergrund.",
    }
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {
        "there_is": ("Es gibt {body}.",),
        "we_see": ("Man sieht {body}.",),
        "showing": ("Ein Bild mit {body}.",),
        "bare": ("{Body}.",),
    }
    # "es gibt" and "man sieht" take the accusative, "mit" the dative, a bare phrase the nominative.
    frame_cases: ClassVar[dict[str, str]] = {"there_is": "acc", "we_see": "acc", "showing": "dat"}
    predicate_sentences = PredicateSentences(
        related="{Subject} ist {place}.",
        first="{Subject} ist zu sehen.",
        also="Außerdem ist {subject} zu sehen.",
        one_other="Dazu kommt {others}.",
        more_others="Dazu kommen {others}.",
    )
    list_separators = (", ", " und ")  # German lists take no comma before "und"
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("Welche Farbe hat {phrase}?",),
        "shape": ("Welche Form hat {phrase}?",),
        "size": ("Wie groß ist {phrase}?",),
        "count": ("Wie viele {phrase} gibt es?",),
        "exist": ("Gibt es {phrase}?",),
    }
    relation_question = "Ist {phrase} {place}?"
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "Nichts passiert.",
        "in_video": "Das Video zeigt, dass nichts passiert.",
        "clip": "Ein Clip, in dem nichts passiert.",
        "we_see": "Man sieht einen leeren Hintergrund.",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{Body}.",
        "in_video": "Das Video zeigt, wie {body}.",
        "clip": "Ein Clip, in dem {body}.",
        "we_see": "Man sieht, wie {body}.",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "Was macht {phrase}?",
        "turn_color": "Welche Farbe bekommt {phrase}?",
        "which_shape": "Welche Form {event}?",
    }
    which_events: ClassVar[dict[str, str]] = {
        "move_left": "bewegt sich nach links",
        "move_right": "bewegt sich nach rechts",
        "move_up": "bewegt sich nach oben",
        "move_down": "bewegt sich nach unten",
        "grow": "wächst",
        "shrink": "schrumpft",
        "change_color": "ändert ihre Farbe",
    }

    def __init__(self) -> None:
        self._cache: dict[tuple[Desc, str, str, int], str] = {}

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc, det: str, case: str = "nom", count: int = 1) -> str:
        """det: "a" (ein), "the" (der), "num" (``count``; 1 reads "ein"), "strong" (bare plural:
        "rote Kreise", after numbers/viele/mehr) or "weak" (plural after "keine": "roten Kreise")."""
        key = (desc, det, case, count)
        phrase = self._cache.get(key)
        if phrase is None:
            phrase = self._cache[key] = self._build_np(desc, det, case, count)
        return phrase

    def _build_np(self, desc: Desc, det: str, case: str, count: int) -> str:
        gender, singular, plural = self._noun(desc)
        if det == "num" and count == 1:
            det = "a"
        if det in ("a", "the"):
            article, ending = (_INDEFINITE if det == "a" else _DEFINITE)[case][gender]
            noun = _DATIVE_SINGULAR.get(singular, singular) if case == "dat" else singular
        else:
            article = NUMBER_WORDS[count] if det == "num" else ""
            ending = "en" if det == "weak" or case == "dat" else "e"
            noun = plural + "n" if case == "dat" and plural[-1] not in "ns" else plural
        adjectives = [
            stem + ending
            for stem in (
                _SIZE_STEMS.get(desc.size or ""),
                _TEXTURE_STEMS.get(desc.texture or ""),
                _COLOR_STEMS.get(desc.color or ""),
            )
            if stem
        ]
        return " ".join(([article] if article else []) + adjectives + [noun])

    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        return self._np(desc, det, case)

    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        """The local phrase with its dative object; "von dem" contracts to "vom"."""
        preposition, obj = _RELATIONS[relation], self._np(landmark, det, "dat")
        if preposition.endswith(" von") and obj.startswith("dem "):
            return f"{preposition[:-4]} vom {obj[4:]}"
        return f"{preposition} {obj}"

    def _others(self, n: int, case: str) -> str:
        if n == 1:
            return "einer weiteren Form" if case == "dat" else "eine weitere Form"
        return f"{NUMBER_WORDS[n]} {'weiteren Formen' if case == 'dat' else 'weitere Formen'}"

    # ------------------------------------------------------------------ VQA
    def _question_phrase(self, skill: str, desc: Desc, rng: random.Random) -> str:
        if skill == "count":
            return self._np(desc, "strong")  # "Wie viele rote Kreise"
        if skill == "exist":
            return self._np(desc, "a", "acc")  # the object of "gibt es"
        return super()._question_phrase(skill, desc, rng)

    # ------------------------------------------------------------------ statements
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        # Subject and verb of "the left image contains ..." (or of the existential for one image).
        if scope == "image":
            opener = "Es gibt"
        elif scope == "both":
            opener = "Beide Bilder enthalten" if kind != "count" else "Jedes Bild enthält"
        else:
            opener = f"Das {_SIDE_ADJ[scope][0]} Bild enthält"
        if kind == "exist":
            return f"{opener} {self._np(desc, 'a', 'acc')}."
        if kind == "count":
            return f"{opener} genau {self._np(desc, 'num', 'acc', claim.number)}."
        if kind == "none":
            if scope == "both":
                return f"Keines der beiden Bilder enthält {self._np(desc, 'a', 'acc')}."
            return f"{opener} keine {self._np(desc, 'weak', 'acc')}."
        if kind == "more":
            this, that = _SIDE_ADJ[scope][1], _SIDE_ADJ[OTHER_SIDE[scope]][1]
            return f"Im {this} Bild gibt es mehr {self._np(desc, 'strong', 'acc')} als im {that} Bild."
        if kind == "relation":
            subject = self._np(desc, "a")
            place = self._place(claim.relation or "", claim.other or Desc(), "a", rng)
            if scope == "image":
                return f"{capitalize(subject)} ist {place}."
            return f"Im {_SIDE_ADJ[scope][1]} Bild ist {subject} {place}."  # verb second after the adverbial
        return self._neutral(kind, desc)

    def _neutral(self, kind: str, desc: Desc) -> str:
        if kind == "drawn_by_child":
            return "Das Bild wurde von einem Kind gezeichnet."
        predicate = {"wood": "ist aus Holz", "plastic": "ist aus Kunststoff", "heavy": "ist schwer"}[kind]
        return f"{capitalize(self._np(desc, 'the'))} {predicate}."

    # ------------------------------------------------------------------ video
    def _verb_phrase(self, action: Action, subordinate: bool, rng: random.Random) -> str:
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))][int(subordinate)]
            if to_color:
                phrase = phrase.replace("{c}", _COLOR_WORDS[to_color])
            phrases.append(phrase)
        return " und ".join(phrases)

    def _clause(self, action: Action, subordinate: bool, rng: random.Random) -> str:
        return f"{self._np(action.subject, 'a')} {self._verb_phrase(action, subordinate, rng)}"

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        # "Das Video zeigt, wie ...", "Ein Clip, in dem ..." and "Man sieht, wie ..." open
        # subordinate clauses (verb last); a plain caption starts with a main clause.
        first_sub = frame != "plain"
        first = self._clause(actions[0], first_sub, rng)
        rest = [self._clause(a, connective == "while" or first_sub, rng) for a in actions[1:]]
        if not rest:
            return first
        if connective == "while":
            return f"{first}, während {self._join(rest)}"
        return self._join([first, *rest])
