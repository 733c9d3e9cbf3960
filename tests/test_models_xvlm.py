"""X²-VLM assembly: every preset runs forward/backward; official shapes and parameter counts; save/load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from grainvl.models.factory import create_model, get_model_config, get_tokenizer, list_models
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask


def _count(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@pytest.mark.parametrize("name,expected_m", [("x2vlm-base", 254.8), ("x2vlm-large", 592.9)])
def test_official_parameter_counts_on_meta(name: str, expected_m: float) -> None:
    with torch.device("meta"):
        model = XVLM(get_model_config(name))
    # The official count (xvlm.md §1.1, verified by instantiating the official classes) is of the stage-1
    # checkpoint, which has no video frame position embedding (3 x width), so leave that out.
    count = _count(model) - model.absolute_frame_pos_embed.numel()
    assert round(count / 1e6, 1) == expected_m


def test_official_key_names() -> None:
    with torch.device("meta"):
        keys = set(XVLM(get_model_config("x2vlm-base")).state_dict())
    for key in [
        "temp",
        "vision_encoder.blocks.0.attn.relative_position_bias_table",
        "vision_encoder.fc_norm.weight",
        "text_encoder.bert.embeddings.word_embeddings.weight",
        "text_encoder.bert.encoder.layer.12.crossattention.self.key.weight",
        "text_encoder.cls.predictions.transform.dense.weight",
        "vision_proj.weight",
        "text_proj.weight",
        "itm_head.3.weight",
        "bbox_head.3.weight",
        "absolute_frame_pos_embed",
    ]:
        assert key in keys, key
    assert "text_encoder.bert.encoder.layer.11.crossattention.self.key.weight" not in keys


def tiny_batch(model: XVLM, n: int = 4, length: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    res = model.config.vision.resolution
    grid = model.vision_encoder.grid(res)
    n_patches = grid[0] * grid[1]
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    atts = torch.ones(n, length, dtype=torch.long)
    atts[0, -2:] = 0
    masked = ids.clone()
    masked[:, 2] = 103
    text = {
        "text_ids": ids,
        "text_atts": atts,
        "text_ids_masked": masked,
        "masked_pos": torch.full((n, 1), 2),
        "masked_ids": ids[:, 2:3].clone(),
    }
    region_atts = torch.zeros(n, 1 + n_patches)
    region_atts[:, 0] = 1
    region_atts[:, 1 : 1 + max(1, n_patches // 2)] = 1
    return {
        "image": {"image": torch.randn(n, 3, res, res, generator=g), "image_ids": torch.arange(n), **text},
        "region": {
            "image": torch.randn(2, 3, res, res, generator=g),
            "region_image_index": torch.tensor([0, 0, 1, 1][:n]),
            "region_atts": region_atts,
            "region_boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * n),
            "is_image": torch.tensor([False, True, False, False][:n]),
            **text,
        },
        "video": {"video": torch.randn(n, 2, 3, res, res, generator=g), "video_ids": torch.arange(n), **text},
    }


SMALL_PRESET = 60e6  # parameters; bigger presets are only built on the meta device here


def _on_meta(name: str) -> XVLM:
    """The preset built on the meta device (no memory, no weight downloads or packaged-weight loads)."""
    cfg = get_model_config(name)
    with torch.device("meta"):
        return XVLM(dataclasses.replace(cfg, text_init=None, vision=dataclasses.replace(cfg.vision, pretrained=False)))


@pytest.mark.parametrize("name", list_models("vl"))
def test_every_preset_builds_on_meta_with_its_shapes(name: str) -> None:
    cfg, model = get_model_config(name), _on_meta(name)
    text, layers = cfg.text, model.bert.encoder.layer
    assert model.config.name == name and len(layers) == text.num_layers
    crossed = [i for i, layer in enumerate(layers) if getattr(layer, "crossattention", None) is not None]
    assert crossed == list(range(text.fusion_start, text.num_layers))
    if text.layout == "cross":  # CCLM: every layer of the separate cross encoder reads the vision tokens
        cross_layers = model.cross_encoder.encoder.layer
        assert len(cross_layers) == text.cross_layers and all(layer.crossattention for layer in cross_layers)
    assert model.bert.embeddings.word_embeddings.weight.shape == (text.vocab_size, text.hidden_size)
    assert model.mlm_logits(torch.zeros(1, text.hidden_size, device="meta")).shape == (1, text.vocab_size)
    assert model.vision_proj.out_features == model.text_proj.out_features == cfg.embed_dim
    assert model.text_proj.in_features == text.hidden_size
    assert 1e5 < _count(model) < 1e9  # cclm-tiny: 0.67M (a 2.7k-token vocabulary)


@pytest.mark.parametrize("name", list_models("vl"))
def test_presets_forward_backward(name: str) -> None:
    if _count(_on_meta(name)) > SMALL_PRESET:
        pytest.skip(f"{name} is big: covered on the meta device (and by the slow tiny-input test)")
    torch.manual_seed(0)
    model = create_model(name, init_unimodal=False)
    task = PretrainTask(model)
    losses, _ = task(tiny_batch(model))
    assert {"image_itc_loss", "image_itm_loss", "image_mlm_loss", "region_bbox_loss", "video_mlm_loss"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert model.itm_head[0].weight.grad is not None and model.bbox_head[0].weight.grad is not None


def test_tiny_preset_is_small() -> None:
    assert _count(create_model("xvlm-tiny", init_unimodal=False)) < 5e6
    assert {"xvlm-tiny", "xvlm-small", "x2vlm-base", "x2vlm-large"} <= set(list_models())


def test_grad_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False).eval()  # eval: no dropout, so both runs match
    batch = tiny_batch(model)["image"]

    def grads(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        feats = model.extract_features(batch, mode="multimodal")
        (feats.fused.sum() + feats.image_feat.sum() + feats.text_feat.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    a, b = grads(False), grads(True)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-6, rtol=1e-5, msg=n)


def test_video_average_pools_frames() -> None:
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    frames = torch.randn(1, 2, 3, 64, 64)
    pooled, _ = model.encode_video(frames)
    per_frame = model.vision_encoder(frames[0]) + model.absolute_frame_pos_embed[0, :2]
    torch.testing.assert_close(pooled[0], per_frame.mean(0), atol=1e-5, rtol=1e-5)


def test_save_and_load_pretrained_round_trip(tmp_path: Path) -> None:
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=get_tokenizer("xvlm-tiny"))
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "tokenizer.json").exists()
    loaded = XVLM.from_pretrained(tmp_path / "m").eval()
    batch = tiny_batch(model)["image"]
    a, b = model.extract_features(batch), loaded.extract_features(batch)
    torch.testing.assert_close(a.fused, b.fused)
    assert loaded.text_encoder.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight


def test_small_preset_loads_real_minilm_text_tower() -> None:
    from transformers import BertModel

    from grainvl.data.tokenization import packaged_minilm_path

    model = create_model("xvlm-small").eval()
    reference = BertModel.from_pretrained(packaged_minilm_path()).eval()
    tok = get_tokenizer("xvlm-small")
    enc = tok(["a large red star", "two small blue circles"], padding=True, return_tensors="pt")
    ours = model.encode_text(enc["input_ids"], enc["attention_mask"])
    theirs = reference(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-4)


def _at_resolution(name: str, resolution: int) -> XVLM:
    cfg = get_model_config(name)
    return XVLM(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, resolution=resolution)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x2vlm-base", "x2vlm-large"])
def test_official_presets_forward_backward_at_tiny_input(name: str) -> None:
    torch.manual_seed(0)
    model = _at_resolution(name, 32)  # 2 x 2 patches: the official shapes, a tiny input
    batch = tiny_batch(model, n=2, length=6)
    losses, _ = PretrainTask(model)({"image": batch["image"]})
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.vision_encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.text_encoder.bert.encoder.layer[12].crossattention.self.key.weight.grad is not None


def test_box_masked_cross_attention_ignores_patches_outside_the_box() -> None:
    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    batch = tiny_batch(model, n=2)["region"]
    image_embeds, _ = model.encode_image(batch["image"])
    atts = batch["region_atts"][:2]
    index = batch["region_image_index"][:2]
    ids, text_atts = batch["text_ids"][:2], batch["text_atts"][:2]

    def fused(tokens: torch.Tensor) -> torch.Tensor:
        region = model.region_sequence(tokens, index, atts)
        return model.fuse(model.encode_text(ids, text_atts), text_atts, region, atts)

    changed = image_embeds.clone()
    outside = (atts[0] == 0).nonzero().flatten()  # patch positions outside region 0's box
    changed[0, outside] = 1e3 * torch.randn(len(outside), changed.shape[-1])
    torch.testing.assert_close(fused(image_embeds), fused(changed), atol=1e-5, rtol=1e-5)
    inside = (atts[0] == 1).nonzero().flatten()[1:]  # a patch inside the box does matter
    changed[0, inside] += 5.0
    assert not torch.allclose(fused(image_embeds), fused(changed), atol=1e-3)


def test_temporal_attention_extension_sees_frame_order() -> None:
    torch.manual_seed(0)
    cfg = get_model_config("xvlm-tiny")
    official = XVLM(dataclasses.replace(cfg, add_frame_pos=False)).eval()
    extended = XVLM(dataclasses.replace(cfg, add_frame_pos=True, video_encoding="temporal_attention")).eval()
    video = torch.randn(1, 3, 3, 64, 64)
    reversed_video = video.flip(1)
    # The official average pool (without frame embeddings) cannot tell frame order apart; the extension can.
    torch.testing.assert_close(official.encode_video(video)[0], official.encode_video(reversed_video)[0])
    assert not torch.allclose(extended.encode_video(video)[0], extended.encode_video(reversed_video)[0], atol=1e-5)


def _attention_box_model() -> XVLM:
    config = dataclasses.replace(get_model_config("xvlm-tiny"), box_head="attention")
    return XVLM(config).eval()


def test_attention_box_head_centre_is_the_attended_cell() -> None:
    """With one patch taking all the attention and a zero offset, the centre is that cell's centre."""
    model = _attention_box_model()
    fused = torch.randn(2, 5, model.config.text.hidden_size)
    patches = torch.randn(2, 1 + 16, model.vision_encoder.width)  # token 0 + a 4 x 4 grid
    with torch.no_grad():
        model.bbox_head[3].weight.zero_()
        model.bbox_head[3].bias.copy_(torch.tensor([0.0, 0.0, -1.0, 1.0]))  # offset 0; w, h = sigmoid(∓1)
        model.box_key.weight.zero_()
        model.box_key.bias.zero_()
        model.box_query.weight.zero_()
        model.box_query.bias.fill_(1.0)
        patches[0, 1 + 6] = 0.0
        patches[1, 1 + 13] = 0.0
        model.box_key.weight[:, 0] = 1.0  # logit = 128 · patch[..., 0]: only the planted cells are large
        patches[..., 0] = -1.0
        patches[0, 1 + 6, 0] = 1.0
        patches[1, 1 + 13, 0] = 1.0
    box = model.predict_box(fused, patches)
    # cell 6 of a row-major 4 x 4 grid is (row 1, col 2); cell 13 is (row 3, col 1)
    expected = torch.tensor([[2.5 / 4, 1.5 / 4], [1.5 / 4, 3.5 / 4]])
    torch.testing.assert_close(box[:, :2], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(box[:, 2:], torch.sigmoid(torch.tensor([[-1.0, 1.0]] * 2)))


def test_attention_box_head_trains_and_round_trips(tmp_path: Path) -> None:
    model = _attention_box_model()
    fused = torch.randn(3, 5, model.config.text.hidden_size)
    patches = torch.randn(3, 1 + 16, model.vision_encoder.width)
    box = model.predict_box(fused, patches)
    assert box.shape == (3, 4) and bool(((box >= 0) & (box <= 1)).all())
    box.sum().backward()
    assert model.box_query.weight.grad.abs().sum() > 0 and model.box_key.weight.grad.abs().sum() > 0
    assert "box_query." in model.newly_initialised() and "box_key." in model.newly_initialised()
    with pytest.raises(ValueError, match="needs the image tokens"):
        model.predict_box(fused)
    with pytest.raises(ValueError, match="square patch grid"):
        model.predict_box(fused, patches[:, :-1])
    model.save_pretrained(tmp_path / "m")
    loaded = XVLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.predict_box(fused, patches), model.predict_box(fused, patches))


def test_official_box_head_ignores_image_tokens() -> None:
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    fused = torch.randn(2, 5, model.config.text.hidden_size)
    torch.testing.assert_close(model.predict_box(fused), model.bbox_head(fused[:, 0]).sigmoid())
    assert not hasattr(model, "box_query")
