"""The numba skip-gram trainer (models/node2vec/sgns.py) against a plain-Python replay of
its documented algorithm, gensim's down-sampling rule and exact checks of the noise table."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelError
from models.node2vec import build_graph, random_walks, sgns
from models.node2vec.sgns import NoiseTable, _alias_table, keep_probability, train_sgns
from models.node2vec.walks import _mix, _next, _walk_seed

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def nxt(state):
    """The kernel's splitmix64 step from Python (uint64 kept: Python ints above 2**63 overflow int64)."""
    state, u = _next(np.uint64(state))
    return np.uint64(state), u


def draw(state, noise: NoiseTable):
    """The kernel's noise draw in Python integers: alias over distinct counts, uniform inside one."""
    state = (int(state) + GOLDEN) & MASK64
    z = int(_mix(np.uint64(state)))
    hi, lo = z >> 32, z & 0xFFFFFFFF
    x = hi * noise.cut.size
    i = x >> 32
    if (x & 0xFFFFFFFF) >= int(noise.cut[i]):
        i = int(noise.alias[i])
    return np.uint64(state), int(noise.start[i]) + ((lo * int(noise.size[i])) >> 32)


def reference_sgns(walks, counts, dim, window, negative, epochs, alpha, sample, seed, shared):
    """The trainer's algorithm in float64 Python, one walk at a time, same random stream."""
    noise = NoiseTable(counts)
    rows = noise.order.size
    rng = np.random.default_rng([seed, 0x5367_6E73])
    syn0 = ((rng.random((rows, dim), np.float32) * 2 - 1) / dim).astype(np.float64)
    syn1 = np.zeros((rows, dim))
    keep = keep_probability(counts, sample).astype(np.float32)
    total = len(walks) * epochs
    step = max(1, sgns.ALPHA_STEP_TOKENS // walks.shape[1])
    pos = 0
    for _ in range(epochs):
        for walk in walks:
            a = max(alpha - (alpha - sgns.MIN_ALPHA) * ((pos // step) * step / total), sgns.MIN_ALPHA)
            a = float(np.float32(a))
            state = np.uint64(_walk_seed(np.uint64(seed), np.int64(pos)))
            sent = []
            for v in walk[walk >= 0]:
                if keep[v] < 1.0:
                    state, u = nxt(state)
                    if u >= keep[v]:
                        continue
                sent.append(int(noise.rank[v]))
            pairs = []                         # (context row, [centre, noise rows...]), drawn first
            for i, centre in enumerate(sent):
                state, u = nxt(state)
                r = window - int(u * window)
                if shared:
                    outs = [centre]
                    for _ in range(negative):
                        state, x = draw(state, noise)
                        outs.append(x if x != centre else -1)
                for j in range(max(0, i - r), min(len(sent), i + r + 1)):
                    if j == i:
                        continue
                    if not shared:
                        outs = [centre]
                        for _ in range(negative):
                            state, x = draw(state, noise)
                            outs.append(x if x != centre else -1)
                    pairs.append((sent[j], outs))
            for ctx, outs in pairs:            # word2vec's update, one pair after the other
                neu1e = np.zeros(dim)
                for t, b in enumerate(outs):
                    if b < 0:
                        continue
                    g = ((1.0 if t == 0 else 0.0) - sigmoid(syn0[ctx] @ syn1[b])) * a
                    neu1e += g * syn1[b]
                    syn1[b] += g * syn0[ctx]
                syn0[ctx] += neu1e
            pos += 1
    out = np.zeros((counts.size, dim))
    out[noise.order] = syn0
    return out


def small_walks(directed=False):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 30, 120), rng.integers(0, 30, 120)
    if directed:   # sinks: walks end early and carry -1 padding
        src, dst = np.r_[src, 100], np.r_[dst, 101]
    g = build_graph(src, dst, directed=directed, nodes=np.arange(40 if not directed else 102))
    walks = random_walks(g, 9, 3, 0.5, 2.0, seed=1)
    return g, walks


@pytest.mark.parametrize("shared", [True, False], ids=["window", "pair"])
@pytest.mark.parametrize("directed", [False, True])
def test_trainer_matches_plain_python_replay(directed, shared):
    g, walks = small_walks(directed)
    counts = np.bincount(walks[walks >= 0], minlength=g.n_nodes)
    kw = dict(dim=8, window=3, negative=4, epochs=2, alpha=0.05, sample=0.05, seed=7, shared=shared)
    ours = train_sgns([walks[:40], walks[40:]], g.n_nodes, counts, threads=1, **kw)
    ref = reference_sgns(walks, counts, **kw)
    assert np.abs(ref).max() > 0.2                      # trained well away from the init
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-6)
    assert np.all(ours[counts == 0] == 0)               # nodes never walked: zero rows


def sigmoid(f):
    """The kernel's interpolated table in float64."""
    x = (f + sgns.SIGMOID_MAX) * sgns.SIGMOID_SCALE
    i = np.clip(np.floor(x).astype(np.int64), 0, sgns.SIGMOID_BINS)
    t = np.clip(x - i, 0.0, 1.0)
    table = sgns._SIGMOID.astype(np.float64)
    return table[i] + t * (table[i + 1] - table[i])


def test_sigmoid_table():
    f = np.linspace(-12, 12, 100_001)
    exact = 1 / (1 + np.exp(-f))
    assert np.abs(sigmoid(f) - exact).max() < 4e-4                    # beyond +-8: the table's ends
    inside = np.abs(f) < 8
    assert np.abs(sigmoid(f) - exact)[inside].max() < 3e-7
    got = np.array([sgns._sigmoid(np.float32(v)) for v in f[::97]])   # the kernel's own function
    np.testing.assert_allclose(got, sigmoid(f[::97].astype(np.float32).astype(np.float64)), atol=2e-7)
    for bad in (np.nan, np.inf, -np.inf):                              # never reads outside the table
        v = sgns._sigmoid(np.float32(bad))
        assert np.isnan(v) or 0 <= v <= 1


def test_alias_table_is_exactly_the_weights():
    w = np.random.default_rng(3).pareto(1.2, 500) + 1e-3
    prob, alias = _alias_table(w)
    n = w.size
    mass = prob.copy()
    np.add.at(mass, alias, 1.0 - prob)                 # slot j gives 1 - prob[j] to alias[j]
    np.testing.assert_allclose(mass / n, w / w.sum(), rtol=1e-9, atol=1e-12)


def test_noise_table_is_count_to_the_three_quarters():
    rng = np.random.default_rng(4)
    counts = np.r_[rng.integers(1, 40, 300), np.zeros(5, np.int64), 5000, 5000]
    noise = NoiseTable(counts)
    assert np.all(np.diff(counts[noise.order]) <= 0)   # rows by descending count
    assert np.array_equal(noise.rank[noise.order], np.arange(noise.order.size))
    assert np.all(noise.rank[counts == 0] == -1)
    want = counts[noise.order] ** 0.75
    np.testing.assert_allclose(noise.probabilities(), want / want.sum(), rtol=1e-6, atol=1e-12)
    # and the kernel's draws follow it (chi-square over 200k draws)
    draws = sgns._draw_many(np.uint64(9), 200_000, noise.cut, noise.alias, noise.start, noise.size)
    hits = np.bincount(draws, minlength=noise.order.size)
    expect = noise.probabilities() * draws.size
    chi2 = ((hits - expect) ** 2 / expect).sum()
    assert chi2 < noise.order.size + 6 * np.sqrt(2 * noise.order.size)   # ~6 sigma of chi2(dof)


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
