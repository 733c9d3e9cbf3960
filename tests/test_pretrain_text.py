"""Text corpora, ``grainvl pretrain-text`` end to end (MLM and TACO), resume, and the exported HF folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.data.text_corpus import (
    builtin_english,
    load_corpus,
    read_jsonl_corpus,
    read_text_corpus,
    world_english,
)
from grainvl.errors import BadRecords, DataError
from grainvl.models.factory import list_models, resolve_model

SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank today.",
    "a small red circle sits to the left of a large blue square on the table.",
    "reading books in the evening helps many people relax after a long day.",
    "the weather was cold and windy, so everyone stayed inside by the fire.",
]


# ---------------------------------------------------------------------------------------------- readers
def test_plain_text_lines_and_blocks(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first  document\n\nsecond one\n", encoding="utf-8")
    assert read_text_corpus(lines, "lines") == ["first document", "second one"]
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("para one\ncontinues here\n\n\npara two\n", encoding="utf-8")
    assert read_text_corpus(blocks) == ["para one continues here", "para two"]  # auto -> blocks
    single = tmp_path / "single.txt"
    single.write_text("\nalpha\nbeta\n\n", encoding="utf-8")
    assert read_text_corpus(single) == ["alpha", "beta"]  # only outer blank lines: one per line


def test_plain_text_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        read_text_corpus(empty)
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"good line\n\xff\xfe bad\nanother\n")
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        read_text_corpus(binary)
    bad = BadRecords(skip_bad=True)
    assert read_text_corpus(binary, bad=bad) == ["good line", "another"]
    assert len(bad.errors) == 1
    with pytest.raises(DataError, match="file not found"):
        read_text_corpus(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"title": "x"}', "field 'text' must be a non-empty string \\(missing\\)"),
        ('{"text": 3}', "field 'text' must be a non-empty string"),
        ('{"text": "  "}', "field 'text' must be a non-empty string \\(str"),
        ('{"text": "unterminated', "malformed JSON line"),
    ],
)
def test_jsonl_bad_records(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine document"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"corpus.jsonl: line 2: {reason}"):
        read_jsonl_corpus(path)
    assert read_jsonl_corpus(path, bad=BadRecords(skip_bad=True)) == ["fine document"]


def test_load_corpus_dispatch(tmp_path: Path) -> None:
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "one  two"}\n', encoding="utf-8")
    assert load_corpus(jl) == ["one two"]
    with pytest.raises(ValueError, match="unknown built-in corpus"):
        load_corpus("builtin:klingon")
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="not a world folder"):
        world_english(tmp_path)


def test_world_english_reads_training_text_only(text_world: Path) -> None:
    task = text_world / "text" / "glue" / "color_sst"
    with (task / "dev.tsv").open("a", encoding="utf-8") as f:
        f.write("Zebras dance on the unique dev moon.\t0\n")  # a dev-only sentence must never be read
    docs = set(world_english(text_world))
    train = {line.split("\t")[0] for line in (task / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]}
    assert train <= docs
    assert "Zebras dance on the unique dev moon." not in docs
    captions = (text_world / "annotations" / "pretrain" / "train" / "image_text.jsonl").read_text(encoding="utf-8")
    assert json.loads(captions.splitlines()[0])["caption"][0] in docs


@pytest.mark.slow  # parses ~800 standard-library files (a few seconds, more on a busy machine)
def test_builtin_english_is_prose() -> None:
    docs = builtin_english()
    assert len(docs) > 1000 and len(set(docs)) == len(docs)
    assert not any(">>>" in d or "{" in d for d in docs)
    assert all(len(d.split()) >= 12 for d in docs)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def text_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grainvl.data.world.generate import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("text_world")
    generate_world(WorldConfig(images=12, videos=0, resolution=64, text_train=20, text_dev=10), out)
    return out


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(SENTENCES * 6) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> tuple[Path, Path]:
    """A 2-layer, 32-wide architecture file and a ~100-piece WordPiece vocabulary of the test corpus."""
    from grainvl.data.tokenization import train_wordpiece

    root = tmp_path_factory.mktemp("arch")
    arch = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    (root / "bert-nano.json").write_text(json.dumps(arch), encoding="utf-8")
    train_wordpiece(SENTENCES, 120, root / "tokenizer")
    return root / "bert-nano.json", root / "tokenizer"


def _run(corpus: Path, arch: tuple[Path, Path], out: Path, objective: str, *extra: str) -> int:
    model, tokenizer = arch
    flags = ["--objective", objective, "--model", str(model), "--tokenizer", str(tokenizer), "--corpus", str(corpus)]
    flags += ["--steps", "4", "--batch-size", "4", "--seq-len", "16", "--lr", "1e-3", "--out", str(out)]
    quiet = ["train.track_energy=false", "train.count_flops=false", "train.progress=false", "train.tensorboard=false"]
    return main(["pretrain-text", *flags, "--set", *quiet, "taco.num_negatives=8", *extra])


@pytest.fixture(scope="module")
def taco_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path, tiny_arch: tuple[Path, Path]) -> Path:
    out = tmp_path_factory.mktemp("taco_run") / "run"
    extra = ("train.ckpt_every=2", "train.keep_ckpts=5", "--export-every", "2")
    assert _run(corpus_file, tiny_arch, out, "taco", *extra) == 0
    return out


def _final_losses(run: Path) -> dict[str, float]:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))["summary"]["final_losses"]


def test_pretrain_text_mlm_end_to_end(corpus_file: Path, tiny_arch: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "mlm"
    assert _run(corpus_file, tiny_arch, out, "mlm") == 0
    losses = _final_losses(out)
    assert set(losses) == {"loss", "mlm_loss"} and all(map(torch.isfinite, torch.tensor(list(losses.values()))))
    assert (out / "encoder" / "model.safetensors").is_file() and not (out / "encoders").exists()


def test_pretrain_text_taco_end_to_end(taco_run: Path) -> None:
    losses = _final_losses(taco_run)
    assert set(losses) == {"loss", "mlm_loss", "taco_loss"}
    assert losses["loss"] == pytest.approx(losses["mlm_loss"] + losses["taco_loss"], rel=1e-5)
    assert 0 < losses["taco_loss"] < 20
    assert sorted(p.name for p in (taco_run / "encoders").iterdir()) == ["step_0000002", "step_0000004"]
    results = [json.loads(line) for line in (taco_run / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["metric"] for r in results} == {"train/loss", "train/mlm_loss", "train/taco_loss"}


def test_resume_reproduces_uninterrupted_taco_run(
    taco_run: Path, corpus_file: Path, tiny_arch: tuple[Path, Path], tmp_path: Path
) -> None:
    """Masks (Python RNG) and TACO samples (torch RNG) come from the checkpointed streams: exact resume."""
    resumed = tmp_path / "resumed"
    middle = taco_run / "checkpoints" / "step_00000002"
    assert _run(corpus_file, tiny_arch, resumed, "taco", "--resume", str(middle)) == 0
    assert _final_losses(resumed) == pytest.approx(_final_losses(taco_run), rel=1e-5)


def test_exported_folder_loads_in_transformers_with_identical_outputs(taco_run: Path) -> None:
    from transformers import BertForMaskedLM, BertModel

    from grainvl.data.tokenization import load_tokenizer
    from grainvl.models.text import load_hf_bert
    from grainvl.recipes.pretrain_text import build_text_model

    folder = taco_run / "encoder"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    hf = BertModel.from_pretrained(folder).eval()
    _, ours, report = load_hf_bert(folder)
    assert report["missing"] == []
    ours.eval()
    tok = load_tokenizer(folder)
    batch = tok([SENTENCES[0], SENTENCES[1][:20]], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        mlm = BertForMaskedLM.from_pretrained(folder).eval()
        encoder, head, _ = build_text_model(str(folder))
        encoder.eval()
        logits = head(encoder(batch["input_ids"], batch["attention_mask"]))
        torch.testing.assert_close(logits, mlm(**batch).logits, rtol=1e-5, atol=1e-5)
    # The trained weights differ from a fresh init of the same architecture: the export holds the trained model.
    step2 = load_hf_bert(taco_run / "encoders" / "step_0000002")[1].state_dict()
    assert not torch.equal(
        step2["encoder.layer.0.output.dense.weight"], ours.state_dict()["encoder.layer.0.output.dense.weight"]
    )


@pytest.mark.parametrize("name", list_models("text"))
def test_every_text_preset_builds_with_the_tokenizer_vocabulary(name: str) -> None:
    from grainvl.recipes.pretrain_text import build_text_model

    with torch.device("meta"):  # bert-base included: shapes only, no memory
        encoder, head, tokenizer = build_text_model(name)
    preset = resolve_model(name).config
    assert encoder.config == dataclasses.replace(preset, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    assert head.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight


def test_pretrain_text_runs_a_registered_preset(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    flags = ["--model", "bert-tiny", "--corpus", str(corpus_file), "--steps", "2", "--batch-size", "2"]
    flags += ["--seq-len", "16", "--out", str(out)]
    quiet = ["train.track_energy=false", "train.count_flops=false", "train.progress=false", "train.tensorboard=false"]
    assert main(["pretrain-text", *flags, "--set", *quiet]) == 0
    assert json.loads((out / "encoder" / "config.json").read_text(encoding="utf-8"))["hidden_size"] == 128


def test_bad_model_and_corpus_give_one_line_errors(
    corpus_file: Path, tiny_arch: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(corpus_file, (Path("bert-gigantic"), tiny_arch[1]), tmp_path / "a", "mlm") == 2
    assert "not a preset" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "oops"}\n', encoding="utf-8")
    assert _run(bad, tiny_arch, tmp_path / "b", "mlm") == 2
    assert "bad.jsonl: line 2: field 'text'" in capsys.readouterr().err


@pytest.mark.parametrize("positions", ["all", "masked", "unmasked"])
def test_taco_anchor_positions(positions: str) -> None:
    from grainvl.models.text import BertEncoderModel, MLMHead, TextConfig
    from grainvl.recipes.pretrain_text import TacoSettings, TextPretrainTask

    config = TextConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    task = TextPretrainTask(BertEncoderModel(config), MLMHead(config), "taco", TacoSettings(positions=positions))
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "masked_pos": torch.tensor([[1, 3, 0], [4, 0, 0]]),  # padding entries point at 0 with label -100
        "masked_labels": torch.tensor([[7, 8, -100], [9, -100, -100]]),
    }
    anchors = task._anchor_mask(batch, torch.Size((2, 5)))
    masked = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    expected = {"all": None, "masked": masked, "unmasked": ~masked}[positions]
    if expected is None:
        assert anchors is None
    else:
        assert torch.equal(anchors, expected)


def test_write_corpus_round_trips(corpus_file: Path, text_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus.jsonl"
    assert (
        main(["pretrain-text", "--corpus", str(corpus_file), "--corpus", str(text_world), "--write-corpus", str(out)])
        == 0
    )
    expected = read_text_corpus(corpus_file) + world_english(text_world)
    assert read_jsonl_corpus(out) == expected
