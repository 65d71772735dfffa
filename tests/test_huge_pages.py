"""models.host_memory.huge_page_zeros: zeroed tables advised for transparent huge pages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models.host_memory import HUGE_PAGE, huge_page_zeros

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def vm_flags(addr: int) -> list[str]:
    """VmFlags of the mapping holding `addr` in /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_big_table_is_zeroed_writable_and_advised():
    a = huge_page_zeros((3000, 257), np.float32)       # 3 MB: not a multiple of the huge page
    assert a.shape == (3000, 257) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    assert not a.any()
    a[-1, -1] = 5.0
    a[:, 0] += 1.0
    assert a.sum() == 3005.0
    if sys.platform.startswith("linux") and THP.exists() and "[never]" not in THP.read_text():
        assert "hg" in vm_flags(a.ctypes.data)          # MADV_HUGEPAGE took effect on the mapping


@pytest.mark.parametrize("shape", [(10, 4), (0, 128), (HUGE_PAGE // 8 - 1,)])
def test_small_or_empty_tables_are_plain_zeros(shape):
    a = huge_page_zeros(shape, np.float64)
    assert a.shape == shape and not a.any() and a.base is None   # np.zeros, no mapping of its own
