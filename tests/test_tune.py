"""Grid search that widens at its edges, and early stopping: pure logic with known answers."""

from __future__ import annotations

import math

import pytest

from jobs._tune import search
from models.errors import ModelError
from models.recsys.early_stopping import EarlyStopping


def _peak(lr0: float, reg0: float):
    """A smooth bump in log space with its top at (lr0, reg0); counts its calls."""
    calls = []

    def score(lr: float, reg: float) -> float:
        calls.append((lr, reg))
        return 0.5 - 0.01 * (math.log10(lr / lr0) ** 2 + math.log10(reg / reg0) ** 2)
    return score, calls


def test_an_inner_optimum_needs_no_widening():
    score, calls = _peak(0.05, 1e-4)
    r = search(score, [0.01, 0.05, 0.25], [1e-5, 1e-4, 1e-3])
    assert (r.lr, r.reg) == (0.05, 1e-4) and r.widened == [] and r.edge == "" and len(calls) == 9


def test_an_optimum_beyond_the_corner_is_found_by_widening():
    score, calls = _peak(0.3, 6e-3)
    r = search(score, [0.01, 0.05, 0.1], [1e-5, 1e-4, 1e-3])
    # steps: the grids' own ratios, sqrt(10) for lr and 10 for reg
    assert r.lr == pytest.approx(0.1 * 10 ** 0.5) and r.reg == pytest.approx(1e-2), r
    assert any("best lr 0.1 is the grid's largest" in w for w in r.widened)
    assert any("best reg 0.001 is the grid's largest" in w for w in r.widened)
    assert r.edge == "" and len(calls) == len(set(calls)) == len(r.points)


def test_widening_stops_after_max_rounds_and_says_so():
    score, _ = _peak(100.0, 1e-4)
    r = search(score, [0.01, 0.1], [1e-4], max_widen=2)
    assert r.lr == pytest.approx(10.0) and "lr 10 is the grid's largest" in r.edge and len(r.widened) == 2


def test_diverged_points_are_never_best_and_stop_upward_widening():
    score, _ = _peak(10.0, 1e-4)
    r = search(lambda lr, reg: float("nan") if lr > 0.2 else score(lr, reg), [0.01, 0.05, 0.1], [1e-4])
    assert r.lr == pytest.approx(0.2) or r.lr == 0.1
    assert r.edge == "" and len(r.widened) == 1


def test_every_point_diverging_is_an_error_naming_the_grid():
    with pytest.raises(ModelError, match=r"every grid point diverged \(lr \[0.1, 0.5\]"):
        search(lambda lr, reg: float("nan"), [0.5, 0.1], [1e-4])
    with pytest.raises(ModelError, match="grids must be non-empty"):
        search(lambda lr, reg: 0.0, [], [1e-4])


def test_early_stopping_keeps_the_best_epoch_and_waits_patience():
    es = EarlyStopping(patience=3, max_epochs=100)
    values = [0.1, 0.3, 0.35, 0.34, 0.36, 0.33, 0.32, 0.31, 0.5]
    best = [es.update(e, v) for e, v in enumerate(values[:8], start=1)]
    assert best == [True, True, True, False, True, False, False, False]
    assert es.should_stop() and es.best_epoch == 5 and es.best == 0.36
    assert "for 3 epochs; best epoch 5" in es.reason


def test_early_stopping_cap_nan_and_resume():
    es = EarlyStopping(patience=5, max_epochs=3)
    for e, v in enumerate([0.1, float("nan"), 0.2], start=1):
        es.update(e, v)
    assert es.should_stop() and es.best_epoch == 3 and "max_epochs 3" in es.reason
    fresh = EarlyStopping(patience=2)
    fresh.update(1, float("nan"))
    back = EarlyStopping.from_json(fresh.to_json())
    assert back.best == -math.inf and not back.should_stop()
    back.update(2, float("nan"))
    assert back.should_stop()  # a model that only diverges runs out of patience
    with pytest.raises(ModelError, match="patience must be >= 1"):
        EarlyStopping(patience=0)


def test_patience_grows_with_the_best_epoch():
    es = EarlyStopping(patience=5, patience_frac=1.0, max_epochs=1000)
    es.update(40, 0.5)                        # best at epoch 40: wait 40 epochs, not 5
    for e in range(41, 80):
        es.update(e, 0.4)
        assert not es.should_stop()
    es.update(80, 0.4)
    assert es.should_stop() and "for 40 epochs; best epoch 40" in es.reason
    early = EarlyStopping(patience=5, patience_frac=1.0)
    early.update(2, 0.5)
    for e in range(3, 8):
        early.update(e, 0.1)
    assert early.should_stop()                # best at epoch 2: the fixed patience of 5 rules
    with pytest.raises(ModelError, match="patience_frac must be >= 0"):
        EarlyStopping(patience_frac=-1)
