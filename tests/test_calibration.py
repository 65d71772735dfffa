"""Calibration of top-k scores: the maps against references, reached precision on fresh data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import isotonic_regression

from models.calibration import (
    LOWER_BOUND_Z,
    MISS_TOLERANCE,
    PER_RANK_Z,
    Calibrator,
    calibration_error,
    isotonic_fit,
    isotonic_predict,
    keep_at,
    platt_fit,
    precision_coverage,
)
from models.errors import ModelError


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_fit_equals_scipys_at_the_data(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=300), 1)  # ties in x
    y = (rng.random(300) < 1 / (1 + np.exp(-2 * x))).astype(float)
    fit = isotonic_fit(x, y)
    # scipy pools samples in x order; equal x are one sample of their mean (weight = count)
    ux, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    ref = isotonic_regression(np.bincount(inv, y) / cnt, weights=cnt.astype(float)).x
    np.testing.assert_allclose(isotonic_predict(fit, ux), ref, atol=1e-12)
    assert np.all(np.diff(isotonic_predict(fit, np.linspace(-5, 5, 200))) >= 0)


def test_platt_recovers_a_planted_logistic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40_000) * 2
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(1.5 * x - 0.7)))).astype(float)
    p = platt_fit(x, y)
    assert p["a"] == pytest.approx(1.5, abs=0.07) and p["b"] == pytest.approx(-0.7, abs=0.07)


def _lists(rng, n, k=10, rank_effect=0.0):
    """Top-k lists whose score is the logit of the hit probability (optionally shifted by rank)."""
    logit = np.sort(rng.normal(0, 2, (n, k)), axis=1)[:, ::-1] + rng.normal(0, 1, (n, 1))
    p = 1 / (1 + np.exp(-(logit - rank_effect * np.arange(k))))
    return logit, rng.random((n, k)) < p


@pytest.mark.parametrize("method,per_rank", [("isotonic", False), ("isotonic", True), ("platt", False),
                                             ("platt", True)])
def test_reached_precision_meets_the_target_on_fresh_posts(method, per_rank):
    rng = np.random.default_rng(1)
    s_val, h_val = _lists(rng, 3000)
    s_test, h_test = _lists(rng, 3000)
    cal = Calibrator(method, per_rank).fit(s_val, h_val)
    probs = cal.predict(s_test)
    assert np.all(np.diff(probs, axis=1) <= 0)  # kept tags are a prefix of each list
    rep = precision_coverage(probs, h_test)
    for target, r in rep.items():
        assert r["precision"] >= float(target) - 0.03 and r["target_kept"] == "yes", (target, r)
        assert r["tags_per_post"] > 0 and r["ci95"][0] <= r["precision"] <= r["ci95"][1]
    assert rep["0.5"]["tags_per_post"] > rep["0.9"]["tags_per_post"]
    assert calibration_error(probs, h_test) < 0.03


def test_per_rank_calibration_sees_what_the_score_hides():
    """Hit probability falls with rank beyond what the score says: only per-rank maps catch it."""
    rng = np.random.default_rng(2)
    s_val, h_val = _lists(rng, 4000, rank_effect=0.4)
    s_test, h_test = _lists(rng, 4000, rank_effect=0.4)
    gap = {}
    for pr in (False, True):
        # block means (z = 0): the mean gap measures calibration, which a lower bound biases down
        probs = Calibrator("isotonic", pr, z=0.0).fit(s_val, h_val).predict(s_test)
        gap[pr] = np.abs(probs.mean(0) - h_test.mean(0)).max()  # the worst rank's mean gap
    assert gap[True] < 0.03 and gap[False] > gap[True] + 0.03, gap


def test_per_rank_maps_cover_lists_longer_than_the_fitted_ones():
    """`jobs.score --k 20` with maps fitted on top-10 validation lists: ranks past the last
    fitted one use its map, and the running minimum keeps each list non-increasing."""
    rng = np.random.default_rng(8)
    s, h = _lists(rng, 2000, k=3, rank_effect=0.4)
    cal = Calibrator().fit(s, h)
    assert len(cal.maps) == 3
    longer = np.concatenate([s, s[:, -1:] - 0.5, s[:, -1:] - 1.0], axis=1)
    p = cal.predict(longer)
    assert p.shape == (2000, 5) and np.all(np.diff(p, axis=1) <= 0)
    np.testing.assert_array_equal(p[:, :3], cal.predict(s))
    assert np.all(p[:, 3] == np.minimum(p[:, 2], isotonic_predict(cal.maps[2], longer[:, 3])))


def test_json_roundtrip_and_bad_records():
    rng = np.random.default_rng(3)
    s, h = _lists(rng, 200)
    cal = Calibrator("platt", True).fit(s, h)
    back = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_array_equal(back.predict(s), cal.predict(s))
    assert back.n_posts == 200
    with pytest.raises(ModelError, match="bad calibration record"):
        Calibrator.from_json({"method": "isotonic"})
    with pytest.raises(ModelError, match="unknown calibration method 'beta'"):
        Calibrator("beta")
    with pytest.raises(ModelError, match="not fitted"):
        Calibrator().predict(s)


def test_padding_and_bad_targets():
    s = np.array([[2.0, 1.0, np.nan], [0.5, np.nan, np.nan]])
    h = np.array([[1, 0, 0], [1, 0, 0]], bool)
    probs = Calibrator("isotonic", False).fit(s, h).predict(s)
    assert probs[0, 2] == 0 and probs[1, 1] == 0
    with pytest.raises(ModelError, match="precision target must be in"):
        keep_at(probs, 1.5)
    with pytest.raises(ModelError, match="same"):
        Calibrator().fit(s, h[:, :2])


def test_target_verdicts_tell_a_miss_from_noise():
    probs = np.array([[0.95, 0.6], [0.95, 0.6], [0.95, 0.6], [0.95, 0.1]])
    hits = np.array([[1, 1], [1, 0], [0, 0], [1, 0]], bool)
    rep = precision_coverage(probs, hits, targets=(0.5, 0.9, 0.99))
    assert rep["0.9"]["tags_written"] == 4 and rep["0.9"]["precision"] == 0.75
    assert rep["0.9"]["target_kept"] == "within noise"   # 3 of 4: too few tags to call it a miss
    assert rep["0.99"]["target_kept"] == "nothing written"
    many = precision_coverage(np.full((1000, 1), 0.9), np.arange(1000)[:, None] % 2 == 0, targets=(0.9,))
    assert many["0.9"]["target_kept"] == "no"            # 0.5 on 1000 tags is a miss


def test_light_blocks_merge_so_a_few_lucky_top_scores_do_not_claim_certainty():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 2000), 5 + rng.random(5)])      # five extreme scores ...
    y = np.concatenate([(rng.random(2000) < 1 / (1 + np.exp(-x[:2000]))).astype(float), np.ones(5)])  # ... all hits
    assert isotonic_predict(isotonic_fit(x, y), [5.5])[0] == 1.0           # plain PAV: certainty from 5 samples
    fit = isotonic_fit(x, y, min_weight=50)
    assert isotonic_predict(fit, [5.5])[0] < 0.99
    # every block now holds >= 50 samples and the fit is still non-decreasing
    xs = np.sort(x)
    blocks = np.unique(isotonic_predict(fit, xs))
    assert all((isotonic_predict(fit, xs) == b).sum() >= 50 for b in blocks)
    assert np.all(np.diff(isotonic_predict(fit, np.linspace(-4, 6, 300))) >= 0)
    one = isotonic_fit(x[:30], y[:30], min_weight=50)                      # fewer samples than a block
    assert np.allclose(isotonic_predict(one, x[:30]), y[:30].mean())


def _planted(seed: int, n: int = 8000, top: float = 0.47, slope: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """n (score, true hit rate) pairs: the rate rises with the score (logistic, `slope`) to `top`
    at score 3 and stays there: no tag is right as often as 0.5."""
    s = np.random.default_rng(seed).normal(size=n)
    logit = np.log(top / (1 - top)) + slope * (np.minimum(s, 3) - 3)
    return s, 1 / (1 + np.exp(-logit))


def _true_precision_at(z: float, seed: int, target: float = 0.5, **planted) -> float:
    """The planted hit rate of the test tags a map fitted on sampled validation hits keeps at
    `target` (NaN: it keeps none)."""
    s_val, p_val = _planted(2 * seed, **planted)
    hits = np.random.default_rng(2 * seed + 1).random(len(s_val)) < p_val
    cal = Calibrator("isotonic", False, z=z).fit(s_val[:, None], hits[:, None])
    s_test, p_test = _planted(10_000 + seed, **planted)
    keep = keep_at(cal.predict(s_test[:, None]), target)[:, 0]
    return float(p_test[keep].mean()) if keep.any() else float("nan")


def test_lower_bound_map_keeps_the_target_where_block_means_overclaim():
    """Planted miscalibration: every tag's true hit rate is below 0.5. A map on isotonic block
    means reads 0.5 off its luckiest top block on many validation draws and writes tags that are
    right less than 0.47 of the time; the lower-bound map (the default) almost never does."""
    reached = {z: [_true_precision_at(z, seed) for seed in range(30)] for z in (0.0, LOWER_BOUND_Z)}
    misses = {z: sum(p == p and p < 0.5 - MISS_TOLERANCE for p in v) for z, v in reached.items()}
    assert misses[0.0] >= 6, misses
    assert misses[LOWER_BOUND_Z] <= misses[0.0] // 4, misses


def test_per_rank_maps_take_a_stricter_bound_so_no_rank_overclaims():
    """Planted as above, ten ranks of 1,000 pairs each, no tag right half the time: each rank's
    map has its own lucky top block, so maps per rank at the one-map bound still write tags at
    P = 0.5 on some validation draws; at `PER_RANK_Z` (the per-rank default) none does."""
    def reached(z: float, seed: int, n: int = 1000, k: int = 10) -> float:
        val = [_planted(100 * seed + r, n) for r in range(k)]
        test = [_planted(10_000 + 100 * seed + r, n) for r in range(k)]
        s_val, p_val = (np.stack(c, 1) for c in zip(*val))
        s_test, p_test = (np.stack(c, 1) for c in zip(*test))
        hits = np.random.default_rng(7 + seed).random(p_val.shape) < p_val
        keep = keep_at(Calibrator("isotonic", True, z=z).fit(s_val, hits).predict(s_test), 0.5)
        return float(p_test[keep].mean()) if keep.any() else float("nan")

    misses = {z: sum(p == p and p < 0.5 - MISS_TOLERANCE for p in (reached(z, seed) for seed in range(30)))
              for z in (0.0, LOWER_BOUND_Z, PER_RANK_Z)}
    assert misses[0.0] >= 4 and misses[LOWER_BOUND_Z] >= 1, misses
    assert misses[PER_RANK_Z] == 0, misses
    assert Calibrator().per_rank and Calibrator().z == PER_RANK_Z and Calibrator(per_rank=False).z == LOWER_BOUND_Z


def test_lower_bound_map_still_writes_the_tags_the_evidence_supports():
    """Planted: the top scores are right up to 0.9 of the time; the lower-bound map writes them at
    P = 0.5 and 0.7, every draw reaching the target, and nearly all that block means write (the
    tags above the cut are thousands of pairs: their bound is close to their rate)."""
    for seed in range(5):
        for target in (0.5, 0.7):
            got = {z: _true_precision_at(z, seed, target, top=0.9, slope=1.0) for z in (0.0, LOWER_BOUND_Z)}
            assert got[LOWER_BOUND_Z] >= target, (seed, target, got)
    s, p = _planted(0, top=0.9, slope=1.0)
    hits = np.random.default_rng(1).random(len(s)) < p
    written = {z: keep_at(Calibrator("isotonic", False, z=z).fit(s[:, None], hits[:, None]).predict(s[:, None]),
                          0.5).sum() for z in (0.0, LOWER_BOUND_Z)}
    assert written[LOWER_BOUND_Z] >= 0.9 * written[0.0], written


def test_tail_bound_lowers_only_where_the_tags_above_are_few():
    """The tail bound caps a block at the lower bound of the hit rate of it and all blocks above:
    the bulk keeps its means, the thin top is lowered; the block bound lowers every block."""
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.random(20_000), 2 + rng.random(60)])    # a bulk, then 60 top scores
    y = np.concatenate([rng.random(20_000) < 0.3, rng.random(60) < 0.8]).astype(float)
    means, tail, block = (isotonic_predict(isotonic_fit(x, y, min_weight=50, z=z, bound=b), [0.5, 2.5])
                          for z, b in ((0.0, "tail"), (1.0, "tail"), (1.0, "block")))
    assert tail[0] == pytest.approx(means[0]) and block[0] < means[0] - 0.003  # bulk: 20,000 pairs
    assert tail[1] < means[1] - 0.04 and tail[1] == pytest.approx(block[1])   # top: 60 pairs
    with pytest.raises(ModelError, match="unknown calibration bound 'x'"):
        isotonic_fit(x, y, z=1.0, bound="x")


def test_lower_bound_z_is_saved_and_checked():
    rng = np.random.default_rng(5)
    s, h = _lists(rng, 300)
    cal = Calibrator(z=LOWER_BOUND_Z).fit(s, h)
    back = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    assert back.z == LOWER_BOUND_Z
    np.testing.assert_array_equal(back.predict(s), cal.predict(s))
    legacy = {k: v for k, v in cal.to_json().items() if k != "z"}  # a record fitted on block means
    assert Calibrator.from_json(legacy).z == 0.0
    assert np.all(Calibrator(z=0.0).fit(s, h).predict(s) >= cal.predict(s))  # the bound only lowers
    with pytest.raises(ModelError, match="z must be >= 0"):
        Calibrator(z=-1.0)


def test_verdict_flags_a_miss_beyond_the_binomial_interval_and_not_noise():
    def verdict(right: int, written: int, target: float = 0.5) -> str:
        probs = np.full((written, 1), target)
        hits = (np.arange(written) < right)[:, None]
        return precision_coverage(probs, hits, targets=(target,))[f"{target:g}"]["target_kept"]

    # 175 of 405 (0.432): a 7-point shortfall whose whole 95% interval lies below 0.5
    assert verdict(175, 405) == "no"
    assert verdict(8, 20) == "within noise"      # 0.40 on 20 tags: the interval reaches 0.5
    assert verdict(970, 2000) == "yes"           # 0.485: within MISS_TOLERANCE of the target
    assert verdict(930, 2000) == "no"            # 0.465 on 2000 tags: beyond both
