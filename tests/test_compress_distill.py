"""Student initialisation from the teacher's layers and the task-agnostic distillation loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from grainvl.models.factory import get_model_config
from grainvl.models.xvlm import XVLM
from grainvl.tasks.distill import (
    DistillTask,
    attention_kd,
    default_layer_map,
    hidden_kd,
    init_student_from_teacher,
    soft_cross_entropy,
    student_config,
    teacher_copy,
    uniform_layers,
)


def _teacher() -> XVLM:
    torch.manual_seed(0)
    cfg = get_model_config("xvlm-tiny")
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, depth=4),
        text=dataclasses.replace(cfg.text, num_layers=6, fusion_start=4, hidden_dropout=0.1),
    )
    return XVLM(cfg)


def _batch(vocab: int = 1000) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, vocab, (4, 8), generator=gen)
    atts = torch.ones(4, 8, dtype=torch.long)
    atts[2, 6:] = 0
    masked = ids.clone()
    masked[:, 2] = 103
    return {
        "image": {
            "image": torch.randn(4, 3, 64, 64, generator=gen),
            "text_ids": ids,
            "text_atts": atts,
            "text_ids_masked": masked,
            "masked_pos": torch.tensor([[2, 0]] * 4),
            "masked_ids": torch.stack([ids[:, 2], torch.full((4,), -100)], dim=1),
            "image_ids": torch.arange(4),
        }
    }


def test_uniform_layers_is_the_official_every_other_rule() -> None:
    assert uniform_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert uniform_layers(12, 3) == [3, 7, 11]
    assert uniform_layers(6, 3) == [1, 3, 5]
    assert uniform_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        uniform_layers(3, 4)


def test_x2vlm_base_student_layouts_on_the_meta_device() -> None:
    base = get_model_config("x2vlm-base")
    half = default_layer_map(base, "half")
    assert (len(half.vision), len(half.text), len(half.fusion)) == (6, 6, 3)
    evlm = default_layer_map(base, "efficientvlm")
    assert evlm.vision == [1, 3, 5, 7, 9, 11] and evlm.text == [3, 7, 11] and evlm.fusion == [1, 3, 5]
    cfg = student_config(base, evlm)
    with torch.device("meta"):
        student = XVLM(cfg)
    assert len(student.vision_encoder.blocks) == 6
    layers = student.bert.encoder.layer
    assert len(layers) == 6 and [lay.crossattention is not None for lay in layers] == [False] * 3 + [True] * 3
    assert student.bert.encoder.layer[0].intermediate.dense.out_features == 3072  # widths unchanged


def test_student_copies_the_mapped_layers() -> None:
    teacher = _teacher()
    student, layer_map = init_student_from_teacher(teacher)
    assert (layer_map.vision, layer_map.text, layer_map.fusion) == ([1, 3], [1, 3], [1])
    tv, sv = teacher.vision_encoder.blocks, student.vision_encoder.blocks
    assert torch.equal(sv[0].mlp.fc1.weight, tv[1].mlp.fc1.weight) and torch.equal(
        sv[1].attn.qkv.weight, tv[3].attn.qkv.weight
    )
    tl, sl = teacher.bert.encoder.layer, student.bert.encoder.layer
    assert torch.equal(sl[0].attention.self.query.weight, tl[1].attention.self.query.weight)
    assert torch.equal(sl[1].output.dense.weight, tl[3].output.dense.weight)
    # The fusion layer keeps the teacher's cross-attention (what the unreleased half_teacher.pth needs).
    assert torch.equal(sl[2].crossattention.self.key.weight, tl[5].crossattention.self.key.weight)
    assert torch.equal(student.itm_head[0].weight, teacher.itm_head[0].weight)
    assert student.config.text.fusion_start == 2 and student.config.vision.depth == 2


def test_kd_losses_on_hand_cases() -> None:
    zs = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    zt = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    p, q = F.softmax(zt, -1), F.softmax(zs, -1)
    kl_row0 = float((p[0] * (p[0] / q[0]).log()).sum())
    assert float(soft_cross_entropy(zs, zt)) == pytest.approx(kl_row0 / 2)  # batchmean, no T² factor
    a_s, a_t = torch.full((1, 1, 2, 4), 0.25), torch.tensor([[[[1.0, 0, 0, 0], [0.25] * 4]]])
    mse = float(((a_s - a_t) ** 2).mean())
    assert float(attention_kd([a_s], [a_t])) == pytest.approx(mse * 4)  # × key length (official)
    assert float(hidden_kd([torch.ones(2, 3), torch.zeros(1)], [torch.zeros(2, 3), torch.ones(1)])) == pytest.approx(
        2.0
    )


def test_explicit_attention_equals_sdpa() -> None:
    teacher = _teacher().eval()
    batch = _batch()["image"]
    inputs = {"image": batch["image"], "text_ids": batch["text_ids"], "text_atts": batch["text_atts"]}
    with torch.no_grad():
        fast = teacher.extract_features(inputs)
        from grainvl.tasks.distill import attention_modules, recording

        vision, self_attn, cross = attention_modules(teacher)
        modules = [*vision, *self_attn, *cross]
        with recording(modules) as sinks:
            slow = teacher.extract_features(inputs)
    # One map per attention module that ran (text layers have no cross-attention), none after the block.
    assert [len(s) for s in sinks] == [0 if m is None else 1 for m in modules]
    assert all(m is None or m.attention_sink is None for m in modules)
    torch.testing.assert_close(fast.fused, slow.fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(sinks[0][0].sum(-1), torch.ones_like(sinks[0][0].sum(-1)))


def test_distill_task_kd_is_zero_against_itself_and_the_teacher_stays_frozen() -> None:
    teacher = _teacher()
    task = DistillTask(teacher_copy(teacher), teacher_copy(teacher))
    task.train()
    assert not task.teacher.training and task.model.training
    task.model.eval()  # no dropout: the student is the teacher, so every KD term vanishes
    torch.manual_seed(0)
    losses, _ = task(_batch())
    kd = {k: float(v) for k, v in losses.items() if k.startswith("kd_")}
    assert set(kd) == {"kd_image_loss", "kd_text_loss", "kd_itm_pos_loss", "kd_itm_neg_loss", "kd_mlm_loss",
                       "kd_itm_logits_loss", "kd_mlm_logits_loss"}  # fmt: skip
    assert all(abs(v) < 1e-6 for v in kd.values()), kd
    assert float(losses["itc_loss"]) > 0


def test_distill_task_trains_the_student_only() -> None:
    teacher = _teacher()
    student, layer_map = init_student_from_teacher(teacher)
    task = DistillTask(student, teacher, layer_map)
    task.train()
    losses, _ = task(_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    kd = sum(v for k, v in losses.items() if k.startswith("kd_"))
    assert float(kd.detach()) > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.vision_encoder.blocks[0].attn.qkv.weight.grad is not None
    assert student.bert.encoder.layer[2].crossattention.self.key.weight.grad is not None
