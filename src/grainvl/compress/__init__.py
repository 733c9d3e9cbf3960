"""Model compression (EfficientVLM): distillation, modal-adaptive L0 pruning, physical removal.

See ``docs/compression.md``. Heavy submodules are imported on use.
"""

from __future__ import annotations

__all__ = ["distill", "prune", "recipes", "shrink"]
