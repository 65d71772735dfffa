"""Scoring one shard of posts: the body of `jobs.score`'s Ray tasks, and their submission.

Per batch of the shard's posts: the model's features, either shipped with the task by the
driver (`--features ship`: `jobs._score_ship`; the task runs on any node) or read from the
store in the task (`--features store`: `FeatureReader`, opened once in the task's process; the
task runs on the store's node), `post_vectors @ tag_matrix.T`, the top k
(`models.scoring.topk`), those k scores recomputed batch-invariantly (`rescore`, so a post's
bytes do not depend on its batch) and the fallback flags of each post.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from jobs._score_ship import ShippedFeatures, ship
from jobs.errors import JobError
from jobs.features import FeatureReader
from models.csr import take_rows
from models.recsys.data import IdIndex
from models.views import FEATURES

KEYED_BY = {f: v.keyed_by for f, v in FEATURES.items()}   # feature -> "user" | "item"

# Fallback flags (bit or) of a scored post: which of the model's inputs it lacked.
FLAG_NO_IC, FLAG_NO_OD, FLAG_NO_USER_VECTOR, FLAG_UNSEEN_USER, FLAG_UNSEEN_ITEM = 1, 2, 4, 8, 16
FLAG_NAMES = {FLAG_NO_IC: "no_ic", FLAG_NO_OD: "no_od", FLAG_NO_USER_VECTOR: "no_user_vector",
              FLAG_UNSEEN_USER: "unseen_user", FLAG_UNSEEN_ITEM: "unseen_item"}
FEATURE_FLAG = {"ic": FLAG_NO_IC, "od": FLAG_NO_OD, "sn": FLAG_NO_USER_VECTOR}


@dataclasses.dataclass
class ScoreContext:
    """What every task needs; put in the object store once."""

    model: Any
    tag_matrix: np.ndarray  # (T, D) float32
    user_index: IdIndex  # user id -> row of the model's user factors (-1: unseen)
    item_index: IdIndex
    features: FeatureReader  # the model's views in the store (opened once per task's process)
    uses_item: bool
    k: int
    kernel: str
    batch_size: int


def score_posts(ctx: ScoreContext, user_ids: np.ndarray, item_ids: np.ndarray,
                indptr: np.ndarray | None, indices: np.ndarray | None,
                features: Any = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Top-k of n posts: {tags (n,k) int32, scores (n,k) float32, flags (n,) uint8}, and timings.

    features: where batches get their features (`.read(user_ids, item_ids)`): the shard's
    `ShippedFeatures`, or by default the store (`ctx.features`).
    """
    from models.scoring import rescore, topk

    features = features if features is not None else ctx.features
    n, k = len(user_ids), ctx.k
    out: dict[str, np.ndarray] = {"tags": np.empty((n, k), np.int32), "scores": np.empty((n, k), np.float32),
                                  "flags": np.zeros(n, np.uint8)}
    t_read = t_compute = 0.0
    for s in range(0, n, ctx.batch_size):
        e = min(s + ctx.batch_size, n)
        t0 = time.perf_counter()
        batch, _ = features.read(user_ids[s:e], item_ids[s:e])
        t1 = time.perf_counter()
        batch["user_index"] = ctx.user_index(user_ids[s:e])
        batch["item_index"] = ctx.item_index(item_ids[s:e])
        pv = np.asarray(ctx.model.post_vectors(batch), dtype=np.float32)  # (b, D)
        ip = ix = None
        if indptr is not None and indices is not None:
            ip, ix = indptr[s:e + 1] - indptr[s], indices[indptr[s]:indptr[e]]
        # rescore: the same post gives the same bytes whatever batch it was in (resume = rerun)
        res = rescore(pv, ctx.tag_matrix, topk(pv, ctx.tag_matrix, k, ip, ix, kernel=ctx.kernel or None))
        out["tags"][s:e], out["scores"][s:e] = res.tags, res.scores
        out["flags"][s:e] = _flags(batch, ctx)
        t_read += t1 - t0
        t_compute += time.perf_counter() - t1
    return out, {"read_s": t_read, "compute_s": t_compute}


def _flags(batch: dict[str, np.ndarray], ctx: ScoreContext) -> np.ndarray:
    flags = np.zeros(len(batch["user_index"]), np.uint8)
    for f in ctx.features.views:
        flags |= np.where(batch[f"has_{f}"], 0, FEATURE_FLAG[f]).astype(np.uint8)
    flags |= np.where(batch["user_index"] < 0, FLAG_UNSEEN_USER, 0).astype(np.uint8)
    if ctx.uses_item:
        flags |= np.where(batch["item_index"] < 0, FLAG_UNSEEN_ITEM, 0).astype(np.uint8)
    return flags


def score_shard(ctx: ScoreContext, shard: int, post_ids: np.ndarray, user_ids: np.ndarray,
                item_ids: np.ndarray, indptr: np.ndarray | None, indices: np.ndarray | None,
                shipped: ShippedFeatures | None = None) -> dict[str, Any]:
    """Ray task body: one shard's posts scored, from the shipped features or the store (read-only
    in this worker); the result names the Ray node that scored it."""
    from jobs._ray import node_id
    from models import host_memory

    # Every batch allocates and frees the same large buffers (reads, float32 features, score
    # blocks); keep them in the heap rather than have glibc map and zero-fill them afresh.
    host_memory.reuse_heap()
    t0 = time.perf_counter()
    res, times = score_posts(ctx, user_ids, item_ids, indptr, indices, shipped)
    return {"shard": shard, "post_id": post_ids, **res, **times, "task_s": time.perf_counter() - t0,
            "node": node_id()}


def resolve_features(nodes: list[dict[str, Any]], requested: str = "auto", private: bool = True) -> str:
    """The feature mode for the Ray cluster `nodes` (`ray.nodes()`). "auto": "store" on a
    private one-node Ray this job started (shipping would only add the driver's reads to the
    cores the tasks use; measured in benchmarks/results/score.md), else "ship": on a cluster the
    tasks can then run off the store's node, and a driver submitted with the store resource as
    its entrypoint resource holds all of it. JobError for "store" when no live node holds the
    resource (the tasks could never be placed)."""
    from jobs._ray import STORE_RESOURCE

    alive = [n for n in nodes if n.get("Alive")]
    holders = [n for n in alive if (n.get("Resources") or {}).get(STORE_RESOURCE, 0) > 0]
    if requested == "store" and not holders:
        raise JobError(f"--features store: no node of the Ray cluster has the '{STORE_RESOURCE}' resource, so "
                       f"tasks reading the store could not be placed; start the store's node with "
                       f"--resources '{{\"{STORE_RESOURCE}\": 1}}' or use --features ship")
    if requested != "auto":
        return requested
    return "store" if private and len(alive) == 1 and holders else "ship"


class ShardTasks:
    """Scores shards as Ray tasks, at most `max_in_flight` at once (ray.wait backpressure);
    each result goes to `on_result(shard, result)` in this process, the single writer.

    features "ship": this process (on the store's node) reads each shard's feature rows and
    sends them with its task, which then runs wherever Ray has room; the features of at most
    `max_in_flight` shards are in the object store at once. "store": the tasks read the store
    themselves and are placed on its node (the `store` resource). "auto": `resolve_features`
    once Ray runs.

    Ray starts (and the context goes to the object store) with the first shard, so a run with
    nothing to score starts no Ray.
    """

    def __init__(self, ctx: ScoreContext, ray_address: str, num_cpus: int, task_cpus: float, task_gpus: float,
                 max_in_flight: int, on_result: Callable[[Any, dict[str, Any]], Any], features: str = "auto") -> None:
        self.ctx, self.ray_address, self.num_cpus = ctx, ray_address, num_cpus
        self.task_cpus, self.task_gpus = task_cpus, task_gpus
        self.max_in_flight, self.on_result = max_in_flight, on_result
        self.features = features
        self.pending: dict[Any, Any] = {}
        self._remote: tuple[Any, Any] | None = None  # (task, ctx ref)
        self.nodes: Counter[str] = Counter()  # posts scored per Ray node
        self.ship_s = 0.0                     # this process reading and sending features
        self.shipped_bytes = 0

    def submit(self, sh: Any, posts: dict[str, np.ndarray], exclude_own_tags: bool) -> None:
        """Score the `todo` posts of shard `sh` (their own tags excluded when asked)."""
        import ray

        if self._remote is None:
            from jobs._ray import STORE_RESOURCE, init_ray, resolve_address

            init_ray(self.ray_address, self.num_cpus)
            private = resolve_address(self.ray_address) == "local"
            self.features = resolve_features(ray.nodes(), self.features, private)
            # "store": a sliver of the resource only the store's node has pins the tasks there
            opts: dict[str, Any] = {"num_cpus": self.task_cpus, "num_gpus": self.task_gpus}
            if self.features == "store":
                opts["resources"] = {STORE_RESOURCE: 0.001}
            task = ray.remote(**opts)(score_shard)
            self._remote = (task, ray.put(self.ctx))
        rows = np.flatnonzero(sh.todo) + sh.start
        ip = ix = None
        if exclude_own_tags:
            ip, ix = take_rows(posts["indptr"], posts["indices"], rows)
        self.drain(self.max_in_flight - 1)           # before reading: bounded features in flight
        task, ctx_ref = self._remote
        users, items = posts["user_id"][rows], posts["item_id"][rows]
        shipped = None
        if self.features == "ship":
            t0 = time.perf_counter()
            rows_ = ship(self.ctx.features.store_readers(), KEYED_BY, users, items)
            self.shipped_bytes += rows_.nbytes
            shipped = ray.put(rows_)
            self.ship_s += time.perf_counter() - t0
        ref = task.remote(ctx_ref, sh.index, posts["post_id"][rows], users, items, ip, ix, shipped)
        self.pending[ref] = sh

    def drain(self, limit: int) -> None:
        """Wait for results until at most `limit` tasks are in flight."""
        import ray

        while len(self.pending) > limit:
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in ready:
                res = ray.get(ref)
                self.nodes[res["node"]] += len(res["post_id"])
                self.on_result(self.pending.pop(ref), res)
