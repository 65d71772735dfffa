"""Embedding quality on held-out edges: link-prediction AUC (used by tests and the benchmark)."""

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
