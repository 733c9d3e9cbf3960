"""Spanish: gender and number agreement, pre-nominal size, post-nominal colour and texture.

Word order is [article] [pequeño/gran] noun [colour] [texture] [mediano]: "un pequeño círculo
azul", "una gran estrella roja rayada". "de el"/"a el" contract to "del"/"al", and "ningún"/
"ninguna" agree with the noun.
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
# Adjective forms indexed by adjective_form(gender, plural): masc. sg, fem. sg, masc. pl, fem. pl.
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


def _de(phrase: str) -> str:
    return "del " + phrase[3:] if phrase.startswith("el ") else "de " + phrase


class Spanish(RomanceGrammar):
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
    nouns = _NOUNS
    generic_noun = _GENERIC
    colors = _COLORS
    textures = _TEXTURES
    pre_sizes = _PRE_SIZES
    medium = _MEDIUM
    indefinite = ("un ", "una ")
    definite = ("el ", "la ")
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "No hay ninguna forma.",
        "we_see": "Vemos un fondo vacío.",
        "showing": "Una imagen que solo muestra el fondo.",
        "predicate": "La imagen está vacía.",
        "bare": "Un fondo vacío.",
    }
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {
        "there_is": ("Hay {body}.",),
        "we_see": ("Vemos {body}.",),
        "showing": ("Una imagen que muestra {body}.",),
        "bare": ("{Body}.",),
    }
    predicate_sentences = PredicateSentences(
        related="{Subject} está {place}.",
        first="Aparece {subject}.",
        also="También aparece {subject}.",
        one_other="También hay {others}.",
        more_others="También hay {others}.",
    )
    list_separators = (", ", " y ")
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("¿De qué color es {phrase}?",),
        "shape": ("¿Qué forma tiene {phrase}?",),
        "size": ("¿De qué tamaño es {phrase}?",),
        "count": ("¿{phrase} hay?",),
        "exist": ("¿Hay {phrase}?",),
    }
    relation_question = "¿Está {phrase} {place}?"
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "No pasa nada.",
        "in_video": "En este vídeo, no pasa nada.",
        "clip": "Un clip en el que no pasa nada.",
        "we_see": "Vemos un fondo vacío.",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{Body}.",
        "in_video": "En este vídeo, {body}.",
        "clip": "Un clip en el que {body}.",
        "we_see": "Vemos cómo {body}.",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "¿Qué hace {phrase}?",
        "turn_color": "¿De qué color se vuelve {phrase}?",
        "which_shape": "¿Qué forma {event}?",
    }
    which_events: ClassVar[dict[str, str]] = {
        "move_left": "se mueve hacia la izquierda",
        "move_right": "se mueve hacia la derecha",
        "move_up": "se mueve hacia arriba",
        "move_down": "se mueve hacia abajo",
        "grow": "crece",
        "shrink": "se encoge",
        "change_color": "cambia de color",
    }

    # ------------------------------------------------------------------ noun phrases
    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        return f"{_RELATIONS[relation]} {_de(self._np(landmark, det))}"

    def _others(self, n: int, case: str) -> str:
        return "otra forma" if n == 1 else f"otras {NUMBER_WORDS[n]} formas"

    # ------------------------------------------------------------------ VQA
    def _question_phrase(self, skill: str, desc: Desc, rng: random.Random) -> str:
        if skill == "count":
            # "¿Cuántas estrellas hay?": the interrogative agrees with the noun, so it is part of the phrase.
            how_many = "Cuántas" if self._gender(desc) == "f" else "Cuántos"
            return f"{how_many} {self._np(desc, 'pl')}"
        return super()._question_phrase(skill, desc, rng)

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
            other_side = _SIDE[OTHER_SIDE[scope]]
            return f"Hay más {self._np(desc, 'pl')} en la imagen {_SIDE[scope]} que en la {other_side}."
        if kind == "relation":
            place = self._place(claim.relation or "", claim.other or Desc(), "a", rng)
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
        form = adjective_form(self._gender(action.subject), False)
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))]
            if to_color:
                phrase = phrase.replace("{c}", _COLORS[to_color][form])
            phrases.append(
                phrase.replace("{q}", "quieta" if form else "quieto").replace("{p}", _PRE_SIZES["small"][form])
            )
        return " y ".join(phrases)

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        clauses = [f"{self._np(a.subject, 'a')} {self._verb_phrase(a, rng)}" for a in actions]
        if connective == "while" and len(clauses) > 1:
            return f"{clauses[0]} mientras {self._join(clauses[1:])}"
        return self._join(clauses)
