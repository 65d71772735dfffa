"""Host memory policy for CPU compute: glibc's heap (return build copies, then reuse the
heap) and huge pages for big randomly-read tables (`huge_page_zeros`).

Any process that allocates and frees the same big buffers every batch pays for glibc
mapping them afresh. CPU convolutions at batch 8 allocate activations of 100-200 MB (VGG16 conv1 at 224:
8 x 64 x 224 x 224 x 4 B = 103 MB; YOLOv2 at 448 twice that). glibc serves anything above
32 MB (its largest mmap threshold) with a fresh mmap and unmaps it on free, so every batch
the kernel zero-fills those pages again: system time per image that reusing the heap
(`reuse_heap`) removes. The scoring tasks of `jobs.score` (read buffers, float32 features,
score blocks) gain from it too. Figures: benchmarks/results/design-measurements.md.

The order that keeps both memory and CPU low:

1. `release_large_frees()` before building the models: loading and folding weights makes
   and frees large copies; with a 1 MB mmap threshold they go back to the OS instead of
   staying in the heap.
2. `reuse_heap()` once the models are built: large buffers come from the heap and stay
   there between batches (no mmap, no trim below `trim_threshold`). The process then keeps
   its peak working set resident (one batch's activations) instead of returning it after
   each batch.

Threads: glibc gives each new thread its own arena, whose heaps are at most 64 MB, so a
thread's larger buffers are mmapped whatever M_MMAP_MAX says. Ray Data calls an actor's
model from a thread of its own; a process that runs inference off its main thread must
therefore start with one arena (`ONE_ARENA_ENV`, read by glibc at process start) for
`reuse_heap` to reach those buffers.

Both are process-wide and only change glibc's allocator; elsewhere (musl, macOS) they do
nothing. The float results are unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any

# Environment of a process (e.g. a Ray actor's runtime_env) whose threads should all use the
# main arena, so that `reuse_heap` covers buffers allocated off the main thread.
ONE_ARENA_ENV = {"MALLOC_ARENA_MAX": "1"}

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


@lru_cache(maxsize=1)
def _libc() -> Any:
    """glibc's handle, or None where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 — AttributeError on a libc without it
        return libc
    except (OSError, AttributeError):
        return None


def _mallopt(param: int, value: int) -> bool:
    libc = _libc()
    return bool(libc is not None and libc.mallopt(param, value) == 1)


def release_large_frees(threshold: int = 1 << 20) -> bool:
    """Serve allocations >= `threshold` bytes with their own mmap, returned to the OS on free.

    By default glibc raises this threshold after the first large free (up to 32 MB), and freed
    model-building copies then stay resident. True when the allocator took the setting.
    """
    ok = _mallopt(M_MMAP_THRESHOLD, threshold)      # fixed: no dynamic raise
    return _mallopt(M_TRIM_THRESHOLD, 2 * threshold) and ok


def reuse_heap(trim_threshold: int = (1 << 31) - 1) -> bool:
    """Serve every allocation from the heap and keep freed memory there for the next batch.

    M_MMAP_MAX = 0: no allocation gets its own mmap (so none is unmapped and re-faulted);
    M_TRIM_THRESHOLD: the heap's free top is given back only beyond `trim_threshold` bytes
    (mallopt takes a C int: 2 GiB - 1 at most).
    True when the allocator took both settings.
    """
    ok = _mallopt(M_MMAP_MAX, 0)
    return _mallopt(M_TRIM_THRESHOLD, trim_threshold) and ok


def malloc_stats() -> dict[str, int] | None:
    """glibc's mallinfo2 of the main arena (bytes; `hblkhd` = memory in mmapped chunks), or None."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in _MALLINFO2_FIELDS}


HUGE_PAGE = 2 << 20   # x86-64 and arm64 transparent huge page size


def huge_page_zeros(shape: tuple[int, ...], dtype: Any) -> Any:
    """np.zeros for big tables read at random rows: anonymous memory advised for huge pages.

    A (10^6 x 128) float32 table is 512 MB; with 4 KB pages every random row read is a
    TLB miss and a page-table walk, with 2 MB transparent huge pages the whole table
    needs 256 TLB entries. Measured on this project's 2-core machine, skip-gram at 10^6
    users: 550-590k tokens/s in 4 KB pages, 670-710k advised (models/node2vec/sgns.py).
    Linux gives huge pages when /sys/kernel/mm/transparent_hugepage/enabled is `always` or
    `madvise`; elsewhere (or tables under 2 MB) this is plain zeroed memory. The array keeps
    its mapping alive and frees it with the last reference.
    """
    import mmap

    import numpy as np

    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dt.itemsize
    if nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(shape, dt)
    # Round up to whole huge pages: the kernel backs only aligned 2 MB ranges with huge pages.
    mm = mmap.mmap(-1, -(-nbytes // HUGE_PAGE) * HUGE_PAGE)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError:   # THP compiled out or disabled: still zeroed memory
        pass
    return np.frombuffer(mm, dtype=dt, count=count).reshape(shape)
