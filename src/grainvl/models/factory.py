"""The model registry, the one model resolver, and the public constructors.

Every preset is data: ``architectures/<name>.json`` with a ``"family"`` key:

* ``"vl"``: an :class:`XVLMConfig` (``xvlm-tiny`` … ``x2vlm-large``), built by :func:`load_model`;
* ``"text"``: :class:`TextConfig` fields of a BERT text encoder without vocabulary (the tokenizer
  sets it), built by :func:`load_text_model` — Turc et al. 2019's compact BERTs ``bert-tiny`` …
  ``bert-base`` (``bert-small`` is TACO's small model);
* ``"davinci"``: a :class:`DaVinciConfig` (``davinci-tiny`` … ``davinci-base``), built by :func:`load_davinci_model`.

:func:`resolve_model` is the only place that turns what a user typed (``--model``, ``--teacher``,
``--models``, the Python API) into a :class:`ResolvedModel`: a registered name, an architecture JSON
file, a ``save_pretrained`` / Hugging Face folder, or a run folder (``model/``, ``encoder/``, or the
latest of ``checkpoints/``). Everything else loads from that description.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from grainvl.data.tokenization import load_tokenizer, resolve_tokenizer_folder
from grainvl.data.transforms import build_transform
from grainvl.errors import DataError
from grainvl.models.davinci import DaVinci, DaVinciConfig
from grainvl.models.text import (
    BertEncoderModel,
    MLMHead,
    TextConfig,
    load_hf_bert,
    read_hf_state_dict,
)
from grainvl.models.xvlm import XVLM, XVLMConfig, init_text_from_pretrained
from grainvl.utils.fileio import CHECKSUM_FILE, checksum_problem, load_model_safetensors

ARCHITECTURES = Path(__file__).parent / "architectures"
FAMILIES = ("vl", "text", "davinci")
Family = Literal["vl", "text", "davinci"]
Kind = Literal["preset", "file", "folder", "run"]

WEIGHTS_FILE = "model.safetensors"
HF_WEIGHTS = (WEIGHTS_FILE, "pytorch_model.bin")
# The int8 flag file that ``grainvl compress`` writes (compress.quantize uses this name); the resolver only
# reports the flag, compress validates and applies it.
QUANTIZE_FLAG_FILE = "quantize.json"
# Run folders: the final model (finetune / pretrain: ``model/``; pretrain-text: ``encoder/``).
RUN_MODEL_DIRS = ("model", "encoder")
_CHECKPOINT_PREFIX = "model."  # training modules (PretrainTask, TaskModule) hold the XVLM as ``.model``
_TEXT_KEYS = frozenset(f.name for f in dataclasses.fields(TextConfig)) - {"vocab_size", "pad_token_id"}


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name or path stands for; nothing is built or read beyond config files."""

    source: str
    """The input as given."""
    label: str
    """Its name in results tables: the preset, or the folder's (the run's for ``RUN/model``)."""
    kind: Kind
    family: Family
    config: XVLMConfig | TextConfig | DaVinciConfig
    folder: Path | None = None
    """Folder of the weights' config and tokenizer files (and ``quantize.json``, ``masks.safetensors``)."""
    weights: Path | None = None
    """Weights file; None: built from ``config`` (random, or unimodal towers from packaged weights)."""
    weights_prefix: str = ""
    """Key prefix of the model inside ``weights`` (a training checkpoint's ``model.``)."""
    quantize: dict[str, Any] | None = None
    """The folder's ``quantize.json`` (``grainvl compress … quantize``): load, fine-tune fp32, serve int8."""

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def expect(self, family: Family) -> ResolvedModel:
        """Itself, or a one-line ValueError when it is another family's model."""
        if self.family != family:
            what = {"vl": "a vision-language model", "text": "a text encoder", "davinci": "a DaVinci encoder-decoder"}
            raise ValueError(
                f"model {self.source!r} is {what[self.family]} ({self.kind}), not {what[family]}; "
                f"{family} models: {', '.join(list_models(family))}"
            )
        return self


# ---------------------------------------------------------------------------------------------- registry
def _registry() -> dict[str, Path]:
    return {p.stem: p for p in sorted(ARCHITECTURES.glob("*.json"))}


def _read_architecture(path: Path) -> dict[str, Any]:
    try:
        arch = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(arch, dict):
        raise ValueError(f"{path}: expected a JSON object (an architecture)")
    return arch


def _family_of(arch: dict[str, Any], path: Path) -> Family:
    # Registered files say it; a user's file may leave it out (an XVLMConfig has a vision tower).
    family = arch.get("family", "vl" if "vision" in arch else "text")
    if family not in FAMILIES:
        raise ValueError(f"{path}: family must be one of {FAMILIES}, got {family!r}")
    return family


def list_models(family: str | None = None) -> list[str]:
    """Names of the registered presets, optionally of one family (``"vl"`` or ``"text"``)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; families: {', '.join(FAMILIES)}")
    names = _registry()
    if family is None:
        return sorted(names)
    return sorted(n for n, p in names.items() if _family_of(_read_architecture(p), p) == family)


def architecture_config(path: str | Path) -> tuple[Family, XVLMConfig | TextConfig | DaVinciConfig]:
    """(family, config) of an architecture JSON file (registered or not)."""
    path = Path(path)
    arch = _read_architecture(path)
    family = _family_of(arch, path)
    fields = {k: v for k, v in arch.items() if k != "family"}
    if family == "vl":
        return family, xvlm_config(fields, path)
    if family == "davinci":
        return family, davinci_config(fields, path)
    fields.pop("name", None)
    unknown = sorted(set(fields) - _TEXT_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown TextConfig field(s) {unknown}; known: {sorted(_TEXT_KEYS)}")
    return family, TextConfig(**fields)


def xvlm_config(fields: dict[str, Any], source: str | Path) -> XVLMConfig:
    """``XVLMConfig.from_dict`` with one-line ValueErrors naming ``source`` (a missing section, a misspelt field)."""
    missing = [section for section in ("vision", "text") if not isinstance(fields.get(section), dict)]
    if missing:
        raise ValueError(f"{source}: an XVLMConfig needs {' and '.join(repr(m) for m in missing)} section(s)")
    try:
        return XVLMConfig.from_dict(fields)
    except TypeError as error:  # a dataclass's unexpected or missing keyword argument
        raise ValueError(f"{source}: {error}") from None


def davinci_config(fields: dict[str, Any], source: str | Path) -> DaVinciConfig:
    """``DaVinciConfig.from_dict`` with one-line ValueErrors naming ``source``."""
    try:
        return DaVinciConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


# ---------------------------------------------------------------------------------------------- resolver
def default_label(source: str | Path) -> str:
    """A registered name is its own label, a path its name (its parent's for ``RUN/model``/``RUN/encoder``)."""
    path = Path(source)
    if not path.exists():
        return str(source)
    path = path.resolve()
    return path.parent.name if path.name in RUN_MODEL_DIRS and path.parent.name else path.name


def resolve_model(source: str | Path | ResolvedModel) -> ResolvedModel:
    """The model behind a registered name, an architecture JSON, a model folder or a run folder.

    Raises a one-line ValueError for an unknown name, FileNotFoundError for a path that holds no model.
    """
    if isinstance(source, ResolvedModel):
        return source
    text, path = str(source), Path(source)
    label = default_label(source)
    registered = _registry()
    if text in registered and not path.exists():  # a local folder of the same name wins
        family, config = architecture_config(registered[text])
        return ResolvedModel(text, label, "preset", family, config)
    if path.is_file() and path.suffix == ".json":
        family, config = architecture_config(path)
        return ResolvedModel(text, label, "file", family, config)
    if path.is_dir():
        return _resolve_folder(text, label, path)
    if path.exists():
        raise FileNotFoundError(f"{path}: not an architecture .json file nor a model folder")
    raise ValueError(
        f"model {text!r} is neither a folder nor a registered name: not a preset ({', '.join(registered)}), "
        "an architecture .json file, a model folder (config.json + weights) or a run folder "
        f"({'/, '.join(RUN_MODEL_DIRS)}/ or checkpoints/latest)"
    )


def _resolve_folder(source: str, label: str, path: Path) -> ResolvedModel:
    found = _model_folder(source, label, path, "folder")
    for name in RUN_MODEL_DIRS:
        found = found or _model_folder(source, label, path / name, "run")
    found = found or _checkpoint_run(source, label, path)
    if found is None:
        raise FileNotFoundError(
            f"{path}: neither a model folder (config.json + {' or '.join(HF_WEIGHTS)}) nor a run folder with "
            f"{'/, '.join(RUN_MODEL_DIRS)}/ or checkpoints/latest"
        )
    return found


def _model_folder(source: str, label: str, folder: Path, kind: Kind) -> ResolvedModel | None:
    """A grainvl ``save_pretrained`` folder (family vl) or a Hugging Face BERT folder (family text)."""
    config_file = folder / "config.json"
    weights = next((folder / w for w in HF_WEIGHTS if (folder / w).is_file()), None)
    if not config_file.is_file() or weights is None:
        return None
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    config: XVLMConfig | TextConfig | DaVinciConfig
    family: Family
    if raw.get("family") == "davinci":
        if weights.name != WEIGHTS_FILE:
            return None
        config, family = davinci_config(raw, config_file), "davinci"
    elif "vision" in raw and "text" in raw:
        if weights.name != WEIGHTS_FILE:
            return None
        config, family = xvlm_config({k: v for k, v in raw.items() if k != "family"}, config_file), "vl"
    elif "num_hidden_layers" in raw:
        config, family = TextConfig.from_hf_config(raw), "text"
    else:
        return None  # e.g. a run's own config.json next to model/ (checked next)
    flag = folder / QUANTIZE_FLAG_FILE
    quantize = json.loads(flag.read_text(encoding="utf-8")) if flag.is_file() else None
    return ResolvedModel(source, label, kind, family, config, folder, weights, quantize=quantize)


def _checkpoint_run(source: str, label: str, run: Path) -> ResolvedModel | None:
    """An unfinished vision-language run: ``checkpoints/latest`` weights on the architecture its config names."""
    latest = run / "checkpoints" / "latest"
    run_config = run / "config.json"
    if not latest.is_file() or not run_config.is_file():
        return None
    weights = run / "checkpoints" / latest.read_text(encoding="utf-8").strip() / WEIGHTS_FILE
    model = json.loads(run_config.read_text(encoding="utf-8")).get("model")
    if not weights.is_file() or not isinstance(model, str):
        return None
    # The latest checkpoint's recorded sha256 (train/checkpoint.py): damaged weights are one line here, not a
    # model that loads and gives inf/nan later. Resuming the run falls back to an intact checkpoint instead.
    if (weights.parent / CHECKSUM_FILE).is_file():
        problem = checksum_problem(weights.parent, (WEIGHTS_FILE,))
        if problem is not None:
            raise DataError(weights.parent, None, f"damaged checkpoint ({problem}); name an intact checkpoint folder")
    base = resolve_model(model)  # the architecture (and tokenizer) the run started from
    if base.family == "text":
        base.expect("vl")  # text runs keep no checkpoints/latest model: the one-line family error
    return ResolvedModel(source, label, "run", base.family, base.config, base.folder, weights, _CHECKPOINT_PREFIX)


# ---------------------------------------------------------------------------------------------- loading
def get_model_config(name: str | Path | ResolvedModel) -> XVLMConfig:
    """The :class:`XVLMConfig` of any vision-language model input (see :func:`resolve_model`)."""
    config = resolve_model(name).expect("vl").config
    assert isinstance(config, XVLMConfig)
    return config


def load_model(source: str | Path | ResolvedModel, init_unimodal: bool = True) -> XVLM:
    """The fp32 :class:`XVLM` behind ``source``: its weights, or built from the architecture.

    ``init_unimodal``: a fresh model's towers start from the packaged pretrained weights where the
    architecture asks for them. A ``quantize.json`` flag is left to the caller (``resolved.quantize``).
    """
    resolved = resolve_model(source).expect("vl")
    config = resolved.config
    assert isinstance(config, XVLMConfig)
    if resolved.weights is None:
        model = XVLM(config)
        if init_unimodal:
            init_text_from_pretrained(model)
        return model
    if not resolved.weights_prefix and resolved.folder is not None and resolved.weights.parent == resolved.folder:
        return XVLM.from_pretrained(resolved.folder)
    # A training checkpoint: no downloads or unimodal init, the weights replace them all.
    vision = dataclasses.replace(config.vision, pretrained=False)
    model = XVLM(dataclasses.replace(config, text_init=None, vision=vision))
    prefix = resolved.weights_prefix
    state = {k[len(prefix) :]: v for k, v in load_model_safetensors(resolved.weights).items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("predictions.decoder.weight", "predictions.decoder.bias"))]
    if missing or unexpected:
        raise ValueError(f"{resolved.weights}: missing keys {missing[:10]}, unexpected keys {list(unexpected)[:10]}")
    return model


def load_text_model(source: str | Path | ResolvedModel, tokenizer: str | Path | None = None) -> tuple[Any, Any, Any]:
    """-> (BertEncoderModel, tied MLMHead, tokenizer) from a text preset / JSON (random init) or a HF folder.

    A folder's ``cls.predictions.*`` weights (a BertForMaskedLM checkpoint) load into the head; the
    decoder is always tied to the word embeddings, as in BERT. Presets take the tokenizer's vocabulary.
    """
    resolved = resolve_model(source).expect("text")
    if resolved.folder is not None:
        tok = load_tokenizer(resolve_tokenizer_folder(tokenizer) if tokenizer else resolved.folder)
        config, encoder, _ = load_hf_bert(resolved.folder)
        head = MLMHead(config)
        state = read_hf_state_dict(resolved.folder)
        head_state = {k.removeprefix("cls."): v for k, v in state.items() if k.startswith("cls.predictions.")}
        head_state = {k: v for k, v in head_state.items() if not k.startswith("predictions.decoder.")}
        if head_state:
            head.load_state_dict(head_state, strict=False)
    else:
        tok = load_tokenizer(resolve_tokenizer_folder(tokenizer or "minilm"))
        assert isinstance(resolved.config, TextConfig)
        config = dataclasses.replace(resolved.config, vocab_size=len(tok), pad_token_id=tok.pad_token_id or 0)
        encoder, head = BertEncoderModel(config), MLMHead(config)
    if len(tok) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model only {config.vocab_size} embeddings")
    head.tie_weights(encoder.embeddings)
    return encoder, head, tok


def load_davinci_model(source: str | Path | ResolvedModel) -> DaVinci:
    """The :class:`DaVinci` behind ``source``: a preset / JSON (fresh, the stem from its packaged weights where the
    architecture asks), a ``save_pretrained`` folder, or a run folder (``model/`` or its latest checkpoint)."""
    resolved = resolve_model(source).expect("davinci")
    config = resolved.config
    assert isinstance(config, DaVinciConfig)
    if resolved.weights is None:
        return DaVinci(config)
    if not resolved.weights_prefix and resolved.folder is not None and resolved.weights.parent == resolved.folder:
        return DaVinci.from_pretrained(resolved.folder)
    model = DaVinci(dataclasses.replace(config, stem_pretrained=False))  # a training checkpoint replaces every weight
    prefix = resolved.weights_prefix
    state = {k[len(prefix) :]: v for k, v in load_model_safetensors(resolved.weights).items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model


def create_model(
    name: str | Path | ResolvedModel, pretrained: str | Path | None = None, init_unimodal: bool = True
) -> XVLM:
    """Build (or load) a vision-language model; ``pretrained`` is a model/run folder to load instead."""
    return load_model(pretrained if pretrained is not None else name, init_unimodal=init_unimodal)


def get_tokenizer(name_or_config: str | Path | XVLMConfig | ResolvedModel) -> Any:
    """The tokenizer a model uses: its folder's own files, else the config's (``minilm``, a packaged name, a folder)."""
    if isinstance(name_or_config, XVLMConfig):
        source = name_or_config.tokenizer
    else:
        resolved = resolve_model(name_or_config)
        folder = resolved.folder
        if folder is not None and ((folder / "tokenizer.json").exists() or (folder / "vocab.txt").exists()):
            return load_tokenizer(folder)
        source = resolved.config.tokenizer if isinstance(resolved.config, (XVLMConfig, DaVinciConfig)) else "minilm"
    return load_tokenizer(resolve_tokenizer_folder(source))


def create_model_and_transforms(
    name: str | Path | ResolvedModel, pretrained: str | Path | None = None
) -> tuple[XVLM, Any, Any]:
    """(model, train transform, eval transform); transforms use the vision tower's own normalisation."""
    model = create_model(name, pretrained=pretrained)
    return (model, *model_transforms(model))


def model_transforms(model: XVLM) -> tuple[Any, Any]:
    """(train, eval) image transforms at the model's resolution and normalisation."""
    tower, resolution = model.vision_encoder, model.config.vision.resolution
    train = build_transform("pretrain", resolution, tower.input_mean, tower.input_std)
    return train, build_transform("test", resolution, tower.input_mean, tower.input_std)
