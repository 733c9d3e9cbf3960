"""French: gender and number agreement, post-nominal colour/texture adjectives, elision and contraction.

Word order is [article] [petit/grand] noun [colour] [texture] [de taille moyenne]: "une grande
étoile rouge rayée". "le"/"la" elide before a vowel ("l'étoile"), "de" contracts with the
definite article ("à gauche du carré", "des"), and "de"/"que" elide ("d'un", "qu'une").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import STAY, Action, Claim, Desc, Fact, Grammar, capitalize

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
# Adjective forms indexed by _form(gender, plural): masc. sg, fem. sg, masc. pl, fem. pl.
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
_MEDIUM = "de taille moyenne"  # "un moyen cercle" is not idiomatic; the size goes after the noun
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
_OTHER_SIDE = {"left": "right", "right": "left"}

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
_WHICH_EVENT = {
    "move_left": "se déplace vers la gauche",
    "move_right": "se déplace vers la droite",
    "move_up": "monte",
    "move_down": "descend",
    "grow": "grandit",
    "shrink": "rétrécit",
    "change_color": "change de couleur",
}


def _form(gender: str, plural: bool) -> int:
    return (gender == "f") + 2 * plural


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


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " et " + items[-1]


class French(Grammar):
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

    def __init__(self) -> None:
        self._cache: dict[tuple[Desc, str, int], str] = {}

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc, det: str, count: int = 1) -> str:
        """det: "a" (un/une), "the" (le/la/l'), "bare" (no article, singular), "pl" (no article,
        plural) or "num" (number word; 1 is un/une)."""
        key = (desc, det, count)
        phrase = self._cache.get(key)
        if phrase is None:
            phrase = self._cache[key] = self._build_np(desc, det, count)
        return phrase

    def _build_np(self, desc: Desc, det: str, count: int) -> str:
        gender, singular, plural_noun = _NOUNS[desc.shape] if desc.shape else _GENERIC
        plural = det == "pl" or (det == "num" and count != 1)
        form = _form(gender, plural)
        words = []
        if desc.size in _PRE_SIZES:
            words.append(_PRE_SIZES[desc.size][form])
        words.append(plural_noun if plural else singular)
        if desc.color:
            words.append(_COLORS[desc.color][form])
        if desc.texture:
            words.append(_TEXTURES[desc.texture][form])
        if desc.size == "medium":
            words.append(_MEDIUM)
        body = " ".join(words)
        if det == "a" or (det == "num" and count == 1):
            return ("une " if gender == "f" else "un ") + body
        if det == "the":
            return ("l'" if _elides(body) else "la " if gender == "f" else "le ") + body
        if det == "num":
            return f"{NUMBER_WORDS[count]} {body}"
        return body

    def _gender(self, desc: Desc) -> str:
        return _NOUNS[desc.shape][0] if desc.shape else _GENERIC[0]

    def _rel(self, relation: str, phrase: str) -> str:
        return f"{_RELATIONS[relation]} {_de(phrase)}"

    def _others(self, n: int) -> str:
        return "une autre forme" if n == 1 else f"{NUMBER_WORDS[n]} autres formes"

    def region(self, desc: Desc, definite: bool, rng: random.Random) -> str:
        return self._np(desc, "the" if definite else "a")

    # ------------------------------------------------------------------ captions
    def caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        if not facts:
            return _EMPTY[frame]
        if frame == "predicate":
            return self._predicate_caption(facts, others)
        items = [self._fact_phrase(fact) for fact in facts]
        if others:
            items.append(self._others(others))
        body = _join(items)
        if frame == "there_is":
            return f"Il y a {body}."
        if frame == "we_see":
            return f"On voit {body}."
        if frame == "showing":
            return f"Une image montrant {body}."
        return capitalize(body) + "."

    def _fact_phrase(self, fact: Fact) -> str:
        subject = self._np(fact.subject, "a")
        if fact.relation is None or fact.object is None:
            return subject
        return f"{subject} {self._rel(fact.relation, self._np(fact.object, 'a'))}"

    def _predicate_caption(self, facts: Sequence[Fact], others: int) -> str:
        sentences = []
        for k, fact in enumerate(facts):
            subject = self._np(fact.subject, "a")
            if fact.relation and fact.object:
                place = self._rel(fact.relation, self._np(fact.object, "a"))
                sentences.append(f"{capitalize(subject)} est {place}.")
            elif k == 0:
                sentences.append(f"{capitalize(subject)} est visible.")
            else:
                sentences.append(f"On voit aussi {subject}.")
        if others:
            sentences.append(f"Il y a aussi {self._others(others)}.")
        return " ".join(sentences)

    def refexp(self, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None) -> str:
        head = self._np(desc, "the")
        if relation is None or other is None:
            return head
        return f"{head} {self._rel(relation, self._np(other, 'the'))}"

    # ------------------------------------------------------------------ VQA
    def question(
        self, skill: str, desc: Desc, rng: random.Random, relation: str | None = None, other: Desc | None = None
    ) -> str:
        if skill == "color":
            return f"De quelle couleur est {self._np(desc, 'the')} ?"
        if skill == "shape":
            return f"Quelle est la forme {_de(self._np(desc, 'the'))} ?"
        if skill == "size":
            return f"Quelle est la taille {_de(self._np(desc, 'the'))} ?"
        if skill == "count":
            return f"Combien {_de(self._np(desc, 'pl'))} y a-t-il ?"
        if skill == "exist":
            return f"Y a-t-il {self._np(desc, 'a')} ?"
        if skill == "relation" and relation and other:
            pronoun = "elle" if self._gender(desc) == "f" else "il"  # complex inversion: "Le cercle est-il ...?"
            place = self._rel(relation, self._np(other, "the"))
            return f"{capitalize(self._np(desc, 'the'))} est-{pronoun} {place} ?"
        raise ValueError(f"unknown question skill {skill!r}")

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
            other_side = _SIDE[_OTHER_SIDE[scope]]
            return f"Il y a plus {_de(self._np(desc, 'pl'))} dans l'image {_SIDE[scope]} que dans l'image {other_side}."
        if kind == "relation":
            core = f"{self._np(desc, 'a')} est {self._rel(claim.relation or '', self._np(claim.other or Desc(), 'a'))}"
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
        form = _form(self._gender(action.subject), False)
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))][int(infinitive)]
            if to_color:
                phrase = phrase.replace("{c}", _COLORS[to_color][form])
            phrases.append(phrase)
        return " et ".join(phrases)

    def video_caption(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        if not actions:
            return _EMPTY_VIDEO[frame]
        clauses = []
        for k, action in enumerate(actions):
            # "On voit un cercle se déplacer ..." takes infinitives, except inside "tandis que".
            infinitive = frame == "we_see" and (k == 0 or connective == "and")
            clauses.append(f"{self._np(action.subject, 'a')} {self._verb_phrase(action, infinitive, rng)}")
        if connective == "while" and len(clauses) > 1:
            body = f"{clauses[0]}, tandis {_que(_join(clauses[1:]))}"
        else:
            body = _join(clauses)
        if frame == "in_video":
            return f"Dans cette vidéo, {body}."
        if frame == "clip":
            return f"Une séquence où {body}."
        if frame == "we_see":
            return f"On voit {body}."
        return capitalize(body) + "."

    def video_question(self, kind: str, rng: random.Random, desc: Desc | None = None, event: str | None = None) -> str:
        if kind == "action":
            return f"Que fait {self._np(desc or Desc(), 'the')} ?"
        if kind == "turn_color":
            return f"De quelle couleur devient {self._np(desc or Desc(), 'the')} ?"
        if kind == "which_shape" and event:
            return f"Quelle forme {_WHICH_EVENT[event]} ?"
        raise ValueError(f"unknown video question kind {kind!r}")


_EMPTY = {
    "there_is": "Il n'y a aucune forme.",
    "we_see": "On voit un fond vide.",
    "showing": "Une image montrant seulement le fond.",
    "predicate": "L'image est vide.",
    "bare": "Un fond vide.",
}
_EMPTY_VIDEO = {
    "plain": "Rien ne se passe.",
    "in_video": "Dans cette vidéo, rien ne se passe.",
    "clip": "Une séquence où rien ne se passe.",
    "we_see": "On voit un fond vide.",
}
