"""Plots of the evaluation that a person can read with twenty models on them.

One colour per model family (PITF, FM, multi-label, baselines), one line style per
content variant (plain, IC, OD, IC-OD; the baselines one each), +SN drawn in a darker
shade of its family's colour with triangle markers; the legend sits beside the axes,
ordered by F1@5; the best model and the strongest baseline are drawn heavier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FAMILY_COLOURS = {"PITF": ("#1f77b4", "#0b3d66"), "FM": ("#d62728", "#7a1516"),
                  "multi-label": ("#2ca02c", "#155215"), "baseline": ("#7f7f7f", "#3a3a3a"),
                  "other": ("#9467bd", "#4b2d66")}
CONTENT_STYLES = {"": "-", "IC": "--", "OD": ":", "IC-OD": "-."}
BASELINE_STYLES: dict[str, Any] = {"user-item-popular": "-", "user-popular": "--", "item-popular": "-.", "most-popular": ":",
                   "friends-popular": (0, (5, 1, 1, 1, 1, 1))}
MULTILABEL_STYLES = {"social-multilabel": "-", "visual-multilabel": "--"}


def family(name: str) -> str:
    """PITF, FM, multi-label, baseline or other, from a model's name."""
    if name.startswith("PITF"):
        return "PITF"
    if name.startswith("FM"):
        return "FM"
    if name.endswith("multilabel"):
        return "multi-label"
    if name.endswith("popular"):
        return "baseline"
    return "other"


def style(name: str) -> dict:
    """matplotlib line keywords of a model: colour by family, line style by variant."""
    fam = family(name)
    social = name.endswith("+SN")
    base = name[:-3] if social else name
    ls: Any
    if fam in ("PITF", "FM"):
        ls = CONTENT_STYLES.get(base[len(fam):].lstrip("-"), "-")
    elif fam == "baseline":
        ls = BASELINE_STYLES.get(name, "-")
    elif fam == "multi-label":
        ls = MULTILABEL_STYLES.get(name, "-")
    else:
        ls = "-"
    light, dark = FAMILY_COLOURS[fam]
    return {"color": dark if social else light, "linestyle": ls, "marker": "^" if social else "o"}


def highlighted(results: Mapping[str, Mapping[str, float]], key: str = "f1@5") -> set[str]:
    """The best model (not a baseline) and the strongest baseline by `key`."""
    out = set()
    for want_baseline in (False, True):
        names = [n for n in results if (family(n) == "baseline") == want_baseline]
        if names:
            out.add(max(names, key=lambda n: results[n][key]))
    return out


def _save(fig, ax, path: str | Path, title: str) -> None:
    """Grid, title, the legend beside the axes; the PNG to `path` (a local path or a URI)."""
    import io

    from featurestore import uri

    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    uri.write_bytes(path, png.getvalue())


def plot_f1_at_k(results: Mapping[str, Mapping[str, float]], path: str | Path, k_max: int = 10,
                 title: str = "F1@k on the test split") -> None:
    """F1@k for k = 1..k_max, one line per model, legend ordered by F1@5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heavy = highlighted(results)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    ks = list(range(1, k_max + 1))
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["f1@5"]):
        st = style(name)
        bold = name in heavy
        ax.plot(ks, [r[f"f1@{k}"] for k in ks], markersize=5 if bold else 3, linewidth=3.0 if bold else 1.3,
                alpha=1.0 if bold else 0.85, zorder=3 if bold else 2,
                label=f"{name}  {r['f1@5']:.3f}" + ("  ◀" if bold else ""), **st)
    ax.set_xlabel("k (tags recommended per post)")
    ax.set_ylabel("F1@k")
    ax.set_xticks(ks)
    _save(fig, ax, path, title + " (legend: F1@5; ◀ best model, strongest baseline)")
    plt.close(fig)


def plot_precision_coverage(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                            targets: Sequence[float] = (0.5, 0.7, 0.9), f1: Mapping[str, float] | None = None,
                            title: str = "Calibrated backfill on the test split") -> dict[str, str]:
    """Precision reached against tags written per post, one curve per model.

    curves: name -> {"target": [...], "precision": [...], "tags_per_post": [...]} over a sweep
    of targets; the points at `targets` are marked, and each target is a faint horizontal line.
    A model that writes tags at one target of the sweep only is drawn as a marker (a line of
    one point is invisible); models that write nothing at any target are named in the legend.
    Returns how each model was drawn: "curve", "point" or "nothing written".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    for t in targets:
        ax.axhline(t, color="#bbbbbb", linewidth=0.8, zorder=1)
        ax.text(1.0, t, f"P = {t:g} ", va="bottom", ha="right", fontsize=7, color="#777777",
                transform=ax.get_yaxis_transform())
    heavy = highlighted({n: {"f1@5": v} for n, v in f1.items()}) if f1 else set()
    order = sorted(curves, key=lambda n: -(f1 or {}).get(n, 0.0))
    drawn: dict[str, str] = {}
    for name in order:
        c = curves[name]
        st = style(name)
        bold = name in heavy
        pts = [(x, y, t) for x, y, t in zip(c["tags_per_post"], c["precision"], c["target"]) if y == y]
        if not pts:
            drawn[name] = "nothing written"
            continue
        drawn[name] = "curve" if len(pts) > 1 else "point"
        xs, ys, ts = zip(*pts)
        ax.plot(xs, ys, linewidth=3.0 if bold else 1.3, alpha=1.0 if bold else 0.85, zorder=3 if bold else 2,
                color=st["color"], linestyle=st["linestyle"], label=name + ("  ◀" if bold else ""),
                marker=st["marker"] if len(pts) == 1 else None, markersize=5)
        marks = [(x, y) for x, y, t in pts if any(abs(t - q) < 1e-9 for q in targets)]
        if marks:
            ax.plot(*zip(*marks), linestyle="none", marker=st["marker"], markersize=6 if bold else 4,
                    color=st["color"], zorder=4)
    silent = [n for n, how in drawn.items() if how == "nothing written"]
    if silent:
        lowest = min(min(curves[n]["target"], default=0.0) for n in silent)
        ax.plot([], [], linestyle="none", label=f"nothing written at P ≥ {lowest:g}:\n  " + ", ".join(silent))
    ax.set_xlabel("tags written per post (coverage)")
    ax.set_ylabel("precision reached (right tags / tags written)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    _save(fig, ax, path, title + " (markers: targets " + ", ".join(f"{t:g}" for t in targets) + ")")
    plt.close(fig)
    return drawn
