"""Retrieval fine-tuning and evaluation: ITC top-k + ITM re-ranking against a brute-force reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.models.factory import create_model, get_tokenizer
from grainvl.tasks.base import DataOptions, model_data_config
from grainvl.tasks.registry import get_task
from grainvl.tasks.retrieval import evaluate_retrieval, itm_scores
from grainvl.tasks.zeroshot import retrieval_metrics

QUIET = ["train.progress=false", "train.tensorboard=false", "train.track_energy=false", "train.save_final=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(images=40, videos=8, resolution=64, split_fractions=(24, 4, 6, 6), text_scenes=0, dialogues=0)
    generate_world(cfg, out)
    return out


@pytest.fixture(scope="module")
def model_and_data(world: Path) -> tuple:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny").eval()
    tokenizer = get_tokenizer(model.config)
    task = get_task("retrieval")
    module = task.build(model, world, tokenizer)
    return model, task.eval_set(module, tokenizer, world, "id")


def _brute_force(model, data, k: int, score: str) -> dict[str, float]:
    """The official dense computation: ITM on *every* pair, kept only on each row's ITC top-k, -100 elsewhere."""
    from grainvl.tasks.retrieval import embed

    emb = embed(model, data, batch_size=8)
    n, t = emb["vis_feat"].shape[0], emb["text_feat"].shape[0]
    sim = emb["vis_feat"] @ emb["text_feat"].t()  # (N, T)
    text_index = torch.arange(t).repeat(n)  # all (text, image) pairs, image-major
    vis_index = torch.arange(n).repeat_interleave(t)
    itm = itm_scores(model, emb, text_index, vis_index, batch_size=64).view(n, t)  # (N, T)
    full = itm + sim if score == "combined" else itm
    i2t = torch.full((n, t), -100.0)
    t2i = torch.full((t, n), -100.0)
    for r in range(n):
        top = sim[r].topk(min(k, t)).indices
        i2t[r, top] = full[r, top]
    for c in range(t):
        top = sim[:, c].topk(min(k, n)).indices
        t2i[c, top] = full[top, c]
    return retrieval_metrics(i2t.numpy(), t2i.numpy(), data.data.image_text_index, data.data.text_image_index.tolist())


@pytest.mark.parametrize("score", ["itm", "combined"])
def test_rerank_equals_brute_force(model_and_data: tuple, score: str) -> None:
    model, data = model_and_data
    n_texts = len(data.data.captions)
    assert n_texts > 10 > 0  # k=10 < #texts: the i2t direction really re-ranks a subset
    metrics, predictions = evaluate_retrieval(model, data, k_test=10, score=score, batch_size=8)
    reference = _brute_force(model, data, 10, score)
    assert metrics == pytest.approx(reference)
    assert len(predictions["i2t"]) == len(data.names) and len(predictions["t2i"]) == n_texts


def test_itc_mode_equals_dense_itc(model_and_data: tuple) -> None:
    from grainvl.tasks.retrieval import embed

    model, data = model_and_data
    metrics, _ = evaluate_retrieval(model, data, k_test=0, score="itc", batch_size=8, chunk=3)
    emb = embed(model, data, batch_size=8)
    sim = (emb["vis_feat"] @ emb["text_feat"].t()).numpy()
    reference = retrieval_metrics(sim, sim.T, data.data.image_text_index, data.data.text_image_index.tolist())
    assert metrics == pytest.approx(reference)


def test_rerank_changes_the_ranking(model_and_data: tuple) -> None:
    # A random ITM head disagrees with ITC: if re-ranking were a no-op, the two would coincide.
    model, data = model_and_data
    _, itc = evaluate_retrieval(model, data, k_test=0, score="itc", batch_size=8)
    _, itm = evaluate_retrieval(model, data, k_test=10, score="itm", batch_size=8)
    assert [row[:10] for row in itm["i2t"]] != itc["i2t"]


def test_unknown_score_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="score must be one of"):
        get_task("retrieval", score="bm25")
    with pytest.raises(ValueError, match="unknown option"):
        get_task("retrieval", k=3)


def test_train_batch_has_ids_and_trains(world: Path) -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny")
    tokenizer = get_tokenizer(model.config)
    task = get_task("retrieval")
    module = task.build(model, world, tokenizer)
    stream = task.train_stream(module, tokenizer, world, DataOptions(batch_size=4), rank=0, world_size=1)
    batch = next(stream)
    res = model_data_config(model).resolution
    assert batch["image"].shape == (4, 3, res, res) and batch["idx"].shape == (4,)
    losses, _ = module(batch)
    assert set(losses) == {"itc_loss", "itm_loss"} and all(torch.isfinite(v) for v in losses.values())
    state = stream.state_dict()
    following = next(stream)
    stream.load_state_dict(state)  # resumable: the same batch again, augmentation included
    assert torch.equal(next(stream)["image"], following["image"])


@pytest.mark.slow
def test_finetune_evaluate_and_score_file(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.metrics.scoring import score_retrieval
    from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune

    run = tmp_path / "run"
    report = finetune(
        load_config(
            FinetuneConfig,
            None,
            ["train.steps=2", "data.batch_size=4", *QUIET],
            {"task": "retrieval", "model": "xvlm-tiny", "world": world, "train.run_dir": run},
        )
    )
    assert set(report["evaluations"]) == {"test", "test_ood"}
    for metrics in report["evaluations"].values():
        assert {"txt_r1", "img_r10", "r_mean"} <= set(metrics)
    # The written prediction file scores to the same numbers through `grainvl score`'s reader.
    gt = world / "annotations" / "retrieval" / "coco_test_ood.json"
    scored = score_retrieval(run / "predictions" / "retrieval_test_ood.json", gt, echo=lambda _: None)
    assert scored == pytest.approx(report["evaluations"]["test_ood"])
    # The run folder reloads exactly.
    assert evaluate_run(run, world, "ood") == pytest.approx(report["evaluations"]["test_ood"], abs=0)


@pytest.mark.slow
def test_video_retrieval_end_to_end(world: Path, tmp_path: Path) -> None:
    from grainvl.config import load_config
    from grainvl.recipes.finetune import FinetuneConfig, finetune

    overrides = ["train.steps=2", "data.batch_size=3", "options.k_test=4", *QUIET]
    report = finetune(
        load_config(
            FinetuneConfig,
            None,
            overrides,
            {"task": "video_retrieval", "model": "xvlm-tiny", "world": world, "train.run_dir": tmp_path / "video"},
        )
    )
    assert set(report["evaluations"]) == {"test", "test_ood"}
    assert all(0 <= v <= 100 for m in report["evaluations"].values() for v in m.values())
    assert np.isfinite(report["train"]["final_losses"]["itc_loss"])
