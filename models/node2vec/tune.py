"""Choosing p and q as the node2vec paper does: a grid search, scored without or with labels.

Grover & Leskovec (2016, section 4.3) pick p, q from {0.25, 0.5, 1, 2, 4}^2 by the
downstream score. Here every grid point embeds the graph (walks + skip-gram, in-process)
and is scored by one of:

* link prediction (no labels): a random `holdout` share of the edges is removed, never
  an edge of a random spanning forest, so every connected component stays connected;
  the vectors of the rest score held-out edges against as many sampled non-edges
  (cosine, AUC);
* node classification (labels): the paper's protocol (`classify.node_classification`):
  Macro-F1 of one-vs-rest logistic regression on held-out labelled nodes, averaged over
  random splits.

The search costs about `budget` full embeddings, in two rounds (successive halving):
every grid point trains on fewer walks per node, then the `finalists` best are trained
again on the full walk count and scored again (label scoring: on twice the splits), and
the best of those wins. Last, the winner is trained on every walk for each further number
of skip-gram epochs in `epochs_grid` and scored again, and the best of those wins: the paper
trains one epoch, but how many a graph needs depends on the graph (a second epoch raises
BlogCatalog's Macro-F1 and lowers a planted partition's 10-NN community rate:
benchmarks/results/node2vec.md). A short run ranks the grid roughly as a full one does, but
not closely enough to pick between its best few, and too short a run (too few walks per
node for the graph) ranks it at random: at the default budget, 12, the 25-point grid
trains on 3 of 10 walks per node, 2 finalists on all 10 and the winner for a second epoch.
Graphs over `max_nodes` nodes are tuned on a breadth-first sample of that many nodes (the
induced subgraph, grown from random seed nodes — labelled ones when scoring by labels — so
neighbourhoods stay whole).

    result = tune(graph, TuneSettings(...), sg=SkipGramConfig(...), y=None)
    result.p, result.q, result.epochs, result.record()   # the choice; every run's score, as JSON
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.errors import ModelError
from models.node2vec.classify import node_classification
from models.node2vec.graph import Graph
from models.node2vec.quality import link_prediction_auc
from models.node2vec.skipgram import SkipGramConfig, train_skipgram
from models.node2vec.walks import random_walks

DEFAULT_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class TuneSettings:
    """How the grid search runs (see the module docstring)."""

    p_grid: Sequence[float] = DEFAULT_GRID
    q_grid: Sequence[float] = DEFAULT_GRID
    walk_length: int = 80
    walks_per_node: int = 10      # of the full run; grid points use fewer (budget)
    budget: float = 12.0          # the search costs about this many full embeddings
    max_nodes: int = 100_000      # larger graphs are tuned on a sample of this many nodes
    holdout: float = 0.1          # link scoring: share of edges held out
    train_frac: float = 0.5       # label scoring: share of labelled nodes trained on per split
    splits: int = 2               # label scoring: random splits averaged (finalists: twice as many)
    finalists: int = 2            # best grid points trained again on the full walk count
    epochs_grid: Sequence[int] = (1, 2)  # skip-gram epochs: the grid at the first, the winner at each other
    seed: int = 0
    threads: int = 0              # walk threads (0: all cores)

    def check(self) -> None:
        for name in ("p_grid", "q_grid"):
            grid = list(getattr(self, name))
            bad = [v for v in grid if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
            if not grid or bad:
                raise ModelError(f"{name.replace('_', '-')} must be a non-empty list of finite numbers > 0, "
                                 f"got {grid} (e.g. 0.25,0.5,1,2,4)")
            if len(set(grid)) != len(grid):
                raise ModelError(f"{name.replace('_', '-')} lists a value twice: {grid}")
        epochs = list(self.epochs_grid)
        if not epochs or any(not isinstance(e, (int, np.integer)) or e < 1 for e in epochs) \
                or len(set(epochs)) != len(epochs):
            raise ModelError(f"tune-epochs must be distinct whole numbers >= 1, got {epochs} (e.g. 1,2)")
        if not 0 < self.holdout < 1:
            raise ModelError(f"tune holdout must be in (0, 1), got {self.holdout}")
        if self.budget <= 0 or self.max_nodes < 2 or self.splits < 1 or self.finalists < 0:
            raise ModelError(f"tune budget must be > 0, max_nodes >= 2, splits >= 1 and finalists >= 0, got "
                             f"{self.budget}, {self.max_nodes}, {self.splits}, {self.finalists}")


@dataclass
class TuneResult:
    """The choice and every grid point's score (record() is the JSON the job stores)."""

    p: float
    q: float
    scoring: str
    epochs: int
    points: list[dict[str, Any]]
    sample: dict[str, Any]
    walks_per_node: int
    finalists: list[dict[str, Any]] = field(default_factory=list)
    epoch_runs: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"scoring": self.scoring, "chosen": {"p": self.p, "q": self.q, "epochs": self.epochs},
                "p_grid": list(self.settings.get("p_grid", [])), "q_grid": list(self.settings.get("q_grid", [])),
                "points": self.points, "walks_per_node": self.walks_per_node, "finalists": self.finalists,
                "epoch_runs": self.epoch_runs, "sample": self.sample,
                "settings": self.settings, "seconds": round(self.seconds, 3)}


# --------------------------------------------------------------------------- graphs


def edge_list(graph: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, weight) of each edge once, dense ids: arcs with u < v (undirected) or every arc (directed)."""
    rows = np.repeat(np.arange(graph.n_nodes, dtype=np.int64), graph.degree())
    cols = graph.indices.astype(np.int64)
    keep = np.ones(rows.size, bool) if graph.directed else rows < cols
    return rows[keep], cols[keep], graph.weights[keep]


def rebuild(graph: Graph, u: np.ndarray, v: np.ndarray, w: np.ndarray, nodes: np.ndarray) -> Graph:
    """A graph like `graph` (direction, weights) on edges (u, v, w) over dense ids `nodes` (sorted)."""
    from models.node2vec.graph import build_graph

    ids = graph.node_ids
    return build_graph(ids[u], ids[v], w if graph.weighted else None, directed=graph.directed, nodes=ids[nodes])


def subgraph(graph: Graph, nodes: np.ndarray) -> Graph:
    """The induced subgraph on dense ids `nodes`, keeping original ids, direction and weights."""
    nodes = np.sort(np.asarray(nodes, np.int64))
    inside = np.zeros(graph.n_nodes, bool)
    inside[nodes] = True
    u, v, w = edge_list(graph)
    keep = inside[u] & inside[v]
    return rebuild(graph, u[keep], v[keep], w[keep], nodes)


def bfs_sample(graph: Graph, max_nodes: int, seed: int, seeds_from: np.ndarray | None = None) -> np.ndarray:
    """Sorted dense ids of up to `max_nodes` nodes, breadth first from random seed nodes.

    Seeds are drawn from `seeds_from` (dense ids) when given, else from all nodes with arcs;
    a new seed starts whenever a component is used up.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    if graph.n_nodes <= max_nodes:
        return np.arange(graph.n_nodes)
    rng = np.random.default_rng([seed, 0x425FE5])
    pool = np.flatnonzero(graph.degree() > 0) if seeds_from is None else np.asarray(seeds_from, np.int64)
    pool = rng.permutation(pool)
    mat = csr_matrix((np.ones(graph.n_edges, np.int8), graph.indices, graph.indptr),
                     shape=(graph.n_nodes, graph.n_nodes))
    taken = np.zeros(graph.n_nodes, bool)
    count = 0
    for s in pool:
        if taken[s]:
            continue
        order = breadth_first_order(mat, int(s), directed=graph.directed, return_predecessors=False)
        order = order[~taken[order]][:max_nodes - count]
        taken[order] = True
        count += order.size
        if count >= max_nodes:
            break
    return np.flatnonzero(taken)


def holdout_split(graph: Graph, frac: float, seed: int) -> tuple[Graph, np.ndarray, np.ndarray]:
    """(graph without the held-out edges, held u, held v): a random `frac` of the edges,
    never one of a random spanning forest (direction ignored), so no component falls apart."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    u, v, w = edge_list(graph)
    n = graph.n_nodes
    rng = np.random.default_rng([seed, 0x401D])
    a, b = np.minimum(u, v), np.maximum(u, v)
    rand = rng.random(u.size) + 1e-3                 # random weights: a random spanning forest
    forest = minimum_spanning_tree(coo_matrix((rand, (a, b)), shape=(n, n)).tocsr()).tocoo()
    fkey = np.minimum(forest.row, forest.col).astype(np.int64) * n + np.maximum(forest.row, forest.col)
    free = np.flatnonzero(~np.isin(a * n + b, fkey))
    held = np.zeros(u.size, bool)
    held[rng.choice(free, min(int(round(frac * u.size)), free.size), replace=False)] = True
    kept = rebuild(graph, u[~held], v[~held], w[~held], np.arange(n))
    return kept, u[held], v[held]


# --------------------------------------------------------------------------- scoring


Scorer = Callable[[np.ndarray], dict[str, float]]


def link_scorer(graph: Graph, frac: float, seed: int) -> tuple[Graph, Scorer]:
    """(graph to embed, scorer): held-out edges against as many non-edges of the full graph."""
    from models.node2vec.quality import sample_non_edges

    kept, hu, hv = holdout_split(graph, frac, seed)
    if hu.size == 0:
        raise ModelError("link-prediction tuning needs edges outside a spanning forest to hold out; "
                         "the graph is a forest: tune with --labels instead")
    nu, nv = sample_non_edges(graph, int(hu.size), seed + 1)

    def score(vecs: np.ndarray) -> dict[str, float]:
        auc = link_prediction_auc(vecs, hu, hv, nu, nv)
        return {"score": auc, "auc": auc}

    return kept, score


def label_scorer(y: np.ndarray, train_frac: float, splits: int, seed: int) -> Scorer:
    """Scorer by the paper's node classification (Macro-F1, the score; Micro-F1 beside it)."""

    def score(vecs: np.ndarray) -> dict[str, float]:
        s = node_classification(vecs, y, train_frac=train_frac, splits=splits, seed=seed)
        return {"score": s["macro_f1"], "macro_f1": s["macro_f1"], "micro_f1": s["micro_f1"]}

    return score


# --------------------------------------------------------------------------- search


def tune_walks(settings: TuneSettings, n_full: int, n_sample: int) -> int:
    """Walks per node at each grid point of the first round, so that it, the finalists' full
    runs and the winner's runs at more epochs cost about `budget` full embeddings of
    min(epochs_grid) epochs (at least 1, at most the full run's)."""
    points = len(settings.p_grid) * len(settings.q_grid)
    base = min(settings.epochs_grid)
    full_runs = min(settings.finalists, points) + sum(e / base for e in settings.epochs_grid if e != base)
    left = settings.budget - full_runs * n_sample / max(n_full, 1)
    share = left * n_full * settings.walks_per_node / (points * max(n_sample, 1))
    return int(min(settings.walks_per_node, max(1, math.floor(share))))


@dataclass(frozen=True)
class TunePlan:
    """The runs `tune` makes, known before it makes them (its progress can be sized from it)."""

    points: int                  # grid points of the first round
    walks_per_node: int          # walks per node of each first-round point (`tune_walks`)
    full_walks: int              # walks per node of every later run (settings.walks_per_node)
    finalists: int               # best grid points trained again on every walk
    winner_rerun: bool           # the winner trained again on every walk (no finalist run gave it one)
    base_epochs: int             # epochs of the grid and of the finalists: min(epochs_grid)
    more_epochs: tuple[int, ...]  # the winner is trained on every walk at each of these

    def walk_epochs(self) -> int:
        """Walks per tuned node trained on over the whole search, once per epoch."""
        base_runs = self.points * self.walks_per_node + (self.finalists + self.winner_rerun) * self.full_walks
        return self.base_epochs * base_runs + sum(self.more_epochs) * self.full_walks


def tune_plan(settings: TuneSettings, n_full: int, n_sample: int) -> TunePlan:
    """What `tune` runs on a graph of n_full nodes tuned on n_sample of them."""
    points = len(settings.p_grid) * len(settings.q_grid)
    first = tune_walks(settings, n_full, n_sample)
    short = first < settings.walks_per_node       # the first round leaves walks out: full runs follow
    finalists = min(settings.finalists, points) if short else 0
    base = min(settings.epochs_grid)
    more = tuple(sorted(set(settings.epochs_grid) - {base}))
    return TunePlan(points, first, settings.walks_per_node, finalists, bool(more) and short and not finalists,
                    base, more)


def _embed_and_score(g: Graph, settings: TuneSettings, sg: SkipGramConfig, walks_per_node: int, p: float,
                     q: float, score: Scorer) -> dict[str, Any]:
    t = time.perf_counter()
    walks = random_walks(g, settings.walk_length, walks_per_node, p, q, seed=settings.seed, threads=settings.threads)
    vecs = train_skipgram([walks], g.n_nodes, sg)
    return {"p": p, "q": q, "epochs": sg.epochs, **{k: round(v, 6) for k, v in score(vecs).items()},
            "seconds": round(time.perf_counter() - t, 3)}


def tune(graph: Graph, settings: TuneSettings, sg: SkipGramConfig, y: np.ndarray | None = None,
         on_point: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Grid search over settings.p_grid x settings.q_grid, then epochs; y: (n_nodes, L) bool
    labels or None. `sg.epochs` is not used: runs train min(settings.epochs_grid) epochs.

    The finalist with the best full-run score wins (the best first-round point when the first
    round already trains on every walk); ties go to the point listed first (p-major order).
    The winner's full run at each further value of epochs_grid then competes with it (ties
    go to fewer epochs).
    """
    settings.check()
    t0 = time.perf_counter()
    labelled = None if y is None else np.flatnonzero(y.any(axis=1))
    keep = bfs_sample(graph, settings.max_nodes, settings.seed, seeds_from=labelled)
    sample = {"nodes": int(keep.size), "of": graph.n_nodes, "how": "all nodes" if keep.size == graph.n_nodes
              else f"breadth-first sample from random {'labelled ' if y is not None else ''}seed nodes"}
    g = graph if keep.size == graph.n_nodes else subgraph(graph, keep)
    if y is None:
        g, score = link_scorer(g, settings.holdout, settings.seed)
        final_score = score
        scoring = "link prediction AUC (cosine) of held-out edges vs non-edges"
    else:
        yy = y if keep.size == graph.n_nodes else y[keep]
        if yy.any(axis=1).sum() < 4:
            raise ModelError("too few labelled nodes in the tuning sample; raise max_nodes")
        score = label_scorer(yy, settings.train_frac, settings.splits, settings.seed)
        final_score = label_scorer(yy, settings.train_frac, 2 * settings.splits, settings.seed)
        scoring = "Macro-F1, one-vs-rest logistic regression on held-out labelled users"
    plan = tune_plan(settings, graph.n_nodes, g.n_nodes)
    walks_per_node = plan.walks_per_node
    sg_t = replace(sg, seed=settings.seed, epochs=plan.base_epochs)
    points = []
    for p in settings.p_grid:
        for q in settings.q_grid:
            points.append(_embed_and_score(g, settings, sg_t, walks_per_node, float(p), float(q), score))
            if on_point is not None:
                on_point(points[-1])
    ranked = sorted(range(len(points)), key=lambda i: (-points[i]["score"], i))
    finalists = []
    for i in sorted(ranked[:plan.finalists]):
        finalists.append(_embed_and_score(g, settings, sg_t, settings.walks_per_node, points[i]["p"],
                                          points[i]["q"], final_score))
        if on_point is not None:
            on_point({**finalists[-1], "finalist": True})
    pool = finalists or points
    best = max(range(len(pool)), key=lambda i: (pool[i]["score"], -i))
    winner, epoch_runs = pool[best], []
    judge = final_score if finalists else score     # the winner's own score is by this one
    if plan.winner_rerun:                           # no full run of it yet
        winner = _embed_and_score(g, settings, sg_t, settings.walks_per_node, winner["p"], winner["q"], final_score)
        judge = final_score
        epoch_runs.append(winner)
        if on_point is not None:
            on_point({**winner, "finalist": True})
    for e in plan.more_epochs:
        epoch_runs.append(_embed_and_score(g, settings, replace(sg_t, epochs=e), settings.walks_per_node,
                                           winner["p"], winner["q"], judge))
        if on_point is not None:
            on_point({**epoch_runs[-1], "finalist": True})
    chosen = max([winner, *epoch_runs], key=lambda r: (r["score"], -r["epochs"]))
    s = {"p_grid": [float(v) for v in settings.p_grid], "q_grid": [float(v) for v in settings.q_grid],
         "budget": settings.budget, "max_nodes": settings.max_nodes, "seed": settings.seed,
         "finalists": settings.finalists, "epochs_grid": [int(e) for e in settings.epochs_grid]}
    s.update({"holdout": settings.holdout} if y is None else {"train_frac": settings.train_frac,
                                                             "splits": settings.splits})
    return TuneResult(p=chosen["p"], q=chosen["q"], epochs=int(chosen["epochs"]), scoring=scoring, points=points,
                      sample=sample, walks_per_node=walks_per_node, finalists=finalists, epoch_runs=epoch_runs,
                      settings=s, seconds=time.perf_counter() - t0)
