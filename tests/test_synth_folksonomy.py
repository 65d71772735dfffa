"""The folksonomy generator: many users tag the same items, with the planted structure it promises."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs._synth_folksonomy import FolksonomyParams, edges_table, make_folksonomy, posts_table
from models.baselines import MostPopular, PopularityMix
from models.metrics import metrics_at_k

SMALL = dict(num_users=300, num_items=2000, num_tags=1500, num_posts=9000, num_genres=12)


@pytest.fixture(scope="module")
def folk():
    return make_folksonomy(FolksonomyParams(**SMALL, seed=3))


def test_same_seed_same_folksonomy_other_seed_another():
    tiny = dict(num_users=60, num_items=300, num_tags=200, num_posts=1500, num_genres=6)
    a, b = (make_folksonomy(FolksonomyParams(**tiny, seed=5)) for _ in range(2))
    c = make_folksonomy(FolksonomyParams(**tiny, seed=6))
    for k in ("user", "item", "indptr", "tags", "src", "dst"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert not np.array_equal(a.tags[:300], c.tags[:300])


def test_one_post_per_user_item_and_a_few_distinct_tags(folk):
    assert len(np.unique(folk.user * 10**6 + folk.item)) == len(folk.user)
    n = np.diff(folk.indptr)
    assert n.min() >= 1 and n.max() <= 10 and 2.0 < n.mean() < 3.2
    for p in range(0, len(folk.user), 97):
        t = folk.tags[folk.indptr[p]:folk.indptr[p + 1]]
        assert len(np.unique(t)) == len(t)


def test_many_users_tag_the_same_items_zipf(folk):
    per_item = np.bincount(folk.item)
    per_item = np.sort(per_item[per_item > 0])[::-1]
    assert per_item[0] >= 50                                   # a head of items many users tag
    assert per_item[: len(per_item) // 100].sum() > 0.1 * len(folk.user)  # the top 1% hold over 10%
    uses = np.sort(np.bincount(folk.tags))[::-1]
    assert uses[:15].sum() > 0.15 * len(folk.tags)             # Zipf tags: a heavy head


def _split(f):
    """Last post of each user with >= 3 posts held out; pairs of the rest."""
    last = np.r_[np.flatnonzero(np.diff(f.user)), len(f.user) - 1]
    last = last[np.bincount(f.user)[f.user[last]] >= 3]
    held = np.zeros(len(f.user), bool)
    held[last] = True
    post = np.repeat(np.arange(len(f.user)), np.diff(f.indptr))
    tr = ~held[post]
    ptr = np.r_[0, np.cumsum(np.diff(f.indptr)[held])]
    return post[tr], f.tags[tr], last, ptr, f.tags[held[post]]


def test_items_and_users_each_carry_their_own_tags(folk):
    post, tags, held, ptr, truth = _split(folk)
    n_tags, n_users, n_items = len(folk.tag_genre), len(folk.personal), len(folk.item_genres)
    f1 = {"most-popular": metrics_at_k(MostPopular(n_tags).fit(folk.user[post], tags).recommend(folk.user[held], 5),
                                       ptr, truth, ks=(5,))["f1@5"]}
    for name, alpha in (("user", 1.0), ("item", 0.0), ("mix", 0.5)):
        m = PopularityMix(n_tags, n_users, n_items, alpha=alpha).fit(folk.user[post], tags, folk.item[post], post_index=post)
        f1[name] = metrics_at_k(m.recommend(folk.user[held], 5, folk.item[held]), ptr, truth, ks=(5,))["f1@5"]
    assert f1["user"] > f1["most-popular"] + 0.08 and f1["item"] > f1["most-popular"] + 0.05, f1
    assert f1["mix"] > max(f1["user"], f1["item"]) + 0.02, f1      # both sides add information


def test_friends_share_a_favourite_genre_more_than_strangers(folk):
    fav = folk.user_genres
    share = lambda a, b: np.mean([len(set(fav[x]) & set(fav[y])) > 0 for x, y in zip(a, b)])  # noqa: E731
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(fav), 3000), rng.integers(0, len(fav), 3000)
    assert share(folk.src, folk.dst) > share(a, b) + 0.2
    assert (folk.src < folk.dst).all() and 8 < 2 * len(folk.src) / len(fav) < 16


def test_tables_meet_the_data_contract(folk, tmp_path):
    from jobs._synth_world import tag_names
    from jobs.contract import read_edges, read_posts

    pq.write_table(posts_table(folk, tag_names(len(folk.tag_genre))), tmp_path / "posts.parquet")
    pq.write_table(edges_table(folk), tmp_path / "edges.parquet")
    posts = read_posts(tmp_path / "posts.parquet")
    assert posts.num_rows == len(folk.user) and len(np.unique(posts["item_id"].to_numpy())) == len(np.unique(folk.item))
    assert read_edges(tmp_path / "edges.parquet")[0].num_rows == len(folk.src)


def test_synth_kind_folksonomy_writes_a_tag_only_archive(tmp_path):
    import json

    from jobs._cli import run_job
    from jobs.contract import read_posts
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth

    argv = ["--out", str(tmp_path), "--kind", "folksonomy", "--num-users", "80", "--num-posts", "1600",
            "--num-tags", "300", "--num-items", "400", "--num-genres", "6", "--seed", "2"]
    assert run_job("synth", SynthConfig, synth, argv) == 0
    arch = tmp_path / "archive"
    posts = read_posts(arch / "posts.parquet")
    assert posts.num_rows == 1600 and not any((arch / p).exists() for p in posts["image"].to_pylist()[:20])
    meta = json.loads((arch / "archive.json").read_text())
    assert meta["complete"] and meta["files"]["images"] is None and meta["params"]["kind"] == "folksonomy"
    for name in ("users", "items", "tags"):
        assert pq.read_table(arch / f"{name}.parquet").num_rows > 0
    again = tmp_path / "again"
    assert run_job("synth", SynthConfig, synth, [*argv[:1], str(again), *argv[2:]]) == 0
    assert (again / "archive" / "posts.parquet").read_bytes() == (arch / "posts.parquet").read_bytes()


@pytest.mark.parametrize("flags, message", [
    (["--num-posts", "5000"], r"one post per \(user, item\)"),
    (["--write-features", "--no-images"], "writes no image features"),
    (["--num-genres", "0"], r"--num-genres must be in 1..--num-tags"),
])
def test_synth_folksonomy_bad_flags(tmp_path, flags, message):
    from jobs._cli import resolve_config
    from jobs.errors import JobError
    from jobs.synth import SynthConfig, validate

    base = ["--out", str(tmp_path), "--kind", "folksonomy", "--num-users", "10", "--num-items", "100",
            "--num-posts", "300", "--num-tags", "50"]
    cfg = resolve_config(SynthConfig, base + flags, "synth", "")
    with pytest.raises(JobError, match=message):
        validate(cfg)


@pytest.mark.parametrize("combine", ["product", "mixture"])
def test_posts_draw_their_tags_from_the_planted_distribution(combine):
    """The first tag of a post is one draw from Planted's p(t | u, i): over many posts of one
    (user, item) its frequencies match p."""
    from jobs._synth_folksonomy import _post_tags

    f = make_folksonomy(FolksonomyParams(num_users=40, num_items=200, num_tags=300, num_posts=800, num_genres=6,
                                         combine=combine, seed=4))
    n, u, i = 20_000, int(f.user[0]), int(f.item[0])
    tags = _post_tags(np.random.default_rng(1), np.full(n, u), np.full(n, i), f.planted)
    freq = np.bincount([t[0] for t in tags], minlength=300) / n
    p = f.planted.scores(u, i, np.arange(300))
    p /= p.sum()
    assert p.max() > 0.05 and np.abs(freq - p).max() < 4 * np.sqrt(p.max() / n) + 1e-3
    rare = p < 1e-4                                            # the background: its total mass matches too
    assert abs(freq[rare].sum() - p[rare].sum()) < 4 * np.sqrt(p[rare].sum() / n) + 1e-3


def _f1_planted_and_mix(f):
    post, tags, held, ptr, truth = _split(f)
    n_tags, n_users, n_items = len(f.tag_genre), len(f.personal), len(f.item_genres)
    top = np.array([np.argsort(-f.planted.scores(u, i, np.arange(n_tags)), kind="stable")[:5]
                    for u, i in zip(f.user[held], f.item[held])])
    mix = PopularityMix(n_tags, n_users, n_items, alpha=0.5).fit(f.user[post], tags, f.item[post], post_index=post)
    f1 = lambda t: metrics_at_k(t, ptr, truth, ks=(5,))["f1@5"]  # noqa: E731
    return f1(top), f1(mix.recommend(f.user[held], 5, f.item[held]))


def test_the_product_of_experts_leaves_room_above_the_frequency_mix(folk):
    """Under the product, ranking by the planted p(t | u, i) is well above the linear mix of
    the user's and item's tag frequencies (what a factorization model can learn); under a
    mixture that mix is much closer to the planted ranking."""
    planted, mix = _f1_planted_and_mix(folk)
    m_planted, m_mix = _f1_planted_and_mix(make_folksonomy(FolksonomyParams(**SMALL, combine="mixture", seed=3)))
    assert planted > mix + 0.04, (planted, mix)
    assert planted - mix > m_planted - m_mix, (planted, mix, m_planted, m_mix)


def test_unknown_combination_rule_is_refused():
    with pytest.raises(ValueError, match="combine 'sum'.*product.*mixture"):
        FolksonomyParams(combine="sum")


def test_heavy_taggers_on_a_small_catalogue_keep_the_post_count():
    """Users drawn past the catalogue's size are capped there and their excess goes to the others."""
    from jobs._synth_folksonomy import _posts_per_user

    p = FolksonomyParams(num_users=50, num_items=40, num_posts=1800, activity_sigma=3.0, seed=1)
    n = _posts_per_user(p, np.random.default_rng(0))
    assert n.sum() == 1800 and n.max() == 40 and n.min() >= 1 and (n == 40).sum() > 1


def test_more_posts_than_user_item_pairs_is_refused():
    with pytest.raises(ValueError, match=r"num_posts \(2001\).*one post per \(user, item\)"):
        FolksonomyParams(num_users=50, num_items=40, num_posts=2001)
