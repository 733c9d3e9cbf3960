"""The multilingual text side of the cclm-* presets (issue 16 §1): the packaged six-language tokenizer,
embedding rows initialised from MiniLM, the presets' fields, and ``grainvl tokenizer unk-rate``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.data import tokenization as tok
from grainvl.data.world.generate import WorldConfig, generate_world
from grainvl.data.world.language import LANGUAGES
from grainvl.errors import DataError
from grainvl.models.factory import get_model_config, get_tokenizer, list_models, resolve_model
from grainvl.models.text import copy_embedding_rows, load_hf_bert
from grainvl.models.xvlm import XVLM, init_text_from_pretrained

CCLM_PRESETS = ("cclm-small", "cclm-small-single", "cclm-tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    # A seed the packaged tokenizer was not trained on (it sampled seed 16).
    generate_world(WorldConfig(images=24, videos=0, seed=3, resolution=64, text_scenes=0, dialogues=0), out)
    return out


@pytest.fixture(scope="module")
def multilingual() -> object:
    return tok.load_tokenizer(tok.resolve_tokenizer_folder(tok.WORLD_MULTILINGUAL))


# --------------------------------------------------------------------------------------- the packaged tokenizer
def test_packaged_tokenizer_has_the_unigram_special_ids_the_models_use(multilingual) -> None:
    assert tok.WORLD_MULTILINGUAL in tok.packaged_tokenizers()
    special = ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
    assert [getattr(multilingual, name) for name in special] == [0, 1, 2, 3, 4]
    encoded = multilingual("图中有一个黄色的五边形。")["input_ids"]
    assert encoded[0] == multilingual.cls_token_id and encoded[-1] == multilingual.sep_token_id


@pytest.mark.parametrize("name", list_models("vl"))
def test_every_preset_vocabulary_matches_its_tokenizer(name: str) -> None:
    cfg, tokenizer = get_model_config(name), get_tokenizer(name)
    assert cfg.text.vocab_size == len(tokenizer) and cfg.text.pad_token_id == tokenizer.pad_token_id
    assert cfg.objectives == ("cclm" if name.startswith("cclm") else "xvlm")


def test_packaged_tokenizer_is_under_one_percent_unknown_in_every_language_where_minilm_fails(world: Path) -> None:
    texts = tok.texts_by_language(world)
    assert sorted(texts) == sorted(LANGUAGES) and all(len(v) >= 24 for v in texts.values())
    ours = tok.unknown_token_rates(get_tokenizer("cclm-small"), texts)
    minilm = tok.unknown_token_rates(get_tokenizer("xvlm-small"), texts)
    assert all(count.tokens > 0 and count.rate < 0.01 for count in ours.values()), ours
    # The measurement: MiniLM's English vocabulary loses most Chinese and a quarter of Japanese.
    assert minilm["zh"].rate > 0.4 and minilm["ja"].rate > 0.15 and minilm["en"].rate == 0.0


def test_every_kind_of_world_text_is_covered(multilingual) -> None:
    sample = tok.world_language_sample(scenes=40, videos=4, seed=99)
    rates = tok.unknown_token_rates(multilingual, sample)
    assert {lang: count.unknown for lang, count in rates.items()} == dict.fromkeys(LANGUAGES, 0)


def test_chinese_pieces_are_word_like(multilingual) -> None:
    pieces = multilingual.tokenize("图中有一个黄色的五边形在白色的小十字形的下面。")
    assert "五边形" in pieces and "十字形" in pieces and "黄色的" in pieces
    bodies = [piece.lstrip(tok.METASPACE) for piece in multilingual.get_vocab()]
    assert max(len(body) for body in bodies if body and tok._script(body[0]) == "CJK") == 3


def test_packaged_folder_records_the_defaults_that_made_it() -> None:
    folder = tok.resolve_tokenizer_folder(tok.WORLD_MULTILINGUAL)
    recipe = json.loads((folder / tok.RECIPE_FILE).read_text(encoding="utf-8"))
    defaults = dataclasses.asdict(tok.MultilingualTokenizerConfig(out=""))
    assert recipe == {k: v for k, v in defaults.items() if k != "out"}


@pytest.mark.slow
def test_regenerating_the_packaged_tokenizer_is_byte_identical(tmp_path: Path) -> None:
    """~30 s: ``grainvl tokenizer multilingual`` with its defaults rebuilds the shipped files exactly."""
    assert main(["tokenizer", "multilingual", "--out", str(tmp_path / "tok")]) == 0
    folder = tok.resolve_tokenizer_folder(tok.WORLD_MULTILINGUAL)
    for name in ("tokenizer.json", "tokenizer_config.json", tok.RECIPE_FILE):
        assert (tmp_path / "tok" / name).read_bytes() == (folder / name).read_bytes(), name


def test_tokenizer_sources_resolve() -> None:
    assert tok.resolve_tokenizer_folder("minilm") == tok.packaged_minilm_path()
    assert tok.resolve_tokenizer_folder("world-multilingual") == tok.PACKAGED_TOKENIZERS / "world-multilingual"
    assert tok.resolve_tokenizer_folder("/some/folder") == Path("/some/folder")


# --------------------------------------------------------------------------------------- MiniLM rows
@pytest.mark.parametrize(
    "piece,spelling",
    [
        ("▁red", "red"),
        ("og", "##og"),
        ("色", "色"),  # a Han character is its own word in BERT's pre-tokenisation
        ("の", "##の"),  # kana are not: inside a word they carry ##
        ("。", "。"),
        ("<s>", "[CLS]"),
        ("<mask>", "[MASK]"),
        ("▁", None),
    ],
)
def test_wordpiece_spelling_of_sentencepiece_pieces(piece: str, spelling: str | None) -> None:
    assert tok.wordpiece_spelling(piece) == spelling


def test_cclm_small_starts_shared_rows_from_minilm_and_keeps_the_rest(multilingual) -> None:
    cfg = get_model_config("cclm-small")
    torch.manual_seed(0)
    model = XVLM(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, pretrained=False)))
    before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    report = init_text_from_pretrained(model)
    after = model.bert.embeddings.word_embeddings.weight.detach()
    minilm = get_tokenizer("xvlm-small")
    minilm_rows = load_hf_bert(tok.packaged_minilm_path())[1].embeddings.word_embeddings.weight.detach()
    vocab = multilingual.get_vocab()
    torch.testing.assert_close(after[vocab["▁red"]], minilm_rows[minilm.convert_tokens_to_ids("red")])
    torch.testing.assert_close(after[vocab["<mask>"]], minilm_rows[minilm.mask_token_id])
    torch.testing.assert_close(after[vocab["▁fünfeck"]], before[vocab["▁fünfeck"]])  # not in MiniLM: random
    changed = int((after != before).any(dim=1).sum())
    assert report["word_rows"] == len(multilingual) and changed == report["word_rows_copied"]
    assert 0.15 < report["word_rows_copied"] / report["word_rows"] < 0.5
    assert report["missing"] == ["embeddings.word_embeddings.weight"]  # every other text weight is MiniLM's


def test_rows_are_left_random_when_the_width_differs() -> None:
    cfg = dataclasses.replace(get_model_config("cclm-tiny"), text_init="minilm")
    model = XVLM(cfg)
    before = model.bert.embeddings.word_embeddings.weight.detach().clone()
    assert init_text_from_pretrained(model)["word_rows_copied"] == 0
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, before)
    with pytest.raises(ValueError, match="width 384 into embeddings of width 64"):
        copy_embedding_rows(model.bert.embeddings.word_embeddings, torch.zeros(5, 384), {0: 0})


# --------------------------------------------------------------------------------------- config and inputs
def test_objectives_field_is_checked_and_saved(tmp_path: Path) -> None:
    raw = resolve_model("cclm-tiny").config.to_dict() | {"objectives": "clip"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ValueError, match="objectives must be one of"):
        resolve_model(bad)
    model = XVLM(get_model_config("cclm-tiny"))
    model.save_pretrained(tmp_path / "m", tokenizer=get_tokenizer("cclm-tiny"))
    assert XVLM.from_pretrained(tmp_path / "m").config.objectives == "cclm"
    assert len(get_tokenizer(tmp_path / "m")) == model.config.text.vocab_size


def test_texts_by_language_reads_lang_fields_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    lines = ['{"lang": "zh", "sentence2": "图中没有菱形。"}', '{"language": "ja", "caption": "白い正方形。"}']
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert tok.texts_by_language(good) == {"zh": ["图中没有菱形。"], "ja": ["白い正方形。"]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": {"en": "a star"}}\n{"text": "no language"}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        tok.texts_by_language(bad)
    assert error.value.record == 2 and "lang" in str(error.value)
    with pytest.raises(DataError, match="not a world folder"):
        tok.texts_by_language(tmp_path)


# --------------------------------------------------------------------------------------- the command
def test_unk_rate_command_passes_cclm_small_and_fails_minilm(world: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["tokenizer", "unk-rate", "--data", str(world), "--model", "cclm-small"]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{lang} " in table for lang in LANGUAGES) and "0.00%" in table
    assert main(["tokenizer", "unk-rate", "--data", str(world), "--tokenizer", "minilm"]) == 1
    assert "unknown rate >= 1.00% in: ja, zh" in capsys.readouterr().out
    assert main(["tokenizer", "unk-rate", "--data", str(world / "missing.jsonl")]) == 2


def test_a_local_xlmr_folder_initialises_the_whole_text_tower(tmp_path: Path) -> None:
    """The documented hf-xlmr route: ``text_init`` names a Hugging Face XLM-R folder; every text weight loads."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hf_config = XLMRobertaConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    XLMRobertaModel(hf_config, add_pooling_layer=False).eval().save_pretrained(tmp_path / "xlmr")
    base = get_model_config("cclm-tiny")
    text = dataclasses.replace(
        base.text, vocab_size=300, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5, roberta_positions=True,
    )  # fmt: skip
    model = XVLM(dataclasses.replace(base, text=text, text_init=str(tmp_path / "xlmr"))).eval()
    report = init_text_from_pretrained(model)
    assert report["missing"] == [] and report["word_rows_copied"] == 300
    ids = torch.tensor([[0, 17, 250, 33, 2, 1, 1]])  # <s> … </s> <pad> <pad>
    atts = ids.ne(1).long()
    reference = XLMRobertaModel.from_pretrained(tmp_path / "xlmr").eval()
    theirs = reference(input_ids=ids, attention_mask=atts).last_hidden_state
    torch.testing.assert_close(model.encode_text(ids, atts)[atts.bool()], theirs[atts.bool()], atol=1e-5, rtol=1e-4)
