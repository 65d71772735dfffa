"""Most-popular and user-popular baselines against direct computation."""

from __future__ import annotations

from collections import Counter

import numpy as np

from models.baselines import MostPopular, UserPopular


def _reference_user_topk(users, tags, u, k, global_order):
    c = Counter(t for uu, t in zip(users, tags) if uu == u)
    rank = {t: i for i, t in enumerate(global_order)}
    own = sorted(c, key=lambda t: (-c[t], rank[t]))
    rest = [t for t in global_order if t not in c]
    return (own + rest)[:k]


def test_most_popular_orders_by_count_then_index():
    m = MostPopular(5).fit(np.zeros(6, int), np.array([3, 3, 1, 1, 4, 0]))
    assert m.order.tolist() == [1, 3, 0, 4, 2]
    assert m.recommend(np.array([0, -1]), 3).tolist() == [[1, 3, 0], [1, 3, 0]]


def test_user_popular_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    n_users, T, n = 40, 30, 3000
    users = rng.integers(0, n_users, n)
    tags = (rng.zipf(1.5, n) + users) % T  # personal preferences on a long tail
    m = UserPopular(T, n_users).fit(users, tags)
    req = np.concatenate([np.arange(n_users), [-1]])
    got = m.recommend(req, 10)
    for u in range(n_users):
        assert got[u].tolist() == _reference_user_topk(users.tolist(), tags.tolist(), u, 10, m.global_.order.tolist())
    assert got[-1].tolist() == m.global_.order[:10].tolist()  # unseen user: global list


def test_user_popular_pads_with_minus_one_when_vocabulary_is_small():
    m = UserPopular(3, 1).fit(np.array([0, 0]), np.array([2, 2]))
    assert m.recommend(np.array([0]), 5).tolist() == [[2, 0, 1, -1, -1]]
