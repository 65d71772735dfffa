"""Posts as arrays, the form every trainer, metric and scorer reads (numpy only).

`PostData`: per post the row of its user and item in the training vocabularies, its tags
as CSR (`models.csr`) and its feature vectors; `batch()` gives the docs/interfaces.md
batch dict. `IdIndex`: id -> row in a training vocabulary, -1 where unseen, the one lookup
train, score and evaluate use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.csr import csr_from_lists, row_of_entries, take_rows


@dataclass
class PostData:
    """Posts as arrays: indices into the training vocabularies, tags as CSR, features per post.

    user_index, item_index int64 (P,) (-1 unseen); indptr (P+1,), indices (nnz,) tag indices;
    features {"ic": (P, 512), "od": (P, 80), "sn": (P, d)} float32 with has {"ic": (P,) bool}.
    """

    user_index: np.ndarray
    item_index: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    n_tags: int
    features: dict[str, np.ndarray] = field(default_factory=dict)
    has: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, user_index: np.ndarray, item_index: np.ndarray, tags: Sequence[np.ndarray],
                   n_tags: int, features: dict[str, np.ndarray] | None = None,
                   has: dict[str, np.ndarray] | None = None) -> PostData:
        indptr, indices = csr_from_lists(tags, np.int64)
        feats = dict(features or {})
        has = dict(has or {})
        for k, v in feats.items():
            has.setdefault(k, np.ones(len(v), bool))
        return cls(np.asarray(user_index, np.int64), np.asarray(item_index, np.int64), indptr, indices,
                   n_tags, feats, has)

    def __len__(self) -> int:
        return len(self.user_index)

    def batch(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The docs/interfaces.md batch dict for these posts (all when rows is None)."""
        sel = (lambda a: a) if rows is None else (lambda a: a[rows])
        out = {"user_index": sel(self.user_index), "item_index": sel(self.item_index)}
        for k, v in self.features.items():
            out[k], out[f"has_{k}"] = sel(v), sel(self.has[k])
        return out

    def subset(self, rows: np.ndarray) -> PostData:
        """The posts `rows` (int array), tags and features included."""
        rows = np.asarray(rows, np.int64)
        indptr, indices = take_rows(self.indptr, self.indices, rows)
        return PostData(self.user_index[rows], self.item_index[rows], indptr, indices, self.n_tags,
                        {k: v[rows] for k, v in self.features.items()}, {k: v[rows] for k, v in self.has.items()})

    def tag_entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `rows`, tag index) of every tag of the posts `rows`: a multi-hot target's cells."""
        indptr, indices = take_rows(self.indptr, self.indices, rows)
        return row_of_entries(indptr), indices

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(post, t+) of every training pair, posts tagged with every tag left out (no t- exists)."""
        lens = np.diff(self.indptr)
        post = np.repeat(np.arange(len(self), dtype=np.int64), lens)
        ok = np.repeat(lens < self.n_tags, lens)
        return post[ok], self.indices[ok]


class IdIndex:
    """Row of each id in a training vocabulary, -1 where unseen.

    Sorts the vocabulary once: a lookup is then a binary search per id, so one index built
    per job serves every batch.
    """

    def __init__(self, vocab: np.ndarray) -> None:
        vocab = np.asarray(vocab, dtype=np.int64)
        self.order = np.argsort(vocab, kind="stable")
        self.sorted = vocab[self.order]

    def __len__(self) -> int:
        return len(self.sorted)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """(n,) ids -> (n,) int64 rows, -1 where the id is not in the vocabulary."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.sorted, ids).clip(0, len(self.sorted) - 1)
        return np.where(self.sorted[pos] == ids, self.order[pos], -1).astype(np.int64)


def index_of(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in `vocab` (training order), -1 where unseen. (n,) -> (n,) int64.

    One-off lookups; build an `IdIndex` to look up many batches in the same vocabulary.
    """
    return IdIndex(vocab)(ids)
