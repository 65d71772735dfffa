"""Per-sample BPR SGD: the fast numba kernel against Algorithm 1 and the torch step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.recsys import get_model
from models.recsys.bpr import BPRConfig, BPRTrainer
from models.recsys.bpr_step import bpr_step_fused
from models.recsys.data import PostData
from models.recsys.evaluate import evaluate
from models.recsys.sgd import SGDTrainer, algorithm1, draw_negatives, hardest_negatives, sgd_epoch


def _random_case(family: str, seed: int):
    """Random tables, posts (some with an unseen item) and a sample sequence."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_tags, k = rng.integers(3, 12), rng.integers(3, 12), rng.integers(6, 20), rng.integers(2, 9)
    n_posts, n = rng.integers(5, 30), rng.integers(50, 300)
    names = ("user", "item", "tag_user", "tag_item") if family == "PITF" else ("user", "item", "tag", "bias")
    shapes = ((n_users, k), (n_items, k), (n_tags, k), (n_tags, k) if family == "PITF" else (n_tags,))
    params = {nm: (rng.normal(size=sh) * 0.3).astype(np.float32) for nm, sh in zip(names, shapes)}
    users = rng.integers(0, n_users, n_posts)
    items = np.where(rng.random(n_posts) < 0.2, -1, rng.integers(0, n_items, n_posts))
    post = rng.integers(0, n_posts, n)
    pos = rng.integers(0, n_tags, n)
    neg = (pos + rng.integers(1, n_tags, n)) % n_tags
    lr, reg = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0, 0.01))
    return params, users, items, post, pos, neg, lr, reg


@pytest.mark.parametrize("family", ["PITF", "FM"])
@pytest.mark.parametrize("seed", range(4))
def test_kernel_makes_algorithm1s_updates(family, seed):
    params, users, items, post, pos, neg, lr, reg = _random_case(family, seed)
    ref = {k: v.copy() for k, v in params.items()}
    fast = {k: v.copy() for k, v in params.items()}
    loss_ref = algorithm1(family, ref, users, items, post, pos, neg, lr, reg)
    loss_fast = sgd_epoch(family, fast, users, items, post, pos, neg, lr, reg, threads=1)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-4)
    for k in params:
        np.testing.assert_allclose(fast[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
        assert not np.array_equal(fast[k], params[k]), f"{k} never moved"


@pytest.mark.parametrize("family", ["PITF", "FM"])
def test_compiled_reference_equals_plain_reference(family):
    params, users, items, post, pos, neg, lr, reg = _random_case(family, 11)
    a = {k: v.copy() for k, v in params.items()}
    b = {k: v.copy() for k, v in params.items()}
    algorithm1(family, a, users, items, post, pos, neg, lr, reg)
    algorithm1(family, b, users, items, post, pos, neg, lr, reg, compiled=True)
    for k in params:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("name", ["PITF", "FM"])
def test_kernel_equals_the_torch_step_with_batches_of_one(name, torch_one_thread):
    """The CPU kernel and the torch trainer's step (batch 1: the step rule never binds) agree."""
    rng = np.random.default_rng(5)
    m = get_model(name, n_users=7, n_items=9, n_tags=12, dim=6, seed=3)
    users, items = rng.integers(0, 7, 15), rng.integers(0, 9, 15)
    post = rng.integers(0, 15, 80)
    pos = rng.integers(0, 12, 80)
    neg = (pos + rng.integers(1, 12, 80)) % 12
    fast = {k: v.numpy().copy() for k, v in m.params.items()}
    sgd_epoch(m.spec.family, fast, users, items, post, pos, neg, 0.1, 1e-3)
    for s in range(len(post)):
        inp = m.inputs({"user_index": users[post[s:s + 1]], "item_index": items[post[s:s + 1]]})
        bpr_step_fused(m, inp, torch.as_tensor(pos[s:s + 1]), torch.as_tensor(neg[s:s + 1]), 0.1, 1e-3)
    for k, v in m.params.items():
        np.testing.assert_allclose(fast[k], v.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


def test_negatives_never_hit_the_posts_tags_and_ignore_threads():
    rng = np.random.default_rng(0)
    n_tags = 9
    tags = [rng.choice(n_tags, rng.integers(1, 8), replace=False) for _ in range(40)]
    d = PostData.from_lists(np.zeros(40), np.zeros(40), tags, n_tags)
    post = rng.integers(0, 40, 20_000)
    one = draw_negatives(post, d.indptr, d.indices, n_tags, seed=7, threads=1)
    two = draw_negatives(post, d.indptr, d.indices, n_tags, seed=7, threads=2)
    assert np.array_equal(one, two)
    assert not any(t in set(tags[p].tolist()) for p, t in zip(post.tolist(), one.tolist()))
    # uniform over the allowed tags: a post with 1 tag spreads over the 8 others
    single = [p for p in range(40) if len(tags[p]) == 1]
    sel = np.isin(post, single)
    assert len(np.unique(one[sel])) == n_tags  # every tag is someone's allowed negative
    assert not np.array_equal(one, draw_negatives(post, d.indptr, d.indices, n_tags, seed=8))


def test_a_post_with_every_tag_has_no_negative():
    d = PostData.from_lists(np.zeros(1), np.zeros(1), [np.arange(4)], 4)
    with pytest.raises(ModelError, match="every tag"):
        draw_negatives(np.zeros(3, np.int64), d.indptr, d.indices, 4, seed=0)


def _folksonomy(seed: int, n_users: int = 120, n_items: int = 60, n_tags: int = 40, posts_per_user: int = 12):
    """Users tag shared items: each item has 3 tags of its own, each user 2 personal tags; a post
    carries 2 of its item's tags and 1 of its user's. One held-out post per user (seen items)."""
    rng = np.random.default_rng(seed)
    item_tags = np.stack([rng.choice(n_tags, 3, replace=False) for _ in range(n_items)])
    user_tags = np.stack([rng.choice(n_tags, 2, replace=False) for _ in range(n_users)])
    u = np.repeat(np.arange(n_users), posts_per_user)
    i = rng.integers(0, n_items, len(u))
    tags = [np.unique(np.concatenate([rng.choice(item_tags[ii], 2, replace=False), [rng.choice(user_tags[uu])]]))
            for uu, ii in zip(u, i)]
    held = np.zeros(len(u), bool)
    held[::posts_per_user] = True
    tr = PostData.from_lists(u[~held], i[~held], [t for t, h in zip(tags, held) if not h], n_tags)
    te = PostData.from_lists(u[held], i[held], [t for t, h in zip(tags, held) if h], n_tags)
    return tr, te, n_users, n_items, n_tags


@pytest.mark.parametrize("name", ["PITF", "FM"])
def test_trainer_learns_users_and_items(name):
    tr, te, nu, ni, nt = _folksonomy(0)
    m = get_model(name, n_users=nu, n_items=ni, n_tags=nt, dim=16, seed=0)
    before = evaluate(m, te)["f1@5"]
    trainer = SGDTrainer(m, tr, BPRConfig(kernel="sgd", lr=0.05, reg=1e-4, seed=0))
    losses = [trainer.run_epoch(e)[0] for e in range(30)]
    after = evaluate(m, te)["f1@5"]
    # 3 true tags, 5 guesses: a perfect list reaches F1@5 = 0.75; random is ~0.1
    assert after > 0.55 and after > before + 0.3
    assert losses[-1] < 0.5 * losses[0]


def test_hogwild_reaches_the_quality_of_one_thread():
    tr, te, nu, ni, nt = _folksonomy(1)
    f1 = {}
    for threads in (1, 2):
        m = get_model("PITF", n_users=nu, n_items=ni, n_tags=nt, dim=16, seed=0)
        trainer = SGDTrainer(m, tr, BPRConfig(kernel="sgd", lr=0.05, reg=1e-4, seed=0, threads=threads))
        for e in range(30):
            trainer.run_epoch(e)
        trainer.close()
        f1[threads] = evaluate(m, te)["f1@5"]
    assert f1[1] > 0.55 and abs(f1[2] - f1[1]) < 0.05


def test_one_thread_is_deterministic_and_matches_a_batch_one_torch_run(torch_one_thread):
    """Same seed, same factors; and the torch trainer at batch size 1 learns a model as good."""
    tr, te, nu, ni, nt = _folksonomy(2)
    runs = []
    for _ in range(2):
        m = get_model("FM", n_users=nu, n_items=ni, n_tags=nt, dim=8, seed=1)
        t = SGDTrainer(m, tr, BPRConfig(kernel="sgd", lr=0.05, reg=1e-4, seed=4))
        for e in range(3):
            t.run_epoch(e)
        runs.append(m.tag_matrix())
    assert np.array_equal(runs[0], runs[1])
    m = get_model("FM", n_users=nu, n_items=ni, n_tags=nt, dim=8, seed=1)
    bt = BPRTrainer(m, tr, BPRConfig(lr=0.05, reg=1e-4, batch_size=1, seed=4), total_pairs=len(tr.pairs()[0]))
    m2 = get_model("FM", n_users=nu, n_items=ni, n_tags=nt, dim=8, seed=1)
    st = SGDTrainer(m2, tr, BPRConfig(kernel="sgd", lr=0.05, reg=1e-4, seed=4))
    for e in range(3):
        bt.run_epoch(e)
        st.run_epoch(e)
    assert abs(evaluate(m, te)["f1@5"] - evaluate(m2, te)["f1@5"]) < 0.08


@pytest.mark.parametrize("name", ["PITF-IC", "FM+SN"])
def test_content_and_social_models_are_refused(name):
    m = get_model(name, n_users=3, n_items=3, n_tags=4, dim=4, sn_dim=4)
    d = PostData.from_lists(np.zeros(1), np.zeros(1), [np.array([1])], 4)
    with pytest.raises(ModelError, match="--bpr-kernel torch"):
        SGDTrainer(m, d, BPRConfig(kernel="sgd"))
    with pytest.raises(ModelError, match="--bpr-kernel torch"):
        BPRTrainer.for_partition(m, d, BPRConfig(kernel="sgd"))
    assert type(BPRTrainer.for_partition(m, d, BPRConfig(kernel="auto"))) is BPRTrainer


def test_auto_kernel_picks_per_sample_sgd_for_pitf_and_fm_in_one_process():
    from models.recsys.trainer import Partition

    d = PostData.from_lists(np.zeros(1), np.zeros(1), [np.array([1])], 4)
    for name in ("PITF", "FM"):
        m = get_model(name, n_users=3, n_items=3, n_tags=4, dim=4)
        assert type(BPRTrainer.for_partition(m, d, BPRConfig(kernel="auto"))) is SGDTrainer
        assert type(BPRTrainer.for_partition(m, d, BPRConfig(kernel="torch"))) is BPRTrainer
        two = Partition(rank=0, world=2, sync=object(), total=1)
        assert type(BPRTrainer.for_partition(m, d, BPRConfig(kernel="auto"), two)) is BPRTrainer
    with pytest.raises(ModelError, match="unknown BPR kernel 'numba'; valid"):
        BPRTrainer.for_partition(m, d, BPRConfig(kernel="numba"))


def test_unknown_family_and_bad_tables_are_refused():
    params, users, items, post, pos, neg, lr, reg = _random_case("PITF", 0)
    with pytest.raises(ModelError, match="family"):
        sgd_epoch("BPRMF", params, users, items, post, pos, neg, lr, reg)
    params["user"] = params["user"].astype(np.float64)
    with pytest.raises(ModelError, match="'user'.*float32"):
        sgd_epoch("PITF", params, users, items, post, pos, neg, lr, reg)


@pytest.mark.parametrize("family", ["PITF", "FM"])
def test_hardest_negative_is_the_highest_scored_candidate(family):
    """Checked against the scores written out in numpy, on fresh random tables."""
    params, users, items, post, pos, _, _, _ = _random_case(family, 7)
    rng = np.random.default_rng(3)
    n_tags = len(params["bias"] if family == "FM" else params["tag_user"])
    cands = rng.integers(0, n_tags, (4, len(post)))
    u, i = users[post], items[post]
    vi = np.where((i >= 0)[:, None], params["item"][np.maximum(i, 0)], 0.0)
    if family == "PITF":
        sc = [(params["user"][u] * params["tag_user"][c]).sum(1) + (vi * params["tag_item"][c]).sum(1) for c in cands]
    else:
        sc = [params["bias"][c] + ((params["user"][u] + vi) * params["tag"][c]).sum(1) for c in cands]
    want = cands[np.argmax(np.stack(sc), 0), np.arange(len(post))]
    assert np.array_equal(hardest_negatives(family, params, users, items, post, cands), want)
    assert np.array_equal(hardest_negatives(family, params, users, items, post, cands[:1]), cands[0])


def test_hard_negatives_learn_faster_than_uniform_ones():
    """Over epochs 11-20 the highest-scored of 4 draws keeps a better model than uniform draws."""
    tr, te, nu, ni, nt = _folksonomy(3)
    f1 = {}
    for draws in (1, 4):
        m = get_model("PITF", n_users=nu, n_items=ni, n_tags=nt, dim=16, seed=0)
        trainer = SGDTrainer(m, tr, BPRConfig(kernel="sgd", lr=0.05, reg=1e-4, seed=0, negatives=draws))
        curve = []
        for e in range(20):
            trainer.run_epoch(e)
            curve.append(evaluate(m, te)["f1@5"])
        f1[draws] = float(np.mean(curve[10:]))
    assert f1[4] > f1[1] + 0.015, f1
