"""Registered model variants (architecture files) and the public constructors.

Variants are data: ``architectures/<name>.json`` holds an :class:`XVLMConfig`. ``create_model``
builds one (initialising unimodal towers from the packaged pretrained weights where the file asks
for them), or loads a ``save_pretrained`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.data.transforms import build_transform
from grainvl.models.xvlm import XVLM, XVLMConfig, init_text_from_pretrained

ARCHITECTURES = Path(__file__).parent / "architectures"


def list_models() -> list[str]:
    """Names of the registered architectures."""
    return sorted(p.stem for p in ARCHITECTURES.glob("*.json"))


def get_model_config(name: str | Path) -> XVLMConfig:
    """A registered name, or a path to an architecture JSON file."""
    path = Path(name)
    if not path.suffix:
        path = ARCHITECTURES / f"{name}.json"
        if not path.exists():
            raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    if not path.exists():
        raise FileNotFoundError(f"architecture file not found: {path}")
    return XVLMConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def create_model(name: str | Path, pretrained: str | Path | None = None, init_unimodal: bool = True) -> XVLM:
    """Build a model by name; ``pretrained`` is a ``save_pretrained`` folder to load instead of initialising."""
    if pretrained is not None:
        return XVLM.from_pretrained(pretrained)
    model = XVLM(get_model_config(name))
    if init_unimodal:
        init_text_from_pretrained(model)
    return model


def get_tokenizer(name_or_config: str | Path | XVLMConfig) -> Any:
    """The tokenizer a model uses: the packaged MiniLM WordPiece vocabulary or a local folder."""

    if isinstance(name_or_config, XVLMConfig):
        source = name_or_config.tokenizer
    elif Path(name_or_config).is_dir():
        folder = Path(name_or_config)
        config = folder / "config.json"
        if (folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists():
            return load_tokenizer(folder)
        source = XVLMConfig.from_dict(json.loads(config.read_text())).tokenizer
    else:
        source = get_model_config(name_or_config).tokenizer
    return load_tokenizer(packaged_minilm_path() if source == "minilm" else Path(source))


def create_model_and_transforms(name: str | Path, pretrained: str | Path | None = None) -> tuple[XVLM, Any, Any]:
    """(model, train transform, eval transform); transforms use the vision tower's own normalisation."""

    model = create_model(name, pretrained=pretrained)
    tower, resolution = model.vision_encoder, model.config.vision.resolution
    train = build_transform("pretrain", resolution, tower.input_mean, tower.input_std)
    evaluate = build_transform("test", resolution, tower.input_mean, tower.input_std)
    return model, train, evaluate
