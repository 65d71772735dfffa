"""Choosing p, q (models/node2vec/tune.py) and the paper's node-classification score
(models/node2vec/classify.py): exact checks of the pieces, a planted p/q preference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from models.errors import ModelError
from models.node2vec import SkipGramConfig, build_graph
from models.node2vec.classify import (
    f1_scores,
    fit_logistic_ovr,
    label_matrix,
    node_classification,
    top_k_predictions,
)
from models.node2vec.quality import planted_partition
from models.node2vec.tune import (
    TuneSettings,
    bfs_sample,
    edge_list,
    holdout_split,
    subgraph,
    tune,
    tune_plan,
    tune_walks,
)

# --------------------------------------------------------------------------- classification


def test_logistic_regression_reaches_the_optimum():
    # At the minimum of c * logloss + |W|^2 / 2 the gradient is zero, label by label.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    y = (x @ rng.normal(size=(6, 3)) + rng.normal(size=(300, 3))) > 0.5
    w, b = fit_logistic_ovr(x, y, c=0.7, tol=1e-8, max_iter=1000)
    z = x @ w + b
    r = 0.7 * (1 / (1 + np.exp(-z)) - y)
    np.testing.assert_allclose(x.T @ r + w, 0, atol=2e-5)
    np.testing.assert_allclose(r.sum(axis=0), 0, atol=2e-5)
    assert np.abs(w).max() > 0.3                       # it learnt something


def test_top_k_and_f1_by_hand():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.0, 0.0, 0.0]])
    pred = top_k_predictions(scores, np.array([2, 1, 1]))
    assert pred.tolist() == [[True, False, True], [False, True, False], [True, False, False]]
    truth = np.array([[True, False, False], [False, True, False], [False, False, True]])
    # label 0: tp 1 fp 1 fn 0 -> 2/3; label 1: tp 1 -> 1; label 2: tp 0 fp 1 fn 1 -> 0
    macro, micro = f1_scores(truth, pred)
    assert macro == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert micro == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))


def test_node_classification_finds_planted_labels_and_fails_on_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    centres = rng.normal(size=(4, 16)) * 3
    vecs = centres[labels] + rng.normal(size=(400, 16))
    y, values = label_matrix(np.arange(400), labels, 400)
    assert values.tolist() == [0, 1, 2, 3]
    good = node_classification(vecs, y, splits=3, seed=0)
    noise = node_classification(rng.normal(size=(400, 16)), y, splits=3, seed=0)
    assert good["macro_f1"] > 0.95 and noise["macro_f1"] < 0.4
    assert good["splits"] == 3 and 0 < good["micro_f1"] <= 1


def test_node_classification_bad_inputs():
    y = np.zeros((10, 2), bool)
    y[:3, 0] = True
    with pytest.raises(ModelError, match="at least 4 labelled"):
        node_classification(np.zeros((10, 4)), y)
    with pytest.raises(ModelError, match="train_frac"):
        node_classification(np.zeros((10, 4)), y, train_frac=1.0)


# --------------------------------------------------------------------------- graph pieces


def components(g):
    mat = csr_matrix((np.ones(g.n_edges), g.indices, g.indptr), shape=(g.n_nodes,) * 2)
    return connected_components(mat, directed=False)[0]


def test_holdout_keeps_every_component_connected():
    src, dst, _ = planted_partition(6, 30, 4.0, 0.3, seed=2)
    g = build_graph(np.r_[src, 500, 501], np.r_[dst, 501, 502], nodes=np.r_[np.arange(180), 500, 501, 502, 900])
    kept, hu, hv = holdout_split(g, 0.3, seed=3)
    u, v, _ = edge_list(g)
    assert hu.size == round(0.3 * u.size)
    assert components(kept) == components(g)           # a spanning forest is never held out
    assert not kept.has_edge(hu, hv).any() and g.has_edge(hu, hv).all()
    assert kept.n_edges // 2 + hu.size == u.size
    assert np.array_equal(kept.node_ids, g.node_ids)


def test_bfs_sample_and_induced_subgraph():
    src, dst, _ = planted_partition(10, 50, 6.0, 1.0, seed=4)
    g = build_graph(src, dst)
    keep = bfs_sample(g, 120, seed=0)
    assert keep.size == 120 and np.all(np.diff(keep) > 0)
    sub = subgraph(g, keep)
    assert np.array_equal(sub.node_ids, g.node_ids[keep])
    u, v, _ = edge_list(g)
    inside = np.isin(u, keep) & np.isin(v, keep)
    assert sub.n_edges // 2 == inside.sum()             # every edge between sampled nodes, no other
    assert components(sub) <= 2                         # grown breadth first: neighbourhoods stay whole
    assert bfs_sample(g, 10_000, seed=0).size == g.n_nodes


def test_tune_walks_keep_the_budget():
    s = TuneSettings(walks_per_node=10, budget=10, finalists=0, epochs_grid=(1,))      # 25 points
    assert tune_walks(s, 10_000, 10_000) == 4           # 25 x 4 walks = 10 runs of 10 walks
    s2 = TuneSettings(walks_per_node=10, budget=12, finalists=2, epochs_grid=(1, 2))     # the defaults
    assert s2 == TuneSettings()
    assert tune_walks(s2, 10_000, 10_000) == 3          # 25 x 3 walks + 2 full runs + one of 2 epochs <= 12
    assert tune_walks(s2, 10**6, 10**5) == 10           # sampled: never more than the full run
    assert tune_walks(TuneSettings(budget=14, finalists=2, epochs_grid=(2, 4)), 10_000, 10_000) == 4
    assert tune_walks(TuneSettings(budget=0.5), 100, 100) == 1


@pytest.mark.parametrize("field,value", [("p_grid", ()), ("p_grid", (1.0, 0.0)), ("q_grid", (1.0, float("nan"))),
                                         ("q_grid", (2.0, 2.0)), ("p_grid", (-1.0,))])
def test_bad_grids(field, value):
    with pytest.raises(ModelError, match=field.replace("_", "-")):
        TuneSettings(**{field: value}).check()


# --------------------------------------------------------------------------- the search


def cliques(seed, across=16.0):
    """50 near-cliques of 10 with many edges across: walks with a large q stay in their clique
    (a move to a common neighbour of the previous node weighs 1, any other 1/q), walks with a
    small q leave it at almost every step, so the community labels favour q = 4."""
    src, dst, comm = planted_partition(50, 10, 30.0, across, seed)
    g = build_graph(src, dst, nodes=np.arange(500))
    y, _ = label_matrix(np.arange(500), comm, 500)
    return g, y


SG = SkipGramConfig(dim=32, window=5, workers=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_find_the_planted_q(seed):
    g, y = cliques(seed)
    s = TuneSettings(p_grid=(1.0,), q_grid=(0.25, 4.0), walk_length=40, walks_per_node=10, budget=2, seed=seed,
                     threads=1, train_frac=0.2, finalists=0, epochs_grid=(1,))   # two labelled nodes per community to learn from
    res = tune(g, s, SG, y=y)
    by_q = {pt["q"]: pt["macro_f1"] for pt in res.points}
    assert (res.p, res.q) == (1.0, 4.0)
    assert by_q[4.0] > by_q[0.25] + 0.05


def test_link_scoring_records_every_point_and_picks_the_best():
    g, _ = cliques(0, across=3.0)
    seen = []
    s = TuneSettings(p_grid=(0.5, 2.0), q_grid=(0.5, 1.0, 2.0), walk_length=20, walks_per_node=4, budget=3,
                     seed=0, threads=1, finalists=0, epochs_grid=(1,))
    res = tune(g, s, SG, on_point=seen.append)
    rec = res.record()
    assert [(pt["p"], pt["q"]) for pt in rec["points"]] == [(p, q) for p in (0.5, 2.0) for q in (0.5, 1.0, 2.0)]
    assert seen == rec["points"]
    best = max(rec["points"], key=lambda pt: pt["score"])
    assert rec["chosen"] == {"p": best["p"], "q": best["q"], "epochs": 1} == {"p": res.p, "q": res.q, "epochs": 1}
    assert rec["epoch_runs"] == []
    assert all(pt["score"] == pt["auc"] > 0.55 for pt in rec["points"])   # the graph's structure is found
    assert res.q == 2.0     # short walks that stay in their clique predict its held-out edges best
    assert rec["walks_per_node"] == tune_walks(s, 500, 500) == 2
    assert rec["p_grid"] == [0.5, 2.0] and rec["sample"]["nodes"] == 500


def test_finalists_are_the_best_points_trained_on_every_walk():
    g, y = cliques(0)
    seen = []
    s = TuneSettings(p_grid=(0.5, 1.0, 2.0), q_grid=(0.25, 4.0), walk_length=20, walks_per_node=6, budget=3,
                     seed=0, threads=1, finalists=2, epochs_grid=(1,))
    res = tune(g, s, SG, y=y, on_point=seen.append)
    assert res.walks_per_node == 1                     # (3 - 2 full runs) * 6 walks / 6 points
    top = sorted(res.points, key=lambda pt: -pt["score"])[:2]
    assert {(f["p"], f["q"]) for f in res.finalists} == {(t["p"], t["q"]) for t in top}
    best = max(res.finalists, key=lambda f: f["score"])
    assert (res.p, res.q) == (best["p"], best["q"])
    assert [pt for pt in seen if pt.get("finalist")] == [{**f, "finalist": True} for f in res.finalists]
    assert res.record()["finalists"] == res.finalists


def test_the_winner_is_trained_again_for_more_epochs_and_the_best_run_wins():
    """One walk of 10 steps per node leaves 1 epoch far from trained: 6 epochs must win, with
    the winning p, q, a full run each, and the choice recorded."""
    g, y = cliques(0)
    seen = []
    s = TuneSettings(p_grid=(1.0, 2.0), q_grid=(4.0,), walk_length=10, walks_per_node=2, budget=4, seed=0,
                     threads=1, train_frac=0.2, finalists=1, epochs_grid=(1, 6))
    assert tune_walks(s, 500, 500) == 1                # (4 - 1 finalist - 6 epochs / 1) < 0: at least one walk
    res = tune(g, s, SG, y=y, on_point=seen.append)
    (fin,) = res.finalists
    (more,) = res.epoch_runs
    assert fin["epochs"] == 1 and more["epochs"] == 6 and (more["p"], more["q"]) == (fin["p"], fin["q"])
    assert more["macro_f1"] > fin["macro_f1"] + 0.05
    assert (res.p, res.q, res.epochs) == (fin["p"], fin["q"], 6)
    assert res.record()["chosen"] == {"p": fin["p"], "q": fin["q"], "epochs": 6}
    assert seen[-1] == {**more, "finalist": True}
    # without finalists and with short first-round runs, the winner gets a full run to compare with
    seen0 = []
    res0 = tune(g, replace(s, finalists=0), SG, y=y, on_point=seen0.append)
    assert [r["epochs"] for r in res0.epoch_runs] == [1, 6] and res0.epochs == 6
    # every run is reported, and the plan the job sizes its progress with counts exactly those runs
    assert [pt for pt in seen0 if pt.get("finalist")] == [{**r, "finalist": True} for r in res0.epoch_runs]
    for settings, reported in ((s, seen), (replace(s, finalists=0), seen0)):
        plan = tune_plan(settings, 500, 500)
        walks = [plan.full_walks if pt.get("finalist") else plan.walks_per_node for pt in reported]
        assert plan.walk_epochs() == sum(w * pt["epochs"] for w, pt in zip(walks, reported))


@pytest.mark.parametrize("grid", [(), (0,), (1, 1), (1.5,)])
def test_bad_epochs_grid(grid):
    with pytest.raises(ModelError, match="tune-epochs"):
        TuneSettings(epochs_grid=grid).check()


def test_large_graphs_are_tuned_on_a_sample():
    g, y = cliques(1)
    s = TuneSettings(p_grid=(1.0,), q_grid=(1.0,), walk_length=10, walks_per_node=2, max_nodes=200, seed=0,
                     threads=1)
    res = tune(g, s, SG, y=y)
    assert res.sample["nodes"] == 200 and res.sample["of"] == 500 and "labelled" in res.sample["how"]
    assert 0 < res.points[0]["macro_f1"] <= 1
