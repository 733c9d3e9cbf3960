"""CCLM pre-training: the parallel-text and multilingual streams, bad input, the schedule, the CLI run, resume, DDP."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.data.parallel_text import (
    CrossViewDataConfig,
    CrossViewFiles,
    CrossViewSchedule,
    MultilingualImageTextDataset,
    ParallelTextDataset,
    para_config,
)
from grainvl.data.pretrain import PretrainDataConfig
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.errors import BadRecords, DataError
from grainvl.models.factory import get_tokenizer
from grainvl.recipes.cclm import PerIterationScheduler

LATIN = ("en", "de", "fr", "es")  # the languages MiniLM's WordPiece covers (zh / ja are mostly [UNK])
TINY = Path(__file__).parents[1] / "src/grainvl/models/architectures/xvlm-tiny.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cclm") / "w"
    cfg = WorldConfig(images=24, videos=2, resolution=64, split_fractions=(16, 3, 2, 3), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


@pytest.fixture(scope="module")
def cross_arch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xvlm-tiny in the CrossViewLM layout (text encoder + 1-layer cross encoder)."""
    arch = json.loads(TINY.read_text())
    arch["name"] = "cclm-test"
    arch["text"].update(layout="cross", fusion_start=arch["text"]["num_layers"], cross_layers=1)
    path = tmp_path_factory.mktemp("arch") / "cclm-test.json"
    path.write_text(json.dumps(arch))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("xvlm-tiny")


def _para(path: Path, tokenizer, view: CrossViewDataConfig | None = None, bad=None) -> ParallelTextDataset:
    view = view or CrossViewDataConfig(languages=LATIN)
    cfg = para_config(PretrainDataConfig(resolution=64), view)
    return ParallelTextDataset(path, path.parent, tokenizer, cfg, seed=3, bad=bad, view=view)


def test_parallel_pairs_swap_with_half_probability_reproducibly(world: Path, tokenizer) -> None:
    data = _para(world / "annotations/pretrain/train/para_text.jsonl", tokenizer)
    assert len(data) > 10 and data.left_out > 0  # the zh / ja pairs are left out by data.languages
    swapped = []
    for index in range(len(data)):
        sample = data.sample(index, epoch=1)
        again = data.sample(index, epoch=1)
        assert sample["a"] == again["a"] and sample["langs"] == again["langs"]  # keyed by (seed, epoch, index)
        record = data.records[index]
        swapped.append(sample["langs"] == (record["target_lang"], record["source_lang"]))
        assert sample["b"].masked_pos == [] and len(sample["a"].masked_pos) >= 1
    assert 0 < sum(swapped) < len(swapped)
    batch = data.collate([data.sample(i) for i in range(4)])
    assert batch["text_ids"].shape[0] == batch["text_ids_2"].shape[0] == 4
    assert batch["masked_pos"].shape == (4, 20)  # CCLM's max_masks for parallel text
    never = CrossViewDataConfig(languages=LATIN, swap_prob=0.0)
    kept = _para(world / "annotations/pretrain/train/para_text.jsonl", tokenizer, never)
    assert all(kept.sample(i)["langs"][0] == kept.records[i]["source_lang"] for i in range(len(kept)))


BAD_LINES = [
    ({"source_text": "a red square"}, "missing field 'target_text'"),
    ({"source_text": "a red square", "target_text": "  "}, "target_text"),
    (
        {"source_text": "a red square", "target_text": "un carré rouge", "target_lang": "xx"},
        "unknown language code 'xx'",
    ),
    (
        {"source_text": "a red square", "target_text": "一个红色的正方形", "target_lang": "zh"},
        "does not cover language 'zh'",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_parallel_line_names_file_line_and_reason(tmp_path: Path, tokenizer, line: dict, reason: str) -> None:
    path = tmp_path / "para_text.jsonl"
    good = {"source_text": "a blue circle", "target_text": "ein blauer Kreis", "source_lang": "en", "target_lang": "de"}
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in (good, good, line)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=reason) as error:
        _para(path, tokenizer, CrossViewDataConfig())
    assert str(error.value).startswith(f"{path}: line 3: ")
    bad = BadRecords(skip_bad=True)
    assert len(_para(path, tokenizer, CrossViewDataConfig(), bad=bad)) == 2 and len(bad.errors) == 1


def test_multilingual_captions_checked_for_language_and_coverage(world: Path, tmp_path: Path, tokenizer) -> None:
    path = world / "annotations/pretrain/train/image_text_multilingual.jsonl"
    cfg = PretrainDataConfig(resolution=64, max_tokens=24, max_words=24)
    with pytest.raises(DataError, match=r"line 1: the tokenizer does not cover language '(zh|ja)'"):
        MultilingualImageTextDataset(path, world, tokenizer, cfg)
    data = MultilingualImageTextDataset(path, world, tokenizer, cfg, view=CrossViewDataConfig(languages=LATIN))
    drawn = {data._choose(data.records[0]["caption"], random.Random(s), 0)[1] for s in range(40)}
    assert drawn == set(LATIN)  # one language per sample, every chosen one reachable
    # The official list-of-dicts caption and an unknown language code.
    lines = [
        {"image": "images/train/00000000.jpg", "caption": [{"en": "a red square", "de": "ein rotes Quadrat"}]},
        {"image": "images/train/00000000.jpg", "caption": {"en": "a red square", "qq": "ein Quadrat"}},
    ]
    custom = tmp_path / "image_text_multilingual.jsonl"
    custom.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    bad = BadRecords(skip_bad=True)
    data = MultilingualImageTextDataset(custom, world, tokenizer, cfg, bad=bad)
    assert data.records[0]["caption"] == {"en": ["a red square"], "de": ["ein rotes Quadrat"]}
    assert len(bad.errors) == 1 and "line 2: unknown language code 'qq'" in str(bad.errors[0])


class _Counter:
    """A stand-in stream: batch k is k; its state is the count."""

    def __init__(self) -> None:
        self.count = 0

    def __next__(self) -> int:
        self.count += 1
        return self.count - 1

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def _schedule(repeat: int = 1) -> CrossViewSchedule:
    return CrossViewSchedule({k: _Counter() for k in ("para", "image", "region")}, seed=7, repeat=repeat)


def test_schedule_follows_the_official_iteration_and_resumes() -> None:
    schedule = _schedule()
    assert schedule.plan(0) == ["para", "region", "image"]  # the first iteration runs both main kinds
    later = [schedule.plan(i) for i in range(1, 200)]
    assert all(p[0] == "para" and len(p) == 2 for p in later)
    regions = sum(p[1] == "region" for p in later)
    assert 70 < regions < 130  # region or image, 50/50
    kinds, ends = [], []
    for _ in range(schedule.steps(4)):
        kinds.append(next(iter(next(schedule))))
        ends.append(schedule.ends_iteration)
    assert kinds == [k for i in range(4) for k in schedule.plan(i)]
    assert sum(ends) == 4 and ends[-1]  # one iteration boundary per iteration
    assert schedule.iterations_for(schedule.steps(4)) == 4 and schedule.iterations_for(schedule.steps(4) + 1) == 5
    # Resume mid-iteration: the same batches follow.
    state = json.loads(json.dumps(schedule.state_dict()))
    expected = [next(schedule) for _ in range(7)]
    fresh = _schedule()
    fresh.load_state_dict(state)
    assert [next(fresh) for _ in range(7)] == expected
    # grad_accum micro-batches of one step share a kind.
    accum = _schedule(repeat=2)
    assert [next(iter(next(accum))) for _ in range(6)] == ["para", "para", "region", "region", "image", "image"]


def test_lr_scheduler_steps_once_per_iteration() -> None:
    schedule = _schedule()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    inner = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 / (1 + it))
    scheduler = PerIterationScheduler(inner, schedule)
    lrs = []
    for _ in range(schedule.steps(3)):
        kind = next(iter(next(schedule)))
        lrs.append((kind, optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    # Every step of iteration i uses lr 1 / (1 + i): the para step and the main step share it.
    expected = [(k, 1.0 / (1 + i)) for i in range(3) for k in schedule.plan(i)]
    assert lrs == expected


def _args(world: Path, arch: Path, steps: int, out: Path) -> list[str]:
    return [
        "pretrain",
        "--model",
        str(arch),
        "--data",
        str(world),
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--set",
        "objectives=cclm",
        f"cclm.languages=[{','.join(LATIN)}]",
        "cclm.para_batch_size=4",
        "data.image_batch_size=4",
        "data.region_images=2",
        "train.progress=false",
        "train.track_energy=false",
        "train.tensorboard=false",
        "train.log_every=1",
    ]


def _losses(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_cclm_pretrain_end_to_end_per_language(world: Path, cross_arch: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_args(world, cross_arch, 5, run)) == 0
    out = capsys.readouterr().out
    assert "zero-shot retrieval on test" in out and "per caption language" in out and "chance" in out
    logged = _losses(run)
    assert set(logged[1]) >= {"para_ttc_loss", "para_ttm_loss", "para_mlm_loss"}  # iteration 0: para first
    assert "region_bbox_loss" in logged[2] and "image_itc_loss" in logged[3]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert {r["lang"] for r in rows} == set(LATIN) and {r["split"] for r in rows} == {"id", "ood"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["streams"] == ["image", "para", "region"]


def test_bad_input_is_one_line_exit_2(world: Path, cross_arch: Path, tmp_path: Path, capsys) -> None:
    args = _args(world, cross_arch, 1, tmp_path / "run")
    args.remove(f"cclm.languages=[{','.join(LATIN)}]")  # zh / ja captions: MiniLM does not cover them
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".jsonl: line " in err[0] and "the tokenizer does not cover language" in err[0]


def test_width_mismatch_is_a_clear_error(world: Path, tmp_path: Path, capsys) -> None:
    arch = json.loads(TINY.read_text())
    arch["text"].update(layout="cross", fusion_start=3, cross_layers=1, hidden_size=32)
    path = tmp_path / "narrow.json"
    path.write_text(json.dumps(arch))
    assert main(_args(world, path, 1, tmp_path / "run")) != 0
    assert "cross-attention keys take the vision width 64" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["cross", "single"])
def test_resumed_cclm_run_matches_uninterrupted(world: Path, cross_arch: Path, tmp_path: Path, layout: str) -> None:
    arch = cross_arch if layout == "cross" else TINY  # xvlm-tiny is the single stack
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = [*_args(world, arch, 7, full), "train.ckpt_every=4"]  # step 4 ends mid-iteration
    assert main(args) == 0
    checkpoint = full / "checkpoints" / "step_00000004"
    resumed_args = [*_args(world, arch, 7, resumed), "train.ckpt_every=4"]
    assert main([*resumed_args, "--resume", str(checkpoint)]) == 0
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [5, 6, 7]
    assert [a[s]["loss"] for s in (5, 6, 7)] == pytest.approx([b[s]["loss"] for s in (5, 6, 7)], abs=1e-6)
    assert [a[s]["lr"] for s in (5, 6, 7)] == [b[s]["lr"] for s in (5, 6, 7)]


@pytest.mark.slow
def test_cclm_under_torchrun_two_cpu_processes(world: Path, cross_arch: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "grainvl"]
    cmd += [*_args(world, cross_arch, 4, run)[0:], "cclm.para_batch_size=2", "data.image_batch_size=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "per caption language" in done.stdout
    assert sorted(_losses(run)) == [1, 2, 3, 4]


def test_world_files_are_found(world: Path) -> None:
    files = CrossViewFiles.find(world, "train")
    assert [p.name for p in files.image] == ["image_text_multilingual.jsonl"]
    assert [p.name for p in files.para] == ["para_text.jsonl"] and [p.name for p in files.region] == ["region.jsonl"]
