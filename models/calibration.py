"""Calibrated probabilities for top-k tags: write only the tags that are probably right.

A model's top-k scores rank tags but do not say how likely a tag is to be right. A
`Calibrator` is fitted on held-out posts (the validation split): for each of a post's top
k tags, its score and whether it is one of the post's true tags (a hit). It then maps a
score to P(hit), and `keep_at(probabilities, P)` keeps, per post, the tags whose
probability meets a precision target P (possibly none): a platform writing tags into a
search index asks for P = 0.9 and gets fewer, surer tags.

Methods (`METHODS`):

- `isotonic`: pool-adjacent-violators on (score, hit): the most flexible monotone map;
  prediction interpolates linearly between the fitted blocks and is flat beyond them.
- `platt`: P = σ(a · score + b) (Platt 1999), fitted by Newton's method on the log loss:
  two parameters, smooth, but tied to a logistic shape.

Each either over all (post, rank) pairs at once, or per rank (`per_rank=True`: one map for
rank 1, one for rank 2, ...), since a tag's rank carries information its raw score does not
(a post whose whole list scores high is not thereby easier). Probabilities along a post's
list are made non-increasing (a running minimum), so the tags kept are always a prefix of
the list. Which works better is measured on validation → test
(`benchmarks/results/calibration.md`): with models trained to convergence (hard negatives,
early stopping), isotonic maps per rank kept every target and wrote ~1.5× the tags of one
map at P = 0.5 and 0.7 on folksonomies and ~20× on the photo archive, where one map over
all ranks mixed the sure rank-1 tags with the rest and claimed P = 0.5 for almost none;
Platt's logistic shape missed targets; per-post normalised scores did not help.
`DEFAULT_METHOD` is isotonic per rank.

**A lower bound, not the mean** (`LOWER_BOUND_Z`). A target P writes the tags above a cut,
and what it reaches on new posts is their hit rate; read off validation block means that
rate is optimistic exactly where the decision is made: the top of the isotonic map is the
best-looking of many suffixes of few pairs (pool-adjacent-violators' top block is a maximum
of means), so a model whose true rate never reaches P still gets a top block at P on many
validation draws. Each block is therefore capped at the one-sided Wilson lower bound of the
validation hit rate of it and every block above it (the "tail": the tags a target at that
block writes). Where those are thousands of pairs the cap costs nothing; where they are the
few dozen top pairs the cap decides, and a target the evidence cannot clear writes nothing.
Per rank, each of the k maps has a top block of its own and a tenth of the pairs, so one of
them overclaims more often than one map does: per-rank maps take the stricter `PER_RANK_Z`
(z = 1 per rank missed P = 0.9 on one folksonomy split, 0.81 on 58 tags; 1.645 missed
none and wrote as many tags at 0.5 and 0.7).
Bounding each block on its own pairs instead lowers the whole map and wrote far fewer tags
for the same kept targets; holding validation posts out of early stopping to fit the map
on (the selection of the epoch was measured to inflate validation hits by less than the
noise) halves the pairs and wrote fewer still (benchmarks/results/calibration.md).

Everything is JSON-able (`to_json` / `from_json`): a saved model carries its calibrator in
model.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.errors import ModelError

METHODS = ("isotonic", "platt")
DEFAULT_METHOD = ("isotonic", True)  # (method, per_rank): see the module docstring
TARGETS = (0.5, 0.7, 0.9)
# Validation (score, hit) pairs an isotonic block needs at least (`isotonic_fit`): without it the
# top block of a handful of sure-looking tags missed P = 0.9 on test (benchmarks/results/calibration.md).
MIN_BLOCK = 50
# One-sided z of the Wilson lower bound that caps each isotonic block (`isotonic_fit`, bound
# "tail"): see the module docstring and benchmarks/results/calibration.md.
LOWER_BOUND_Z = 1.0
# The same for maps fitted per rank (the default): k top blocks, each on a k-th of the pairs.
PER_RANK_Z = 1.645


# --------------------------------------------------------------------------- the two maps


def isotonic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                 min_weight: float = 1.0, z: float = 0.0, bound: str = "tail") -> dict[str, list[float]]:
    """Pool adjacent violators: the non-decreasing step fit of y on x (least squares), then
    every block lighter than `min_weight` merged into its neighbour (still non-decreasing).

    The merge matters at the ends: PAV leaves a top block of the few highest scores, often
    all hits, and a rate of 1.0 read off five samples writes tags at P = 0.9 that are right
    far less often (`MIN_BLOCK`). Returns {"x": knots, "y": values}: each block contributes
    its first and last x at its mean y, so `isotonic_predict` interpolates between blocks and
    is flat inside one.
    """
    if len(x) == 0:
        raise ModelError("isotonic calibration needs at least one (score, hit) pair")
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    ws = np.ones(len(xs)) if w is None else np.asarray(w, np.float64)[order]
    # merge equal x first (one block per distinct score)
    uniq, start = np.unique(xs, return_index=True)
    sums, weights = np.add.reduceat(ys * ws, start), np.add.reduceat(ws, start)
    vals, wts, lo, hi = [], [], [], []
    for i in range(len(uniq)):
        vals.append(sums[i] / weights[i])
        wts.append(weights[i])
        lo.append(uniq[i])
        hi.append(uniq[i])
        while len(vals) > 1 and vals[-2] > vals[-1]:
            _merge(vals, wts, lo, hi, len(vals) - 2)
    b = 0
    while b < len(vals) and len(vals) > 1:  # light blocks join the next one (the last one, the previous)
        if wts[b] < min_weight:
            _merge(vals, wts, lo, hi, min(b, len(vals) - 2))
            b = max(b - 1, 0)
        else:
            b += 1
    if z > 0:
        vals = _lower_bounds(vals, wts, z, bound)
    kx, ky = [], []
    for v, a, b in zip(vals, lo, hi):
        kx += [a, b] if b > a else [a]
        ky += [v, v] if b > a else [v]
    return {"x": [float(v) for v in kx], "y": [float(v) for v in ky]}


def _lower_bounds(vals: list, wts: list, z: float, bound: str) -> list:
    """Block rates lowered to a one-sided Wilson lower bound at z, then a running minimum from
    the top block down (the map stays non-decreasing).

    `tail`: a block's rate is at most the bound of the hit rate of it and every block above
    it, the validation precision of the tags a target at this block would write; in the
    bulk of the scores that tail is thousands of pairs and the bound costs nothing, at the
    sparse top it is the few pairs that decide whether a target is reached. `block`: the
    bound of the block's own pairs, which lowers every block.
    """
    v, n = np.asarray(vals, np.float64), np.asarray(wts, np.float64)
    if bound == "block":
        low = np.array([wilson(a * b, b, z)[0] for a, b in zip(v, n)])
    elif bound == "tail":
        th, tn = np.cumsum((v * n)[::-1])[::-1], np.cumsum(n[::-1])[::-1]
        low = np.minimum(v, [wilson(a, b, z)[0] for a, b in zip(th, tn)])
    else:
        raise ModelError(f"unknown calibration bound {bound!r}; valid: ['tail', 'block']")
    return list(np.minimum.accumulate(low[::-1])[::-1])


def _merge(vals: list, wts: list, lo: list, hi: list, i: int) -> None:
    """Blocks i and i+1 become one at their weighted mean."""
    v, w = (vals[i] * wts[i] + vals[i + 1] * wts[i + 1]) / (wts[i] + wts[i + 1]), wts[i] + wts[i + 1]
    vals[i:i + 2], wts[i:i + 2], hi[i:i + 2], lo[i:i + 2] = [v], [w], [hi[i + 1]], [lo[i]]


def isotonic_predict(p: dict[str, list[float]], x: np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(x, np.float64), p["x"], p["y"])


def platt_fit(x: np.ndarray, y: np.ndarray, iters: int = 50) -> dict[str, float]:
    """σ(a x + b) by Newton's method on the log loss, with Platt's target smoothing
    (hits -> (n+ + 1)/(n+ + 2), misses -> 1/(n- + 2)) so separable data keeps finite a."""
    if len(x) == 0:
        raise ModelError("Platt calibration needs at least one (score, hit) pair")
    x = np.asarray(x, np.float64)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    mu, sd = x.mean(), x.std() or 1.0
    z = (x - mu) / sd  # standardised for a well-conditioned Newton step
    a, b = 0.0, float(np.log((n_pos + 1) / (n_neg + 1)))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * z + b)))
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = p * (1 - p)
        hess = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return {"a": float(a / sd), "b": float(b - a * mu / sd)}


def platt_predict(p: dict[str, float], x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(p["a"] * np.asarray(x, np.float64) + p["b"])))


# --------------------------------------------------------------------------- calibrator


@dataclass
class Calibrator:
    """Score -> P(hit) for the tags of top-k lists; one map, or one per rank."""

    method: str = DEFAULT_METHOD[0]
    per_rank: bool = DEFAULT_METHOD[1]
    maps: list[dict[str, Any]] = field(default_factory=list)  # one, or one per rank
    n_posts: int = 0  # validation posts it was fitted on
    # isotonic: blocks capped at the tail's one-sided Wilson lower bound (0: means; None: PER_RANK_Z
    # per rank, else LOWER_BOUND_Z)
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is None:
            self.z = PER_RANK_Z if self.per_rank else LOWER_BOUND_Z
        if self.method not in METHODS:
            raise ModelError(f"unknown calibration method {self.method!r}; valid: {list(METHODS)}")
        if not self.z >= 0:
            raise ModelError(f"calibration lower-bound z must be >= 0 (0: block means), got {self.z}")

    def fit(self, scores: np.ndarray, hits: np.ndarray) -> Calibrator:
        """scores, hits (n, k): each post's top-k scores, best first, and whether each is right.

        Padding (score NaN, or a -1 tag the caller marked as not a hit with NaN score) is ignored.
        """
        scores, hits = np.asarray(scores, np.float64), np.asarray(hits, np.float64)
        if scores.shape != hits.shape or scores.ndim != 2:
            raise ModelError(f"calibration: scores {scores.shape} and hits {hits.shape} must be the same (n, k)")
        def fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
            if self.method == "isotonic":
                return isotonic_fit(x, y, min_weight=MIN_BLOCK, z=float(self.z or 0.0))
            return platt_fit(x, y)

        cols = [np.arange(scores.shape[1])] if not self.per_rank else [[r] for r in range(scores.shape[1])]
        self.maps = []
        for c in cols:
            s, h = scores[:, c].reshape(-1), hits[:, c].reshape(-1)
            ok = np.isfinite(s)
            if not ok.any():  # a rank no post reached: reuse the previous rank's map
                self.maps.append(self.maps[-1] if self.maps else {"x": [0.0], "y": [0.0]})
                continue
            self.maps.append(fit(s[ok], h[ok]))
        self.n_posts = int(len(scores))
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """(n, k) probabilities, non-increasing along each row; 0 where the score is NaN."""
        if not self.maps:
            raise ModelError("calibrator is not fitted")
        scores = np.asarray(scores, np.float64)
        pred = isotonic_predict if self.method == "isotonic" else platt_predict
        out = np.empty_like(scores)
        for r in range(scores.shape[1]):
            m = self.maps[min(r, len(self.maps) - 1)]
            out[:, r] = pred(m, scores[:, r])  # type: ignore[arg-type]
        out = np.where(np.isfinite(scores), out, 0.0)
        return np.minimum.accumulate(np.clip(out, 0.0, 1.0), axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "per_rank": self.per_rank, "maps": self.maps, "n_posts": self.n_posts,
                "z": self.z}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Calibrator:
        try:
            # a record without "z" was fitted on block means
            return cls(doc["method"], bool(doc["per_rank"]), list(doc["maps"]), int(doc.get("n_posts", 0)),
                       float(doc.get("z", 0.0)))
        except (KeyError, TypeError) as e:
            raise ModelError(f"bad calibration record in model.json ({e}); retrain or re-calibrate the model") from None


# --------------------------------------------------------------------------- using it


def keep_at(probabilities: np.ndarray, target: float) -> np.ndarray:
    """(n, k) bool: the tags whose probability meets the precision target."""
    if not 0.0 < target <= 1.0:
        raise ModelError(f"precision target must be in (0, 1], got {target}")
    return np.asarray(probabilities) >= target


MISS_TOLERANCE = 0.03  # how far below its target a calibrated model's reached precision may fall


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits / n ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - half) / (1 + z * z / n)), float((centre + half) / (1 + z * z / n))


def precision_coverage(probabilities: np.ndarray, hits: np.ndarray,
                       targets: tuple[float, ...] = TARGETS) -> dict[str, dict[str, Any]]:
    """Per target P: precision reached (right tags / tags written) with its 95% interval,
    tags written (in all and per post), the share of posts that get at least one tag, and
    whether the target was kept: "yes" (reached >= P - MISS_TOLERANCE), "within noise"
    (below that, but the binomial interval of the tags written still reaches P: too few tags
    to tell), "no" (below P - MISS_TOLERANCE and the whole interval below P: a real miss), or
    "nothing written" (no tag met the target; precision NaN)."""
    out = {}
    hits = np.asarray(hits, bool)
    n = max(len(hits), 1)
    for t in targets:
        keep = keep_at(probabilities, t)
        written, right = int(keep.sum()), int(hits[keep].sum())
        prec = right / written if written else float("nan")
        lo, hi = wilson(right, written)
        kept = ("nothing written" if not written else "yes" if prec >= t - MISS_TOLERANCE
                else "within noise" if hi >= t else "no")
        out[f"{t:g}"] = {"precision": prec, "ci95": [lo, hi], "tags_written": written, "tags_per_post": written / n,
                         "posts_with_tags": float(keep.any(1).sum() / n), "target_kept": kept}
    return out


def calibration_error(probabilities: np.ndarray, hits: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean probability - hit rate| over equal-width bins, weighted."""
    p, h = np.asarray(probabilities).reshape(-1), np.asarray(hits, np.float64).reshape(-1)
    b = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, p, bins) - np.bincount(b, h, bins))
    return float(gap.sum() / max(n.sum(), 1))
