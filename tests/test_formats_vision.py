"""Vision-language format readers and writers.

Hand-written fixtures in the official schemas (tests/fixtures/formats/vision) must read, write
back and read equal, sniff to exactly one format, and load in pycocotools where that is the
consumer; bad input must give one DataError naming the file, the record and the reason, and
skip-bad must collect it and keep going. The images the fixtures name are drawn here.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from grainvl.data.formats import albef, coco_caption, iglue, msrvtt, registry, vlue, vqa_v2, xvlm_pretrain
from grainvl.errors import BadRecords, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats" / "vision"


def _write_lines(path: Path, kind: str, lines: list[dict[str, Any]]) -> None:
    writer = xvlm_pretrain.LineWriter(path, kind)
    for line in lines:
        writer.write(line)
    writer.close()


def _pretrain_writer(kind: str) -> Callable[..., None]:
    return lambda path, lines: _write_lines(path, kind, lines)


# fixture path -> (format name, reader, writer); None: grainvl reads the format but never writes it
CASES: dict[str, tuple[str, Callable[..., Any], Callable[..., None] | None]] = {
    "pretrain/image_text.jsonl": ("xvlm-image-text", xvlm_pretrain.read_image_text, _pretrain_writer("image_text")),
    "pretrain/image_text_multilingual.jsonl": (
        "xvlm-image-text",
        xvlm_pretrain.read_image_text,
        _pretrain_writer("image_text"),
    ),
    "pretrain/region.jsonl": ("xvlm-region", xvlm_pretrain.read_region, _pretrain_writer("region")),
    "pretrain/video.jsonl": ("xvlm-video", xvlm_pretrain.read_video, _pretrain_writer("video")),
    "pretrain/para_text.jsonl": ("xvlm-para-text", xvlm_pretrain.read_para_text, _pretrain_writer("para_text")),
    "retrieval/coco_train.json": ("albef-retrieval", albef.read_retrieval, albef.write_retrieval),
    "retrieval/coco_test.json": ("albef-retrieval", albef.read_retrieval, albef.write_retrieval),
    "captioning/coco_karpathy_test.json": ("albef-karpathy", albef.read_karpathy, albef.write_karpathy),
    "captioning/coco_karpathy_test_gt.json": (
        "coco-caption-gt",
        coco_caption.read_caption_gt,
        coco_caption.write_caption_gt,
    ),
    "captioning/captions_val2014_fakecap_results.json": (
        "coco-caption-results",
        coco_caption.read_caption_results,
        None,
    ),
    "vqa/vqa_train.json": ("albef-vqa", albef.read_vqa, albef.write_vqa),
    "vqa/vqa_test.json": ("albef-vqa", albef.read_vqa, albef.write_vqa),
    "vqa/answer_list.json": ("albef-answer-list", albef.read_answer_list, albef.write_answer_list),
    "vqa/v2_OpenEnded_mscoco_val2014_questions.json": (
        "vqa-v2-questions",
        vqa_v2.read_vqa_questions,
        vqa_v2.write_vqa_questions,
    ),
    "vqa/v2_mscoco_val2014_annotations.json": (
        "vqa-v2-annotations",
        vqa_v2.read_vqa_annotations,
        vqa_v2.write_vqa_annotations,
    ),
    "nlvr2/nlvr_dev.json": ("albef-nlvr2", albef.read_nlvr2, albef.write_nlvr2),
    "refcoco+/refcoco+_val.json": ("albef-refcoco", albef.read_refcoco, albef.write_refcoco),
    "msrvtt/train_val_videodatainfo.json": (
        "msrvtt-videodatainfo",
        msrvtt.read_videodatainfo,
        msrvtt.write_videodatainfo,
    ),
    "msrvtt/msrvtt_ret_test.json": ("msrvtt-retrieval", msrvtt.read_retrieval, msrvtt.write_retrieval),
    "msrvtt/msrvtt_qa_test.jsonl": ("msrvtt-qa", msrvtt.read_qa, msrvtt.write_qa),
    "msrvtt/ans2label.json": ("msrvtt-ans2label", msrvtt.read_ans2label, msrvtt.write_ans2label),
    "iglue/xvnli/de/test.jsonl": ("iglue-xvnli", iglue.read_xvnli, iglue.write_xvnli),
    "XVNLI/annotations/en/test.jsonl": ("iglue-xvnli", iglue.read_xvnli, iglue.write_xvnli),
    "iglue/xgqa/de/test.json": ("iglue-xgqa", iglue.read_xgqa, iglue.write_xgqa),
    "xGQA/annotations/few_shot/de/dev.json": ("iglue-xgqa", iglue.read_xgqa, iglue.write_xgqa),
    "marvl/marvl-id.jsonl": ("iglue-marvl", iglue.read_marvl, iglue.write_marvl),
    "marvl/marvl-id.json": ("iglue-marvl-xvlm", iglue.read_marvl_xvlm, None),
    "xFlickrCO/annotations/de/test.jsonl": ("iglue-xflickrco", iglue.read_xflickrco, iglue.write_xflickrco),
    "vlue/itr_vlue_test.json": ("vlue-itr", vlue.read_vlue_itr, vlue.write_vlue_itr),
    "vlue/caption_vlue_test.json": ("vlue-caption", vlue.read_vlue_caption, vlue.write_vlue_caption),
    "vlue/caption_vlue_test_gt.json": ("coco-caption-gt", coco_caption.read_caption_gt, coco_caption.write_caption_gt),
    "vlue/nlvr2_vlue_test.json": ("vlue-nlvr2", vlue.read_vlue_nlvr2, vlue.write_vlue_nlvr2),
    "vlue/vqa_vlue_test.json": ("vlue-vqa", vlue.read_vlue_vqa, vlue.write_vlue_vqa),
    "vlue/refcoco+_vlue_test.json": ("vlue-refcoco", vlue.read_vlue_refcoco, vlue.write_vlue_refcoco),
    "vlue/refcoco+_bbox100_vlue_test.json": (
        "vlue-refcoco-bbox100",
        vlue.read_vlue_refcoco_bbox100,
        None,
    ),
}

# (width, height) of every image the fixtures name, relative to the image root
IMAGE_SIZES = {
    "images/train/00000001.jpg": (64, 48),
    "images/train/00000002.jpg": (64, 48),
    "images/val/00000003.png": (40, 30),
    "videos/test/video7010/00.jpg": (16, 12),
    "videos/test/video7010/01.jpg": (16, 12),
    "id/images/39-Panci/39-0.jpg": (20, 20),  # the MaRVL release layout
    "id/images/39-Panci/39-11.jpg": (20, 20),
    "759822302.jpg": (24, 24),  # Flickr30k (XVNLI)
    "1007129816.jpg": (24, 24),  # Flickr30k (xFlickr&CO)
    "n161313.jpg": (24, 24),  # GQA
}
VIDEO_FOLDER_FILES = ("msrvtt/msrvtt_ret_test.json", "msrvtt/msrvtt_qa_test.jsonl")  # videos named by id


def _png_base64(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vision_images")
    for k, (rel, size) in enumerate(IMAGE_SIZES.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * k % 256, 90, 160)).save(path)
    # X²-VLM stores a video as a JSON list of base64 frames
    frames = [_png_base64((8, 6), (200, 30, 30)), _png_base64((8, 6), (30, 30, 200))]
    (root / "videos/test/video7011.json").write_text(json.dumps(frames))
    return root


def _root_for(rel: str, image_root: Path) -> Path:
    return image_root / "videos/test" if rel in VIDEO_FOLDER_FILES else image_root


def _raw(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ fixtures
@pytest.mark.parametrize("rel", sorted(CASES))
def test_fixture_reads_with_images_and_round_trips(rel: str, image_root: Path, tmp_path: Path) -> None:
    _, read, write = CASES[rel]
    source = FIXTURES / rel
    records = read(source, image_root=_root_for(rel, image_root))
    assert records == _raw(source)  # canonical input comes back unchanged
    if write is None:
        return
    copy = tmp_path / source.name
    write(copy, records)
    assert read(copy) == records
    assert _raw(copy) == records


def test_every_fixture_file_is_covered() -> None:
    on_disk = {p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*") if p.is_file()}
    assert on_disk == set(CASES)


@pytest.mark.parametrize("rel", sorted(CASES))
def test_fixture_sniffs_to_exactly_its_format(rel: str) -> None:
    path = FIXTURES / rel
    spec = registry.sniff(path)
    assert spec is not None and spec.name == CASES[rel][0]
    assert [s.name for s in registry.FORMATS.values() if s.matches(path)] == [CASES[rel][0]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # the synthetic world's layout (docs/world_layout.md)
        ("W/annotations/pretrain/train/image_text_multilingual.jsonl", "xvlm-image-text"),
        ("W/annotations/retrieval/coco_test_ood.json", "albef-retrieval"),
        ("W/annotations/captioning/coco_karpathy_val.json", "albef-karpathy"),
        ("W/annotations/captioning/coco_karpathy_val_gt.json", "coco-caption-gt"),
        ("W/annotations/vqa/v2_OpenEnded_mscoco_test_ood_questions.json", "vqa-v2-questions"),
        ("W/annotations/vqa/vqa_test_ood.json", "albef-vqa"),
        ("W/annotations/refcoco+/refcoco+_test_ood.json", "albef-refcoco"),
        ("W/annotations/msrvtt/msrvtt_qa_train.jsonl", "msrvtt-qa"),
        ("W/annotations/iglue/xflickrco/ja/test.jsonl", "iglue-xflickrco"),
        ("W/annotations/iglue/marvl/sw/test.jsonl", "iglue-marvl"),
        # official release names
        ("coco_karpathy_restval.json", "albef-karpathy"),
        ("captions_val2014.json", "coco-caption-gt"),
        ("flickr30k_test.json", "albef-retrieval"),
        ("vg_qa.json", "albef-vqa"),
        ("refcoco+_testA.json", "albef-refcoco"),
        ("test_videodatainfo.json", "msrvtt-videodatainfo"),
        ("train_ans2label.json", "msrvtt-ans2label"),
        ("iglue/datasets/XVNLI/annotations_machine-translate/fr/test.jsonl", "iglue-xvnli"),
        ("iglue/datasets/xGQA/annotations/zero_shot/testdev_balanced_questions_bn.json", "iglue-xgqa"),
        ("marvl-zh_gmt.jsonl", "iglue-marvl"),
    ],
)
def test_world_and_official_names_sniff_unambiguously(name: str, expected: str) -> None:
    assert [s.name for s in registry.FORMATS.values() if s.matches(Path(name))] == [expected]


def test_caption_files_load_in_pycocotools_and_score_in_pycocoevalcap() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocotools.coco import COCO

    gt = COCO(str(FIXTURES / "captioning/coco_karpathy_test_gt.json"))
    results = gt.loadRes(str(FIXTURES / "captioning/captions_val2014_fakecap_results.json"))
    image_ids = sorted(results.getImgIds())
    refs = {i: [a["caption"] for a in gt.imgToAnns[i]] for i in image_ids}
    hyps = {i: [a["caption"] for a in results.imgToAnns[i]] for i in image_ids}
    bleu, _ = Bleu(1).compute_score(refs, hyps)
    cider, _ = Cider().compute_score(refs, hyps)
    assert image_ids == [1, 3] and 0.5 < bleu[0] <= 1.0 and cider > 0
    perfect, _ = Bleu(1).compute_score(refs, {i: refs[i][:1] for i in image_ids})
    assert perfect[0] > bleu[0]


# ------------------------------------------------------------------------------------ bad input
def _text(name: str, content: Any) -> str:
    """Raw text as given; Python records as a JSON list, or one JSON line each for .jsonl names."""
    if isinstance(content, str):
        return content
    if name.endswith(".jsonl"):
        return "".join(json.dumps(r) + "\n" for r in content)
    return json.dumps(content)


CUBE = {"image": "images/train/00000001.jpg", "caption": "a cube"}
PAIR = ["a.jpg", "b.jpg"]
VQA_HEADER = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"}
VQA_ANN = {
    "question_type": "is",
    "multiple_choice_answer": "yes",
    "answers": [],
    "image_id": 1,
    "answer_type": "yes/no",
    "question_id": 1,
}
XVNLI = {"gold_label": "maybe", "sentence1": "", "sentence2": "h", "captionID": "1", "pairID": "1", "Flikr30kID": "1"}
BAD_CASES = [
    (albef.read_retrieval, "coco_train.json", [CUBE, {"image": "a.jpg"}], "index 1", "missing field 'caption'"),
    (
        albef.read_vqa,
        "vqa_train.json",
        [{"question_id": [1], "question": "q?", "image": "a.jpg"}],
        "index 0",
        "field 'question_id' should be int/str, got list",
    ),
    (albef.read_karpathy, "coco_karpathy_test.json", [{**CUBE, "caption": ["a", "  "]}], "index 0", "empty caption"),
    (
        albef.read_refcoco,
        "refcoco+_val.json",
        [{"image": "a.jpg", "text": "cube", "ref_id": 1, "bbox": [50, 40, 20, 20], "width": 64, "height": 48}],
        "index 0",
        "extends outside the 64x48 image",
    ),
    (
        albef.read_nlvr2,
        "nlvr_dev.json",
        [{"images": PAIR, "sentence": "s", "label": "yes"}],
        "index 0",
        'label should be true/false or "True"/"False", got \'yes\'',
    ),
    (
        albef.read_nlvr2,
        "nlvr_dev.json",
        [{"images": ["a.jpg"], "sentence": "s", "label": True}],
        "index 0",
        "images should be two paths",
    ),
    (albef.read_answer_list, "answer_list.json", ["yes", "no", "yes"], "index 2", "duplicate answer 'yes'"),
    (albef.read_vqa, "vqa_train.json", '[{"question_id": 1},\n{"question_id": 2,]', "line 2", "malformed JSON"),
    (
        vlue.read_vlue_nlvr2,
        "nlvr2_vlue_test.json",
        [{"images": PAIR, "sentence": "s", "label": True}],
        "index 0",
        'label should be the string "True" or "False"',
    ),
    (
        vlue.read_vlue_vqa,
        "vqa_vlue_test.json",
        [{"question_id": 1, "question": "q?", "image": "a.jpg", "answer": ["a"]}],
        "index 0",
        "field 'answer' should be str, got list",
    ),
    (
        vlue.read_vlue_refcoco,
        "refcoco+_vlue_test.json",
        [{"ref_id": 1, "image": "a.jpg", "text": "t", "bbox": [1, 1, 2, 2]}],
        "index 0",
        "missing field 'height'",
    ),
    (
        xvlm_pretrain.read_image_text,
        "image_text.jsonl",
        json.dumps(CUBE) + '\n{"image": "b.jpg", \n',
        "line 2",
        "malformed JSON line",
    ),
    (xvlm_pretrain.read_image_text, "image_text.jsonl", [{**CUBE, "caption": {}}], "line 1", "empty caption dict"),
    (
        xvlm_pretrain.read_image_text,
        "image_text.jsonl",
        [{"caption": "a cube"}],
        "line 1",
        "missing field 'image' (path) or 'binary' (base64)",
    ),
    (
        xvlm_pretrain.read_region,
        "region.jsonl",
        [{"image": "a.jpg", "elems": [{"caption": "c", "bb": [1, 1, 5, 5]}, {"caption": "d", "bb": [1, 1, -3, 4]}]}],
        "line 1 elems[1]",
        "non-positive size",
    ),
    (
        xvlm_pretrain.read_video,
        "video.jsonl",
        [{"video_frames": [["a.jpg"], ["b.jpg"]], "text": "one", "is_continuous": True}],
        "line 1",
        "2 clips need a list of 2 texts",
    ),
    (
        xvlm_pretrain.read_para_text,
        "para_text.jsonl",
        [{"source_text": "a", "target_text": ""}],
        "line 1",
        "empty target_text",
    ),
    (
        coco_caption.read_caption_gt,
        "x_gt.json",
        {"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 5, "caption": c} for c in "ab"]},
        "annotations index 1",
        "duplicate annotation id 5",
    ),
    (
        coco_caption.read_caption_gt,
        "x_gt.json",
        {"images": [{"id": 1}], "annotations": [{"image_id": 2, "id": 1, "caption": "a"}]},
        "annotations index 0",
        "image_id 2 is not in 'images'",
    ),
    (
        coco_caption.read_caption_results,
        "captions_x_results.json",
        [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
        "index 1",
        "second caption for image_id 1",
    ),
    (
        vqa_v2.read_vqa_annotations,
        "v2_mscoco_val2014_annotations.json",
        {**VQA_HEADER, "annotations": [VQA_ANN]},
        "annotations index 0",
        "empty 'answers' list",
    ),
    (
        vqa_v2.read_vqa_annotations,
        "v2_mscoco_val2014_annotations.json",
        {**VQA_HEADER, "annotations": [{**VQA_ANN, "answers": [{"answer": "yes"}]}]},
        "annotations index 0",
        "missing field 'answer_confidence'",
    ),
    (vqa_v2.read_vqa_questions, "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": []}, "header", "'info'"),
    (
        msrvtt.read_videodatainfo,
        "train_val_videodatainfo.json",
        {"videos": [], "sentences": [{"caption": "c", "video_id": "video9", "sen_id": 0}]},
        "sentences index 0",
        "video_id video9 is not in 'videos'",
    ),
    (msrvtt.read_ans2label, "ans2label.json", {"cube": 0, "red": 2}, "ans2label.json: labels", "missing [1]"),
    (msrvtt.read_ans2label, "ans2label.json", {"cube": 0, "red": 0}, "answer 'red'", "label 0 is also the label"),
    (
        msrvtt.read_qa,
        "msrvtt_qa_test.jsonl",
        [{"video_id": "video1", "question": "", "answer": "a"}],
        "line 1",
        "empty question",
    ),
    (iglue.read_xvnli, "test.jsonl", [XVNLI], "line 1", "gold_label should be one of"),
    (iglue.read_marvl, "marvl-id.jsonl", [{"caption": "c", "label": "True"}], "line 1", "missing field 'concept'"),
    (
        iglue.read_xgqa,
        "test.json",
        [{"img_id": "n1", "label": {"yes": 2.0}, "question_id": "1", "sent": "q?"}],
        "index 0",
        "label should map answers to scores in [0, 1]",
    ),
    (iglue.read_xgqa, "dev.json", {"77": {"imageId": "n1", "question": " "}}, "question_id 77", "empty question"),
    (
        iglue.read_xflickrco,
        "test.jsonl",
        [{"sentences": [], "id": "1", "img_path": "1.jpg"}],
        "line 1",
        "empty list of sentences",
    ),
]


@pytest.mark.parametrize(("read", "name", "content", "where", "reason"), BAD_CASES)
def test_bad_input_names_file_record_and_reason(
    read: Callable[..., Any], name: str, content: Any, where: str, reason: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, name, _text(name, content))
    with pytest.raises(DataError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(str(path)) and where in message and reason in message, message


def test_missing_image_is_named_with_its_record(image_root: Path, tmp_path: Path) -> None:
    records = [
        {"image": "images/train/00000001.jpg", "caption": ["a"]},
        {"image": "images/train/missing.jpg", "caption": ["b"]},
    ]
    path = _write(tmp_path, "coco_test.json", json.dumps(records))
    with pytest.raises(DataError, match=r"coco_test.json: index 1: image not found: .*images/train/missing.jpg"):
        albef.read_retrieval(path, image_root=image_root)
    albef.read_retrieval(path)  # without an image root only the annotations are checked


def test_truncated_image_bytes_are_a_data_error(image_root: Path, tmp_path: Path) -> None:
    good = (image_root / "images/train/00000001.jpg").read_bytes()
    broken = tmp_path / "images" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(good[: len(good) // 2])
    path = _write(tmp_path, "image_text.jsonl", '{"image": "images/broken.jpg", "caption": "a cube"}\n')
    with pytest.raises(DataError, match=r"image_text.jsonl: line 1: corrupt image .*broken.jpg"):
        xvlm_pretrain.read_image_text(path, image_root=tmp_path)


def test_corrupt_base64_frames_and_binaries_are_data_errors(tmp_path: Path) -> None:
    truncated = _png_base64((8, 6), (1, 2, 3))[:40]
    path = _write(
        tmp_path, "video.jsonl", json.dumps({"video_frames": [truncated], "text": "t", "is_continuous": False})
    )
    with pytest.raises(DataError, match=r"video.jsonl: line 1: (corrupt base64 video frame|base64 video frame is not)"):
        xvlm_pretrain.read_video(path, image_root=tmp_path)
    path = _write(tmp_path, "image_text.jsonl", '{"binary": "not*base64", "caption": "a cube"}\n')
    with pytest.raises(DataError, match=r"line 1: base64 image is not valid base64"):
        xvlm_pretrain.read_image_text(path, image_root=tmp_path)


def test_declared_size_must_match_the_image(image_root: Path, tmp_path: Path) -> None:
    record = {"image": "images/train/00000001.jpg", "text": "cube", "ref_id": 1, "bbox": [1, 1, 2, 2]}
    path = _write(tmp_path, "refcoco+_val.json", json.dumps([{**record, "width": 640, "height": 480}]))
    with pytest.raises(DataError, match=r"index 0: image images/train/00000001.jpg is 64x48, record says 640x480"):
        albef.read_refcoco(path, image_root=image_root)
    # without width/height the decoded size bounds the box
    path = _write(tmp_path, "refcoco+_val.json", json.dumps([{**record, "bbox": [60, 1, 10, 2]}]))
    with pytest.raises(DataError, match=r"outside the 64x48 image"):
        albef.read_refcoco(path, image_root=image_root)


def test_missing_video_is_named(image_root: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, "msrvtt_ret_test.json", '[{"video": "video404", "caption": "c"}]')
    with pytest.raises(DataError, match=r"index 0: video not found: .*video404"):
        msrvtt.read_retrieval(path, image_root=image_root / "videos/test")


# ------------------------------------------------------------------------------------ skip-bad
def test_skip_bad_collects_errors_and_keeps_good_records(tmp_path: Path) -> None:
    lines = [json.dumps(CUBE), "{broken", '{"image": "a.jpg", "caption": ""}', json.dumps(CUBE)]
    path = _write(tmp_path, "image_text.jsonl", "\n".join(lines) + "\n")
    bad = BadRecords(skip_bad=True)
    records = xvlm_pretrain.read_image_text(path, bad=bad)
    assert len(records) == 2
    assert [e.record for e in bad.errors] == ["line 2", "line 3"]
    assert "skipped 2 bad record(s)" in bad.summary()


def test_skip_bad_drops_a_bad_gt_image_and_its_captions(tmp_path: Path) -> None:
    gt = {
        "images": [{"id": 1}, {"id": 2, "width": 0, "height": 5}],
        "annotations": [{"image_id": 1, "id": 1, "caption": "a"}, {"image_id": 2, "id": 2, "caption": "b"}],
    }
    path = _write(tmp_path, "x_gt.json", json.dumps(gt))
    bad = BadRecords(skip_bad=True)
    kept = coco_caption.read_caption_gt(path, bad=bad)
    assert kept["images"] == [{"id": 1}] and kept["annotations"] == [gt["annotations"][0]]
    assert [e.record for e in bad.errors] == ["images index 1", "annotations index 1"]


def test_skip_bad_on_a_json_list(tmp_path: Path) -> None:
    records = [
        {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": "True"},
        {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": 1},
        {"images": ["a.jpg", "b.jpg"], "sentence": "s", "label": False},
    ]
    path = _write(tmp_path, "nlvr_dev.json", json.dumps(records))
    bad = BadRecords(skip_bad=True)
    assert albef.read_nlvr2(path, bad=bad) == [records[0], records[2]]
    assert len(bad.errors) == 1 and bad.errors[0].record == "index 1"


# ------------------------------------------------------------------------------------ writers, helpers
def test_writer_rejects_bad_records_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nlvr_dev.json"
    with pytest.raises(DataError, match=r"nlvr_dev.json: index 1: label should be"):
        albef.write_nlvr2(
            path, [{"images": PAIR, "sentence": "s", "label": True}, {"images": PAIR, "sentence": "s", "label": "no"}]
        )
    assert not path.exists()
    with pytest.raises(DataError, match=r"para_text.jsonl: line 1: empty source_text"):
        _write_lines(tmp_path / "para_text.jsonl", "para_text", [{"source_text": " ", "target_text": "b"}])
    assert not (tmp_path / "para_text.jsonl").exists() and not list(tmp_path.glob(".para_text*"))


def test_vqa_answer_list_ranks_by_frequency_then_alphabetically() -> None:
    anns = [{"multiple_choice_answer": a} for a in ["no", "yes", "2", "yes", "no", "red"]]
    assert vqa_v2.vqa_answer_list(anns) == ["no", "yes", "2", "red"]
    assert vqa_v2.vqa_answer_list({"annotations": anns}, size=2) == ["no", "yes"]


def test_join_questions_annotations_pairs_and_reports_orphans() -> None:
    questions = vqa_v2.read_vqa_questions(FIXTURES / "vqa/v2_OpenEnded_mscoco_val2014_questions.json")
    annotations = vqa_v2.read_vqa_annotations(FIXTURES / "vqa/v2_mscoco_val2014_annotations.json")
    joined = vqa_v2.join_questions_annotations(questions, annotations, "ann.json")
    assert [(j["question_id"], j["question"]) for j in joined] == [
        (1000, "What color is the cube?"),
        (3000, "Is there a cone?"),
    ]
    questions["questions"] = questions["questions"][:1]
    with pytest.raises(DataError, match=r"ann.json: annotations index 1: question_id 3000 has no question"):
        vqa_v2.join_questions_annotations(questions, annotations, "ann.json")


def test_marvl_to_xvlm_matches_the_converted_fixture(image_root: Path) -> None:
    converted = iglue.marvl_to_xvlm(iglue.read_marvl(FIXTURES / "marvl/marvl-id.jsonl"))
    assert converted == iglue.read_marvl_xvlm(FIXTURES / "marvl/marvl-id.json", image_root=image_root)


def test_caption_results_must_name_ground_truth_images() -> None:
    path = FIXTURES / "captioning/captions_val2014_fakecap_results.json"
    with pytest.raises(DataError, match=r"index 1: image_id 1 is not in the ground truth"):
        coco_caption.read_caption_results(path, gt_image_ids={3})
