"""CSR graph building: remapping, directed/undirected, duplicates, self-loops, weights."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelError
from models.node2vec.graph import build_graph


def rows(g):
    return {int(g.node_ids[i]): g.node_ids[g.indices[g.indptr[i]:g.indptr[i + 1]]].tolist()
            for i in range(g.n_nodes)}


def test_undirected_remap_and_sorted_rows():
    g = build_graph(np.array([50, 10, 30]), np.array([10, 30, 50]), nodes=np.array([99]))
    assert g.node_ids.tolist() == [10, 30, 50, 99]
    assert rows(g) == {10: [30, 50], 30: [10, 50], 50: [10, 30], 99: []}
    assert g.dense([30, 99, 7]).tolist() == [1, 3, -1]
    assert g.indices.dtype == np.int32 and g.stats["isolated_nodes"] == 1
    for i in range(g.n_nodes):
        r = g.indices[g.indptr[i]:g.indptr[i + 1]]
        assert np.all(np.diff(r) > 0)


def test_directed_keeps_direction():
    g = build_graph(np.array([1, 2]), np.array([2, 3]), directed=True)
    assert rows(g) == {1: [2], 2: [3], 3: []}
    assert g.stats["isolated_nodes"] == 0  # 3 has an in-arc
    assert g.has_edge(g.dense([1, 2, 2]), g.dense([2, 1, 3])).tolist() == [True, False, True]


def test_duplicates_merge_with_max_weight_and_self_loops_drop():
    src = np.array([1, 1, 2, 3, 3])
    dst = np.array([2, 2, 1, 3, 1])
    w = np.array([1.0, 3.0, 2.0, 5.0, 0.5])
    g = build_graph(src, dst, w)
    assert g.stats["self_loops_dropped"] == 1 and g.stats["duplicates_merged"] == 2
    # (1,2), (1,2), (2,1) are one undirected edge with the largest weight
    i, j = g.dense([1])[0], g.dense([2])[0]
    k = g.indptr[i] + np.searchsorted(g.indices[g.indptr[i]:g.indptr[i + 1]], j)
    assert g.weights[k] == 3.0 and g.n_edges == 4
    gd = build_graph(src, dst, w, directed=True)
    assert gd.stats["duplicates_merged"] == 1 and gd.n_edges == 3


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_bad_weights(bad):
    with pytest.raises(ModelError, match="weights must be finite and > 0"):
        build_graph(np.array([1, 2]), np.array([2, 3]), np.array([1.0, bad]))


def test_empty_edge_list_with_nodes():
    g = build_graph(np.zeros(0, np.int64), np.zeros(0, np.int64), nodes=np.array([4, 2]))
    assert g.n_nodes == 2 and g.n_edges == 0 and g.stats["isolated_nodes"] == 2
    assert not g.has_edge(np.array([0]), np.array([1])).any()
    with pytest.raises(ModelError, match="csrgraph"):
        g.to_csrgraph()


def test_mismatched_lengths():
    with pytest.raises(ModelError, match="differ in length"):
        build_graph(np.array([1, 2]), np.array([2]))


def test_csrgraph_shares_arrays():
    g = build_graph(np.array([1, 2]), np.array([2, 3]))
    cg = g.to_csrgraph()
    assert cg.nnodes == 3 and np.shares_memory(cg.dst, g.indices)
