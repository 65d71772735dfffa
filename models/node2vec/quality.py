"""Embedding quality: held-out link-prediction AUC, k-NN community rate, planted-partition graphs.

Used by the tests, the benchmark and `--tune`."""

from __future__ import annotations

import numpy as np

from models.node2vec.graph import Graph


def split_edges(src: np.ndarray, dst: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held_out) over the edge list; held-out edges are a random `frac`."""
    rng = np.random.default_rng(seed)
    held = rng.random(len(src)) < frac
    return ~held, held


def sample_non_edges(graph: Graph, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random dense pairs (u, v), u != v, that are not arcs of `graph` (rejection, vectorised)."""
    rng = np.random.default_rng(seed)
    us, vs = [], []
    need = n
    while need > 0:
        u = rng.integers(0, graph.n_nodes, 2 * need)
        v = rng.integers(0, graph.n_nodes, 2 * need)
        ok = (u != v) & ~graph.has_edge(u, v)
        us.append(u[ok][:need])
        vs.append(v[ok][:need])
        need -= len(us[-1])
    return np.concatenate(us), np.concatenate(vs)


def cosine(vecs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(m,) cosine similarity of rows u and v of vecs (n, d)."""
    a, b = vecs[u].astype(np.float64), vecs[v].astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(den, 1e-12)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    n1, n0 = len(pos), len(neg)
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def link_prediction_auc(vecs: np.ndarray, held_u: np.ndarray, held_v: np.ndarray,
                        neg_u: np.ndarray, neg_v: np.ndarray) -> float:
    """AUC of cosine similarity: held-out edges (dense ids) against non-edges."""
    return auc(cosine(vecs, held_u, held_v), cosine(vecs, neg_u, neg_v))


def planted_partition(n_comm: int, size: int, deg_in: float, deg_out: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A planted-partition (stochastic block) graph: (src, dst, community of each node).

    `n_comm` communities of `size` nodes; each node has on average `deg_in` neighbours in
    its own community and `deg_out` in others (edges drawn uniformly, so p_in =
    deg_in / (size - 1)). Undirected edges as (src, dst) int64 pairs; duplicates and
    self-loops may occur (build_graph merges and drops them).
    """
    rng = np.random.default_rng(seed)
    n = n_comm * size
    m_in = int(round(n * deg_in / 2))
    m_out = int(round(n * deg_out / 2))
    c = rng.integers(0, n_comm, m_in)
    src_in = c * size + rng.integers(0, size, m_in)
    dst_in = c * size + rng.integers(0, size, m_in)
    src_out = rng.integers(0, n, m_out)
    # another community, uniformly: shift by 1..n_comm-1 communities
    shift = rng.integers(1, n_comm, m_out) if n_comm > 1 else np.zeros(m_out, np.int64)
    dst_out = ((src_out // size + shift) % n_comm) * size + rng.integers(0, size, m_out)
    comm = np.arange(n) // size
    return np.r_[src_in, src_out].astype(np.int64), np.r_[dst_in, dst_out].astype(np.int64), comm


def knn_community_rate(vecs: np.ndarray, comm: np.ndarray, k: int = 10, queries: int = 2000,
                       seed: int = 0) -> float:
    """Share of each node's k nearest neighbours (cosine) in its own community.

    vecs (n, d), comm (n,); on graphs over `queries` nodes a seeded sample of query nodes
    is used (neighbours are still searched among all n). Zero rows never count as neighbours.
    """
    x = vecs.astype(np.float32)
    norm = np.linalg.norm(x, axis=1)
    x = x / np.maximum(norm, 1e-12)[:, None]
    n = x.shape[0]
    q = np.arange(n) if n <= queries else np.random.default_rng(seed).choice(n, queries, replace=False)
    q = q[norm[q] > 0]
    hits = 0
    for lo in range(0, q.size, 512):
        qq = q[lo:lo + 512]
        sim = x[qq] @ x.T
        sim[np.arange(qq.size), qq] = -np.inf
        sim[:, norm == 0] = -np.inf
        nn = np.argpartition(-sim, k, axis=1)[:, :k]
        hits += int((comm[nn] == comm[qq][:, None]).sum())
    return hits / max(q.size * k, 1)
