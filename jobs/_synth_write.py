"""Writing the synthetic archive: its folder, the Parquet files, the images, the features.

`Paths` says where each file goes (`image` strings are relative to the posts file's
folder); `prepare_dir` claims the folder (archive.json first, marked incomplete, so a killed
run is recognised and resumed); posts.parquet is written one row group per sampled chunk;
images are rendered over a process pool; with --write-features, synthetic IC/OD vectors go
into the store instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs._cli import write_json
from jobs._progress import Progress
from jobs._synth_images import (
    SHAPES,
    TEXTURES,
    ImageSpecs,
    hex_colours,
    make_feature_model,
    render_many,
    synthetic_features,
)
from jobs._synth_posts import sample_chunk
from jobs._synth_world import World, stream
from jobs.errors import JobError
from models.views import IC_DIM, IC_VIEW, OD_DIM, OD_VIEW

if TYPE_CHECKING:
    from jobs.synth import SynthConfig

ROW_GROUP = 65_536          # posts per chunk and per Parquet row group
CANDIDATES = 10             # tag draws per post before de-duplication (for up to 6 distinct)
FORMAT_VERSION = 1
FEATURE_PRODUCER = {"model": "synthetic", "weights": "none"}


def archive_dir(cfg: SynthConfig) -> Path:
    if cfg.archive:
        return Path(cfg.archive)
    return Path(cfg.posts).parent if cfg.posts else Path(cfg.out) / "archive"



def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP)
    tmp.replace(path)


@dataclass
class Paths:
    """Where the archive goes: `image` strings are relative to the posts file's folder."""

    root: Path       # archive.json, users/tags/untagged_truth.parquet
    posts: Path
    edges: Path

    @property
    def image_root(self) -> Path:
        return self.posts.parent

    @staticmethod
    def of(cfg: SynthConfig) -> Paths:
        root = archive_dir(cfg)
        return Paths(root, Path(cfg.posts) if cfg.posts else root / "posts.parquet",
                     Path(cfg.edges) if cfg.edges else root / "edges.parquet")


def prepare_dir(paths: Paths, params: dict[str, Any]) -> bool:
    """Claim the target folder; returns True when images already there may be kept.

    archive.json is written first (marked incomplete), so a killed run is recognised as
    ours: re-run with the same flags, it keeps the images already written (each one was
    renamed into place whole) and draws only the rest. Other flags: the old images go.
    """
    meta = paths.root / "archive.json"
    if paths.posts.exists() and not meta.exists():
        raise JobError(f"{paths.posts} exists and was not written by jobs.synth; choose another "
                       f"--archive/--out or remove it")
    same = False
    if meta.exists():
        try:
            same = json.loads(meta.read_text()).get("params") == params
        except (json.JSONDecodeError, OSError):
            same = False
        images = paths.image_root / "images"
        if not same and images.is_dir():
            shutil.rmtree(images)               # ours (archive.json says so), drawn with other flags
    for d in (paths.root, paths.posts.parent, paths.edges.parent):
        d.mkdir(parents=True, exist_ok=True)
    write_json(meta, {"generator": "jobs.synth", "format": FORMAT_VERSION, "complete": False, "params": params})
    return same


def _user_table(cfg: SynthConfig, world: World, user_of_post: np.ndarray, vocab: pa.Array) -> pa.Table:
    k = world.personal.shape[1]
    offsets = pa.array(np.arange(0, k * cfg.num_users + 1, k, dtype=np.int32))
    return pa.table({
        "user_id": pa.array(world.user_ids),
        "community": pa.array(world.community),
        "personal_tags": pa.ListArray.from_arrays(offsets, vocab.take(pa.array(world.personal.reshape(-1)))),
        "personal_weight": pa.array(world.personal_weight.astype(np.float32)),
        "num_posts": pa.array(np.bincount(user_of_post, minlength=cfg.num_users).astype(np.int32)),
    })


def _tag_table(world: World, vocab: pa.Array) -> pa.Table:
    sig = world.signatures
    return pa.table({
        "tag": vocab,
        "popularity": pa.array(world.tags.popularity),
        "community": pa.array(world.tags.community),
        "visual": pa.array(world.visual),
        "texture": pa.array(np.array(TEXTURES)[sig.texture]),
        "shape": pa.array(np.array(SHAPES)[sig.shape]),
        "colour_a": pa.array(hex_colours(sig.palette[:, 0])),
        "colour_b": pa.array(hex_colours(sig.palette[:, 1])),
        "accent": pa.array(hex_colours(sig.palette[:, 2])),
    })


def params_of(cfg: SynthConfig) -> dict[str, Any]:
    """The flags that shape the output (not where it goes, nor how many workers)."""
    skip = {"posts", "edges", "store", "out", "archive", "workers"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def write_features(cfg: SynthConfig, specs: ImageSpecs) -> int:
    """Synthetic IC/OD vectors for every item, keyed by item_id = number + 1, in 64k batches."""
    try:
        from featurestore import Store
    except ImportError as e:
        raise JobError(f"--write-features needs featurestore.Store ({e})") from None
    model = make_feature_model(cfg.num_tags, stream(cfg.seed, 9))
    order = np.argsort(specs.number, kind="stable")                  # keys ascending: LMDB appends
    prog = Progress("synth features", total=len(order), unit="item")
    # durable=False: no fsync per 64k batch (the writer syncs once when it closes); a crash
    # only means re-running this deterministic job.
    with Store.open(str(cfg.store_path()), create=True, durable=False) as store:
        store.create_view(IC_VIEW, IC_DIM, producer=FEATURE_PRODUCER)
        store.create_view(OD_VIEW, OD_DIM, producer=FEATURE_PRODUCER)
        _put_features(store, specs, order, model, cfg.seed, prog)
    prog.close()
    return len(order)


def _put_features(store: Any, specs: ImageSpecs, order: np.ndarray, model: Any, seed: int, prog: Progress) -> None:
    """One transaction per view per 64k items; re-running rewrites the same bytes (idempotent)."""
    with store.writer(IC_VIEW) as wz, store.writer(OD_VIEW) as wo:
        for k, a in enumerate(range(0, len(order), ROW_GROUP)):
            idx = order[a:a + ROW_GROUP]
            z, o = synthetic_features(specs.tags[idx], model, np.random.default_rng([seed, 10, k]))
            ids = specs.number[idx] + 1
            wz.put(ids, z)                                       # (n, 512)
            wo.put(ids, o)                                       # (n, 80)
            prog.update(len(idx))


def write_world(paths: Paths, cfg: SynthConfig, world: World, user_of_post: np.ndarray, vocab: pa.Array) -> None:
    _write_table(paths.edges, pa.table({"src": pa.array(world.user_ids[world.src]),
                                        "dst": pa.array(world.user_ids[world.dst]),
                                        "weight": pa.array(world.weight)}))
    _write_table(paths.root / "users.parquet", _user_table(cfg, world, user_of_post, vocab))
    _write_table(paths.root / "tags.parquet", _tag_table(world, vocab))


@dataclass
class PostsWritten:
    specs: ImageSpecs          # the distinct images to draw
    untagged: int
    reposts: int
    tag_counts: np.ndarray     # (T,) visible uses


def write_posts(paths: Paths, cfg: SynthConfig, world: World, user_of_post: np.ndarray,
                 size: tuple[int, int], vocab: pa.Array) -> PostsWritten:
    """posts.parquet one 64k row group per chunk (streamed: one chunk in memory at a time)."""
    prog = Progress("synth posts", total=cfg.num_posts, unit="post")
    specs, hidden, reposts, tag_counts = [], [], 0, np.zeros(cfg.num_tags, np.int64)
    tmp = paths.posts.with_name(paths.posts.name + ".tmp")
    writer = None
    try:
        for a in range(0, cfg.num_posts, ROW_GROUP):
            chunk = sample_chunk(cfg, world, user_of_post, a, min(a + ROW_GROUP, cfg.num_posts), size, vocab)
            writer = writer or pq.ParquetWriter(tmp, chunk.table.schema)
            writer.write_table(chunk.table, row_group_size=ROW_GROUP)
            specs.append(chunk.specs)
            hidden.append(chunk.hidden)
            reposts += chunk.reposts
            tag_counts += chunk.tag_counts
            prog.update(chunk.table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(paths.posts)
    prog.close()
    untagged = pa.concat_tables(hidden)
    _write_table(paths.root / "untagged_truth.parquet", untagged)
    return PostsWritten(ImageSpecs.concat(specs), untagged.num_rows, reposts, tag_counts)


def draw_images(cfg: SynthConfig, paths: Paths, world: World, specs: ImageSpecs, keep: bool) -> tuple[int, int, float]:
    """(written, kept, seconds): every distinct image, over a process pool."""
    t0 = time.perf_counter()
    written = kept = 0
    workers = cfg.workers or os.cpu_count() or 1
    prog = Progress("synth images", total=len(specs), unit="img")
    for w, k in render_many(specs, paths.image_root, world.signatures, cfg.seed, workers, skip_existing=keep):
        written, kept = written + w, kept + k
        prog.update(w + k)
    prog.close()
    return written, kept, time.perf_counter() - t0


def archive_meta(cfg: SynthConfig, paths: Paths, params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """archive.json: generation flags, files, counts and where the ground truth is."""
    rel = lambda p: os.path.relpath(p, paths.root)  # noqa: E731
    return {
        "generator": "jobs.synth",
        "format": FORMAT_VERSION,
        "complete": True,
        "params": params,
        "files": {"posts": rel(paths.posts), "edges": rel(paths.edges), "users": "users.parquet",
                  "tags": "tags.parquet", "untagged_truth": "untagged_truth.parquet",
                  "images": rel(paths.image_root / "images") if cfg.images else None},
        "counts": {k: summary[k] for k in ("posts", "users", "edges", "tags", "tags_used", "untagged_posts",
                                           "shared_posts", "distinct_images")},
        "truth": {
            "within_community_edge_frac": summary["within_community_edge_frac"],
            "community_of_user": "users.parquet: user_id, community, personal_tags (3 own + 2 from followees)",
            "tag_signatures": "tags.parquet: tag, popularity, community, visual (shows in the image), "
                              "texture, shape, colours",
            "untagged_posts": "untagged_truth.parquet: post_id, the hidden tags",
            "item_id": ("column: number of the photo's first post + 1" if cfg.item_id_column or cfg.write_features
                        else "no column: one item per distinct image (jobs.contract)"),
            "features": {"views": [IC_VIEW, OD_VIEW], "producer": FEATURE_PRODUCER} if cfg.write_features else None,
        },
    }
