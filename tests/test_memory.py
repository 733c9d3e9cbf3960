"""grainvl.utils.memory: large CPU blocks served from glibc's heap and kept for reuse (TrainConfig.reuse_heap)."""

from __future__ import annotations

import ctypes
import resource

import pytest
import torch

from grainvl.utils import memory
from grainvl.utils.memory import heap_reuse_supported, set_heap_reuse

glibc_only = pytest.mark.skipif(not heap_reuse_supported(), reason="needs Linux with glibc")
BLOCK = 48 * 1024 * 1024  # above glibc's largest mmap threshold (32 MiB): always mmap'd by default


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


def _faults_of_reallocating(rounds: int = 3) -> list[int]:
    """Minor page faults of each round of allocating, touching and freeing one BLOCK-sized tensor."""
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.empty(BLOCK // 4, dtype=torch.float32)
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


@glibc_only
def test_large_blocks_come_from_the_heap_only_while_reuse_is_on(heap_off) -> None:
    t = torch.empty(BLOCK // 4)
    assert _mmapped_bytes() >= BLOCK  # glibc's default: its own mapping
    del t
    set_heap_reuse(True)
    t = torch.empty(BLOCK // 4)
    assert _mmapped_bytes() < BLOCK  # from the heap (no other block this large is alive)
    del t
    set_heap_reuse(False)
    t = torch.empty(BLOCK // 4)
    assert _mmapped_bytes() >= BLOCK  # glibc's default again
    del t


@glibc_only
def test_reuse_stops_the_page_faults_of_a_reallocated_block(heap_off) -> None:
    # The reason for the switch: by default every round maps the block afresh and the kernel zero-fills each
    # 4 KiB page on first touch (12,288 pages); with reuse the later rounds touch pages already mapped.
    pages = BLOCK // resource.getpagesize()
    off = _faults_of_reallocating()
    assert min(off) > pages // 2, off  # every round faults (huge pages would only lower the count)
    set_heap_reuse(True)
    on = _faults_of_reallocating()
    assert max(on[1:]) < pages // 20, on  # the first round may grow the heap; later ones reuse it


def test_the_switch_does_nothing_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.set_heap_reuse(True) is False
    assert memory.heap_reuse_supported() is False
    memory.release_free_heap()  # a no-op, no error
