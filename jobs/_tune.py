"""Hyperparameter search over lr × reg by validation F1@5, widening the grid at its edges.

`search(score, lr_grid, reg_grid)` evaluates every grid point with `score(lr, reg) ->
validation F1@5` (NaN: the point diverged). When the best point sits on the grid's edge
in lr or in reg (the smallest or the largest value tried, and the grid has more than one),
the best is probably outside: the grid is extended one step beyond that edge (the step is
the grid's own ratio between neighbours, ×10 for a single value), the new points are
evaluated, and so on for at most `max_widen` rounds. Every widening is logged and
returned, so the summary says where the grid grew and why. Diverged points never count
as best, so a grid whose larger learning rates diverge stops widening upwards there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from models.errors import ModelError

log = logging.getLogger("jobs")

MAX_WIDEN = 3


@dataclass
class SearchResult:
    """Best point, every point tried and the widenings made."""

    lr: float
    reg: float
    f1: float
    points: list[dict] = field(default_factory=list)   # {"lr", "reg", "val_f1@5"}
    widened: list[str] = field(default_factory=list)   # one line per widening
    edge: str = ""                                     # non-empty: still on an edge after max_widen rounds


def _step(grid: list[float]) -> float:
    """The ratio between neighbouring values (geometric mean), 10 for one value."""
    g = sorted(grid)
    if len(g) < 2 or g[0] <= 0:
        return 10.0
    return (g[-1] / g[0]) ** (1 / (len(g) - 1))


def _edges(best: float, grid: list[float], name: str) -> list[tuple[str, float]]:
    """(why, new value) for each edge `best` sits on."""
    g = sorted(grid)
    if len(g) < 2 or g[0] <= 0:
        return []
    r = _step(g)
    out = []
    if best == g[0]:
        out.append((f"best {name} {best:g} is the grid's smallest", g[0] / r))
    if best == g[-1]:
        out.append((f"best {name} {best:g} is the grid's largest", g[-1] * r))
    return out


def search(score: Callable[[float, float], float], lr_grid: list[float], reg_grid: list[float],
           max_widen: int = MAX_WIDEN) -> SearchResult:
    """Grid search with widening (module docstring); ModelError when every point diverged."""
    lrs, regs = sorted(set(lr_grid)), sorted(set(reg_grid))
    if not lrs or not regs or min(lrs) <= 0 or min(regs) < 0:
        raise ModelError(f"tune: grids must be non-empty, lr > 0 and reg >= 0; got lr {lr_grid}, reg {reg_grid}")
    seen: dict[tuple[float, float], float] = {}
    res = SearchResult(math.nan, math.nan, math.nan)

    def run(points: list[tuple[float, float]]) -> None:
        for lr, reg in points:
            if (lr, reg) not in seen:
                seen[(lr, reg)] = score(lr, reg)
                res.points.append({"lr": lr, "reg": reg, "val_f1@5": seen[(lr, reg)]})

    run([(a, b) for a in lrs for b in regs])
    for round_ in range(max_widen + 1):
        ok = {k: v for k, v in seen.items() if v == v}
        if not ok:
            raise ModelError(f"every grid point diverged (lr {lrs}, reg {regs}); lower the lr grid")
        (lr, reg), f1 = max(ok.items(), key=lambda kv: kv[1])
        res.lr, res.reg, res.f1 = lr, reg, f1
        grow = _edges(lr, lrs, "lr") + _edges(reg, [r for r in regs if r > 0], "reg")
        if not grow:
            res.edge = ""
            return res
        res.edge = "; ".join(why for why, _ in grow)
        if round_ == max_widen:
            break
        for why, new in grow:
            if "lr" in why:
                lrs.append(new)
            else:
                regs.append(new)
            msg = f"{why}: widening the grid to {new:g}"
            log.info("tune: %s", msg)
            res.widened.append(msg)
        lrs, regs = sorted(lrs), sorted(regs)
        run([(a, b) for a in lrs for b in regs])
    log.warning("tune: after %d widenings the best point is still on the grid's edge (%s)", max_widen, res.edge)
    return res
