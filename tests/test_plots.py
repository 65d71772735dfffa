"""The evaluation's plots: one colour per family, one style per variant, every model visible."""

import math

import pytest

from jobs._plots import family, highlighted, plot_f1_at_k, plot_precision_coverage, style


def test_families_get_colours_and_variants_get_line_styles():
    assert [family(n) for n in ("PITF-IC-OD+SN", "FM-OD", "visual-multilabel", "user-item-popular", "x")] == \
        ["PITF", "FM", "multi-label", "baseline", "other"]
    assert style("PITF")["color"] == style("PITF-IC")["color"] != style("FM")["color"]
    assert len({str(style(f"PITF{v}")["linestyle"]) for v in ("", "-IC", "-OD", "-IC-OD")}) == 4
    assert style("PITF+SN")["color"] != style("PITF")["color"] and style("PITF+SN")["marker"] == "^"
    assert len({str(style(b)["linestyle"]) for b in ("most-popular", "user-popular", "item-popular",
                                                     "user-item-popular", "friends-popular")}) == 5


def test_best_model_and_strongest_baseline_are_highlighted():
    res = {"PITF": {"f1@5": 0.47}, "FM": {"f1@5": 0.48}, "user-popular": {"f1@5": 0.3},
           "user-item-popular": {"f1@5": 0.44}}
    assert highlighted(res) == {"FM", "user-item-popular"}


def test_precision_coverage_draws_single_points_and_names_silent_models(tmp_path):
    nan = math.nan
    curves = {"PITF": {"target": [0.2, 0.5, 0.9], "precision": [0.45, 0.6, nan], "tags_per_post": [3.0, 1.0, 0.0]},
              "most-popular": {"target": [0.2, 0.5, 0.9], "precision": [0.25, nan, nan],
                               "tags_per_post": [0.05, 0.0, 0.0]},
              "friends-popular": {"target": [0.2, 0.5, 0.9], "precision": [nan, nan, nan],
                                  "tags_per_post": [0.0, 0.0, 0.0]}}
    f1 = {"PITF": 0.47, "most-popular": 0.14, "friends-popular": 0.15}
    drawn = plot_precision_coverage(curves, tmp_path / "pc.png", f1=f1)
    assert drawn == {"PITF": "curve", "friends-popular": "nothing written", "most-popular": "point"}
    assert (tmp_path / "pc.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("n_models", [1, 20])
def test_f1_at_k_writes_a_png(tmp_path, n_models):
    names = ["PITF", "PITF-IC", "PITF-OD", "PITF-IC-OD", "FM", "FM-IC", "FM-OD", "FM-IC-OD"]
    names += [n + "+SN" for n in names] + ["user-popular", "most-popular", "item-popular", "user-item-popular"]
    res = {n: {f"f1@{k}": 0.1 + 0.01 * i + 0.001 * k for k in range(1, 11)} for i, n in enumerate(names[:n_models])}
    plot_f1_at_k(res, tmp_path / "f1.png")
    assert (tmp_path / "f1.png").stat().st_size > 1000
