"""DaVinci downstream tasks (tasks/davinci_downstream.py): 1-2 training steps each on a tiny world with
``davinci-tiny``, evaluation rows in the results schema, VQA ranking on a hand-built case, the frozen probe,
generative retrieval (scores against a per-pair brute force, the X²-VLM metric keys) and ``grainvl bench`` with
davinci-tiny next to xvlm-tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grainvl.bench.results import RESULT_FIELDS
from grainvl.config import load_config
from grainvl.data.downstream import grounding_file
from grainvl.metrics.grounding import denormalize_cxcywh
from grainvl.metrics.retrieval import retrieval_metrics_from_candidates
from grainvl.metrics.scoring import score_grounding
from grainvl.models.factory import get_tokenizer, load_davinci_model
from grainvl.recipes.finetune import FinetuneConfig, evaluate_run, finetune, load_finetuned
from grainvl.tasks import registry
from grainvl.tasks.base import DataOptions
from grainvl.tasks.davinci_downstream import (
    DaVinciGroundingModule,
    DaVinciGroundingTask,
    DaVinciRetrievalTask,
    DaVinciTask,
    likelihood_ranking_loss,
    probe_labels,
    rank_answers,
)
from grainvl.tasks.grounding import GroundingTask
from grainvl.tasks.registry import UnsupportedTask, get_task

QUIET = ["train.progress=false", "train.tensorboard=false", "train.save_final=false", "train.ckpt_every=0"]


def _finetune(tmp_path: Path, world: Path, task: str, *extra: str) -> dict:
    overrides = [
        *QUIET,
        f"task={task}",
        "model=davinci-tiny",
        f"world={world}",
        f"train.run_dir={tmp_path / task}",
        "train.steps=2",
        "data.batch_size=2",
        "data.eval_batch_size=4",
        "data.max_eval_samples=4",
        "optim.lr=1e-4",
        *extra,
    ]
    return finetune(load_config(FinetuneConfig, None, overrides))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_registry_picks_the_family() -> None:
    assert type(get_task("vqa")).__module__ == "grainvl.tasks.vqa"
    dv = get_task("vqa", "davinci")
    assert isinstance(dv, DaVinciTask) and dv.name == "vqa"
    # Grounding: our DaVinci head, X²-VLM's evaluation (a GroundingTask subclass).
    assert type(get_task("grounding")) is GroundingTask
    grounding = get_task("grounding", "davinci", careful_hflip=False)
    assert isinstance(grounding, DaVinciGroundingTask) and grounding.options == {"careful_hflip": False}
    with pytest.raises(UnsupportedTask, match="no 'vl' variant"):
        get_task("linear_probe", "vl")
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope", "davinci")


@pytest.mark.parametrize(
    ("task", "metric", "splits"),
    [
        ("vqa", "vqa_acc", {"id", "ood"}),
        ("nlvr2", "acc", {"id", "ood"}),
        ("captioning", "CIDEr", {"id", "ood"}),
        ("ve", "acc", {"id"}),  # English XVNLI has no OOD split
    ],
)
def test_task_trains_and_reports_id_ood(tmp_path: Path, vlue_world: Path, task: str, metric: str, splits: set) -> None:
    extra = ["options.meteor=false"] if task == "captioning" else []
    report = _finetune(tmp_path, vlue_world, task, *extra)
    assert report["train"]["steps_run"] == 2
    rows = _rows(tmp_path / task)
    assert {r["split"] for r in rows} == splits
    for row in rows:
        assert set(RESULT_FIELDS) <= set(row) and row["model"] == "davinci-tiny" and row["task"] == task
    primary = [r for r in rows if r["metric"] == metric]
    assert {r["split"] for r in primary} == splits
    assert all(0 <= r["value"] <= (100 if metric != "CIDEr" else 10) for r in primary)
    # The run reloads as the DaVinci variant and scores the same again.
    loaded_task, module, tok = load_finetuned(tmp_path / task)
    assert isinstance(loaded_task, DaVinciTask)
    again = loaded_task.evaluate(module, tok, vlue_world, "test")
    assert again[metric] == pytest.approx(report["evaluations"]["test"][metric])


class _FixedDecoder(nn.Module):
    """A decoder whose first-token log-probs and full answer log-likelihoods are given by hand."""

    def __init__(self, first: torch.Tensor, full: dict[int, float]) -> None:
        super().__init__()
        self.first, self.full = first, full

    def forward(self, ids, atts, states, enc_atts):  # -> (Q, 1, V)
        return self.first.log()[None, None].expand(states.shape[0], 1, -1)

    def sequence_logprob(self, ids, atts, states, enc_atts):  # -> (N,): keyed by the answer's first token
        return torch.tensor([self.full[int(i)] for i in ids[:, 1]])


def test_vqa_rank_first_token_then_full_answer() -> None:
    # Answers "[CLS] t [SEP]" with first tokens 3, 4, 5. First-token probabilities favour 3 > 4 > 5;
    # the full likelihoods favour 4 > 3 > 5. k=2 keeps {3, 4} and re-ranks to 4; k=1 can only say 3.
    answer_ids = torch.tensor([[1, 3, 2], [1, 4, 2], [1, 5, 2]])
    atts = torch.ones_like(answer_ids)
    first = torch.tensor([0.01, 0.01, 0.01, 0.5, 0.3, 0.17])
    decoder = _FixedDecoder(first, {3: -2.0, 4: -1.0, 5: -0.5})
    states, enc = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.long)
    best2, scores2 = rank_answers(decoder, answer_ids, atts, states, enc, k=2)
    assert best2.tolist() == [[1, 0], [1, 0]] and scores2[0].tolist() == [-1.0, -2.0]
    assert rank_answers(decoder, answer_ids, atts, states, enc, k=1)[0].tolist() == [[0], [0]]
    # k = all: answer 5's full likelihood wins although its first token is the least likely.
    assert rank_answers(decoder, answer_ids, atts, states, enc, k=3)[0][:, 0].tolist() == [2, 2]


def test_probe_labels_from_region_record() -> None:
    record = {"elems": [
        {"caption": "a small red rhombus", "attributes": "small solid red", "bb": [0, 0, 4, 4]},
        {"caption": "a big dotted blue circle", "attributes": "large dotted blue", "bb": [0, 0, 10, 9]},
    ]}  # fmt: skip
    assert probe_labels(record) == {"shape": "circle", "colour": "blue", "count": "2"}
    record["elems"][0]["bb"] = [0, 0, 20, 20]
    assert probe_labels(record)["shape"] == "diamond"  # the synonym maps to the ontology's name


def test_linear_probe_keeps_the_backbone_frozen(tmp_path: Path, vlue_world: Path) -> None:
    torch.manual_seed(0)
    model = load_davinci_model("davinci-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "dv")
    _finetune(tmp_path, vlue_world, "linear_probe", f"model={tmp_path / 'dv'}", "optim.lr=1e-2")
    rows = _rows(tmp_path / "linear_probe")
    metrics = {(r["split"], r["metric"]) for r in rows}
    assert {("id", "acc"), ("ood", "acc"), ("id", "acc_shape"), ("id", "acc_colour"), ("id", "acc_count")} <= metrics
    _, module, _ = load_finetuned(tmp_path / "linear_probe")
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone did not move
    head = module.heads["shape"].weight
    assert head.abs().max() > 0 and module.heads["shape"].bias.abs().max() > 0  # the head did (bias from 0)


def test_linear_probe_feature_norm_standardises_and_reloads(tmp_path: Path, vlue_world: Path) -> None:
    # feature_norm: a BatchNorm without affine parameters before the linear layers (MAE's linear probe). In training
    # it standardises each feature over the batch; its running statistics are saved with the head and reloaded.
    torch.manual_seed(0)
    load_davinci_model("davinci-tiny").save_pretrained(tmp_path / "dv")
    args = (f"model={tmp_path / 'dv'}", "optim.lr=1e-2", "options.feature_norm=true")
    report = _finetune(tmp_path, vlue_world, "linear_probe", *args)
    task, module, tok = load_finetuned(tmp_path / "linear_probe")
    norm = module.norm
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and int(norm.num_batches_tracked) == 2
    assert not torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))  # moved off its init
    again = task.evaluate(module, tok, vlue_world, "test")
    assert again["acc"] == pytest.approx(report["evaluations"]["test"]["acc"])
    images = torch.rand(6, 3, 64, 64)
    module.train()
    with torch.no_grad():
        normed = module.norm(module.features(images))  # (6, 3H) standardised over the batch
    var = normed.var(0, unbiased=False)  # var / (var + eps): at most 1, below it for features that barely vary
    assert normed.mean(0).abs().max() < 1e-3 and var.max() <= 1 + 1e-4 and var.max() > 0.9


@pytest.fixture
def davinci_retrieval(monkeypatch: pytest.MonkeyPatch) -> None:
    """``retrieval`` in the DaVinci registry (a no-op once tasks/registry.py lists it)."""
    monkeypatch.setitem(
        registry._DAVINCI_TASK_PATHS, "retrieval", "grainvl.tasks.davinci_downstream:DaVinciRetrievalTask"
    )


def test_retrieval_trains_and_reports_id_ood(tmp_path: Path, vlue_world: Path, davinci_retrieval: None) -> None:
    report = _finetune(tmp_path, vlue_world, "retrieval", "options.rank_weight=1.0", "data.max_eval_samples=0")
    assert report["train"]["steps_run"] == 2
    rows = _rows(tmp_path / "retrieval")
    assert {r["split"] for r in rows} == {"id", "ood"}
    # The X²-VLM retrieval task's keys: the same metric code (official itm_eval) on both.
    xvlm_keys = set(retrieval_metrics_from_candidates([[0]], [[0.0]], [[0]], [[0.0]], [[0]], [0]))
    for split in ("id", "ood"):
        assert {r["metric"] for r in rows if r["split"] == split} == xvlm_keys
    assert all(0 <= r["value"] <= 100 for r in rows)
    ranked = json.loads((tmp_path / "retrieval" / "predictions" / "retrieval_test.json").read_text())
    assert len(ranked["i2t"]) == 6 and sorted(ranked["t2i"][0]) == list(range(6))  # 6 test images, all ranked
    loaded_task, module, tok = load_finetuned(tmp_path / "retrieval")
    assert isinstance(loaded_task, DaVinciRetrievalTask)
    again = loaded_task.evaluate(module, tok, vlue_world, "test")
    assert again["r_mean"] == pytest.approx(report["evaluations"]["test"]["r_mean"])


def test_retrieval_scores_equal_per_pair_brute_force(vlue_world: Path) -> None:
    torch.manual_seed(0)
    model, tok = load_davinci_model("davinci-tiny").eval(), get_tokenizer("davinci-tiny")
    task = DaVinciRetrievalTask()
    module = task.build(model, vlue_world, tok)
    data = task.eval_set(module, tok, vlue_world, "test").data
    images = torch.stack([data.images[i] for i in range(3)])  # (3, 3, R, R)
    ids, atts = data.text_ids[:4], data.text_atts[:4]  # (4, L), padded to the split's longest caption
    matrix = module.score_matrix(images, ids, atts, pair_batch=3)  # 3 captions, then 1: chunking exercised
    cfg, prompt = model.config, module.prompt_ids
    expected = torch.zeros(3, 4)
    with torch.no_grad():
        for i in range(3):
            states, enc_atts = model.encode(images[i : i + 1], torch.tensor([[cfg.cls_token_id, cfg.sep_token_id]]))
            for j in range(4):
                caption = ids[j, 1 : int(atts[j].sum())].tolist()  # the caption's tokens and [SEP], no padding
                seq = torch.tensor([[cfg.cls_token_id, *prompt, *caption]])
                logp = F.log_softmax(model.decode(seq[:, :-1], torch.ones_like(seq[:, :-1]), states, enc_atts), -1)
                targets = seq[0, 1 + len(prompt) :]
                expected[i, j] = logp[0, len(prompt) :].gather(1, targets[:, None]).mean()
    assert len(prompt) == 3 and matrix.shape == (3, 4)
    torch.testing.assert_close(matrix, expected, atol=1e-4, rtol=1e-4)


def test_likelihood_ranking_loss() -> None:
    flat = torch.zeros(3, 3)
    assert float(likelihood_ranking_loss(flat, torch.tensor([0, 1, 2]), 1.0)) == pytest.approx(
        torch.log(torch.tensor(3.0)).item()
    )
    sharp = torch.eye(3) * 10
    assert float(likelihood_ranking_loss(sharp, torch.tensor([0, 1, 2]), 0.1)) < 1e-6
    # Captions of one image are all positives: rows 0 and 1 share an id, so the two-way softmax over them is the target.
    shared = torch.tensor([[0.0, 0.0, -100.0], [0.0, 0.0, -100.0], [-100.0, -100.0, 0.0]])
    assert float(likelihood_ranking_loss(shared, torch.tensor([7, 7, 3]), 1.0)) == pytest.approx(
        2 / 3 * torch.log(torch.tensor(2.0)).item(), abs=1e-6
    )


def test_grounding_trains_and_reports_id_ood(tmp_path: Path, vlue_world: Path) -> None:
    report = _finetune(tmp_path, vlue_world, "grounding")
    assert report["train"]["steps_run"] == 2
    run = tmp_path / "grounding"
    rows = _rows(run)
    # X²-VLM's grounding keys and prediction files, which `grainvl score grounding` reads back to the same numbers.
    for split, name in (("id", "test"), ("ood", "test_ood")):
        assert {r["metric"] for r in rows if r["split"] == split} == {"acc@0.5", "miou"}
        predictions = run / "predictions" / f"grounding_{name}.json"
        scored = score_grounding(predictions, grounding_file(vlue_world, name), echo=lambda _: None)
        assert scored["acc@0.5"] == pytest.approx(report["evaluations"][name]["acc@0.5"])
    assert all(set(RESULT_FIELDS) <= set(r) and r["model"] == "davinci-tiny" and 0 <= r["value"] <= 100 for r in rows)
    # The run reloads (load_finetuned / `grainvl eval`) as the DaVinci variant with identical scores.
    loaded_task, module, tok = load_finetuned(run)
    assert isinstance(loaded_task, DaVinciGroundingTask) and isinstance(module, DaVinciGroundingModule)
    assert loaded_task.evaluate(module, tok, vlue_world, "test") == report["evaluations"]["test"]
    assert evaluate_run(run, vlue_world, "ood") == report["evaluations"]["test_ood"]


def test_grounding_boxes_are_normalised_and_denormalised_as_xvlm(tmp_path: Path, vlue_world: Path) -> None:
    torch.manual_seed(0)
    model, tok = load_davinci_model("davinci-tiny").eval(), get_tokenizer("davinci-tiny")
    task = get_task("grounding", "davinci").with_data(DataOptions(eval_batch_size=3, max_eval_samples=5))
    module = task.build(model, vlue_world, tok)
    data = task.eval_data(module, tok, vlue_world, "test")
    assert data.cfg.resolution == 64 and data.cfg.mean == (0.0, 0.0, 0.0)  # DaVinci's geometry, pixels in [0, 1]
    assert float(data[0]["image"].min()) >= 0 and float(data[0]["image"].max()) <= 1
    task.evaluate(module, tok, vlue_world, "test", out_dir=tmp_path)
    written = json.loads((tmp_path / "grounding_test.json").read_text())
    batch = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        pred = module.predict(batch["image"], batch["text_ids"], batch["text_atts"])  # (5, 4) (cx, cy, w, h)
    assert pred.shape == (5, 4) and bool(((pred > 0) & (pred < 1)).all())
    sizes = [data[i]["orig_size"] for i in range(len(data))]
    expected = denormalize_cxcywh(pred, [w for w, _ in sizes], [h for _, h in sizes])  # X²-VLM's de-normalisation
    assert [p["ref_id"] for p in written] == [data[i]["ref_id"] for i in range(len(data))]
    np.testing.assert_allclose([p["bbox"] for p in written], expected, rtol=1e-5, atol=1e-4)
    # The box reads the image CLS of the bidirectional encoder: it changes with the expression and with the image.
    with torch.no_grad():
        other_text = module.predict(batch["image"][:1], batch["text_ids"][1:2], batch["text_atts"][1:2])
        other_image = module.predict(batch["image"][2:3].flip(-1), batch["text_ids"][:1], batch["text_atts"][:1])
    assert batch["text_ids"][0].tolist() != batch["text_ids"][1].tolist()
    assert (other_text - pred[:1]).abs().max() > 1e-6 and (other_image - pred[:1]).abs().max() > 1e-6


def test_grounding_training_data_uses_davinci_geometry_and_careful_flip(vlue_world: Path) -> None:
    model, tok = load_davinci_model("davinci-tiny"), get_tokenizer("davinci-tiny")
    for careful in (True, False):
        task = get_task("grounding", "davinci", careful_hflip=careful)
        module = task.build(model, vlue_world, tok)
        stream = task.train_stream(module, tok, vlue_world, DataOptions(batch_size=2), 0, 1)
        assert stream.dataset.cfg.careful_hflip is careful and stream.dataset.cfg.resolution == 64
    batch = next(stream)
    assert batch["image"].shape == (2, 3, 64, 64) and float(batch["image"].min()) >= 0
    centre, size = batch["target_box"].split(2, dim=-1)  # normalised (cx, cy), (w, h) of the box inside the crop
    assert bool(((size > 0) & (centre - size / 2 >= -1e-6) & (centre + size / 2 <= 1 + 1e-6)).all())
    losses, _ = module(batch)
    assert set(losses) == {"bbox_loss", "giou_loss"} and all(torch.isfinite(v) for v in losses.values())


def test_glue_text_only(tmp_path: Path) -> None:
    world = tmp_path / "w"
    task_dir = world / "text" / "glue" / "toy"
    task_dir.mkdir(parents=True)
    lines = [
        "sentence\tlabel",
        *[f"{w} shape number {i}\t{int(w == 'red')}" for i in range(6) for w in ("red", "blue")],
    ]
    (task_dir / "train.tsv").write_text("\n".join(lines) + "\n")
    (task_dir / "dev.tsv").write_text("\n".join(lines[:7]) + "\n")
    report = _finetune(tmp_path, world, "glue", "eval_splits=[test,test_ood]")
    assert set(report["evaluations"]) == {"test"}  # id = dev.tsv; there is no OOD split
    rows = _rows(tmp_path / "glue")
    assert {r["metric"] for r in rows} >= {"accuracy", "f1", "mcc"} and {r["split"] for r in rows} == {"id"}
    assert 0 <= next(r["value"] for r in rows if r["metric"] == "accuracy") <= 1


@pytest.mark.slow
def test_bench_davinci_next_to_xvlm(tmp_path: Path, vlue_world: Path) -> None:
    from grainvl.recipes.bench import BenchOptions, run_bench

    options = BenchOptions(
        finetune_steps=1,
        finetune=load_config(FinetuneConfig, None, [*QUIET, "data.batch_size=2", "data.eval_batch_size=8"]),
        warmup=0,
        repeats=1,
        throughput_batch=2,
        throughput_repeats=1,
    )
    rows = run_bench(["xvlm-tiny", "davinci-tiny"], ["nlvr2", "grounding"], vlue_world, tmp_path / "b", options)
    assert all(r.get("status") == "ok" for r in rows)  # DaVinci grounding is a real row now, not a failure
    by = {(r["model"], r["task"], r["split"], r["metric"]): r for r in rows}
    for model in ("xvlm-tiny", "davinci-tiny"):
        assert 0 <= by[(model, "nlvr2", "id", "acc")]["value"] <= 100 and (model, "nlvr2", "ood", "acc") in by
        for split in ("id", "ood"):
            grounding = by[(model, "grounding", split, "acc@0.5")]  # the IoU threshold is part of the name
            assert grounding["primary"] and grounding["lang"] is None and 0 <= grounding["value"] <= 100
            assert grounding["latency_ms"] > 0  # the task's latency_call ran
            assert 0 <= by[(model, "grounding", split, "miou")]["value"] <= 100
