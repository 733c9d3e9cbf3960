"""EfficientVLM stage 2: pruning during a task's fine-tuning with task distillation (tasks/task_distill.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.losses.itm import hard_negative_itm_loss, negatives_tape
from grainvl.models.factory import get_model_config, get_tokenizer, resolve_model
from grainvl.models.xvlm import XVLM
from grainvl.recipes.compress import CompressConfig, run_compress
from grainvl.recipes.finetune import load_finetuned
from grainvl.tasks.base import DataOptions
from grainvl.tasks.distill import init_student_from_teacher, pool_tokens, resize_images
from grainvl.tasks.registry import get_task
from grainvl.tasks.task_distill import TASK_KD_WEIGHTS, TaskDistill, copy_head_from_teacher, head_module


# ----------------------------------------------------------------------------------------- negatives tape
def test_negatives_tape_replays_the_recorded_draws() -> None:
    torch.manual_seed(0)
    model = XVLM(get_model_config("xvlm-tiny")).eval()
    b, n, length = 4, 5, 6
    vis = torch.randn(b, n, model.config.vision.width)
    text = torch.randn(b, length, model.config.text.hidden_size)
    atts, vis_atts = torch.ones(b, length, dtype=torch.long), torch.ones(b, n, dtype=torch.long)
    feats = torch.nn.functional.normalize(torch.randn(b, 8), dim=-1)
    tape: list = []
    with negatives_tape("record", tape):
        hard_negative_itm_loss(model, vis, vis_atts, text, atts, feats, feats.flip(0))
    assert len(tape) == 1
    recorded = [t.clone() for t in tape[0]]
    with negatives_tape("replay", tape):
        # Other similarities would draw other negatives; the replay hands back the recorded ones.
        hard_negative_itm_loss(model, vis, vis_atts, text, atts, feats, feats)
    assert tape == [] and all(t.shape == (b,) for t in recorded)
    with negatives_tape("replay", tape), pytest.raises(RuntimeError, match="empty"):
        hard_negative_itm_loss(model, vis, vis_atts, text, atts, feats, feats)
    with pytest.raises(ValueError, match="record"), negatives_tape("rewind", tape):
        pass


# ----------------------------------------------------------------------------------------- resolution helpers
def test_resize_images_touches_only_image_tensors_of_the_source_size() -> None:
    batch = {
        "image": torch.rand(2, 3, 8, 8),
        "pair": torch.rand(2, 2, 3, 8, 8),  # NLVR2: (B, 2, 3, R, R)
        "text_ids": torch.ones(2, 8, dtype=torch.long),
        "other": torch.rand(2, 3, 6, 6),
    }
    out = resize_images(batch, 8, 4)
    assert out["image"].shape == (2, 3, 4, 4) and out["pair"].shape == (2, 2, 3, 4, 4)
    assert out["text_ids"] is batch["text_ids"] and out["other"] is batch["other"]
    assert resize_images(batch, 8, 8) is batch
    flat = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(resize_images(flat, 8, 4), torch.full((1, 3, 4, 4), 0.25), atol=1e-6)


def test_pool_tokens_keeps_cls_and_area_pools_the_grid() -> None:
    grid = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid, row-major
    tokens = torch.cat([torch.full((1, 1, 1), -1.0), grid], dim=1)  # (1, 17, 1)
    pooled = pool_tokens(tokens, 5)  # -> CLS + 2x2
    assert pooled[0, 0, 0] == -1.0
    expected = torch.tensor([(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4])
    assert torch.allclose(pooled[0, 1:, 0], expected)
    assert pool_tokens(tokens, 17) is tokens
    with pytest.raises(ValueError, match="square"):
        pool_tokens(tokens, 4)


# ----------------------------------------------------------------------------------------- the KD task
def _modules(world: Path, task_name: str, student_copy: bool) -> tuple[object, object, object]:
    torch.manual_seed(0)
    source = resolve_model("xvlm-tiny")
    teacher_model = XVLM(get_model_config("xvlm-tiny"))
    tokenizer = get_tokenizer(source)
    task = get_task(task_name, "vl").with_data(DataOptions(batch_size=4, augment=False))
    teacher = task.build(teacher_model, world, tokenizer)
    if student_copy:
        student = copy.deepcopy(teacher)
        layer_map = None
    else:
        student_model, layer_map = init_student_from_teacher(teacher_model)
        student = task.build(student_model, world, tokenizer)
    return task, teacher, student, tokenizer, layer_map


@pytest.mark.parametrize("task_name", ["retrieval", "nlvr2", "vqa", "captioning", "grounding"])
def test_kd_vanishes_for_an_identical_student_and_the_teacher_gets_no_gradient(vlue_world: Path, task_name: str):
    task, teacher, student, tokenizer, _ = _modules(vlue_world, task_name, student_copy=True)
    kd = TaskDistill(student, teacher, task_name)
    kd.eval()  # no dropout: an identical student then matches its teacher exactly
    batch = next(iter(task.train_stream(teacher, tokenizer, vlue_world, task.data, 0, 1)))
    losses, _ = kd(batch)
    kd_terms = {k: float(v) for k, v in losses.items() if k.startswith("kd_")}
    assert {"kd_logits_loss", "kd_image_loss", "kd_text_loss", "kd_cross_loss"} <= set(kd_terms)
    assert all(abs(v) < 1e-5 for v in kd_terms.values()), kd_terms
    task_terms = [k for k in losses if not k.startswith("kd_")]
    assert task_terms
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    # The task loss is scaled by the paper's mix.
    w = TASK_KD_WEIGHTS[task_name]
    plain, _ = student(batch)
    for name in task_terms:
        if name != "itm_loss":  # ITM draws fresh negatives on every call
            assert torch.allclose(losses[name], w.task * plain[name], atol=1e-5), name


def test_kd_is_positive_for_a_smaller_student_and_pairs_layers_through_the_map(vlue_world: Path) -> None:
    task, teacher, student, tokenizer, layer_map = _modules(vlue_world, "retrieval", student_copy=False)
    kd = TaskDistill(student, teacher, "retrieval", layer_map)
    batch = next(iter(task.train_stream(teacher, tokenizer, vlue_world, task.data, 0, 1)))
    losses, _ = kd(batch)
    assert float(losses["kd_text_loss"]) > 0 and float(losses["kd_cross_loss"]) > 0
    assert float(losses["kd_logits_loss"]) >= 0
    assert kd.text_map == layer_map.text + [len(teacher.model.bert.layer_range("text")) + i for i in layer_map.fusion]


def test_head_copy_and_head_module(vlue_world: Path) -> None:
    _, teacher, student, _, _ = _modules(vlue_world, "nlvr2", student_copy=False)
    with torch.no_grad():
        for p in teacher.cls_head.parameters():
            p.add_(1.0)
    copied = copy_head_from_teacher(student, teacher)
    assert copied and all(name.startswith("cls_head.") for name in copied)
    for a, b in zip(student.cls_head.parameters(), teacher.cls_head.parameters(), strict=True):
        assert torch.equal(a, b)
    assert head_module(student) is student.cls_head
    _, _, vqa_student, _, _ = _modules(vlue_world, "vqa", student_copy=False)
    assert head_module(vqa_student) is vqa_student.text_decoder.cls


# ----------------------------------------------------------------------------------------- the recipe
def test_compress_prunes_during_task_finetuning_and_writes_a_run_folder(vlue_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    cfg = CompressConfig(
        teacher="xvlm-tiny", recipe=["distill", "prune", "shrink"], world=str(vlue_world), out=str(out), steps=3,
        task="nlvr2", teacher_steps=2, target_sparsity=0.3, track_energy=False, progress=False,
        finetune={"data": {"batch_size": 4}},
    )  # fmt: skip
    report = run_compress(cfg)
    prune = report["stages"]["prune"]
    assert prune["task"] == "nlvr2" and prune["teacher_task_run"]["fine_tuned_here"]
    assert prune["kd_weights"]["task"] == TASK_KD_WEIGHTS["nlvr2"].task
    assert abs(prune["achieved_sparsity"]["all"] - 0.3) <= 0.011
    ev = report["evaluation"]
    assert ev["task"] == "nlvr2" and set(ev["student"]["metrics"]) == {"id", "ood"}
    assert ev["student"]["params_M"] < ev["teacher"]["params_M"]
    # OUT/shrink is a fine-tuned run folder: it reloads and scores what the run scored.
    task, module, tokenizer = load_finetuned(out / "shrink", vlue_world)
    again = task.evaluate(module, tokenizer, vlue_world, "test")
    assert again["acc"] == pytest.approx(ev["student"]["metrics"]["id"]["acc"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"nlvr2"} and {r["split"] for r in rows} == {"id", "ood"}
    # A given teacher run is reused, not fine-tuned again.
    cfg2 = dataclasses.replace(cfg, out=str(tmp_path / "c2"), task_teacher=str(out / "teacher_nlvr2"))
    report2 = run_compress(cfg2)
    assert not report2["stages"]["prune"]["teacher_task_run"]["fine_tuned_here"]
    assert not (tmp_path / "c2" / "teacher_nlvr2").exists()


def test_vqa_stage2_prunes_the_answer_decoder_too(vlue_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    cfg = CompressConfig(
        teacher="xvlm-tiny", recipe=["prune", "shrink"], world=str(vlue_world), out=str(out), steps=3,
        task="vqa", teacher_steps=1, track_energy=False, progress=False,
        finetune={"data": {"batch_size": 4}, "options": {"k_test": 4}},
    )  # fmt: skip
    report = run_compress(cfg)
    assert "decoder" in report["stages"]["prune"]["achieved_sparsity"]
    assert report["stages"]["prune"]["target_sparsity"] == 0.35  # the paper's VQA target
    _, module, _ = load_finetuned(out / "shrink", vlue_world)
    assert report["stages"]["shrink"]["params_after"] == sum(p.numel() for p in module.parameters())


def test_student_init_task_teacher_starts_from_the_fine_tuned_teacher(vlue_world: Path, tmp_path: Path) -> None:
    """CoFi's start: with the weights' lr at 0 the pruned run's dense weights are the fine-tuned teacher's, head
    and backbone, full depth; the default start (pretrained) differs from them."""
    base = dict(
        teacher="xvlm-tiny", recipe=["prune"], world=str(vlue_world), steps=2, task="retrieval", teacher_steps=2,
        target_sparsity=0.2, prune_lr=0.0, track_energy=False, progress=False, evaluate_teacher=False,
        finetune={"data": {"batch_size": 4}, "options": {"score": "itc"}},
    )  # fmt: skip
    run_compress(CompressConfig(out=str(tmp_path / "a"), student_init="task_teacher", **base))
    _, teacher, _ = load_finetuned(tmp_path / "a" / "teacher_retrieval", vlue_world)
    _, student, _ = load_finetuned(tmp_path / "a" / "prune", vlue_world)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert set(s_state) == set(t_state)
    assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
    # The default start is the given (pre-trained) backbone, not the task teacher's.
    teacher_run = str(tmp_path / "a" / "teacher_retrieval")
    run_compress(CompressConfig(out=str(tmp_path / "b"), task_teacher=teacher_run, **base))
    _, default, _ = load_finetuned(tmp_path / "b" / "prune", vlue_world)
    d_state = default.state_dict()
    assert any(not torch.equal(d_state[k], t_state[k]) for k in t_state if k.startswith("model."))
    with pytest.raises(ValueError, match="without distill"):
        CompressConfig(out="x", student_init="task_teacher", **{**base, "recipe": ["distill", "prune"]})
    with pytest.raises(ValueError, match="student_init must be"):
        CompressConfig(out="x", student_init="teacher", **base)
    # A smaller student input needs no distill stage when the student is built from the task teacher.
    CompressConfig(out="x", student_init="task_teacher", student_resolution=32, **base)


def test_task_mode_config_errors(vlue_world: Path, tmp_path: Path, capsys) -> None:
    base = {"teacher": "xvlm-tiny", "world": str(vlue_world), "out": str(tmp_path / "o")}
    with pytest.raises(ValueError, match="distill, prune, shrink"):
        CompressConfig(recipe=["prune", "shrink", "quantize"], task="retrieval", **base)
    with pytest.raises(ValueError, match="prune required"):
        CompressConfig(recipe=["distill"], task="retrieval", **base)
    with pytest.raises(ValueError, match="needs task"):
        CompressConfig(recipe=["prune"], task_teacher="somewhere", **base)
    with pytest.raises(ValueError, match="needs the distill stage"):
        CompressConfig(recipe=["prune"], student_resolution=32, **base)
    cli = ["compress", "--teacher", "xvlm-tiny", "--world", str(vlue_world), "--out", str(tmp_path / "x")]
    assert main([*cli, "--recipe", "distill", "--student-resolution", "32", "--quiet", "--no-energy"]) == 2
    assert "EfficientNet" in capsys.readouterr().err  # xvlm-tiny's ViT cannot take another grid


def test_short_runs_reach_the_target_unaided_with_the_penalty(vlue_world: Path, tmp_path: Path) -> None:
    """Stage 2, 40 steps: the penalty Lagrangian (auto in short runs) ends near the 0.5 target before calibration,
    where the paper's game (λ1 winds up) ends far from it."""
    base = dict(
        teacher="xvlm-tiny", recipe=["distill", "prune"], world=str(vlue_world), steps=40, task="retrieval",
        target_sparsity=0.5, teacher_steps=2, track_energy=False, progress=False,
        finetune={"data": {"batch_size": 4}, "options": {"score": "itc"}},
    )  # fmt: skip
    auto = run_compress(CompressConfig(out=str(tmp_path / "a"), **base))["stages"]["prune"]
    assert auto["lagrangian"] == "penalty" and auto["reg_lr"] == pytest.approx(8.0 / 40)
    assert auto["lambda_lr"] == auto["reg_lr"]  # one rate unless lambda_lr_scale says otherwise
    assert abs(auto["expected_sparsity"] - 0.5) < 0.05, auto["expected_sparsity"]
    assert abs(auto["learned_sparsity"]["all"] - 0.5) < 0.06, auto["learned_sparsity"]
    teacher = str(tmp_path / "a" / "teacher_retrieval")
    paper = run_compress(CompressConfig(out=str(tmp_path / "p"), lagrangian="paper", task_teacher=teacher, **base))
    p = paper["stages"]["prune"]
    assert p["lagrangian"] == "paper" and abs(p["expected_sparsity"] - 0.5) > abs(auto["expected_sparsity"] - 0.5)
    assert p["lambda_lr"] == p["reg_lr"]  # the paper's game: one rate for log α and λ
    with pytest.raises(ValueError, match="lagrangian"):
        CompressConfig(out="x", lagrangian="dual", **{k: v for k, v in base.items() if k != "out"})
    with pytest.raises(ValueError, match="lambda_lr_scale"):
        CompressConfig(out="x", lambda_lr_scale=0.0, **{k: v for k, v in base.items() if k != "out"})


def test_penalty_mode_keeps_lambda1_at_zero() -> None:
    from grainvl.compress.prune import ModalPruner, PruneConfig

    torch.manual_seed(0)
    model = XVLM(get_model_config("xvlm-tiny"))
    pruner = ModalPruner(model, PruneConfig(target_sparsity=0.5, warmup_steps=0, linear_term=False))
    with torch.no_grad():
        pruner.lambdas.fill_(3.0)
    pruner.train()
    pruner.refresh()
    value, _ = pruner.lagrangian()
    gap = pruner.expected_sparsity() - 0.5
    assert torch.allclose(value, 3.0 * gap**2)  # λ1 ignored: the quadratic penalty alone


def test_prune_game_per_run_length() -> None:
    """``lagrangian: auto``: the penalty in every run under 1,000 steps (NLVR2's paper reg lr 0.1 too), the paper's
    game in longer runs; λ at log α's rate times ``lambda_lr_scale``; explicit choices are kept."""
    from grainvl.recipes.compress import prune_game

    def game(task: str, steps: int, **kw):
        return prune_game(CompressConfig("t", ["prune"], "w", "x", task=task, steps=steps, **kw))

    g = game("retrieval", 100)
    assert g.penalty and g.reg_lr == g.lambda_lr == pytest.approx(0.08)
    g = game("nlvr2", 100)  # 0.1 already travels 8 in 100 steps; the run is still short for the paper's game
    assert g.penalty and g.reg_lr == g.lambda_lr == pytest.approx(0.1)
    g = game("nlvr2", 2000)
    assert not g.penalty and g.reg_lr == g.lambda_lr == pytest.approx(0.1)
    g = game("retrieval", 2000)
    assert not g.penalty and g.reg_lr == g.lambda_lr == pytest.approx(0.01) and g.reg_lr_requested == 0.01
    g = game("retrieval", 100, lagrangian="paper")  # travel 4 over 100 steps, one rate
    assert not g.penalty and g.reg_lr == g.lambda_lr == pytest.approx(0.04)
    g = game("retrieval", 100, lambda_lr_scale=10.0)
    assert g.penalty and g.reg_lr == pytest.approx(0.08) and g.lambda_lr == pytest.approx(0.8)
