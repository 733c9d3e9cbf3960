"""Language-independent records of what the world says about its scenes and videos.

``annotate.py`` fills these from scenes; ``export.py`` turns them into the official dataset
formats. Texts are keyed by language code (``language.LANGUAGES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grainvl.data.world.scene import Scene, VideoClip


@dataclass
class VQAItem:
    """One question about one image, VQA v2 style.

    ``answers`` are the 10 annotator answers (English, with realistic synonym variation);
    ``answer`` is the canonical answer; ``answer_type`` is "yes/no", "number" or "other";
    ``skill`` is one of colour/shape/count/existence/relation/size (stored as
    "color", "shape", "count", "exist", "relation", "size"); ``question_type`` is the VQA v2-style
    question prefix ("what color is the", "how many", "is there a", ...).
    ``questions`` and ``answers_by_lang`` hold the translations (answers_by_lang[lang] is the
    canonical answer in that language).
    """

    question_id: int
    image_id: int
    skill: str
    question_type: str
    answer_type: str
    answer: str
    answers: list[str]
    questions: dict[str, str]
    answers_by_lang: dict[str, str]


@dataclass
class RefExp:
    """A referring expression that picks out exactly one object of its scene (no absolute location words)."""

    ref_id: int
    image_id: int
    object_index: int
    texts: dict[str, str]


@dataclass
class ImageAnnotations:
    """Everything said about one still image."""

    scene: Scene
    captions: dict[str, list[str]]  # lang -> >= 5 paraphrases mentioning several objects and relations
    region_phrases: dict[str, list[str]]  # lang -> one phrase per object, same order as scene.objects
    vqa: list[VQAItem] = field(default_factory=list)
    refexps: list[RefExp] = field(default_factory=list)


@dataclass
class NLVRItem:
    """An NLVR2-style statement about an (left, right) image pair, True or False."""

    item_id: int
    left_image_id: int
    right_image_id: int
    texts: dict[str, str]
    label: bool


@dataclass
class VideoQAItem:
    question_id: int
    video_id: int
    questions: dict[str, str]
    answer: str  # English canonical answer (single word or short phrase)
    answers_by_lang: dict[str, str]


@dataclass
class VideoAnnotations:
    clip: VideoClip
    captions: dict[str, list[str]]  # lang -> paraphrases describing the motion
    qa: list[VideoQAItem] = field(default_factory=list)


@dataclass
class ParallelPair:
    """A translation pair (same content, two languages) for cross-view language modelling."""

    source_lang: str
    target_lang: str
    source_text: str
    target_text: str


@dataclass
class XVNLIItem:
    """Visual entailment (XVNLI style): the image is the premise, ``texts`` the hypothesis.

    ``label`` is "entailment", "contradiction" or "neutral" (neutral: the image cannot decide it).
    """

    item_id: int
    image_id: int
    texts: dict[str, str]
    label: str
