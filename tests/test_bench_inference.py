"""grainvl.bench.inference: the towers under eager / torch.compile / onnxruntime, parity on the retrieval,
VQA and grounding forwards (benchmarks/bench_inference.py's), and ``grainvl bench --latency-backend``."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import grainvl.recipes.bench as bench_recipe
from grainvl.bench.inference import Towers, auto_backend, check_backend, load_towers, max_abs_diff, route_towers
from grainvl.cli import main as cli_main
from grainvl.models.export import TOLERANCE
from grainvl.models.factory import get_model_config, get_tokenizer
from grainvl.models.xvlm import XVLM
from grainvl.recipes.bench import BenchOptions, ModelEntry, bench_task
from grainvl.tasks.base import inference_call
from grainvl.tasks.grounding import GroundingModule


def _load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_inference"] = module
    spec.loader.exec_module(module)
    return module


bench_inference = _load_benchmark()


@pytest.fixture(scope="module")
def tiny_model() -> XVLM:
    # The attention box head (xvlm-small's) reads the image patches too, so grounding depends on every tower.
    config = dataclasses.replace(get_model_config("xvlm-tiny"), box_head="attention")
    torch.manual_seed(0)
    return XVLM(config).eval()


@pytest.fixture(scope="module")
def forwards(tiny_model: XVLM) -> dict[str, Any]:
    return bench_inference.task_forwards(tiny_model, get_tokenizer(tiny_model.config))


def counting(towers: Towers, calls: Counter[str]) -> Towers:
    """``towers`` whose three callables count their calls in ``calls`` (so a test sees the back-end really ran)."""

    def wrap(name: str, fn: Any) -> Any:
        def call(*inputs: torch.Tensor) -> Any:
            calls[name] += 1
            return fn(*inputs)

        return call

    return dataclasses.replace(
        towers, image=wrap("image", towers.image), text=wrap("text", towers.text), fusion=wrap("fusion", towers.fusion)
    )


def assert_parity(model: XVLM, forwards: dict[str, Any], towers: Towers) -> None:
    """Every output of the three forwards through ``towers`` within TOLERANCE of eager, each tower used once each."""
    for name, forward in forwards.items():
        expected = forward()
        calls: Counter[str] = Counter()
        with route_towers(model, counting(towers, calls)):
            got = forward()
        diff = max_abs_diff(got, expected)
        assert max(diff.values()) <= TOLERANCE, (name, diff)
        assert calls == {"image": 1, "text": 1, "fusion": 1}, (name, calls)
        assert not any(key in vars(model) for key in ("encode_image", "encode_text", "fuse"))  # restored


def test_onnx_towers_keep_parity_on_the_three_forwards(tiny_model: XVLM, forwards: dict[str, Any]) -> None:
    towers = load_towers(tiny_model, "onnx")
    assert towers.backend == "onnx" and towers.prepare_s > 0
    assert_parity(tiny_model, forwards, towers)
    out = forwards["grounding"]()["box"]
    assert out.shape == (1, 4) and float(out.min()) > 0 and float(out.max()) < 1  # a sigmoid box


def test_onnx_towers_of_a_fusion_without_image_inputs(tiny_model: XVLM) -> None:
    # Pruning can leave no cross-attention head: the fusion graph then drops its image inputs.
    config = tiny_model.config
    text = dataclasses.replace(config.text, layer_cross_heads=[0] * config.text.num_layers)
    torch.manual_seed(3)
    model = XVLM(dataclasses.replace(config, text=text)).eval()
    assert_parity(model, bench_inference.task_forwards(model, get_tokenizer(config)), load_towers(model, "onnx"))


@pytest.mark.slow  # inductor compiles three graphs (~20-40 s cold on 1-2 cores)
def test_compiled_towers_keep_parity_on_the_three_forwards(tiny_model: XVLM, forwards: dict[str, Any]) -> None:
    assert_parity(tiny_model, forwards, load_towers(tiny_model, "compile"))


def test_eager_towers_are_the_model_itself(tiny_model: XVLM, forwards: dict[str, Any]) -> None:
    towers = load_towers(tiny_model, "eager")
    image = torch.randn(2, 3, 64, 64)
    ids, atts = torch.randint(5, 900, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        embeds, feat = towers.image(image)
        assert torch.equal(embeds, tiny_model.vision_encoder(image))
        assert torch.equal(feat, tiny_model.image_feat(embeds))
        text, text_feat = towers.text(ids, atts)
        assert torch.equal(text, tiny_model.encode_text(ids, atts))
        assert torch.equal(text_feat, tiny_model.text_feat(text))
    calls: Counter[str] = Counter()
    with route_towers(tiny_model, counting(towers, calls)) as routed:  # eager routes nothing: the model's own path
        assert routed is tiny_model
        forwards["retrieval"]()
    assert not calls


def test_route_towers_is_undone_on_error_and_not_nested(tiny_model: XVLM) -> None:
    fake = Towers("onnx", image=lambda x: (x, x), text=lambda i, a: (i, i), fusion=lambda t, ta, v, va: (t, t))
    marker = torch.ones(1, 2)
    with pytest.raises(KeyError), route_towers(tiny_model, fake):
        assert tiny_model.encode_text(marker, marker) is marker  # the fake text tower runs
        raise KeyError("boom")
    assert "encode_text" not in vars(tiny_model)
    with (
        route_towers(tiny_model, fake),
        pytest.raises(RuntimeError, match="already routed"),
        route_towers(tiny_model, fake),
    ):
        pass


def test_unknown_backend_is_a_clear_error(tiny_model: XVLM, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'; choose from eager, compile, onnx"):
        check_backend("tensorrt")
    with pytest.raises(ValueError, match="choose from eager, compile, onnx"):
        load_towers(tiny_model, "tvm")
    with pytest.raises(ValueError, match="latency_backend 'onnxruntime'; choose from auto, eager, compile, onnx"):
        BenchOptions(latency_backend="onnxruntime")
    with pytest.raises(ValueError, match="onnx runs fp32 graphs"):
        BenchOptions(latency_backend="onnx", precision="bf16")
    assert BenchOptions().latency_backend == "auto"
    world = tmp_path / "world"
    world.mkdir()
    base = ["bench", "--world", str(world), "--out", str(tmp_path / "out"), "--models", "xvlm-tiny"]
    assert cli_main([*base, "--set", "latency_backend=tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "choose from auto, eager, compile, onnx" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):  # the flag's own choices (argparse usage error)
        cli_main([*base, "--latency-backend", "tensorrt"])


def test_auto_backend_is_onnx_only_where_onnx_runs(tiny_model: XVLM) -> None:
    assert auto_backend(tiny_model) == "onnx"
    assert auto_backend(tiny_model, precision="bf16") == "eager"  # the graphs are fp32
    assert auto_backend(torch.nn.Linear(2, 2)) == auto_backend(None) == "eager"  # not an X-VLM (DaVinci, a fake)
    int8 = torch.ao.quantization.quantize_dynamic(tiny_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    assert auto_backend(int8) == "eager"  # dynamically quantised linears do not export


# ---------------------------------------------------------------------------------------------- the bench option
class _GroundingTask:
    name = "grounding"
    primary_metric = "acc"

    def latency_call(self, module: GroundingModule, tokenizer: Any, world: Path, batch_size: int) -> Any:
        image = torch.randn(batch_size, 3, 64, 64)
        ids, atts = torch.randint(5, 900, (batch_size, 7)), torch.ones(batch_size, 7, dtype=torch.long)
        return inference_call(module, lambda: module.predict(image, ids, atts))


class _Backend:
    """Stands in for fine-tuning: the tiny model as a grounding module, a fixed score."""

    def __init__(self, model: XVLM) -> None:
        self.model = model

    def finetune(self, *args: Any) -> dict[str, Any]:
        return {}

    def load(self, run_dir: Path, world: Path) -> tuple[Any, Any, Any]:
        return _GroundingTask(), GroundingModule(self.model), None

    def evaluate(self, task: Any, module: Any, tokenizer: Any, world: Path, split: str, out_dir: Path) -> dict:
        return {"acc": 50.0}


@pytest.mark.parametrize("latency_backend", ["eager", "onnx", "auto"])
def test_latency_backend_reaches_the_latency_call(
    tiny_model: XVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, latency_backend: str
) -> None:
    calls: Counter[str] = Counter()
    real_load = bench_recipe.load_towers
    monkeypatch.setattr(bench_recipe, "load_towers", lambda model, backend: counting(real_load(model, backend), calls))
    options = BenchOptions(
        latency_backend=latency_backend,
        use_codecarbon=False,
        warmup=2,
        repeats=3,
        throughput_batch=2,
        throughput_repeats=1,
        device="cpu",
    )
    entry, out = ModelEntry("tiny", "tiny"), tmp_path / "out"
    rows = bench_task(entry, "grounding", tmp_path, out, options, _Backend(tiny_model), {})
    row = rows[0]
    assert row["status"] == "ok" and row["latency_ms"] > 0 and row["latency_repeats"] == 3
    if latency_backend == "eager":
        assert row["latency_backend"] == "eager" and "latency_eager_ms" not in row and not calls
    else:  # auto picks onnx for an X-VLM on the CPU in fp32
        assert row["latency_backend"] == "onnx" and row["latency_eager_ms"] > 0
        # Every warm-up and timed call of the grounding latency call ran the three ONNX towers, once each.
        assert calls == {"image": 5, "text": 5, "fusion": 5}
    assert not any(key in vars(tiny_model) for key in ("encode_image", "encode_text", "fuse"))
