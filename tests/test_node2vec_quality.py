"""Quality on planted-community graphs: held-out edges score above random pairs, nearest
neighbours share the planted community, and our trainer embeds as well as gensim on the
same walks (the check a trainer that batches its window updates fails)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from models.errors import ModelError
from models.node2vec import SkipGramConfig, build_graph, embed, random_walks
from models.node2vec.quality import (
    cosine,
    knn_community_rate,
    link_prediction_auc,
    planted_partition,
    sample_non_edges,
    split_edges,
)
from models.node2vec.sgns import NoiseTable, _draw, keep_probability
from models.node2vec.skipgram import train_skipgram
from models.node2vec.walks import _next, _walk_seed


def planted_graph(n_comm=8, size=50, k_in=8, k_out=1, seed=0):
    """Stochastic block graph: each node ~k_in arcs inside its community, ~k_out outside."""
    rng = np.random.default_rng(seed)
    n = n_comm * size
    comm = np.arange(n) // size
    src = np.repeat(np.arange(n), k_in + k_out)
    same = np.tile(np.r_[np.ones(k_in, bool), np.zeros(k_out, bool)], n)
    dst = np.where(same, comm[src] * size + rng.integers(0, size, src.size), rng.integers(0, n, src.size))
    # original ids far from dense ones, to exercise the remapping
    return 1000 + 7 * src, 1000 + 7 * dst, comm


@pytest.fixture(scope="module", params=[("numba", "window", 1), ("numba", "window", 2), ("numba", "pair", 2),
                                        ("gensim", "window", 1)], ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}")
def trained(request):
    trainer, negatives, workers = request.param
    src, dst, comm = planted_graph()
    train, held = split_edges(src, dst, 0.1, seed=1)
    all_ids = np.unique(np.concatenate([src, dst]))
    g = build_graph(src[train], dst[train], nodes=all_ids)
    vecs = embed(g, p=0.5, q=2.0, walk_length=40, walks_per_node=10, seed=3,
                 sg=SkipGramConfig(dim=32, window=5, epochs=2, workers=workers, seed=3, trainer=trainer,
                                   negatives=negatives))
    return g, vecs, src[held], dst[held], comm


def test_held_out_edges_score_above_random_pairs(trained):
    g, vecs, hs, hd, _ = trained
    u, v = g.dense(hs), g.dense(hd)
    keep = u != v
    nu, nv = sample_non_edges(g, 2000, seed=5)
    assert link_prediction_auc(vecs, u[keep], v[keep], nu, nv) > 0.8


def test_nearest_neighbours_share_planted_community(trained):
    g, vecs, _, _, comm = trained
    node_comm = comm[(g.node_ids - 1000) // 7]
    x = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :10]
    assert (node_comm[nn] == node_comm[:, None]).mean() > 0.8


def test_shuffled_vectors_fail_the_same_checks(trained):
    # The checks can fail: vectors that ignore the graph score at chance.
    g, vecs, hs, hd, _ = trained
    perm = np.random.default_rng(0).permutation(g.n_nodes)
    u, v = g.dense(hs), g.dense(hd)
    nu, nv = sample_non_edges(g, 2000, seed=5)
    assert abs(link_prediction_auc(vecs[perm], u, v, nu, nv) - 0.5) < 0.1


@pytest.mark.parametrize("trainer", ["numba", "gensim"])
def test_isolated_nodes_get_zero_vectors(trainer):
    g = build_graph(np.array([1, 2, 3]), np.array([2, 3, 1]), nodes=np.array([1, 2, 3, 50]))
    vecs = embed(g, p=1, q=1, walk_length=5, walks_per_node=5,
                 sg=SkipGramConfig(dim=8, window=2, workers=1, trainer=trainer))
    assert np.all(vecs[g.dense([50])[0]] == 0) and np.all(np.linalg.norm(vecs[:3], axis=1) > 0)


@pytest.mark.parametrize("trainer", ["numba", "gensim"])
def test_skipgram_deterministic_with_one_worker(trainer):
    src, dst, _ = planted_graph(n_comm=2, size=20, seed=2)
    g = build_graph(src, dst)
    cfg = SkipGramConfig(dim=8, window=3, workers=1, seed=4, trainer=trainer)
    a = embed(g, 0.5, 2.0, 10, 2, sg=cfg, seed=4)
    b = embed(g, 0.5, 2.0, 10, 2, sg=cfg, seed=4)
    assert np.array_equal(a, b)


def test_corpus_file_mode_trains_too():
    src, dst, comm = planted_graph(n_comm=4, size=30, seed=4)
    g = build_graph(src, dst)
    from models.node2vec import random_walks

    walks = random_walks(g, 30, 10, 0.5, 2.0, seed=0)
    vecs = train_skipgram([walks], g.n_nodes, SkipGramConfig(dim=16, window=5, workers=1, corpus="file",
                                                                      trainer="gensim"))
    node_comm = comm[(g.node_ids - 1000) // 7]
    same = node_comm[:, None] == node_comm[None, :]
    sims = cosine(vecs, *np.nonzero(np.ones_like(same)))
    assert sims.reshape(same.shape)[same].mean() > sims.reshape(same.shape)[~same].mean() + 0.2


@pytest.mark.parametrize("field,val", [("dim", 0), ("window", 0), ("epochs", 0), ("negative", 0),
                                       ("corpus", "disk"), ("trainer", "torch"), ("alpha", 0.0), ("sample", -1.0),
                                       ("negatives", "centre")])
def test_bad_skipgram_config(field, val):
    with pytest.raises(ModelError, match=field):
        train_skipgram([np.zeros((1, 3), np.int32)], 1, SkipGramConfig(**{field: val}))


def test_negative_sampling_table_uses_each_slot_count():
    # Regression: with int tokens equal to slots, gensim's make_cum_table read the
    # count of the wrong node (KeyedVectors.get_index looks ints up as keys first).
    from models.node2vec import random_walks
    from models.node2vec.skipgram import fit_word2vec

    src, dst, _ = planted_graph(n_comm=2, size=30, seed=1)
    hub = np.r_[src, np.full(40, src[0])], np.r_[dst, 1000 + 7 * np.arange(40)]
    g = build_graph(*hub)
    walks = random_walks(g, 20, 5, 0.5, 2.0, seed=0)
    model, keys = fit_word2vec([walks], g.n_nodes, SkipGramConfig(dim=8, window=3, workers=1))
    counts = np.bincount(walks[walks >= 0], minlength=g.n_nodes)
    slot_counts = np.array([model.wv.get_vecattr(i, "count") for i in range(len(keys))])
    assert np.array_equal(slot_counts, counts[keys])


def _gensim_reference(walks: list[np.ndarray], n_nodes: int, cfg: SkipGramConfig, corpus: str):
    """gensim's own path: Word2Vec(corpus) with its Python vocabulary pass (what fit_word2vec replaced)."""
    import os
    import tempfile

    from gensim.models import Word2Vec

    from models.node2vec.skipgram import WalkCorpus, write_corpus_file

    kw = dict(vector_size=cfg.dim, window=cfg.window, min_count=0, sg=1, hs=0, negative=cfg.negative,
              sample=cfg.sample, alpha=cfg.alpha, epochs=cfg.epochs, seed=cfg.seed, workers=1)
    if corpus == "file":
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "walks.txt")
            write_corpus_file(walks, path)
            return Word2Vec(corpus_file=path, **kw)
    return Word2Vec(WalkCorpus(walks, offset=n_nodes), **kw)


@pytest.mark.parametrize("corpus", ["memory", "file"])
def test_numpy_vocabulary_gives_gensims_model_bit_for_bit(corpus):
    from models.node2vec import random_walks
    from models.node2vec.skipgram import fit_word2vec

    # A directed graph with sinks, so walks stop early and carry -1 padding; several blocks,
    # and node 0 (dense id 0) appearing late, so first-occurrence order != id order.
    src, dst, _ = planted_graph(n_comm=3, size=20, seed=7)
    g = build_graph(np.r_[src, 5000, 5001], np.r_[dst, 5001, 5002], directed=True)
    walks = random_walks(g, 12, 3, 0.5, 2.0, seed=3)
    assert (walks < 0).any()
    blocks = [walks[::-1][:25], walks[::-1][25:26], walks[::-1][26:]]
    cfg = SkipGramConfig(dim=8, window=3, workers=1, seed=2, epochs=2, corpus=corpus)
    ours, keys = fit_word2vec(blocks, g.n_nodes, cfg)
    ref = _gensim_reference(blocks, g.n_nodes, cfg, corpus)
    assert list(ours.wv.index_to_key) == list(ref.wv.index_to_key)
    assert ours.corpus_count == ref.corpus_count and ours.corpus_total_words == ref.corpus_total_words
    assert np.array_equal(ours.wv.vectors, ref.wv.vectors)


def test_walk_vocab_counts_and_first_occurrence():
    from models.node2vec.skipgram import walk_vocab

    blocks = [np.array([[3, 1, -1], [1, 4, 3]], np.int32), np.array([[0, 0, 3]], np.int32)]
    nodes, counts, rows, tokens = walk_vocab(blocks, n_nodes=6)
    assert nodes.tolist() == [3, 1, 4, 0] and counts.tolist() == [3, 2, 1, 2]
    assert (rows, tokens) == (3, 8)


@pytest.mark.parametrize("trainer", ["numba", "gensim"])
def test_skipgram_reports_progress_per_block_every_epoch(trainer):
    from models.node2vec import random_walks

    src, dst, _ = planted_graph(n_comm=2, size=20, seed=3)
    g = build_graph(src, dst)
    walks = random_walks(g, 8, 3, 1.0, 1.0, seed=0)
    seen: list[int] = []
    train_skipgram([walks[:10], walks[10:]], g.n_nodes, SkipGramConfig(dim=8, window=2, workers=1, epochs=2,
                                                                         trainer=trainer), on_walks=seen.append)
    assert seen == [10, len(walks) - 10] * 2


# --------------------------------------------------------------------------- as well as gensim

# Planted partitions at the job's defaults (10 walks of 80, d 128, window 10, 1 epoch): 8
# communities of 100 (sparse) and 4 of 200 (dense, more edges across). Long training on a
# small graph is where a trainer that cuts corners overfits its way below gensim.
PLANTED = {"sparse": (8, 100, 10.0, 2.6), "dense": (4, 200, 30.0, 10.0)}
TOLERANCE = 0.01   # the acceptance margin against gensim on the same walks


@pytest.fixture(scope="module", params=sorted(PLANTED))
def planted_vs_gensim(request):
    n_comm, size, deg_in, deg_out = PLANTED[request.param]
    src, dst, comm = planted_partition(n_comm, size, deg_in, deg_out, seed=11)
    n = n_comm * size
    train, held = split_edges(src, dst, 0.1, seed=11)
    g = build_graph(src[train], dst[train], nodes=np.arange(n))
    hu, hv = src[held], dst[held]
    hu, hv = hu[hu != hv], hv[hu != hv]
    nu, nv = sample_non_edges(build_graph(src, dst, nodes=np.arange(n)), 5000, seed=12)
    walks = random_walks(g, 80, 10, 1.0, 1.0, seed=11, threads=1)

    def scores(vecs):
        return link_prediction_auc(vecs, hu, hv, nu, nv), knn_community_rate(vecs, comm)

    ref = scores(train_skipgram([walks], n, SkipGramConfig(workers=1, seed=11, trainer="gensim")))
    return walks, n, scores, ref


@pytest.mark.parametrize("negatives", ["window", "pair"])
def test_numba_trainer_embeds_as_well_as_gensim(planted_vs_gensim, negatives):
    walks, n, scores, (auc_g, knn_g) = planted_vs_gensim
    auc, knn = scores(train_skipgram([walks], n, SkipGramConfig(workers=1, seed=11, negatives=negatives)))
    assert auc_g > 0.75 and knn_g > 0.6            # gensim itself finds the planted structure
    assert auc >= auc_g - TOLERANCE, f"held-out link AUC {auc:.4f}, gensim {auc_g:.4f}"
    assert knn >= knn_g - TOLERANCE, f"10-NN community rate {knn:.4f}, gensim {knn_g:.4f}"


@pytest.mark.parametrize("planted_vs_gensim", ["sparse"], indirect=True)
def test_the_gensim_check_catches_batched_window_updates(planted_vs_gensim):
    # The same objective, but every gradient of a centre's window taken from the rows as they
    # were before the window (one batched update per centre): it overfits long runs on small
    # graphs, and the comparison above must notice.
    walks, n, scores, (auc_g, knn_g) = planted_vs_gensim
    auc, knn = scores(batched_window_sgns(walks, n, seed=11))
    assert auc < auc_g - TOLERANCE or knn < knn_g - TOLERANCE


def batched_window_sgns(walks, n, seed, dim=128, window=10, negative=5):
    counts = np.bincount(walks[walks >= 0], minlength=n)
    noise = NoiseTable(counts)
    rng = np.random.default_rng(seed)
    syn0 = ((rng.random((noise.order.size, dim), np.float32) * 2 - 1) / dim).astype(np.float32)
    syn1 = np.zeros_like(syn0)
    keep = keep_probability(counts, 1e-3).astype(np.float32)
    _batched_kernel(walks, noise.rank, syn0, syn1, keep, noise.cut, noise.alias, noise.start, noise.size,
                    window, negative, np.uint64(seed))
    out = np.zeros((n, dim), np.float32)
    out[noise.order] = syn0
    return out


@numba.njit(cache=True, fastmath=True)
def _batched_kernel(walks, rank, syn0, syn1, keep, cut, alias, start, size, window, negative, seed):
    d = syn0.shape[1]
    sent = np.empty(walks.shape[1], np.int64)
    ctx = np.empty(2 * window, np.int64)
    outs = np.empty(negative + 1, np.int64)
    grad = np.empty((2 * window, negative + 1), np.float32)
    neu1e = np.empty((2 * window, d), np.float32)
    for r in range(walks.shape[0]):
        alpha = np.float32(max(0.025 * (1.0 - r / walks.shape[0]), 1e-4))
        state = _walk_seed(seed, r)
        n = 0
        for v in walks[r]:
            if v < 0:
                break
            state, u = _next(state)
            if u < keep[v]:
                sent[n] = rank[v]
                n += 1
        for i in range(n):
            state, u = _next(state)
            w = window - int(u * window)
            nc = 0
            for j in range(max(0, i - w), min(n, i + w + 1)):
                if j != i:
                    ctx[nc] = sent[j]
                    nc += 1
            outs[0] = sent[i]
            for k in range(1, negative + 1):
                state, outs[k] = _draw(state, cut, alias, start, size)
            for c in range(nc):              # every gradient from the old rows ...
                for o in range(negative + 1):
                    f = np.float32(0.0)
                    for k in range(d):
                        f += syn0[ctx[c], k] * syn1[outs[o], k]
                    f = min(max(f, np.float32(-30.0)), np.float32(30.0))
                    label = np.float32(1.0) if o == 0 else np.float32(0.0)
                    grad[c, o] = (label - np.float32(1.0) / (np.float32(1.0) + np.exp(-f))) * alpha
                for k in range(d):
                    neu1e[c, k] = 0.0
                for o in range(negative + 1):
                    for k in range(d):
                        neu1e[c, k] += grad[c, o] * syn1[outs[o], k]
            for c in range(nc):              # ... then all updates
                for o in range(negative + 1):
                    for k in range(d):
                        syn1[outs[o], k] += grad[c, o] * syn0[ctx[c], k]
            for c in range(nc):
                for k in range(d):
                    syn0[ctx[c], k] += neu1e[c, k]
