"""Physical removal: the shrunk model equals the masked one and round-trips through from_pretrained."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from grainvl.compress.prune import ModalPruner, PruneConfig, masks_applied
from grainvl.compress.shrink import shrink
from grainvl.models.factory import get_model_config
from grainvl.models.xvlm import XVLM


def _model(kind: str = "beit2") -> XVLM:
    torch.manual_seed(0)
    cfg = get_model_config("xvlm-tiny")
    # 3 vision blocks, 2 text + 2 fusion layers: enough rows for per-layer differences.
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, kind=kind, depth=3, init_values=0.1 if kind == "beit2" else 0.0),
        text=dataclasses.replace(cfg.text, num_layers=4, fusion_start=2),
    )
    model = XVLM(cfg).eval()
    with torch.no_grad():  # non-trivial biases / layer scales so that removing a wrong slice shows
        for name, p in model.named_parameters():
            if name.endswith(("bias", "gamma_1", "gamma_2", "relative_position_bias_table")):
                p.normal_(0, 0.1)
    return model


def _batch(model: XVLM) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    atts = torch.ones(3, 8, dtype=torch.long)
    atts[1, 5:] = 0
    return {
        "image": torch.randn(3, 3, 64, 64, generator=gen),
        "text_ids": torch.randint(1, 1000, (3, 8), generator=gen),
        "text_atts": atts,
    }


def _features(model: XVLM, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        f = model.extract_features(batch)
        return [f.image_embeds, f.text_embeds, f.fused, model.itm_logits(f.fused)]


def _random_masks(pruner: ModalPruner, soft: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, mask in pruner.masks.items():
        shape = mask.log_alpha.shape
        binary = (torch.rand(shape, generator=gen) > 0.4).float()
        masks[name] = binary * torch.rand(shape, generator=gen).clamp_min(0.2) if soft else binary
    masks["vision_head"][0] = 0.0  # a block with no head left
    masks["text_ffn"][1] = 0.0  # a layer with no FFN neuron left
    return masks


@pytest.mark.parametrize("kind", ["beit2", "vit"])
@pytest.mark.parametrize("soft,layers", [(False, False), (True, True)])
def test_shrunk_model_equals_masked_model(kind: str, soft: bool, layers: bool) -> None:
    model = _model(kind)
    pruner = ModalPruner(model, PruneConfig(layers=layers))
    pruner.detach()
    masks = _random_masks(pruner, soft, seed=3)
    batch = _batch(model)
    unmasked = _features(model, batch)
    with masks_applied(model, masks):
        masked = _features(model, batch)
    small = shrink(model, masks)
    shrunk = _features(small, batch)
    for a, b in zip(masked, shrunk):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert max(float((a - b).abs().max()) for a, b in zip(masked, unmasked)) > 1e-3  # the masks did something
    # Heads and neurons are really gone, layer by layer.
    heads = [
        int((masks["vision_head"][i] * masks.get("vision_attn_layer", torch.ones(3, 1))[i] != 0).sum())
        for i in range(3)
    ]
    assert small.config.vision.layer_heads == heads and heads[0] == 0
    assert [b.attn.num_heads for b in small.vision_encoder.blocks] == heads
    assert small.config.text.layer_intermediate[1] == 0
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_shrunk_model_round_trips_through_from_pretrained(tmp_path) -> None:
    model = _model()
    pruner = ModalPruner(model, PruneConfig())
    pruner.detach()
    small = shrink(model, _random_masks(pruner, soft=False, seed=5))
    small.save_pretrained(tmp_path / "small")
    loaded = XVLM.from_pretrained(tmp_path / "small")
    assert loaded.config.text.layer_cross_heads == small.config.text.layer_cross_heads
    batch = _batch(model)
    for a, b in zip(_features(small, batch), _features(loaded, batch)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_missing_groups_keep_everything_and_bad_shapes_are_refused() -> None:
    model = _model()
    same = shrink(model, {})
    for a, b in zip(_features(model, _batch(model)), _features(same, _batch(model))):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="vision_head"):
        shrink(model, {"vision_head": torch.ones(3, 7)})


def test_shrink_text_tower_matches_the_model_level_shrink() -> None:
    """The public text-tower shrink gives exactly the BERT stack that :func:`shrink` builds for the whole model."""
    from grainvl.compress.shrink import shrink_text_tower

    model = _model()
    pruner = ModalPruner(model, PruneConfig(target_sparsity=0.3))
    masks = {k: v for k, v in _random_masks(pruner, soft=True, seed=3).items() if k.startswith(("text_", "fusion_"))}
    pruner.detach()
    tower = shrink_text_tower(model.bert, masks)
    whole = shrink(model, masks)
    assert tower.config == whole.bert.config
    assert tower.config.layer_intermediate[1] == 0  # the emptied FFN is really gone
    reference = whole.bert.state_dict()
    state = tower.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    assert sum(p.numel() for p in tower.parameters()) < sum(p.numel() for p in model.bert.parameters())
