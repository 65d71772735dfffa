"""Arrow post tables -> the arrays the models read: tag vocabularies, tags as CSR, PostData.

The split files and the archive's posts.parquet hold tags as list<string>; every stage that
compares tags (train, score, evaluate) turns them into indices of one sorted vocabulary
here, so a tag means the same row everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.csr import indptr_of
from models.recsys.data import IdIndex, PostData

TagColumn = Any  # pa.Array or pa.ChunkedArray of list<string>


def tag_vocabulary(tags: TagColumn) -> np.ndarray:
    """(T,) str: the distinct tags of a list<string> column, sorted (row t of a tag matrix)."""
    return np.unique(np.asarray(pc.list_flatten(tags).to_numpy(zero_copy_only=False), dtype=object).astype(str))


def _value_set(vocab: pa.Array | np.ndarray | list[str]) -> pa.Array:
    return vocab if isinstance(vocab, pa.Array) else pa.array(np.asarray(vocab, dtype=object), pa.string())


def tag_rows(vocab: pa.Array | np.ndarray | list[str], names: TagColumn | np.ndarray | list[str]) -> np.ndarray:
    """(n,) int64 row of each tag name in `vocab`, -1 where the vocabulary lacks it."""
    idx = pc.index_in(names if isinstance(names, (pa.Array, pa.ChunkedArray)) else pa.array(list(names), pa.string()),
                      value_set=_value_set(vocab))
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def tag_csr(tags: TagColumn, vocab: pa.Array | np.ndarray | list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """list<string> -> (indptr int64 (n+1,), indices int64 (nnz,), tags dropped).

    Indices are rows of `vocab` (pass a `pa.Array` to reuse it across calls); tags it lacks
    are dropped and counted; a null list is an empty row.
    """
    lens = pc.fill_null(pc.list_value_length(tags), 0).to_numpy(zero_copy_only=False)
    idx = pc.index_in(pc.list_flatten(tags), value_set=_value_set(vocab))
    known = pc.is_valid(idx).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(lens)), lens)[known]
    indices = pc.drop_null(idx).to_numpy(zero_copy_only=False).astype(np.int64)
    return indptr_of(np.bincount(row, minlength=len(lens))), indices, int((~known).sum())


def post_data(table: pa.Table, users: IdIndex, items: IdIndex, vocab: np.ndarray) -> tuple[PostData, int]:
    """PostData of a split table (user_id, item_id, tags) against training vocabularies; tags
    outside `vocab` are dropped and counted, unseen users and items get index -1."""
    indptr, indices, dropped = tag_csr(table["tags"], vocab)
    u = table["user_id"].to_numpy().astype(np.int64)
    i = table["item_id"].to_numpy().astype(np.int64)
    return PostData(users(u), items(i), indptr, indices, len(vocab)), dropped
