"""Task annotations of world scenes and videos: captions, VQA, referring expressions, NLVR2, XVNLI, video QA.

Every decision here is language-independent (which object, which attributes, which relation,
which answer); the surface text in each of ``LANGUAGES`` comes from the grammars in
``language.py``. Truth values and answers are computed from the scene, never assumed:

- VQA questions name their object by a description that fits exactly one object, so every
  question has one answer; existence and relation questions are balanced yes/no by construction.
- Referring expressions (RefCOCO+ style) use the shortest unique attribute description, else
  attributes plus a relation to a uniquely described object; never absolute positions.
- NLVR2 and XVNLI labels are evaluated on the scenes after the statement was drawn; the wanted
  label is drawn first, which balances the labels.

All randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from grainvl.data.world.annotations import (
    ImageAnnotations,
    NLVRItem,
    ParallelPair,
    RefExp,
    VideoAnnotations,
    VideoQAItem,
    VQAItem,
    XVNLIItem,
)
from grainvl.data.world.lang_base import (
    ATTRIBUTES,
    CLAIM_KINDS,
    CONNECTIVES,
    NEUTRAL_KINDS,
    SKILLS,
    STAY,
    VIDEO_FRAMES,
    Action,
    Claim,
    Desc,
    describe,
    full_desc,
    matches,
    pick,
)
from grainvl.data.world.lang_en import NUMBER_WORDS as EN_NUMBER_WORDS
from grainvl.data.world.language import LANGUAGES, caption_plans, grammar, realize_captions, scene_relations
from grainvl.data.world.ontology import COLORS, SHAPES, SIZES
from grainvl.data.world.scene import Relation, Scene, VideoClip, WorldObject

# VQA v2 conventions: the question's English prefix and the answer type of each skill.
QUESTION_TYPES: dict[str, str] = {
    "color": "what color is the",
    "shape": "what shape is the",
    "size": "what size is the",
    "count": "how many",
    "exist": "is there a",
    "relation": "is the",
}
ANSWER_TYPES: dict[str, str] = {
    "color": "other",
    "shape": "other",
    "size": "other",
    "count": "number",
    "exist": "yes/no",
    "relation": "yes/no",
}
ANNOTATORS = 10  # VQA v2 collects ten answers per question
# No absolute-position words in RefCOCO+ expressions (checked by the tests on every language).
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_OTHER_SIDE = {"left": "right", "right": "left"}
_COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_SIZE_NAMES: tuple[str, ...] = tuple(SIZES)  # small < medium < large

# Attribute subsets, shortest first, for "which description singles out this object?".
_ATTRIBUTE_POSITION = {name: k for k, name in enumerate(ATTRIBUTES)}


def _subsets(allowed: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    found = [tuple(a for k, a in enumerate(allowed) if mask >> k & 1) for mask in range(1, 1 << len(allowed))]
    return tuple(sorted(found, key=lambda s: (len(s), [_ATTRIBUTE_POSITION[a] for a in s])))


_WITHOUT = {name: tuple(a for a in ATTRIBUTES if a != name) for name in ("shape", "color", "size")}
_SUBSETS = {allowed: _subsets(allowed) for allowed in (ATTRIBUTES, *_WITHOUT.values())}
# Descriptions used for counting / existence questions and NLVR/XVNLI statements.
_COUNT_ATTRIBUTES = (("shape",), ("color",), ("shape", "color"), ("shape", "size"), ())
_EXIST_ATTRIBUTES = (("shape",), ("shape", "color"), ("color",), ("shape", "size"), ("shape", "texture"))
_CLAIM_ATTRIBUTES = (("shape",), ("shape",), ("color",), ("shape", "color"), ("shape", "color"))


class Uniqueness:
    """Which attribute descriptions single out which object of one scene (counts cached per subset)."""

    def __init__(self, objects: Sequence[WorldObject]) -> None:
        self.objects = objects
        self._keys = [(o.shape, o.color, o.size, o.texture) for o in objects]
        self._counts: dict[tuple[str, ...], dict[tuple[str, ...], int]] = {}
        self._shortest: dict[tuple[int, tuple[str, ...]], list[Desc]] = {}

    def _key(self, index: int, subset: tuple[str, ...]) -> tuple[str, ...]:
        key = self._keys[index]
        return tuple(key[_ATTRIBUTE_POSITION[a]] for a in subset)

    def count(self, index: int, subset: tuple[str, ...]) -> int:
        """How many objects share object ``index``'s values of ``subset``."""
        counts = self._counts.get(subset)
        if counts is None:
            counts = {}
            for k in range(len(self._keys)):
                key = self._key(k, subset)
                counts[key] = counts.get(key, 0) + 1
            self._counts[subset] = counts
        return counts[self._key(index, subset)]

    def shortest(self, index: int, allowed: tuple[str, ...] = ATTRIBUTES) -> list[Desc]:
        """All shortest descriptions from ``allowed`` that fit object ``index`` and no other ([] if none)."""
        cache_key = (index, allowed)
        found = self._shortest.get(cache_key)
        if found is None:
            found, length = [], 0
            for subset in _SUBSETS[allowed]:
                if found and len(subset) > length:
                    break
                if self.count(index, subset) == 1:
                    found.append(describe(self.objects[index], subset))
                    length = len(subset)
            self._shortest[cache_key] = found
        return found


def _prefer_shape(descs: Sequence[Desc], rng: random.Random) -> Desc:
    """One of ``descs``, preferring those that name the shape ("the red circle" over "the red one")."""
    with_shape = [d for d in descs if d.shape] or list(descs)
    return with_shape[int(rng.random() * len(with_shape))]


def _count(desc: Desc, objects: Sequence[WorldObject]) -> int:
    return sum(1 for o in objects if matches(desc, o))


# --------------------------------------------------------------------------- images


def annotate_image(
    scene: Scene,
    rng: random.Random,
    question_ids: Iterator[int],
    ref_ids: Iterator[int],
    n_captions: int = 5,
    n_questions: int = 4,
) -> ImageAnnotations:
    """Captions and region phrases in every language, VQA questions and referring expressions."""
    plans = caption_plans(scene, rng, n_captions)
    captions = realize_captions(plans, scene, rng)
    descs = [full_desc(o) for o in scene.objects]
    region_phrases = {lang: [grammar(lang).region(d, False, rng) for d in descs] for lang in LANGUAGES}
    uniq = Uniqueness(scene.objects)
    relations = scene_relations(scene)
    vqa = [
        _vqa_item(spec, scene, rng, next(question_ids))
        for spec in _question_specs(scene, uniq, relations, rng, n_questions)
    ]
    refexps = []
    for index in range(len(scene.objects)):
        plan = plan_refexp(scene, index, rng, uniq, relations)
        if plan is not None:
            texts = {lang: grammar(lang).refexp(plan.desc, rng, plan.relation, plan.other_desc) for lang in LANGUAGES}
            refexps.append(RefExp(next(ref_ids), scene.image_id, index, texts))
    return ImageAnnotations(scene, captions, region_phrases, vqa, refexps)


# --------------------------------------------------------------------------- VQA


class QuestionSpec(NamedTuple):
    """A language-independent VQA question: ``answer`` is an ontology key, a count, or "yes"/"no"."""

    skill: str
    desc: Desc
    answer_kind: str  # color / shape / size / number / yesno
    answer: str | int
    relation: str | None = None
    other: Desc | None = None


def _question_specs(
    scene: Scene, uniq: Uniqueness, relations: Sequence[Relation], rng: random.Random, n_questions: int
) -> list[QuestionSpec]:
    """``n_questions`` different questions, skills in a random order per image (repeats when skills run out)."""
    skills = list(SKILLS)
    rng.shuffle(skills)
    specs: list[QuestionSpec] = []
    seen: set[tuple[str, Desc, str | None, Desc | None]] = set()
    for attempt in range(n_questions * 6):
        if len(specs) == n_questions:
            break
        skill = skills[attempt % len(skills)]
        if skill in ("color", "shape", "size"):
            spec = _ask_attribute(skill, scene, uniq, rng)
        elif skill == "count":
            spec = _ask_count(scene, rng)
        elif skill == "exist":
            spec = _ask_exist(scene, rng)
        else:
            spec = _ask_relation(uniq, relations, rng)
        if spec is not None and (key := (spec.skill, spec.desc, spec.relation, spec.other)) not in seen:
            seen.add(key)
            specs.append(spec)
    return specs


def _ask_attribute(skill: str, scene: Scene, uniq: Uniqueness, rng: random.Random) -> QuestionSpec | None:
    """Asks "What <skill> is the X?" where X, described without that attribute, is one object only."""
    allowed = _WITHOUT[skill]
    candidates = [(i, found) for i in range(len(scene.objects)) if (found := uniq.shortest(i, allowed))]
    if not candidates:
        return None
    index, descs = candidates[int(rng.random() * len(candidates))]
    value = getattr(scene.objects[index], skill)
    return QuestionSpec(skill, _prefer_shape(descs, rng), skill, value)


def _ask_count(scene: Scene, rng: random.Random) -> QuestionSpec:
    """How many of a present kind of object (80%) or of a random, maybe absent, kind (answer 0)."""
    objects = scene.objects
    if objects and rng.random() >= 0.2:
        obj = objects[int(rng.random() * len(objects))]
        desc = describe(obj, _COUNT_ATTRIBUTES[int(rng.random() * len(_COUNT_ATTRIBUTES))])
    else:
        desc = Desc(pick(rng, SHAPES), pick(rng, _COLOR_NAMES) if rng.random() < 0.5 else None)
    return QuestionSpec("count", desc, "number", _count(desc, objects))


def _ask_exist(scene: Scene, rng: random.Random) -> QuestionSpec:
    """Asks "Is there a X?"; the answer is yes half of the time (X drawn from the scene or made absent)."""
    objects = scene.objects
    if objects and rng.random() < 0.5:
        obj = objects[int(rng.random() * len(objects))]
        desc = describe(obj, _EXIST_ATTRIBUTES[int(rng.random() * len(_EXIST_ATTRIBUTES))])
    else:
        desc = absent_desc(objects, rng)
    return QuestionSpec("exist", desc, "yesno", "yes" if _count(desc, objects) else "no")


def absent_desc(objects: Sequence[WorldObject], rng: random.Random, attempts: int = 12) -> Desc:
    """A (shape, colour) description that fits no object, usually one attribute away from a present
    object (a plausible hard negative). After ``attempts`` failures it returns the last try."""
    desc = Desc()
    for _ in range(attempts):
        if objects:
            obj = objects[int(rng.random() * len(objects))]
            shape, color = obj.shape, obj.color
            if rng.random() < 0.5:
                shape = pick(rng, SHAPES)
            else:
                color = pick(rng, _COLOR_NAMES)
        else:
            shape, color = pick(rng, SHAPES), pick(rng, _COLOR_NAMES)
        desc = Desc(shape, color)
        if not _count(desc, objects):
            return desc
    return desc


def _ask_relation(uniq: Uniqueness, relations: Sequence[Relation], rng: random.Random) -> QuestionSpec | None:
    """Asks "Is the X left of the Y?" about two uniquely described objects; yes and no equally often.

    A "no" asks the opposite of their dominant direction, never a direction that merely lost to
    the other axis, so the answer is clear from the picture.
    """
    pairs = [r for r in relations if r.relation in _OPPOSITE and uniq.shortest(r.subject) and uniq.shortest(r.object)]
    if not pairs:
        return None
    chosen = pairs[int(rng.random() * len(pairs))]
    holding = [r.relation for r in relations if r.subject == chosen.subject and r.object == chosen.object]
    relation = pick(rng, holding) if rng.random() < 0.5 else _OPPOSITE[chosen.relation]
    subject, other = _prefer_shape(uniq.shortest(chosen.subject), rng), _prefer_shape(uniq.shortest(chosen.object), rng)
    answer = "yes" if relation in holding else "no"
    return QuestionSpec("relation", subject, "yesno", answer, relation, other)


def _vqa_item(spec: QuestionSpec, scene: Scene, rng: random.Random, question_id: int) -> VQAItem:
    questions = {
        lang: grammar(lang).question(spec.skill, spec.desc, rng, spec.relation, spec.other) for lang in LANGUAGES
    }
    answers_by_lang = {lang: grammar(lang).answer(spec.answer_kind, spec.answer) for lang in LANGUAGES}
    canonical = answers_by_lang["en"]
    return VQAItem(
        question_id=question_id,
        image_id=scene.image_id,
        skill=spec.skill,
        question_type=QUESTION_TYPES[spec.skill],
        answer_type=ANSWER_TYPES[spec.skill],
        answer=canonical,
        answers=annotator_answers(spec, canonical, scene.objects, rng),
        questions=questions,
        answers_by_lang=answers_by_lang,
    )


def annotator_answers(
    spec: QuestionSpec, canonical: str, objects: Sequence[WorldObject], rng: random.Random
) -> list[str]:
    """Ten annotator answers: mostly ``canonical``, ~10% formatting variants or synonyms that VQA
    normalisation maps together ("two"/"2", "yes."/"yes", "a star"), ~6% wrong but plausible
    answers. At most 2 wrong and 4 non-canonical answers, so ``canonical`` keeps the majority."""
    draw = rng.random()
    wrong = 0 if draw < 0.5 else 1 if draw < 0.87 else 2
    draw = rng.random()
    variants = min(0 if draw < 0.35 else 1 if draw < 0.7 else 2 if draw < 0.9 else 3, 4 - wrong)
    answers = [canonical] * ANNOTATORS
    slots = rng.sample(range(ANNOTATORS), wrong + variants)
    for slot in slots[:wrong]:
        answers[slot] = _wrong_answer(spec, objects, rng)
    for slot in slots[wrong:]:
        answers[slot] = pick(rng, _answer_variants(spec, canonical))
    return answers


def _answer_variants(spec: QuestionSpec, canonical: str) -> tuple[str, ...]:
    if spec.answer_kind == "number":
        word = EN_NUMBER_WORDS[int(spec.answer)] if int(spec.answer) < len(EN_NUMBER_WORDS) else canonical
        return (word, f"{canonical}.", word.capitalize())
    if spec.answer_kind == "yesno":
        return (f"{canonical}.", canonical.capitalize(), f"{canonical}!")
    if spec.answer_kind == "shape":
        article = "an" if canonical[0] in "aeiou" else "a"
        return (f"{article} {canonical}", f"the {canonical}", canonical.capitalize())
    if spec.answer_kind == "size":
        synonym = {"small": "little", "medium": "medium-sized", "large": "big"}[canonical]
        return (synonym, f"{canonical}.", canonical.capitalize())
    if canonical == "gray":
        return ("grey", "Gray", "gray.")
    return (canonical.capitalize(), f"{canonical}.")


def _wrong_answer(spec: QuestionSpec, objects: Sequence[WorldObject], rng: random.Random) -> str:
    """A plausible mistake: the opposite yes/no, a count off by one, a neighbouring size, or a
    colour/shape seen elsewhere in the scene."""
    kind, value = spec.answer_kind, spec.answer
    if kind == "yesno":
        return "no" if value == "yes" else "yes"
    if kind == "number":
        n = int(value)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if kind == "size":
        k = _SIZE_NAMES.index(str(value))
        neighbours = [_SIZE_NAMES[j] for j in (k - 1, k + 1) if 0 <= j < len(_SIZE_NAMES)]
        return pick(rng, neighbours)
    vocabulary = _COLOR_NAMES if kind == "color" else SHAPES
    seen = sorted({getattr(o, kind) for o in objects} - {value})
    return pick(rng, seen) if seen else pick(rng, [v for v in vocabulary if v != value])


# --------------------------------------------------------------------------- referring expressions


class RefPlan(NamedTuple):
    """Object ``index`` described by ``desc``, optionally "``relation`` the ``other_desc``" (object ``other_index``)."""

    index: int
    desc: Desc
    relation: str | None = None
    other_index: int | None = None
    other_desc: Desc | None = None


def plan_refexp(
    scene: Scene,
    index: int,
    rng: random.Random,
    uniq: Uniqueness | None = None,
    relations: Sequence[Relation] | None = None,
) -> RefPlan | None:
    """The RefCOCO+-style description of object ``index``, or None when nothing singles it out.

    First the shortest attribute description unique in the scene; failing that (identical
    twins), the shortest attributes plus a relation to an object that is itself uniquely
    described, such that only ``index`` stands in that relation.
    """
    uniq = uniq or Uniqueness(scene.objects)
    relations = scene_relations(scene) if relations is None else relations
    descs = uniq.shortest(index)
    if descs:
        return RefPlan(index, _prefer_shape(descs, rng))
    holding = {(r.subject, r.relation, r.object) for r in relations}
    anchors = [r for r in relations if r.subject == index and uniq.shortest(r.object)]
    rng.shuffle(anchors)
    obj = scene.objects[index]
    for subset in _SUBSETS[ATTRIBUTES]:
        if "shape" not in subset:
            continue
        desc = describe(obj, subset)
        lookalikes = [k for k, o in enumerate(scene.objects) if matches(desc, o)]
        for anchor in anchors:
            if all((k, anchor.relation, anchor.object) not in holding for k in lookalikes if k != index):
                other_desc = _prefer_shape(uniq.shortest(anchor.object), rng)
                return RefPlan(index, desc, anchor.relation, anchor.object, other_desc)
    return None


# --------------------------------------------------------------------------- statements (NLVR2, XVNLI)


def claim_holds(claim: Claim, scenes: Mapping[str, Scene]) -> bool:
    """Truth of ``claim``; ``scenes`` is {"image": s} for one image or {"left": l, "right": r} for a pair.

    Raises ValueError for the neutral kinds, which no image decides.
    """
    desc = claim.desc or Desc()
    targets = [scenes["left"], scenes["right"]] if claim.scope == "both" else [scenes[claim.scope]]
    if claim.kind == "exist":
        return all(_count(desc, s.objects) > 0 for s in targets)
    if claim.kind == "count":
        return all(_count(desc, s.objects) == claim.number for s in targets)
    if claim.kind == "none":
        return all(_count(desc, s.objects) == 0 for s in targets)
    if claim.kind == "more":
        other = scenes[_OTHER_SIDE[claim.scope]]
        return _count(desc, scenes[claim.scope].objects) > _count(desc, other.objects)
    if claim.kind == "relation":
        return all(_relation_exists(claim, s) for s in targets)
    raise ValueError(f"claim kind {claim.kind!r} has no truth value")


def _relation_exists(claim: Claim, scene: Scene) -> bool:
    subject, other, objects = claim.desc or Desc(), claim.other or Desc(), scene.objects
    return any(
        r.relation == claim.relation and matches(subject, objects[r.subject]) and matches(other, objects[r.object])
        for r in scene_relations(scene)
    )


def _claim_desc(objects: Sequence[WorldObject], rng: random.Random) -> Desc:
    """A description for a statement: of a present object (75%) or one absent from ``objects``."""
    if objects and rng.random() < 0.75:
        obj = objects[int(rng.random() * len(objects))]
        return describe(obj, _CLAIM_ATTRIBUTES[int(rng.random() * len(_CLAIM_ATTRIBUTES))])
    return absent_desc(objects, rng)


def _propose_claim(scenes: Mapping[str, Scene], rng: random.Random, want: bool) -> Claim | None:
    """A random statement that aims at truth value ``want`` (the caller checks it with claim_holds)."""
    pair = "left" in scenes
    kind = pick(rng, CLAIM_KINDS if pair else [k for k in CLAIM_KINDS if k != "more"])
    if pair:
        scope = pick(rng, ("left", "right")) if kind in ("more", "relation") else pick(rng, ("left", "right", "both"))
        pool = [*scenes["left"].objects, *scenes["right"].objects]
    else:
        scope, pool = "image", scenes["image"].objects
    if kind == "relation":
        return _propose_relation_claim(scenes[scope], scope, rng, want)
    desc = _claim_desc(pool, rng)
    if kind != "count":
        return Claim(kind, scope, desc)
    counted = scenes[scope] if scope != "both" else scenes[pick(rng, ("left", "right"))]
    n = _count(desc, counted.objects)
    if not want:
        n = n + 1 if n == 0 or rng.random() < 0.5 else n - 1
    return Claim("count", scope, desc, n) if n >= 1 else None


def _propose_relation_claim(scene: Scene, scope: str, rng: random.Random, want: bool) -> Claim | None:
    relations = [r for r in scene_relations(scene) if r.relation in _OPPOSITE]
    if not relations:
        return None
    chosen = relations[int(rng.random() * len(relations))]
    attributes = ("shape", "color") if rng.random() < 0.6 else ("shape",)
    subject = describe(scene.objects[chosen.subject], attributes)
    other = describe(scene.objects[chosen.object], attributes)
    relation = chosen.relation if want else _OPPOSITE[chosen.relation]
    return Claim("relation", scope, subject, relation=relation, other=other)


def _claim_with_label(scenes: Mapping[str, Scene], rng: random.Random, want: bool, attempts: int = 40) -> Claim:
    """A statement whose truth value is ``want``: proposals are checked against the scenes; the
    counting fallback can always be made true or false."""
    for _ in range(attempts):
        claim = _propose_claim(scenes, rng, want)
        if claim is not None and claim_holds(claim, scenes) == want:
            return claim
    scope = "left" if "left" in scenes and scenes["left"].objects else "right" if "right" in scenes else "image"
    objects = scenes[scope].objects
    if not objects:
        desc = Desc(pick(rng, SHAPES))
        return Claim("none", scope, desc) if want else Claim("exist", scope, desc)
    desc = describe(objects[0], ("shape",))
    n = _count(desc, objects)
    return Claim("count", scope, desc, n if want else n + 1)


def make_nlvr(left: Scene, right: Scene, rng: random.Random, item_id: int) -> NLVRItem:
    """An NLVR2-style statement about the (left, right) pair; the label is True half of the time."""
    scenes = {"left": left, "right": right}
    claim = _claim_with_label(scenes, rng, rng.random() < 0.5)
    texts = {lang: grammar(lang).statement(claim, rng) for lang in LANGUAGES}
    return NLVRItem(item_id, left.image_id, right.image_id, texts, claim_holds(claim, scenes))


def make_xvnli(scene: Scene, rng: random.Random, item_id: int) -> XVNLIItem:
    """A hypothesis about ``scene``: entailment (true), contradiction (false) or neutral (a property
    the image cannot show, such as material, weight or who drew it); each a third of the time."""
    label = pick(rng, ("entailment", "contradiction", "neutral"))
    if label == "neutral":
        claim = _neutral_claim(scene, rng)
    else:
        claim = _claim_with_label({"image": scene}, rng, label == "entailment")
        label = "entailment" if claim_holds(claim, {"image": scene}) else "contradiction"
    texts = {lang: grammar(lang).statement(claim, rng) for lang in LANGUAGES}
    return XVNLIItem(item_id, scene.image_id, texts, label)


def _neutral_claim(scene: Scene, rng: random.Random) -> Claim:
    kind = pick(rng, NEUTRAL_KINDS)
    if kind == "drawn_by_child":
        return Claim(kind)
    # The statement presupposes "the X": X must be one object of the scene.
    uniq = Uniqueness(scene.objects)
    candidates = [found for i in range(len(scene.objects)) if (found := uniq.shortest(i))]
    if not candidates:
        return Claim("drawn_by_child")
    return Claim(kind, desc=_prefer_shape(candidates[int(rng.random() * len(candidates))], rng))


# --------------------------------------------------------------------------- videos


class VideoPlan(NamedTuple):
    """A video caption: frame, connective, and (object index, attributes, events) per mentioned object."""

    frame: str
    connective: str
    items: tuple[tuple[int, tuple[str, ...], tuple[tuple[str, str | None], ...]], ...]


def _events_by_object(clip: VideoClip) -> dict[int, tuple[tuple[str, str | None], ...]]:
    grouped: dict[int, list[tuple[str, str | None]]] = {}
    for event in clip.events:
        grouped.setdefault(event.object_index, []).append((event.kind, event.to_color))
    return {index: tuple(events) for index, events in sorted(grouped.items())}


def annotate_video(
    clip: VideoClip, rng: random.Random, question_ids: Iterator[int], n_captions: int = 5
) -> VideoAnnotations:
    """Captions describing the motion in every language, and short-answer questions about it.

    Objects are described by their first-frame attributes ("a small red circle grows").
    """
    objects = clip.frames[0].objects if clip.frames else []
    events = _events_by_object(clip)
    plans = _video_plans(len(objects), events, rng, n_captions)
    resolved = [
        (plan.frame, plan.connective, [Action(describe(objects[i], attrs), evs) for i, attrs, evs in plan.items])
        for plan in plans
    ]
    captions = {
        lang: [grammar(lang).video_caption(frame, actions, connective, rng) for frame, connective, actions in resolved]
        for lang in LANGUAGES
    }
    qa = [_video_qa_item(spec, clip, rng, next(question_ids)) for spec in _video_question_specs(clip, events, rng)]
    return VideoAnnotations(clip, captions, qa)


def _video_plans(
    count: int, events: Mapping[int, tuple[tuple[str, str | None], ...]], rng: random.Random, n: int
) -> list[VideoPlan]:
    """``n`` different caption plans (fewer only when the clip is empty)."""
    if count == 0:
        return [VideoPlan(VIDEO_FRAMES[k % len(VIDEO_FRAMES)], "and", ()) for k in range(n)]
    moving = list(events)
    still = [i for i in range(count) if i not in events]
    plans: list[VideoPlan] = []
    seen: set[VideoPlan] = set()
    for _ in range(n * 30):
        items = [(i, events[i]) for i in moving]
        rng.shuffle(items)
        items = items[:3]
        if still and (not items or (len(items) < 3 and rng.random() < 0.35)):
            items.append((_pick_index(still, rng), ((STAY, None),)))
        connective = pick(rng, CONNECTIVES) if len(items) > 1 else "and"
        plan = VideoPlan(
            pick(rng, VIDEO_FRAMES), connective, tuple((i, _video_attributes(rng), evs) for i, evs in items)
        )
        if plan not in seen:
            seen.add(plan)
            plans.append(plan)
            if len(plans) == n:
                break
    return plans


def _pick_index(indices: Sequence[int], rng: random.Random) -> int:
    return indices[int(rng.random() * len(indices))]


def _video_attributes(rng: random.Random) -> tuple[str, ...]:
    attributes = ["shape"]
    if rng.random() < 0.8:
        attributes.append("color")
    if rng.random() < 0.3:
        attributes.append("size")
    if rng.random() < 0.2:
        attributes.append("texture")
    return tuple(attributes)


class VideoQuestionSpec(NamedTuple):
    kind: str  # action / turn_color / which_shape
    answer_kind: str  # action / color / shape
    answer: str
    desc: Desc | None = None
    event: str | None = None


def _video_unique_descs(clip: VideoClip, index: int, allowed: tuple[str, ...]) -> list[Desc]:
    """Shortest descriptions that fit object ``index`` in the first and last frame and no other
    object in either (attributes change over a clip, so both ends must agree)."""
    first, last = clip.frames[0].objects, clip.frames[-1].objects
    found: list[Desc] = []
    length = 0
    for subset in _SUBSETS[allowed]:
        if found and len(subset) > length:
            break
        desc = describe(first[index], subset)
        if not matches(desc, last[index]):
            continue
        if any(k != index and (matches(desc, first[k]) or matches(desc, last[k])) for k in range(len(first))):
            continue
        found.append(desc)
        length = len(subset)
    return found


def _video_question_specs(
    clip: VideoClip, events: Mapping[int, tuple[tuple[str, str | None], ...]], rng: random.Random
) -> list[VideoQuestionSpec]:
    """Up to one question of each kind, about uniquely described objects with one event each."""
    if not clip.frames:
        return []
    specs = []
    single = [i for i, evs in events.items() if len(evs) == 1]
    rng.shuffle(single)
    for index in single:
        descs = _video_unique_descs(clip, index, ATTRIBUTES)
        if descs:
            kind = events[index][0][0]
            specs.append(VideoQuestionSpec("action", "action", kind, _prefer_shape(descs, rng)))
            break
    for index in single:
        kind, to_color = events[index][0]
        descs = _video_unique_descs(clip, index, _WITHOUT["color"]) if kind == "change_color" else []
        if descs and to_color:
            specs.append(VideoQuestionSpec("turn_color", "color", to_color, _prefer_shape(descs, rng)))
            break
    kinds = [kind for evs in events.values() for kind, _ in evs]
    unique_kinds = [k for k in dict.fromkeys(kinds) if kinds.count(k) == 1]
    if unique_kinds:
        kind = pick(rng, unique_kinds)
        owner = next(i for i, evs in events.items() if any(k == kind for k, _ in evs))
        shape = clip.frames[0].objects[owner].shape
        specs.append(VideoQuestionSpec("which_shape", "shape", shape, event=kind))
    return specs


def _video_qa_item(spec: VideoQuestionSpec, clip: VideoClip, rng: random.Random, question_id: int) -> VideoQAItem:
    questions = {lang: grammar(lang).video_question(spec.kind, rng, spec.desc, spec.event) for lang in LANGUAGES}
    answers_by_lang = {lang: grammar(lang).answer(spec.answer_kind, spec.answer) for lang in LANGUAGES}
    return VideoQAItem(question_id, clip.video_id, questions, answers_by_lang["en"], answers_by_lang)


# --------------------------------------------------------------------------- parallel text


def parallel_pairs(ann: ImageAnnotations, rng: random.Random, k: int = 2) -> list[ParallelPair]:
    """``k`` translation pairs from aligned captions (75%) or region phrases: English to another
    language (75%), else between two non-English languages."""
    others = [lang for lang in LANGUAGES if lang != "en" and lang in ann.captions]
    pairs: list[ParallelPair] = []
    seen: set[tuple[bool, int, str, str]] = set()
    for _ in range(k * 4):
        if len(pairs) == k or not others:
            break
        use_captions = not ann.region_phrases.get("en") or rng.random() < 0.75
        texts = ann.captions if use_captions else ann.region_phrases
        index = int(rng.random() * len(texts["en"]))
        if rng.random() < 0.75 or len(others) < 2:
            source, target = "en", pick(rng, others)
        else:
            source, target = rng.sample(others, 2)
        key = (use_captions, index, source, target)
        if key not in seen:
            seen.add(key)
            pairs.append(ParallelPair(source, target, texts[source][index], texts[target][index]))
    return pairs
