"""node2vec random walks over CSR arrays: the exact Grover & Leskovec bias, in numba.

Transition from v, having come from t, to a neighbour x of v (Grover & Leskovec
2016, eq. 2 and section 3.2.2):

    weight(x) = w(v, x) / p   if x == t
                w(v, x)       if x is a neighbour of t  (arc t -> x)
                w(v, x) / q   otherwise

The first step of a walk is first order (weight w(v, x)).

The kernel samples this exactly by rejection: propose x with probability
w(v, x) / sum_x w(v, x) (O(1) unweighted, binary search over the row's cumulative
weights otherwise), accept with probability f(x) / max(1/p, 1, 1/q) where f is the
bias above. "x is a neighbour of t" is a binary search on t's sorted row, so a
step costs O(log deg) per proposal instead of csrgraph's O(deg(v) * deg(t)).
After `_MAX_TRIALS` rejections (only when p and q are extreme) it draws from the
exact distribution computed over the whole row; a mixture of two exact samplers
is exact.

Randomness: each walk has its own splitmix64 stream seeded from (seed, walk id),
walk id = rep * n_nodes + start node, so walks do not depend on how start nodes
are sharded over threads, processes or machines.

Walks are int32 arrays (n_walks, walk_length); a walk that reaches a node without
out-arcs (directed graphs) or starts at an isolated node is padded with -1.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from models.errors import ModelError
from models.node2vec.graph import Graph

_MAX_TRIALS = 64
INTERLEAVE = 8   # walks advanced in lockstep per thread (see _walk_kernel)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


# ----------------------------------------------------------------------------- RNG (splitmix64)


@numba.njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def _next(state):
    """(new state, uniform float64 in [0, 1))."""
    state = state + _GOLDEN
    return state, float(_mix(state) >> _S11) * _INV53


@numba.njit(cache=True, inline="always")
def _walk_seed(seed, walk_id):
    return _mix(np.uint64(seed) ^ _mix(np.uint64(walk_id) + _GOLDEN))


# ----------------------------------------------------------------------------- steps


@numba.njit(cache=True, inline="always")
def _is_arc(indptr, indices, t, x):
    """Binary search for x in t's sorted row."""
    lo = indptr[t]
    hi = indptr[t + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if indices[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < indptr[t + 1] and indices[lo] == x


@numba.njit(cache=True, inline="always")
def _propose(indices, cumw, weighted, a, b, u):
    """Index into indices[a:b] drawn with probability w / row total (u uniform in [0, 1))."""
    if not weighted:
        j = a + np.int64(u * (b - a))
        return min(j, b - 1)
    target = u * cumw[b - 1]
    lo = a
    hi = b - 1
    while lo < hi:  # first j with cumw[j] > target
        mid = (lo + hi) >> 1
        if cumw[mid] > target:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, inline="always")
def _bias(indptr, indices, t, x, inv_p, inv_q):
    if x == t:
        return inv_p
    if _is_arc(indptr, indices, t, x):
        return 1.0
    return inv_q


@numba.njit(cache=True)
def _exact_step(indptr, indices, weights, t, v, inv_p, inv_q, u):
    """Draw from the exact biased distribution over v's whole row: O(deg v * log deg t)."""
    a = indptr[v]
    b = indptr[v + 1]
    total = 0.0
    for j in range(a, b):
        total += weights[j] * _bias(indptr, indices, t, indices[j], inv_p, inv_q)
    target = u * total
    acc = 0.0
    for j in range(a, b):
        acc += weights[j] * _bias(indptr, indices, t, indices[j], inv_p, inv_q)
        if acc > target:
            return indices[j]
    return indices[b - 1]


@numba.njit(cache=True, inline="always")
def _step(indptr, indices, weights, cumw, weighted, biased, t, v, inv_p, inv_q, fmax, state):
    """(state, next node) from v having come from t (t < 0: first step); next = -1 at a dead end."""
    a = indptr[v]
    b = indptr[v + 1]
    if a == b:
        return state, np.int64(-1)
    if t < 0 or not biased:
        state, u = _next(state)
        return state, np.int64(indices[_propose(indices, cumw, weighted, a, b, u)])
    for _trial in range(_MAX_TRIALS):
        state, u = _next(state)
        c = np.int64(indices[_propose(indices, cumw, weighted, a, b, u)])
        state, u2 = _next(state)
        if u2 * fmax < _bias(indptr, indices, t, c, inv_p, inv_q):
            return state, c
    state, u = _next(state)
    return state, np.int64(_exact_step(indptr, indices, weights, t, v, inv_p, inv_q, u))


@numba.njit(cache=True, nogil=True)
def _walk_kernel(indptr, indices, weights, cumw, weighted, biased, starts, walk_ids,
                 walk_length, inv_p, inv_q, seed, out, group=INTERLEAVE):
    """Fill out[i] (walk_length,) with the walk from starts[i]; -1 pads dead ends.

    `group` walks advance in lockstep, one step each in turn: a step is two or three
    dependent reads at random places in the CSR arrays, and once they outgrow the caches
    (10^6 users) a lone walk waits on memory at every step; steps of different walks are
    independent, so the CPU overlaps their reads. Each walk keeps its own random stream,
    so the walks are the same for any group size.
    """
    fmax = max(inv_p, 1.0, inv_q)
    state = np.empty(group, np.uint64)
    cur = np.empty(group, np.int64)
    prev = np.empty(group, np.int64)
    for g0 in range(0, starts.size, group):
        m = min(group, starts.size - g0)
        for j in range(m):
            i = g0 + j
            state[j] = _walk_seed(seed, walk_ids[i])
            cur[j] = starts[i]
            prev[j] = -1
            out[i, 0] = starts[i]
        for k in range(1, walk_length):
            for j in range(m):
                i = g0 + j
                v = cur[j]
                if v < 0:               # dead end earlier: pad
                    out[i, k] = -1
                    continue
                st, x = _step(indptr, indices, weights, cumw, weighted, biased, prev[j], v,
                              inv_p, inv_q, fmax, state[j])
                state[j] = st
                out[i, k] = x
                prev[j] = v
                cur[j] = x


@numba.njit(cache=True, nogil=True)
def _row_cumsum(indptr, weights, out):
    """Per-row cumulative weights (float64: float32 sums lose hubs' small weights)."""
    for v in range(indptr.size - 1):
        acc = 0.0
        for j in range(indptr[v], indptr[v + 1]):
            acc += weights[j]
            out[j] = acc


# ----------------------------------------------------------------------------- public API


def check_params(p: float, q: float, walk_length: int, walks_per_node: int = 1) -> None:
    """Raise ModelError for values node2vec is undefined on."""
    for name, val in (("p", p), ("q", q)):
        if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
            raise ModelError(f"node2vec {name} must be a finite number > 0, got {val!r} "
                             f"(1 = unbiased; {name}<1 favours {'returning' if name == 'p' else 'outward moves'})")
    if int(walk_length) < 1:
        raise ModelError(f"walk length must be >= 1, got {walk_length}")
    if int(walks_per_node) < 1:
        raise ModelError(f"walks per node must be >= 1, got {walks_per_node}")


def row_cumsum(graph: Graph) -> np.ndarray:
    """(nnz,) float64 cumulative weights within each row; empty for unweighted graphs."""
    if not graph.weighted:
        return np.zeros(0, np.float64)
    out = np.empty(graph.n_edges, np.float64)
    _row_cumsum(graph.indptr, graph.weights, out)
    return out


def walk_shard(
    indptr: np.ndarray,
    indices: np.ndarray,
    weights: np.ndarray,
    cumw: np.ndarray,
    starts: np.ndarray,
    n_nodes: int,
    walk_length: int,
    walks_per_node: int,
    p: float,
    q: float,
    seed: int,
    first_rep: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Walks from `starts` (dense ids), rep-major: (walks_per_node, len(starts), walk_length) int32.

    Walk (rep r, start s) has id (first_rep + r) * n_nodes + s, hence the same
    random stream wherever it runs. `cumw` empty means unweighted.
    """
    check_params(p, q, walk_length, walks_per_node)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    out = np.empty((walks_per_node, starts.size, walk_length), np.int32)
    weighted = cumw.size > 0
    biased = not (p == 1 and q == 1)
    # Every random stream is keyed by walk id, so seed bits beyond 64 are irrelevant.
    seed64 = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    jobs = []
    for r in range(walks_per_node):
        ids = (np.int64(first_rep + r) * np.int64(n_nodes) + starts).astype(np.uint64)
        jobs.append((starts, ids, out[r]))
    threads = threads or os.cpu_count() or 1
    # Split into chunks so threads share the work; the kernel releases the GIL.
    chunks = []
    step = max(1, -(-starts.size // max(threads * 4, 1)))
    for s, ids, o in jobs:
        for lo in range(0, starts.size, step):
            chunks.append((s[lo:lo + step], ids[lo:lo + step], o[lo:lo + step]))

    def work(c):
        _walk_kernel(indptr, indices, weights, cumw, weighted, biased, c[0], c[1],
                     walk_length, 1.0 / p, 1.0 / q, seed64, c[2])

    if threads == 1 or len(chunks) == 1:
        for c in chunks:
            work(c)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, chunks))
    return out


def random_walks(
    graph: Graph,
    walk_length: int = 80,
    walks_per_node: int = 10,
    p: float = 1.0,
    q: float = 1.0,
    seed: int = 0,
    start_nodes: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """node2vec walks (walks_per_node * n_starts, walk_length) int32, rep-major; -1 pads dead ends.

    `start_nodes` (dense ids) defaults to every node. `threads=0` uses all cores.
    """
    starts = np.arange(graph.n_nodes) if start_nodes is None else np.asarray(start_nodes, np.int64)
    if starts.size and (starts.min() < 0 or starts.max() >= graph.n_nodes):
        raise ModelError(f"start nodes must be dense ids in [0, {graph.n_nodes})")
    out = walk_shard(graph.indptr, graph.indices, graph.weights, row_cumsum(graph), starts,
                     graph.n_nodes, walk_length, walks_per_node, p, q, seed, threads=threads)
    return out.reshape(-1, walk_length)


# ----------------------------------------------------------------------------- slow reference


def reference_transition(graph: Graph, t: int, v: int, p: float, q: float) -> dict[int, float]:
    """Exact P(next = x | prev = t, cur = v) straight from the definition (t = -1: first step)."""
    row = slice(graph.indptr[v], graph.indptr[v + 1])
    nbrs_v = [int(x) for x in graph.indices[row]]
    w = [float(x) for x in graph.weights[row]]
    nbrs_t = set() if t < 0 else {int(x) for x in graph.indices[graph.indptr[t]:graph.indptr[t + 1]]}
    un = []
    for x, wx in zip(nbrs_v, w):
        if t < 0:
            un.append(wx)
        elif x == t:
            un.append(wx / p)
        elif x in nbrs_t:
            un.append(wx)
        else:
            un.append(wx / q)
    total = sum(un)
    return {x: u / total for x, u in zip(nbrs_v, un)}


def reference_walk(graph: Graph, start: int, walk_length: int, p: float, q: float,
                   rng: random.Random) -> list[int]:
    """One walk by the definition, in plain Python (slow; for tests)."""
    walk = [start]
    while len(walk) < walk_length:
        v = walk[-1]
        if graph.indptr[v] == graph.indptr[v + 1]:
            break
        t = walk[-2] if len(walk) > 1 else -1
        probs = reference_transition(graph, t, v, p, q)
        walk.append(rng.choices(list(probs), weights=list(probs.values()))[0])
    return walk + [-1] * (walk_length - len(walk))
