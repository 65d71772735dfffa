"""Validation metrics of a recommender on split posts (used per epoch and by `--tune`)."""

from __future__ import annotations

import numpy as np

from models.metrics import metrics_at_k


def topk_tags(model, batch: dict[str, np.ndarray], k: int, block: int = 8192) -> np.ndarray:
    """(n, k) tag indices, best first, by scores = post_vectors @ tag_matrix.T (blocked rows)."""
    tags = model.tag_matrix()  # (T, D)
    k = min(k, tags.shape[0])
    n = len(batch["user_index"])
    out = np.empty((n, k), np.int64)
    for s in range(0, n, block):
        rows = {key: v[s:s + block] for key, v in batch.items()}
        scores = model.post_vectors(rows) @ tags.T  # (b, T)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, 1)
    return out


def evaluate(model, data, ks: tuple[int, ...] = (5,)) -> dict[str, float]:
    """P/R/F1/Acc@k over the posts of `data` (a PostData), via models.metrics."""
    if len(data) == 0:
        return {f"f1@{k}": 0.0 for k in ks}
    top = topk_tags(model, data.batch(), max(ks))
    if top.shape[1] < max(ks):  # fewer tags than k: pad so metrics_at_k accepts it
        top = np.pad(top, ((0, 0), (0, max(ks) - top.shape[1])), constant_values=-1)
    return metrics_at_k(top, data.indptr, data.indices, ks=ks)
