"""The world's multilingual language layer: grammars per language, region phrases and caption plans.

Each language has its own grammar module (``lang_en`` ... ``lang_ja``): its own lexicon, word
order, agreement and sentence frames, not a translated template. Annotation code decides *what*
to say as language-independent plans; a plan realised in every language gives captions that are
translations of each other (``captions[lang][i]`` align across languages), which is where the
world's parallel sentence pairs come from.

All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from grainvl.data.world.lang_base import (
    ATTRIBUTES,
    CAPTION_FRAMES,
    Desc,
    Fact,
    Grammar,
    describe,
    full_desc,
)
from grainvl.data.world.lang_de import German
from grainvl.data.world.lang_en import English
from grainvl.data.world.lang_es import Spanish
from grainvl.data.world.lang_fr import French
from grainvl.data.world.lang_ja import Japanese
from grainvl.data.world.lang_zh import Chinese
from grainvl.data.world.scene import Relation, Scene, WorldObject, compute_relations

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "zh", "ja")

# One instance per language and process: grammars cache the noun phrases they have built.
_GRAMMARS: dict[str, Grammar] = {g.code: g for g in (English(), German(), French(), Spanish(), Chinese(), Japanese())}

# How often a caption mentions each optional attribute (the shape is always named).
_CAPTION_ATTRIBUTE_RATES = (("color", 0.85), ("size", 0.35), ("texture", 0.25))
_PLAN_ATTEMPTS_PER_CAPTION = 20


def grammar(lang: str) -> Grammar:
    """The grammar of ``lang``; ValueError naming the known languages otherwise."""
    found = _GRAMMARS.get(lang)
    if found is None:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    return found


def region_phrase(obj: WorldObject, lang: str, rng: random.Random, definite: bool = False) -> str:
    """A noun phrase naming every attribute of ``obj`` ("a large striped red star")."""
    return grammar(lang).region(full_desc(obj), definite, rng)


def scene_relations(scene: Scene) -> list[Relation]:
    """``scene.relations``, computed from the boxes when a hand-built scene left them empty."""
    if scene.relations or len(scene.objects) < 2:
        return scene.relations
    return compute_relations(scene.objects)


# --------------------------------------------------------------------------- caption plans


class Mention(NamedTuple):
    """Object ``index`` of the scene, described by ``attributes`` (a subset of ATTRIBUTES, in order)."""

    index: int
    attributes: tuple[str, ...]


class PlannedFact(NamedTuple):
    subject: Mention
    relation: str | None = None
    object: Mention | None = None


class CaptionPlan(NamedTuple):
    """What one caption says: the frame (CAPTION_FRAMES), the facts in order, and how many further
    objects it only counts ("and three other shapes")."""

    frame: str
    facts: tuple[PlannedFact, ...]
    others: int


def caption_plans(scene: Scene, rng: random.Random, n: int = 5) -> list[CaptionPlan]:
    """``n`` different plans for captions of ``scene``.

    Scenes of up to 3 objects are described completely; larger ones name 2-3 objects and count
    the rest. With two or more objects every plan contains a true relation between two of them.
    Plans differ pairwise, and every grammar realises different plans as different sentences.
    An empty scene has only len(CAPTION_FRAMES) distinct captions; its plans repeat beyond that.
    """
    if not scene.objects:
        return [CaptionPlan(CAPTION_FRAMES[k % len(CAPTION_FRAMES)], (), 0) for k in range(n)]
    relations = scene_relations(scene)
    plans: list[CaptionPlan] = []
    seen: set[CaptionPlan] = set()
    for _ in range(n * _PLAN_ATTEMPTS_PER_CAPTION):
        plan = _one_plan(len(scene.objects), relations, rng)
        if plan not in seen:
            seen.add(plan)
            plans.append(plan)
            if len(plans) == n:
                return plans
    return plans + _fallback_plans(plans, seen, n - len(plans))


def _one_plan(count: int, relations: Sequence[Relation], rng: random.Random) -> CaptionPlan:
    frame = CAPTION_FRAMES[int(rng.random() * len(CAPTION_FRAMES))]
    if count == 1 or not relations:
        facts = [PlannedFact(_mention(0, rng))]
        return CaptionPlan(frame, tuple(facts), count - 1)
    relation = relations[int(rng.random() * len(relations))]
    facts = [PlannedFact(_mention(relation.subject, rng), relation.relation, _mention(relation.object, rng))]
    mentioned = 3 if count == 3 else 2 if count == 2 else 2 + int(rng.random() < 0.5)
    if mentioned == 3:
        rest = [i for i in range(count) if i != relation.subject and i != relation.object]
        facts.append(PlannedFact(_mention(rest[int(rng.random() * len(rest))], rng)))
        if rng.random() < 0.5:
            facts.reverse()
    return CaptionPlan(frame, tuple(facts), count - mentioned)


def _mention(index: int, rng: random.Random) -> Mention:
    attributes = ["shape"]
    for name, rate in _CAPTION_ATTRIBUTE_RATES:
        if rng.random() < rate:
            attributes.append(name)
    attributes.sort(key=ATTRIBUTES.index)
    return Mention(index, tuple(attributes))


def _fallback_plans(plans: list[CaptionPlan], seen: set[CaptionPlan], missing: int) -> list[CaptionPlan]:
    """Deterministic extra plans when sampling ran dry: re-frame the first plan with richer mentions."""
    base = plans[0]
    extra = []
    for frame in CAPTION_FRAMES:
        for attributes in (("shape", "color", "size", "texture"), ("shape", "size"), ("shape", "texture")):
            facts = tuple(
                PlannedFact(
                    Mention(f.subject.index, attributes),
                    f.relation,
                    Mention(f.object.index, attributes) if f.object else None,
                )
                for f in base.facts
            )
            plan = CaptionPlan(frame, facts, base.others)
            if plan not in seen and len(extra) < missing:
                seen.add(plan)
                extra.append(plan)
    return extra


def plan_facts(plan: CaptionPlan, scene: Scene) -> list[Fact]:
    """The plan's facts as descriptions of the scene's objects (shared by every language)."""
    objects = scene.objects
    return [
        Fact(
            describe(objects[f.subject.index], f.subject.attributes),
            f.relation,
            describe(objects[f.object.index], f.object.attributes) if f.object else None,
        )
        for f in plan.facts
    ]


def realize_caption(plan: CaptionPlan, scene: Scene, lang: str, rng: random.Random) -> str:
    """The caption ``plan`` says about ``scene``, in ``lang``."""
    return grammar(lang).caption(plan.frame, plan_facts(plan, scene), plan.others, rng)


def realize_captions(
    plans: Sequence[CaptionPlan], scene: Scene, rng: random.Random, languages: Sequence[str] = LANGUAGES
) -> dict[str, list[str]]:
    """Every plan in every language; ``result[lang][i]`` are translations of each other."""
    resolved = [(plan.frame, plan_facts(plan, scene), plan.others) for plan in plans]
    captions = {}
    for lang in languages:
        g = grammar(lang)
        captions[lang] = [g.caption(frame, facts, others, rng) for frame, facts, others in resolved]
    return captions


__all__ = [
    "LANGUAGES",
    "CaptionPlan",
    "Desc",
    "Mention",
    "PlannedFact",
    "caption_plans",
    "grammar",
    "realize_caption",
    "realize_captions",
    "region_phrase",
    "scene_relations",
]
