"""Keep freed CPU memory in the process heap so that large tensors stop paying page faults (glibc only).

Why: glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB on 64-bit, lower
until it adapts) with a fresh ``mmap`` and returns it to the kernel on ``free``. A training step
allocates and frees the same large blocks every time — the word-embedding gradient of each text pass
(30,522 × 384 fp32 = 45 MiB in ``xvlm-small``), the MLM logits, attention scores, FFN activations — so
the kernel maps and zero-fills every page again each step: 11,000 page faults for one embedding
gradient, which ``torch.profiler`` shows as a 68 ms ``aten::fill_``. With ``M_MMAP_MAX = 0`` every block
comes from the heap, and a trim threshold of 256 MiB keeps what was freed for the next step instead of
handing it back at once. Measured side by side (``benchmarks/bench_pretrain.py``; docs/models.md,
"Training-step speed"): the system time of a step roughly halves and the step gets faster, more so at
the x2vlm-base shape, with the same peak RSS within a few percent. Nothing numerical changes: the same
kernels run on the same values, only where their memory comes from differs.

:func:`grainvl.train.loop.train` switches it on for the run (``TrainConfig.reuse_heap``, default on) and
puts the previous setting back afterwards. On other C libraries (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt(3) parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_MAX_DEFAULT = 65536  # glibc's default M_MMAP_MAX
# Off: where glibc's own adaptation ends once a process has freed a large mapped block (its dynamic mmap
# threshold rises to the block's size, at most 32 MiB on 64-bit, and the trim threshold to twice that).
# mallopt cannot hand the adaptation back, so this is the closest state to a default process doing this work.
MMAP_THRESHOLD_ADAPTED = 32 * 1024 * 1024
TRIM_THRESHOLD_ADAPTED = 2 * MMAP_THRESHOLD_ADAPTED
REUSE_TRIM_THRESHOLD = 256 * 1024 * 1024  # free heap kept at the top before it goes back to the kernel

_libc: ctypes.CDLL | None = None
_reuse = False


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc (with ``mallopt`` and ``malloc_trim``), or None on any other C library."""
    global _libc
    if _libc is None and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        name = ctypes.util.find_library("c") or "libc.so.6"
        try:
            libc = ctypes.CDLL(name)
        except OSError:
            return None
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            _libc = libc
    return _libc


def heap_reuse_supported() -> bool:
    """Whether :func:`set_heap_reuse` can change anything here (Linux with glibc)."""
    return _glibc() is not None


def set_heap_reuse(enabled: bool) -> bool:
    """Process-wide: serve large blocks from the heap and keep freed memory (on) or glibc's defaults (off).

    Returns the previous setting. Switching off restores ``M_MMAP_MAX`` and sets the mmap and trim thresholds to
    where glibc's adaptation ends for large blocks (32 / 64 MiB, fixed from then on: ``mallopt`` cannot make them
    adaptive again), then hands the free heap back (``malloc_trim``). A process that never switches it on keeps
    glibc's adaptive defaults. No effect, and False returned, where the C library is not glibc.
    """
    global _reuse
    libc = _glibc()
    if libc is None:
        return False
    previous, enabled = _reuse, bool(enabled)
    if enabled != previous:
        ok = libc.mallopt(M_MMAP_MAX, 0 if enabled else MMAP_MAX_DEFAULT)
        ok &= libc.mallopt(M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD if enabled else TRIM_THRESHOLD_ADAPTED)
        if not enabled:
            ok &= libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_ADAPTED)
        if not ok:  # mallopt returns 1 on success; a glibc that refuses leaves its defaults
            return previous
        if not enabled:
            libc.malloc_trim(0)
        _reuse = enabled
    return previous


def release_free_heap() -> None:
    """Hand the free part of the heap back to the kernel now (``malloc_trim(0)``; glibc only)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
