"""Captioning scores through pycocoevalcap, as X-VLM's ``coco_caption_eval`` computes them.

The pipeline is pycocoevalcap's own ``COCOEvalCap.evaluate``: every caption (references and
hypotheses) goes through its ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 in Java, lower-cased,
punctuation tokens dropped), then ``Bleu(4)``, ``Meteor()`` (METEOR 1.5 in Java), ``Rouge()`` and
``Cider()`` score the tokenised text. pycocoevalcap's ``Cider`` is CIDEr-D (Gaussian length penalty
sigma = 6, clipped n-gram counts, x10, document frequencies from the references of the evaluated
set) -- the number papers report as "CIDEr".

Differences from calling ``COCOEvalCap`` (documented in docs/metrics.md):

* SPICE is not computed: it needs Stanford CoreNLP models that pycocoevalcap downloads on first use
  (this toolkit runs offline), and X-VLM does not report it.
* The scorers' prints (BLEU's ``{'testlen': ...}``, "computing ... score") and the Java
  tokenizer's "PTBTokenizer tokenized N tokens" line are silenced.
* Scores are returned as pycocoevalcap returns them, as fractions (CIDEr 1.331 is the "133.1" of
  papers); ``grainvl score`` prints them the way ``coco_caption_eval`` does (``%0.3f``).

Both ground truth and results must cover the same images with exactly one hypothesis per image
(pycocoevalcap asserts the same).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def percent_points(metric: str, value: float) -> float:
    """``value`` on the percent scale of every other metric, for averaging across tasks (a benchmark's
    average, Pareto frontiers, retention): captioning fractions x100 (CIDEr 1.331 -> 133.1, as papers
    print it); every other metric is already in percent (docs/metrics.md)."""
    return 100.0 * value if metric in CAPTION_METRICS else value


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Silence Python prints and the stdout/stderr of child processes (the Java tokenizer).

    File descriptors 1 and 2 are pointed at /dev/null for the duration, so anything a subprocess
    inherits is muted too; they are restored even when scoring fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


class CaptionScorer:
    """Holds the METEOR Java process between calls (it takes seconds to start and load its
    paraphrase tables); use as a context manager or call :meth:`close`.

    The PTB tokenizer starts a short-lived JVM per call, as pycocoevalcap does.
    """

    def __init__(self) -> None:
        self._meteor: Any = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get_meteor(self) -> Any:
        if self._meteor is None:
            # Imported here: pycocoevalcap scorers start Java helpers; only captioning scoring needs them.
            from pycocoevalcap.meteor.meteor import Meteor

            self._meteor = Meteor()
        return self._meteor

    def close(self) -> None:
        """Stop the METEOR process (pycocoevalcap's own ``__del__`` would do it at garbage collection)."""
        if self._meteor is not None:
            proc = self._meteor.meteor_p
            proc.stdin.close()
            proc.kill()
            proc.wait()
            self._meteor = None

    def tokenize(self, captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
        """pycocoevalcap's PTB tokenisation of ``{id: [caption, ...]}`` (one JVM run for all)."""
        # Imported here: pycocoevalcap scorers start Java helpers; only captioning scoring needs them.
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        records = {key: [{"caption": c} for c in caps] for key, caps in captions.items()}
        with _silenced():
            return PTBTokenizer().tokenize(records)

    def score_tokenized(
        self, gts: Mapping[Hashable, list[str]], res: Mapping[Hashable, list[str]], meteor: bool = True
    ) -> dict[str, float]:
        """BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) of already tokenised captions (fractions)."""
        # Imported here: pycocoevalcap scorers start Java helpers; only captioning scoring needs them.
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        gts, res = dict(gts), dict(res)
        scores: dict[str, float] = {}
        with _silenced():
            bleu, _ = Bleu(4).compute_score(gts, res)
            scores.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
            if meteor:
                scores["METEOR"] = float(self._get_meteor().compute_score(gts, res)[0])
            scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
            scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        return scores

    def score(
        self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]], meteor: bool = True
    ) -> dict[str, float]:
        """Scores of raw captions: ``gts`` id → reference captions, ``res`` id → ``[hypothesis]``.

        The ids of both must be equal and each hypothesis list must hold exactly one caption
        (ValueError otherwise). ``meteor=False`` skips METEOR (no JVM kept alive).
        """
        check_caption_inputs(gts, res)
        # One tokenizer run for references and hypotheses together (the output is per line, so this
        # equals COCOEvalCap's two runs) saves a JVM start.
        merged = {("gt", key): list(caps) for key, caps in gts.items()}
        merged.update({("res", key): list(caps) for key, caps in res.items()})
        tokens = self.tokenize(merged)
        tok_gts = {key: tokens[("gt", key)] for key in gts}
        tok_res = {key: tokens[("res", key)] for key in gts}  # gts order, as COCOEvalCap iterates
        return self.score_tokenized(tok_gts, tok_res, meteor=meteor)


def check_caption_inputs(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]) -> None:
    """ValueError unless ``gts`` and ``res`` name the same ids, each with >= 1 reference and
    exactly one hypothesis (pycocoevalcap would stop on a bare assertion)."""
    missing, extra = set(gts) - set(res), set(res) - set(gts)
    if missing or extra:
        raise ValueError(
            f"results and ground truth differ: {len(missing)} image(s) without a caption "
            f"(e.g. {sorted(missing, key=str)[:3]}), {len(extra)} unknown image(s) (e.g. {sorted(extra, key=str)[:3]})"
        )
    if not gts:
        raise ValueError("no images to score")
    for key, refs in gts.items():
        if not refs:
            raise ValueError(f"image {key!r} has no reference caption")
        if len(res[key]) != 1:
            raise ValueError(f"image {key!r} has {len(res[key])} generated captions, expected exactly 1")


def caption_scores(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, Sequence[str]],
    scorer: CaptionScorer | None = None,
    meteor: bool = True,
) -> dict[str, float]:
    """``{Bleu_1, Bleu_2, Bleu_3, Bleu_4, METEOR, ROUGE_L, CIDEr}`` through pycocoevalcap (fractions).

    Args:
        gts: image id → reference captions (raw text; PTB-tokenised here).
        res: image id → a one-element list with the generated caption.
        scorer: a :class:`CaptionScorer` to reuse its METEOR process; a temporary one otherwise.
        meteor: False skips METEOR (the one metric that keeps a JVM running).
    """
    if scorer is not None:
        return scorer.score(gts, res, meteor=meteor)
    with CaptionScorer() as own:
        return own.score(gts, res, meteor=meteor)


def coco_caption_inputs(
    gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """``(gts, res)`` for :func:`caption_scores` from a COCO caption GT document and a results list
    (``[{image_id, caption}]``), in the GT's image order as ``COCOEvalCap`` takes them
    (``coco.getImgIds()``). Raises ValueError where pycocoevalcap would fail."""
    gts: dict[int, list[str]] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        gts[ann["image_id"]].append(ann["caption"])
    res: dict[int, list[str]] = {}
    for result in results:
        res.setdefault(result["image_id"], []).append(result["caption"])
    return gts, res
