"""Batch top-k tag scoring of every post, for search indexing: `python -m jobs.score`.

    resolve model → check its feature views → select posts (all / untagged / list)
    → skip shards already in post/topk@<model id> → the driver reads each shard's features
    from the store and ships them → Ray tasks over post-id-range shards, on any node (bounded
    in flight, ray.wait backpressure): post_vectors → top-k
    → driver, the single writer: Parquet part file, then the store view

The store sits on one node's disk and the driver, its single writer, runs there; it is also
its single reader here: per shard it reads the distinct user and item vectors the posts need
(float16, as stored) and sends them through the object store with the task (`--features
ship`, `jobs._score_ship`), so tasks score wherever Ray has CPUs or GPUs. With `--features
store` each task opens the store read-only itself (`jobs.features.FeatureReader`) and runs on
the store's node. Each task scores all tags
with the saved model (`post_vectors(batch) @ tag_matrix().T`), keeps the top k with
`models.scoring` and recomputes those k scores batch-invariantly (`rescore`), so a post's
bytes do not depend on which batch or run scored it.

Outputs:
- view ``post/topk@<model id>`` (record view: tags int32[k], scores float32[k], flags uint8[1]),
  model id = model name + the first 12 hex digits of the weights' sha256; tag -1 with score 0
  pads a post with fewer than k eligible tags (only possible with --exclude-own-tags).
- ``<topk-out>/<MODEL>/part-<first post id>.parquet`` (default ``<out>/topk``; a folder or a
  URI such as s3://bucket/prefix): post_id int64, tags list<string>, scores list<float>,
  probabilities list<float> (the calibrated chance each tag is right, from the model's
  calibration in model.json; null without one), flags uint8, fallback bool; one file per
  shard, sorted by post_id. `--min-precision P` keeps in them only the tags whose probability
  is at least P (the store view keeps the full top k).

Fallbacks (flags, bit or): the model's documented fallback (a zero vector for a missing
feature, a zero factor for a user/item not seen in training) is what `post_vectors` does;
the job only records which applied: FLAG_NO_IC, FLAG_NO_OD (image failed or not extracted),
FLAG_NO_USER_VECTOR (no node2vec vector), FLAG_UNSEEN_USER, FLAG_UNSEEN_ITEM.

Resumable: shards are fixed ranges of all the archive's post ids, sorted (not only the
selected ones), so every run sees the same shards. Selected posts already in the view are
skipped; a shard with nothing left to score and its part file present is skipped whole. A
part file holds every post of its shard that is in the view (rows committed by earlier runs
are read back from it) and is written atomically before the store commit, so a killed run
re-run ends with the same view and the same part files, byte for byte (`rescore`).
Part files of another model id, k or --shard-size are removed and rebuilt from the view.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pyarrow as pa

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs._progress import Progress
from jobs._score_plan import plan
from jobs._score_task import FLAG_NAMES, ShardTasks
from jobs._score_write import Shard, ShardWriter, shards

log = logging.getLogger("jobs.score")


@dataclasses.dataclass
class ScoreConfig(ArchiveArgs, RayArgs):
    """Which model, which posts, how many tags, how the work is cut."""

    model: str = arg("PITF-IC-OD", "saved model: a folder with model.json + weights.safetensors, "
                                   "or a model name under <out>/models")
    k: int = arg(10, "tags kept per post")
    which: str = arg("all", "posts to score: all, untagged (posts without tags), list (--post-ids-file)",
                     choices=["all", "untagged", "list"])
    post_ids_file: str = arg("", "for --which list: post ids, one per line (.txt) or a post_id column (.parquet)")
    exclude_own_tags: bool = arg(False, "never recommend a tag the post already has")
    shard_size: int = arg(50_000, "posts per Ray task (a contiguous post-id range)")
    max_in_flight: int = arg(4, "Ray tasks submitted but not yet written (backpressure)")
    batch_size: int = arg(8192, "posts per feature gather + scoring batch inside a task")
    kernel: str = arg("", "top-k kernel (models.scoring): torch, numpy, torch-cuda, triton; empty: "
                          "torch-cuda where there is a GPU, else torch")
    task_cpus: float = arg(1.0, "CPUs per Ray task (torch threads follow it)")
    task_gpus: float = arg(0.0, "GPUs per Ray task (0: CPU scoring)")
    features: str = arg("auto", "how tasks get features: ship (the driver, on the store's node, reads each "
                                "shard's vectors and sends them with the task: tasks run on any node), store "
                                "(tasks read the store themselves: they run on the store's node only) or auto "
                                "(store on the private one-node Ray a job starts itself, where shipping only "
                                "adds the driver's reads to the same cores; ship on a joined cluster)",
                        choices=["auto", "ship", "store"])
    topk_out: str = arg("", "where the top-k Parquet parts go (<topk-out>/<MODEL>/part-*.parquet): a folder or "
                            "a URI (s3://bucket/prefix); empty: <out>/topk")
    min_precision: float = arg(0.0, "backfill at a precision target: the Parquet parts keep, per post, only the "
                                    "tags whose calibrated probability (model.json's calibration, fitted on the "
                                    "validation split by jobs.train) meets it, possibly none; 0: every top-k tag")


def run(cfg: ScoreConfig) -> dict[str, Any]:
    """Score the selected posts; returns the summary (counts, fallbacks, posts/s, time split)."""
    t_start = time.perf_counter()
    p = plan(cfg)  # model, views, posts: every user error before any work
    posts = p.posts
    n_sel = int(posts["selected"].sum())
    log.info("scoring %d of %d posts (%s) with %s into %s and %s", n_sel, len(posts["post_id"]), cfg.which,
             p.model_id, p.view, p.out_dir)
    wr = ShardWriter(posts, cfg.k, p.store.reader(p.view), p.out_dir, pa.array(p.vocab, pa.string()), p.calibrator,
                     cfg.min_precision)
    progress = Progress("score", total=n_sel, unit="posts")

    def written(sh: Shard, res: dict[str, Any]) -> None:
        wr.write(sh, res)
        progress.update(int(sh.todo.sum()))

    with p.store.writer(p.view) as w:
        wr.w = w
        tasks = ShardTasks(p.ctx, cfg.ray_address, cfg.num_cpus, cfg.task_cpus, cfg.task_gpus, cfg.max_in_flight,
                           on_result=written, features=cfg.features)
        for sh in shards(posts, cfg.shard_size, w, wr):
            progress.update(int((sh.done & posts["selected"][sh.start:sh.stop]).sum()))  # skipped: done before
            if sh.todo.any():
                tasks.submit(sh, posts, cfg.exclude_own_tags)
            else:
                wr.finish_unchanged(sh)
        tasks.drain(0)
    progress.close()
    summary = _summary(cfg, wr, tasks, p.model_name, p.model_id, p.view, p.out_dir, n_sel, p.read_posts_s,
                       time.perf_counter() - t_start)
    if tasks.nodes:   # Ray ran: which node scored what; the driver read features and wrote
        from jobs._ray import node_id, placement

        summary["placement"] = placement(score_tasks=tasks.nodes, feature_reads_and_writes={
            node_id(): summary["scored_posts"]})
    return summary


def _summary(cfg: ScoreConfig, wr: ShardWriter, tasks: ShardTasks, name: str, mid: str, view: str, out_dir: str,
             n_sel: int, t_posts: float, wall: float) -> dict[str, Any]:
    st, fc = wr.stats, wr.flag_counts
    scored = st["scored_posts"]
    summary = {
        "model": name, "model_id": mid, "view": view, "parquet": out_dir, "k": cfg.k, "features": tasks.features,
        "which": cfg.which, "selected_posts": n_sel, "scored_posts": scored,
        "skipped_posts": st["skipped_posts"], "shards": st["shards"], "skipped_shards": st["skipped_shards"],
        "fallback_posts": int(fc[1:].sum()),
        "min_precision": cfg.min_precision,
        "tags_per_post_written": round(st["tags_written"] / max(st["posts_written"], 1), 4),
        "fallbacks": {nm: int(sum(fc[f] for f in range(256) if f & bit)) for bit, nm in FLAG_NAMES.items()},
        "posts_per_s": round(scored / wall, 1) if wall > 0 else 0.0,
        # worker-seconds for reads/compute (summed over tasks); driver seconds for the rest.
        # With --features ship the workers' reads are gathers from the shipped rows, and the
        # store reads are the driver's (feature_reads_driver).
        "time_s": {"total": round(wall, 3), "read_posts": round(t_posts, 3),
                   "resume_check": round(st["resume_check_s"], 3),
                   "feature_reads_driver": round(tasks.ship_s, 3),
                   "store_reads_worker": round(st["read_s"], 3), "compute_worker": round(st["compute_s"], 3),
                   "writes": round(st["write_s"], 3)},
        "shipped_mb": round(tasks.shipped_bytes / 2**20, 3),
    }
    log.info("score: %d posts scored (%d skipped) in %.1fs, %.0f posts/s; %d with fallbacks; time %s",
             scored, st["skipped_posts"], wall, summary["posts_per_s"], summary["fallback_posts"],
             summary["time_s"])
    return summary


def main() -> None:
    main_for("score", ScoreConfig, run, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
