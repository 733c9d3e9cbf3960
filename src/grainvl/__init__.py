"""grainvl: multi-grained vision-language models and efficient language models.

Public API::

    from grainvl import create_model_and_transforms, get_tokenizer, list_models
    model, train_transform, eval_transform = create_model_and_transforms("xvlm-small")
    model, eval_transform, tokenizer = load_model_and_preprocess("runs/finetune/model")

Every function takes what ``--model`` takes (:func:`resolve_model`): a registered preset, an
architecture JSON file, a ``save_pretrained`` folder or a run folder.
"""

from __future__ import annotations

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
__all__ = [*_FACTORY, "load_model_and_preprocess"]


def __getattr__(name: str) -> Any:
    if name in _FACTORY:
        # Deferred: `grainvl world` and `grainvl data check` import this package and must not pay for torch.
        from grainvl.models import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'grainvl' has no attribute {name!r}")


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
