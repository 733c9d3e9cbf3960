"""IGLUE-style cross-lingual tasks (tasks/iglue.py) and their protocol in the finetune recipe and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grainvl.bench.report import cross_lingual_mean, language_rows, task_table, write_report
from grainvl.bench.results import append_result, metric_language, with_language
from grainvl.data.downstream import read_records
from grainvl.errors import DataError
from grainvl.recipes.finetune import FinetuneConfig, finetune
from grainvl.tasks.base import DataOptions
from grainvl.tasks.iglue import VALIDATORS, english_side, iglue_file, non_english_mean
from grainvl.tasks.registry import get_task, list_tasks
from grainvl.train.loop import TrainConfig

CROSS_LINGUAL = ("xvnli", "xgqa", "marvl", "xflickrco", "multi_retrieval")
WORLD_LANGS = ["en", "de", "es", "fr", "ja", "zh"]


@pytest.fixture(scope="module")
def world(vlue_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared world plus, per task, an English dev file and non-English dev files (the shots' source)."""
    out = tmp_path_factory.mktemp("iglue") / "w"
    shutil.copytree(vlue_world, out)
    (out / "manifest.json").unlink()  # the added files are not in the manifest
    for task, ext in (("xvnli", ".jsonl"), ("xgqa", ".json"), ("marvl", ".jsonl"), ("xflickrco", ".jsonl")):
        for lang in WORLD_LANGS:
            folder = out / "annotations" / "iglue" / task / lang
            shutil.copy(folder / f"test{ext}", folder / f"dev{ext}")
    return out


def _cfg(world: Path, run: Path, task: str, **values) -> FinetuneConfig:
    train = TrainConfig(steps=1, run_dir=str(run), track_energy=False, clip_grad=0.0, log_every=1, ckpt_every=0)
    options = {"k_test": 4} if task in ("xflickrco", "multi_retrieval") else {}
    options.update(values.pop("options", {}))
    return FinetuneConfig(task=task, model="xvlm-tiny", world=str(world), options=options,
                          data=DataOptions(batch_size=4, eval_batch_size=8, augment=False), train=train,
                          **values)  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- pure parts
def test_registered() -> None:
    assert set(CROSS_LINGUAL) <= set(list_tasks())
    assert get_task("xvnli").primary_metric == "acc" and get_task("xflickrco").primary_metric == "r_mean"


def test_average_excludes_english() -> None:
    per_lang = {"en": {"acc": 90.0}, "de": {"acc": 40.0}, "zh": {"acc": 20.0}}
    assert non_english_mean(per_lang) == {"acc": 30.0}
    assert non_english_mean({"en": {"acc": 90.0}}) == {"acc": 90.0}  # English alone: its own score
    assert cross_lingual_mean({"en": 90.0, "de": 40.0, "zh": 20.0}) == 30.0


def test_metric_language_split() -> None:
    assert metric_language("acc@de") == ("acc", "de")
    assert metric_language("r_mean") == ("r_mean", None)
    assert with_language({"metric": "img_r1@zh", "value": 1.0}) == {"metric": "img_r1", "lang": "zh", "value": 1.0}


def test_english_side_aligns_by_id_and_names_a_missing_item(world: Path, tmp_path: Path) -> None:
    de = iglue_file(world, "xvnli", "de", "test")
    en = iglue_file(world, "xvnli", "en", "test")
    records, positions = read_records(de, VALIDATORS["xvnli"], "xvnli")
    english = {r["pairID"]: r["sentence2"] for r in read_records(en, VALIDATORS["xvnli"], "xvnli")[0]}
    swapped = english_side("xvnli", records, positions, en, de)
    assert [r["sentence2"] for r in swapped] == [english[r["pairID"]] for r in records]
    assert [r["sentence2"] for r in swapped] != [r["sentence2"] for r in records]  # German before, English after
    lonely = tmp_path / "en.jsonl"
    lonely.write_text("\n".join(en.read_text().splitlines()[1:]) + "\n")  # the first item has no English side
    with pytest.raises(DataError, match="translate-test: no English item"):
        english_side("xvnli", records, positions, lonely, de)


# ---------------------------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize("task", CROSS_LINGUAL)
def test_trains_and_reports_every_language(world: Path, tmp_path: Path, task: str) -> None:
    report = finetune(_cfg(world, tmp_path / "run", task, eval_splits=("test",)))
    rows = _rows(tmp_path / "run")
    primary = get_task(task).primary_metric
    per_lang = {r["lang"]: r["value"] for r in rows if r["metric"] == primary and r["lang"]}
    assert sorted(per_lang) == sorted(WORLD_LANGS)
    score = [r["value"] for r in rows if r["metric"] == primary and r["lang"] is None]
    assert score == [pytest.approx(sum(v for k, v in per_lang.items() if k != "en") / 5)]
    assert report["evaluations"]["test"][f"{primary}@de"] == per_lang["de"]
    if primary == "r_mean":  # B.7: r_mean = mean(TR mean, IR mean)
        for lang in WORLD_LANGS:
            got = {r["metric"]: r["value"] for r in rows if r["lang"] == lang}
            assert got["r_mean"] == pytest.approx((got["txt_r_mean"] + got["img_r_mean"]) / 2)


def test_translate_test_scores_every_language_on_english(world: Path, tmp_path: Path) -> None:
    # The world's test items are aligned by id and share images: on the English side every language is English.
    finetune(_cfg(world, tmp_path / "run", "xvnli", eval_splits=("test",), translate_test=True))
    rows = [r for r in _rows(tmp_path / "run") if r["lang"]]
    assert {r["model"] for r in rows} == {"xvlm-tiny (translate-test)"}
    assert len({r["value"] for r in rows}) == 1


def test_shots_fine_tune_each_target_language(world: Path, tmp_path: Path) -> None:
    report = finetune(_cfg(world, tmp_path / "run", "marvl", eval_splits=("test",), shots=2, shot_steps=1))
    few = [r for r in _rows(tmp_path / "run") if r["model"] == "xvlm-tiny (2-shot)"]
    assert sorted(r["lang"] for r in few if r["lang"]) == sorted(set(WORLD_LANGS) - {"en"})
    assert set(report["few_shot"]["evaluations"]["test"]) >= {"acc", "acc@de"}


def test_shots_without_a_few_shot_file_stop_before_training(world: Path, tmp_path: Path) -> None:
    bare = tmp_path / "w"
    shutil.copytree(world, bare)
    (bare / "annotations" / "iglue" / "xvnli" / "ja" / "dev.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no few-shot file for 'ja'"):
        finetune(_cfg(bare, tmp_path / "run", "xvnli", eval_splits=("test",), shots=2))
    assert not (tmp_path / "run" / "model").exists()


def test_english_dev_selects_the_tested_state(world: Path, tmp_path: Path) -> None:
    cfg = _cfg(world, tmp_path / "run", "xvnli", eval_splits=("test",))
    cfg.train.steps, cfg.train.eval_every = 2, 1
    report = finetune(cfg)
    assert report["dev_selection"]["metric"] == "acc" and report["dev_selection"]["step"] in (1, 2)


# ---------------------------------------------------------------------------------------------- report
def test_report_language_table_and_heat_map(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    values = {"xvnli": {"en": 80.0, "de": 50.0, "zh": 30.0}, "marvl": {"en": 70.0, "de": 60.0, "zh": 50.0}}
    for task, per_lang in values.items():
        append_result(results, {"model": "m", "task": task, "split": "id", "metric": "acc",
                                "value": cross_lingual_mean(per_lang)})  # fmt: skip
        for lang, value in per_lang.items():
            append_result(results, {"model": "m", "task": task, "split": "id", "metric": "acc", "value": value,
                                    "lang": lang})  # fmt: skip
    paths = write_report(results, tmp_path / "out")
    assert paths["languages_png"].stat().st_size > 0
    assert "## Per language" in paths["report_md"].read_text()
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    table = {(e["task"], e["metric"]): e for e in language_rows(rows)}
    assert table[("xvnli", "acc")]["avg"] == 40.0 and table[("marvl", "acc")]["de"] == 60.0
    assert {e["task"]: e["id"] for e in task_table(rows)} == {"xvnli": 40.0, "marvl": 55.0}  # not English's row


def test_only_language_codes_split_a_metric_name() -> None:
    """Grounding's ``acc@0.5`` (an IoU threshold) stays one metric; ``acc@de`` is accuracy in German."""
    from grainvl.bench.results import metric_language, with_language

    assert metric_language("acc@0.5") == ("acc@0.5", None)
    assert metric_language("acc@de") == ("acc", "de")
    assert metric_language("r_mean@zh-CN") == ("r_mean", "zh-CN")
    assert with_language({"metric": "acc@0.5", "value": 1.0}) == {"metric": "acc@0.5", "value": 1.0}
