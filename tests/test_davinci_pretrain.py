"""DaVinci pre-training: pair / text batches, the Task's three objectives, the CLI run, exact resume, torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grainvl.cli import main
from grainvl.data.pretrain import PretrainDataConfig
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.losses.prefix_lm import pim_target, prefix_lm_loss, shift_targets
from grainvl.models.davinci import DaVinci, DaVinciConfig
from grainvl.models.factory import load_davinci_model, resolve_model
from grainvl.models.vq import VQConfig, VQTokenizer
from grainvl.tasks.davinci import DaVinciObjectives, DaVinciPretrainTask, PairDataset, TextEncoder, TextPrefixStream

CODES = 32  # davinci-tiny's codebook


@pytest.fixture(scope="module")
def image_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random (untrained) stride-16 VQ tokenizer folder with davinci-tiny's 32 codes."""
    torch.manual_seed(0)
    config = VQConfig(
        codebook_size=CODES,
        embed_dim=8,
        z_channels=8,
        channels=8,
        channel_mult=(1, 1, 1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=(),
        norm_groups=4,
        resolution=64,
    )
    return VQTokenizer(config).save_pretrained(tmp_path_factory.mktemp("vq") / "tokenizer")


@pytest.fixture(scope="module")
def text_tokenizer():
    return load_tokenizer(packaged_minilm_path())


def _pairs(world: Path, tokenizer, objectives: DaVinciObjectives) -> PairDataset:
    dcfg = PretrainDataConfig(resolution=64, max_tokens=30, max_words=30, mean=(0, 0, 0), std=(1, 1, 1), augment=False)
    files = world / "annotations" / "pretrain" / "train" / "image_text.jsonl"
    dataset = PairDataset(files, world, tokenizer, dcfg, train=True, seed=3)
    return dataset.configure(TextEncoder(tokenizer, 30), objectives, grid_rows=4)


# ---------------------------------------------------------------------------------------------- batches
def test_pair_batches_split_captions_and_keep_pixels_in_unit_range(image_world: Path, text_tokenizer) -> None:
    dataset = _pairs(image_world, text_tokenizer, DaVinciObjectives())
    samples = [dataset.sample(i, 0) for i in range(4)]
    batch = dataset.collate(samples, random.Random(0))
    assert (
        batch["image"].shape == (4, 3, 64, 64) and 0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1
    )
    assert 0 <= int(batch["prefix_rows"]) <= 3
    decode = text_tokenizer.decode
    for i, sample in enumerate(samples):  # prefix + suffix is the cleaned caption, split at a word boundary
        prefix = decode(batch["prefix_ids"][i][batch["prefix_atts"][i].bool()], skip_special_tokens=True)
        suffix = decode(batch["suffix_ids"][i][batch["suffix_atts"][i].bool()], skip_special_tokens=True)
        caption = decode(batch["caption_ids"][i][batch["caption_atts"][i].bool()], skip_special_tokens=True)
        assert suffix and f"{prefix} {suffix}".split() == caption.split() == sample["text"].caption.split()
        assert batch["suffix_ids"][i, 0] == text_tokenizer.cls_token_id  # [CLS] s1 .. sn [SEP]
    # The released config's behaviour: never an image prefix; the fixed default: prefixes of every size.
    released = _pairs(image_world, text_tokenizer, DaVinciObjectives(prefix_mode="released"))
    assert {int(released.collate(samples, random.Random(s))["prefix_rows"]) for s in range(30)} == {0}
    assert {int(dataset.collate(samples, random.Random(s))["prefix_rows"]) for s in range(60)} == {0, 1, 2, 3}


def test_text_stream_resumes_to_the_same_batches(text_tokenizer) -> None:
    documents = [f"document number {i} has a few words in it" for i in range(10)]
    encoder = TextEncoder(text_tokenizer, 16)
    stream = TextPrefixStream(documents, 3, encoder, seed=1)
    next(stream), next(stream)
    state = stream.state_dict()
    expected = next(stream)
    again = TextPrefixStream(documents, 3, encoder, seed=1)
    again.load_state_dict(state)
    got = next(again)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---------------------------------------------------------------------------------------------- task
def test_task_returns_each_objective_and_keeps_the_tokenizer_frozen(
    image_world: Path, image_tokenizer: Path, text_tokenizer
) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(resolve_model("davinci-tiny").config, codebook_size=CODES)
    model, vq = DaVinci(config), VQTokenizer.from_pretrained(image_tokenizer)
    task = DaVinciPretrainTask(model, vq, DaVinciObjectives()).train()
    assert not task.image_tokenizer.training and not any(p.requires_grad for p in task.image_tokenizer.parameters())
    pairs = _pairs(image_world, text_tokenizer, DaVinciObjectives())
    pair = pairs.collate([pairs.sample(i, 0) for i in range(3)], random.Random(2))
    text = TextPrefixStream(["a red star left of a blue circle"] * 4, 2, TextEncoder(text_tokenizer, 16))
    model.eval()  # no dropout: compare with the loss computed by hand
    losses, metrics = task({"pair": pair, "text": next(text)})
    assert set(losses) == {"plm_loss", "pim_loss", "text_loss"} and metrics["prefix_rows"] == float(pair["prefix_rows"])
    assert all(torch.isfinite(v) for v in losses.values())
    # PIM by hand: the tokenizer's codes of the rows below the prefix, after [IMG_BOS], over the joint vocabulary.
    rows = int(pair["prefix_rows"])
    with torch.no_grad():
        codes = vq.encode(pair["image"])
        states, atts = model.encode(pair["image"][:, :, : 16 * rows], pair["caption_ids"], pair["caption_atts"])
        target = pim_target(codes, rows, config.image_code_offset, config.img_bos_id)
        dec, dec_atts, labels = shift_targets(target, torch.ones_like(target))
        by_hand = prefix_lm_loss(model.decode(dec, dec_atts, states, atts), labels)
        assert torch.allclose(losses["pim_loss"], by_hand)
        restricted = DaVinciPretrainTask(model, vq, DaVinciObjectives(restrict_image_targets=True))
        assert restricted({"pair": pair})[0]["pim_loss"] < losses["pim_loss"]  # softmax over the codes only
    with pytest.raises(ValueError, match="the model expects 1024"):
        DaVinciPretrainTask(DaVinci(dataclasses.replace(config, codebook_size=1024)), vq, DaVinciObjectives())


# ---------------------------------------------------------------------------------------------- runs
def _common(world: Path, tokenizer: Path) -> list[str]:
    return [
        "davinci",
        "pretrain",
        "--model",
        "davinci-tiny",
        "--data",
        str(world),
        "--tokenizer",
        str(tokenizer),
        "--batch-size",
        "4",
        "--set",
        "data.text_batch_size=4",
        "train.progress=false",
        "train.track_energy=false",
        "train.tensorboard=false",
        "train.log_every=1",
    ]


def _losses(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: r[k] for k in ("plm_loss", "pim_loss", "text_loss")} for r in rows if "loss" in r}


def test_cli_run_reports_every_objective_and_saves_the_model(
    image_world: Path, image_tokenizer: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert main([*_common(image_world, image_tokenizer), "--steps", "3", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in ("plm", "pim", "text")) and "model saved to" in out
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3] and all(0 < v < 100 for step in losses.values() for v in step.values())
    model = load_davinci_model(run)  # the run folder resolves to RUN/model
    assert isinstance(model, DaVinci) and model.config.codebook_size == CODES
    assert json.loads((run / "summary.json").read_text())["losses"].keys() == {"plm", "pim", "text"}


def test_resumed_run_matches_uninterrupted(image_world: Path, image_tokenizer: Path, tmp_path: Path) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = [*_common(image_world, image_tokenizer), "train.ckpt_every=2", "--steps", "4"]
    assert main([*args, "--out", str(full)]) == 0
    checkpoint = full / "checkpoints" / "step_00000002"
    assert main([*args, "--out", str(resumed), "--resume", str(checkpoint)]) == 0
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        assert a[step] == pytest.approx(b[step], abs=1e-6)


def test_empty_caption_is_a_one_line_error(
    image_world: Path, image_tokenizer: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    image = sorted((image_world / "images" / "train").iterdir())[0]
    (data / "a.jpg").write_bytes(image.read_bytes())
    lines = [{"image": "a.jpg", "caption": "!!!"}] * 4  # cleans to no words: nothing to split or generate
    (data / "image_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    args = [*_common(data, image_tokenizer), "objectives.text=0", "--steps", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_text.jsonl" in err[0] and "caption" in err[0]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(image_world: Path, image_tokenizer: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as probe:  # a free port: torchrun's static rendezvous cannot use port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = _common(image_world, image_tokenizer)
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "grainvl", *cli]
    cmd += ["--steps", "2", "--out", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pim" in done.stdout and sorted(_losses(run)) == [1, 2]
    assert (run / "model" / "model.safetensors").exists()


def test_davinci_config_matches_the_text_tokenizer(text_tokenizer) -> None:
    config = resolve_model("davinci-small").config
    assert isinstance(config, DaVinciConfig) and config.text_vocab_size == len(text_tokenizer)
