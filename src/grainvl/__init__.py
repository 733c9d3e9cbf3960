"""grainvl: multi-grained vision-language models and efficient language models.

Public API::

    from grainvl import create_model_and_transforms, get_tokenizer, list_models
    model, train_transform, eval_transform = create_model_and_transforms("xvlm-small")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_model", "create_model_and_transforms", "get_tokenizer", "list_models", "load_model_and_preprocess"]


def __getattr__(name: str) -> Any:
    # Lazy so that `grainvl world` and `grainvl data check` do not pay for importing torch.
    if name in ("create_model", "create_model_and_transforms", "get_tokenizer", "list_models"):
        from grainvl.models import factory

        return getattr(factory, name)
    if name == "load_model_and_preprocess":
        from grainvl.models.factory import create_model_and_transforms

        def load_model_and_preprocess(path: str) -> Any:
            """(model, eval transform, tokenizer) from a ``save_pretrained`` folder."""
            from grainvl.models.factory import get_tokenizer

            model, _, evaluate = create_model_and_transforms(path, pretrained=path)
            return model.eval(), evaluate, get_tokenizer(path)

        return load_model_and_preprocess
    raise AttributeError(f"module 'grainvl' has no attribute {name!r}")
