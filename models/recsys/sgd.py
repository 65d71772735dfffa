"""Per-sample BPR SGD for the factorization models without content (PITF, FM) on CPU.

Rendle & Schmidt-Thieme (2010) and Nguyen, Wistuba, Schmidt-Thieme (2017), Algorithm 1:
draw a training pair (post, t+), draw t- uniformly among the tags the post does not carry,
and move every parameter θ the sample touches by

    θ <- θ + α (σ(-x) ∂x/∂θ - λ θ),    x = y(post, t+) - y(post, t-),

all gradients taken at the parameters before this sample's update. For PITF
(y = <v_u, a_t> + <v_i, b_t>) a sample touches the user and item rows and the t+ and t- rows
of both tag tables; for FM (y = w_t + <v_u + v_i, c_t>) the user and item rows, c_t+, c_t-
and the biases w_t+, w_t-. This is `bpr.bpr_step_fused` with a batch of one sample (the
step rule's cap never binds), so the torch trainer and this one learn the same model.

- `algorithm1_pitf` / `algorithm1_fm` are the slow, obviously correct reference: a plain
  loop over the samples with the update written out per family, row by row. Tests run it
  interpreted beside the fast kernel on fresh random inputs; `benchmarks/train.py` runs the
  same loop compiled by numba (`algorithm1_pitf_jit`) as the reference for speed and quality.
- `sgd_epoch` is the fast kernel: numba, negatives drawn in the kernel's pass, the sample
  order cut into `threads` contiguous parts trained at once. One thread gives exactly
  `algorithm1`'s updates in `algorithm1`'s order; several run Hogwild (Niu et al. 2011: no
  locks on the shared tag rows, as word2vec does), which is not deterministic.
- `SGDTrainer` runs epochs over `model.params` in place (CPU float32 tensors shared with
  numpy) behind the `Trainer` interface; `BPRTrainer.for_partition` picks it for PITF and FM
  on CPU in one process (`BPRConfig.kernel`: "auto" or "sgd").

Negatives: t- of the sample at position s of an epoch's order is drawn from a splitmix64
stream keyed by (seed, epoch, s), redrawn while it is one of the post's tags, so it does
not depend on the number of threads. With `BPRConfig.negatives` = K > 1, K such draws are
made per sample and t- is the one the model scores highest at the start of the epoch
(adaptive oversampling of hard negatives, Rendle & Freudenthaler, WSDM 2014): uniform
negatives are soon ranked far below t+, their σ(-x) vanishes and learning crawls; a
hard negative keeps the gradient alive, so training converges in fewer epochs
(benchmarks/results/train.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np

from models.errors import ModelError
from models.node2vec.walks import _next, _walk_seed
from models.recsys.bpr import BPRTrainer
from models.recsys.data import PostData

FAMILIES = ("PITF", "FM")
MAX_REDRAWS = 1000  # t- redraws before a post is declared to carry (nearly) every tag


# --------------------------------------------------------------------------- reference


def algorithm1_pitf(Fu, Fi, A, B, users, items, post, pos, neg, lr, reg):
    """Algorithm 1 for PITF, y = <v_u, a_t> + <v_i, b_t>: samples (post[s], pos[s], neg[s]) in order.

    Fu (users, k), Fi (items, k), A = tag_user (T, k), B = tag_item (T, k), updated in place;
    users, items: each post's row (item -1: unseen, no item term). Returns the summed loss.
    """
    loss = 0.0
    for s in range(len(post)):
        u, i, tp, tn = users[post[s]], items[post[s]], pos[s], neg[s]
        vu = Fu[u].copy()
        vi = Fi[i].copy() if i >= 0 else np.zeros_like(vu)
        ap, an, bp, bn = A[tp].copy(), A[tn].copy(), B[tp].copy(), B[tn].copy()
        x = float(np.dot(vu, ap - an)) + (float(np.dot(vi, bp - bn)) if i >= 0 else 0.0)
        g = np.float32(1.0 / (1.0 + math.exp(x)) if x <= 0 else math.exp(-x) / (1.0 + math.exp(-x)))  # σ(-x)
        loss += max(-x, 0.0) + math.log1p(math.exp(-abs(x)))  # -ln σ(x)
        Fu[u] += lr * (g * (ap - an) - reg * vu)
        A[tp] += lr * (g * vu - reg * ap)
        A[tn] += lr * (-g * vu - reg * an)
        if i >= 0:
            Fi[i] += lr * (g * (bp - bn) - reg * vi)
            B[tp] += lr * (g * vi - reg * bp)
            B[tn] += lr * (-g * vi - reg * bn)
    return loss


def algorithm1_fm(Fu, Fi, C, w, users, items, post, pos, neg, lr, reg):
    """Algorithm 1 for FM, y = w_t + <v_u + v_i, c_t>; arguments as `algorithm1_pitf`
    with C = tag (T, k) and w = bias (T,)."""
    loss = 0.0
    for s in range(len(post)):
        u, i, tp, tn = users[post[s]], items[post[s]], pos[s], neg[s]
        vu = Fu[u].copy()
        vi = Fi[i].copy() if i >= 0 else np.zeros_like(vu)
        cp, cn, wp, wn = C[tp].copy(), C[tn].copy(), w[tp], w[tn]
        x = float(wp - wn) + float(np.dot(vu + vi, cp - cn))
        g = np.float32(1.0 / (1.0 + math.exp(x)) if x <= 0 else math.exp(-x) / (1.0 + math.exp(-x)))  # σ(-x)
        loss += max(-x, 0.0) + math.log1p(math.exp(-abs(x)))
        Fu[u] += lr * (g * (cp - cn) - reg * vu)
        if i >= 0:
            Fi[i] += lr * (g * (cp - cn) - reg * vi)
        C[tp] += lr * (g * (vu + vi) - reg * cp)
        C[tn] += lr * (-g * (vu + vi) - reg * cn)
        w[tp] = wp + lr * (g - reg * wp)
        w[tn] = wn + lr * (-g - reg * wn)
    return loss


# The same loops compiled: the reference speed the fast kernel is measured against.
algorithm1_pitf_jit = numba.njit(cache=True, nogil=True)(algorithm1_pitf)
algorithm1_fm_jit = numba.njit(cache=True, nogil=True)(algorithm1_fm)


def algorithm1(family: str, params: dict[str, np.ndarray], user_of_post: np.ndarray, item_of_post: np.ndarray,
               post: np.ndarray, pos: np.ndarray, neg: np.ndarray, lr: float, reg: float,
               compiled: bool = False) -> float:
    """Algorithm 1 on `FactorizationModel.params`-named float32 arrays, in place; the summed loss.

    compiled=False runs the plain Python loop (the test oracle), True the numba-compiled one.
    """
    if family not in FAMILIES:
        raise ModelError(f"algorithm1: family must be one of {FAMILIES}, got {family!r}")
    t1, t2, t3, t4 = _tables(family, params)
    table: dict[tuple[str, bool], Callable[..., float]] = {
        ("PITF", False): algorithm1_pitf, ("FM", False): algorithm1_fm,
        ("PITF", True): algorithm1_pitf_jit, ("FM", True): algorithm1_fm_jit}
    fn = table[(family, compiled)]
    args = [np.ascontiguousarray(a, np.int64) for a in (user_of_post, item_of_post, post, pos, neg)]
    return float(fn(t1, t2, t3, t4, *args, lr, reg))


# --------------------------------------------------------------------------- numba kernels


@numba.njit(cache=True, nogil=True)
def _has_tag(indptr, indices, p, t):
    for j in range(indptr[p], indptr[p + 1]):
        if indices[j] == t:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _draw_negatives(post, indptr, indices, n_tags, seed, lo, hi, out):
    """out[s] for s in [lo, hi): a uniform tag not among post[s]'s tags; -1 when none was found."""
    for s in range(lo, hi):
        state = _walk_seed(seed, s)
        p = post[s]
        t = -1
        for _ in range(MAX_REDRAWS):
            state, r = _next(state)
            c = min(int(r * n_tags), n_tags - 1)
            if not _has_tag(indptr, indices, p, c):
                t = c
                break
        out[s] = t


@numba.njit(cache=True, nogil=True, inline="always")
def _sigmoid_nb(z):
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@numba.njit(cache=True, nogil=True, inline="always")
def _softplus_nb(z):
    return max(z, 0.0) + np.log1p(np.exp(-abs(z)))


@numba.njit(cache=True, nogil=True)
def _pitf_run(Fu, Fi, A, B, users, items, post, pos, neg, lr, reg, lo, hi):
    """PITF updates of samples [lo, hi) in order, in place; the summed loss."""
    k = Fu.shape[1]
    loss = 0.0
    lr32, reg32 = np.float32(lr), np.float32(reg)
    for s in range(lo, hi):
        p = post[s]
        u, i, tp, tn = users[p], items[p], pos[s], neg[s]
        x = 0.0
        for f in range(k):
            x += Fu[u, f] * (A[tp, f] - A[tn, f])
        if i >= 0:
            for f in range(k):
                x += Fi[i, f] * (B[tp, f] - B[tn, f])
        g = np.float32(_sigmoid_nb(-x))
        loss += _softplus_nb(-x)
        for f in range(k):
            vu, ap, an = Fu[u, f], A[tp, f], A[tn, f]
            Fu[u, f] = vu + lr32 * (g * (ap - an) - reg32 * vu)
            A[tp, f] = ap + lr32 * (g * vu - reg32 * ap)
            A[tn, f] = an + lr32 * (-g * vu - reg32 * an)
        if i >= 0:
            for f in range(k):
                vi, bp, bn = Fi[i, f], B[tp, f], B[tn, f]
                Fi[i, f] = vi + lr32 * (g * (bp - bn) - reg32 * vi)
                B[tp, f] = bp + lr32 * (g * vi - reg32 * bp)
                B[tn, f] = bn + lr32 * (-g * vi - reg32 * bn)
    return loss


@numba.njit(cache=True, nogil=True)
def _fm_run(Fu, Fi, C, w, users, items, post, pos, neg, lr, reg, lo, hi):
    """FM updates of samples [lo, hi) in order, in place; the summed loss."""
    k = Fu.shape[1]
    loss = 0.0
    lr32, reg32 = np.float32(lr), np.float32(reg)
    for s in range(lo, hi):
        p = post[s]
        u, i, tp, tn = users[p], items[p], pos[s], neg[s]
        x = w[tp] - w[tn]
        for f in range(k):
            side = Fu[u, f] + (Fi[i, f] if i >= 0 else np.float32(0.0))
            x += side * (C[tp, f] - C[tn, f])
        g = np.float32(_sigmoid_nb(-x))
        loss += _softplus_nb(-x)
        for f in range(k):
            vu = Fu[u, f]
            vi = Fi[i, f] if i >= 0 else np.float32(0.0)
            cp, cn = C[tp, f], C[tn, f]
            Fu[u, f] = vu + lr32 * (g * (cp - cn) - reg32 * vu)
            if i >= 0:
                Fi[i, f] = vi + lr32 * (g * (cp - cn) - reg32 * vi)
            C[tp, f] = cp + lr32 * (g * (vu + vi) - reg32 * cp)
            C[tn, f] = cn + lr32 * (-g * (vu + vi) - reg32 * cn)
        wp, wn = w[tp], w[tn]
        w[tp] = wp + lr32 * (g - reg32 * wp)
        w[tn] = wn + lr32 * (-g - reg32 * wn)
    return loss


@numba.njit(cache=True, nogil=True)
def _hardest_pitf(Fu, Fi, A, B, users, items, post, cands, lo, hi, out):
    """out[s] for s in [lo, hi): the candidate cands[:, s] of highest PITF score for post[s]."""
    k = Fu.shape[1]
    for s in range(lo, hi):
        p = post[s]
        u, i = users[p], items[p]
        best, pick = -np.inf, cands[0, s]
        for j in range(cands.shape[0]):
            t = cands[j, s]
            x = 0.0
            for f in range(k):
                x += Fu[u, f] * A[t, f]
            if i >= 0:
                for f in range(k):
                    x += Fi[i, f] * B[t, f]
            if x > best:
                best, pick = x, t
        out[s] = pick


@numba.njit(cache=True, nogil=True)
def _hardest_fm(Fu, Fi, C, w, users, items, post, cands, lo, hi, out):
    """out[s] for s in [lo, hi): the candidate cands[:, s] of highest FM score for post[s]."""
    k = Fu.shape[1]
    for s in range(lo, hi):
        p = post[s]
        u, i = users[p], items[p]
        best, pick = -np.inf, cands[0, s]
        for j in range(cands.shape[0]):
            t = cands[j, s]
            x = w[t]
            for f in range(k):
                x += (Fu[u, f] + (Fi[i, f] if i >= 0 else np.float32(0.0))) * C[t, f]
            if x > best:
                best, pick = x, t
        out[s] = pick


def _tables(family: str, params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The four arrays a family's kernel updates, checked to be C-contiguous float32."""
    names = ("user", "item", "tag_user", "tag_item") if family == "PITF" else ("user", "item", "tag", "bias")
    missing = [n for n in names if n not in params]
    if missing:
        raise ModelError(f"{family} SGD needs parameters {list(names)}; missing {missing}")
    out = tuple(params[n] for n in names)
    for n, a in zip(names, out):
        if a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.writeable:
            raise ModelError(f"{family} SGD: parameter {n!r} must be a writeable C-contiguous float32 array")
    return out


def _parts(n: int, threads: int) -> list[tuple[int, int]]:
    return [(t * n // threads, (t + 1) * n // threads) for t in range(threads)]


def _run_parts(fn, parts: list[tuple[int, int]], pool: ThreadPoolExecutor | None) -> float:
    if pool is None or len(parts) == 1:
        return float(sum(fn(lo, hi) for lo, hi in parts))
    return float(sum(pool.map(lambda p: fn(*p), parts)))


def sgd_epoch(family: str, params: dict[str, np.ndarray], user_of_post: np.ndarray, item_of_post: np.ndarray,
              post: np.ndarray, pos: np.ndarray, neg: np.ndarray, lr: float, reg: float, threads: int = 1,
              pool: ThreadPoolExecutor | None = None) -> float:
    """The updates of `algorithm1` for samples (post, pos, neg), fast; returns the summed loss.

    threads == 1: exactly `algorithm1`'s order. threads > 1: Hogwild over contiguous parts
    (pass a ThreadPoolExecutor of that size to reuse threads across epochs).
    """
    if family not in FAMILIES:
        raise ModelError(f"sgd_epoch: family must be one of {FAMILIES}, got {family!r}")
    t1, t2, t3, t4 = _tables(family, params)
    kernel = _pitf_run if family == "PITF" else _fm_run
    users = np.ascontiguousarray(user_of_post, np.int64)
    items = np.ascontiguousarray(item_of_post, np.int64)
    post, pos, neg = (np.ascontiguousarray(a, np.int64) for a in (post, pos, neg))

    def fn(lo: int, hi: int) -> float:
        return kernel(t1, t2, t3, t4, users, items, post, pos, neg, lr, reg, lo, hi)

    parts = _parts(len(post), max(1, threads))
    if threads > 1 and pool is None:
        with ThreadPoolExecutor(threads) as own:
            return _run_parts(fn, parts, own)
    return _run_parts(fn, parts, pool)


def draw_negatives(post: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_tags: int, seed: int,
                   threads: int = 1, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(n,) int64 t- per sample position, keyed by (seed, position): independent of threads."""
    post = np.ascontiguousarray(post, np.int64)
    out = np.empty(len(post), np.int64)
    indptr, indices = np.ascontiguousarray(indptr, np.int64), np.ascontiguousarray(indices, np.int64)

    def fn(lo: int, hi: int) -> float:
        _draw_negatives(post, indptr, indices, n_tags, np.uint64(seed), lo, hi, out)
        return 0.0

    _run_parts(fn, _parts(len(post), max(1, threads)), pool)
    if len(out) and out.min() < 0:
        bad = int(post[np.argmin(out)])
        raise ModelError(f"could not draw a negative tag for post row {bad} in {MAX_REDRAWS} tries: "
                         "it carries (nearly) every tag")
    return out


def hardest_negatives(family: str, params: dict[str, np.ndarray], user_of_post: np.ndarray,
                      item_of_post: np.ndarray, post: np.ndarray, cands: np.ndarray, threads: int = 1,
                      pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """(n,) int64: per sample, the candidate of cands (K, n) the model scores highest for its post."""
    t1, t2, t3, t4 = _tables(family, params)
    kernel = _hardest_pitf if family == "PITF" else _hardest_fm
    users = np.ascontiguousarray(user_of_post, np.int64)
    items = np.ascontiguousarray(item_of_post, np.int64)
    post, cands = np.ascontiguousarray(post, np.int64), np.ascontiguousarray(cands, np.int64)
    out = np.empty(len(post), np.int64)

    def fn(lo: int, hi: int) -> float:
        kernel(t1, t2, t3, t4, users, items, post, cands, lo, hi, out)
        return 0.0

    _run_parts(fn, _parts(len(post), max(1, threads)), pool)
    return out


# --------------------------------------------------------------------------- trainer


def supports(model: Any) -> bool:
    """Whether `model` is a factorization model this trainer runs: PITF or FM, no content or +SN."""
    return supports_spec(getattr(model, "spec", None))


def supports_spec(spec: Any) -> bool:
    """`supports` for a model's `factorization.Spec` (None: not a factorization model)."""
    return bool(spec is not None and spec.family in FAMILIES and not spec.content and not spec.social)


def epoch_seed(seed: int, epoch: int, draw: int = 0) -> int:
    """The splitmix64 key of an epoch's negatives (`draw`: which of the K candidate draws)."""
    key = [seed, epoch, 0x5EED] + ([draw] if draw else [])
    return int(np.random.default_rng(key).integers(0, 2**63 - 1))


class SGDTrainer(BPRTrainer):
    """Per-sample BPR over every training pair each epoch, in a seeded order, on CPU, in one process.

    model: a `FactorizationModel` PITF or FM (no content, no +SN) on CPU; its parameter
    tensors are updated in place through numpy views. cfg: a `BPRConfig` (lr, reg, seed and
    `threads`; batch_size and max_row_samples do not apply: every step is one sample).
    `BPRTrainer.for_partition` chooses this trainer (`BPRConfig.kernel`); the rest of the
    `Trainer` interface (work units, what the driver receives) is BPR's, with one partition.
    """

    def __init__(self, model: Any, data: PostData, cfg: Any, rank: int = 0, world: int = 1) -> None:
        if not supports(model):
            raise ModelError(f"{getattr(model, 'name', model)}: the per-sample SGD kernel runs PITF and FM "
                             "without content or +SN; use the torch kernel (--bpr-kernel torch)")
        if str(model.device) != "cpu":
            raise ModelError(f"{model.name}: the per-sample SGD kernel runs on CPU (model is on {model.device}); "
                             "use the torch kernel (--bpr-kernel torch)")
        if world != 1:
            raise ModelError(f"{model.name}: the per-sample SGD kernel trains in one process; with "
                             f"{world} workers use the torch kernel (--bpr-kernel torch)")
        self.model, self.data, self.cfg = model, data, cfg
        self.rank, self.world, self.sync, self.shared_item_slot = rank, world, None, None
        self.family = model.spec.family
        self.post, self.tag = data.pairs()
        self.users = np.ascontiguousarray(data.user_index, np.int64)
        self.items = np.ascontiguousarray(data.item_index, np.int64)
        self.threads = max(1, int(getattr(cfg, "threads", 1)) or os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def params(self) -> dict[str, np.ndarray]:
        """numpy views of the model's parameter tensors (shared memory)."""
        return {k: v.detach().numpy() for k, v in self.model.params.items()}

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over the pairs in a seeded order; (summed loss, samples)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        order = rng.permutation(len(self.post))
        post, pos = self.post[order], self.tag[order]
        draws = max(1, int(getattr(self.cfg, "negatives", 1)))
        cands = np.stack([draw_negatives(post, self.data.indptr, self.data.indices, self.data.n_tags,
                                         epoch_seed(self.cfg.seed, epoch, j), self.threads, self.pool)
                          for j in range(draws)])
        neg = cands[0] if draws == 1 else hardest_negatives(self.family, self.params(), self.users, self.items,
                                                            post, cands, self.threads, self.pool)
        loss = sgd_epoch(self.family, self.params(), self.users, self.items, post, pos, neg,
                         self.cfg.lr, self.cfg.reg, self.threads, self.pool)
        return loss, len(order)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
