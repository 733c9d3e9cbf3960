"""Sub-commands that live in their own modules.

Each module here defines ``register(sub: argparse._SubParsersAction) -> None`` which adds one
top-level command (``grainvl convert``, ``grainvl finetune`` ...) and sets ``func`` on it. Modules
are discovered by name, so adding a command never means editing a shared list. Keep module-level
imports light (argparse, pathlib): the heavy ones belong inside the command function, so that
``grainvl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction) -> None:
    """Add every command module's parser, in alphabetical order of module name."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
