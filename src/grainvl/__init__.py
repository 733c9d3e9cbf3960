"""grainvl: multi-grained vision-language models and efficient language models.

Public API::

    from grainvl import create_model_and_transforms, get_tokenizer, list_models
    model, train_transform, eval_transform = create_model_and_transforms("xvlm-small")
    model, eval_transform, tokenizer = load_model_and_preprocess("runs/finetune/model")

Every function takes what ``--model`` takes (:func:`resolve_model`): a registered preset, an
architecture JSON file, a ``save_pretrained`` folder or a run folder. The public classes are here too
(``from grainvl import XVLM, XVLMConfig``). Every name loads lazily: ``import grainvl`` imports no torch.

A tokenizer's output goes straight into :meth:`XVLM.extract_features` (``input_ids`` / ``attention_mask``
are accepted as aliases of the datasets' ``text_ids`` / ``text_atts``)::

    text = tokenizer(["a red circle"], padding=True, return_tensors="pt")
    features = model.extract_features({"image": images, **text})
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FACTORY = (
    "create_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "list_models",
    "load_model",
    "load_text_model",
    "resolve_model",
)
# Public classes: name -> the module that defines it (imported on first use).
_CLASSES = {
    "XVLM": "grainvl.models.xvlm",
    "XVLMConfig": "grainvl.models.xvlm",
    "Features": "grainvl.models.xvlm",
    "VisionConfig": "grainvl.models.vision",
    "TextConfig": "grainvl.models.text",
    "BertEncoderModel": "grainvl.models.text",
    "ResolvedModel": "grainvl.models.factory",
    "DataError": "grainvl.errors",
}
__all__ = [*_FACTORY, "load_model_and_preprocess", *_CLASSES]


def __getattr__(name: str) -> Any:
    if name in _FACTORY:
        # Deferred: `grainvl world` and `grainvl data check` import this package and must not pay for torch.
        from grainvl.models import factory

        return getattr(factory, name)
    if name in _CLASSES:
        # Deferred: the classes' modules load torch; `import grainvl` must not.
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'grainvl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def load_model_and_preprocess(source: str) -> tuple[Any, Any, Any]:
    """(model in eval mode, eval transform, tokenizer) of any model input (see :func:`resolve_model`).

    A folder flagged int8 (``quantize.json`` of ``grainvl compress … quantize``) loads dynamically quantised.
    """
    # Deferred: the public API loads torch and the models only when asked, so `import grainvl` stays light.
    from grainvl.compress.quantize import quantize_dynamic_int8, read_quantize_flag
    from grainvl.models.factory import get_tokenizer, load_model, model_transforms, resolve_model

    resolved = resolve_model(source)
    model = load_model(resolved).eval()
    _, evaluate = model_transforms(model)
    if resolved.quantize is not None and resolved.folder is not None:
        spec = read_quantize_flag(resolved.folder) or {}
        model = quantize_dynamic_int8(model, skip=tuple(spec.get("skip", ())))
    return model, evaluate, get_tokenizer(resolved)
