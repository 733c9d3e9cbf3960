"""Sub-commands that live in their own modules, and the config arguments every command shares.

Each module here defines ``register(sub: argparse._SubParsersAction) -> None`` which adds one
top-level command (``grainvl convert``, ``grainvl finetune`` ...) and sets ``func`` on it. Modules
are discovered by name, so adding a command never means editing a shared list. Keep module-level
imports light (argparse, pathlib): the heavy ones belong inside the command function, so that
``grainvl --help`` stays fast.

Every command is configured by one typed dataclass: ``add_config_args`` gives its parser ``--config
FILE.yaml`` and ``--set a.b=c ...``, ``shortcut`` adds a flag that sets one config field, and
``config_from_args`` builds the config (defaults <- YAML <- ``--set`` <- shortcut flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
SHORTCUTS = "_config_shortcuts"  # namespace attribute: flag dest -> dotted config field


def register_all(sub: argparse._SubParsersAction) -> None:
    """Add every command module's parser, in alphabetical order of module name."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)


def add_config_args(parser: argparse.ArgumentParser, config: str) -> None:
    """``--config FILE.yaml`` and ``--set KEY=VALUE ...`` for a command configured by ``config``.

    ``config`` is the dataclass as ``"module:Class"`` (e.g. ``"grainvl.recipes.bench:BenchOptions"``): ``--help``
    then states every shortcut flag's default, read from the dataclass when the help is printed (the module is
    imported only then, so building the parser stays light). A bare class name only names it in the help.
    """
    module, _, config_name = config.rpartition(":")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        help=f"YAML file with {config_name} fields (--set and the shortcut flags override it) (default: none, "
        "the built-in defaults)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted {config_name} overrides, e.g. a.b=1 (flags below are shortcuts for fields and win over --set) "
        "(default: none)",
    )
    parser.set_defaults(**{SHORTCUTS: dict(parser.get_default(SHORTCUTS) or {})})
    parser.formatter_class = functools.partial(DefaultsHelpFormatter, parser=parser, config=module and config)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that states every option's default.

    A shortcut flag's ``[config: field]`` becomes ``[config: field, default: VALUE]`` with the config
    dataclass's own default (unless its help already says ``default``); another option with a value default
    gets ``(default: VALUE)``, a switch ``(default: off)``.
    """

    def __init__(self, prog: str, parser: argparse.ArgumentParser, config: str | None, **kwargs: Any) -> None:
        super().__init__(prog, **kwargs)
        self._shortcuts = parser.get_default(SHORTCUTS) or {}
        self._config = config

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or text == argparse.SUPPRESS or "default" in text or action.required:
            return text
        if action.dest in self._shortcuts:
            field = self._shortcuts[action.dest][0]
            if self._config:
                shown = format_default(config_default(self._config, field)).replace("%", "%%")
                return text.replace(f"[config: {field}]", f"[config: {field}, default: {shown}]")
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'off' if isinstance(action, argparse._StoreTrueAction) else 'on'})"
        if action.default is not None and not isinstance(action, argparse._VersionAction):
            return f"{text} (default: {format_default(action.default).replace('%', '%%')})"
        return text


def config_default(config: str, field: str) -> Any:
    """The default of dotted ``field`` in the dataclass ``"module:Class"`` (no instance is built)."""
    module, _, name = config.rpartition(":")
    # Deferred: only --help reads config defaults; importing the config's module may load torch.
    cls = getattr(importlib.import_module(module), name)
    value: Any = cls
    for part in field.split("."):
        fields = {f.name: f for f in dataclasses.fields(value)}
        if part not in fields:
            raise ValueError(f"{config} has no field {field!r}")
        spec = fields[part]
        if spec.default is not dataclasses.MISSING:
            value = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            value = spec.default_factory()
        else:
            return None
    return value


def format_default(value: Any) -> str:
    """A default as a user would type it: ``none``, ``true``, ``a,b`` for sequences, ``k=v`` for mappings."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    return str(value)


def shortcut(
    parser: argparse.ArgumentParser,
    *flags: str,
    field: str,
    help: str,
    parse: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> None:
    """A flag that sets config ``field``; an unset flag (None) leaves the YAML/default value alone.

    ``parse`` turns the flag's text into the field's value when the command runs (its ValueError is then
    the usual one-line error with exit status 2, which an argparse ``type`` would not give).
    """
    kwargs.setdefault("default", None)
    action = parser.add_argument(*flags, help=f"{help} [config: {field}]", **kwargs)
    # The mapping lives in the parser's defaults, so config_from_args needs nothing but the namespace.
    mapping = dict(parser.get_default(SHORTCUTS) or {})
    mapping[action.dest] = (field, parse)
    parser.set_defaults(**{SHORTCUTS: mapping})


def config_from_args(
    cls: type[T],
    args: argparse.Namespace,
    default_yaml: Path | None = None,
    translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> T:
    """The command's config: ``cls`` defaults <- ``--config`` (or ``default_yaml``, through ``translate``) <-
    ``--set`` <- shortcuts."""
    # Deferred: the config module reads YAML; commands build configs only when they run.
    from grainvl.config import load_config

    values = {}
    for dest, (field, parse) in getattr(args, SHORTCUTS, {}).items():
        value = getattr(args, dest, None)
        if value is not None:
            values[field] = parse(value) if parse is not None else value
    path = args.config if args.config is not None else default_yaml
    return load_config(cls, path, list(args.set), values, translate)


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (argparse type of comma-separated shortcut flags)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def key_values(entries: Iterable[str], flag: str, form: str) -> list[tuple[str, str]]:
    """``["k=v", ...]`` -> ``[("k", "v"), ...]``; an entry without ``=`` is the one-line error ``flag expects form``.

    Flags that map names to values (``--per-modality``, ``--finetuned``) share it, so they fail alike.
    """
    pairs = []
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects {form}, got {entry!r}")
        pairs.append((key, value))
    return pairs
