"""The frequency baselines against direct computation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from models.baselines import (
    FriendsPopular,
    ItemPopular,
    MostPopular,
    PopularityMix,
    UserPopular,
    get_baseline,
    tune_alpha,
)


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


def _reference_mix(users, items, posts, tags, u, i, alpha, k, global_order):
    """alpha * (share of u's posts with t) + (1 - alpha) * (share of i's posts with t), by hand."""
    def shares(rows, r):
        n = len({p for rr, p in zip(rows, posts) if rr == r})
        c = Counter(t for rr, t in zip(rows, tags) if rr == r)
        return {t: v / n for t, v in c.items()} if n else {}
    su, si = (shares(users, u) if u >= 0 else {}), (shares(items, i) if i >= 0 else {})
    score = {t: alpha * su.get(t, 0.0) + (1 - alpha) * si.get(t, 0.0) for t in set(su) | set(si)}
    rank = {t: r for r, t in enumerate(global_order)}
    for t in global_order:
        score.setdefault(t, 0.0)
    return sorted(score, key=lambda t: (-round(score[t], 12), rank[t]))[:k]


def _pairs(seed, n_posts=400, n_users=15, n_items=25, n_tags=30):
    rng = np.random.default_rng(seed)
    post_user = rng.integers(0, n_users, n_posts)
    post_item = rng.integers(0, n_items, n_posts)
    per = rng.integers(1, 5, n_posts)
    posts = np.repeat(np.arange(n_posts), per)
    tags = (rng.zipf(1.6, len(posts)) + 3 * post_item[posts] + post_user[posts]) % n_tags
    keep = np.unique(posts * n_tags + tags, return_index=True)[1]  # a tag once per post
    posts, tags = posts[keep], tags[keep]
    return post_user[posts], post_item[posts], posts, tags, (n_users, n_items, n_tags)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_popularity_mix_matches_reference(alpha):
    users, items, posts, tags, (nu, ni, nt) = _pairs(1)
    m = PopularityMix(nt, nu, ni, alpha=alpha).fit(users, tags, items, post_index=posts)
    q_users = np.array([0, 3, -1, 5, -1, 7])
    q_items = np.array([2, -1, 4, 11, -1, 24])
    got, scores = m.scores_topk(q_users, 10, q_items)
    order = m.global_.order.tolist()
    for r, (u, i) in enumerate(zip(q_users, q_items)):
        want = _reference_mix(users.tolist(), items.tolist(), posts.tolist(), tags.tolist(), u, i, alpha, 10, order)
        assert got[r].tolist() == want, (u, i)
    assert np.all(np.diff(scores, axis=1) <= 1e-12) and scores.min() >= 0 and scores.max() <= 1


def test_fallbacks_for_unseen_users_and_items():
    users, items, posts, tags, (nu, ni, nt) = _pairs(2)
    kw = dict(post_index=posts)
    mix = PopularityMix(nt, nu, ni, alpha=0.4).fit(users, tags, items, **kw)
    up = UserPopular(nt, nu, ni).fit(users, tags, items, **kw)
    ip = ItemPopular(nt, nu, ni).fit(users, tags, items, **kw)
    mp = MostPopular(nt).fit(users, tags)
    u, i, none = np.arange(nu), np.arange(nu) % ni, -np.ones(nu, np.int64)
    assert np.array_equal(mix.recommend(u, 8, none), up.recommend(u, 8, i))        # unique items: user-popular
    assert np.array_equal(mix.recommend(none, 8, i), ip.recommend(none, 8, i))     # unseen user: item-popular
    assert np.array_equal(ip.recommend(u, 8, none), mp.recommend(u, 8))            # unseen item: most-popular
    assert np.array_equal(mix.recommend(none, 8, none), mp.recommend(none, 8))


def test_chunked_scoring_equals_one_chunk(monkeypatch):
    import models.baselines as b

    users, items, posts, tags, (nu, ni, nt) = _pairs(3)
    m = PopularityMix(nt, nu, ni, alpha=0.5).fit(users, tags, items, post_index=posts)
    qu, qi = np.arange(nu).repeat(4), np.arange(4 * nu) % ni
    whole = m.scores_topk(qu, 10, qi)
    monkeypatch.setattr(b, "CANDIDATES_PER_CHUNK", 37)
    parts = m.scores_topk(qu, 10, qi)
    assert np.array_equal(whole[0], parts[0]) and np.allclose(whole[1], parts[1])


def test_tune_alpha_picks_the_best_weight_on_validation():
    """Tags that follow the item: the chosen mix beats user-popular; that follow the user: item-popular."""
    rng = np.random.default_rng(0)
    nu, ni, nt = 30, 30, 60
    for follows in ("item", "user"):
        pu, pi = rng.integers(0, nu, 1200), rng.integers(0, ni, 1200)
        own = pi if follows == "item" else pu
        tag = np.where(rng.random(1200) < 0.8, (2 * own + rng.integers(0, 8, 1200)) % nt, rng.integers(0, nt, 1200))
        held = np.arange(1200) >= 1000
        m = PopularityMix(nt, nu, ni).fit(pu[~held], tag[~held], pi[~held])
        f1 = tune_alpha(m, pu[held], pi[held], np.arange(201), tag[held])
        assert len(f1) == 9 and f1[m.alpha] == max(f1.values())
        wrong = 0.9 if follows == "item" else 0.1   # the grid's end on the side without signal
        assert f1[m.alpha] > f1[wrong] + 0.05, (follows, f1)
        assert abs(m.alpha - wrong) >= 0.4


def test_unknown_baseline_lists_the_valid_ones():
    from models.errors import ModelError

    with pytest.raises(ModelError, match="user-item-popular"):
        get_baseline("tag-popular", 3, 3)


def test_friends_popular_matches_reference():
    users, items, posts, tags, (nu, ni, nt) = _pairs(4)
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, nu + 3, 40), rng.integers(0, nu + 3, 40)   # users >= nu have no posts
    n = nu + 3
    key = np.unique(np.concatenate([a * n + b, b * n + a])[np.concatenate([a != b, a != b])])
    src, dst = key // n, key % n
    indptr = np.r_[0, np.cumsum(np.bincount(src, minlength=n))]
    m = FriendsPopular(nt, n, indptr, dst).fit(users, tags, post_index=posts)
    got, scores = m.scores_topk(np.arange(n), 6)
    order = m.global_.order.tolist()
    for u in range(n):
        friends = [f for f in dst[indptr[u]:indptr[u + 1]].tolist() if f < nu and (users == f).any()]
        score: dict[int, float] = {}
        for f in friends:
            n_posts = len(set(posts[users == f].tolist()))
            for t, c in Counter(tags[users == f].tolist()).items():
                score[t] = score.get(t, 0.0) + c / n_posts / len(friends)
        want = sorted(set(score) | set(order), key=lambda t: (-round(score.get(t, 0.0), 12), order.index(t)))[:6]
        assert got[u].tolist() == want, u
    lonely = [u for u in range(n) if not any(f < nu for f in dst[indptr[u]:indptr[u + 1]])]
    assert lonely and all(got[u].tolist() == order[:6] for u in lonely)


def test_on_unique_items_the_tuned_mix_is_user_popular():
    """Every validation item unseen: each weight ranks like user-popular; the mix must stay it."""
    users, items, posts, tags, (nu, ni, nt) = _pairs(5)
    m = PopularityMix(nt, nu, ni).fit(users, tags, items, post_index=posts)
    vu = np.arange(nu)
    f1 = tune_alpha(m, vu, -np.ones(nu, np.int64), np.arange(nu + 1), tags[:nu])
    assert len(set(f1.values())) == 1 and m.alpha == 0.5
    up = UserPopular(nt, nu, ni).fit(users, tags, items, post_index=posts)
    assert np.array_equal(m.recommend(vu, 8, -np.ones(nu, np.int64)), up.recommend(vu, 8))
