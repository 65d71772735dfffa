"""Compressed sparse rows: the one layout for "a list of tag indices per post".

`indptr` (n+1,) int64 and `indices` (nnz,): row r holds indices[indptr[r]:indptr[r+1]].
The split's tags, a post's own tags to exclude from its top-k, and the true tags the
metrics compare against are all kept this way; these helpers build and cut them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def indptr_of(lengths: np.ndarray) -> np.ndarray:
    """(n,) row lengths -> (n+1,) int64 row offsets."""
    indptr = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr


def csr_from_lists(lists: Sequence[Sequence[int]] | Sequence[np.ndarray],
                   dtype: type = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """CSR arrays `(indptr int64 (n+1,), indices dtype (nnz,))` from per-row index lists."""
    lens = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    indptr = indptr_of(lens)
    indices = (np.concatenate([np.asarray(x, dtype=dtype) for x in lists])
               if indptr[-1] else np.zeros(0, dtype=dtype))
    return indptr, indices


def take_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR of `rows` (int positions in any order, or a bool mask), re-based to start at 0."""
    rows = np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False)
    lens = indptr[rows + 1] - indptr[rows]
    sub_ptr = indptr_of(lens)
    take = np.repeat(indptr[rows] - sub_ptr[:-1], lens) + np.arange(sub_ptr[-1])
    return sub_ptr, indices[take]


def row_of_entries(indptr: np.ndarray) -> np.ndarray:
    """(nnz,) int64: the row each entry belongs to."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
