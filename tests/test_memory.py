"""grainvl.utils.memory: large CPU blocks served from glibc's heap and kept for reuse (TrainConfig.reuse_heap)."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grainvl.utils import memory
from grainvl.utils.memory import heap_reuse_supported, set_heap_reuse

glibc_only = pytest.mark.skipif(not heap_reuse_supported(), reason="needs Linux with glibc")
BLOCK = 48 * 1024 * 1024  # above glibc's largest adaptive mmap threshold (32 MiB): mmap'd by default


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mmapped_bytes() -> int:
    """glibc's ``mallinfo2().hblkhd``: bytes of blocks currently served by their own mmap."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    return int(libc.mallinfo2().hblkhd)


def _faults_of_reallocating(sizes: tuple[int, ...] = (BLOCK, BLOCK - 2**20, BLOCK - 2**21)) -> list[int]:
    """Minor page faults of each round of allocating, touching and freeing one tensor of each size (bytes).

    Each block is a little smaller than the one before, so it fits in the space the previous one freed (torch
    asks for 64-byte aligned memory, which glibc serves with a little slack: an equal size would not fit).
    """
    faults = []
    for size in sizes:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(size // 4, dtype=torch.float32)
        t.fill_(1.0)
        del t
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


@pytest.fixture
def heap_off():
    previous = set_heap_reuse(False)
    yield
    set_heap_reuse(previous)


@glibc_only
def test_switch_returns_the_previous_setting_and_is_idempotent(heap_off) -> None:
    assert set_heap_reuse(True) is False
    assert set_heap_reuse(True) is True
    assert set_heap_reuse(False) is True
    assert set_heap_reuse(False) is False


def _mmapped_growth_of_a_block() -> int:
    """How much ``mallinfo2().hblkhd`` grows while one BLOCK-sized tensor is alive (other mappings may exist)."""
    before = _mmapped_bytes()
    t = torch.empty(BLOCK // 4)
    grown = _mmapped_bytes() - before
    del t
    return grown


@glibc_only
def test_large_blocks_come_from_the_heap_only_while_reuse_is_on() -> None:
    # In a new interpreter: in this one, earlier tests may have left a free heap chunk that serves the block.
    off, on, off_again = _in_a_new_process("_mapped_growth_off_on_off")
    assert off >= BLOCK  # glibc's default: its own mapping
    assert on == 0  # from the heap
    assert off_again >= BLOCK  # a mapping again


def _mapped_growth_off_on_off() -> list[int]:
    growth = [_mmapped_growth_of_a_block()]
    set_heap_reuse(True)
    growth.append(_mmapped_growth_of_a_block())
    set_heap_reuse(False)
    return [*growth, _mmapped_growth_of_a_block()]


_SCRIPT = """
import json, sys
import test_memory
from grainvl.utils.memory import set_heap_reuse
set_heap_reuse(sys.argv[2] == "on")
print(json.dumps(getattr(test_memory, sys.argv[1])()))
"""


def _in_a_new_process(function: str, mode: str = "off") -> list[int]:
    """``function()`` of this module in a new interpreter with heap reuse ``mode``: glibc's own defaults and no
    other test's heap history."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, function, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_reuse_stops_the_page_faults_of_a_reallocated_block() -> None:
    # The reason for the switch: by default every block above the mmap threshold is mapped afresh and the kernel
    # zero-fills each 4 KiB page on first touch (about 12,000 pages here); with reuse the later blocks are served
    # from the heap space the earlier ones freed, whose pages are already mapped.
    pages = (BLOCK - 2**21) // resource.getpagesize()
    off = _in_a_new_process("_faults_of_reallocating", "off")
    assert min(off) > pages // 2, off  # every round faults (huge pages would only lower the count)
    on = _in_a_new_process("_faults_of_reallocating", "on")
    assert on[0] > pages // 2 and max(on[1:]) < pages // 20, on  # the first grows the heap; later ones reuse it


def test_the_switch_does_nothing_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.set_heap_reuse(True) is False
    assert memory.heap_reuse_supported() is False
    memory.release_free_heap()  # a no-op, no error
