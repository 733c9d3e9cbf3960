"""A TextFooler-style word-substitution attack (Jin et al., AAAI 2020; ``jind11/TextFooler``), offline.

Per example whose original prediction is correct (others are skipped, as TextFooler does):

1. **Word importance by deletion** (the paper's definition; the official code instead substitutes an
   ``<oov>`` token): ``I_i = p_y(x) − p_y(x∖w_i)``, plus ``p_ŷ(x∖w_i) − p_ŷ(x)`` when deleting ``w_i``
   changes the predicted label to ``ŷ``.
2. Words are visited by decreasing importance; **stop words are never perturbed**.
3. **Candidates** for a word come from an offline synonym table (:func:`world_synonym_table`); they
   replace TextFooler's counter-fitted-embedding neighbours (cos ≥ 0.5, top 50).
4. **Constraints** on each candidate text: (a) *POS match*: a word is only replaced by words of the
   same coarse part of speech (tags come with the table); (b) *sentence similarity*: the angular
   similarity ``1 − arccos(cos)/π`` of sentence embeddings of a 15-word window around the change,
   original vs. candidate, must reach 0.8408 (the official ``1 − arccos(cos) ≥ 0.5`` in these units,
   as textattack's ``TextFoolerJin2019`` recipe uses); texts shorter than the window use the official
   relaxed threshold (0.1 in their units = 0.7135 here). The Universal Sentence Encoder is replaced by
   the packaged all-MiniLM-L6-v2 sentence embeddings (mean pooling, as sentence-transformers does).
5. If some candidate flips the label, keep the flip with the highest similarity and stop (success).
   Otherwise keep the candidate with the lowest probability of the original label if it lowers it
   below the **current** text's (the paper's Algorithm 1; the official code compares with the
   *original* probability) and continue.
6. **Change budget**: at most ``max(1, floor(max_change_fraction · #words))`` words are changed (an
   addition: TextFooler has none and reports the perturbed share instead, which we report too).

Inputs may be single texts or ``(first, second)`` pairs; for pairs only the second text (the
hypothesis) is attacked, as TextFooler's NLI attack does.

Metrics (:class:`AttackSummary`): original accuracy, accuracy under attack, attack success rate =
successes / originally-correct examples (= 1 − after-attack acc / original acc), mean perturbed word
share and mean model queries per attacked example.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grainvl.compress.loyalty import ProbabilisticClassifier
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.data.world.ontology import COLORS, SHAPES, SIZES, TEXTURES
from grainvl.models.text import load_hf_bert

TextInput = str | tuple[str, str]
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")  # a word token; digits and punctuation are never substituted

# English stop words (function words, pronouns, auxiliaries, negations). TextFooler ships a longer
# list of the same kind; substituting these would change grammar or meaning, never a synonym.
_STOP_WORD_TEXT = """
a an the and or but nor so yet if then else than that this these those there here where when while
what which who whom whose why how all any both each every either neither few more most other some
such no not only own same too very can could may might must shall should will would is are was were
be been being am do does did doing have has had having i me my myself we our ours ourselves you your
yours yourself yourselves he him his himself she her hers herself it its itself they them their
theirs themselves of at by for with about against between into through during before after to from
in out on off up down over again further once as until also just now s t don't doesn't isn't aren't
wasn't weren't hasn't haven't hadn't won't wouldn't shouldn't couldn't can't cannot nothing none one
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORD_TEXT.split())

# Meaning-preserving substitutes for the world's vocabulary, grouped by coarse part of speech. Each
# colour keeps its warm/cool class (color_sst's label) and each shape its curved/angular class
# (shape_sst's), so a substitution that flips a correct model is a robustness failure, not a label change.
_NEAR_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "ADJ": {
        # colours (ontology.COLORS)
        "red": ("crimson", "scarlet", "ruby", "cherry"),
        "green": ("emerald", "lime", "olive"),
        "blue": ("azure", "navy", "cobalt", "sapphire"),
        "yellow": ("golden", "lemon", "gold"),
        "orange": ("tangerine", "amber", "apricot"),
        "purple": ("violet", "lavender", "plum"),
        "pink": ("rose", "rosy", "salmon"),
        "brown": ("tan", "chocolate", "chestnut"),
        "gray": ("grey", "silver", "ash"),
        "white": ("ivory", "snowy", "pale"),
        "black": ("ebony", "jet", "dark"),
        "cyan": ("turquoise", "aqua", "teal"),
        # sizes (ontology.SIZES)
        "small": ("little", "tiny", "mini", "petite"),
        "medium": ("mid-sized", "moderate", "average"),
        "large": ("big", "huge", "giant", "sizable"),
        # textures (ontology.TEXTURES)
        "solid": ("plain", "uniform"),
        "striped": ("stripy", "banded", "lined"),
        "dotted": ("spotted", "polka-dot", "speckled"),
        "checkered": ("checked", "plaid", "chequered"),
        # background words (text_tasks.BACKGROUND_WORDS)
        "plain": ("simple", "bare"),
        "shaded": ("graded", "tinted"),
        "noisy": ("grainy", "speckled"),
        "gridded": ("lattice", "squared"),
        "visible": ("seen", "shown", "present"),
    },
    "NOUN": {
        # shapes (ontology.SHAPES)
        "circle": ("disc", "disk", "round", "ring"),
        "square": ("quadrate", "box"),
        "triangle": ("trigon",),
        "star": ("starlet",),
        "hexagon": ("sexangle",),
        "diamond": ("rhombus", "lozenge"),
        "cross": ("plus", "crucifix"),
        "heart": ("valentine",),
        "pentagon": ("pentagram",),
        "oval": ("ellipse", "egg"),
        "object": ("item", "thing", "shape", "figure"),
        "objects": ("items", "things", "shapes", "figures"),
        "shape": ("figure", "form", "object"),
        "shapes": ("figures", "forms", "objects"),
        "picture": ("image", "photo", "scene"),
        "image": ("picture", "photo", "scene"),
        "background": ("backdrop", "setting"),
        "color": ("colour", "hue", "shade"),
        "size": ("dimension", "scale"),
    },
    "ADP": {
        "above": ("over", "atop"),
        "below": ("under", "beneath", "underneath"),
        "under": ("below", "beneath", "underneath"),
        "beside": ("alongside", "near", "by"),
        "near": ("beside", "close"),
    },
    "VERB": {
        "see": ("notice", "spot", "observe"),
        "showing": ("depicting", "displaying", "featuring"),
        "contains": ("holds", "includes", "has"),
    },
}


def world_synonym_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{word: (coarse POS, substitutes)}`` for the world's English vocabulary (lower case).

    Every colour, shape, size and texture of :mod:`grainvl.data.world.ontology` has an entry. Plural
    shape nouns get pluralised substitutes.
    """
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for pos, words in _NEAR_SYNONYMS.items():
        for word, substitutes in words.items():
            table[word] = (pos, substitutes)
    for shape in SHAPES:  # plurals: "two red circles"
        plural = "crosses" if shape == "cross" else shape + "s"
        subs = _NEAR_SYNONYMS["NOUN"][shape]
        table.setdefault(plural, ("NOUN", tuple(s + "es" if s.endswith(("s", "x")) else s + "s" for s in subs)))
    missing = [w for w in (*COLORS, *SHAPES, *SIZES, *TEXTURES) if w not in table]
    if missing:  # the world grew a word without substitutes: fail loudly rather than attack less
        raise ValueError(f"synonym table lacks world words {missing}")
    return table


# ------------------------------------------------------------------------------------ sentence similarity
class SentenceSimilarity:
    """Angular similarity ``1 − arccos(cos)/π`` ∈ [0, 1] of mean-pooled, L2-normalised sentence embeddings.

    Default encoder: the packaged all-MiniLM-L6-v2 (a sentence-transformers model trained for exactly
    this), run through our own BERT tower. Embeddings are cached per text.
    """

    def __init__(self, folder: str | Path | None = None, max_length: int = 128) -> None:
        folder = Path(folder) if folder is not None else packaged_minilm_path()
        _, self.tower, _ = load_hf_bert(folder)
        self.tower.eval()
        self.tokenizer = load_tokenizer(folder)
        self.max_length = max_length
        self._torch = torch
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit vectors."""
        todo = sorted({t for t in texts if t not in self._cache})
        torch = self._torch
        for start in range(0, len(todo), 64):
            chunk = todo[start : start + 64]
            batch = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                states = self.tower(batch["input_ids"], batch["attention_mask"])  # (B, L, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, L, 1)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D) mean over real tokens
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for text, vector in zip(chunk, pooled.numpy()):
                self._cache[text] = vector
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))

    def __call__(self, originals: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        cos = (self.embed(originals) * self.embed(candidates)).sum(-1).clip(-1.0, 1.0)
        return 1.0 - np.arccos(cos) / math.pi


SimilarityFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ------------------------------------------------------------------------------------------------ attack
@dataclass
class AttackConfig:
    """Attack constraints (defaults: TextFooler's, in angular-similarity units)."""

    max_change_fraction: float = 0.2  # budget: share of the attacked text's words that may change
    max_candidates: int = 50  # TextFooler's synonym_num
    sim_threshold: float = 1.0 - 0.5 / math.pi  # 0.8408 = official ``1 - arccos(cos) >= 0.5``
    short_text_sim_threshold: float = 1.0 - 0.9 / math.pi  # official relaxed 0.1 for texts < window
    sim_window: int = 15
    use_similarity: bool = True
    use_pos: bool = True
    stop_words: frozenset[str] = STOP_WORDS

    def __post_init__(self) -> None:
        if not 0.0 < self.max_change_fraction <= 1.0:
            raise ValueError(f"max_change_fraction must be in (0, 1], got {self.max_change_fraction}")


@dataclass
class AttackResult:
    """One example. ``skipped``: the model was wrong before any attack (not attacked)."""

    original: TextInput
    adversarial: TextInput
    label: int
    original_prediction: int
    final_prediction: int
    changed: list[tuple[str, str]] = field(default_factory=list)  # (original word, substitute)
    num_words: int = 0
    queries: int = 0
    skipped: bool = False

    @property
    def success(self) -> bool:
        return not self.skipped and self.final_prediction != self.label


@dataclass
class AttackSummary:
    examples: int
    original_accuracy: float
    accuracy_under_attack: float
    attack_success_rate: float  # successes / originally correct
    mean_perturbed_fraction: float  # over attacked examples
    mean_queries: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


def _replace(text: str, span: tuple[int, int], word: str | None) -> str:
    """``text`` with the word at ``span`` replaced by ``word`` (None: deleted with one adjacent space)."""
    start, end = span
    if word is not None:
        return text[:start] + word + text[end:]
    if end < len(text) and text[end] == " ":
        end += 1
    elif start > 0 and text[start - 1] == " ":
        start -= 1
    return text[:start] + text[end:]


def _match_case(word: str, template: str) -> str:
    return word.capitalize() if template[:1].isupper() else word


class WordSubstitutionAttack:
    """TextFooler-style greedy attack against ``model.predict_proba`` (see module docstring)."""

    def __init__(
        self,
        model: ProbabilisticClassifier,
        synonyms: dict[str, tuple[str, tuple[str, ...]]] | None = None,
        similarity: SimilarityFn | None = None,
        cfg: AttackConfig | None = None,
    ) -> None:
        self.model = model
        self.synonyms = world_synonym_table() if synonyms is None else synonyms
        self.cfg = cfg or AttackConfig()
        if similarity is None and self.cfg.use_similarity:
            similarity = SentenceSimilarity()
        self.similarity = similarity

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _wrap(example: TextInput, text: str) -> TextInput:
        return (example[0], text) if isinstance(example, tuple) else text

    def _probs(self, example: TextInput, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.predict_proba([self._wrap(example, t) for t in texts]), dtype=np.float64)

    def _candidates(self, word: str) -> list[str]:
        entry = self.synonyms.get(word.lower())
        if entry is None:
            return []
        pos, subs = entry
        if self.cfg.use_pos:  # substitutes must carry the word's coarse tag in the table too, if listed there
            subs = tuple(s for s in subs if self.synonyms.get(s, (pos,))[0] == pos)
        return [_match_case(s, word) for s in subs[: self.cfg.max_candidates]]

    def _window(self, text: str, spans: list[tuple[int, int]], index: int) -> str:
        """The ``sim_window`` words around word ``index`` (TextFooler's windowing), as text."""
        n, w = len(spans), self.cfg.sim_window
        half = (w - 1) // 2
        lo = min(max(0, index - half), max(0, n - w))
        hi = min(n, lo + w)
        return text[spans[lo][0] : spans[hi - 1][1]]

    def _similar(self, current: str, candidates: list[str], index: int) -> np.ndarray:
        if self.similarity is None or not self.cfg.use_similarity:
            return np.ones(len(candidates))
        spans = _spans(current)
        threshold = self.cfg.sim_threshold if len(spans) >= self.cfg.sim_window else self.cfg.short_text_sim_threshold
        windows = [self._window(c, _spans(c), index) for c in candidates]
        sims = self.similarity([self._window(current, spans, index)] * len(candidates), windows)
        return np.where(sims >= threshold, sims, -1.0)  # -1 = rejected

    # -- the attack --------------------------------------------------------------------------------
    def attack(self, example: TextInput, label: int) -> AttackResult:
        """Attack one example whose gold class index is ``label``."""
        text = example[1] if isinstance(example, tuple) else example
        probs = self._probs(example, [text])[0]
        queries, prediction = 1, int(probs.argmax())
        spans = _spans(text)
        result = AttackResult(example, example, label, prediction, prediction, num_words=len(spans), queries=1)
        if prediction != label:
            result.skipped = True
            return result
        order = self._importance_order(example, text, spans, probs, label)
        queries += len(spans)
        budget = max(1, math.floor(self.cfg.max_change_fraction * len(spans)))
        current, current_prob = text, probs[label]
        for index in order:
            if len(result.changed) >= budget:
                break
            spans_now = _spans(current)  # substitutes may differ in length: recompute offsets
            word = current[slice(*spans_now[index])]
            candidates = self._candidates(word)
            if not candidates:
                continue
            texts = [_replace(current, spans_now[index], c) for c in candidates]
            new_probs = self._probs(example, texts)
            queries += len(texts)
            sims = self._similar(current, texts, index)
            allowed = sims >= 0
            flipped = allowed & (new_probs.argmax(-1) != label)
            if flipped.any():
                best = int(np.where(flipped, sims, -np.inf).argmax())
                current = texts[best]
                result.changed.append((word, candidates[best]))
                break
            masked = np.where(allowed, new_probs[:, label], np.inf)
            best = int(masked.argmin())
            if masked[best] < current_prob:  # paper: must lower the current confidence in the label
                current, current_prob = texts[best], masked[best]
                result.changed.append((word, candidates[best]))
        result.adversarial = self._wrap(example, current)
        result.final_prediction = int(self._probs(example, [current])[0].argmax()) if result.changed else prediction
        result.queries = queries + (1 if result.changed else 0)
        return result

    def _importance_order(
        self, example: TextInput, text: str, spans: list[tuple[int, int]], probs: np.ndarray, label: int
    ) -> list[int]:
        """Word indices by decreasing deletion importance, stop words and words without candidates dropped."""
        if not spans:
            return []
        deleted = self._probs(example, [_replace(text, span, None) for span in spans])  # (n, C)
        new_labels = deleted.argmax(-1)
        changed = new_labels != label
        scores = probs[label] - deleted[:, label]
        scores = scores + changed * (deleted.max(-1) - probs[new_labels])
        keep = [
            i
            for i in np.argsort(-scores, kind="stable")
            if text[slice(*spans[i])].lower() not in self.cfg.stop_words and self._candidates(text[slice(*spans[i])])
        ]
        return [int(i) for i in keep]

    def run(self, examples: Sequence[TextInput], labels: Sequence[int]) -> tuple[AttackSummary, list[AttackResult]]:
        """Attack every example; -> (summary, per-example results)."""
        if len(examples) != len(labels) or not examples:
            raise ValueError(f"need equally many (>= 1) examples and labels, got {len(examples)} and {len(labels)}")
        results = [self.attack(x, int(y)) for x, y in zip(examples, labels)]
        return summarize(results), results


class ImageTextClassifier:
    """Adapter that lets loyalty and the attack score the *text side* of a vision-language classifier.

    Inputs are ``(image_key, text)`` pairs, so the attack (which perturbs the second element of a
    pair) changes only the text while the image stays fixed. ``logits_fn(images, text_ids, text_atts)``
    maps stacked ``images[key]`` tensors ``(B, ...)`` and tokenised texts ``(B, L)`` to ``(B, C)`` logits:
    ``NLVRModule.logits`` (images ``(2, 3, R, R)`` per key, C = 2), :func:`itm_logits_fn` for retrieval
    (image-text match vs. not, C = 2), :func:`vqa_logits_fn` for VQA (C = the answer list).
    """

    def __init__(
        self,
        logits_fn: Callable[..., Any],
        images: dict[Any, Any],
        tokenizer: Any,
        max_length: int = 40,
        batch_size: int = 32,
    ) -> None:
        self.logits_fn = logits_fn
        self.images = images
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def predict_proba(self, inputs: Sequence[tuple[Any, str]]) -> np.ndarray:
        chunks = []
        for start in range(0, len(inputs), self.batch_size):
            part = inputs[start : start + self.batch_size]
            images = torch.stack([self.images[key] for key, _ in part])
            tokens = self.tokenizer(
                [text for _, text in part],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                logits = self.logits_fn(images, tokens["input_ids"], tokens["attention_mask"])  # (b, C)
            chunks.append(logits.float().softmax(-1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 2))


def itm_logits_fn(model: Any) -> Callable[..., Any]:
    """``(images (B, 3, R, R), text_ids, text_atts) -> (B, 2)`` ITM logits of an :class:`XVLM` (retrieval's
    re-ranking score; index 1 = "matches")."""

    def logits(images: Any, text_ids: Any, text_atts: Any) -> Any:
        vision, vision_atts = model.encode_image(images)
        return model.itm_logits(model.encode_multimodal(text_ids, text_atts, vision, vision_atts))

    return logits


def vqa_logits_fn(module: Any) -> Callable[..., Any]:
    """``(images, question_ids, question_atts) -> (B, A)`` scores over a ``VQAModule``'s closed answer list:
    the classifier head's logits, or, for the generative decoder head, every answer's full
    log-likelihood ``log p(answer | question, image)`` (softmax renormalises them over the list; the
    arg-max is the answer ``rank_answers`` picks when ``k_test`` covers the list)."""

    def logits(images: Any, question_ids: Any, question_atts: Any) -> Any:
        states = module.question_states(images, question_ids, question_atts)  # (B, L, H)
        if module.head == "classifier":
            return module.cls_head(states[:, 0])  # (B, A)
        b, a = states.shape[0], module.answer_ids.shape[0]
        scores = module.text_decoder.sequence_logprob(
            module.answer_ids.repeat(b, 1),  # (B·A, La): every answer for every question
            module.answer_atts.repeat(b, 1),
            states.repeat_interleave(a, dim=0),
            question_atts.repeat_interleave(a, dim=0),
        )
        return scores.view(b, a)

    return logits


def summarize(results: Sequence[AttackResult]) -> AttackSummary:
    """Accuracy before/after, success rate over originally-correct examples, perturbation and queries."""
    n = len(results)
    attacked = [r for r in results if not r.skipped]
    successes = sum(r.success for r in attacked)
    return AttackSummary(
        examples=n,
        original_accuracy=len(attacked) / n,
        accuracy_under_attack=(len(attacked) - successes) / n,
        attack_success_rate=successes / len(attacked) if attacked else 0.0,
        mean_perturbed_fraction=float(np.mean([len(r.changed) / max(1, r.num_words) for r in attacked]))
        if attacked
        else 0.0,
        mean_queries=float(np.mean([r.queries for r in attacked])) if attacked else 0.0,
    )


__all__ = [
    "STOP_WORDS",
    "AttackConfig",
    "AttackResult",
    "AttackSummary",
    "ImageTextClassifier",
    "SentenceSimilarity",
    "WordSubstitutionAttack",
    "itm_logits_fn",
    "summarize",
    "vqa_logits_fn",
    "world_synonym_table",
]
