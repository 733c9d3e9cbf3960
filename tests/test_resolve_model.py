"""``resolve_model``: every input ``--model`` accepts, what it resolves to, and one-line errors for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grainvl import load_model_and_preprocess
from grainvl.compress.quantize import QUANTIZE_FILE, count_quantized_linears, save_quantized_xvlm
from grainvl.errors import DataError
from grainvl.models import factory
from grainvl.models.factory import (
    ResolvedModel,
    create_model_and_transforms,
    get_tokenizer,
    list_models,
    load_model,
    load_text_model,
    resolve_model,
)
from grainvl.models.text import BertEncoderModel, save_hf_bert
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask
from grainvl.train.checkpoint import save_checkpoint

TINY_TEXT = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``save_pretrained`` folder of xvlm-tiny (random weights, with tokenizer files)."""
    torch.manual_seed(0)
    model = load_model("xvlm-tiny", init_unimodal=False)
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    return model.save_pretrained(folder, tokenizer=get_tokenizer("xvlm-tiny"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_family() -> None:
    assert set(list_models()) == set(list_models("vl")) | set(list_models("text")) | set(list_models("davinci"))
    assert {"davinci-tiny", "davinci-small", "davinci-base"} <= set(list_models("davinci"))
    assert {"xvlm-tiny", "xvlm-small", "x2vlm-base", "x2vlm-large"} <= set(list_models("vl"))
    assert {"bert-tiny", "bert-mini", "bert-small", "bert-medium", "bert-base"} <= set(list_models("text"))
    with pytest.raises(ValueError, match="unknown model family 'audio'"):
        list_models("audio")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_file_names_itself_and_its_family(name: str) -> None:
    raw = json.loads((factory.ARCHITECTURES / f"{name}.json").read_text(encoding="utf-8"))
    assert raw["name"] == name and raw["family"] in factory.FAMILIES
    resolved = resolve_model(name)
    assert (resolved.kind, resolved.family, resolved.label, resolved.weights) == ("preset", raw["family"], name, None)
    assert not resolved.pretrained and resolved.quantize is None


def test_quantize_flag_file_name_matches_compress() -> None:
    assert factory.QUANTIZE_FLAG_FILE == QUANTIZE_FILE


# ---------------------------------------------------------------------------------------------- inputs
def test_architecture_json_files(tmp_path: Path) -> None:
    vl = tmp_path / "my-vl.json"
    vl.write_text(json.dumps(resolve_model("xvlm-tiny").config.to_dict()), encoding="utf-8")  # no "family"
    resolved = resolve_model(vl)
    assert (resolved.kind, resolved.family, resolved.label) == ("file", "vl", "my-vl.json")
    assert resolved.config == resolve_model("xvlm-tiny").config
    text = tmp_path / "nano.json"
    text.write_text(json.dumps(TINY_TEXT), encoding="utf-8")
    assert (resolve_model(text).kind, resolve_model(text).family) == ("file", "text")
    encoder, head, tokenizer = load_text_model(text)
    assert (
        encoder.config.vocab_size == len(tokenizer)
        and head.predictions.decoder.weight is encoder.embeddings.word_embeddings.weight
    )


def test_save_pretrained_folder_and_run_folder(tiny_folder: Path, tmp_path: Path) -> None:
    resolved = resolve_model(tiny_folder)
    assert (resolved.kind, resolved.family, resolved.folder, resolved.label) == ("folder", "vl", tiny_folder, "tiny")
    assert resolved.pretrained and resolved.weights == tiny_folder / "model.safetensors"
    loaded = load_model(str(tiny_folder))
    assert _same_weights(loaded, XVLM.from_pretrained(tiny_folder))
    run = tmp_path / "my-run"
    (run / "model").mkdir(parents=True)
    for f in tiny_folder.iterdir():
        (run / "model" / f.name).write_bytes(f.read_bytes())
    (run / "config.json").write_text(json.dumps({"task": "retrieval", "model": "xvlm-tiny"}), encoding="utf-8")
    from_run = resolve_model(run)
    assert (from_run.kind, from_run.folder, from_run.label) == ("run", run / "model", "my-run")
    assert resolve_model(run / "model").label == "my-run"  # RUN/model is named after its run
    assert _same_weights(load_model(run), loaded)
    assert len(get_tokenizer(from_run)) == len(get_tokenizer("xvlm-tiny"))


def test_run_folder_with_checkpoints_only_loads_the_latest(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = load_model("xvlm-tiny", init_unimodal=False)
    run = tmp_path / "unfinished"
    save_checkpoint(run, 1, PretrainTask(load_model("xvlm-tiny", init_unimodal=False)), None, None)
    save_checkpoint(run, 2, PretrainTask(model), None, None)  # latest -> step 2
    (run / "config.json").write_text(json.dumps({"model": "xvlm-tiny"}), encoding="utf-8")
    resolved = resolve_model(run)
    assert (resolved.kind, resolved.family, resolved.weights_prefix) == ("run", "vl", "model.")
    assert resolved.weights is not None and resolved.weights.parent.name == "step_00000002"
    assert _same_weights(load_model(resolved), model)
    # Overwritten bytes in the latest checkpoint's weights: one line naming the folder, not a model that loads.
    weights = resolved.weights
    data = bytearray(weights.read_bytes())
    data[-2000:-1000] = bytes(1000)
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"step_00000002: damaged checkpoint \(model.safetensors: sha256 mismatch\)"):
        resolve_model(run)


def test_quantized_folder_is_flagged_and_loads_int8_through_the_api(tiny_folder: Path, tmp_path: Path) -> None:
    folder = save_quantized_xvlm(XVLM.from_pretrained(tiny_folder), tmp_path / "int8", get_tokenizer(tiny_folder))
    resolved = resolve_model(folder)
    assert resolved.quantize is not None and resolved.quantize["method"] == "dynamic-int8"
    assert isinstance(load_model(resolved).text_proj, torch.nn.Linear)  # load_model stays fp32 (fine-tuning)
    model, transform, tokenizer = load_model_and_preprocess(str(folder))
    assert count_quantized_linears(model) > 0 and callable(transform) and len(tokenizer) > 0
    fp32, _, _ = load_model_and_preprocess(str(tiny_folder))
    assert count_quantized_linears(fp32) == 0 and not fp32.training


def test_hugging_face_text_folder_and_pretrain_text_run(tmp_path: Path) -> None:
    arch = tmp_path / "nano.json"
    arch.write_text(json.dumps(TINY_TEXT), encoding="utf-8")
    encoder, head, tokenizer = load_text_model(arch)
    run = tmp_path / "text-run"
    save_hf_bert(run / "encoder", encoder, head, tokenizer)
    for source, kind in ((run / "encoder", "folder"), (run, "run")):
        resolved = resolve_model(source)
        assert (resolved.kind, resolved.family, resolved.label) == (kind, "text", "text-run")
        loaded, _, _ = load_text_model(resolved)
        assert isinstance(loaded, BertEncoderModel) and _same_weights(loaded, encoder)


def test_resolved_passes_through_and_families_are_checked() -> None:
    resolved = resolve_model("bert-tiny")
    assert resolve_model(resolved) is resolved and isinstance(resolved, ResolvedModel)
    with pytest.raises(ValueError, match="'bert-tiny' is a text encoder \\(preset\\), not a vision-language model"):
        load_model("bert-tiny")
    with pytest.raises(ValueError, match="'xvlm-tiny' is a vision-language model \\(preset\\), not a text encoder"):
        load_text_model("xvlm-tiny")


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_name_is_one_line_naming_the_input_and_what_was_looked_for() -> None:
    with pytest.raises(ValueError) as info:
        resolve_model("bert-gigantic")
    message = str(info.value)
    assert "\n" not in message and "'bert-gigantic'" in message
    for looked_for in ("not a preset (bert-base", "xvlm-tiny", "architecture .json file", "model folder", "run folder"):
        assert looked_for in message


def test_paths_without_a_model_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"neither a model folder .* nor a run folder"):
        resolve_model(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hi", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"notes\.txt: not an architecture \.json file nor a model folder"):
        resolve_model(notes)
    with pytest.raises(ValueError, match=r"missing\.json' is neither a folder nor a registered name"):
        resolve_model(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY_TEXT, "num_layerz": 3}), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown TextConfig field\\(s\\) \\['num_layerz'\\]"):
        resolve_model(bad)
    bad.write_text(json.dumps({"family": "audio"}), encoding="utf-8")
    with pytest.raises(ValueError, match="family must be one of"):
        resolve_model(bad)


# ---------------------------------------------------------------------------------------------- typed errors
def test_bad_inputs_raise_one_line_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'x2vlm-bsae' is neither a folder nor a registered name") as info:
        create_model_and_transforms("x2vlm-bsae")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="neither a folder nor a registered name"):
        get_tokenizer("nope")
    arch = tmp_path / "a.json"
    for content, message in [
        ({"family": "vl", "vision": {}}, "a.json: an XVLMConfig needs 'text' section"),
        ({"family": "vl"}, "needs 'vision' and 'text' section"),
        ({"family": "vl", "vision": {"bogus": 1}, "text": {}}, "a.json: .*unexpected keyword argument 'bogus'"),
    ]:
        arch.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            resolve_model(arch)
    arch.write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.json: not valid JSON"):
        resolve_model(arch)
    broken = tmp_path / "folder"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"vision": {"bogus": 1}, "text": {}}), encoding="utf-8")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"config\.json: .*'bogus'"):
        resolve_model(broken)
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        resolve_model(tmp_path)


# ---------------------------------------------------------------------------------------------- public API
def test_package_root_exports_the_public_classes_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, grainvl; assert 'torch' not in sys.modules, 'import grainvl loaded torch'\n"
        "from grainvl import XVLM, XVLMConfig, TextConfig, VisionConfig, Features, ResolvedModel, DataError\n"
        "from grainvl.models.xvlm import XVLM as X; assert XVLM is X and 'XVLM' in dir(grainvl)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extract_features_takes_the_tokenizer_output() -> None:
    torch.manual_seed(0)
    model = load_model("xvlm-tiny", init_unimodal=False).eval()
    tokenizer = get_tokenizer("xvlm-tiny")
    text = tokenizer(["a red circle", "two blue squares"], padding=True, return_tensors="pt")
    image = torch.randn(2, 3, model.config.vision.resolution, model.config.vision.resolution)
    with torch.no_grad():
        hf = model.extract_features({"image": image, **text})
        ours = model.extract_features({"image": image, "text_ids": text.input_ids, "text_atts": text.attention_mask})
        only_text = model.extract_features({"input_ids": text.input_ids}, mode="text")
    assert torch.equal(hf.fused, ours.fused) and torch.equal(hf.text_feat, ours.text_feat)
    assert only_text.text_feat.shape == ours.text_feat.shape
    with pytest.raises(ValueError, match="no text: expected 'text_ids'"):
        model.extract_features({"image": image}, mode="multimodal")
