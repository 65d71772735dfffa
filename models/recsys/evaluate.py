"""Validation metrics of a recommender on split posts (used per epoch and by `--tune`)."""

from __future__ import annotations

import numpy as np

from models.metrics import hits_matrix, metrics_at_k


def topk_scored(model, batch: dict[str, np.ndarray], k: int, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) tag indices, best first, by scores = post_vectors @ tag_matrix.T (blocked rows),
    and (n, k) float32 their scores."""
    tags = model.tag_matrix()  # (T, D)
    k = min(k, tags.shape[0])
    n = len(batch["user_index"])
    out = np.empty((n, k), np.int64)
    val = np.empty((n, k), np.float32)
    for s in range(0, n, block):
        rows = {key: v[s:s + block] for key, v in batch.items()}
        scores = model.post_vectors(rows) @ tags.T  # (b, T)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, 1)
        val[s:s + block] = np.take_along_axis(scores, out[s:s + block], 1)
    return out, val


def topk_tags(model, batch: dict[str, np.ndarray], k: int, block: int = 8192) -> np.ndarray:
    """(n, k) tag indices, best first, by scores = post_vectors @ tag_matrix.T (blocked rows)."""
    return topk_scored(model, batch, k, block)[0]


def calibrate(model, data, k: int = 10):
    """A `models.calibration.Calibrator` of the model's top-k scores, fitted on the posts of
    `data` (the validation split): each top-k tag's score against whether it is a true tag."""
    from models.calibration import Calibrator

    top, scores = topk_scored(model, data.batch(), k)
    return Calibrator().fit(scores, hits_matrix(top, data.indptr, data.indices))


def evaluate(model, data, ks: tuple[int, ...] = (5,)) -> dict[str, float]:
    """P/R/F1/Acc@k over the posts of `data` (a PostData), via models.metrics."""
    if len(data) == 0:
        return {f"f1@{k}": 0.0 for k in ks}
    top = topk_tags(model, data.batch(), max(ks))
    if top.shape[1] < max(ks):  # fewer tags than k: pad so metrics_at_k accepts it
        top = np.pad(top, ((0, 0), (0, max(ks) - top.shape[1])), constant_values=-1)
    return metrics_at_k(top, data.indptr, data.indices, ks=ks)
