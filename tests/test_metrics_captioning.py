"""Captioning scores equal pycocoevalcap called directly (PTB tokenizer + scorers; METEOR in one shared JVM)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from grainvl.cli import main
from grainvl.metrics.captioning import CaptionScorer, caption_scores

GTS = {
    3: ["A purple cone above a green cube.", "A green cube under a purple cone!", "Purple cone, green cube"],
    1: ["A red cube left of a blue sphere.", "The red cube is to the left of the blue ball."],
    7: ["Two yellow cylinders on a table", "two cylinders (yellow) standing side by side"],
}
RES = {3: ["a purple cone above a green cube"], 1: ["A red cube next to a blue sphere."], 7: [""]}


@pytest.fixture(scope="module")
def scorer() -> Iterator[CaptionScorer]:
    """One METEOR JVM for the whole module (it takes seconds to start)."""
    with CaptionScorer() as shared:
        yield shared


def _reference_tokens() -> tuple[dict, dict]:
    """pycocoevalcap's own tokenisation, run separately on references and hypotheses as COCOEvalCap does."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in GTS.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in RES.items()})
    return gts, res


def test_scores_equal_pycocoevalcap(scorer: CaptionScorer, capfd: pytest.CaptureFixture[str]) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ours = caption_scores(GTS, RES, scorer=scorer, meteor=False)
    # BLEU's prints and the Java tokenizer's "PTBTokenizer tokenized ..." line are silenced.
    assert capfd.readouterr() == ("", "")
    gts, res = _reference_tokens()
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    expected = {f"Bleu_{n + 1}": b for n, b in enumerate(bleu)}
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert ours == expected
    assert 0 < ours["Bleu_4"] < ours["Bleu_1"] < 1 and ours["CIDEr"] > 0


@pytest.mark.slow
def test_meteor_equals_pycocoevalcap(scorer: CaptionScorer, capfd: pytest.CaptureFixture[str]) -> None:
    ours = caption_scores(GTS, RES, scorer=scorer)
    assert capfd.readouterr() == ("", "")  # scorer prints and the Java tokenizer's line are silenced
    gts, res = _reference_tokens()
    assert ours["METEOR"] == scorer._get_meteor().compute_score(gts, res)[0]
    assert list(ours) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def test_inputs_are_checked_before_any_jvm_starts() -> None:
    with pytest.raises(ValueError, match="1 image"):
        caption_scores(GTS, {3: RES[3], 1: RES[1]})
    with pytest.raises(ValueError, match="exactly 1"):
        caption_scores({1: ["a"]}, {1: ["a", "b"]})
    with pytest.raises(ValueError, match="no reference"):
        caption_scores({1: []}, {1: ["a"]})


def _coco_files(tmp_path: Path) -> tuple[Path, Path]:
    ids = list(GTS)
    gt = {
        "info": {},
        "licenses": [],
        "type": "captions",
        "images": [{"id": i} for i in ids],
        "annotations": [{"image_id": i, "id": 100 * i + n, "caption": c} for i in ids for n, c in enumerate(GTS[i])],
    }
    results = [{"image_id": i, "caption": RES[i][0]} for i in reversed(ids)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return tmp_path / "res.json", tmp_path / "gt.json"


def test_score_cli_equals_cocoevalcap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """X-VLM's coco_caption_eval path (pycocotools COCO + loadRes + COCOEvalCap) vs ``grainvl score``.

    METEOR and SPICE are stubbed in the reference (SPICE downloads models; METEOR is covered above).
    """
    import pycocoevalcap.eval as coco_eval
    from pycocotools.coco import COCO

    class _Skip:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "skipped"

    pred, gt = _coco_files(tmp_path)
    assert (
        main(
            [
                "score",
                "captioning",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--no-meteor",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    ours = json.loads((tmp_path / "m.json").read_text())

    monkeypatch.setattr(coco_eval, "Meteor", _Skip)
    monkeypatch.setattr(coco_eval, "Spice", _Skip)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        reference = coco_eval.COCOEvalCap(coco, coco.loadRes(str(pred)))
        reference.evaluate()
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert ours[name] == reference.eval[name], name
        assert f"{name}: {reference.eval[name]:.3f}" in printed
