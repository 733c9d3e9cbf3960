"""BERT-of-Theseus: schedulers, successor init, replacement semantics, compaction, a tiny training run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grainvl.compress.theseus import (
    ConstantReplacementScheduler,
    LinearReplacementScheduler,
    TheseusConfig,
    compact_successor,
    compact_xvlm,
    install_theseus,
    install_theseus_xvlm,
    make_segments,
    successor_parameters,
)
from grainvl.models.factory import get_model_config
from grainvl.models.text import BertEncoderModel, TextConfig
from grainvl.models.xvlm import XVLM
from grainvl.tasks.theseus import train_theseus_classifier


def _tower(layers: int = 6, fusion_start: int | None = None, vocab_size: int = 200) -> BertEncoderModel:
    torch.manual_seed(0)
    cfg = TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=layers,
        num_heads=4,
        intermediate_size=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        fusion_start=fusion_start,
        encoder_width=32,
    )
    return BertEncoderModel(cfg)


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 200, (3, 7), generator=torch.Generator().manual_seed(1))
    atts = torch.ones_like(ids)
    atts[0, -2:] = 0
    return ids, atts


def test_schedulers_follow_the_official_formulas() -> None:
    encoder = install_theseus(_tower(), text_successors=3)
    linear = LinearReplacementScheduler(encoder, base_replacing_rate=0.3, k=0.25)
    assert encoder.replacing_rate == 0.3  # p(0) = b before the first step
    assert [linear.step() for _ in range(4)] == pytest.approx([0.55, 0.8, 1.0, 1.0])  # min(1, k·t + b)
    assert encoder.replacing_rate == 1.0
    constant = ConstantReplacementScheduler(encoder, replacing_rate=0.5, replacing_steps=3)
    assert [constant.step() for _ in range(4)] == [0.5, 0.5, 1.0, 1.0]  # successor fine-tuning from step 3
    never = ConstantReplacementScheduler(encoder, replacing_rate=0.5)
    assert [never.step() for _ in range(3)] == [0.5, 0.5, 0.5]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            encoder.set_replacing_rate(bad)


def test_successors_start_as_the_first_predecessor_layers() -> None:
    tower = _tower(6)
    encoder = install_theseus(tower, text_successors=3)
    assert [list(block) for block, _ in encoder.modules_map] == [[0, 1], [2, 3], [4, 5]]
    assert encoder.sources == [0, 1, 2]  # official run_glue.py: deepcopy(layer[0 .. S-1])
    for i, source in enumerate(encoder.sources):
        for (name, p), (_, q) in zip(encoder.scc_layer[i].named_parameters(), encoder.layer[source].named_parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name  # a copy, not a share
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tower.named_parameters() if n.startswith("encoder.scc_layer.")}
    assert len(successor_parameters(tower)) == len(trainable)


def test_segments_keep_text_and_fusion_layers_apart() -> None:
    text, fusion = make_segments(6, 4, 2, 1)
    assert (text.start, text.stop, text.ratio, fusion.start, fusion.stop, fusion.ratio) == (0, 4, 2, 4, 6, 2)
    with pytest.raises(ValueError, match="equal modules"):
        make_segments(6, 6, 4, None)
    tower = _tower(6, fusion_start=4)
    encoder = install_theseus(tower, text_successors=2, fusion_successors=1)
    assert encoder.sources == [0, 1, 4]  # the fusion successor is the first fusion layer (cross-attention kept)
    assert encoder.scc_layer[2].crossattention is not None and encoder.scc_layer[0].crossattention is None


def test_p_one_runs_only_successors_and_tiny_p_only_predecessors() -> None:
    tower = _tower(6)
    ids, atts = _ids()
    with torch.no_grad():
        predecessor_out = tower.eval()(ids, atts)
    encoder = install_theseus(tower, text_successors=3)
    with torch.no_grad():
        # perturb successors so the two paths differ
        for p in encoder.scc_layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
        eval_out = tower.eval()(ids, atts)  # inference: successors only
        tower.train()
        encoder.set_replacing_rate(1.0)
        train_out = tower(ids, atts)
        encoder.set_replacing_rate(1e-12)
        teacher_like = tower(ids, atts)
    torch.testing.assert_close(train_out, eval_out)  # p = 1 (no dropout): training == successor-only inference
    torch.testing.assert_close(teacher_like, predecessor_out)  # p -> 0: the predecessor
    assert not torch.allclose(eval_out, predecessor_out)
    small = compact_successor(tower).eval()
    assert small.config.num_layers == 3 and len(small.encoder.layer) == 3
    with torch.no_grad():
        torch.testing.assert_close(small(ids, atts), eval_out)


def test_mixed_draws_run_whole_modules() -> None:
    tower = _tower(4)
    encoder = install_theseus(tower, text_successors=2)
    encoder.train().set_replacing_rate(0.5)
    torch.manual_seed(3)
    plans = {tuple(id(m) for m in encoder._plan(range(4))) for _ in range(40)}
    lengths = sorted({len(p) for p in plans})
    assert lengths == [2, 3, 4]  # both successors, one of each, both predecessor pairs
    with pytest.raises(ValueError, match="cuts through"):
        encoder._plan(range(0, 1))


@pytest.mark.slow
def test_xvlm_fusion_theseus_trains_only_successors_and_compacts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = get_model_config("xvlm-tiny")
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, num_layers=6, fusion_start=4))
    model = XVLM(config).train()
    encoder = install_theseus_xvlm(model, text_successors=2, fusion_successors=1)
    scheduler = LinearReplacementScheduler(encoder, 0.5, 0.25)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    res = config.vision.resolution
    image = torch.randn(2, 3, res, res)
    ids, atts = torch.randint(1000, 2000, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    for _ in range(3):
        tokens, image_atts = model.encode_image(image)
        fused = model.encode_multimodal(ids, atts, tokens, image_atts)
        loss = F.cross_entropy(model.itm_logits(fused), torch.tensor([0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".scc_layer." in n for n in changed)
    assert any(".scc_layer.2." in n for n in changed)  # the fusion successor trained
    model.eval()
    small = compact_xvlm(model).eval()
    assert (small.config.text.num_layers, small.config.text.fusion_start) == (3, 2)
    small.save_pretrained(tmp_path / "s")
    loaded = XVLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        tokens, image_atts = model.encode_image(image)
        ref = model.encode_multimodal(ids, atts, tokens, image_atts)
        out = loaded.encode_multimodal(ids, atts, *loaded.encode_image(image))
    torch.testing.assert_close(out, ref)


def test_tiny_theseus_run_on_a_text_classifier() -> None:
    from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
    from grainvl.tasks.text_classification import GlueTask, TextClassifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(packaged_minilm_path())
    tower = _tower(4, vocab_size=tokenizer.vocab_size)
    teacher = TextClassifier(tower, tokenizer, 2, ("0", "1"), dropout=0.0, max_length=16)
    texts = ["a red circle", "a blue square", "a pink star", "a green oval"] * 2
    task = GlueTask("toy", ("sentence",), "label", ("0", "1"), texts, [1.0, 0.0] * 4, texts, [1.0, 0.0] * 4)
    cfg = TheseusConfig(
        text_successors=2, scheduler="constant", replacing_rate=0.5, replacing_steps=2, steps=3, batch_size=4, lr=1e-3
    )
    student, log = train_theseus_classifier(teacher, task, cfg)
    assert log["replacing_rate"] == [0.5, 1.0, 1.0] and len(log["losses"]) == 3
    assert student.encoder.config.num_layers == 2 and teacher.encoder.config.num_layers == 4
    assert isinstance(teacher.encoder.encoder.layer, torch.nn.ModuleList)  # teacher untouched
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)  # head frozen (official)
    assert student.predict_proba(texts).shape == (8, 2)


def test_a_step_that_draws_only_predecessors_still_trains_the_classifier() -> None:
    """p tiny for two steps: every module runs its frozen predecessor and no successor is in the graph; the
    run must go on (the official code steps on zero successor gradients) instead of backward() failing."""
    from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
    from grainvl.tasks.text_classification import GlueTask, TextClassifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(packaged_minilm_path())
    cfg = TextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=4, num_heads=4,
                     intermediate_size=64, hidden_dropout=0.0, attention_dropout=0.0)  # fmt: skip
    teacher = TextClassifier(BertEncoderModel(cfg), tokenizer, 2, ("0", "1"), dropout=0.0, max_length=16)
    texts = ["a red circle", "a blue square", "a pink star", "a green oval"] * 2
    task = GlueTask("toy", ("sentence",), "label", ("0", "1"), texts, [1.0, 0.0] * 4, texts, [1.0, 0.0] * 4)
    tcfg = TheseusConfig(text_successors=2, scheduler="constant", replacing_rate=1e-9, replacing_steps=2, steps=3,
                         batch_size=4, lr=1e-3)  # fmt: skip
    _, log = train_theseus_classifier(teacher, task, tcfg)
    assert log["replacing_rate"] == [1e-9, 1.0, 1.0] and len(log["losses"]) == 3


def test_successor_task_keeps_an_all_predecessor_step_trainable() -> None:
    from grainvl.tasks.theseus import SuccessorTask

    torch.manual_seed(0)
    model = XVLM(get_model_config("xvlm-tiny")).train()
    install_theseus_xvlm(model, text_successors=1, fusion_successors=1)

    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch: dict) -> tuple[dict, dict]:
            with torch.no_grad():  # nothing trainable runs on predecessor-only steps
                fused = model.bert(batch["ids"], batch["atts"], mode="text")
            return {"x_loss": fused.pow(2).mean()}, {}

    ids, atts = torch.randint(1000, 2000, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    losses, _ = SuccessorTask(Inner())({"ids": ids, "atts": atts})
    assert losses["x_loss"].requires_grad
    losses["x_loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if ".scc_layer." in n]
    assert grads and all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)
