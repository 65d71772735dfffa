"""Scoring one shard of posts: the body of `jobs.score`'s Ray tasks.

Per batch of the shard's posts: the model's features from the store (`FeatureReader`,
opened once in the task's process), `post_vectors @ tag_matrix.T`, the top k
(`models.scoring.topk`), those k scores recomputed batch-invariantly (`rescore`, so a post's
bytes do not depend on its batch) and the fallback flags of each post.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jobs.features import FeatureReader
from models.csr import take_rows
from models.recsys.data import IdIndex

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
                indptr: np.ndarray | None, indices: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Top-k of n posts: {tags (n,k) int32, scores (n,k) float32, flags (n,) uint8}, and timings."""
    from models.scoring import rescore, topk

    n, k = len(user_ids), ctx.k
    out: dict[str, np.ndarray] = {"tags": np.empty((n, k), np.int32), "scores": np.empty((n, k), np.float32),
                                  "flags": np.zeros(n, np.uint8)}
    t_read = t_compute = 0.0
    for s in range(0, n, ctx.batch_size):
        e = min(s + ctx.batch_size, n)
        t0 = time.perf_counter()
        batch, _ = ctx.features.read(user_ids[s:e], item_ids[s:e])
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
                 item_ids: np.ndarray, indptr: np.ndarray | None, indices: np.ndarray | None) -> dict[str, Any]:
    """Ray task body: one shard's posts scored (store read-only in this worker)."""
    from models import host_memory

    # Every batch allocates and frees the same large buffers (reads, float32 features, score
    # blocks); keep them in the heap rather than have glibc map and zero-fill them afresh.
    host_memory.reuse_heap()
    t0 = time.perf_counter()
    res, times = score_posts(ctx, user_ids, item_ids, indptr, indices)
    return {"shard": shard, "post_id": post_ids, **res, **times, "task_s": time.perf_counter() - t0}


class ShardTasks:
    """Scores shards as Ray tasks, at most `max_in_flight` at once (ray.wait backpressure);
    each result goes to `on_result(shard, result)` in this process, the single writer.

    Ray starts (and the context goes to the object store) with the first shard, so a run with
    nothing to score starts no Ray.
    """

    def __init__(self, ctx: ScoreContext, ray_address: str, num_cpus: int, task_cpus: float, task_gpus: float,
                 max_in_flight: int, on_result: Callable[[Any, dict[str, Any]], Any]) -> None:
        self.ctx, self.ray_address, self.num_cpus = ctx, ray_address, num_cpus
        self.task_cpus, self.task_gpus = task_cpus, task_gpus
        self.max_in_flight, self.on_result = max_in_flight, on_result
        self.pending: dict[Any, Any] = {}
        self._remote: tuple[Any, Any] | None = None  # (task, ctx ref)

    def submit(self, sh: Any, posts: dict[str, np.ndarray], exclude_own_tags: bool) -> None:
        """Score the `todo` posts of shard `sh` (their own tags excluded when asked)."""
        import ray

        if self._remote is None:
            from jobs._ray import init_ray

            init_ray(self.ray_address, self.num_cpus)
            self._remote = (ray.remote(num_cpus=self.task_cpus, num_gpus=self.task_gpus)(score_shard), ray.put(self.ctx))
        rows = np.flatnonzero(sh.todo) + sh.start
        ip = ix = None
        if exclude_own_tags:
            ip, ix = take_rows(posts["indptr"], posts["indices"], rows)
        self.drain(self.max_in_flight - 1)
        task, ctx_ref = self._remote
        ref = task.remote(ctx_ref, sh.index, posts["post_id"][rows], posts["user_id"][rows],
                          posts["item_id"][rows], ip, ix)
        self.pending[ref] = sh

    def drain(self, limit: int) -> None:
        """Wait for results until at most `limit` tasks are in flight."""
        import ray

        while len(self.pending) > limit:
            ready, _ = ray.wait(list(self.pending), num_returns=1)
            for ref in ready:
                self.on_result(self.pending.pop(ref), ray.get(ref))
