"""``grainvl score`` end to end on small official-format files, and its errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grainvl.cli import main


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _answers(*answers: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def _vqa_v2_files(tmp_path: Path) -> tuple[Path, Path]:
    header = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"}
    questions = [
        {"image_id": 1, "question": "How many cubes?", "question_id": 10},
        {"image_id": 1, "question": "What is it?", "question_id": 11},
        {"image_id": 2, "question": "Is it red?", "question_id": 20},
    ]
    anns = [
        ("how many", "number", "2", _answers(*["2"] * 10)),
        ("what is", "other", "dog", _answers(*["dog"] * 3, *["cat"] * 7)),
        ("is the", "yes/no", "yes", _answers(*["yes"] * 10)),
    ]
    annotations = [
        {"question_type": qt, "multiple_choice_answer": mc, "answers": ans, "image_id": q["image_id"],
         "answer_type": at, "question_id": q["question_id"]}
        for q, (qt, at, mc, ans) in zip(questions, anns)
    ]  # fmt: skip
    q_path = _write(
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
        {**header, "task_type": "Open-Ended", "questions": questions},
    )
    a_path = _write(tmp_path / "v2_mscoco_val2014_annotations.json", {**header, "annotations": annotations})
    return q_path, a_path


def test_vqa_v2_official_lines_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q_path, a_path = _vqa_v2_files(tmp_path)
    pred = _write(
        tmp_path / "res.json",
        [
            {"question_id": 10, "answer": "Two"},
            {"question_id": 11, "answer": "a dog"},
            {"question_id": 20, "answer": "no."},
        ],
    )
    out = tmp_path / "m.json"
    argv = ["score", "vqa", "--pred", str(pred), "--gt", str(a_path), "--questions", str(q_path), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # Official: unanimous GT -> no normalisation, so "Two" misses ten "2"s: (0 + 0.9 + 0) / 3 = 30.00 %
    assert "Overall Accuracy is: 30.00\n" in printed
    assert "Per Answer Type Accuracy is the following:\nnumber : 0.00\nother : 90.00\nyes/no : 0.00" in printed
    assert "what is : 90.00" in printed
    metrics = json.loads(out.read_text())
    assert metrics["vqa_acc"] == 30.0 and metrics["answer_type"]["other"] == 90.0


def test_vqa_results_must_cover_the_annotations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, a_path = _vqa_v2_files(tmp_path)
    pred = _write(tmp_path / "res.json", [{"question_id": 10, "answer": "2"}])
    assert main(["score", "vqa", "--pred", str(pred), "--gt", str(a_path)]) == 2
    assert "2 question(s) without a prediction" in capsys.readouterr().err
    dup = _write(tmp_path / "dup.json", [{"question_id": 10, "answer": "2"}, {"question_id": 10, "answer": "3"}])
    assert main(["score", "vqa", "--pred", str(dup), "--gt", str(a_path)]) == 2
    assert "index 1: duplicate question_id 10" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.json", [{"question_id": 10, "answer": 2}])
    assert main(["score", "vqa", "--pred", str(bad), "--gt", str(a_path)]) == 2
    assert "field 'answer' should be str" in capsys.readouterr().err


def test_vqa_vlue_exact_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write(tmp_path / "vqa_vlue_test.json", [
        {"question_id": 1, "question": "Is it red?", "image": "a.jpg", "answer": "yes"},
        {"question_id": 2, "question": "How many?", "image": "a.jpg", "answer": "2"},
        {"question_id": 3, "question": "What?", "image": "b.jpg", "answer": "dog"},
    ])  # fmt: skip
    pred = _write(tmp_path / "res.json", [{"question_id": 1, "answer": "yes "}, {"question_id": 2, "answer": "two"}])
    assert main(["score", "vqa", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    assert "n_questions: 2, n_correct: 1\nacc: 0.5\n" in captured.out
    assert "1 question(s) have no prediction" in captured.err
    assert json.loads((tmp_path / "m.json").read_text()) == {"vqa_acc": 50.0}


def test_vqa_xvlm_answer_lists_use_the_official_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write(tmp_path / "vqa_test.json", [
        {"question_id": 1, "question": "What?", "image": "a.jpg", "answer": ["dog"] * 3 + ["cat"] * 7},
        {"question_id": 2, "question": "How many?", "image": "a.jpg", "answer": ["2"] * 10},
    ])  # fmt: skip
    pred = _write(tmp_path / "res.json", [{"question_id": 1, "answer": "dog"}, {"question_id": 2, "answer": "two"}])
    assert main(["score", "vqa", "--pred", str(pred), "--gt", str(gt)]) == 0
    assert "Overall Accuracy is: 45.00\n" in capsys.readouterr().out  # (0.9 + 0) / 2: "two" vs ten "2"s
    assert main(["score", "vqa", "--pred", str(pred), "--gt", str(gt), "--metric", "exact"]) == 2
    assert "one answer string per question" in capsys.readouterr().err


@pytest.mark.parametrize(("revision", "line"), [(None, "45.00"), ("official", "45.00"), ("xvlm", "95.00"),
                                               ("normalized", "95.00")])  # fmt: skip
def test_vqa_revision_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], revision: str | None, line: str
) -> None:
    gt = _write(tmp_path / "vqa_test.json", [
        {"question_id": 1, "question": "What?", "image": "a.jpg", "answer": ["dog"] * 3 + ["cat"] * 7},
        {"question_id": 2, "question": "How many?", "image": "a.jpg", "answer": ["2"] * 10},
    ])  # fmt: skip
    pred = _write(tmp_path / "res.json", [{"question_id": 1, "answer": "dog"}, {"question_id": 2, "answer": "two"}])
    extra = [] if revision is None else ["--revision", revision]
    assert main(["score", "vqa", "--pred", str(pred), "--gt", str(gt), *extra]) == 0
    assert f"Overall Accuracy is: {line}\n" in capsys.readouterr().out  # only official leaves unanimous GT raw
    _, a_path = _vqa_v2_files(tmp_path)
    answers = [{"question_id": 10, "answer": "two"}, {"question_id": 11, "answer": "dog"}]
    v2_pred = _write(tmp_path / "v2_res.json", [*answers, {"question_id": 20, "answer": "yes"}])
    assert main(["score", "vqa", "--pred", str(v2_pred), "--gt", str(a_path), *extra]) == 0
    expected = "63.33" if revision in (None, "official") else "96.67"  # (0 + 0.9 + 1) / 3 vs (1 + 0.9 + 1) / 3
    assert f"Overall Accuracy is: {expected}\n" in capsys.readouterr().out


def test_nlvr2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pair = {"images": ["l.jpg", "r.jpg"], "sentence": "two dogs"}
    gt = _write(
        tmp_path / "nlvr_test.json",
        [{**pair, "label": "True"}, {**pair, "label": False}, {**pair, "label": True}, {**pair, "label": "False"}],
    )
    pred = _write(tmp_path / "pred.json", [True, "False", 0, 1])
    assert main(["score", "nlvr2", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.json")]) == 0
    assert "acc: 50.00" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 50.0}
    short = _write(tmp_path / "short.json", [True])
    assert main(["score", "nlvr2", "--pred", str(short), "--gt", str(gt)]) == 2
    assert "1 predictions for 4 ground-truth pairs" in capsys.readouterr().err
    weird = _write(tmp_path / "weird.json", [True, "yes", 0, 1])
    assert main(["score", "nlvr2", "--pred", str(weird), "--gt", str(gt)]) == 2
    assert "index 1" in capsys.readouterr().err


def test_grounding_pixel_and_normalised_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write(tmp_path / "refcoco+_vlue_test.json", [
        {"ref_id": 7, "image": "a.jpg", "text": "red cube", "bbox": [0, 0, 50, 50], "height": 100, "width": 200},
        {"ref_id": 7, "image": "a.jpg", "text": "the cube", "bbox": [0, 0, 50, 50], "height": 100, "width": 200},
        {"ref_id": 8, "image": "b.jpg", "text": "cone", "bbox": [10, 10, 10, 10], "height": 100, "width": 200},
    ])  # fmt: skip
    pred = _write(tmp_path / "pred.json", [
        {"ref_id": 7, "bbox": [0, 0, 50, 50]},  # IoU 1
        {"ref_id": 7, "pred": [0.125, 0.25, 0.25, 0.5]},  # centre (25, 25), 50 x 50 -> [0, 0, 50, 50]: IoU 1
        {"ref_id": 8, "bbox": [20, 10, 10, 10]},  # touching: IoU 0
    ])  # fmt: skip
    assert main(["score", "grounding", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.json")]) == 0
    assert "acc@0.5: 66.67" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["acc@0.5"] == pytest.approx(200 / 3) and metrics["miou"] == pytest.approx(200 / 3)
    unknown = _write(tmp_path / "unknown.json", [{"ref_id": 9, "bbox": [0, 0, 5, 5]}])
    assert main(["score", "grounding", "--pred", str(unknown), "--gt", str(gt)]) == 2
    assert "index 0: ref_id 9 is not in the ground truth" in capsys.readouterr().err


def test_retrieval_ranked_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _write(tmp_path / "coco_test.json", [
        {"image": "a.jpg", "caption": ["x0", "x1"]},
        {"image": "b.jpg", "caption": ["y0", "y1"]},
    ])  # fmt: skip
    # Image 0 ranks its caption 1 first; image 1 ranks its captions 3rd and 4th (R@1 miss, R@5 hit).
    # Texts 0-2 rank their image first, text 3 second.
    pred = _write(
        tmp_path / "ranks.json", {"i2t": [[1, 2, 0, 3], [0, 1, 2, 3]], "t2i": [[0, 1], [0, 1], [1, 0], [0, 1]]}
    )
    assert main(["score", "retrieval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    # A readable table (not a dict repr): R@1, R@5, R@10, mean per direction, then r_mean.
    assert "{" not in printed
    assert "text retrieval     50.00  100.00  100.00   83.33" in printed
    assert "image retrieval    75.00  100.00  100.00   91.67" in printed
    assert printed.splitlines()[-1].split() == ["r_mean", "87.50"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["txt_r5"] == 100.0 and metrics["r_mean"] == pytest.approx((50 + 100 + 100 + 75 + 100 + 100) / 6)
    short = _write(tmp_path / "short.json", {"i2t": [[1, 2], [0, 1, 2, 3]], "t2i": [[0, 1]] * 4})
    assert main(["score", "retrieval", "--pred", str(short), "--gt", str(gt)]) == 2
    assert "i2t[0]: 2 entries; R@10 needs at least 4" in capsys.readouterr().err
    out_of_range = _write(tmp_path / "oor.json", {"i2t": [[1, 2, 0, 3], [0, 1, 2, 3]], "t2i": [[0, 2]] * 4})
    assert main(["score", "retrieval", "--pred", str(out_of_range), "--gt", str(gt)]) == 2
    assert "t2i[0]: index 2 outside the gallery of 2" in capsys.readouterr().err


def test_bad_files_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, a_path = _vqa_v2_files(tmp_path)
    assert main(["score", "vqa", "--pred", str(tmp_path / "missing.json"), "--gt", str(a_path)]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question_id": 10,')
    assert main(["score", "vqa", "--pred", str(broken), "--gt", str(a_path)]) == 2
    assert "malformed JSON" in capsys.readouterr().err
    not_list = _write(tmp_path / "obj.json", {"question_id": 10})
    nlvr_gt = _write(tmp_path / "nlvr_test.json", [{"images": ["l.jpg", "r.jpg"], "sentence": "a", "label": True}])
    assert main(["score", "nlvr2", "--pred", str(not_list), "--gt", str(nlvr_gt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a JSON list" in err
    caption_gt = _write(tmp_path / "gt.json", {"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "a dog"}, {"image_id": 2, "id": 2, "caption": "a cat"}]})  # fmt: skip
    one = _write(tmp_path / "one.json", [{"image_id": 1, "caption": "a dog"}])
    assert main(["score", "captioning", "--pred", str(one), "--gt", str(caption_gt)]) == 2
    assert "1 ground-truth image(s) have no caption (2)" in capsys.readouterr().err
    assert main(["score", "nlvr2", "--pred", str(one), "--gt", str(caption_gt), "--metric", "exact"]) == 2
    assert "--revision apply to the vqa task only" in capsys.readouterr().err
