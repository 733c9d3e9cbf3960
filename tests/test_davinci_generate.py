"""DaVinci text-to-image: the FID formula, image-code-only sampling, ``grainvl generate`` end to end, bad prompts,
the evaluation rows, and the data-scale benchmark's table and curves."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from grainvl.cli import main
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.errors import DataError
from grainvl.metrics.generation import (
    AttributeProbe,
    SceneLabels,
    caption_r_at_1,
    frechet_distance,
    gaussian_fit,
    read_scene_labels,
    stated_attributes,
)
from grainvl.models.davinci import DaVinci
from grainvl.models.factory import resolve_model
from grainvl.models.vq import VQConfig, VQTokenizer
from grainvl.recipes.generate import GenerateConfig, check_prompt, generate

ROOT = Path(__file__).resolve().parents[1]
CODES = 32  # davinci-tiny's codebook


@pytest.fixture(scope="module")
def text_tokenizer():
    return load_tokenizer(packaged_minilm_path())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, text_tokenizer) -> tuple[Path, Path]:
    """(a random davinci-tiny folder, a random 32-code stride-16 image tokenizer folder)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dvgen")
    vq = VQConfig(
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
    tokenizer = VQTokenizer(vq).save_pretrained(root / "tok")
    model = DaVinci(resolve_model("davinci-tiny").config).save_pretrained(root / "dv", tokenizer=text_tokenizer)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- FID
def test_frechet_distance_matches_the_scipy_sqrtm_formula() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
    (mu1, s1), (mu2, s2) = gaussian_fit(a), gaussian_fit(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Two 1-D Gaussians by hand: (m1 - m2)^2 + (sd1 - sd2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        4.0 + 1.0
    )


def test_caption_r_at_1_leaves_out_the_captions_own_real_image() -> None:
    eye = torch.eye(3)
    # Generated image i equals caption i; real image i too (left out), the other real images are orthogonal.
    assert caption_r_at_1(eye, eye, eye) == 1.0
    # Caption 0's generated image matches caption 1 instead: miss for caption 0 (it scores 0 < real image ... 0: tie).
    generated = torch.stack([eye[1], eye[1], eye[2]])
    assert caption_r_at_1(eye, generated, eye) == pytest.approx(2 / 3)


def test_stated_attributes_and_scene_labels_read_the_worlds_words(image_world: Path) -> None:
    assert stated_attributes("A grey disc left of two big rhombuses and a red Cross.") == (
        {"gray", "red"},
        {"circle", "diamond", "cross"},
    )
    labels = read_scene_labels(image_world / "annotations" / "pretrain" / "test" / "region.jsonl")
    records = [json.loads(line) for line in (image_world / "annotations/pretrain/test/region.jsonl").open()]
    for record in records:
        label = labels[record["image"]]
        assert label.count == len(record["elems"])
        assert {e["attributes"].split()[-1] for e in record["elems"]} == set(label.colors)


def test_attribute_probe_learns_separable_labels() -> None:
    torch.manual_seed(0)
    colors = [frozenset({c}) for c in ("red", "blue") * 20]
    labels = [SceneLabels(c, frozenset({"star"}), 1 + i % 2) for i, c in enumerate(colors)]
    # Features: column 0 says red/blue, column 1 the count, the rest noise.
    features = torch.randn(40, 8)
    features[:, 0] = torch.tensor([3.0 if "red" in c else -3.0 for c in colors])
    features[:, 1] = torch.tensor([3.0 * (label.count - 1.5) for label in labels])
    probe = AttributeProbe()
    chosen = probe.fit(features, labels, features, labels)
    assert chosen["attr_acc"] == 1.0
    stated = [(set(label.colors), set(label.shapes)) for label in labels]
    assert probe.accuracy(features, stated, [label.count for label in labels])["attr_color_acc"] == 1.0
    wrong = [({"blue"} if "red" in c else {"red"}, set()) for c in colors]
    assert probe.accuracy(features, wrong, [label.count for label in labels])["attr_color_acc"] == 0.0


# ---------------------------------------------------------------------------------------------- generation
def test_generation_samples_image_codes_only(tiny: tuple[Path, Path], text_tokenizer) -> None:
    model, tokenizer = DaVinci.from_pretrained(tiny[0]).eval(), VQTokenizer.from_pretrained(tiny[1]).eval()
    with torch.no_grad():  # make text ids and IMG_BOS by far the likeliest outputs
        bias = model.decoder.cls.predictions.bias
        bias[: model.config.text_vocab_size] = 100.0
        bias[model.config.img_bos_id] = 100.0
    seen = []
    decode = tokenizer.decode

    def spy(codes: torch.Tensor) -> torch.Tensor:
        seen.append(codes)
        return decode(codes)

    tokenizer.decode = spy  # type: ignore[method-assign]
    cfg = GenerateConfig(samples=3, top_k=5, batch_size=2)
    samples, cosines = generate(model, tokenizer, ["a red star", "a blue circle", "a cross"], text_tokenizer, cfg)
    assert samples.shape == (3, 3, 3, 64, 64) and cosines is None
    codes = torch.cat([c.flatten() for c in seen])
    assert codes.numel() == 3 * 3 * 16 and int(codes.min()) >= 0 and int(codes.max()) < CODES
    assert 0 <= float(samples.min()) <= float(samples.max()) <= 1


def test_generate_command_writes_pngs_and_reranks(tiny: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    model, tokenizer = (str(p) for p in tiny)
    out = tmp_path / "img.png"
    prompt = "a large striped red star left of a blue circle"
    args = ["generate", "--model", model, "--tokenizer", tokenizer, "--prompt", prompt, "--out", str(out)]
    assert main([*args, "--samples", "2", "--rerank-model", "xvlm-tiny"]) == 0
    with Image.open(out) as image:
        assert image.size == (64, 64)
    assert "re-ranked" in capsys.readouterr().out
    captions = tmp_path / "captions.txt"
    captions.write_text("a red star\na blue circle above a green square\n", encoding="utf-8")
    folder = tmp_path / "batch"
    args = ["generate", "--model", model, "--tokenizer", tokenizer, "--captions", str(captions), "--out", str(folder)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (folder / "generations.jsonl").open()]
    assert [r["prompt"] for r in rows] == ["a red star", "a blue circle above a green square"]
    assert (folder / "0001.png").is_file() and (folder / "grid.png").is_file()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (" ".join(["red star"] * 20), "the limit is 28"),
        ("zqxv bnmw qqqq", "no known words"),
        ("  ...  ", "empty prompt"),
    ],
)
def test_bad_prompts_are_one_line_errors(tiny: tuple[Path, Path], tmp_path: Path, capsys, prompt, message) -> None:
    model, tokenizer = (str(p) for p in tiny)
    args = [
        "generate",
        "--model",
        model,
        "--tokenizer",
        tokenizer,
        "--prompt",
        prompt,
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("error: --prompt: ")
    assert not (tmp_path / "x.png").exists()


def test_caption_file_error_names_the_line(text_tokenizer, tmp_path: Path) -> None:
    captions = tmp_path / "c.txt"
    captions.write_text("a red star\n\n", encoding="utf-8")
    from grainvl.recipes.generate import read_captions

    with pytest.raises(DataError, match=r"c.txt: line 2: empty prompt"):
        read_captions(captions, text_tokenizer, 30)
    assert check_prompt("A Red Star!", text_tokenizer, 30, "--prompt", None) == "a red star"


def test_evaluation_writes_id_and_ood_rows_and_grids(tiny: tuple[Path, Path], image_world: Path, tmp_path) -> None:
    model, tokenizer = (str(p) for p in tiny)
    run = tmp_path / "eval"
    args = ["generate", "--model", model, "--tokenizer", tokenizer, "--world", str(image_world), "--out", str(run)]
    assert main([*args, "--samples", "1", "--judge-model", "xvlm-tiny"]) == 0
    rows = [json.loads(line) for line in (run / "results.jsonl").open()]
    generated = {(r["split"], r["metric"]) for r in rows if r["model"] == model}
    for split in ("id", "ood"):
        for metric in ("fid_efficientnet_lite0", "attr_acc", "attr_count_acc", "caption_r@1"):
            assert (split, metric) in generated
    ceiling = [r for r in rows if r["model"].startswith("real images")]
    assert {r["split"] for r in ceiling} == {"id", "ood"} and all(0 <= r["value"] <= 1 for r in ceiling)
    assert (run / "grid_id.png").is_file() and (run / "grid_ood.png").is_file()


# ---------------------------------------------------------------------------------------------- benchmark helpers
def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_davinci", ROOT / "benchmarks" / "bench_davinci.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_davinci"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_table_and_curves_on_fake_numbers(tmp_path: Path) -> None:
    bench = _bench_module()
    rows = [
        {"images": n, "objectives": obj, "plm_test_loss": 5.0 - i - 0.1 * j, "fid_efficientnet_lite0": 90.0 - i}
        for i, n in enumerate((100, 1000, 10000))
        for j, obj in enumerate(bench.OBJECTIVE_SETS)
    ]
    rows.append({"images": 100, "objectives": "pim", "plm_test_loss": None, "fid_efficientnet_lite0": 99.0})
    table = bench.format_table(rows[:-1], ["plm_test_loss", "fid_efficientnet_lite0"])
    lines = table.splitlines()
    assert lines[0].startswith("| images | objectives |") and len(lines) == 2 + 9
    assert "| 1,000 | both | 3.800 | 89.000 |" in table
    assert bench.format_table(rows[-1:], ["plm_test_loss"]).splitlines()[-1] == "| 100 | pim | — |"
    out = tmp_path / "curves.png"
    bench.plot_curves(rows[:-1], ["plm_test_loss", "fid_efficientnet_lite0"], out)
    with Image.open(out) as image:
        assert image.size[0] > 200
