"""The exact node2vec kernel against the definition, by transition frequencies.

For every context (t, v) seen often enough in the walks, the empirical frequency
of each next node x is compared with the exact probability from the slow
pure-Python reference (`reference_transition`): a z-score per (t, v, x).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.errors import ModelError
from models.node2vec.graph import build_graph
from models.node2vec.walks import (
    random_walks,
    reference_transition,
    reference_walk,
    row_cumsum,
    walk_shard,
)

# A small graph where every case of the bias occurs: triangles (x a neighbour
# of t), a square (x not a neighbour of t), a pendant node (only return) and a hub.
SRC = np.array([0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 0, 7])
DST = np.array([1, 2, 2, 3, 3, 4, 5, 5, 6, 7, 0, 5, 0])
W = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0, 2.0, 1.0, 0.5, 1.0, 4.0, 1.5], np.float32)


def empirical_transitions(walks: np.ndarray) -> dict[tuple[int, int], dict[int, int]]:
    """Counts of x after (t, v) over all steps k >= 2 of the walks."""
    t, v, x = walks[:, :-2].ravel(), walks[:, 1:-1].ravel(), walks[:, 2:].ravel()
    ok = (t >= 0) & (v >= 0) & (x >= 0)
    keys, counts = np.unique(np.stack([t[ok], v[ok], x[ok]]), axis=1, return_counts=True)
    out: dict[tuple[int, int], dict[int, int]] = {}
    for (a, b, c), n in zip(keys.T.tolist(), counts.tolist()):
        out.setdefault((a, b), {})[c] = n
    return out


def max_z(graph, walks, p, q, min_count=400) -> tuple[float, float, int]:
    """(max z-score, max abs deviation, contexts checked) of empirical vs exact transitions."""
    zs, devs, n_ctx = [0.0], [0.0], 0
    for (t, v), cnt in empirical_transitions(walks).items():
        n = sum(cnt.values())
        if n < min_count:
            continue
        n_ctx += 1
        exact = reference_transition(graph, t, v, p, q)
        assert set(cnt) <= set(exact), f"walk stepped off an arc at ({t}, {v})"
        for x, pr in exact.items():
            emp = cnt.get(x, 0) / n
            zs.append(abs(emp - pr) / np.sqrt(max(pr * (1 - pr), 1e-12) / n))
            devs.append(abs(emp - pr))
    return max(zs), max(devs), n_ctx


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("p,q", [(0.5, 2.0), (4.0, 0.25), (1.0, 1.0), (0.01, 100.0)])
def test_kernel_matches_exact_definition(weighted, p, q):
    g = build_graph(SRC, DST, W if weighted else None)
    walks = random_walks(g, walk_length=30, walks_per_node=1500, p=p, q=q, seed=7)
    z, dev, n_ctx = max_z(g, walks, p, q)
    assert n_ctx >= 20
    # ~1.3M steps: a wrong bias (e.g. csrgraph's, below) gives z in the hundreds.
    assert z < 5.5 and dev < 0.03, (z, dev)


@pytest.mark.parametrize("weighted", [False, True])
def test_kernel_matches_exact_definition_directed(weighted):
    # Directed: "x is a neighbour of t" means the arc t -> x; walks stop at nodes without out-arcs.
    src, dst = np.r_[SRC, 2, 5, 4], np.r_[DST, 0, 3, 2]
    w = np.r_[W, 1.0, 2.0, 0.7].astype(np.float32)
    g = build_graph(src, dst, w if weighted else None, directed=True)
    walks = random_walks(g, walk_length=30, walks_per_node=3000, p=0.5, q=3.0, seed=5)
    z, dev, n_ctx = max_z(g, walks, 0.5, 3.0)
    assert n_ctx >= 8 and z < 5.5 and dev < 0.03, (z, dev, n_ctx)


def test_first_step_is_first_order():
    g = build_graph(SRC, DST, W)
    walks = random_walks(g, walk_length=2, walks_per_node=20000, p=0.3, q=3.0, seed=1,
                         start_nodes=np.array([0]))
    exact = reference_transition(g, -1, 0, 0.3, 3.0)
    nxt, cnt = np.unique(walks[:, 1], return_counts=True)
    emp = dict(zip(nxt.tolist(), (cnt / cnt.sum()).tolist()))
    assert max(abs(emp.get(x, 0) - pr) for x, pr in exact.items()) < 0.015


def test_reference_walk_agrees_with_kernel_statistically():
    # The slow reference walk (plain Python) and the kernel, same statistics.
    g = build_graph(SRC, DST)
    rng = random.Random(3)
    ref = np.array([reference_walk(g, s, 12, 0.5, 2.0, rng) for s in range(g.n_nodes) for _ in range(400)])
    z, dev, n_ctx = max_z(g, ref, 0.5, 2.0, min_count=300)
    assert n_ctx > 5 and z < 5.5


def test_reproducible_regardless_of_threads_and_shards():
    g = build_graph(SRC, DST, W)
    a = random_walks(g, 20, 3, p=0.5, q=2, seed=11, threads=1)
    b = random_walks(g, 20, 3, p=0.5, q=2, seed=11, threads=2)
    assert np.array_equal(a, b)
    # Two shards of start nodes give the same walks as one call.
    cum = row_cumsum(g)
    args = (g.indptr, g.indices, g.weights, cum)
    s1 = walk_shard(*args, np.arange(0, 3), g.n_nodes, 20, 3, 0.5, 2, 11)
    s2 = walk_shard(*args, np.arange(3, g.n_nodes), g.n_nodes, 20, 3, 0.5, 2, 11)
    assert np.array_equal(np.concatenate([s1, s2], axis=1).reshape(-1, 20), a)
    assert not np.array_equal(random_walks(g, 20, 3, p=0.5, q=2, seed=12), a)


@pytest.mark.parametrize("weighted,directed,p,q", [(False, False, 1, 1), (True, False, 0.5, 2),
                                                   (False, True, 2, 0.5), (True, True, 1, 1)])
def test_walks_do_not_depend_on_the_interleave_group(weighted, directed, p, q):
    from models.node2vec.walks import _walk_kernel

    # plus 7 -> 8: node 8 has no out-arc when directed (walks end there and pad)
    g = build_graph(np.r_[SRC, 7], np.r_[DST, 8], np.r_[W, 1.0] if weighted else None, directed=directed)
    cum = row_cumsum(g)
    starts = np.tile(np.arange(g.n_nodes), 3)            # 27 walks: groups end part-full
    ids = np.arange(starts.size, dtype=np.uint64)
    outs = []
    for group in (1, 3, 8, 64):
        out = np.empty((starts.size, 12), np.int32)
        _walk_kernel(g.indptr, g.indices, g.weights, cum, weighted, not (p == 1 and q == 1), starts, ids,
                     12, 1 / p, 1 / q, np.uint64(5), out, group)
        outs.append(out)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert (outs[0] >= 0).all() != directed                 # dead ends (padding) only when directed


def test_isolated_and_dead_end_nodes_pad_with_minus_one():
    g = build_graph(np.array([1, 2]), np.array([2, 3]), directed=True, nodes=np.array([9]))
    w = random_walks(g, 5, 1, p=2, q=0.5, seed=0)
    # node 9 is isolated, 3 has no out-arcs: the walk stops there.
    assert w[g.dense([9])[0]].tolist() == [3, -1, -1, -1, -1]
    assert w[g.dense([1])[0]].tolist() == [0, 1, 2, -1, -1]


def test_single_node_graph():
    g = build_graph(np.array([5]), np.array([5]))  # a self-loop, dropped
    assert g.n_nodes == 1 and g.n_edges == 0 and g.stats["self_loops_dropped"] == 1
    assert random_walks(g, 4, 2, seed=0).tolist() == [[0, -1, -1, -1]] * 2


@pytest.mark.parametrize("p,q,length", [(0, 1, 5), (1, -1, 5), (float("nan"), 1, 5),
                                        (1, float("inf"), 5), (1, 1, 0)])
def test_bad_parameters_raise(p, q, length):
    g = build_graph(SRC, DST)
    with pytest.raises(ModelError, match="node2vec|walk length"):
        random_walks(g, length, 1, p=p, q=q)


def test_walk_length_one_is_just_the_start():
    g = build_graph(SRC, DST)
    assert random_walks(g, 1, 1, p=2, q=2).ravel().tolist() == list(range(g.n_nodes))
