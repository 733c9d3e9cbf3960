"""Typed dataclass configs: YAML files are serialised instances, CLI flags and dotted overrides win.

One way to configure everything: ``load_config(cls, yaml_path, overrides, values)`` builds a dataclass
from its defaults, then the YAML file, then ``key=value`` override strings, then typed ``values``
(dotted keys reach nested dataclasses and dict fields). Code that already holds a config changes it in
memory with :func:`with_values` (typed values) or, at the command-line boundary only,
:func:`apply_overrides` (``key=value`` strings); neither goes through a file.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from grainvl.utils.fileio import to_plain

T = TypeVar("T")


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
    translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> T:
    """Build ``cls`` from defaults <- YAML file <- ``["a.b=1", ...]`` <- ``{"a.b": 1}``; unknown keys are errors.

    ``translate`` maps the YAML file's tree before the overrides apply (an official X-VLM config becomes
    grainvl's keys, so ``--set`` and the flags still win over it).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at top level")
        tree = translate(loaded) if translate is not None else loaded
    for key, value in parse_overrides(overrides or []).items():
        _set_dotted(tree, key, value)
    for key, value in (values or {}).items():
        _set_dotted(tree, key, value)
    return _build(cls, tree, where=str(path or "config"))


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` from a nested dict such as ``dataclasses.asdict`` gives (lists back to tuples, sub-configs built)."""
    return _build(cls, dict(values), where=cls.__name__)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}`` (values read as YAML scalars/lists)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} should look like key=value")
        parsed[key.strip()] = yaml.safe_load(raw)
    return parsed


def with_values(config: T, values: Mapping[str, Any]) -> T:
    """A copy of ``config`` with dotted ``{"train.steps": 3}`` values set (types checked, unknown keys rejected)."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return _merge(config, tree, where=type(config).__name__)


def apply_overrides(config: T, overrides: list[str]) -> T:
    """``config`` with ``["a.b=1", ...]`` applied, in memory; for the command-line boundary (``--set``)."""
    return with_values(config, parse_overrides(overrides))


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        child = tree.setdefault(p, {})
        if not isinstance(child, dict):  # e.g. ``a: 3`` in the YAML and an override ``a.b=1``
            raise ValueError(f"config key {key!r}: {p!r} is not a mapping")
        tree = child
    tree[last] = value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _check_known(cls: type, keys: Any, where: str) -> dict[str, dataclasses.Field]:
    fields = _fields(cls)
    unknown = sorted(set(keys) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    return fields


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    fields = _check_known(cls, values, where)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        base = _field_default(fields[name])
        if dataclasses.is_dataclass(base) and isinstance(value, dict):
            # Start from the field's own default (``OptimConfig(lr=3e-5)``), not the nested class's defaults.
            kwargs[name] = _merge(base, value, where)
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}: {cls.__name__}.{name}")
    missing = [n for n, f in fields.items() if n not in kwargs and _field_default(f) is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing required config key(s) {missing} for {cls.__name__}")
    return cls(**kwargs)


def _merge(config: T, values: dict[str, Any], where: str) -> T:
    """``config`` with the nested ``values`` set: sub-dataclasses and dict fields are updated, not replaced."""
    cls = type(config)
    _check_known(cls, values, where)
    hints = typing.get_type_hints(cls)
    changes: dict[str, Any] = {}
    for name, value in values.items():
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = _merge(current, value, where)
        elif isinstance(current, dict) and isinstance(value, dict):
            changes[name] = {**current, **value}
        else:
            changes[name] = _coerce(value, hints[name], f"{where}: {cls.__name__}.{name}")
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """A value from YAML, an override or a flag to the field's type: YAML 1.1 reads ``3e-4`` as a string."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, dict):
        return _build(hint, value, where)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, tuple):
        return list(value)
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
    if hint is str and isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):
        return str(value)  # paths from flags, numbers from YAML (a model named 1)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass (tuples become lists)."""
    return to_plain(dataclasses.asdict(config))
