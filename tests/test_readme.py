"""Every ```python block of README.md runs as written, each in a fresh interpreter in an empty folder.

A block whose first line is ``# needs: ...`` depends on files that are not shipped (an official checkpoint) and
is only compiled, not run; every other block must be self-contained.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS = "# needs:"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(1-based line of the opening fence, code) of every ```python block."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 2
    assert any(code.lstrip().startswith(NEEDS) for _, code in BLOCKS), "the official-checkpoint example is marked"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line: int, code: str, tmp_path: Path) -> None:
    compile(code, f"README.md:{line}", "exec")  # every block is at least valid Python
    if code.lstrip().startswith(NEEDS):
        pytest.skip(f"README.md:{line} {code.lstrip().splitlines()[0]}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr[-3000:]}"
