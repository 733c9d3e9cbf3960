"""Spanish: gender and number agreement, pre-nominal size, post-nominal colour and texture.

Word order is [article] [pequeño/gran] noun [colour] [texture] [mediano]: "un pequeño círculo
azul", "una gran estrella roja rayada". "de el"/"a el" contract to "del"/"al", and "ningún"/
"ninguna" agree with the noun.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import STAY, Action, Claim, Desc, Fact, Grammar, capitalize

# shape -> (gender, singular, plural)
_NOUNS: dict[str, tuple[str, str, str]] = {
    "circle": ("m", "círculo", "círculos"),
    "square": ("m", "cuadrado", "cuadrados"),
    "triangle": ("m", "triángulo", "triángulos"),
    "star": ("f", "estrella", "estrellas"),
    "hexagon": ("m", "hexágono", "hexágonos"),
    "diamond": ("m", "rombo", "rombos"),
    "cross": ("f", "cruz", "cruces"),
    "heart": ("m", "corazón", "corazones"),
    "pentagon": ("m", "pentágono", "pentágonos"),
    "oval": ("m", "óvalo", "óvalos"),
}
_GENERIC = ("m", "objeto", "objetos")
# Adjective forms indexed by _form(gender, plural): masc. sg, fem. sg, masc. pl, fem. pl.
_COLORS: dict[str, tuple[str, str, str, str]] = {
    "red": ("rojo", "roja", "rojos", "rojas"),
    "green": ("verde", "verde", "verdes", "verdes"),
    "blue": ("azul", "azul", "azules", "azules"),
    "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
    "orange": ("naranja", "naranja", "naranjas", "naranjas"),
    "purple": ("morado", "morada", "morados", "moradas"),
    "pink": ("rosa", "rosa", "rosas", "rosas"),
    "brown": ("marrón", "marrón", "marrones", "marrones"),
    "gray": ("gris", "gris", "grises", "grises"),
    "white": ("blanco", "blanca", "blancos", "blancas"),
    "black": ("negro", "negra", "negros", "negras"),
    "cyan": ("cian", "cian", "cian", "cian"),
}
# "grande" shortens to "gran" before a singular noun of either gender.
_PRE_SIZES = {"small": ("pequeño", "pequeña", "pequeños", "pequeñas"), "large": ("gran", "gran", "grandes", "grandes")}
_MEDIUM = ("mediano", "mediana", "medianos", "medianas")
_TEXTURES: dict[str, tuple[str, str, str, str]] = {
    "solid": ("liso", "lisa", "lisos", "lisas"),
    "striped": ("rayado", "rayada", "rayados", "rayadas"),
    "dotted": ("de lunares", "de lunares", "de lunares", "de lunares"),
    "checkered": ("a cuadros", "a cuadros", "a cuadros", "a cuadros"),
}
NUMBER_WORDS = ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez")
_RELATIONS = {
    "left of": "a la izquierda",
    "right of": "a la derecha",
    "above": "encima",
    "below": "debajo",
    "next to": "al lado",
}
_SIDE = {"left": "de la izquierda", "right": "de la derecha"}
_OTHER_SIDE = {"left": "right", "right": "left"}

# Video events, third person singular; {c} (new colour), {q} ("quieto") and {p} ("pequeño") agree with the subject.
_EVENTS: dict[str, tuple[str, ...]] = {
    "move_left": ("se mueve hacia la izquierda", "se desplaza hacia la izquierda"),
    "move_right": ("se mueve hacia la derecha", "se desplaza hacia la derecha"),
    "move_up": ("se mueve hacia arriba", "sube"),
    "move_down": ("se mueve hacia abajo", "baja"),
    "grow": ("crece", "se hace más grande"),
    "shrink": ("se encoge", "se hace más {p}"),
    "change_color": ("se vuelve {c}", "cambia a color {c}"),
    STAY: ("se queda {q}",),
}
_WHICH_EVENT = {
    "move_left": "se mueve hacia la izquierda",
    "move_right": "se mueve hacia la derecha",
    "move_up": "se mueve hacia arriba",
    "move_down": "se mueve hacia abajo",
    "grow": "crece",
    "shrink": "se encoge",
    "change_color": "cambia de color",
}


def _form(gender: str, plural: bool) -> int:
    return (gender == "f") + 2 * plural


def _de(phrase: str) -> str:
    return "del " + phrase[3:] if phrase.startswith("el ") else "de " + phrase


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " y " + items[-1]


class Spanish(Grammar):
    code = "es"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": {k: v[0] for k, v in _COLORS.items()},
        "shape": {k: v[1] for k, v in _NOUNS.items()},
        "size": {"small": "pequeño", "medium": "mediano", "large": "grande"},
        "yesno": {"yes": "sí", "no": "no"},
        "action": {
            "move_left": "moverse a la izquierda",
            "move_right": "moverse a la derecha",
            "move_up": "subir",
            "move_down": "bajar",
            "grow": "crecer",
            "shrink": "encogerse",
            "change_color": "cambiar de color",
        },
    }

    def __init__(self) -> None:
        self._cache: dict[tuple[Desc, str, int], str] = {}

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc, det: str, count: int = 1) -> str:
        """det: "a" (un/una), "the" (el/la), "bare" (singular, no article), "pl" (plural, no
        article) or "num" (number word; 1 is un/una)."""
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
            words.append(_MEDIUM[form])
        body = " ".join(words)
        if det == "a" or (det == "num" and count == 1):
            return ("una " if gender == "f" else "un ") + body
        if det == "the":
            return ("la " if gender == "f" else "el ") + body
        if det == "num":
            return f"{NUMBER_WORDS[count]} {body}"
        return body

    def _gender(self, desc: Desc) -> str:
        return _NOUNS[desc.shape][0] if desc.shape else _GENERIC[0]

    def _rel(self, relation: str, phrase: str) -> str:
        return f"{_RELATIONS[relation]} {_de(phrase)}"

    def _others(self, n: int) -> str:
        return "otra forma" if n == 1 else f"otras {NUMBER_WORDS[n]} formas"

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
            return f"Hay {body}."
        if frame == "we_see":
            return f"Vemos {body}."
        if frame == "showing":
            return f"Una imagen que muestra {body}."
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
                sentences.append(f"{capitalize(subject)} está {place}.")
            elif k == 0:
                sentences.append(f"Aparece {subject}.")
            else:
                sentences.append(f"También aparece {subject}.")
        if others:
            sentences.append(f"También hay {self._others(others)}.")
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
            return f"¿De qué color es {self._np(desc, 'the')}?"
        if skill == "shape":
            return f"¿Qué forma tiene {self._np(desc, 'the')}?"
        if skill == "size":
            return f"¿De qué tamaño es {self._np(desc, 'the')}?"
        if skill == "count":
            how_many = "Cuántas" if self._gender(desc) == "f" else "Cuántos"
            return f"¿{how_many} {self._np(desc, 'pl')} hay?"
        if skill == "exist":
            return f"¿Hay {self._np(desc, 'a')}?"
        if skill == "relation" and relation and other:
            return f"¿Está {self._np(desc, 'the')} {self._rel(relation, self._np(other, 'the'))}?"
        raise ValueError(f"unknown question skill {skill!r}")

    # ------------------------------------------------------------------ statements
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        side = f"la imagen {_SIDE[scope]}" if scope in _SIDE else ""
        if kind == "exist":
            if scope == "image":
                return f"Hay {self._np(desc, 'a')}."
            subject = "Ambas imágenes contienen" if scope == "both" else f"{capitalize(side)} contiene"
            return f"{subject} {self._np(desc, 'a')}."
        if kind == "count":
            phrase = self._np(desc, "num", claim.number)
            if scope == "image":
                return f"Hay exactamente {phrase}."
            subject = "Cada imagen contiene" if scope == "both" else f"{capitalize(side)} contiene"
            return f"{subject} exactamente {phrase}."
        if kind == "none":
            phrase = ("ninguna " if self._gender(desc) == "f" else "ningún ") + self._np(desc, "bare")
            if scope == "image":
                return f"No hay {phrase}."
            if scope == "both":
                return f"Ninguna de las dos imágenes contiene {self._np(desc, 'a')}."
            return f"{capitalize(side)} no contiene {phrase}."
        if kind == "more":
            other_side = _SIDE[_OTHER_SIDE[scope]]
            return f"Hay más {self._np(desc, 'pl')} en la imagen {_SIDE[scope]} que en la {other_side}."
        if kind == "relation":
            place = self._rel(claim.relation or "", self._np(claim.other or Desc(), "a"))
            core = f"{self._np(desc, 'a')} está {place}"
            return capitalize(core) + "." if scope == "image" else f"En {side}, {core}."
        return self._neutral(kind, desc)

    def _neutral(self, kind: str, desc: Desc) -> str:
        if kind == "drawn_by_child":
            return "La imagen fue dibujada por un niño."
        heavy = "pesada" if self._gender(desc) == "f" else "pesado"
        predicate = {"wood": "es de madera", "plastic": "es de plástico", "heavy": f"es {heavy}"}[kind]
        return f"{capitalize(self._np(desc, 'the'))} {predicate}."

    # ------------------------------------------------------------------ video
    def _verb_phrase(self, action: Action, rng: random.Random) -> str:
        form = _form(self._gender(action.subject), False)
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))]
            if to_color:
                phrase = phrase.replace("{c}", _COLORS[to_color][form])
            phrases.append(
                phrase.replace("{q}", "quieta" if form else "quieto").replace("{p}", _PRE_SIZES["small"][form])
            )
        return " y ".join(phrases)

    def video_caption(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        if not actions:
            return _EMPTY_VIDEO[frame]
        clauses = [f"{self._np(a.subject, 'a')} {self._verb_phrase(a, rng)}" for a in actions]
        if connective == "while" and len(clauses) > 1:
            body = f"{clauses[0]} mientras {_join(clauses[1:])}"
        else:
            body = _join(clauses)
        if frame == "in_video":
            return f"En este vídeo, {body}."
        if frame == "clip":
            return f"Un clip en el que {body}."
        if frame == "we_see":
            return f"Vemos cómo {body}."
        return capitalize(body) + "."

    def video_question(self, kind: str, rng: random.Random, desc: Desc | None = None, event: str | None = None) -> str:
        if kind == "action":
            return f"¿Qué hace {self._np(desc or Desc(), 'the')}?"
        if kind == "turn_color":
            return f"¿De qué color se vuelve {self._np(desc or Desc(), 'the')}?"
        if kind == "which_shape" and event:
            return f"¿Qué forma {_WHICH_EVENT[event]}?"
        raise ValueError(f"unknown video question kind {kind!r}")


_EMPTY = {
    "there_is": "No hay ninguna forma.",
    "we_see": "Vemos un fondo vacío.",
    "showing": "Una imagen que solo muestra el fondo.",
    "predicate": "La imagen está vacía.",
    "bare": "Un fondo vacío.",
}
_EMPTY_VIDEO = {
    "plain": "No pasa nada.",
    "in_video": "En este vídeo, no pasa nada.",
    "clip": "Un clip en el que no pasa nada.",
    "we_see": "Vemos un fondo vacío.",
}
