"""P/R/F1/Acc@k against a slow, obviously correct reference on random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import metrics_at_k, metrics_reference, to_csr


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n, T = 300, 25
    true = [set(rng.choice(T, rng.integers(0, 6), replace=False).tolist()) for _ in range(n)]
    topk = np.stack([rng.permutation(T)[:10] for _ in range(n)])
    topk[rng.random((n, 10)) < 0.05] = -1  # short lists padded with -1
    indptr, indices = to_csr([sorted(t) for t in true])
    got = metrics_at_k(topk, indptr, indices)
    assert got["n_posts"] == sum(1 for t in true if t)
    for k in range(1, 11):
        ref = metrics_reference(topk.tolist(), true, k)
        for m in ("precision", "recall", "f1", "accuracy"):
            assert got[f"{m}@{k}"] == pytest.approx(ref[m], abs=1e-12), (m, k)


def test_known_answer_with_fewer_true_tags_than_k():
    # Post 0: true {1}, list [1, 2, 3] -> P@3 = 1/3, R@3 = 1. Post 1: true {4, 5}, list [9, 5, 4].
    topk = np.array([[1, 2, 3], [9, 5, 4]])
    indptr, indices = to_csr([[1], [4, 5]])
    m = metrics_at_k(topk, indptr, indices, ks=[1, 2, 3])
    assert m["precision@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["accuracy@1"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert m["recall@3"] == pytest.approx(1.0)
    p, r = (1 / 3 + 2 / 3) / 2, 1.0
    assert m["f1@3"] == pytest.approx(2 * p * r / (p + r))  # F1 from the averaged P and R


def test_duplicate_true_tags_and_empty_posts_are_handled():
    topk = np.array([[1, 2], [3, 4]])
    indptr, indices = to_csr([[1, 1, 2], []])
    m = metrics_at_k(topk, indptr, indices, ks=[2])
    assert m["n_posts"] == 1 and m["recall@2"] == 1.0 and m["precision@2"] == 1.0


def test_rejects_too_short_lists():
    with pytest.raises(ValueError, match="K >= 10"):
        metrics_at_k(np.zeros((3, 5), int), *to_csr([[1], [1], [1]]))
