"""The world's language layer (language.py, lang_*.py) and task annotations (annotate.py).

Answers and labels are checked against the scenes by an independent reader of the English text
written here (a small parser over the English lexicon), not by calling the code under test.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest

from grainvl.data.world import annotate
from grainvl.data.world.lang_base import Desc, Fact, full_desc
from grainvl.data.world.language import (
    LANGUAGES,
    caption_plans,
    grammar,
    realize_caption,
    realize_captions,
    region_phrase,
)
from grainvl.data.world.ontology import COLORS, SHAPES, TEXTURES
from grainvl.data.world.scene import Scene, VideoClip, VideoEvent, WorldObject, compute_relations

# --------------------------------------------------------------------------- builders

SIDES = {"small": 16, "medium": 30, "large": 44}


def obj(
    shape: str, color: str, size: str = "medium", texture: str = "solid", at: tuple[int, int] = (0, 0)
) -> WorldObject:
    """An object whose box is centred on grid cell ``at`` = (column, row) of 64 px cells."""
    side = SIDES[size]
    x, y = at[0] * 64 + (64 - side) // 2, at[1] * 64 + (64 - side) // 2
    return WorldObject(shape, color, size, texture, (x, y, side, side))


def scene(objects: list[WorldObject], image_id: int = 1) -> Scene:
    return Scene(image_id, "train", 192, 192, "plain", objects, 0, compute_relations(objects))


def random_scene(rng: random.Random, image_id: int, max_objects: int = 6) -> Scene:
    """Objects on distinct cells of a 3x3 grid from a small vocabulary, with deliberate twins, so that
    uniqueness and relation fallbacks are exercised."""
    cells = rng.sample(range(9), rng.randint(1, max_objects))
    objects: list[WorldObject] = []
    for cell in cells:
        at = (cell % 3, cell // 3)
        if objects and rng.random() < 0.25:
            twin = rng.choice(objects)
            objects.append(obj(twin.shape, twin.color, twin.size, twin.texture, at))
        else:
            size = rng.choice(tuple(SIDES))
            objects.append(obj(rng.choice(SHAPES[:5]), rng.choice(tuple(COLORS)[:5]), size, rng.choice(TEXTURES), at))
    return scene(objects, image_id)


# --------------------------------------------------------------------------- an independent English reader

EN_SHAPES = {s: s for s in SHAPES} | {"disc": "circle", "rhombus": "diamond", "ellipse": "oval"}
EN_COLORS = {c: c for c in COLORS} | {"grey": "gray"}
EN_SIZES = {
    "small": "small",
    "little": "small",
    "medium": "medium",
    "medium-sized": "medium",
    "large": "large",
    "big": "large",
}
EN_TEXTURES = {
    "solid": "solid",
    "plain": "solid",
    "striped": "striped",
    "dotted": "dotted",
    "polka-dot": "dotted",
    "checkered": "checkered",
    "checked": "checkered",
}
EN_RELATIONS = {
    "to the left of": "left of",
    "left of": "left of",
    "to the right of": "right of",
    "right of": "right of",
    "above": "above",
    "below": "below",
    "under": "below",
    "next to": "next to",
    "beside": "next to",
}
EN_NUMBERS = {
    w: k for k, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}


def parse_desc(phrase: str) -> Desc:
    """Attributes named in an English noun phrase (singular or plural); unknown words are ignored."""
    found: dict[str, str] = {}
    for word in phrase.lower().split():
        for field, table in (("size", EN_SIZES), ("texture", EN_TEXTURES), ("color", EN_COLORS)):
            if word in table:
                found[field] = table[word]
        for form in (word, word[:-1], word[:-2]):  # discs, ellipses, crosses
            if form in EN_SHAPES:
                found["shape"] = EN_SHAPES[form]
                break
    return Desc(found.get("shape"), found.get("color"), found.get("size"), found.get("texture"))


def fits(desc: Desc, o: WorldObject) -> bool:
    return all(v is None or v == getattr(o, f) for f, v in desc._asdict().items())


def matching(desc: Desc, s: Scene) -> list[int]:
    return [k for k, o in enumerate(s.objects) if fits(desc, o)]


def split_relation(text: str) -> tuple[str, str, str] | None:
    """``"A <relation> B"`` -> (A, relation key, B), longest relation phrase first."""
    for phrase in sorted(EN_RELATIONS, key=len, reverse=True):
        head, sep, tail = text.partition(f" {phrase} ")
        if sep:
            return head, EN_RELATIONS[phrase], tail
    return None


def holds(s: Scene, subject: int, relation: str, other: int) -> bool:
    return any((r.subject, r.relation, r.object) == (subject, relation, other) for r in s.relations)


def relation_exists(text: str, s: Scene) -> bool:
    parts = split_relation(text)
    assert parts, text
    a, rel, b = parts
    return any(holds(s, i, rel, j) for i in matching(parse_desc(a), s) for j in matching(parse_desc(b), s))


def statement_truth(text: str, scenes: dict[str, Scene]) -> bool:
    """Truth of an English NLVR2/XVNLI statement, read from the text alone."""
    t = text.rstrip(".")
    if m := re.fullmatch(r"There are more (.+) in the (left|right) image than in the (left|right) image", t):
        desc = parse_desc(m[1])
        return len(matching(desc, scenes[m[2]])) > len(matching(desc, scenes[m[3]]))
    if m := re.fullmatch(r"In the (left|right) image, (.+)", t):
        return relation_exists(m[2], scenes[m[1]])
    subjects = {
        "Both images contain": "both",
        "Each image contains": "both",
        "Neither image contains": "neither",
        "The left image contains": "left",
        "The right image contains": "right",
        "There is": "image",
        "There are": "image",
    }
    for opener, where in subjects.items():
        if t.startswith(opener + " "):
            rest = t[len(opener) + 1 :]
            targets = [scenes["left"], scenes["right"]] if where in ("both", "neither") else [scenes[where]]
            if m := re.fullmatch(r"exactly (\w+) (.+)", rest):
                return all(len(matching(parse_desc(m[2]), s)) == EN_NUMBERS[m[1]] for s in targets)
            if rest.startswith("no ") or where == "neither":
                return all(not matching(parse_desc(rest), s) for s in targets)
            return all(matching(parse_desc(rest), s) for s in targets)
    return relation_exists(t, scenes["image"])


def vqa_truth(question: str, s: Scene) -> str:
    """The answer an English VQA question has in ``s``; asserts the question names one object."""
    q = question.rstrip("?")
    for attribute in ("color", "shape", "size"):
        if m := re.fullmatch(rf"What {attribute} is the (.+)", q):
            found = matching(parse_desc(m[1]), s)
            assert len(found) == 1, (question, found)
            return getattr(s.objects[found[0]], attribute)
    if m := re.fullmatch(r"How many (.+?) (are there|can you see|are in the picture)", q):
        return str(len(matching(parse_desc(m[1]), s)))
    if m := re.fullmatch(r"Is there (.+?)( in the picture| in the image)?", q):
        return "yes" if matching(parse_desc(m[1]), s) else "no"
    if m := re.fullmatch(r"Is the (.+)", q):
        a, rel, b = split_relation(m[1]) or ("", "", "")
        subject, other = matching(parse_desc(a), s), matching(parse_desc(b), s)
        assert len(subject) == 1 and len(other) == 1, question
        return "yes" if holds(s, subject[0], rel, other[0]) else "no"
    raise AssertionError(f"unreadable question {question!r}")


def shape_mentions(text: str) -> int:
    """Shape nouns (any number) plus "shape(s)" in an English text."""
    words = text.lower().replace(",", " ").replace(".", " ").split()
    return sum(1 for w in words if parse_desc(w).shape or w in ("shape", "shapes"))


# --------------------------------------------------------------------------- grammar: agreement and word order


def test_german_gender_case_and_adjective_endings():
    rng, de = random.Random(0), grammar("de")
    assert de.region(Desc("star", "red", "large"), False, rng) == "ein großer roter Stern"
    assert de.region(Desc("diamond", "blue", "small"), False, rng) == "eine kleine blaue Raute"
    assert de.region(Desc("hexagon", "green", "small"), False, rng) == "ein kleines grünes Sechseck"
    assert de.region(Desc("star", "red", "large"), True, rng) == "der große rote Stern"
    # Dative after the local prepositions, "von dem" contracted to "vom".
    assert (
        de.refexp(Desc("circle", "red"), rng, "left of", Desc("square", "blue"))
        == "der rote Kreis links vom blauen Quadrat"
    )
    assert de.refexp(Desc("circle"), rng, "above", Desc("diamond", "blue")) == "der Kreis über der blauen Raute"
    assert de.refexp(Desc("heart"), rng, "next to", Desc("star")) == "das Herz neben dem Stern"
    assert de.question("exist", Desc("circle", "red"), rng) == "Gibt es einen roten Kreis?"
    assert de.question("count", Desc("circle", "red"), rng) == "Wie viele rote Kreise gibt es?"
    caption = de.caption("showing", [annotate_fact("star", "left of", "diamond")], 2, rng)
    assert caption == "Ein Bild mit einem Stern links von einer Raute und zwei weiteren Formen."


def annotate_fact(subject: str, relation: str, other: str) -> Fact:
    return Fact(Desc(subject), relation, Desc(other))


def test_french_agreement_postnominal_adjectives_and_contraction():
    rng, fr = random.Random(0), grammar("fr")
    assert fr.region(Desc("star", "red", "large", "striped"), False, rng) == "une grande étoile rouge rayée"
    assert fr.region(Desc("circle", "white", "small"), False, rng) == "un petit cercle blanc"
    assert fr.region(Desc("star", "white"), True, rng) == "l'étoile blanche"
    assert (
        fr.refexp(Desc("circle", "red"), rng, "left of", Desc("square", "blue"))
        == "le cercle rouge à gauche du carré bleu"
    )
    assert fr.refexp(Desc("cross", "gray"), rng, "next to", Desc("hexagon")) == "la croix grise à côté de l'hexagone"
    assert fr.question("count", Desc("star", "green"), rng) == "Combien d'étoiles vertes y a-t-il ?"


def test_spanish_agreement_and_contraction():
    rng, es = random.Random(0), grammar("es")
    assert es.region(Desc("circle", "blue", "small"), False, rng) == "un pequeño círculo azul"
    assert es.region(Desc("star", "red", "large", "striped"), False, rng) == "una gran estrella roja rayada"
    assert (
        es.refexp(Desc("circle", "red"), rng, "left of", Desc("square", "blue"))
        == "el círculo rojo a la izquierda del cuadrado azul"
    )
    assert es.question("count", Desc("star", "red"), rng) == "¿Cuántas estrellas rojas hay?"


def test_chinese_and_japanese_word_order():
    rng = random.Random(0)
    assert grammar("zh").region(Desc("circle", "red", "large"), False, rng) == "一个红色的大圆形"
    assert grammar("zh").refexp(Desc("circle"), rng, "left of", Desc("square", "blue")) == "蓝色的正方形左边的圆形"
    assert grammar("ja").region(Desc("star", "red", "large", "striped"), False, rng) == "大きな縞模様の赤い星"
    assert grammar("ja").refexp(Desc("circle"), rng, "left of", Desc("square", "blue")) == "青い正方形の左にある円"


def test_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown language 'xx'; known: en, de, fr, es, zh, ja"):
        region_phrase(obj("star", "red"), "xx", random.Random(0))
    plan = caption_plans(scene([obj("star", "red")]), random.Random(0), 1)[0]
    with pytest.raises(ValueError, match="unknown language 'pt'"):
        realize_caption(plan, scene([obj("star", "red")]), "pt", random.Random(0))


# --------------------------------------------------------------------------- captions

RELATION_WORDS = {
    "en": ("left", "right", "above", "below", "under", "next to", "beside"),
    "de": ("links", "rechts", "über", "unter", "neben"),
    "fr": ("gauche", "droite", "au-dessus", "en dessous", "à côté"),
    "es": ("izquierda", "derecha", "encima", "debajo", "al lado"),
    "zh": ("左边", "右边", "上面", "下面", "旁边"),
    "ja": ("左", "右", "上", "下", "隣"),
}


def test_captions_differ_mention_objects_and_a_relation_in_every_language():
    rng = random.Random(5)
    for image_id in range(60):
        s = random_scene(rng, image_id)
        plans = caption_plans(s, rng, 5)
        captions = realize_captions(plans, s, rng)
        for lang in LANGUAGES:
            assert len(captions[lang]) == 5 and len(set(captions[lang])) == 5, (lang, captions[lang])
        for plan, en in zip(plans, captions["en"]):
            named = {f.subject.index for f in plan.facts} | {f.object.index for f in plan.facts if f.object}
            assert len(named) + plan.others == len(s.objects)
            assert len(named) == len(s.objects) if len(s.objects) <= 3 else len(named) >= 2
            assert shape_mentions(en) >= min(2, len(s.objects)), en
        if len(s.objects) >= 2:
            for lang in LANGUAGES:
                for text in captions[lang]:
                    assert any(w in text for w in RELATION_WORDS[lang]), (lang, text)


def test_caption_relations_are_true_in_the_scene():
    rng = random.Random(6)
    for image_id in range(40):
        s = random_scene(rng, image_id)
        for plan in caption_plans(s, rng, 5):
            for fact in plan.facts:
                if fact.relation:
                    assert holds(s, fact.subject.index, fact.relation, fact.object.index)


def test_one_object_scene_still_gets_five_different_captions():
    s = scene([obj("heart", "pink", "small", "dotted")])
    captions = realize_captions(caption_plans(s, random.Random(1), 5), s, random.Random(1))
    assert all(len(set(c)) == 5 for c in captions.values())
    assert all("heart" in c for c in captions["en"])


def test_chinese_and_japanese_texts_have_no_latin_letters():
    rng = random.Random(7)
    latin = re.compile("[A-Za-z]")
    for image_id in range(40):
        s = random_scene(rng, image_id)
        ann = annotate.annotate_image(s, rng, itertools.count(), itertools.count())
        xvnli = annotate.make_xvnli(s, rng, image_id)
        nlvr = annotate.make_nlvr(s, random_scene(rng, 999), rng, image_id)
        for lang in ("zh", "ja"):
            texts = ann.captions[lang] + ann.region_phrases[lang] + [xvnli.texts[lang], nlvr.texts[lang]]
            texts += [q.questions[lang] for q in ann.vqa] + [q.answers_by_lang[lang] for q in ann.vqa]
            texts += [r.texts[lang] for r in ann.refexps]
            assert not [t for t in texts if latin.search(t)], lang


# --------------------------------------------------------------------------- VQA


def test_vqa_answers_match_the_scene_and_questions_are_unique():
    rng = random.Random(8)
    skills: Counter[str] = Counter()
    yes_no: Counter[str] = Counter()
    for image_id in range(150):
        s = random_scene(rng, image_id)
        ann = annotate.annotate_image(s, rng, itertools.count(), itertools.count(), n_questions=4)
        assert len(ann.vqa) == 4
        for q in ann.vqa:
            en = q.questions["en"]
            assert vqa_truth(en, s) == q.answer, (en, q.answer, s.objects)
            assert en.lower().startswith(q.question_type)
            assert q.answer_type == {"count": "number", "exist": "yes/no", "relation": "yes/no"}.get(q.skill, "other")
            assert len(q.answers) == 10
            top, votes = Counter(q.answers).most_common(1)[0]
            assert top == q.answer and votes >= 6
            assert set(q.questions) == set(LANGUAGES) == set(q.answers_by_lang)
            skills[q.skill] += 1
            if q.skill in ("exist", "relation"):
                yes_no[q.skill + q.answer] += 1
            if q.skill == "count":
                assert 0 <= int(q.answer) <= 6
    assert set(skills) == {"color", "shape", "count", "exist", "relation", "size"}
    for skill in ("exist", "relation"):
        share = yes_no[skill + "yes"] / (yes_no[skill + "yes"] + yes_no[skill + "no"])
        assert 0.3 < share < 0.7, (skill, yes_no)


def test_vqa_on_a_hand_built_scene():
    # A large red circle left of a small blue square; a green star below the circle.
    s = scene(
        [
            obj("circle", "red", "large", at=(0, 0)),
            obj("square", "blue", "small", at=(1, 0)),
            obj("star", "green", "medium", at=(0, 2)),
        ]
    )
    seen = {}
    for seed in range(40):
        for q in annotate.annotate_image(s, random.Random(seed), itertools.count(), itertools.count()).vqa:
            seen[q.questions["en"]] = q.answer
    expected = {
        "What color is the square?": "blue",
        "What shape is the green object?": "star",
        "What size is the circle?": "large",
        "Is there a star?": "yes",
        "How many objects are there?": "3",
    }
    for question, answer in expected.items():
        if question in seen:
            assert seen[question] == answer
    assert sum(q in seen for q in expected) >= 2
    assert any(q.startswith("Is the") for q in seen)


def test_annotator_answers_use_variants_that_normalise_together():
    rng = random.Random(9)
    s = scene([obj("circle", "gray", at=(0, 0)), obj("circle", "gray", at=(2, 0))])
    answers = []
    for _ in range(200):
        answers += annotate.annotator_answers(
            annotate.QuestionSpec("count", Desc("circle"), "number", 2), "2", s.objects, rng
        )
        answers += annotate.annotator_answers(
            annotate.QuestionSpec("color", Desc("circle"), "color", "gray"), "gray", s.objects, rng
        )
    counts = Counter(answers)
    assert counts["two"] > 0 and counts["grey"] > 0
    wrong = sum(n for a, n in counts.items() if a not in ("2", "two", "2.", "Two", "gray", "grey", "Gray", "gray."))
    assert 0.03 < wrong / len(answers) < 0.1


# --------------------------------------------------------------------------- referring expressions

ABSOLUTE_WORDS = {
    "en": ("top", "bottom", "corner", "middle", "center", "leftmost", "rightmost", "of the image", "of the picture"),
    "de": ("oben", "unten", "Ecke", "Mitte", "im Bild"),
    "fr": ("en haut", "en bas", "coin", "milieu", "de l'image"),
    "es": ("arriba", "abajo", "esquina", "centro", "de la imagen"),
    "zh": ("图中", "角落", "中间", "顶部", "底部"),
    "ja": ("画像", "隅", "真ん中", "上部", "下部"),
}


def refexp_target(text: str, s: Scene) -> list[int]:
    """The objects an English referring expression can denote in ``s``."""
    parts = split_relation(text)
    if parts is None:
        return matching(parse_desc(text), s)
    a, rel, b = parts
    anchors = matching(parse_desc(b), s)
    assert len(anchors) == 1, text  # the anchor must itself be unique
    return [i for i in matching(parse_desc(a), s) if holds(s, i, rel, anchors[0])]


def test_referring_expressions_are_unique_and_never_absolute():
    rng = random.Random(10)
    with_relation = 0
    for image_id in range(150):
        s = random_scene(rng, image_id)
        ann = annotate.annotate_image(s, rng, itertools.count(), itertools.count(100))
        for r in ann.refexps:
            assert refexp_target(r.texts["en"], s) == [r.object_index], (r.texts["en"], s.objects)
            with_relation += split_relation(r.texts["en"]) is not None
            for lang in LANGUAGES:
                assert not [w for w in ABSOLUTE_WORDS[lang] if w in r.texts[lang]], r.texts[lang]
        # Skipped objects really have an identical twin.
        referred = {r.object_index for r in ann.refexps}
        for k in set(range(len(s.objects))) - referred:
            assert len(matching(Desc(*full_desc(s.objects[k])), s)) > 1
    assert with_relation > 0


def test_identical_twins_are_told_apart_by_a_relation_or_skipped():
    twins_and_anchor = scene(
        [obj("circle", "red", at=(0, 1)), obj("square", "blue", at=(1, 1)), obj("circle", "red", at=(2, 1))]
    )
    ann = annotate.annotate_image(twins_and_anchor, random.Random(0), itertools.count(), itertools.count())
    texts = {r.object_index: r.texts["en"] for r in ann.refexps}
    assert set(texts) == {0, 1, 2}
    assert "left" in texts[0] and "right" in texts[2] and "square" in texts[0]
    only_twins = scene([obj("circle", "red", at=(0, 1)), obj("circle", "red", at=(2, 1))])
    assert annotate.annotate_image(only_twins, random.Random(0), itertools.count(), itertools.count()).refexps == []


# --------------------------------------------------------------------------- NLVR2 and XVNLI


def test_nlvr_labels_match_the_scenes_and_are_balanced():
    rng = random.Random(11)
    labels = []
    for k in range(300):
        left, right = random_scene(rng, 2 * k), random_scene(rng, 2 * k + 1)
        item = annotate.make_nlvr(left, right, rng, k)
        assert statement_truth(item.texts["en"], {"left": left, "right": right}) == item.label, item.texts["en"]
        assert (item.left_image_id, item.right_image_id) == (left.image_id, right.image_id)
        assert set(item.texts) == set(LANGUAGES)
        labels.append(item.label)
    assert 0.4 < sum(labels) / len(labels) < 0.6


def test_xvnli_labels_match_the_scene():
    rng = random.Random(12)
    labels: Counter[str] = Counter()
    for k in range(300):
        s = random_scene(rng, k)
        item = annotate.make_xvnli(s, rng, k)
        en = item.texts["en"]
        if item.label == "neutral":
            assert any(w in en for w in ("made of", "heavy", "drawn by")), en
        else:
            assert statement_truth(en, {"image": s}) == (item.label == "entailment"), en
        labels[item.label] += 1
    assert all(80 < labels[name] < 120 for name in ("entailment", "contradiction", "neutral")), labels


# --------------------------------------------------------------------------- video


def clip(events: list[VideoEvent], objects: list[WorldObject]) -> VideoClip:
    """A two-frame clip; the end frame applies the events' colour changes (enough for the annotator)."""
    end = list(objects)
    for e in events:
        if e.kind == "change_color":
            o = end[e.object_index]
            end[e.object_index] = WorldObject(o.shape, e.to_color or o.color, o.size, o.texture, o.box)
    return VideoClip(3, "train", [scene(objects), scene(end)], events, 0)


def test_video_captions_and_questions_describe_the_events():
    objects = [
        obj("circle", "red", "small", at=(2, 1)),
        obj("star", "blue", at=(0, 0)),
        obj("square", "green", at=(0, 2)),
    ]
    c = clip([VideoEvent(0, "move_left"), VideoEvent(1, "grow")], objects)
    ann = annotate.annotate_video(c, random.Random(3), itertools.count(), n_captions=5)
    for lang in LANGUAGES:
        assert len(set(ann.captions[lang])) == 5
    assert all("left" in t and ("grow" in t or "bigger" in t) for t in ann.captions["en"] if "star" in t)
    answers = {q.questions["en"]: q.answer for q in ann.qa}
    assert "Which shape grows?" in answers or "Which shape moves to the left?" in answers
    for question, answer in answers.items():
        if question.startswith("What does the"):
            target = matching(parse_desc(question[len("What does the") : -len(" do?")]), c.frames[0])
            assert answer == {0: "move left", 1: "grow"}[target[0]]
        if question == "Which shape grows?":
            assert answer == "star"


def test_video_color_change_question_names_the_new_colour():
    objects = [obj("star", "red", at=(0, 0)), obj("heart", "yellow", at=(2, 2))]
    ann = annotate.annotate_video(
        clip([VideoEvent(0, "change_color", "blue")], objects), random.Random(4), itertools.count()
    )
    qa = {q.questions["en"]: q for q in ann.qa}
    assert qa["What color does the star turn?"].answer == "blue"
    assert qa["What color does the star turn?"].answers_by_lang["de"] == "blau"
    assert qa["Which shape changes color?"].answer == "star"
    assert any("blau" in t for t in ann.captions["de"])


# --------------------------------------------------------------------------- parallel text and determinism


def test_parallel_pairs_are_aligned_translations():
    rng = random.Random(13)
    for image_id in range(30):
        ann = annotate.annotate_image(random_scene(rng, image_id), rng, itertools.count(), itertools.count())
        for pair in annotate.parallel_pairs(ann, rng, k=3):
            assert pair.source_lang != pair.target_lang
            for texts in (ann.captions, ann.region_phrases):
                if pair.source_text in texts[pair.source_lang]:
                    index = texts[pair.source_lang].index(pair.source_text)
                    assert texts[pair.target_lang][index] == pair.target_text
                    break
            else:
                raise AssertionError(pair)
        # Aligned captions agree on whether a relation is stated.
        for i, en in enumerate(ann.captions["en"]):
            has_relation = any(w in en for w in RELATION_WORDS["en"])
            for lang in LANGUAGES:
                assert any(w in ann.captions[lang][i] for w in RELATION_WORDS[lang]) == has_relation


def test_same_seed_same_annotations():
    def run(seed: int) -> tuple:
        rng = random.Random(seed)
        s, other = random_scene(rng, 1), random_scene(rng, 2)
        c = clip([VideoEvent(0, "shrink")], [obj("oval", "cyan", "large", at=(1, 1))])
        return (
            annotate.annotate_image(s, rng, itertools.count(), itertools.count()),
            annotate.make_nlvr(s, other, rng, 0),
            annotate.make_xvnli(s, rng, 0),
            annotate.annotate_video(c, rng, itertools.count()),
        )

    assert run(21) == run(21)
    assert run(21) != run(22)
