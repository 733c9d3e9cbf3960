"""Typed dataclass configs: YAML files are serialised instances, CLI flags and dotted overrides win.

One way to configure everything: ``load_config(cls, yaml_path, overrides)`` builds a dataclass from
its defaults, then the YAML file, then ``key=value`` overrides (dotted keys reach nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from grainvl.utils.fileio import to_plain

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from defaults <- YAML file <- ``["a.b=1", ...]`` overrides; unknown keys are errors."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at top level")
        values = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} should look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    return _build(cls, values, where=str(path or "overrides"))


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[last] = value


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, where)  # type: ignore[arg-type]
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        else:
            value = _coerce(value, hint, f"{where}: {cls.__name__}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Scalars from YAML/overrides to the field's type: YAML 1.1 reads ``3e-4`` as a string, for one."""
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where} should be a number, got {value!r}") from None
    if hint is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{where} should be an integer, got {value!r}") from None
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass (tuples become lists)."""
    return to_plain(dataclasses.asdict(config))
