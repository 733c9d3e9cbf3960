"""The import graph against the layer order of docs/architecture.md.

Every package of ``src/grainvl`` has a rank; a module may import its own package and packages of a
lower rank, never one above it. Internal imports sit at module level, except in the CLI layer, which
loads a command's recipe (and torch) only when the command runs so that ``grainvl --help`` stays fast.
The checks parse the source (nothing is imported), so they also see imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "grainvl"

# Bottom to top; the same list, with what each layer is for, is in docs/architecture.md.
LAYERS: tuple[str, ...] = (
    "errors",
    "utils",
    "config",
    "data",
    "models",
    "losses",
    "metrics",
    "bench",
    "compress",
    "train",
    "tasks",
    "transfer",
    "dialogue",
    "recipes",
    "commands",
    "cli",
    "__main__",
    "__init__",
)
RANK = {name: i for i, name in enumerate(LAYERS)}
# Only the CLI layer and the lazy public API may import grainvl modules inside functions.
DEFERRED_OK = ("cli", "commands", "__init__")


def _package(path: Path) -> str:
    """The layer of a source file: its top-level package, or the module name for root modules."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["grainvl", *parts])


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "grainvl":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported grainvl module, line, inside a function)`` for every internal import of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = _module_name(path).split(".")
                    if path.name != "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                if module == "grainvl":  # from grainvl import x: x is a package or a root module
                    # __version__ is a constant of the root package, loaded before any of its modules.
                    names = [a.name for a in child.names if a.name != "__version__"]
                    found.extend((f"grainvl.{name}", child.lineno, in_function) for name in names)
                elif module.startswith("grainvl"):
                    found.append((module, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("grainvl"))
            visit(child, inner)

    visit(tree, False)
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    packages = {_package(p) for p in SOURCES}
    assert packages <= set(LAYERS), f"add these to LAYERS and docs/architecture.md: {sorted(packages - set(LAYERS))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    own = _package(path)
    upward = []
    for module, line, _ in _imports(path):
        target = _target_layer(module)
        if target is None or target == own:
            continue
        if target == "__init__" and module == "grainvl":
            upward.append(f"line {line}: the package root {module}")
        elif RANK[target] > RANK[own]:
            upward.append(f"line {line}: {module} ({target} sits above {own})")
    assert not upward, "imports that climb the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_internal_imports_at_module_level(path: Path) -> None:
    if _package(path) in DEFERRED_OK:
        return
    inside = [f"line {line}: {module}" for module, line, in_function in _imports(path) if in_function]
    assert not inside, "grainvl imports inside functions (hoist them; a cycle means a layer is wrong):\n" + "\n".join(
        inside
    )


def test_no_private_module_is_imported_across_packages() -> None:
    offenders = []
    for path in SOURCES:
        for module, line, _ in _imports(path):
            leaf = module.rsplit(".", 1)[-1]
            target = _target_layer(module)
            if leaf.startswith("_") and not leaf.startswith("__") and target != _package(path):
                offenders.append(f"{path.relative_to(SRC)} line {line}: {module}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker must find imports inside functions and classes, or every test above passes vacuously."""
    fake = SRC / "data" / "formats" / "validate.py"
    imports = _imports(fake)
    assert any(m == "grainvl.errors" for m, _, _ in imports)
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from grainvl.recipes import demo\n", encoding="utf-8")
    tree_imports = []
    for node in ast.walk(ast.parse(sample.read_text())):
        if isinstance(node, ast.ImportFrom):
            tree_imports.append(node.module)
    assert tree_imports == ["grainvl.recipes"]
    assert RANK["recipes"] > RANK["data"]


def _calls(attribute: str) -> list[str]:
    """``file:line`` of every ``<something>.<attribute>(...)`` call in src/grainvl."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_one_training_loop() -> None:
    """Only train/loop.py runs backward passes and optimizer steps; every trainer goes through it."""
    outside = [place for place in _calls("backward") if not place.startswith("train/loop.py")]
    assert not outside, f"backward() outside the one loop (use grainvl.train.loop.train): {outside}"
    assert any(place.startswith("train/loop.py") for place in _calls("backward"))


def test_one_model_resolver() -> None:
    definitions = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in ("resolve_model", "load_teacher", "model_folder"):
                definitions.append(f"{path.relative_to(SRC)}: {node.name}")
    assert definitions == ["models/factory.py: resolve_model"]


def _deferred_without_reason(path: Path) -> list[str]:
    """Imports inside functions whose group has no comment saying why (a ``try``/``except ImportError`` is a reason)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    import_rows = {
        row
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for row in range(node.lineno - 1, (node.end_lineno or node.lineno))
    }
    missing = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or isinstance(parents[node], ast.Try):
            continue
        owner = parents[node]
        while owner in parents and not isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            owner = parents[owner]
        if not isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        row = node.lineno - 1
        if "#" in lines[row]:
            continue
        above = row - 1
        while above >= 0 and (above in import_rows or not lines[above].strip()):  # the rest of the group
            if above in import_rows and "#" in lines[above]:
                break  # an import of the group carries the reason
            above -= 1
        if above < 0 or not lines[above].strip().startswith("#"):
            missing.append(f"line {node.lineno}: {lines[row].strip()}")
    return missing


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_deferred_import_says_why(path: Path) -> None:
    missing = _deferred_without_reason(path)
    assert not missing, "imports inside functions need a comment saying why (or move them to the top):\n" + "\n".join(
        missing
    )
