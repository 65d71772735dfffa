"""Writing scored shards: the driver is the single writer of the top-k view and the Parquet parts.

Per shard, the part file `<topk-out>/<MODEL>/part-<first post id>.parquet` (a local folder or
a URI prefix: `featurestore.uri`; visible only once written whole) and then the store commit. A part file holds every post of its shard that is
in the view after the commit (rows a previous run committed are read back from the view),
so it is the same bytes whatever runs made it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore import uri
from featurestore.errors import StoreError
from jobs._cli import write_json

log = logging.getLogger("jobs.score")


@dataclasses.dataclass
class Shard:
    """One contiguous range [start, stop) of the sorted archive posts."""

    index: int
    start: int
    stop: int
    done: np.ndarray  # (stop-start,) bool: already in the view
    todo: np.ndarray  # (stop-start,) bool: selected and not done: scored by this run


def record_fields(k: int) -> dict[str, tuple[str, int]]:
    return {"tags": ("int32", k), "scores": ("float32", k), "flags": ("uint8", 1)}


def to_records(tags: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> dict[str, np.ndarray]:
    """Record-view values. The store refuses non-finite floats: padding slots (tag -1) store 0."""
    return {"tags": tags, "scores": np.where(tags < 0, np.float32(0), scores).astype(np.float32),
            "flags": flags.reshape(-1, 1)}


def parquet_table(post_ids: np.ndarray, tags: np.ndarray, scores: np.ndarray, flags: np.ndarray,
                  vocab: pa.Array, calibrator: Any = None, min_precision: float = 0.0) -> pa.Table:
    """post_id, tags list<string> (padding dropped), scores list<float>, probabilities
    list<float> (the calibrated P(tag is right); null lists without a calibrator), flags,
    fallback. With min_precision > 0 only the tags whose probability meets it (a prefix of
    each list, possibly empty)."""
    valid = tags >= 0  # (n, k)
    probs = calibrator.predict(np.where(valid, scores, np.nan)) if calibrator is not None else None
    if probs is not None and min_precision > 0:
        valid &= probs >= min_precision
    offsets = np.zeros(len(tags) + 1, np.int32)
    np.cumsum(valid.sum(1), out=offsets[1:])
    names = pc.take(vocab, pa.array(tags[valid].astype(np.int32)))
    prob_col = (pa.ListArray.from_arrays(pa.array(offsets), pa.array(probs[valid], pa.float32()))
                if probs is not None else pa.nulls(len(tags), pa.list_(pa.float32())))
    return pa.table({
        "post_id": pa.array(post_ids, pa.int64()),
        "tags": pa.ListArray.from_arrays(pa.array(offsets), names),
        "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid], pa.float32())),
        "probabilities": prob_col,
        "flags": pa.array(flags, pa.uint8()),
        "fallback": pa.array(flags != 0),
    })


def write_part(path: str, table: pa.Table) -> None:
    """Atomic: a killed run leaves no half file (`uri.atomic_output`); retried as a whole."""

    def write() -> None:
        with uri.atomic_output(path) as f:
            pq.write_table(table, f, compression="zstd")

    uri.with_retries("write", path, write)


def part_path(out_dir: str, first_post_id: int) -> str:
    return uri.join(out_dir, f"part-{first_post_id:020d}.parquet")


def prepare_out_dir(out_dir: str, info: dict[str, Any]) -> None:
    """Part files belong to one model id, k, shard layout, calibration and precision target:
    those of another are removed (stale); the view is the truth, and missing part files are
    rebuilt from it."""
    uri.makedirs(out_dir)
    meta = uri.join(out_dir, "_topk.json")
    keys = ("model_id", "k", "shard_size", "calibration", "min_precision")
    if uri.is_file(meta):
        old = json.loads(uri.read_bytes(meta))
        if {k: old.get(k) for k in keys} != {k: info[k] for k in keys}:
            log.info("removing part files of %s from %s", {k: old.get(k) for k in keys}, out_dir)
            for p in uri.list_files(out_dir, "part-*.parquet"):
                uri.delete(p)
    write_json(meta, info)


def shards(posts: dict[str, np.ndarray], shard_size: int, w: Any, wr: ShardWriter):
    """Fixed ranges of the sorted archive, with what is done (in the view) and what to score."""
    n = len(posts["post_id"])
    for index, start in enumerate(range(0, n, shard_size)):
        stop = min(start + shard_size, n)
        t0 = time.perf_counter()
        done = np.asarray(w.existing(posts["post_id"][start:stop]), bool)
        wr.stats["resume_check_s"] += time.perf_counter() - t0
        sel = posts["selected"][start:stop]
        wr.stats["shards"] += 1
        wr.stats["skipped_posts"] += int((sel & done).sum())
        yield Shard(index, start, stop, done, sel & ~done)


class ShardWriter:
    """The single writer (driver): per shard, the part file, then the store commit.

    A part file holds every post of its shard that is in the view after the commit (rows a
    previous run committed come back from the view), so it is the same whatever runs made it.
    """

    def __init__(self, posts: dict[str, np.ndarray], k: int, reader: Any, out_dir: str, vocab: pa.Array,
                 calibrator: Any = None, min_precision: float = 0.0) -> None:
        self.posts, self.k, self.reader, self.out_dir, self.vocab = posts, k, reader, out_dir, vocab
        self.calibrator, self.min_precision = calibrator, min_precision
        self.w: Any = None
        self.flag_counts = np.zeros(256, np.int64)
        self.stats: dict[str, Any] = {"skipped_posts": 0, "scored_posts": 0, "write_s": 0.0, "read_s": 0.0,
                                      "compute_s": 0.0, "resume_check_s": 0.0, "shards": 0, "skipped_shards": 0,
                                      "tags_written": 0, "posts_written": 0}

    def part(self, sh: Shard) -> str:
        return part_path(self.out_dir, int(self.posts["post_id"][sh.start]))

    def finish_unchanged(self, sh: Shard) -> None:
        """A shard with nothing to score: rebuild its part file from the view if it is missing."""
        if sh.done.any() and not uri.is_file(self.part(sh)):
            self.write(sh, None)
        else:
            self.stats["skipped_shards"] += 1

    def write(self, sh: Shard, res: dict[str, Any] | None) -> None:
        t0 = time.perf_counter()
        ids = self.posts["post_id"][sh.start:sh.stop]
        keep = sh.done | sh.todo
        n, k = len(ids), self.k
        tags, scores, flags = np.zeros((n, k), np.int32), np.zeros((n, k), np.float32), np.zeros(n, np.uint8)
        if res is not None:
            tags[sh.todo], scores[sh.todo], flags[sh.todo] = res["tags"], res["scores"], res["flags"]
        if sh.done.any():
            old, found = self.reader.get_many(ids[sh.done])
            if not found.all():
                raise StoreError(f"view {self.reader.name} lost rows while scoring; re-run to resume")
            tags[sh.done], scores[sh.done], flags[sh.done] = old["tags"], old["scores"], old["flags"][:, 0]
        table = parquet_table(ids[keep], tags[keep], scores[keep], flags[keep], self.vocab, self.calibrator,
                              self.min_precision)
        write_part(self.part(sh), table)
        self.stats["tags_written"] += int(pc.sum(pc.list_value_length(table["tags"])).as_py() or 0)
        self.stats["posts_written"] += table.num_rows
        if res is not None:
            self.w.put(res["post_id"], to_records(res["tags"], res["scores"], res["flags"]))
            np.add.at(self.flag_counts, res["flags"], 1)
            self.stats["scored_posts"] += len(res["post_id"])
            self.stats["read_s"] += res["read_s"]
            self.stats["compute_s"] += res["compute_s"]
        self.stats["write_s"] += time.perf_counter() - t0
