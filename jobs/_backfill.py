"""The evaluation's backfill report: precision reached on test at a precision target.

For each model and baseline, the calibrated probabilities of its top-10 test tags (the
model's saved calibration, else one fitted here on the validation split) are cut at each
target P: the tags kept are what `jobs.score --min-precision P` would write. Reported per
target: the precision reached (right tags / tags written) with its 95% interval and verdict
(`models.calibration.precision_coverage`), and the tags written per post (coverage); a
table for evaluation.md and a precision/coverage curve per model for the plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.calibration import TARGETS, Calibrator, precision_coverage
from models.metrics import hits_matrix

SWEEP = tuple(np.round(np.arange(0.2, 0.96, 0.05), 2))  # targets the curves pass through


@dataclass
class Lists:
    """One recommender's top-k tags and scores on test, and on validation to calibrate with."""

    test_tags: np.ndarray                # (n, k) tag indices, -1 pads
    test_scores: np.ndarray              # (n, k)
    val_tags: np.ndarray | None = None   # (m, k): needed when no saved calibration is given
    val_scores: np.ndarray | None = None
    saved: dict[str, Any] | None = None  # the model.json "calibration" record, when there is one


def _scores(tags: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores with NaN where the list is padded (-1), which calibration ignores."""
    return np.where(tags >= 0, scores, np.nan)


def calibrator(lists: Lists, val_indptr: np.ndarray, val_indices: np.ndarray) -> tuple[Calibrator, str] | None:
    """(the calibrator, where it came from), or None when neither a saved one nor validation posts exist."""
    if lists.saved:
        return Calibrator.from_json(lists.saved), "model.json (fitted on validation by jobs.train)"
    if lists.val_tags is None or lists.val_scores is None or not len(lists.val_tags):
        return None
    hits = hits_matrix(lists.val_tags, val_indptr, val_indices)
    return Calibrator().fit(_scores(lists.val_tags, lists.val_scores), hits), "fitted on the validation split here"


def report(lists: dict[str, Lists], test_indptr: np.ndarray, test_indices: np.ndarray, val_indptr: np.ndarray,
           val_indices: np.ndarray, targets: tuple[float, ...] = TARGETS) -> tuple[dict, dict]:
    """(per name: {"source", "method", "targets": precision_coverage}, per name: the sweep's curve)."""
    out, curves = {}, {}
    for name, li in lists.items():
        got = calibrator(li, val_indptr, val_indices)
        if got is None:
            continue
        cal, source = got
        probs = cal.predict(_scores(li.test_tags, li.test_scores))
        hits = hits_matrix(li.test_tags, test_indptr, test_indices)
        out[name] = {"source": source, "method": cal.method + (" per rank" if cal.per_rank else ""),
                     "targets": precision_coverage(probs, hits, targets)}
        sweep = precision_coverage(probs, hits, tuple(sorted(set(SWEEP) | set(targets))))
        curves[name] = {"target": [float(t) for t in sweep],
                        "precision": [v["precision"] for v in sweep.values()],
                        "tags_per_post": [v["tags_per_post"] for v in sweep.values()]}
    return out, curves


def markdown(rep: dict[str, dict], order: list[str], targets: tuple[float, ...] = TARGETS) -> str:
    """| model | P = 0.5: precision reached (tags/post, verdict) | ... |, rows in `order`; below
    P - MISS_TOLERANCE the cell shows the 95% interval of the tags written, and **MISSED** when
    all of it lies below P."""
    head = "| model | " + " | ".join(f"P ≥ {t:g}: precision reached, tags/post" for t in targets) + " |"
    lines = [head, "|---|" + "---:|" * len(targets)]
    for name in [n for n in order if n in rep]:
        cells = []
        for t in targets:
            r = rep[name]["targets"][f"{t:g}"]
            if r["tags_written"] == 0:
                cells.append("– (0 tags)")
                continue
            mark = {"yes": "", "within noise": " (few tags)", "no": " **MISSED**"}[r["target_kept"]]
            ci = "" if r["target_kept"] == "yes" else " [{:.3f}, {:.3f}]".format(*r["ci95"])
            cells.append(f"{r['precision']:.3f}{ci}, {r['tags_per_post']:.2f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
