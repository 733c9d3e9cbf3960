"""Chinese: measure words, 的-modifiers before the noun, locative phrases after the landmark.

A noun phrase is [number + measure word] [中等大小的] [带条纹的] colour(的) [大/小] noun:
"一个红色的大星星", "一颗带条纹的红色大星星". Relations are localisers after the landmark
("蓝色的正方形的左边"), and existence is 有 ("图中有...").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from grainvl.data.world.lang_base import STAY, Action, Claim, Desc, Fact, Grammar, PredicateSentences

_SHAPES = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星星",
    "hexagon": "六边形",
    "diamond": "菱形",
    "cross": "十字形",
    "heart": "爱心",
    "pentagon": "五边形",
    "oval": "椭圆形",
}
_GENERIC = "物体"
_MEASURE_WORDS = {"star": "颗", "heart": "颗"}  # every other noun counts with 个
_COLORS = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "orange": "橙色",
    "purple": "紫色",
    "pink": "粉色",
    "brown": "棕色",
    "gray": "灰色",
    "white": "白色",
    "black": "黑色",
    "cyan": "青色",
}
_TEXTURES = {"solid": "纯色的", "striped": "带条纹的", "dotted": "带圆点的", "checkered": "带格子的"}
# Counting uses 两 (not 二) before a measure word.
NUMBER_WORDS = ("零", "一", "两", "三", "四", "五", "六", "七", "八", "九", "十")
_RELATIONS = {"left of": "左边", "right of": "右边", "above": "上面", "below": "下面", "next to": "旁边"}
_SIDE = {"image": "图中", "left": "左图中", "right": "右图中"}
_OTHER_SIDE = {"left": "右图", "right": "左图"}

_EVENTS: dict[str, tuple[str, ...]] = {
    "move_left": ("向左移动", "往左移动"),
    "move_right": ("向右移动", "往右移动"),
    "move_up": ("向上移动", "往上移动"),
    "move_down": ("向下移动", "往下移动"),
    "grow": ("变大", "慢慢变大"),
    "shrink": ("变小", "慢慢变小"),
    "change_color": ("变成{c}", "变成了{c}"),
    STAY: ("保持不动",),
}


class Chinese(Grammar):
    code = "zh"
    answers: ClassVar[dict[str, dict[str, str]]] = {
        "color": dict(_COLORS),
        "shape": dict(_SHAPES),
        "size": {"small": "小", "medium": "中等", "large": "大"},
        "yesno": {"yes": "是", "no": "否"},
        "action": {
            "move_left": "向左移动",
            "move_right": "向右移动",
            "move_up": "向上移动",
            "move_down": "向下移动",
            "grow": "变大",
            "shrink": "变小",
            "change_color": "变色",
        },
    }
    number_words = NUMBER_WORDS
    empty_captions: ClassVar[dict[str, str]] = {
        "there_is": "图中没有任何图形。",
        "we_see": "可以看到一个空的背景。",
        "showing": "这张图片只展示了背景。",
        "predicate": "这张图是空的。",
        "bare": "空的背景。",
    }
    # "there_is" and "we_see" are clause captions (``caption``).
    caption_frames: ClassVar[dict[str, tuple[str, ...]]] = {
        "showing": ("这张图片展示了{body}。",),
        "bare": ("{body}。",),
    }
    predicate_sentences = PredicateSentences(
        related="{subject}在{place}。",
        first="{subject}出现在图中。",
        also="{subject}也出现在图中。",
        one_other="图中还有{others}。",
        more_others="图中还有{others}。",
    )
    sentence_gap = ""
    list_separators = ("、", "和")
    questions: ClassVar[dict[str, tuple[str, ...]]] = {
        "color": ("{phrase}是什么颜色的？",),
        "shape": ("{phrase}是什么形状的？",),
        "size": ("{phrase}有多大？",),
        "count": ("图中有几{phrase}？",),
        "exist": ("图中有{phrase}吗？",),
    }
    relation_question = "{phrase}在{place}吗？"
    empty_videos: ClassVar[dict[str, str]] = {
        "plain": "什么也没有发生。",
        "in_video": "在这个视频中，什么也没有发生。",
        "clip": "一段视频：什么也没有发生。",
        "we_see": "可以看到一个空的背景。",
    }
    video_frames: ClassVar[dict[str, str]] = {
        "plain": "{body}。",
        "in_video": "在这个视频中，{body}。",
        "clip": "一段视频：{body}。",
        "we_see": "可以看到{body}。",
    }
    video_questions: ClassVar[dict[str, str]] = {
        "action": "{phrase}在做什么？",
        "turn_color": "{phrase}变成了什么颜色？",
        "which_shape": "哪个图形{event}？",
    }
    which_events: ClassVar[dict[str, str]] = {
        "move_left": "向左移动了",
        "move_right": "向右移动了",
        "move_up": "向上移动了",
        "move_down": "向下移动了",
        "grow": "变大了",
        "shrink": "变小了",
        "change_color": "变了颜色",
    }

    def __init__(self) -> None:
        self._cache: dict[tuple[Desc, int], str] = {}

    # ------------------------------------------------------------------ noun phrases
    def _np(self, desc: Desc, count: int = 0) -> str:
        """The bare phrase ("红色的大星星"); ``count`` > 0 prefixes number + measure word ("一颗...")."""
        key = (desc, count)
        phrase = self._cache.get(key)
        if phrase is None:
            phrase = self._cache[key] = self._build_np(desc, count)
        return phrase

    def _build_np(self, desc: Desc, count: int) -> str:
        parts = []
        if desc.size == "medium":
            parts.append("中等大小的")
        if desc.texture:
            parts.append(_TEXTURES[desc.texture])
        if desc.color:
            # One 的 per phrase reads best: the colour takes it only when nothing before it did.
            parts.append(_COLORS[desc.color] + ("" if parts else "的"))
        if desc.size == "small" or desc.size == "large":
            parts.append("小" if desc.size == "small" else "大")
        parts.append(_SHAPES[desc.shape] if desc.shape else _GENERIC)
        body = "".join(parts)
        if count:
            return NUMBER_WORDS[count] + _MEASURE_WORDS.get(desc.shape or "", "个") + body
        return body

    def _phrase(self, desc: Desc, det: str, rng: random.Random, case: str = "nom") -> str:
        # Chinese has no articles: an indefinite phrase counts one ("一个..."), a definite one is bare.
        return self._np(desc, 1 if det == "a" else 0)

    def _place(self, relation: str, landmark: Desc, det: str, rng: random.Random) -> str:
        return f"{self._np(landmark)}的{_RELATIONS[relation]}"

    def _others(self, n: int, case: str) -> str:
        return f"另外{NUMBER_WORDS[n]}个图形"

    def _attach(self, head: str, relation: str, other: Desc, det: str, rng: random.Random) -> str:
        """The place modifies the noun from the front: "蓝色的正方形左边的一个红色的圆形"."""
        return f"{self._np(other)}{_RELATIONS[relation]}的{head}"

    # ------------------------------------------------------------------ captions
    def caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        if facts and frame in ("there_is", "we_see"):
            return self._clause_caption(frame, facts, others, rng)
        return super().caption(frame, facts, others, rng)

    def _clause_caption(self, frame: str, facts: Sequence[Fact], others: int, rng: random.Random) -> str:
        """Clauses: "有一个红色的圆形在蓝色的正方形的左边，还有一个绿色的星星"."""
        clauses = []
        for k, fact in enumerate(facts):
            subject = self._np(fact.subject, 1)
            lead = ("有" if frame == "there_is" else "") if k == 0 else "还有"
            where = f"在{self._place(fact.relation, fact.object, 'a', rng)}" if fact.relation and fact.object else ""
            clauses.append(f"{lead}{subject}{where}")
        if others:
            clauses.append(f"另外还有{NUMBER_WORDS[others]}个图形")
        return ("图中" if frame == "there_is" else "可以看到") + "，".join(clauses) + "。"

    # ------------------------------------------------------------------ VQA
    def _question_phrase(self, skill: str, desc: Desc, rng: random.Random) -> str:
        if skill == "count":
            return _MEASURE_WORDS.get(desc.shape or "", "个") + self._np(desc)  # "图中有几个..."
        return self._np(desc)  # questions name the bare noun, "exist" too ("图中有...吗")

    # ------------------------------------------------------------------ statements
    def statement(self, claim: Claim, rng: random.Random) -> str:
        kind, scope, desc = claim.kind, claim.scope, claim.desc or Desc()
        where = "两张图中都" if scope == "both" else _SIDE.get(scope, "")
        if kind == "exist":
            return f"{where}有{self._np(desc, 0 if scope == 'both' else 1)}。"
        if kind == "count":
            where = "每张图中都" if scope == "both" else where
            return f"{where}正好有{self._np(desc, claim.number)}。"
        if kind == "none":
            return f"{where}没有{self._np(desc)}。"
        if kind == "more":
            return f"{_SIDE[scope]}{self._np(desc)}比{_OTHER_SIDE[scope]}中的多。"
        if kind == "relation":
            core = f"{self._np(desc, 1)}在{self._place(claim.relation or '', claim.other or Desc(), 'a', rng)}"
            return f"{core}。" if scope == "image" else f"{_SIDE[scope]}，{core}。"
        return self._neutral(kind, desc)

    def _neutral(self, kind: str, desc: Desc) -> str:
        if kind == "drawn_by_child":
            return "这张图是一个孩子画的。"
        predicate = {"wood": "是木头做的", "plastic": "是塑料做的", "heavy": "很重"}[kind]
        return f"{self._np(desc)}{predicate}。"

    # ------------------------------------------------------------------ video
    def _clause(self, action: Action, rng: random.Random) -> str:
        phrases = []
        for kind, to_color in action.events:
            phrase = _EVENTS[kind][int(rng.random() * len(_EVENTS[kind]))]
            phrases.append(phrase.replace("{c}", _COLORS[to_color]) if to_color else phrase)
        return self._np(action.subject, 1) + "并且".join(phrases)

    def _video_body(self, frame: str, actions: Sequence[Action], connective: str, rng: random.Random) -> str:
        clauses = [self._clause(a, rng) for a in actions]
        if connective == "while" and len(clauses) > 1:
            return f"{clauses[0]}，同时" + "，".join(clauses[1:])
        return "，".join(clauses)
