"""Skip-gram with negative sampling in numba, straight from the int32 walk arrays.

The algorithm is word2vec's skip-gram (Mikolov et al. 2013; word2vec.c, gensim's
`w2v_fast_sentence_sg_neg`): for every centre node and every context node in its reduced
window, the context's input row is trained against the centre's output row (label 1) and
`negative` noise output rows (label 0), one pair after the other, each update seeing the
rows as the previous pairs left them. Down-sampling is gensim's rule (`sample`), each
centre's window is drawn uniformly from 1..window, the learning rate falls linearly from
`alpha` to `min_alpha` over the whole run in steps every 10,000 tokens (word2vec.c and
gensim both step; on small graphs a smooth decay trains measurably less), input vectors
start uniform(-1, 1) / dim as in gensim 4, output vectors at zero. Threads run Hogwild
(lock-free, as word2vec and gensim do), each on every `threads`-th walk; with one thread
training is deterministic. Randomness per walk is keyed by (seed, epoch, walk position),
splitmix64 as in the walk kernel.

Noise rows come from the count^0.75 distribution, drawn either afresh for every
(centre, context) pair, as word2vec does (`shared=False`), or once per centre node for
all the pairs of its window (`shared=True`, the pWord2Vec draw of Ji et al. 2016). Shared
draws make a window touch `negative + 1` output rows that stay in L1 instead of
`negative` fresh random rows per pair, and, with the sequential updates above, they embed
as well as word2vec's draws. What does cost quality is taking every gradient of a window
from the rows as they were before it and applying them together (one batched update per
centre): on community graphs that overfits long runs (tests/test_node2vec_quality.py
keeps a kernel that does it, to show the gensim comparison catches it). The measurements
are in benchmarks/results/node2vec.md.

What makes it faster than gensim with the same updates is memory traffic and the scalar
work around each row update:

* each walk's windows and noise rows are drawn before it is trained on, so the output
  rows of a pair a few pairs ahead are prefetched while this pair computes;
* rows are renumbered by descending count (gensim's vocabulary order), so the rows drawn
  most often as noise sit together in memory, and a noise draw needs no table look-up
  in main memory: nodes with equal counts have equal noise weight, so a draw is an alias
  draw over the distinct counts (a small, cache-resident table) and a uniform pick
  inside that count's contiguous range of rows; exactly count^0.75 at 32-bit resolution;
* the logistic function is interpolated in a table instead of calling exp, the learning
  rate stays float32 so the update loops stay float32 vectors, and per (pair, output row)
  the dot product and both updates take two passes over the row;
* the two (nodes x dim) tables live in transparent huge pages
  (`host_memory.huge_page_zeros`), so random rows do not each cost a TLB miss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from models.errors import ModelError
from models.host_memory import huge_page_zeros
from models.node2vec.walks import _GOLDEN, _mix, _next, _walk_seed

MIN_ALPHA = 1e-4            # gensim's min_alpha
ALPHA_STEP_TOKENS = 10_000  # the learning rate steps every this many raw tokens (word2vec.c; gensim's batch_words)
CHUNK_ROWS = 1 << 16        # walks per kernel call: progress and alpha bookkeeping granularity
PREFETCH_PAIRS = 3          # output rows of the pair this many pairs ahead are requested early
SIGMOID_MAX = 8.0           # the logistic function is interpolated in a table over [-8, 8], its ends beyond
SIGMOID_BINS = 4096         # bins of 1/256 (word2vec reads 1000 bins over [-6, 6] without interpolating)
SIGMOID_SCALE = SIGMOID_BINS / (2 * SIGMOID_MAX)
_SIGMOID = (1.0 / (1.0 + np.exp(SIGMOID_MAX - np.arange(SIGMOID_BINS + 2) / SIGMOID_SCALE))).astype(np.float32)
_U32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _prefetch_row(typingctx, arr, row):
    """Hint the CPU to load row `row` of a C-contiguous 2-D array (every 64-byte line, up to 1 KiB).

    LLVM's prefetch: it does not wait, fault or change anything, so reads of rows needed
    a few pairs later overlap with the arithmetic of this one.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and isinstance(row, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i64 = ir.IntType(64)
        r = context.cast(builder, args[1], sig.args[1], types.int64)
        stride = cgutils.unpack_tuple(builder, ary.strides)[0]
        base = builder.add(builder.ptrtoint(ary.data, i64), builder.mul(r, stride))
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3), "llvm.prefetch.p0")
        read, locality, data = (ir.Constant(ir.IntType(32), v) for v in (0, 3, 1))
        for off in range(0, 1024, 64):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, off), stride)):
                builder.call(fn, [builder.inttoptr(builder.add(base, ir.Constant(i64, off)), i8p), read, locality, data])
        return context.get_dummy_value()

    return types.void(arr, row), codegen


@numba.njit(cache=True, nogil=True)
def _alias_table(weights):
    """Vose's alias method: (prob float64 (n,), alias int64 (n,)) for draws proportional to weights."""
    n = weights.size
    prob = weights * (n / weights.sum())
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = nl = 0
    for i in range(n):
        if prob[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        l_ = large[nl - 1]
        alias[s] = l_
        prob[l_] = prob[l_] + prob[s] - 1.0
        if prob[l_] < 1.0:
            nl -= 1
            small[ns] = l_
            ns += 1
    for i in range(nl):
        prob[large[i]] = 1.0
    for i in range(ns):   # left over only through rounding
        prob[small[i]] = 1.0
    return prob, alias


class NoiseTable:
    """count^0.75 noise over rows renumbered by descending count, as runs of equal counts.

    order: (V,) int64 node id of each row (descending count, ties by node id);
    rank:  (n_nodes,) int64 row of each node (-1: never walked);
    cut, alias: (C,) uint64 / int64 alias table over the C distinct counts, `cut` the
        32-bit fixed-point acceptance threshold (2**32: always accept);
    start, size: (C,) int64 / uint64 first row and row count of each distinct count.
    """

    def __init__(self, counts: np.ndarray) -> None:
        counts = np.asarray(counts, np.int64)
        present = np.flatnonzero(counts)
        self.order = present[np.argsort(-counts[present], kind="stable")]
        self.rank = np.full(counts.size, -1, np.int64)
        self.rank[self.order] = np.arange(self.order.size)
        c = counts[self.order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if c.size else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, c.size])
        self.start = starts.astype(np.int64)
        self.size = sizes.astype(np.uint64)
        prob, alias = _alias_table(sizes * c[starts].astype(np.float64) ** 0.75) if c.size else (np.ones(0), np.zeros(0, np.int64))
        self.cut = np.minimum(np.floor(prob * 2.0**32), 2.0**32).astype(np.uint64)
        self.alias = alias.astype(np.int64)

    def probabilities(self) -> np.ndarray:
        """(V,) float64 exact probability of drawing each row (for tests)."""
        n = self.cut.size
        mass = self.cut.astype(np.float64) / 2.0**32
        np.add.at(mass, self.alias, 1.0 - mass)
        per_row = np.repeat(mass / n / self.size.astype(np.float64), self.size.astype(np.int64))
        return per_row


@numba.njit(cache=True, inline="always")
def _draw(state, cut, alias, start, size):
    """(new state, row) from the noise table: alias over distinct counts, uniform within one."""
    state = state + _GOLDEN
    z = _mix(state)
    hi = z >> _U32
    lo = z & _LOW32
    x = hi * np.uint64(cut.size)
    i = np.int64(x >> _U32)
    j = alias[i]
    i = j if (x & _LOW32) >= cut[i] else i    # a select, not a branch: the outcome is random
    return state, start[i] + np.int64((lo * size[i]) >> _U32)


@numba.njit(cache=True, fastmath=True, inline="always")
def _sigmoid(f):
    """1 / (1 + exp(-f)), linear between table points 1/256 apart (tests/test_node2vec_sgns.py
    bounds the error); cheaper than a call to exp, the bulk of a row update's scalar work."""
    x = (f + np.float32(SIGMOID_MAX)) * np.float32(SIGMOID_SCALE)
    i = min(max(int(x), 0), SIGMOID_BINS)     # clamped as an integer: in range whatever f is
    t = min(max(x - np.float32(i), np.float32(0.0)), np.float32(1.0))
    return _SIGMOID[i] + t * (_SIGMOID[i + 1] - _SIGMOID[i])


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _train_pair(syn0, syn1, a, outs, lo, hi, neu1e, alpha):
    """word2vec's SGD step for one pair: input row a against output rows outs[lo] (the centre,
    label 1) and outs[lo + 1:hi] (noise, label 0; -1 marks a draw of the centre, skipped as in word2vec)."""
    d = syn0.shape[1]
    for k in range(d):
        neu1e[k] = 0.0
    for t in range(lo, hi):
        b = outs[t]
        if b < 0:
            continue
        label = np.float32(1.0) if t == lo else np.float32(0.0)
        f = np.float32(0.0)
        for k in range(d):
            f += syn0[a, k] * syn1[b, k]
        g = (label - _sigmoid(f)) * alpha
        for k in range(d):        # one pass: the error from the old output row, then its update
            s1 = syn1[b, k]
            neu1e[k] += g * s1
            syn1[b, k] = s1 + g * syn0[a, k]
    for k in range(d):
        syn0[a, k] += neu1e[k]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _train_rows(walks, first, step, rank, syn0, syn1, keep, cut, alias, start, size, window, negative, shared,
                alpha0, alpha1, alpha_rows, pos0, total, seed, ahead):
    """Train on walks[first::step] (rows of int32 node ids, -1 padded at the end).

    syn0/syn1 rows are renumbered (`rank[node]`); keep is per node. shared: one draw of
    noise rows per centre, used by every pair of its window; else fresh per pair. pos0:
    position of walks[0] in the whole run (epochs included), total: walks in the run.
    alpha falls linearly with the position, in steps of `alpha_rows` walks: a walk trains
    with the rate of the first walk of its step. Returns the number of tokens trained on.
    """
    n_rows, length = walks.shape
    d = syn0.shape[1]
    sent = np.empty(length, np.int64)
    max_pairs = length * 2 * window
    pin = np.empty(max_pairs, np.int64)        # context (input row) of each pair
    fresh = np.empty(max_pairs, np.bool_)      # pair whose noise rows were drawn for it (not reused)
    no = negative + 1
    outs = np.empty(max_pairs * no, np.int64)  # per pair: the centre, then its noise rows
    noise = np.empty(no, np.int64)
    neu1e = np.empty(d, np.float32)
    trained = 0
    for r in range(first, n_rows, step):
        pos = pos0 + r
        alpha = alpha0 - (alpha0 - alpha1) * ((pos // alpha_rows) * alpha_rows / total)
        alpha = np.float32(max(alpha, alpha1))   # float32: a float64 rate would widen the update loops
        state = _walk_seed(seed, pos)
        n = 0
        for j in range(length):               # down-sample frequent nodes, drop padding
            v = walks[r, j]
            if v < 0:
                break
            if keep[v] < 1.0:
                state, u = _next(state)
                if u >= keep[v]:
                    continue
            sent[n] = rank[v]
            n += 1
        trained += n
        npairs = 0
        for i in range(n):                    # every draw of the walk first, in word2vec's order
            state, u = _next(state)
            w = window - int(u * window)      # reduced window, 1..window
            c = sent[i]
            first_pair = npairs
            if shared:
                for k in range(1, no):
                    state, x = _draw(state, cut, alias, start, size)
                    noise[k] = x if x != c else -1
            for j in range(max(0, i - w), min(n, i + w + 1)):
                if j == i:
                    continue
                pin[npairs] = sent[j]
                base = npairs * no
                outs[base] = c
                for k in range(1, no):
                    if shared:
                        outs[base + k] = noise[k]
                    else:
                        state, x = _draw(state, cut, alias, start, size)
                        outs[base + k] = x if x != c else -1
                fresh[npairs] = not shared or npairs == first_pair
                npairs += 1
        for p in range(npairs):
            q = p + ahead
            if q < npairs and fresh[q]:       # the rows of a later pair load while this one computes
                for k in range(q * no, (q + 1) * no):
                    _prefetch_row(syn1, outs[k])
            _train_pair(syn0, syn1, pin[p], outs, p * no, (p + 1) * no, neu1e, alpha)
    return trained


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """(n,) float64: gensim's probability of keeping a token of each node (down-sampling, `sample`)."""
    keep = np.ones(counts.size, np.float64)
    total = float(counts.sum())
    if sample <= 0 or total == 0:
        return keep
    # gensim's prepare_vocab: a fraction of all tokens, or (sample >= 1) a count scaled by the golden ratio^2
    threshold = sample * total if sample < 1.0 else float(int(sample * (3 + np.sqrt(5)) / 2))
    c = counts[counts > 0].astype(np.float64)
    keep[counts > 0] = np.minimum((np.sqrt(c / threshold) + 1.0) * (threshold / c), 1.0)
    return keep


def train_sgns(walks: Sequence[np.ndarray], n_nodes: int, counts: np.ndarray, *, dim: int, window: int,
               negative: int, epochs: int, alpha: float, sample: float, seed: int, threads: int = 0,
               shared: bool = False, on_walks: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_nodes, dim) float32 input vectors; rows of nodes with no token are zero.

    walks: blocks of int32 rows (-1 padded), trained in order, `epochs` times; counts: (n_nodes,)
    tokens per node over all blocks (the noise distribution and the down-sampling use it).
    shared: noise rows drawn once per centre for its window, else per (centre, context) pair.
    `on_walks(n)` is called after every chunk of n walks.
    """
    counts = np.asarray(counts, np.int64)
    if counts.shape != (n_nodes,):
        raise ModelError(f"counts must have one entry per node ({n_nodes}), got shape {counts.shape}")
    noise = NoiseTable(counts)
    rows = noise.order.size
    if rows == 0:
        raise ModelError("no walks to train on")
    rng = np.random.default_rng([seed, 0x5367_6E73])
    syn0 = huge_page_zeros((rows, dim), np.float32)   # random rows: TLB reach matters (host_memory)
    for lo in range(0, rows, 1 << 16):   # in slices: no float64 (n x dim) temporary
        hi = min(rows, lo + (1 << 16))
        syn0[lo:hi] = (rng.random((hi - lo, dim), np.float32) * 2 - 1) / dim
    kernel_args = (noise.rank, syn0, huge_page_zeros((rows, dim), np.float32),
                   keep_probability(counts, sample).astype(np.float32), noise.cut, noise.alias, noise.start,
                   noise.size, window, negative, shared, np.float32(alpha), np.float32(MIN_ALPHA),
                   max(1, ALPHA_STEP_TOKENS // max(walks[0].shape[1], 1)))
    _train_blocks(walks, epochs, threads or os.cpu_count() or 1, np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF),
                  kernel_args, on_walks)
    del kernel_args   # the output table: freed before the copy below
    out = np.zeros((n_nodes, dim), np.float32)
    for lo in range(0, rows, 1 << 16):   # back to node order, in slices
        out[noise.order[lo:lo + (1 << 16)]] = syn0[lo:lo + (1 << 16)]
    return out


def _train_blocks(walks: Sequence[np.ndarray], epochs: int, threads: int, seed64: np.uint64,
                  kernel_args: tuple, on_walks: Callable[[int], None] | None) -> None:
    """Every chunk of every block, `epochs` times, on `threads` Hogwild threads."""
    total = max(sum(len(b) for b in walks) * epochs, 1)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        pos = 0
        for _ in range(epochs):
            for block in walks:
                for lo in range(0, len(block), CHUNK_ROWS):
                    chunk = np.ascontiguousarray(block[lo:lo + CHUNK_ROWS], np.int32)

                    def work(t, chunk=chunk, pos=pos):
                        return _train_rows(chunk, t, threads, *kernel_args, pos, total, seed64, PREFETCH_PAIRS)

                    if pool is None:
                        work(0)
                    else:
                        list(pool.map(work, range(threads)))
                    pos += len(chunk)
                    if on_walks is not None:
                        on_walks(len(chunk))
    finally:
        if pool is not None:
            pool.shutdown()


@numba.njit(cache=True)
def _draw_many(seed, n, cut, alias, start, size):
    """(n,) int64 rows drawn from the noise table (for tests of the kernel's draw)."""
    out = np.empty(n, np.int64)
    state = seed
    for i in range(n):
        state, out[i] = _draw(state, cut, alias, start, size)
    return out
