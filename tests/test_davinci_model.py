"""The DaVinci encoder–decoder: presets, joint-vocabulary tying, the 2-D bias, prefix rows, generation, files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from grainvl.models.davinci import DaVinci, DaVinciConfig, RelativePositionBias2D, count_parameters_meta
from grainvl.models.decoder import SearchConfig, TextDecoder
from grainvl.models.factory import get_tokenizer, list_models, load_davinci_model, resolve_model
from grainvl.models.text import TextConfig

TINY = DaVinciConfig(
    image_resolution=64,
    stem="conv",
    stem_channels=16,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    encoder_layers=2,
    decoder_layers=2,
    text_vocab_size=50,
    codebook_size=8,
    max_text_positions=16,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    cls_token_id=1,
    sep_token_id=2,
)


@pytest.fixture
def model() -> DaVinci:
    torch.manual_seed(0)
    return DaVinci(TINY).eval()


def _text() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 10, 11, 2], [1, 12, 2, 0]])
    return ids, (ids > 0).long()


# ---------------------------------------------------------------------------------------------- presets
def test_presets_are_registered_as_the_davinci_family() -> None:
    assert set(list_models("davinci")) == {"davinci-tiny", "davinci-small", "davinci-base"}
    for name in list_models("davinci"):
        resolved = resolve_model(name)
        assert resolved.family == "davinci" and isinstance(resolved.config, DaVinciConfig)
    base = resolve_model("davinci-base").config
    assert (base.encoder_layers, base.decoder_layers, base.hidden_size, base.codebook_size) == (6, 6, 768, 1024)
    with pytest.raises(ValueError, match="not a vision-language model"):
        resolve_model("davinci-tiny").expect("vl")


def test_base_parameter_count_on_the_meta_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing is allocated or read: the packaged EfficientNet weights must not even be loaded.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("count_parameters_meta read weights"))
    config = resolve_model("davinci-base").config
    count = count_parameters_meta(config)
    with torch.device("meta"):
        built = DaVinci(dataclasses.replace(config, stem_pretrained=False))
    assert all(p.is_meta for p in built.parameters())
    assert count == sum(p.numel() for p in built.parameters()) == 125_447_907
    # The joint table (30522 + 1024 + 1) x 768 is counted once although three modules use it (and the
    # output bias once under its two BERT names).
    vocab = 30522 + 1024 + 1
    with_copies = sum(p.numel() for _, p in built.named_parameters(remove_duplicate=False))
    assert with_copies - count == 2 * vocab * 768 + vocab


def test_tiny_preset_builds_and_uses_the_tokenizer_ids() -> None:
    config = resolve_model("davinci-tiny").config
    tokenizer = get_tokenizer(resolve_model("davinci-tiny"))
    assert (config.cls_token_id, config.sep_token_id, config.pad_token_id) == (
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
    )
    assert len(tokenizer) == config.text_vocab_size


# ---------------------------------------------------------------------------------------------- vocabulary
def test_joint_vocabulary_layout_and_three_way_tying(model: DaVinci) -> None:
    assert (TINY.image_code_offset, TINY.img_bos_id, TINY.vocab_size) == (50, 58, 59)
    table = model.word_embeddings.weight
    assert tuple(table.shape) == (59, 32)
    assert model.decoder.bert.embeddings.word_embeddings.weight is table  # decoder input
    assert model.decoder.cls.predictions.decoder.weight is table  # decoder output
    assert sum(p is table for p in model.parameters()) == 1


def test_text_decoder_rejects_a_table_of_the_wrong_shape() -> None:
    config = TextConfig(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, fusion_start=0)
    with pytest.raises(ValueError, match="do not fit the decoder"):
        TextDecoder(config, torch.nn.Embedding(21, 16))
    own = TextDecoder(config)  # the default keeps its own tied table
    assert own.cls.predictions.decoder.weight is own.bert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------- encoder
def test_encoder_sequences_for_full_prefix_empty_and_no_image(model: DaVinci) -> None:
    ids, atts = _text()
    images = torch.rand(2, 3, 64, 64)
    for pixels, image_tokens in ((images, 17), (images[:, :, :32], 9), (images[:, :, :0], 1), (None, 0)):
        states, mask = model.encode(pixels, ids, atts)
        assert states.shape == (2, image_tokens + 4, 32) and mask.shape == (2, image_tokens + 4)
        assert mask[:, :image_tokens].all() and torch.equal(mask[:, image_tokens:], atts)
    with pytest.raises(ValueError, match="not a multiple of the 16-pixel patch"):
        model.encode(torch.rand(1, 3, 40, 64), ids[:1])


def test_prefix_rows_read_the_sliced_position_embedding(model: DaVinci) -> None:
    # With the patch content switched off, a token is exactly CLS-or-0 plus its position row.
    model.image_norm = torch.nn.Identity()
    torch.nn.init.zeros_(model.vision_proj.weight)
    torch.nn.init.zeros_(model.vision_proj.bias)
    tokens, grid = model.image_tokens(torch.rand(1, 3, 32, 64))  # 2 of 4 rows
    assert grid == (2, 4)
    expected = torch.cat([model.cls_token, torch.zeros(1, 8, 32)], dim=1) + model.pos_embed[:, :9]
    assert torch.allclose(tokens, expected)


def test_relative_bias_is_keyed_by_the_actual_grid() -> None:
    torch.manual_seed(0)
    bias = RelativePositionBias2D(grid=4, heads=2)
    torch.nn.init.normal_(bias.table)
    prefix = bias(2, 4)  # (heads, 8, 8)
    assert prefix.shape == (2, 8, 8)
    # token i at (r, c) = divmod(i, 4); row of the 7x7 offset table: (dr + 3) * 7 + (dc + 3)
    for i, j in [(0, 0), (1, 6), (7, 0), (5, 2)]:
        (ri, ci), (rj, cj) = divmod(i, 4), divmod(j, 4)
        assert torch.equal(prefix[:, i, j], bias.table[(ri - rj + 3) * 7 + (ci - cj + 3)])
    assert torch.equal(prefix, bias(4, 4)[:, :8, :8])  # a prefix of rows is the top-left block (raster order)
    assert bias(6, 6).shape == (2, 36, 36)  # a larger grid interpolates the table


def test_bias_sits_on_image_image_scores_only(model: DaVinci) -> None:
    torch.nn.init.normal_(model.rel_pos_bias[0].table)
    block = DaVinci._image_bias(model.rel_pos_bias[0], (2, 2), length=7)  # CLS + 4 patches + 2 text tokens
    assert block.shape == (1, 2, 7, 7)
    assert torch.equal(block[0, :, 1:5, 1:5], model.rel_pos_bias[0](2, 2))
    outside = block.clone()
    outside[0, :, 1:5, 1:5] = 0
    assert not outside.any()  # CLS rows/columns and text rows/columns get no bias
    ids, atts = _text()
    text_only = model.encode(None, ids, atts)[0]
    with_image = model.encode(torch.rand(2, 3, 64, 64), ids, atts)[0]
    torch.nn.init.normal_(model.rel_pos_bias[1].table)
    assert torch.equal(model.encode(None, ids, atts)[0], text_only)  # no image: the bias is never used
    assert not torch.allclose(model.encode(torch.rand(2, 3, 64, 64), ids, atts)[0], with_image)


# ---------------------------------------------------------------------------------------------- generation
def test_generated_image_codes_are_always_image_codes(model: DaVinci) -> None:
    with torch.no_grad():  # make text ids and IMG_BOS by far the likeliest outputs
        model.decoder.cls.predictions.bias[: TINY.text_vocab_size] = 100.0
        model.decoder.cls.predictions.bias[TINY.img_bos_id] = 100.0
    ids, atts = _text()
    generator = torch.Generator().manual_seed(0)
    codes = model.generate_image_codes(ids, atts, top_k=3, n=2, generator=generator)
    assert codes.shape == (2, 2, 4, 4) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < TINY.codebook_size
    completed = model.generate_image_codes(ids, atts, top_k=8, prefix_images=torch.rand(2, 3, 48, 64))
    assert completed.shape == (2, 1, 4, 4) and not completed[:, :, :3].any()  # only the last row is sampled


def test_generated_text_uses_text_ids_only(model: DaVinci) -> None:
    with torch.no_grad():  # make image codes and IMG_BOS by far the likeliest outputs
        model.decoder.cls.predictions.bias[TINY.text_vocab_size :] = 100.0
    search = SearchConfig(num_beams=2, max_length=6, min_length=1, no_repeat_ngram=0)
    for beams in (search, dataclasses.replace(search, num_beams=1)):
        outputs = model.generate_text(torch.rand(2, 3, 64, 64), prompt_ids=[10, 11], search=beams)
        assert len(outputs) == 2 and all(0 <= t < TINY.text_vocab_size for ids in outputs for t in ids)


# ---------------------------------------------------------------------------------------------- files
def test_save_and_load_round_trip_through_the_factory(model: DaVinci, tmp_path: Path) -> None:
    folder = model.save_pretrained(tmp_path / "dv")
    resolved = resolve_model(folder)
    assert (resolved.family, resolved.kind) == ("davinci", "folder")
    loaded = load_davinci_model(folder).eval()
    assert loaded.decoder.cls.predictions.decoder.weight is loaded.word_embeddings.weight  # tying survives loading
    ids, atts = _text()
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(model(images, ids, atts, ids, atts), loaded(images, ids, atts, ids, atts))
    with pytest.raises(ValueError, match="unknown DaVinciConfig field"):
        DaVinciConfig.from_dict({"hidden": 3})
