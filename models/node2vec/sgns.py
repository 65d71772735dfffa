"""Skip-gram with negative sampling in numba, straight from the int32 walk arrays.

Why not gensim at archive scale (issue 9, benchmarks/results/scale.md): gensim's
per-pair inner loop draws fresh negatives for every (node, context) pair, so a
token touches ~2 x window x (negative + 1) random rows of the two (nodes x dim)
float32 tables. Once the tables leave the caches (102 MB at 10^5 users, 1 GB at
10^6) every one of those rows is a DRAM miss and the rate falls from 260k to
80k tokens/s on 2 cores: 10x more users cost ~14x the time. Its memory corpus
also hands every walk to Python as a list and looks every token up in a dict.

This trainer shares one draw of negatives across a centre node's whole context
window (Ji et al. 2016, "Parallelizing Word2Vec in Shared and Distributed
Memory", the pWord2Vec scheme; same objective, same quality in their and our
measurements): per centre node it reads the context rows of the input table
(mostly still in L1 from the previous centre: the window slides by one) and
`negative + 1` output rows, and does the updates as small matrix products. A
token then costs ~negative + 2 random row reads instead of ~2 x window x
(negative + 1), and the rate barely depends on how many users there are. Two
more things keep those reads cheap at 10^6 users: the windows and negatives of a
walk are drawn before training on it, so the next centre's rows are prefetched
while this centre computes (+5-7%), and the tables live in transparent huge pages
(`host_memory.huge_page_zeros`: +20% at 10^6 users, where 4 KB pages make every
random row a TLB miss).

Everything else is word2vec's: learning rate falling linearly from `alpha` to
`min_alpha` over the whole run, in steps every 10,000 tokens (word2vec.c and gensim
do the same; on small graphs the steps matter: a smooth decay trains ~1/3 less and
community structure in a 100-node test graph went from 0.9 to 0.4 nearest-neighbour
precision), gensim's down-sampling rule (`sample`), reduced
windows drawn uniformly per centre, noise distribution count^0.75 (here an
alias table: one cache-resident lookup per draw), input vectors initialised
uniform(-1, 1) / dim as gensim 4 does, output vectors zero. Threads run Hogwild (lock-free
updates, as word2vec and gensim do), each on every `threads`-th walk; with one
thread training is deterministic. Randomness per walk is keyed by
(seed, epoch, walk position), splitmix64 as in the walk kernel.
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
from models.node2vec.walks import _next, _walk_seed

MIN_ALPHA = 1e-4          # gensim's min_alpha
ALPHA_STEP_TOKENS = 10_000  # the learning rate steps every this many raw tokens (word2vec.c; gensim's batch_words)
CHUNK_ROWS = 1 << 16      # walks per kernel call: progress and alpha bookkeeping granularity


@intrinsic
def _prefetch_row(typingctx, arr, row):
    """Hint the CPU to load row `row` of a C-contiguous 2-D array (every 64-byte line, up to 1 KiB).

    LLVM's prefetch: it does not wait, fault or change anything, so reads of rows needed
    by the next centre node overlap with the arithmetic of this one.
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


@numba.njit(cache=True, inline="always")
def _draw(state, prob, alias, noise_nodes):
    state, u = _next(state)
    x = u * prob.size
    i = min(int(x), prob.size - 1)
    if x - i >= prob[i]:
        i = alias[i]
    return state, noise_nodes[i]


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _update(syn0, syn1, ctx, nc, outs, no, grad, neu1e, alpha):
    """SGD step for input rows ctx[:nc] against output rows outs[:no] (outs[0] positive, rest noise)."""
    d = syn0.shape[1]
    for c in range(nc):                   # grad[c, o] = (label - sigmoid(in_c . out_o)) * alpha
        a = ctx[c]
        for o in range(no):
            b = outs[o]
            f = np.float32(0.0)
            for k in range(d):
                f += syn0[a, k] * syn1[b, k]
            if f > 30.0:
                f = 30.0
            elif f < -30.0:
                f = -30.0
            label = 1.0 if o == 0 else 0.0
            grad[c, o] = (label - 1.0 / (1.0 + np.exp(-f))) * alpha
    for c in range(nc):                   # input-side error from the old output rows
        for k in range(d):
            neu1e[c, k] = 0.0
        for o in range(no):
            g = grad[c, o]
            b = outs[o]
            for k in range(d):
                neu1e[c, k] += g * syn1[b, k]
    for o in range(no):                       # output rows from the old input rows
        b = outs[o]
        for c in range(nc):
            g = grad[c, o]
            a = ctx[c]
            for k in range(d):
                syn1[b, k] += g * syn0[a, k]
    for c in range(nc):
        a = ctx[c]
        for k in range(d):
            syn0[a, k] += neu1e[c, k]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _train_rows(walks, first, step, syn0, syn1, keep, prob, alias, noise_nodes, window, negative,
                alpha0, alpha1, alpha_rows, pos0, total, seed):
    """Train on walks[first::step] (rows of int32 node ids, -1 padded at the end).

    pos0: position of walks[0] in the whole run (epochs included), total: walks in the run.
    alpha falls linearly with the position, in steps of `alpha_rows` walks: a walk trains with
    the rate of the first walk of its step. Returns the number of tokens trained on.
    """
    n_rows, length = walks.shape
    d = syn0.shape[1]
    sent = np.empty(length, np.int64)
    ctx = np.empty(2 * window, np.int64)
    outs = np.empty(negative + 1, np.int64)
    grad = np.empty((2 * window, negative + 1), np.float32)
    neu1e = np.empty((2 * window, d), np.float32)
    wins = np.empty(length, np.int64)
    negs = np.empty((length, negative), np.int64)
    nneg = np.empty(length, np.int64)
    trained = 0
    for r in range(first, n_rows, step):
        pos = pos0 + r
        alpha = alpha0 - (alpha0 - alpha1) * ((pos // alpha_rows) * alpha_rows / total)
        if alpha < alpha1:
            alpha = alpha1
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
            sent[n] = v
            n += 1
        trained += n
        for i in range(n):                    # draws first (same stream order as one centre at a time)
            state, u = _next(state)
            wins[i] = window - int(u * window)    # reduced window, 1..window
            k = 0
            for _ in range(negative):         # one draw of negatives for the whole window
                state, x = _draw(state, prob, alias, noise_nodes)
                if x != sent[i]:              # as word2vec: a draw of the centre itself is dropped
                    negs[i, k] = x
                    k += 1
            nneg[i] = k
        for i in range(n):
            if i + 1 < n:                     # the next centre's rows load while this one computes
                _prefetch_row(syn1, sent[i + 1])
                for k in range(nneg[i + 1]):
                    _prefetch_row(syn1, negs[i + 1, k])
                _prefetch_row(syn0, sent[min(n - 1, i + 1 + wins[i + 1])])
            w = wins[i]
            lo = max(0, i - w)
            hi = min(n, i + w + 1)
            nc = 0
            for j in range(lo, hi):
                if j != i:
                    ctx[nc] = sent[j]
                    nc += 1
            if nc == 0:
                continue
            outs[0] = sent[i]
            no = 1 + nneg[i]
            for k in range(nneg[i]):
                outs[1 + k] = negs[i, k]
            _update(syn0, syn1, ctx, nc, outs, no, grad, neu1e, alpha)
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
               on_walks: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_nodes, dim) float32 input vectors; rows of nodes with no token are zero.

    walks: blocks of int32 rows (-1 padded), trained in order, `epochs` times; counts: (n_nodes,)
    tokens per node over all blocks (the noise distribution and the down-sampling use it).
    `on_walks(n)` is called after every chunk of n walks.
    """
    counts = np.asarray(counts, np.int64)
    if counts.shape != (n_nodes,):
        raise ModelError(f"counts must have one entry per node ({n_nodes}), got shape {counts.shape}")
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise ModelError("no walks to train on")
    rng = np.random.default_rng([seed, 0x5367_6E73])
    syn0 = huge_page_zeros((n_nodes, dim), np.float32)   # random rows: TLB reach matters (host_memory)
    for lo in range(0, present.size, 1 << 16):   # in slices: no float64 (n x dim) temporary
        ids = present[lo:lo + (1 << 16)]
        syn0[ids] = (rng.random((ids.size, dim), np.float32) * 2 - 1) / dim
    syn1 = huge_page_zeros((n_nodes, dim), np.float32)
    keep = keep_probability(counts, sample).astype(np.float32)
    prob, alias = _alias_table(counts[present].astype(np.float64) ** 0.75)
    threads = threads or os.cpu_count() or 1
    n_walks = sum(len(b) for b in walks)
    total = max(n_walks * epochs, 1)
    alpha_rows = max(1, ALPHA_STEP_TOKENS // max(walks[0].shape[1], 1))
    seed64 = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        pos = 0
        for _ in range(epochs):
            for block in walks:
                for lo in range(0, len(block), CHUNK_ROWS):
                    chunk = np.ascontiguousarray(block[lo:lo + CHUNK_ROWS], np.int32)

                    def work(t, chunk=chunk, pos=pos):
                        return _train_rows(chunk, t, threads, syn0, syn1, keep, prob, alias, present, window,
                                           negative, np.float32(alpha), np.float32(MIN_ALPHA), alpha_rows, pos, total,
                                           seed64)

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
    return syn0
