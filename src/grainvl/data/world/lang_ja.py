"""Japanese: modifiers before the noun, の-phrases, postpositions, counters and verb forms.

A noun phrase is [size] [texture] [colour] noun ("大きな縞模様の赤い星"); relations are
"[landmark]の左に" and, as modifiers, relative clauses "[landmark]の左にある[noun]". Clauses
chain with the continuative form (あり、見え、動き) and end in the polite form (あります).
Japanese marks no articles, so definite and indefinite phrases are the same words.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import OTHER_SIDE, STAY, Action, Claim, Desc, Fact, Grammar, PredicateSentences

_SHAPES = {
    "circle": "円",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星",
    "hexagon": "六角形",
    "diamond": "ひし形",
    "cross": "十字",
    "heart": "ハート",
    "pentagon": "五角形",
    "oval": "楕円",
}
_GENERIC = "図形"
# Attributive forms (い-adjectives and noun+の) and the bare colour nouns used as answers.
_COLOR_ATTR = {
    "red": "赤い",
    "green": "緑の",
    "blue": "青い",
    "yellow": "黄色い",
    "orange": "オレンジ色の",
    "purple": "紫の",
    "pink": "ピンクの",
    "brown": "茶色の",
    "gray": "灰色の",
    "white": "白い",
    "black": "黒い",
    "cyan": "水色の",
}
_COLOR_NOUNS = {
    "red": "赤",
    "green": "緑",
    "blue": "青",
    "yellow": "黄色",
    "orange": "オレンジ",
    "purple": "紫",
    "pink": "ピンク",
    "brown": "茶色",
    "gray": "灰色",
    "white": "白",
    "black": "黒",
    "cyan": "水色",
}
_SIZES = {"small": "小さな", "medium": "中くらいの", "large": "大きな"}
_TEXTURES = {"solid": "無地の", "striped": "縞模様の", "dotted": "水玉模様の", "checkered": "チェック柄の"}
# Native counters (ひとつ, ふたつ ...); ten is 十 (とお).
NUMBER_WORDS = ("ゼロ", "一つ", "二つ", "三つ", "四つ", "五つ", "六つ", "七つ", "八つ", "九つ", "十")
_RELATIONS = {"left of": "左", "right of": "右", "above": "上", "below": "下", "next to": "隣"}
_SIDE = {"left": "左の画像", "right": "右の画像"}

# Video events: (plain form, polite form, continuative form); {c} is the new colour.
_EVENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "move_left": (("左に動く", "左に動きます", "左に動き"), ("左へ移動する", "左へ移動します", "左へ移動し")),
    "move_right": (("右に動く", "右に動きます", "右に動き"), ("右へ移動する", "右へ移動します", "右へ移動し")),
    "move_up": (("上に動く", "上に動きます", "上に動き"), ("上へ移動する", "上へ移動します", "上へ移動し")),
    "move_down": (("下に動く", "下に動きます", "下に動き"), ("下へ移動する", "下へ移動します", "下へ移動し")),
    "grow": (("大きくなる", "大きくなります", "大きくなり"),),
    "shrink": (("小さくなる", "小さくなります", "小さくなり"),),
    "change_color": (("{c}に変わる", "{c}に変わります", "{c}に変わり"), ("{c}になる", "{c}になります", "{c}になり")),
    STAY: (("動かない", "動きません", "動かず"),),
}
_PLAIN, _POLITE, _CONTINUATIVE = 0, 1, 2


class Japanese(Grammar):
    code = "ja"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": dict(_COLOR_NOUNS),
        "shape": dict(_SHAPES),
        "size": {"small": "小さい", "medium": "中くらい", "large": "大きい"},
        "yesno": {"yes": "はい", "no": "いいえ"},
        "action": {
            "move_left": "左に動く",
            "move_right": "右に動く",
            "move_up": "上に動く",
            "move_down": "下に動く",
            "grow": "大きくなる",
            "shrink": "小さくなる",
            "change_color": "色が変わる",
        },
    }
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "図形は何もありません。",
        "we_see": "何もない背景が見えます。",
        "showing": "背景だけを写した画像。",
        "predicate": "この画像は空です。",
        "bare": "何もない背景。",
    }
    # "there_is" and "we_see" are clause captions (``caption``).
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {"showing": ("{body}を写した画像。",), "bare": ("{body}。",)}
    predicate_sentences = PredicateSentences(
        related="{subject}は{place}あります。",
        first="{subject}が描かれています。",
        also="{subject}も描かれています。",
        one_other="ほかにも図形が{number}描かれています。",
        more_others="ほかにも図形が{number}描かれています。",
    )
    sentence_gap = ""
    list_separators = ("と", "と")
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("{phrase}は何色ですか？",),
        "shape": ("{phrase}はどんな形ですか？",),
        "size": ("{phrase}の大きさはどれくらいですか？",),
        "count": ("{phrase}はいくつありますか？",),
        "exist": ("{phrase}はありますか？",),
    }
    relation_question = "{phrase}は{place}ありますか？"
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "何も起こりません。",
        "in_video": "この動画では、何も起こりません。",
        "clip": "何も起こらない様子を映した動画。",
        "we_see": "何もない背景が見えます。",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{body}。",
        "in_video": "この動画では、{body}。",
        "clip": "{body}様子を映した動画。",
        "we_see": "{body}のが見えます。",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "{phrase}は何をしていますか？",
        "turn_color": "{phrase}は何色に変わりますか？",
        "which_shape": "どの図形が{event}？",
    }
    which_events: ClassVar[dict[str, str]] = {  # change_color is asked in ``video_question``
        "move_left": "左に動きますか",
        "move_right": "右に動きますか",
        "move_up": "上に動きますか",
        "move_down": "下に動きますか",
        "grow": "大きくなりますか",
        "shrink": "小さくなりますか",
    }

    def __init__(self) -> None:
        self._cache: dict[Desc, str] = {}

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc) -> str:
        phrase = self._cache.get(desc)
        if phrase is None:
            parts = [
                _SIZES.get(desc.size or "", ""),
                _TEXTURES.get(desc.texture or "", ""),
                _COLOR_ATTR.get(desc.color or "", ""),
                _SHAPES[desc.shape] if desc.shape else _GENERIC,
            ]
            phrase = self._cache[desc] = "".join(parts)
        return phrase

    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        return self._np(desc)  # no articles: definite and indefinite phrases are the same words

    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        return f"{self._np(landmark)}の{_RELATIONS[relation]}に"

    def _others(self, n: int, case: str) -> str:
        return f"ほかの{NUMBER_WORDS[n]}の図形"

    def _attach(self, head: str, relation: str, other: Desc, det: str, rng: random.Random) -> str:
        """The relative clause "[landmark]の左にある[noun]"."""
        return f"{self._place(relation, other, det, rng)}ある{head}"

    # ------------------------------------------------------------------ captions
    def caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        if facts and frame in ("there_is", "we_see"):
            return self._clause_caption(facts, others, frame == "there_is", rng)
        return super().caption(frame, facts, others, rng)

    def _clause_caption(self, facts: Sequence[Fact], others: int, exists: bool, rng: random.Random) -> str:
        """Clauses "[landmark]の左に[X]が" / "[X]も", chained with あり/見え and closed by あります/見えます."""
        clauses = []
        for k, fact in enumerate(facts):
            particle = "が" if k == 0 or fact.relation else "も"
            place = self._place(fact.relation, fact.object, "a", rng) if fact.relation and fact.object else ""
            clauses.append(f"{place}{self._np(fact.subject)}{particle}")
        if others:
            clauses.append(f"ほかに図形が{NUMBER_WORDS[others]}")
        middle, last = ("あり、", "あります。") if exists else ("見え、", "見えます。")
        return middle.join(clauses) + last

    # ------------------------------------------------------------------ statements
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        phrase = self._np(desc)
        topic = (
            {"image": "", "both": "どちらの画像にも"}[scope] if scope in ("image", "both") else f"{_SIDE[scope]}には"
        )
        if kind == "exist":
            return f"両方の画像に{phrase}があります。" if scope == "both" else f"{topic}{phrase}があります。"
        if kind == "count":
            return f"{topic}{phrase}がちょうど{NUMBER_WORDS[claim.number]}あります。"
        if kind == "none":
            return f"{topic}{phrase}{'は' if scope in ('image', 'both') else 'が'}ありません。"
        if kind == "more":
            other_side = _SIDE[OTHER_SIDE[scope]]
            return f"{_SIDE[scope]}には{other_side}より多くの{phrase}があります。"
        if kind == "relation":
            place = self._place(claim.relation or "", claim.other or Desc(), "a", rng)
            core = f"{phrase}が{place}あります。"
            return core if scope == "image" else f"{_SIDE[scope]}では、{core}"
        return self._neutral(kind, phrase)

    def _neutral(self, kind: str, phrase: str) -> str:
        if kind == "drawn_by_child":
            return "この絵は子どもが描いたものです。"
        predicate = {"wood": "木でできています", "plastic": "プラスチックでできています", "heavy": "重いです"}[kind]
        return f"{phrase}は{predicate}。"

    # ------------------------------------------------------------------ video
    def _verb_phrase(self, action: Action, form: int, rng: random.Random) -> str:
        """All events of one object; every event but the last takes the continuative form."""
        phrases = []
        last = len(action.events) - 1
        for k, (kind, to_color) in enumerate(action.events):
            variants = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))]
            phrase = variants[form if k == last else _CONTINUATIVE]
            phrases.append(phrase.replace("{c}", _COLOR_NOUNS[to_color]) if to_color else phrase)
        return "、".join(phrases)

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        # Which verb form each clause ends in: polite to close a sentence, plain before
        # と同時に/様子/のが, continuative to chain clauses with "、".
        closing = _POLITE if frame in ("plain", "in_video") else _PLAIN
        joiner_form = _PLAIN if connective == "while" else _CONTINUATIVE
        joiner = "と同時に、" if connective == "while" else "、"
        parts = []
        for k, action in enumerate(actions):
            form = closing if k == len(actions) - 1 else joiner_form
            parts.append(f"{self._np(action.subject)}が{self._verb_phrase(action, form, rng)}")
        return joiner.join(parts)

    def video_question(self, kind: str, rng: random.Random, desc: Desc | None = None, event: str | None = None) -> str:
        if kind == "which_shape" and event == "change_color":
            return "どの図形の色が変わりますか？"  # the colour, not the shape, is what changes (色が変わる)
        return super().video_question(kind, rng, desc, event)
