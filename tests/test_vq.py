"""The DaVinci image tokenizer: quantiser math, round trips, bad sizes, save/load, the taming key map, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grainvl.cli import main
from grainvl.models.vq import (
    VectorQuantizer,
    VQConfig,
    VQTokenizer,
    load_taming_checkpoint,
    load_taming_state_dict,
    nearest_codes,
    read_taming_config,
    taming_key,
)
from grainvl.tasks.text_classification import fit_in_memory
from grainvl.tasks.vq import VQTrainTask, code_statistics, edge_loss, psnr

TINY = VQConfig(
    codebook_size=32,
    embed_dim=8,
    z_channels=8,
    channels=8,
    channel_mult=(1, 1, 2, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=32,
    norm_groups=4,
)


def tiny_tokenizer(**changes: object) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(VQConfig(**{**TINY.__dict__, **changes})).eval()


# ---------------------------------------------------------------------------------------------- quantiser
def test_nearest_code_is_the_closest_in_l2() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    z = torch.tensor([[0.9, 0.2], [0.1, 1.6], [0.2, 1.4], [-5.0, 0.0]])
    assert nearest_codes(z, codebook).tolist() == [1, 2, 0, 0]


def quantiser(**changes: object) -> VectorQuantizer:
    values = {"codebook_size": 2, "embed_dim": 1, "channels": 8, "norm_groups": 4, **changes}
    return VectorQuantizer(VQConfig(**values))  # type: ignore[arg-type]


def test_straight_through_gradient_and_losses() -> None:
    vq = quantiser(quantizer="straight_through", beta=0.25)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    z = torch.tensor([1.0, 2.0, 9.0]).reshape(1, 1, 1, 3).requires_grad_(True)  # (B, D, h, w)
    quantised, codes, losses = vq(z)
    assert codes.tolist() == [[[0, 0, 1]]]
    assert quantised.detach().flatten().tolist() == [0.0, 0.0, 10.0]
    # commitment: beta * mean((z - e)^2) = 0.25 * (1 + 4 + 1) / 3; codebook loss: the same squares, unscaled
    assert losses["commit_loss"].item() == pytest.approx(0.25 * 2.0)
    assert losses["codebook_loss"].item() == pytest.approx(2.0)
    (quantised * torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)).sum().backward()
    assert z.grad.flatten().tolist() == [1.0, 2.0, 3.0]  # identity through the quantiser
    losses["codebook_loss"].backward()
    # d/de_0 of mean over 3 of (e - z)^2 for z in {1, 2} at e_0 = 0: 2 * ((0-1) + (0-2)) / 3 = -2
    assert vq.codebook.grad.flatten().tolist() == pytest.approx([-2.0, 2 * (10 - 9) / 3])


def test_ema_update_by_hand() -> None:
    vq = quantiser(ema_decay=0.5, ema_eps=0.0, restart_threshold=0.0).train()
    vq.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    vq.embed_sum.copy_(torch.tensor([[0.0], [10.0]]))
    vq.cluster_size.fill_(1.0)
    quantised, _, _ = vq(torch.tensor([1.0, 2.0, 9.0]).reshape(1, 1, 1, 3))
    # this batch used the old codebook; counts [2, 1], sums [3, 9]
    assert quantised.flatten().tolist() == [0.0, 0.0, 10.0]
    assert vq.cluster_size.tolist() == pytest.approx([0.5 + 1.0, 0.5 + 0.5])  # 0.5 * 1 + 0.5 * n
    assert vq.embed_sum.flatten().tolist() == pytest.approx([0.5 * 0 + 0.5 * 3, 0.5 * 10 + 0.5 * 9])
    assert vq.codebook.flatten().tolist() == pytest.approx([1.5 / 1.5, 9.5 / 1.0])
    vq.eval()
    vq(torch.tensor([100.0]).reshape(1, 1, 1, 1))  # eval mode: no update
    assert vq.codebook.flatten().tolist() == pytest.approx([1.0, 9.5])


def test_dead_code_is_restarted_on_a_batch_vector() -> None:
    vq = quantiser(codebook_size=3, ema_decay=0.5, restart_threshold=0.5).train()
    vq.codebook.copy_(torch.tensor([[0.0], [10.0], [1000.0]]))
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.copy_(torch.tensor([1.0, 1.0, 0.2]))  # code 2: 0.5 * 0.2 = 0.1 after this step -> dead
    batch = torch.tensor([1.0, 2.0, 9.0])
    vq(batch.reshape(1, 1, 1, 3))
    assert vq.codebook[2].item() in batch.tolist()
    assert vq.cluster_size[2].item() == 0.5 and vq.embed_sum[2].item() == 0.5 * vq.codebook[2].item()
    assert vq.cluster_size[:2].min().item() > 0.5  # live codes untouched


def test_cosine_lookup_by_hand() -> None:
    # normalize_codes: the nearest code is the one of largest cosine, whatever the lengths, and the quantised
    # vector is that code scaled to unit length (ViT-VQGAN's l2-normalised lookup).
    vq = quantiser(codebook_size=3, embed_dim=2, quantizer="straight_through", normalize_codes=True, beta=1.0)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.1], [-3.0, -4.0]]))
    # z = (0.1, 1): code 1 both ways; (6, 1): code 0 both ways (L2: 17 vs 36.8); (1, 0.9): code 1 in plain L2
    # (distance^2 1.64 vs 81.8) but code 0 in cosine (0.74 vs 0.67).
    z = torch.tensor([[0.1, 1.0], [6.0, 1.0], [1.0, 0.9]]).t().reshape(1, 2, 1, 3).requires_grad_(True)
    quantised, codes, losses = vq(z)
    assert codes.tolist() == [[[1, 0, 0]]]
    assert nearest_codes(z.detach().reshape(2, 3).t(), vq.codebook.detach()).tolist() == [1, 0, 1]  # plain L2
    assert quantised.detach().reshape(2, 3).t().flatten().tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    unit = F.normalize(z.detach().reshape(2, 3).t(), dim=1)  # (3, 2)
    chosen = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert losses["commit_loss"].item() == pytest.approx(float((unit - chosen).pow(2).mean()))
    assert vq.embed(torch.tensor([2])).flatten().tolist() == pytest.approx([-0.6, -0.8])  # decode: the unit code


def test_cosine_ema_is_spherical_k_means() -> None:
    # The EMA codebook averages the unit-length outputs; the lookup and decode normalise that mean.
    vq = quantiser(embed_dim=2, ema_decay=0.5, ema_eps=0.0, restart_threshold=0.0, normalize_codes=True).train()
    vq.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    vq.embed_sum.copy_(vq.codebook)
    vq.cluster_size.fill_(1.0)
    z = torch.tensor([[3.0, 0.0], [0.0, 2.0], [2.0, 1.5]])  # units (1, 0), (0, 1), (0.8, 0.6): codes 0, 1, 0
    vq(z.t().reshape(1, 2, 1, 3))
    # sums of unit vectors: code 0 gets (1, 0) + (0.8, 0.6); EMA 0.5 * old + 0.5 * new
    assert vq.embed_sum.flatten().tolist() == pytest.approx([0.5 + 0.5 * 1.8, 0.5 * 0.6, 0.0, 0.5 + 0.5])
    assert vq.cluster_size.tolist() == pytest.approx([1.5, 1.0])
    assert vq.codebook[0].tolist() == pytest.approx([1.4 / 1.5, 0.3 / 1.5])  # the mean, shorter than 1
    norm = (1.4**2 + 0.3**2) ** 0.5
    assert vq.embed(torch.tensor([0])).flatten().tolist() == pytest.approx([1.4 / norm, 0.3 / norm])


def test_cosine_tokenizer_decodes_its_codes_as_in_training() -> None:
    tok = tiny_tokenizer(normalize_codes=True)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reconstruction, codes, _ = tok(images)
        assert torch.allclose(tok.decode(codes), reconstruction.clamp(0, 1), atol=1e-5)
        assert tok.quantise(images)[0].pow(2).sum(1).sqrt().sub(1).abs().max() < 1e-5  # unit latents


# ---------------------------------------------------------------------------------------------- tokenizer
def test_encode_decode_shapes_and_ranges() -> None:
    tok = tiny_tokenizer()
    images = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        codes = tok.encode(images)
        out = tok.decode(codes)
    assert codes.shape == (2, 2, 3) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size == 32
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert tok.stride == 16


@pytest.mark.parametrize("shape", [(1, 3, 30, 48), (1, 3, 32, 40)])
def test_bad_image_size_is_one_line(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"is not a multiple of the tokenizer stride 16") as info:
        tiny_tokenizer().encode(torch.rand(*shape))
    assert f"{shape[2]}x{shape[3]}" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        tiny_tokenizer().decode(torch.full((1, 2, 2), 32))


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = tiny_tokenizer(quantizer="straight_through")
    tok.save_pretrained(tmp_path / "run" / "tokenizer")
    loaded = VQTokenizer.from_pretrained(tmp_path / "run")  # a run folder resolves to its tokenizer/
    assert loaded.config == tok.config and not loaded.training
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), tok.encode(images))
        assert torch.equal(loaded.decode(tok.encode(images)), tok.decode(tok.encode(images)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"family": "vl"}))
    with pytest.raises(ValueError, match="not a VQ tokenizer config"):
        VQTokenizer.from_pretrained(tmp_path / "other")


# ---------------------------------------------------------------------------------------------- taming
# A tiny taming ddconfig: 3 levels (stride 4), attention at resolution 8 (the middle level), GroupNorm(32).
DDCONFIG = {
    "double_z": False,
    "z_channels": 16,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}


def taming_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the official taming VQModel keys for DDCONFIG (written from taming's constructors)."""
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=generator) / (cin * k * k) ** 0.5
        state[f"{name}.bias"] = torch.randn(cout, generator=generator) * 0.1

    def norm(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=generator)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=generator)

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.mid.block_1", c, c), attn(f"{prefix}.mid.attn_1", c), resnet(f"{prefix}.mid.block_2", c, c)

    ch, mult = 32, [1, 1, 2]
    conv("encoder.conv_in", 3, ch, 3)
    width, res = ch, 16
    for i, m in enumerate(mult):
        resnet(f"encoder.down.{i}.block.0", width, ch * m)
        width = ch * m
        if res == 8:
            attn(f"encoder.down.{i}.attn.0", width)
        if i < 2:
            conv(f"encoder.down.{i}.downsample.conv", width, width, 3)
            res //= 2
    mid("encoder", width)
    norm("encoder.norm_out", width), conv("encoder.conv_out", width, 16, 3)
    conv("quant_conv", 16, 8, 1), conv("post_quant_conv", 8, 16, 1)
    state["quantize.embedding.weight"] = torch.randn(24, 8, generator=generator)
    conv("decoder.conv_in", 16, width, 3)
    mid("decoder", width)
    for i in reversed(range(3)):
        for j in range(2):
            resnet(f"decoder.up.{i}.block.{j}", width, ch * mult[i])
            width = ch * mult[i]
            if res == 8:
                attn(f"decoder.up.{i}.attn.{j}", width)
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", width, width, 3)
            res *= 2
    norm("decoder.norm_out", width), conv("decoder.conv_out", width, 3, 3)
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4, generator=generator)  # dropped
    return state


def reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """taming's VQModel encode -> codes -> decode, written with functional ops on the official keys."""

    def conv(name: str, h: torch.Tensor, stride: int = 1, padding: int = 1) -> torch.Tensor:
        return F.conv2d(h, s[f"{name}.weight"], s[f"{name}.bias"], stride=stride, padding=padding)

    def norm(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.group_norm(h, 32, s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)

    def resnet(name: str, h: torch.Tensor) -> torch.Tensor:
        y = conv(f"{name}.conv1", F.silu(norm(f"{name}.norm1", h)))
        y = conv(f"{name}.conv2", F.silu(norm(f"{name}.norm2", y)))
        return (conv(f"{name}.nin_shortcut", h, padding=0) if f"{name}.nin_shortcut.weight" in s else h) + y

    def attn(name: str, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        n = norm(f"{name}.norm", h)
        q, k, v = (conv(f"{name}.{p}", n, padding=0).reshape(b, c, hh * ww) for p in "qkv")
        weights = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c**-0.5, dim=2)  # (b, hw_q, hw_k)
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return h + conv(f"{name}.proj_out", out, padding=0)

    def mid(prefix: str, h: torch.Tensor) -> torch.Tensor:
        return resnet(f"{prefix}.mid.block_2", attn(f"{prefix}.mid.attn_1", resnet(f"{prefix}.mid.block_1", h)))

    h = conv("encoder.conv_in", 2 * x - 1)
    for i in range(3):
        h = resnet(f"encoder.down.{i}.block.0", h)
        if f"encoder.down.{i}.attn.0.q.weight" in s:
            h = attn(f"encoder.down.{i}.attn.0", h)
        if i < 2:
            h = conv(f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = conv("encoder.conv_out", F.silu(norm("encoder.norm_out", mid("encoder", h))))
    z = conv("quant_conv", h, padding=0).permute(0, 2, 3, 1)  # (B, h, w, D)
    codebook = s["quantize.embedding.weight"]
    codes = torch.cdist(z.reshape(-1, z.shape[-1]), codebook).argmin(1).reshape(z.shape[:3])
    h = conv("post_quant_conv", codebook[codes].permute(0, 3, 1, 2), padding=0)
    h = mid("decoder", conv("decoder.conv_in", h))
    for i in reversed(range(3)):
        for j in range(2):
            h = resnet(f"decoder.up.{i}.block.{j}", h)
            if f"decoder.up.{i}.attn.{j}.q.weight" in s:
                h = attn(f"decoder.up.{i}.attn.{j}", h)
        if i > 0:
            h = conv(f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    h = conv("decoder.conv_out", F.silu(norm("decoder.norm_out", h)))
    return codes, ((h + 1) / 2).clamp(0, 1)


def test_taming_key_map_names() -> None:
    assert taming_key("encoder.down.3.block.1.norm1.weight") == "encoder.stages.3.blocks.1.norm1.weight"
    assert taming_key("decoder.up.0.upsample.conv.bias") == "decoder.stages.0.resample.conv.bias"
    assert taming_key("decoder.mid.attn_1.proj_out.weight") == "decoder.mid.attn.proj_out.weight"
    assert taming_key("quantize.embedding.weight") == "quantizer.codebook"
    assert taming_key("post_quant_conv.weight") == "post_quant_conv.weight"
    assert taming_key("loss.perceptual_loss.net.slice1.0.weight") is None


def test_taming_checkpoint_matches_a_reference_forward(tmp_path: Path) -> None:
    state = taming_state(torch.Generator().manual_seed(0))
    yaml_text = json.dumps({"model": {"params": {"embed_dim": 8, "n_embed": 24, "ddconfig": DDCONFIG}}})
    (tmp_path / "vqgan.yaml").write_text(yaml_text)  # JSON is YAML
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")
    config = read_taming_config(tmp_path / "vqgan.yaml")
    assert (config.stride, config.codebook_size, config.norm_groups) == (4, 24, 32)
    tok = load_taming_checkpoint(tmp_path / "last.ckpt", tmp_path / "vqgan.yaml")
    assert len(tok.encoder.stages[1].attns) == 1 and len(tok.encoder.stages[0].attns) == 0  # attention at 8 px
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    ref_codes, ref_images = reference_forward(state, images)
    with torch.no_grad():
        codes = tok.encode(images)
        decoded = tok.decode(codes)
    assert codes.shape == (2, 4, 6) and torch.equal(codes, ref_codes)
    assert torch.allclose(decoded, ref_images, atol=1e-5)
    assert len(codes.unique()) > 1  # a real comparison, not one code everywhere


def test_taming_state_that_does_not_fit_is_refused() -> None:
    state = taming_state(torch.Generator().manual_seed(0))
    del state["encoder.conv_in.bias"]
    state["quantize.used"] = torch.zeros(3)
    config = read_config_from(DDCONFIG)
    with pytest.raises(ValueError, match=r"missing \['encoder.conv_in.bias'\], unexpected \['quantize.used'\]"):
        load_taming_state_dict(state, config)


def read_config_from(ddconfig: dict) -> VQConfig:
    from grainvl.models.vq import config_from_taming

    return config_from_taming(ddconfig, n_embed=24, embed_dim=8)


# ---------------------------------------------------------------------------------------------- training
def shapes_batch() -> torch.Tensor:
    """Four 32 px images of flat coloured squares on grey: what a tokenizer learns within a few steps."""
    images = torch.full((4, 3, 32, 32), 0.5)
    for i, (r, g, b) in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]):
        images[i, :, 4 + 2 * i : 20 + 2 * i, 8:24] = torch.tensor([r, g, b], dtype=torch.float)[:, None, None]
    return images


@pytest.mark.parametrize("quantizer", ["ema", "straight_through"])
def test_a_short_training_run_reduces_the_loss(quantizer: str) -> None:
    tok = tiny_tokenizer(quantizer=quantizer)
    task = VQTrainTask(tok, "l1")
    images = shapes_batch()
    before = psnr(tok(images)[0], images).mean()
    losses = fit_in_memory(
        task, lambda step: ({"images": images}, None), lambda m, x, _y: sum(m(x)[0].values()), 40, 3e-3, 0.0, 0.0
    )
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        assert psnr(tok.decode(tok.encode(images)), images).mean() > before + 1


def test_quantiser_warm_up_trains_an_autoencoder_and_leaves_the_codebook() -> None:
    """``quantize=False`` decodes the continuous latents: no codes, no losses, no EMA step, so the first quantised
    step afterwards still finds every count at 0 and places all codes on the encoder's outputs."""
    tok = tiny_tokenizer().train()
    images = torch.rand(2, 3, 32, 32)
    codebook = tok.quantizer.codebook.clone()
    reconstruction, codes, losses = tok(images, quantize=False)
    assert codes is None and losses == {}
    expected = tok.decode_latents(tok.quant_conv(tok.encoder(images * 2 - 1)))
    assert torch.allclose(reconstruction, expected)
    assert torch.equal(tok.quantizer.codebook, codebook) and float(tok.quantizer.cluster_size.sum()) == 0.0
    task = VQTrainTask(tok, "l2")
    warm_losses, warm_metrics = task({"images": images, "quantize": False})
    assert set(warm_losses) == {"recon_loss"} and warm_metrics["code_usage"] == 0.0
    quantised_losses, quantised_metrics = task({"images": images})  # default: quantised
    assert set(quantised_losses) == {"recon_loss", "commit_loss"} and quantised_metrics["code_usage"] > 0
    # The first quantised step restarted every code below the threshold, i.e. all but the (at most 8 // 3 = 2) codes
    # that won 3 or more of the batch's B * h * w = 8 encoder outputs, onto one of those outputs.
    flat = tok.quant_conv(tok.encoder(images * 2 - 1)).permute(0, 2, 3, 1).reshape(-1, 8).detach()  # (8, D)
    restarted = tok.quantizer.cluster_size == tok.config.restart_threshold  # (K,)
    assert int(restarted.sum()) >= tok.codebook_size - 2
    distances = torch.cdist(tok.quantizer.codebook[restarted], flat).min(dim=1).values
    assert float(distances.max()) < 1e-3


def test_edge_loss_by_hand() -> None:
    target = torch.zeros(1, 3, 2, 3)
    target[..., 2] = 1.0  # a vertical edge between columns 1 and 2
    flat = torch.zeros(1, 3, 2, 3)
    # x differences: target [0, 1] per row, flat [0, 0] -> mean |.| = 0.5; y differences all 0 -> 0; mean 0.25
    assert edge_loss(flat, target).item() == pytest.approx(0.25)
    assert edge_loss(target + 0.3, target).item() == pytest.approx(0.0, abs=1e-6)  # a colour shift has no edge error
    task = VQTrainTask(tiny_tokenizer(), "l1", edge_weight=2.0)
    losses, _ = task({"images": torch.rand(2, 3, 32, 32)})
    assert set(losses) == {"recon_loss", "commit_loss", "edge_loss"}
    with pytest.raises(ValueError, match="edge_weight"):
        VQTrainTask(tiny_tokenizer(), "l1", edge_weight=-1.0)


def test_psnr_and_code_statistics() -> None:
    target = torch.zeros(2, 3, 4, 4)
    assert psnr(target + 0.1, target).tolist() == pytest.approx([20.0, 20.0])
    stats = code_statistics(torch.tensor([[0, 0], [1, 1]]), codebook_size=8)
    assert stats["code_usage"] == 2 / 8 and stats["code_perplexity"] == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------- command
def test_command_end_to_end(image_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    argv = ["davinci", "tokenizer", "--world", str(image_world), "--out", str(out), "--steps", "3", "--crop", "32"]
    options = ["--batch-size", "4", "--resolution", "64", "--set", "train.log_every=1", "quantizer_warmup=0.5"]
    assert main([*argv, *options, "train.progress=false", "train.track_energy=false"]) == 0
    printed = capsys.readouterr().out
    assert "id: PSNR" in printed and "ood: PSNR" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["split"], r["metric"]) for r in rows} >= {
        ("id", "psnr"),
        ("ood", "psnr"),
        ("id", "code_usage"),
        ("ood", "code_usage"),
    }
    with Image.open(out / "reconstructions.png") as grid:  # 4 rows (ID/OOD originals, reconstructions) of 64 px
        assert grid.size[1] == 4 * 64 + 5 * 2
    tok = VQTokenizer.from_pretrained(out)
    assert tok.encode(torch.rand(1, 3, 64, 64)).shape == (1, 4, 4)
    # quantizer_warmup 0.5 of 3 steps: round(1.5) = 2 unquantised steps (no codes), then the quantised one
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    usage = [row["code_usage"] for row in rows if "code_usage" in row]
    assert usage[:2] == [0.0, 0.0] and usage[2] > 0


@pytest.fixture(scope="module")
def world_72(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 images at 72 px: a side that is not a multiple of the stride."""
    from grainvl.data.world.generate import WorldConfig, generate_world

    world = tmp_path_factory.mktemp("w72") / "w"
    generate_world(WorldConfig(images=8, videos=0, resolution=72, text_scenes=0, dialogues=0), world)
    return world


def test_command_refuses_images_off_the_stride_at_native_size(
    world_72: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["davinci", "tokenizer", "--world", str(world_72), "--out", str(tmp_path / "run"), "--steps", "1"]
    assert main([*argv, "--resolution", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image size 72x72 (HxW) is not a multiple of the tokenizer stride 16" in err[0]


def test_images_are_resized_to_the_training_resolution(world_72: Path) -> None:
    from grainvl.recipes.davinci_tokenizer import load_split_images

    images = load_split_images(world_72, "train", stride=16, resolution=32)  # (N, 3, 32, 32) uint8
    first = sorted((world_72 / "images" / "train").glob("*.jpg"))[0]
    with Image.open(first) as image:
        assert image.size == (72, 72)
        expected = torch.from_numpy(np.array(image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)))
    assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images[0], expected.permute(2, 0, 1))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data.resolution": 72}, "multiple of the stride 16"),
        ({"data.resolution": 64, "data.crop": 128}, "larger than data.resolution"),
        ({"quantizer_warmup": 1.0}, "quantizer_warmup"),
    ],
)
def test_bad_training_options_are_refused(values: dict, message: str) -> None:
    from grainvl.config import with_values
    from grainvl.recipes.davinci_tokenizer import DavinciTokenizerConfig

    with pytest.raises(ValueError, match=message):
        with_values(DavinciTokenizerConfig(), values)
