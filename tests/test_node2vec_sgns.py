"""The numba skip-gram trainer (models/node2vec/sgns.py) against a plain-Python replay of
its documented algorithm, gensim's down-sampling rule and an exact alias-table check."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelError
from models.node2vec import build_graph, random_walks, sgns
from models.node2vec.sgns import _alias_table, keep_probability, train_sgns
from models.node2vec.walks import _next, _walk_seed


def nxt(state):
    """The kernel's splitmix64 step from Python (uint64 kept: Python ints above 2**63 overflow int64)."""
    state, u = _next(np.uint64(state))
    return np.uint64(state), u


def reference_sgns(walks, counts, dim, window, negative, epochs, alpha, sample, seed):
    """The trainer's algorithm in float64 Python, one walk at a time, same random stream."""
    n = counts.size
    present = np.flatnonzero(counts)
    rng = np.random.default_rng([seed, 0x5367_6E73])
    syn0 = np.zeros((n, dim))
    syn0[present] = (rng.random((present.size, dim), np.float32) * 2 - 1) / dim
    syn1 = np.zeros((n, dim))
    keep = keep_probability(counts, sample).astype(np.float32)
    w = counts[present].astype(np.float64) ** 0.75
    prob, alias = _alias_table(w)
    total = len(walks) * epochs
    rows = max(1, sgns.ALPHA_STEP_TOKENS // walks.shape[1])
    pos = 0
    for _ in range(epochs):
        for walk in walks:
            a = alpha - (alpha - sgns.MIN_ALPHA) * ((pos // rows) * rows / total)
            state = np.uint64(_walk_seed(np.uint64(seed), np.int64(pos)))
            sent = []
            for v in walk[walk >= 0]:
                if keep[v] < 1.0:
                    state, u = nxt(state)
                    if u >= keep[v]:
                        continue
                sent.append(int(v))
            for i, centre in enumerate(sent):
                state, u = nxt(state)
                r = window - int(u * window)
                ctx = [sent[j] for j in range(max(0, i - r), min(len(sent), i + r + 1)) if j != i]
                outs = [centre]
                for _ in range(negative):
                    state, u = nxt(state)
                    x = u * present.size
                    k = min(int(x), present.size - 1)
                    node = present[k if x - k < prob[k] else alias[k]]
                    if node != centre:
                        outs.append(int(node))
                if not ctx:
                    continue
                f = np.clip(syn0[ctx] @ syn1[outs].T, -30, 30)
                label = np.zeros(len(outs))
                label[0] = 1.0
                g = (label - 1 / (1 + np.exp(-f))) * a
                neu1e = g @ syn1[outs]
                np.add.at(syn1, outs, g.T @ syn0[ctx])
                np.add.at(syn0, ctx, neu1e)
            pos += 1
    return syn0


def small_walks(directed=False):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 30, 120), rng.integers(0, 30, 120)
    if directed:   # sinks: walks end early and carry -1 padding
        src, dst = np.r_[src, 100], np.r_[dst, 101]
    g = build_graph(src, dst, directed=directed, nodes=np.arange(40 if not directed else 102))
    walks = random_walks(g, 9, 3, 0.5, 2.0, seed=1)
    return g, walks


@pytest.mark.parametrize("directed", [False, True])
def test_trainer_matches_plain_python_replay(directed):
    g, walks = small_walks(directed)
    counts = np.bincount(walks[walks >= 0], minlength=g.n_nodes)
    kw = dict(dim=8, window=3, negative=4, epochs=2, alpha=0.05, sample=0.05, seed=7)
    ours = train_sgns([walks[:40], walks[40:]], g.n_nodes, counts, threads=1, **kw)
    ref = reference_sgns(walks, counts, **kw)
    assert np.abs(ref).max() > 0.2                      # trained well away from the init
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-6)
    assert np.all(ours[counts == 0] == 0)               # nodes never walked: zero rows


def test_alias_table_is_exactly_the_weights():
    w = np.random.default_rng(3).pareto(1.2, 500) + 1e-3
    prob, alias = _alias_table(w)
    n = w.size
    mass = prob.copy()
    np.add.at(mass, alias, 1.0 - prob)                 # slot j gives 1 - prob[j] to alias[j]
    np.testing.assert_allclose(mass / n, w / w.sum(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sample", [1e-3, 0.005, 5.0, 0.0])
def test_down_sampling_is_gensims(sample):
    from gensim.models import Word2Vec

    counts = np.r_[np.random.default_rng(1).integers(1, 5000, 300), 0, 40_000]
    keys = [str(i) for i in range(counts.size) if counts[i]]
    model = Word2Vec(vector_size=4, min_count=0, sg=1, sample=sample, workers=1)
    model.build_vocab_from_freq({k: int(counts[int(k)]) for k in keys})
    theirs = np.array([model.wv.get_vecattr(k, "sample_int") for k in keys]) / (2**32 - 1)
    ours = keep_probability(counts, sample)[[int(k) for k in keys]]
    np.testing.assert_allclose(ours, theirs, rtol=1e-7)
    if sample:
        assert ours.min() < 0.5                         # the rule bites: the test can fail


def test_deterministic_with_one_thread_and_reads_memory_maps(tmp_path):
    g, walks = small_walks()
    counts = np.bincount(walks[walks >= 0], minlength=g.n_nodes)
    kw = dict(dim=8, window=3, negative=4, epochs=1, alpha=0.025, sample=1e-3, seed=2, threads=1)
    np.save(tmp_path / "w.npy", walks)
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")  # read-only, as embed_users' spilled walks
    a = train_sgns([walks], g.n_nodes, counts, **kw)
    b = train_sgns([mapped], g.n_nodes, counts, **kw)
    assert np.array_equal(a, b)
    c = train_sgns([walks], g.n_nodes, counts, **{**kw, "seed": 3})
    assert not np.array_equal(a, c)


def test_progress_per_chunk_every_epoch(monkeypatch):
    g, walks = small_walks()
    counts = np.bincount(walks[walks >= 0], minlength=g.n_nodes)
    monkeypatch.setattr(sgns, "CHUNK_ROWS", 50)
    seen: list[int] = []
    train_sgns([walks[:70], walks[70:]], g.n_nodes, counts, dim=4, window=2, negative=2, epochs=2, alpha=0.025,
               sample=0, seed=0, threads=2, on_walks=seen.append)
    assert len(walks) == 120 and seen == [50, 20, 50] * 2


def test_bad_inputs():
    kw = dict(dim=4, window=2, negative=2, epochs=1, alpha=0.025, sample=0, seed=0)
    with pytest.raises(ModelError, match="no walks"):
        train_sgns([np.full((2, 3), -1, np.int32)], 5, np.zeros(5, np.int64), **kw)
    with pytest.raises(ModelError, match="one entry per node"):
        train_sgns([np.zeros((1, 3), np.int32)], 5, np.ones(4, np.int64), **kw)
