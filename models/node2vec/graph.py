"""The social graph as CSR arrays: ids remapped to a dense range and back.

Rows are sorted (so the walk kernel can test "is x a neighbour of t" by binary
search), duplicates are merged and self-loops dropped. The arrays are the ones
`csrgraph` holds (`indptr` = csrgraph's `src`, `indices` = `dst`, `weights`);
`Graph.to_csrgraph()` wraps them without a copy for anything that wants
csrgraph's own methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from models.errors import ModelError


@dataclass(frozen=True)
class Graph:
    """A CSR graph over dense node ids 0..n-1.

    indptr:   (n + 1,) int64   row i's neighbours are indices[indptr[i]:indptr[i+1]], sorted
    indices:  (nnz,)   int32   neighbour ids (dense)
    weights:  (nnz,)   float32 edge weights (all 1.0 when the graph is unweighted)
    node_ids: (n,)     int64   original id of each dense node (sorted ascending)
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    node_ids: np.ndarray
    directed: bool
    weighted: bool
    stats: dict

    @property
    def n_nodes(self) -> int:
        return int(self.node_ids.size)

    @property
    def n_edges(self) -> int:
        """Stored arcs (an undirected edge counts twice)."""
        return int(self.indices.size)

    def degree(self) -> np.ndarray:
        """(n,) int64 out-degree of each dense node."""
        return np.diff(self.indptr)

    def dense(self, ids: np.ndarray) -> np.ndarray:
        """Dense ids of original ids; -1 where an id is not a node."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.n_nodes == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.node_ids, ids), self.n_nodes - 1)
        return np.where(self.node_ids[pos] == ids, pos, -1).astype(np.int64)

    def has_edge(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(m,) bool: is there an arc u -> v (dense ids)? Vectorised binary search on sorted rows."""
        u = np.asarray(u, np.int64)
        v = np.asarray(v, np.int64)
        # Key each arc as u * n + v: rows are sorted, so the keys are globally sorted.
        if self.n_edges == 0:
            return np.zeros(np.broadcast(u, v).shape, bool)
        n = np.int64(self.n_nodes)
        rows = np.repeat(np.arange(self.n_nodes, dtype=np.int64), self.degree())
        keys = rows * n + self.indices
        q = u * n + v
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        return keys[pos] == q

    def to_csrgraph(self):
        """The same arrays as a `csrgraph.csrgraph` (no copy). Needs at least one edge."""
        import csrgraph

        if self.n_edges == 0:
            raise ModelError("csrgraph cannot hold a graph without edges")
        mat = sparse.csr_matrix((self.weights, self.indices, self.indptr), shape=(self.n_nodes, self.n_nodes))
        return csrgraph.csrgraph(mat, copy=False)


def build_graph(
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    directed: bool = False,
    nodes: np.ndarray | None = None,
) -> Graph:
    """CSR graph from an edge list of original (int64) ids.

    - `directed=False` (default) stores each edge both ways.
    - `weight=None` makes every edge weight 1; weights must be finite and > 0.
    - duplicates (the same ordered pair when directed, the same unordered pair
      when undirected) merge into one edge with the largest weight: a repeated
      row restates a tie, it does not strengthen it.
    - self-loops are dropped (node2vec's p/q bias is undefined on them).
    - `nodes` adds ids that must be nodes even without edges (users with posts
      but no edges): they become isolated nodes.
    `stats` counts what was dropped or merged.
    """
    src = np.asarray(src, dtype=np.int64).ravel()
    dst = np.asarray(dst, dtype=np.int64).ravel()
    if src.shape != dst.shape:
        raise ModelError(f"src and dst differ in length ({src.size} vs {dst.size})")
    weighted = weight is not None
    w = (np.ones(src.size, np.float32) if weight is None
         else np.asarray(weight, dtype=np.float32).ravel())
    if w.shape != src.shape:
        raise ModelError(f"weight has {w.size} values for {src.size} edges")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelError(f"edge weights must be finite and > 0; edge {i} ({src[i]} -> {dst[i]}) "
                         f"has weight {w[i]}; drop it or fix the weight")

    extra = np.asarray(nodes if nodes is not None else [], dtype=np.int64).ravel()
    node_ids = np.unique(np.concatenate([src, dst, extra]))
    n = node_ids.size
    loops = src == dst
    s = np.searchsorted(node_ids, src[~loops])
    d = np.searchsorted(node_ids, dst[~loops])
    w = w[~loops]
    n_in = s.size
    if not directed:
        s, d = np.concatenate([s, d]), np.concatenate([d, s])
        w = np.concatenate([w, w])
    # Merge duplicates with max: sort by (row, col, weight desc) and keep each first.
    order = np.lexsort((-w, d, s))
    s, d, w = s[order], d[order], w[order]
    keep = np.ones(s.size, bool)
    keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    s, d, w = s[keep], d[keep], w[keep]
    # s is sorted and each row's d ascending: the CSR arrays fall out directly.
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(s, minlength=n), out=indptr[1:])
    idx_dtype = np.int32 if n < 2**31 else np.int64
    touched = np.zeros(n, bool)  # has an arc in or out
    touched[s] = True
    touched[d] = True
    stats = {
        "edges_in": int(src.size),
        "self_loops_dropped": int(loops.sum()),
        # input rows (less self-loops) that an earlier row already stated
        "duplicates_merged": int(n_in - (s.size if directed else s.size // 2)),
        "nodes": int(n),
        "arcs": int(s.size),
        "isolated_nodes": int((~touched).sum()),
    }
    return Graph(indptr=indptr, indices=d.astype(idx_dtype), weights=w.astype(np.float32),
                 node_ids=node_ids, directed=directed, weighted=weighted, stats=stats)
