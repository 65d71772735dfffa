"""Ranking metrics for tag recommendation: P@k, R@k, F1@k, Acc@k for k = 1..K.

Definitions (Nguyen, Wistuba, Schmidt-Thieme 2017, Sec. 5): for a post with true tags
T and top-k list L_k,

    P@k = |L_k ∩ T| / k,    R@k = |L_k ∩ T| / |T|,    Acc@k = 1[|L_k ∩ T| > 0],

each averaged over posts, and F1@k = 2 P@k R@k / (P@k + R@k) from the *averaged* P and R.
Posts with no true tags are excluded (their recall is undefined); callers count them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from models.csr import take_rows

METRICS = ("precision", "recall", "f1", "accuracy")


def to_csr(tag_lists: Sequence[Sequence[int]] | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(indptr (n+1,), indices) from a list of per-post tag index lists."""
    lengths = np.fromiter((len(t) for t in tag_lists), dtype=np.int64, count=len(tag_lists))
    indptr = np.zeros(len(tag_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = (np.concatenate([np.asarray(t, dtype=np.int64) for t in tag_lists])
               if len(tag_lists) and indptr[-1] else np.zeros(0, dtype=np.int64))
    return indptr, indices


def hits_matrix(topk: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(n, K) bool: is topk[i, j] one of post i's true tags. -1 entries never hit.

    Vectorised with one sorted membership test on (post, tag) codes, so it is linear
    in n·K + nnz up to the sort.
    """
    n, K = topk.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    width = int(max(topk.max(initial=0), indices.max(initial=0))) + 1
    true_codes = rows * width + indices
    codes = np.arange(n, dtype=np.int64)[:, None] * width + np.where(topk >= 0, topk, 0)
    hit = np.isin(codes, true_codes)
    return hit & (topk >= 0)


def metrics_at_k(
    topk: np.ndarray, indptr: np.ndarray, indices: np.ndarray, ks: Iterable[int] = range(1, 11)
) -> dict[str, float]:
    """{'precision@k', 'recall@k', 'f1@k', 'accuracy@k'} for every k in ks, plus 'n_posts'.

    topk: (n, K) int tag indices, best first (K >= max(ks)); -1 pads short lists.
    indptr, indices: CSR of each post's true tag indices (duplicates are ignored).
    """
    ks = list(ks)
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[1] < max(ks):
        raise ValueError(f"topk must be (n, K) with K >= {max(ks)}, got shape {topk.shape}")
    indptr, indices = _dedupe_csr(np.asarray(indptr, np.int64), np.asarray(indices, np.int64))
    n_true = np.diff(indptr)
    keep = n_true > 0
    topk, n_true = topk[keep], n_true[keep]
    indptr, indices = take_rows(indptr, indices, keep)
    out: dict[str, float] = {"n_posts": int(keep.sum())}
    if not keep.any():
        for k in ks:
            for m in METRICS:
                out[f"{m}@{k}"] = 0.0
        return out
    cum = np.cumsum(hits_matrix(topk, indptr, indices), axis=1)  # (n, K) hits within top j+1
    for k in ks:
        h = cum[:, k - 1]
        p = float(np.mean(h / k))
        r = float(np.mean(h / n_true))
        out[f"precision@{k}"] = p
        out[f"recall@{k}"] = r
        out[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[f"accuracy@{k}"] = float(np.mean(h > 0))
    return out


def _dedupe_csr(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    pairs = np.unique(np.stack([rows, indices], axis=1), axis=0) if len(indices) else np.zeros((0, 2), np.int64)
    counts = np.bincount(pairs[:, 0], minlength=len(indptr) - 1)
    new_ptr = np.zeros(len(indptr), dtype=np.int64)
    np.cumsum(counts, out=new_ptr[1:])
    return new_ptr, pairs[:, 1].astype(np.int64)


def metrics_reference(topk: Sequence[Sequence[int]], true: Sequence[set[int]], k: int) -> dict[str, float]:
    """Slow, obviously correct P/R/F1/Acc@k, for tests of `metrics_at_k`."""
    ps, rs, accs = [], [], []
    for lst, t in zip(topk, true):
        if not t:
            continue
        hits = len([x for x in list(lst)[:k] if x in t])
        ps.append(hits / k)
        rs.append(hits / len(t))
        accs.append(1.0 if hits else 0.0)
    if not ps:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    p, r = sum(ps) / len(ps), sum(rs) / len(rs)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "accuracy": sum(accs) / len(accs)}
