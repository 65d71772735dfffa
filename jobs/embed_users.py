"""`python -m jobs.embed_users`: node2vec user vectors into the feature store.

    read users (posts) and edges -> CSR graph -> [--tune: p, q, epochs by grid search] -> p/q walks
    (Ray tasks over shards of start nodes, CSR arrays put once in the object store) ->
    skip-gram (numba or gensim) -> view user/node2vec@1 keyed by user_id

Reproducible: every walk's random stream is keyed by (seed, walk id), and shards
are reassembled in a fixed order, so the walks are identical whatever the number
of shards, workers or machines. Vectors are bit-identical across runs with
`--sg-workers 1` (multi-threaded SGD, Hogwild in both trainers, is not deterministic).

Users with posts but no edges (and users whose only edges were self-loops) get a
ZERO vector: they have no social context to embed. A real node2vec vector is
never exactly zero, so a zero norm flags them; for the linear recommenders a zero
vector adds nothing to the score, which is the same as "no social signal". The
summary counts them (`users_without_edges`). Users that appear only in edges
(no posts) are embedded and written too (they shape their neighbours' vectors and
may post later); the summary counts them (`edge_users_without_posts`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs._embed_tune import check_tune_config, read_labels, run_tune, tune_request
from jobs._progress import Progress
from jobs._spill import spill_dir
from jobs.errors import InputError, JobError
from models.node2vec import SkipGramConfig, build_graph, has_arcs, train_skipgram
from models.node2vec.graph import Graph
from models.node2vec.skipgram import NEGATIVES, TRAINERS
from models.node2vec.tune import DEFAULT_GRID
from models.node2vec.walks import row_cumsum

log = logging.getLogger("jobs")

VIEW = "user/node2vec@1"
WRITE_BATCH = 65_536
SHARD_BYTES = 64 * 1024**2  # cap on one walk task's output (see run_walks)
WALKS_PREFIX = ".walks-"    # + "<pid>-<random>" under <out>/tmp (jobs/_spill.py)
SKIPGRAM = {"numba": "numba SGNS, sequential per-pair updates as word2vec",   # the view's producer
            "gensim": "gensim Word2Vec sg=1 negative sampling"}


@dataclass
class EmbedUsersConfig(ArchiveArgs, RayArgs):
    """Flags of `python -m jobs.embed_users` (plus the contract and Ray flags)."""

    p: float = arg(1.0, "return parameter p (> 0): weight 1/p to step back to the previous node")
    q: float = arg(1.0, "in-out parameter q (> 0): weight 1/q to move away from the previous node")
    walk_length: int = arg(80, "nodes per walk (>= 2)")
    walks_per_node: int = arg(10, "walks started from every node")
    dim: int = arg(128, "vector dimension")
    window: int = arg(10, "skip-gram context window (nodes each side)")
    epochs: int = arg(1, "skip-gram epochs over the walks (0: the default, 1)")
    negative: int = arg(5, "negative samples per positive pair")
    directed: bool = arg(False, "treat edges as directed (src follows dst); default: undirected")
    weighted: bool = arg(False, "use the edges' weight column (else every edge weighs 1)")
    dtype: str = arg("float16", "stored value dtype", choices=("float16", "float32"))
    view: str = arg(VIEW, "feature store view to write")
    shards: int = arg(0, "Ray tasks over start nodes (0: 4 per Ray CPU)")
    sg_workers: int = arg(0, "skip-gram threads (0: all cores here; 1: bit-reproducible vectors)")
    sg_trainer: str = arg("numba", "skip-gram trainer: numba (ours: word2vec's updates, several times "
                                   "gensim's rate, see benchmarks/results/node2vec.md) or gensim (PecanPy's)",
                          choices=TRAINERS)
    sg_negatives: str = arg("window", "--sg-trainer numba: noise rows drawn once per centre node for its "
                                      "window (window; fewer cache misses) or afresh for every pair "
                                      "(pair, word2vec's draws)", choices=NEGATIVES)
    corpus: str = arg("memory", "--sg-trainer gensim only: how walks reach gensim, memory (iterable) or "
                                "file (corpus_file, faster with many cores)", choices=("memory", "file"))
    tune: bool = arg(False, "choose p and q by grid search over --p-grid x --q-grid, as the node2vec paper "
                            "does (--p and --q are then ignored): scored by link prediction on held-out "
                            "edges, or with --labels by node classification")
    p_grid: list[float] = arg(list(DEFAULT_GRID), "--tune: values of p to try (comma separated)")
    q_grid: list[float] = arg(list(DEFAULT_GRID), "--tune: values of q to try (comma separated)")
    labels: str = arg("", "--tune: Parquet (a path or URI) of (user_id, label) rows, several per user allowed; scores each "
                          "grid point by Macro-F1 of one-vs-rest logistic regression on held-out users")
    label_column: str = arg("label", "--labels: name of the label column (integer or string)")
    tune_budget: float = arg(12.0, "--tune: the search costs about this many full embeddings (grid points "
                                   "train on fewer walks per node, then the finalists on all, then the "
                                   "winner at more --tune-epochs)")
    tune_max_nodes: int = arg(100_000, "--tune: larger graphs are tuned on a breadth-first sample of this "
                                       "many users")
    tune_finalists: int = arg(2, "--tune: the best grid points trained again on every walk before choosing "
                                 "(part of the budget; 0: choose from the short runs)")
    tune_epochs: list[int] = arg([1, 2], "--tune: skip-gram epochs to try (comma separated; --epochs is then "
                                         "ignored): the grid trains the fewest, the chosen p, q is trained "
                                         "again with each of the others on every walk, and the best score wins")


def check_config(cfg: EmbedUsersConfig) -> None:
    """Reject values node2vec is undefined on, before reading anything."""
    if cfg.epochs < 0:
        raise JobError(f"--epochs must be >= 0 (0: the default, 1), got {cfg.epochs}")
    for name in ("p", "q"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v > 0):
            raise JobError(f"--{name} must be a finite number > 0, got {v} (1 = unbiased walks)")
    if cfg.walk_length < 2:
        raise JobError(f"--walk-length must be >= 2 (shorter walks give skip-gram no context), "
                       f"got {cfg.walk_length}")
    for name in ("walks_per_node", "dim", "window", "negative"):
        if getattr(cfg, name) < 1:
            raise JobError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.tune or cfg.labels:
        check_tune_config(cfg)


# --------------------------------------------------------------------------- inputs


def read_users(cfg: EmbedUsersConfig) -> np.ndarray:
    """Sorted unique user ids that have posts (streamed: only the user_id column)."""
    from jobs.contract import iter_posts

    parts = [b.column(0).to_numpy() for b in iter_posts(cfg.posts_uri(), columns=("user_id",))]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def read_graph(cfg: EmbedUsersConfig, users: np.ndarray) -> tuple[Graph, dict[str, Any]]:
    """The CSR graph over users with posts plus users named by edges; InputError when it has no edges."""
    from jobs.contract import read_edges

    path = cfg.edges_uri()
    table, report = read_edges(path, users)
    if report.edges == 0:
        raise InputError(f"{path} has no edges; node2vec needs a social graph "
                         f"(supply edges, or train without the {cfg.view} view)")
    if cfg.weighted and not report.weighted:
        raise InputError(f"--weighted given but {path} has no 'weight' column; drop --weighted")
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    w = table.column("weight").to_numpy() if cfg.weighted else None
    graph = build_graph(src, dst, w, directed=cfg.directed, nodes=users)
    if graph.n_edges == 0:
        raise InputError(f"{path}: all {report.edges} edges are self-loops; node2vec needs edges between users")
    info = {"edges_in": report.edges, "self_loops_dropped": graph.stats["self_loops_dropped"],
            "duplicates_merged": graph.stats["duplicates_merged"],
            "edges_naming_users_without_posts": report.unknown_users,
            "edge_users_without_posts": int(graph.n_nodes - users.size)}
    return graph, info


# --------------------------------------------------------------------------- walks on Ray


def _walk_task(indptr, indices, weights, cumw, starts, n_nodes, cfg_walk):
    """One Ray task: (walks (walks_per_node, len(starts), walk_length) int32 from a shard of start
    nodes, the id of the Ray node that walked them)."""
    from jobs._ray import node_id
    from models.node2vec.walks import walk_shard

    # The CSR arrays arrive zero-copy (read-only views of the object store).
    return walk_shard(indptr, indices, weights, cumw, starts, n_nodes, threads=1, **cfg_walk), node_id()


def start_order(graph: Graph, seed: int) -> np.ndarray:
    """Dense ids of nodes with out-arcs in a seeded random order.

    Shuffled so skip-gram sees each rep's walks in mixed order (PecanPy shuffles too);
    nodes without out-arcs are skipped: their walk is the node alone, no context.
    """
    starts = np.flatnonzero(graph.degree() > 0)
    return np.random.default_rng([seed, 0x6E326576]).permutation(starts)


def run_walks(cfg: EmbedUsersConfig, graph: Graph, spill_dir: Path | None = None,
              nodes: Counter[str] | None = None) -> list[np.ndarray]:
    """All walks as blocks of int32 rows (walk_length,), in the same order for any shard count.

    Blocks are ordered rep-major (rep 0 of every shard, then rep 1, ...). With
    `spill_dir`, each shard is saved there as it arrives and the blocks are
    memory-mapped views, so the driver never holds all walks in RAM
    (10^7 users x 10 walks x 80 steps is 32 GB of int32). `nodes` counts the walks each Ray node made.
    """
    import ray

    from jobs._ray import init_ray

    init_ray(cfg.ray_address, cfg.num_cpus)
    starts = start_order(graph, cfg.seed)
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    # Shards small enough that one result stays under SHARD_BYTES (a task's output is held in the
    # worker, the object store and the driver at once), and at most 2 per CPU in flight: a few
    # huge shards submitted at once would hold several copies of all walks. Walks do not depend
    # on the shard count.
    walk_bytes = cfg.walks_per_node * cfg.walk_length * 4
    n_shards = cfg.shards or max(4 * cpus, -(-int(starts.size) * walk_bytes // SHARD_BYTES))
    n_shards = max(1, min(n_shards, starts.size))
    # Put the CSR arrays once; every task maps them zero-copy.
    refs = [ray.put(a) for a in (graph.indptr, graph.indices, graph.weights, row_cumsum(graph))]
    walk_kw = dict(walk_length=cfg.walk_length, walks_per_node=cfg.walks_per_node, p=cfg.p, q=cfg.q, seed=cfg.seed)
    task = ray.remote(num_cpus=1)(_walk_task)
    splits = np.array_split(starts, n_shards)
    pending: dict[Any, int] = {}
    nxt = 0
    done: list[np.ndarray] = [np.zeros((0, 0, 0), np.int32)] * n_shards
    prog = Progress("embed_users walks", total=int(starts.size) * cfg.walks_per_node, unit="walks")
    while pending or nxt < n_shards:
        while nxt < n_shards and len(pending) < 2 * cpus:  # backpressure: bounded work in flight
            pending[task.remote(*refs, splits[nxt], graph.n_nodes, walk_kw)] = nxt  # type: ignore[call-arg]
            nxt += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        arr, node = ray.get(ready[0])  # (walks_per_node, shard size, walk_length), where it ran
        if nodes is not None:
            nodes[node] += arr.shape[0] * arr.shape[1]
        if spill_dir is not None:
            path = spill_dir / f"walks-{i:05d}.npy"
            np.save(path, arr)
            arr = np.load(path, mmap_mode="r")
        done[i] = arr
        prog.update(arr.shape[0] * arr.shape[1])
    prog.close()
    return [done[i][r] for r in range(cfg.walks_per_node) for i in range(n_shards)]


# --------------------------------------------------------------------------- store


def producer(cfg: EmbedUsersConfig, graph: Graph, tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """What made the view: every parameter that changes the vectors (and, tuned, the search)."""
    skipgram = SKIPGRAM[cfg.sg_trainer]
    if cfg.sg_trainer == "numba":
        skipgram += f", noise rows drawn per {cfg.sg_negatives}"
    prod = {"model": "node2vec", "walks": "exact Grover & Leskovec p/q, numba rejection sampler",
            "skipgram": skipgram,
            "p": cfg.p, "q": cfg.q, "walk_length": cfg.walk_length, "walks_per_node": cfg.walks_per_node,
            "window": cfg.window, "epochs": cfg.epochs or 1, "negative": cfg.negative,
            "directed": cfg.directed, "weighted": cfg.weighted, "seed": cfg.seed,
            "nodes": graph.n_nodes, "arcs": graph.n_edges,
            "users_without_edges": "zero vector"}
    if tuned is not None:
        prod["tune"] = tuned
    return prod


_TUNE_OUTCOME = ("p", "q", "epochs", "tune")   # what --tune decides: not known before it runs


def write_vectors(cfg: EmbedUsersConfig, graph: Graph, vecs: np.ndarray, prod: dict[str, Any]) -> None:
    """Write every node's vector (sorted user ids, big batches) into the view."""
    from featurestore import Store

    with Store.open(str(cfg.store_path()), create=True) as store:
        store.create_view(cfg.view, dim=vecs.shape[1], dtype=cfg.dtype, producer=prod)
        with store.writer(cfg.view) as w:
            for lo in range(0, graph.n_nodes, WRITE_BATCH):
                w.put(graph.node_ids[lo:lo + WRITE_BATCH], vecs[lo:lo + WRITE_BATCH].astype(cfg.dtype))


def stored_run(cfg: EmbedUsersConfig, prod: dict[str, Any], n: int) -> tuple[dict[str, Any] | None, bool]:
    """(the view's producer when it holds this run, whether every row is written).

    Every row written: a re-run is a no-op. With --tune, "this run" is the same request
    (grid, labels, budget and every other parameter): the p, q it chose are read back, and
    a partial view from a killed run is finished with the same choice, not tuned again. A
    view made by other parameters is an error (its metadata would lie about the vectors).
    """
    from featurestore import Store

    if not cfg.store_path().exists():
        return None, False
    with Store.open(str(cfg.store_path()), create=False) as store:
        if cfg.view not in store.list_views():
            return None, False
        info = store.describe(cfg.view)
    old, new = dict(info.producer), prod
    if cfg.tune:   # compare the request, not what it decided
        old, new = ({**{k: v for k, v in d.items() if k not in _TUNE_OUTCOME},
                     "tune request": d.get("tune", {}).get("request")} for d in (old, new))
    if old != new or info.dim != cfg.dim or info.dtype != cfg.dtype:
        base = cfg.view.rsplit("@", 1)[0]
        raise JobError(f"view {cfg.view} in {cfg.store_path()} was made with other parameters "
                       f"({_diff(old, new)}); write a new version (--view {base}@<n+1>) "
                       f"or drop the old view")
    return dict(info.producer), info.count == n


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) or "dim/dtype differ"


# --------------------------------------------------------------------------- run


def skipgram_config(cfg: EmbedUsersConfig) -> SkipGramConfig:
    return SkipGramConfig(dim=cfg.dim, window=cfg.window, epochs=cfg.epochs or 1, negative=cfg.negative,
                          workers=cfg.sg_workers, seed=cfg.seed, corpus=cfg.corpus, trainer=cfg.sg_trainer,
                          negatives=cfg.sg_negatives)


def run(cfg: EmbedUsersConfig) -> dict[str, Any]:
    """Graph -> [tune p, q] -> walks -> skip-gram -> store; returns the summary."""
    check_config(cfg)
    users = read_users(cfg)
    graph, info = read_graph(cfg, users)
    y, label_report = read_labels(cfg.labels, cfg.label_column, graph) if cfg.labels else (None, {})
    request = {"request": tune_request(cfg)} if cfg.tune else None
    summary: dict[str, Any] = {"view": cfg.view, "users_with_posts": int(users.size), "nodes": graph.n_nodes,
                               "arcs": graph.n_edges, **info}
    stored, complete = stored_run(cfg, producer(cfg, graph, request), graph.n_nodes)
    if complete:
        log.info("%s already holds this run (same producer, %d rows); nothing to do", cfg.view, graph.n_nodes)
        return {**summary, "skipped": True, **({"tune": stored["tune"]} if stored and cfg.tune else {})}
    sg = skipgram_config(cfg)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its per-epoch INFO lines drown the job's
    tuned = None
    if cfg.tune and stored is not None:   # a killed run chose already: finish with its choice
        tuned = stored["tune"]
        log.info("%s: resuming with the p, q a previous run chose", cfg.view)
    elif cfg.tune:
        tuned = {**run_tune(cfg, graph, sg, y).record(), **(request or {}), **label_report}
    if tuned is not None:
        chosen = tuned["chosen"]
        cfg = dataclasses.replace(cfg, p=chosen["p"], q=chosen["q"], epochs=int(chosen.get("epochs", cfg.epochs)))
        sg = skipgram_config(cfg)   # the chosen epochs
    prod = producer(cfg, graph, tuned)
    from jobs._ray import init_ray, node_id, placement

    t0 = time.perf_counter()
    init_ray(cfg.ray_address, cfg.num_cpus)
    walk_nodes: Counter[str] = Counter()
    t_ray = time.perf_counter() - t0
    spill_root = Path(cfg.out) / "tmp"
    # Walks go to disk (int32: 4 bytes x walks x length); a killed run's are removed by the next.
    with spill_dir(spill_root, WALKS_PREFIX, "embed_users") as spill:
        t0 = time.perf_counter()
        blocks = run_walks(cfg, graph, Path(spill), walk_nodes)
        t_walk = time.perf_counter() - t0
        steps = sum(int((b >= 0).sum()) for b in blocks)
        t0 = time.perf_counter()
        n_walks = sum(len(b) for b in blocks)
        gensim_file = sg.trainer == "gensim" and sg.corpus == "file"   # reports no progress
        prog = Progress("embed_users skip-gram", total=None if gensim_file else n_walks * sg.epochs,
                        unit="walks", every_s=30.0)
        vecs = train_skipgram(blocks, graph.n_nodes, sg, on_walks=prog.update)
        prog.close()
        t_sg = time.perf_counter() - t0
        del blocks
    try:
        spill_root.rmdir()  # only when empty (another run may be spilling there)
    except OSError:
        pass
    isolated = ~has_arcs(graph)
    vecs[isolated] = 0.0  # users without edges: zero vector (see module docstring)
    write_vectors(cfg, graph, vecs, prod)
    return {**summary, "skipped": False, "users_without_edges": int(isolated.sum()),
            "ray_start_s": round(t_ray, 3), "walk_steps": steps, "walk_s": round(t_walk, 3),
            "walk_steps_per_s": round(steps / max(t_walk, 1e-9)), "skipgram_s": round(t_sg, 3),
            "skipgram_tokens_per_s": round(steps * sg.epochs / max(t_sg, 1e-9)), "written": graph.n_nodes,
            **({"p": cfg.p, "q": cfg.q, "epochs": cfg.epochs, "tune": tuned} if tuned is not None else {}),
            # walks spread over the cluster; skip-gram and the store writes run in this driver
            "placement": placement(walks=walk_nodes, skipgram_and_writes={node_id(): graph.n_nodes})}


def main() -> None:
    main_for("embed_users", EmbedUsersConfig, run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
