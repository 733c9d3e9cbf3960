"""Opt-in pruning of EfficientNet MBConv expansion channels: sites, masking, shrink equivalence, round trip, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.compress.prune import ModalPruner, PruneConfig, mask_sites, masks_applied
from grainvl.compress.shrink import shrink
from grainvl.models.factory import get_model_config
from grainvl.models.xvlm import XVLM, XVLMConfig

# Expanded widths of EfficientNet-Lite0's blocks 1..15 (block 0 has expand ratio 1 and no expand conv).
LITE0_EXPANDED = [96, 144, 144, 240, 240, 480, 480, 480, 672, 672, 672, 1152, 1152, 1152, 1152]


def tiny_config() -> XVLMConfig:
    """xvlm-small's packaged EfficientNet-Lite0 (stride 16, frozen) at 64 px with a tiny text side."""
    cfg = get_model_config("xvlm-small")
    text = dataclasses.replace(
        cfg.text, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, fusion_start=1, encoder_width=32
    )
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, resolution=64, width=32), text=text, text_init=None, embed_dim=16
    )


@pytest.fixture(scope="module")
def model() -> XVLM:
    torch.manual_seed(0)
    return XVLM(tiny_config()).eval()


def _batch(model: XVLM) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(2, 3, 64, 64, generator=gen),
        "text_ids": torch.randint(1, model.config.text.vocab_size, (2, 7), generator=gen),
        "text_atts": torch.ones(2, 7, dtype=torch.long),
    }


def _random_masks(model: XVLM) -> dict[str, torch.Tensor]:
    """Per row: about a third of the channels removed, the rest kept at values in [0.5, 1.5]; one whole row zero."""
    gen = torch.Generator().manual_seed(2)
    masks = {}
    for site in mask_sites(model, cnn_channels=True):
        if not site.name.startswith("vision_channel_"):
            continue
        values = 0.5 + torch.rand(len(site.modules), site.units, generator=gen)
        values[torch.rand(values.shape, generator=gen) < 0.35] = 0.0
        masks[site.name] = values
    masks["vision_channel_480"][1] = 0.0  # a fully pruned block keeps one (zeroed) channel
    return masks


def test_sites_group_blocks_by_expanded_width(model: XVLM) -> None:
    sites = [s for s in mask_sites(model, cnn_channels=True) if s.modality == "vision"]
    assert [s.name for s in sites] == [f"vision_channel_{w}" for w in (96, 144, 240, 480, 672, 1152)]
    assert all(s.kind == "channel" for s in sites)
    assert sum(len(s.modules) for s in sites) == 15
    assert [s.units for s in sites for _ in s.modules] == LITE0_EXPANDED
    blocks = model.vision_encoder.backbone._blocks
    assert [m.in_channels for s in sites for m in s.modules] == LITE0_EXPANDED
    assert sites[0].modules[0] is blocks[1]._project_conv
    # Block 1: 16 in, 3x3 depthwise, 24 out, two BatchNorm affine pairs.
    assert sites[0].unit_cost == [16 + 9 + 24 + 4]
    # Without the flag a CNN tower has no vision sites (the default behaviour is unchanged).
    assert not [s for s in mask_sites(model) if s.modality == "vision"]
    assert {s.modality for s in ModalPruner(model, PruneConfig()).sites} == {"text", "fusion"}


def test_pruner_masks_channels_and_trains_log_alpha_through_the_frozen_backbone(model: XVLM) -> None:
    pruner = ModalPruner(model, PruneConfig(cnn_channels=True, target_sparsity=0.3))
    try:
        assert not any(p is q for p in pruner.parameters() for q in model.parameters())  # tower not registered
        pruner.train()
        model.train()
        pruner.refresh()
        model.vision_encoder(torch.randn(1, 3, 64, 64)).sum().backward()
        grad = pruner.masks["vision_channel_144"].log_alpha.grad
        assert grad is not None and grad.abs().sum() > 0
        pruner.eval()
        size = pruner.prunable_size("vision")
        assert size == sum(c * s.units for s in pruner.sites if s.modality == "vision" for c in s.unit_cost)
        pruner.calibrate_()
        achieved = pruner.achieved_sparsity()
        assert abs(achieved["all"] - 0.3) < 0.02 and 0.0 < achieved["vision"] < 1.0
        kept = pruner.describe()["vision_channel_1152"]
        assert len(kept) == 4 and all(0 <= k <= 1152 for k in kept)
    finally:
        pruner.detach()
        model.eval()
    assert model.vision_encoder.mask_gradients is False


@torch.no_grad()
def test_shrink_equals_the_masked_model_and_round_trips(model: XVLM, tmp_path: Path) -> None:
    masks = _random_masks(model)
    batch = _batch(model)
    plain = model.extract_features(batch).image_embeds
    with masks_applied(model, masks):
        masked = model.extract_features(batch)
    assert (masked.image_embeds - plain).abs().max() > 1e-3  # the masks really act
    small = shrink(model, masks).eval()
    out = small.extract_features(batch)
    torch.testing.assert_close(out.image_embeds, masked.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.fused, masked.fused, atol=1e-5, rtol=0)

    blocks = small.vision_encoder.backbone._blocks
    widths = small.config.vision.layer_mlp
    assert widths[0] == 32 and len(widths) == 16
    rows: dict[int, int] = {}
    expected = [32]
    for width in LITE0_EXPANDED:  # blocks 1..15; rows of a width group in block order
        row = rows.setdefault(width, 0)
        rows[width] += 1
        expected.append(max(1, int((masks[f"vision_channel_{width}"][row] != 0).sum())))
    assert widths == expected
    assert blocks[7]._depthwise_conv.groups == widths[7] == 1  # the fully pruned block (second 480-wide row)
    assert all(b._project_conv.in_channels == w for b, w in zip(blocks, widths))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())

    small.save_pretrained(tmp_path / "small")
    loaded = XVLM.from_pretrained(tmp_path / "small").eval()
    assert loaded.config.vision.layer_mlp == widths
    again = loaded.extract_features(batch)
    torch.testing.assert_close(again.image_embeds, out.image_embeds, atol=1e-6, rtol=0)


def test_narrowed_tower_rejects_bad_widths() -> None:
    cfg = tiny_config()
    with pytest.raises(ValueError, match="layer_mlp"):
        XVLM(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layer_mlp=[32, 96])))
    with pytest.raises(ValueError, match="cannot take"):
        XVLM(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, layer_mlp=[16, *LITE0_EXPANDED])))


@pytest.fixture(scope="module")
def world(image_world: Path) -> Path:
    return image_world  # tests/conftest.py: the shared 24-image world


def test_compress_cli_prunes_cnn_channels_end_to_end(world: Path, tmp_path: Path) -> None:
    arch = tmp_path / "tiny-small.json"
    arch.write_text(json.dumps(tiny_config().to_dict()), encoding="utf-8")
    out = tmp_path / "out"
    args = ["compress", "--teacher", str(arch), "--recipe", "distill,prune,shrink", "--world", str(world)]
    args += ["--out", str(out), "--steps", "2", "--prune-cnn-channels", "--target-sparsity", "0.5"]
    assert main([*args, "--quiet", "--no-energy", "--batch-size", "4"]) == 0
    report = json.loads((out / "prune" / "prune.json").read_text())
    assert any(name.startswith("vision_channel_") for name in report["kept_units"])
    assert 0.0 < report["achieved_sparsity"]["vision"] < 1.0
    small = XVLM.from_pretrained(out / "shrink")
    widths = small.config.vision.layer_mlp
    assert widths is not None and sum(widths[1:]) < sum(LITE0_EXPANDED)
