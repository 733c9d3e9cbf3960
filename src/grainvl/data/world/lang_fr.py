"""French: gender and number agreement, post-nominal colour/texture adjectives, elision and contraction.

Word order is [article] [petit/grand] noun [colour] [texture] [de taille moyenne]: "une grande
étoile rouge rayée". "le"/"la" elide before a vowel ("l'étoile"), "de" contracts with the
definite article ("à gauche du carré", "des"), and "de"/"que" elide ("d'un", "qu'une").
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
    PredicateSentences,
    RomanceGrammar,
    adjective_form,
    capitalize,
)

# shape -> (gender, singular, plural)
_NOUNS: dict[str, tuple[str, str, str]] = {
    "circle": ("m", "cercle", "cercles"),
    "square": ("m", "carré", "carrés"),
    "triangle": ("m", "triangle", "triangles"),
    "star": ("f", "étoile", "étoiles"),
    "hexagon": ("m", "hexagone", "hexagones"),
    "diamond": ("m", "losange", "losanges"),
    "cross": ("f", "croix", "croix"),
    "heart": ("m", "cœur", "cœurs"),
    "pentagon": ("m", "pentagone", "pentagones"),
    "oval": ("m", "ovale", "ovales"),
}
_GENERIC = ("m", "objet", "objets")
# Adjective forms indexed by adjective_form(gender, plural): masc. sg, fem. sg, masc. pl, fem. pl.
_COLORS: dict[str, tuple[str, str, str, str]] = {
    "red": ("rouge", "rouge", "rouges", "rouges"),
    "green": ("vert", "verte", "verts", "vertes"),
    "blue": ("bleu", "bleue", "bleus", "bleues"),
    "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
    "orange": ("orange", "orange", "orange", "orange"),  # colour nouns used as adjectives are invariable
    "purple": ("violet", "violette", "violets", "violettes"),
    "pink": ("rose", "rose", "roses", "roses"),
    "brown": ("marron", "marron", "marron", "marron"),
    "gray": ("gris", "grise", "gris", "grises"),
    "white": ("blanc", "blanche", "blancs", "blanches"),
    "black": ("noir", "noire", "noirs", "noires"),
    "cyan": ("cyan", "cyan", "cyan", "cyan"),
}
_PRE_SIZES = {"small": ("petit", "petite", "petits", "petites"), "large": ("grand", "grande", "grands", "grandes")}
_MEDIUM = ("de taille moyenne",) * 4  # "un moyen cercle" is not idiomatic; the size goes after the noun
_TEXTURES: dict[str, tuple[str, str, str, str]] = {
    "solid": ("uni", "unie", "unis", "unies"),
    "striped": ("rayé", "rayée", "rayés", "rayées"),
    "dotted": ("à pois", "à pois", "à pois", "à pois"),
    "checkered": ("à carreaux", "à carreaux", "à carreaux", "à carreaux"),
}
NUMBER_WORDS = ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix")
_RELATIONS = {
    "left of": "à gauche",
    "right of": "à droite",
    "above": "au-dessus",
    "below": "en dessous",
    "next to": "à côté",
}
_VOWELS = frozenset("aeiouyéèêàâîôûœh")  # "h" is mute in every word of this lexicon (hexagone)
_SIDE = {"left": "de gauche", "right": "de droite"}

# Video events: (third person singular, infinitive); {c} is the new colour, agreed with the subject.
_EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "move_left": (("se déplace vers la gauche", "se déplacer vers la gauche"),),
    "move_right": (("se déplace vers la droite", "se déplacer vers la droite"),),
    "move_up": (("monte", "monter"), ("se déplace vers le haut", "se déplacer vers le haut")),
    "move_down": (("descend", "descendre"), ("se déplace vers le bas", "se déplacer vers le bas")),
    "grow": (("grandit", "grandir"),),
    "shrink": (("rétrécit", "rétrécir"),),
    "change_color": (("devient {c}", "devenir {c}"),),
    STAY: (("reste immobile", "rester immobile"),),
}


def _elides(word: str) -> bool:
    return word[:1] in _VOWELS


def _de(phrase: str) -> str:
    """The preposition "de" + phrase, with contraction (du, des) and elision (d'un, de l')."""
    if phrase.startswith("le "):
        return "du " + phrase[3:]
    if phrase.startswith("les "):
        return "des " + phrase[4:]
    return ("d'" if _elides(phrase) else "de ") + phrase


def _que(phrase: str) -> str:
    return ("qu'" if _elides(phrase) else "que ") + phrase


class French(RomanceGrammar):
    code = "fr"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": {k: v[0] for k, v in _COLORS.items()},
        "shape": {k: v[1] for k, v in _NOUNS.items()},
        "size": {"small": "petit", "medium": "moyen", "large": "grand"},
        "yesno": {"yes": "oui", "no": "non"},
        "action": {
            "move_left": "aller à gauche",
            "move_right": "aller à droite",
            "move_up": "monter",
            "move_down": "descendre",
            "grow": "grandir",
            "shrink": "rétrécir",
            "change_color": "changer de couleur",
        },
    }
    nouns = _NOUNS
    generic_noun = _GENERIC
    colors = _COLORS
    textures = _TEXTURES
    pre_sizes = _PRE_SIZES
    medium = _MEDIUM
    indefinite = ("un ", "une ")
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "Il n'y a aucune forme.",
        "we_see": "On voit un fond vide.",
        "showing": "Une image montrant seulement le fond.",
        "predicate": "L'image est vide.",
        "bare": "Un fond vide.",
    }
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {
        "there_is": ("Il y a {body}.",),
        "we_see": ("On voit {body}.",),
        "showing": ("Une image montrant {body}.",),
        "bare": ("{Body}.",),
    }
    predicate_sentences = PredicateSentences(
        related="{Subject} est {place}.",
        first="{Subject} est visible.",
        also="On voit aussi {subject}.",
        one_other="Il y a aussi {others}.",
        more_others="Il y a aussi {others}.",
    )
    list_separators = (", ", " et ")
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("De quelle couleur est {phrase} ?",),
        "shape": ("Quelle est la forme {phrase} ?",),
        "size": ("Quelle est la taille {phrase} ?",),
        "count": ("Combien {phrase} y a-t-il ?",),
        "exist": ("Y a-t-il {phrase} ?",),
    }
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "Rien ne se passe.",
        "in_video": "Dans cette vidéo, rien ne se passe.",
        "clip": "Une séquence où rien ne se passe.",
        "we_see": "On voit un fond vide.",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{Body}.",
        "in_video": "Dans cette vidéo, {body}.",
        "clip": "Une séquence où {body}.",
        "we_see": "On voit {body}.",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "Que fait {phrase} ?",
        "turn_color": "De quelle couleur devient {phrase} ?",
        "which_shape": "Quelle forme {event} ?",
    }
    which_events: ClassVar[dict[str, str]] = {
        "move_left": "se déplace vers la gauche",
        "move_right": "se déplace vers la droite",
        "move_up": "monte",
        "move_down": "descend",
        "grow": "grandit",
        "shrink": "rétrécit",
        "change_color": "change de couleur",
    }

    # ------------------------------------------------------------------ noun phrases
    def _definite(self, body: str, gender: str) -> str:
        return ("l'" if _elides(body) else "la " if gender == "f" else "le ") + body

    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        return f"{_RELATIONS[relation]} {_de(self._np(landmark, det))}"

    def _others(self, n: int, case: str) -> str:
        return "une autre forme" if n == 1 else f"{NUMBER_WORDS[n]} autres formes"

    # ------------------------------------------------------------------ VQA
    def _question_phrase(self, skill: str, desc: Desc, rng: random.Random) -> str:
        # "la forme du cercle", "combien d'étoiles": these skills ask with "de" + the phrase.
        if skill in ("shape", "size"):
            return _de(self._np(desc, "the"))
        if skill == "count":
            return _de(self._np(desc, "pl"))
        return super()._question_phrase(skill, desc, rng)

    def _relation_question(self, desc: Desc, relation: str, other: Desc, rng: random.Random) -> str:
        pronoun = "elle" if self._gender(desc) == "f" else "il"  # complex inversion: "Le cercle est-il ...?"
        place = self._place(relation, other, "the", rng)
        return f"{capitalize(self._np(desc, 'the'))} est-{pronoun} {place} ?"

    # ------------------------------------------------------------------ statements
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        side = f"l'image {_SIDE[scope]}" if scope in _SIDE else ""
        if kind == "exist":
            if scope == "image":
                return f"Il y a {self._np(desc, 'a')}."
            subject = "Les deux images contiennent" if scope == "both" else f"{capitalize(side)} contient"
            return f"{subject} {self._np(desc, 'a')}."
        if kind == "count":
            phrase = self._np(desc, "num", claim.number)
            if scope == "image":
                return f"Il y a exactement {phrase}."
            subject = "Chaque image contient" if scope == "both" else f"{capitalize(side)} contient"
            return f"{subject} exactement {phrase}."
        if kind == "none":
            # "aucun"/"aucune" agrees with the noun and takes the singular.
            phrase = ("aucune " if self._gender(desc) == "f" else "aucun ") + self._np(desc, "bare")
            if scope == "image":
                return f"Il n'y a {phrase}."
            if scope == "both":
                return f"Aucune des deux images ne contient {_de(self._np(desc, 'bare'))}."
            return f"{capitalize(side)} ne contient {phrase}."
        if kind == "more":
            other_side = _SIDE[OTHER_SIDE[scope]]
            return f"Il y a plus {_de(self._np(desc, 'pl'))} dans l'image {_SIDE[scope]} que dans l'image {other_side}."
        if kind == "relation":
            core = f"{self._np(desc, 'a')} est {self._place(claim.relation or '', claim.other or Desc(), 'a', rng)}"
            return capitalize(core) + "." if scope == "image" else f"Dans {side}, {core}."
        return self._neutral(kind, desc)

    def _neutral(self, kind: str, desc: Desc) -> str:
        if kind == "drawn_by_child":
            return "L'image a été dessinée par un enfant."
        heavy = "lourde" if self._gender(desc) == "f" else "lourd"
        predicate = {"wood": "est en bois", "plastic": "est en plastique", "heavy": f"est {heavy}"}[kind]
        return f"{capitalize(self._np(desc, 'the'))} {predicate}."

    # ------------------------------------------------------------------ video
    def _verb_phrase(self, action: Action, infinitive: bool, rng: random.Random) -> str:
        form = adjective_form(self._gender(action.subject), False)
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))][int(infinitive)]
            if to_color:
                phrase = phrase.replace("{c}", _COLORS[to_color][form])
            phrases.append(phrase)
        return " et ".join(phrases)

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        clauses = []
        for k, action in enumerate(actions):
            # "On voit un cercle se déplacer ..." takes infinitives, except inside "tandis que".
            infinitive = frame == "we_see" and (k == 0 or connective == "and")
            clauses.append(f"{self._np(action.subject, 'a')} {self._verb_phrase(action, infinitive, rng)}")
        if connective == "while" and len(clauses) > 1:
            return f"{clauses[0]}, tandis {_que(self._join(clauses[1:]))}"
        return self._join(clauses)
