"""node2vec user vectors: CSR graph, exact p/q walks (numba), skip-gram (numba or gensim).

    from models.node2vec import build_graph, random_walks, embed, SkipGramConfig
    g = build_graph(src, dst, weight=None, directed=False, nodes=user_ids)
    vecs = embed(g, p=0.5, q=2.0, walk_length=80, walks_per_node=10, sg=SkipGramConfig(dim=128))
    # vecs: (g.n_nodes, 128) float32, row i is user g.node_ids[i]; zero rows for isolated nodes

Kernels take arrays and return arrays; no Ray here (jobs/embed_users.py shards the walks).
"""

from __future__ import annotations

import numpy as np

from models.node2vec.graph import Graph, build_graph
from models.node2vec.skipgram import SkipGramConfig, train_skipgram
from models.node2vec.walks import check_params, random_walks, reference_transition, reference_walk

__all__ = ["Graph", "build_graph", "random_walks", "reference_transition", "reference_walk",
           "SkipGramConfig", "train_skipgram", "check_params", "embed"]


def embed(graph: Graph, p: float = 1.0, q: float = 1.0, walk_length: int = 80, walks_per_node: int = 10,
          sg: SkipGramConfig | None = None, seed: int = 0, threads: int = 0) -> np.ndarray:
    """(n_nodes, dim) float32 node2vec vectors, in-process (no Ray); zero rows for nodes without arcs."""
    sg = sg or SkipGramConfig(seed=seed)
    walks = random_walks(graph, walk_length, walks_per_node, p, q, seed=seed, threads=threads)
    vecs = train_skipgram([walks], graph.n_nodes, sg)
    vecs[~has_arcs(graph)] = 0.0
    return vecs


def has_arcs(graph: Graph) -> np.ndarray:
    """(n,) bool: the node has an arc in or out (isolated nodes have no walk context)."""
    indeg = np.bincount(graph.indices, minlength=graph.n_nodes)
    return (graph.degree() > 0) | (indeg > 0)
