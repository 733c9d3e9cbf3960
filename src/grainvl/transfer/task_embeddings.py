"""Task embeddings from efficiently tuned parameters (TuPaTE, arXiv 2210.11705) and their similarities.

From one task's PET parameters (``PetlResult.params``, name -> tensor) to one vector:

* ``prompt``: the prompt matrix (n, d) averaged over the n prompt tokens -> (d,);
* ``prefix``: the prefix table (n, 2·L·H) (every layer's key and value prefix) averaged over the n
  prefix positions -> (2·L·H,), i.e. the per-layer prefixes concatenated;
* ``lora``: every A and B matrix flattened and concatenated in name order -> (Σ|A| + |B|,);
* ``bitfit``: every bias vector concatenated in name order -> (Σ|b|,).

Variants (``VARIANTS``): ``raw`` as the paper; ``delta`` = tuned minus initial parameters (removes the
shared random init of prompts/LoRA-A and the pretrained biases of BitFit, which otherwise dominate and
push every cosine towards 1 — the released TuPaTE vectors sit at 0.96–0.99); ``centered`` = raw minus
the mean over the task library (needs all tasks at once). Similarity is the cosine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor

VARIANTS: tuple[str, ...] = ("raw", "delta", "centered")


def pet_vector(method: str, params: Mapping[str, Tensor]) -> np.ndarray:
    """One task's PET parameters -> a 1-D float64 vector (see the module docstring for each method)."""
    if not params:
        raise ValueError("no PET parameters to embed")
    names = sorted(params)
    if method in ("prompt", "prefix"):
        if len(names) != 1 or params[names[0]].dim() != 2:
            raise ValueError(
                f"{method}: expected one (tokens, width) table, got {[tuple(params[n].shape) for n in names]}"
            )
        return params[names[0]].double().mean(0).numpy()  # (d,) or (2·L·H,)
    if method == "lora":
        names = [n for n in names if "lora_A" in n or "lora_B" in n]
    elif method == "bitfit":
        names = [n for n in names if "bias" in n]
    else:
        raise ValueError(f"unknown PET method {method!r}")
    if not names:
        raise ValueError(f"{method}: none of the parameters {sorted(params)} belong to this method")
    return np.concatenate([params[n].double().flatten().numpy() for n in names])


def task_vector(
    method: str, params: Mapping[str, Tensor], initial: Mapping[str, Tensor] | None = None, variant: str = "raw"
) -> np.ndarray:
    """``raw`` or ``delta`` (needs ``initial``) vector of one task; ``centered`` is library-wide, see
    :func:`library_embeddings`."""
    if variant == "delta":
        if initial is None:
            raise ValueError("variant 'delta' needs the initial parameters")
        return pet_vector(method, {n: params[n] - initial[n] for n in params})
    if variant in ("raw", "centered"):
        return pet_vector(method, params)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def center(embeddings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Subtract the mean vector over all tasks (the "centered" variant)."""
    if len(embeddings) < 2:
        raise ValueError("centering needs at least two task embeddings")
    mean = np.mean(np.stack(list(embeddings.values())), axis=0)
    return {name: vec - mean for name, vec in embeddings.items()}


def library_embeddings(
    method: str,
    params: Mapping[str, Mapping[str, Tensor]],
    initial: Mapping[str, Mapping[str, Tensor]] | None = None,
    variant: str = "raw",
) -> dict[str, np.ndarray]:
    """Embeddings of a task library ({task: PET params}) in one variant; shapes must agree."""
    vectors = {t: task_vector(method, p, initial[t] if initial else None, variant) for t, p in params.items()}
    shapes = {v.shape for v in vectors.values()}
    if len(shapes) > 1:
        raise ValueError(f"task embeddings differ in shape {sorted(shapes)}: tuned with different PET settings?")
    return center(vectors) if variant == "centered" else vectors


def cosine_matrix(embeddings: Mapping[str, np.ndarray], names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """-> (names, (T, T) cosine similarities); a zero vector has similarity 0 to everything."""
    names = list(embeddings) if names is None else names
    matrix = np.stack([np.asarray(embeddings[n], dtype=np.float64) for n in names])  # (T, D)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return names, unit @ unit.T


__all__ = ["VARIANTS", "center", "cosine_matrix", "library_embeddings", "pet_vector", "task_vector"]
