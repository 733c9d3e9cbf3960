"""Pruning the VQA answer decoder (EfficientVLM ``VQAL0Module``): exact unit costs, physical removal equal to the
masked decoder, the decoder inside the pruner's constraint, and a VQA run whose decoder and backbone were shrunk
differently reloading through ``task.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.compress.prune import MODALITIES, ModalPruner, PruneConfig, keep_probability, masks_applied
from grainvl.compress.shrink import shrink, shrink_decoder
from grainvl.models.decoder import TextDecoder
from grainvl.models.factory import get_model_config, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.finetune import load_finetuned, save_finetuned
from grainvl.tasks.registry import get_task
from grainvl.tasks.vqa import VQAModule

DECODER_GROUPS = ("decoder_head", "decoder_cross_head", "decoder_ffn")


def _model() -> XVLM:
    """xvlm-tiny with 2 text + 2 fusion layers (a 2-layer decoder) and 32-wide vision tokens, so that the
    fusion cross-attention (keys/values of width 32) and the decoder's (width H = 64) cost differently."""
    torch.manual_seed(0)
    cfg = get_model_config("xvlm-tiny")
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, width=32),
        text=dataclasses.replace(cfg.text, num_layers=4, fusion_start=2, encoder_width=32),
    )
    model = XVLM(cfg).eval()
    with torch.no_grad():  # non-trivial biases, so that removing a wrong slice shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _decoder(model: XVLM) -> TextDecoder:
    decoder = TextDecoder.from_fusion_layers(model.bert, model.mlm).eval()
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return decoder


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # a tied table counts once


def _decoder_inputs(hidden: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 2000, (3, 6), generator=gen)
    atts = torch.ones(3, 6, dtype=torch.long)
    atts[1, 4:] = 0
    states = torch.randn(3, 5, hidden, generator=gen)  # (B, Lq, H): question states
    state_atts = torch.ones(3, 5, dtype=torch.long)
    state_atts[2, 3:] = 0
    return ids, atts, states, state_atts


def _random_masks(pruner: ModalPruner, seed: int, soft: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, mask in pruner.masks.items():
        shape = mask.log_alpha.shape
        binary = (torch.rand(shape, generator=gen) > 0.4).float()
        masks[name] = binary * torch.rand(shape, generator=gen).clamp_min(0.2) if soft else binary
    return masks


# ---------------------------------------------------------------------------------------------- sites and costs
def test_decoder_unit_costs_are_the_parameters_shrinking_removes() -> None:
    model = _model()
    decoder = _decoder(model)
    pruner = ModalPruner(model, PruneConfig(layers=True), decoder=decoder)
    pruner.detach()
    sites = {s.name: s for s in pruner.sites}
    assert {*DECODER_GROUPS, "decoder_attn_layer", "decoder_cross_layer", "decoder_ffn_layer"} <= set(sites)
    assert [len(sites[g].modules) for g in DECODER_GROUPS] == [2, 2, 2]  # rows = decoder layers
    # Cross-attention keys/values read H-wide question states in the decoder, Dv-wide vision tokens in fusion.
    assert sites["decoder_cross_head"].unit_cost[0] > sites["fusion_cross_head"].unit_cost[0]

    zeros = {g: torch.zeros_like(pruner.masks[g].log_alpha) for g in DECODER_GROUPS}
    removed = _params(decoder) - _params(shrink_decoder(decoder, zeros))
    assert removed == pruner.prunable_size("decoder")
    # One unit of each group costs exactly what removing it removes.
    for group in DECODER_GROUPS:
        one = {group: torch.ones_like(pruner.masks[group].log_alpha)}
        one[group][1, 0] = 0.0
        assert _params(decoder) - _params(shrink_decoder(decoder, one)) == sites[group].unit_cost[1], group
    # Everything at once: the XVLM's groups through shrink, the decoder's through shrink_decoder.
    everything = {name: torch.zeros_like(m.log_alpha) for name, m in pruner.masks.items()}
    total = _params(model) - _params(shrink(model, everything)) + removed
    assert total == pruner.prunable_size()


def test_without_a_decoder_nothing_changes() -> None:
    model = _model()
    assert "decoder" in MODALITIES and "decoder" in PruneConfig().modalities
    plain = ModalPruner(model, PruneConfig(layers=True))
    old = ModalPruner(model, PruneConfig(layers=True, modalities=("vision", "text", "fusion")))
    plain.detach()
    old.detach()
    assert [s.name for s in plain.sites] == [s.name for s in old.sites]
    assert not any(s.modality == "decoder" for s in plain.sites)
    assert plain.prunable_size() == old.prunable_size()
    with pytest.raises(ValueError, match="decoder"):
        ModalPruner(model, PruneConfig(per_modality={"decoder": 0.3}))
    # shrink() of the XVLM leaves the decoder's groups alone; masks_applied without a decoder ignores them.
    decoder = _decoder(model)
    with_decoder = ModalPruner(model, PruneConfig(), decoder=decoder)
    with_decoder.detach()
    masks = {g: torch.zeros_like(with_decoder.masks[g].log_alpha) for g in DECODER_GROUPS}
    same = shrink(model, masks)
    assert same.config == dataclasses.replace(model.config, text_init=None) and _params(same) == _params(model)
    ids, atts, states, state_atts = _decoder_inputs(model.config.text.hidden_size)
    with torch.no_grad():
        before = decoder(ids, atts, states, state_atts)
        with masks_applied(model, masks):
            unmasked = decoder(ids, atts, states, state_atts)
        with masks_applied(model, masks, decoder=decoder):
            masked = decoder(ids, atts, states, state_atts)
    assert torch.equal(before, unmasked) and not torch.allclose(before, masked)


# ---------------------------------------------------------------------------------------------- removal
@pytest.mark.parametrize("soft,layers", [(False, False), (True, True)])
def test_shrunk_decoder_equals_the_masked_decoder(soft: bool, layers: bool) -> None:
    model = _model()
    decoder = _decoder(model)
    pruner = ModalPruner(model, PruneConfig(layers=layers), decoder=decoder)
    pruner.detach()
    masks = {k: v for k, v in _random_masks(pruner, seed=3, soft=soft).items() if k.startswith("decoder_")}
    masks["decoder_head"][0] = 0.0  # a layer with no self-attention head left
    masks["decoder_cross_head"][1] = 0.0  # ... with no cross-attention head
    masks["decoder_ffn"][1] = 0.0  # ... with no FFN neuron
    inputs = _decoder_inputs(model.config.text.hidden_size)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    with torch.no_grad():
        unmasked = decoder(*inputs)
        with masks_applied(model, masks, decoder=decoder):
            masked = decoder(*inputs)
        small = shrink_decoder(decoder, masks)
        shrunk = small(*inputs)
    torch.testing.assert_close(shrunk, masked, atol=1e-5, rtol=0)
    assert float((masked - unmasked).abs().max()) > 1e-3  # the masks did something
    assert all(torch.equal(v, before[k]) for k, v in decoder.state_dict().items())  # the input is untouched
    # Units are really gone, layer by layer, and the shapes are in the config.
    layer = masks.get("decoder_attn_layer", torch.ones(2, 1))
    heads = [int((masks["decoder_head"][i] * layer[i] != 0).sum()) for i in range(2)]
    assert small.config.layer_heads == heads and heads[0] == 0
    assert [lay.attention.self.num_heads for lay in small.bert.encoder.layer] == heads
    assert small.config.layer_cross_heads[1] == 0 and small.config.layer_intermediate[1] == 0
    assert small.layer_shapes()["layer_heads"] == heads
    # The LM head stays tied to the new decoder's own word embeddings.
    table = small.bert.embeddings.word_embeddings.weight
    assert small.cls.predictions.decoder.weight is table and table is not decoder.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------- the constraint
def test_the_decoder_joins_the_expected_size_and_the_lagrangian() -> None:
    model = _model()
    decoder = _decoder(model)
    pruner = ModalPruner(model, PruneConfig(target_sparsity=0.3, warmup_steps=0), decoder=decoder)
    try:
        modalities = {s.modality for s in pruner.sites}
        assert modalities == {"vision", "text", "fusion", "decoder"}
        assert pruner.prunable_size() == sum(pruner.prunable_size(m) for m in modalities)
        with torch.no_grad():  # the decoder's groups mostly pruned, the rest kept
            for site in pruner.sites:
                pruner.masks[site.name].log_alpha.fill_(-4.0 if site.modality == "decoder" else 4.0)
        # ŝ = 1 − Σ cost·q / prunable, written out.
        kept = sum(
            float(
                keep_probability(pruner.masks[s.name].log_alpha.detach()).sum(-1)
                @ torch.tensor(s.unit_cost, dtype=torch.float)
            )
            for s in pruner.sites
        )
        assert float(pruner.expected_sparsity().detach()) == pytest.approx(1 - kept / pruner.prunable_size(), rel=1e-5)
        sparsity = {m: float(pruner.expected_sparsity(m).detach()) for m in modalities}
        assert sparsity["decoder"] > 0.9 > 0.05 > sparsity["text"]
        achieved = pruner.achieved_sparsity()
        assert achieved["decoder"] > 0.9 > 0.05 > achieved["text"] and 0.0 < achieved["all"] < 1.0
        assert set(pruner.describe()) >= set(DECODER_GROUPS)
        # The Lagrangian's gradient reaches the decoder's log α; so does the task loss through the hooks.
        with torch.no_grad():
            pruner.lambdas.fill_(1.0)  # at λ = 0 (init) the Lagrangian has no log α gradient yet
        loss, metrics = pruner.lagrangian()
        loss.backward()
        assert "prune/all_expected_sparsity" in metrics
        assert pruner.masks["decoder_ffn"].log_alpha.grad.abs().sum() > 0
        pruner.zero_grad()
        with torch.no_grad():
            pruner.masks["decoder_ffn"].log_alpha.fill_(0.0)
        pruner.train()
        pruner.refresh()
        decoder(*_decoder_inputs(model.config.text.hidden_size)).square().mean().backward()
        assert pruner.masks["decoder_ffn"].log_alpha.grad.abs().sum() > 0
        assert pruner.masks["decoder_cross_head"].log_alpha.grad is not None
    finally:
        pruner.detach()
    per = ModalPruner(model, PruneConfig(per_modality={"decoder": 0.4, "text": 0.2}), decoder=decoder)
    per.detach()
    _, metrics = per.lagrangian()
    assert per.constraints == ["decoder", "text"] and metrics["prune/decoder_target"] == pytest.approx(0.0)
    per.on_step(1000)
    assert per.target("decoder") == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------- VQA reload
@torch.no_grad()
def _vqa_outputs(module: VQAModule, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Question states, decoder logits over the first answers and the ranked answers' scores."""
    states = module.question_states(batch["image"], batch["question_ids"], batch["question_atts"])
    atts = batch["question_atts"]
    ids, answer_atts = module.answer_ids[:2].repeat(2, 1), module.answer_atts[:2].repeat(2, 1)  # (4, La)
    logits = module.text_decoder(ids, answer_atts, states.repeat_interleave(2, 0), atts.repeat_interleave(2, 0))
    ranked, scores = module.rank_answers(states, atts, k=4)
    return [states, logits, ranked.float(), scores]


def _vqa_batch(task, module: VQAModule, tokenizer, world: Path) -> dict[str, torch.Tensor]:
    data = task._dataset(module, tokenizer, world, "test", False)
    return data.collate([data.sample(i % len(data), 0) for i in range(2)])


@pytest.mark.parametrize("prune_decoder", [True, False])
def test_vqa_run_with_a_shrunk_decoder_and_backbone_reloads(
    image_world: Path, tmp_path: Path, prune_decoder: bool
) -> None:
    model = _model()
    tokenizer = get_tokenizer(model.config)
    task = get_task("vqa")
    module = task.build(model, image_world, tokenizer).eval()
    dense_decoder = module.text_decoder
    pruner = ModalPruner(model, PruneConfig(), decoder=dense_decoder)
    pruner.detach()
    backbone = {k: v for k, v in _random_masks(pruner, seed=5).items() if not k.startswith("decoder_")}
    decoder_masks = {k: v for k, v in _random_masks(pruner, seed=6).items() if k.startswith("decoder_")}
    masks = {**backbone, **(decoder_masks if prune_decoder else {})}
    batch = _vqa_batch(task, module, tokenizer, image_world)
    with masks_applied(model, masks, decoder=dense_decoder):
        reference = _vqa_outputs(module, batch)

    # The lead's surgery: backbone and decoder shrunk with their own masks.
    module.model = shrink(model, masks)
    if prune_decoder:
        module.replace_decoder(shrink_decoder(dense_decoder, masks))
    shrunk = _vqa_outputs(module, batch)
    for a, b in zip(reference, shrunk):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # The decoder no longer has the shapes of the fusion layers it would be rebuilt from.
    fusion_shapes = TextDecoder.from_fusion_layers(module.model.bert, module.model.mlm).layer_shapes()
    assert module.text_decoder.layer_shapes() != fusion_shapes

    run = tmp_path / "run"
    save_finetuned(task, module, tokenizer, run, image_world)
    saved = json.loads((run / "task.json").read_text())["options"]["decoder_shapes"]
    assert saved == module.text_decoder.layer_shapes()
    _, loaded, _ = load_finetuned(run, image_world)
    assert loaded.text_decoder.layer_shapes() == saved
    for a, b in zip(shrunk, _vqa_outputs(loaded, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_ordinary_vqa_runs_keep_their_task_json(image_world: Path, tmp_path: Path) -> None:
    model = _model()
    tokenizer = get_tokenizer(model.config)
    task = get_task("vqa")
    module = task.build(model, image_world, tokenizer).eval()
    batch = _vqa_batch(task, module, tokenizer, image_world)
    dense_shapes = module.text_decoder.layer_shapes()
    run = tmp_path / "run"
    save_finetuned(task, module, tokenizer, run, image_world)
    meta = json.loads((run / "task.json").read_text())
    assert meta["options"]["decoder_shapes"] is None  # the fusion layers' shapes: nothing to record
    del meta["options"]["decoder_shapes"]  # a task.json written before the option existed
    (run / "task.json").write_text(json.dumps(meta))
    _, loaded, _ = load_finetuned(run, image_world)
    for a, b in zip(_vqa_outputs(module, batch), _vqa_outputs(loaded, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="decoder_shapes"):
        VQAModule(model, module.answers, tokenizer, head="classifier", decoder_shapes=dense_shapes)
    with pytest.raises(ValueError, match="must be"):
        module.replace_decoder(TextDecoder.from_fusion_layers(model.bert, model.mlm, num_layers=1))
