"""Batch top-k tag scoring of every post, for search indexing (issue 7): `python -m jobs.score`.

    resolve model → check its feature views → select posts (all / untagged / list)
    → skip shards already in post/topk@<model id> → Ray tasks over post-id-range shards
    (bounded in flight, ray.wait backpressure): gather features → post_vectors → top-k
    → driver, the single writer: Parquet part file, then the store view

Each task opens the store read-only (reader handles open lazily in the worker), reads
the user and image vectors of its posts in batches (`jobs.features.FeatureReader`), scores all tags
with the saved model (`post_vectors(batch) @ tag_matrix().T`), keeps the top k with
`models.scoring` and recomputes those k scores batch-invariantly (`rescore`), so a post's
bytes do not depend on which batch or run scored it.

Outputs:
- view ``post/topk@<model id>`` (record view: tags int32[k], scores float32[k], flags uint8[1]),
  model id = model name + the first 12 hex digits of the weights' sha256; tag -1 with score 0
  pads a post with fewer than k eligible tags (only possible with --exclude-own-tags).
- ``<out>/topk/<MODEL>/part-<first post id>.parquet``: post_id int64, tags list<string>,
  scores list<float>, flags uint8, fallback bool; one file per shard, sorted by post_id.

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
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.errors import StoreError
from jobs._cli import ArchiveArgs, RayArgs, arg, main_for, write_json
from jobs._progress import Progress
from jobs.errors import InputError, JobError
from jobs.features import FeatureReader
from jobs.posts import tag_csr
from models.csr import take_rows
from models.errors import ModelError
from models.recsys.data import IdIndex
from models.recsys.saved import feature_views, id_vocab, tag_vocabulary, uses_item_factor

log = logging.getLogger("jobs.score")

FLAG_NO_IC, FLAG_NO_OD, FLAG_NO_USER_VECTOR, FLAG_UNSEEN_USER, FLAG_UNSEEN_ITEM = 1, 2, 4, 8, 16
FLAG_NAMES = {FLAG_NO_IC: "no_ic", FLAG_NO_OD: "no_od", FLAG_NO_USER_VECTOR: "no_user_vector",
              FLAG_UNSEEN_USER: "unseen_user", FLAG_UNSEEN_ITEM: "unseen_item"}
FEATURE_FLAG = {"ic": FLAG_NO_IC, "od": FLAG_NO_OD, "sn": FLAG_NO_USER_VECTOR}
# The store views a feature comes from unless the model's model.json names others.


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


# --------------------------------------------------------------------------- model


def resolve_model_dir(cfg: ScoreConfig) -> Path:
    """The model folder: --model as a path, else <out>/models/<name>; ModelError if absent."""
    p = Path(cfg.model)
    if not (p / "model.json").is_file():
        p = Path(cfg.out) / "models" / cfg.model
    if not (p / "model.json").is_file() or not (p / "weights.safetensors").is_file():
        root = Path(cfg.out) / "models"
        have = sorted(d.name for d in root.iterdir() if (d / "model.json").is_file()) if root.is_dir() else []
        raise ModelError(f"unknown model {cfg.model!r}: no model.json + weights.safetensors there or under "
                         f"{root} (saved models: {have or 'none'}); train one with python -m jobs.train")
    return p


def load_model(model_dir: Path) -> Any:
    """The saved recommender (`models.recsys.load`), with .meta, .tags, .user_ids, .item_ids."""
    from models.recsys import load

    return load(model_dir)


def model_id(model: Any, model_dir: Path) -> str:
    """Name plus a digest of the weights: retraining the model means a new view version."""
    meta = getattr(model, "meta", {}) or {}
    digest = meta.get("weights_sha256")
    if not digest:
        h = hashlib.sha256()
        with open(model_dir / "weights.safetensors", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    return f"{meta.get('name') or model_dir.name}-{digest[:12]}"


# --------------------------------------------------------------------------- posts


def read_posts_sorted(cfg: ScoreConfig, vocab: list[str]) -> dict[str, np.ndarray]:
    """Every post of the archive sorted by post_id: post_id, user_id, item_id, `selected` (the
    posts --which asks for), and own tags as CSR (indptr, indices into the model's vocabulary;
    tags the model does not know are dropped). Shards are cut over all posts, not only the
    selected ones, so every run sees the same shards."""
    from jobs.contract import iter_posts

    path = cfg.posts_path()
    if not path.is_file():
        raise InputError(f"posts file {path} does not exist; pass --posts or run python -m jobs.synth")
    # Streamed: each row group's tags become CSR indices (int32) at once, so the archive's tag
    # strings are never held whole (at 10^7 posts the Arrow tags column and its sorted copy
    # cost ~2.6 GB in the driver, issue 9); only compact int arrays are kept.
    value_set = pa.array(vocab, pa.string())
    n = pq.ParquetFile(path).metadata.num_rows        # preallocated: no list of parts + concatenated copy
    out = {c: np.empty(n, np.int64) for c in ("post_id", "user_id", "item_id")}
    row_len, n_tags = np.empty(n, np.int64), np.empty(n, np.int64)
    indices, at = [], 0
    for b in iter_posts(path, columns=("post_id", "user_id", "item_id", "tags")):
        m = b.num_rows
        for c in out:
            out[c][at:at + m] = b.column(c).to_numpy(zero_copy_only=False)
        tags = b.column("tags")
        ip, ix, _ = tag_csr(tags, value_set)
        row_len[at:at + m] = np.diff(ip)
        n_tags[at:at + m] = pc.fill_null(pc.list_value_length(tags), 0).to_numpy(zero_copy_only=False)
        indices.append(ix.astype(np.int32))
        at += m
    flat = np.concatenate(indices).astype(np.int32, copy=False) if indices else np.zeros(0, np.int32)
    selected = _selection(cfg, out["post_id"], n_tags)
    indptr = np.zeros(len(row_len) + 1, np.int64)
    np.cumsum(row_len, out=indptr[1:])
    if len(out["post_id"]) > 1 and not bool((np.diff(out["post_id"]) > 0).all()):  # not yet sorted
        order = np.argsort(out["post_id"], kind="stable")
        out = {c: v[order] for c, v in out.items()}
        selected = selected[order]
        indptr, flat = take_rows(indptr, flat, order)
    out["selected"] = selected
    out["indptr"], out["indices"] = indptr, flat
    return out


def _selection(cfg: ScoreConfig, post_ids: np.ndarray, n_tags: np.ndarray) -> np.ndarray:
    if cfg.which == "all":
        return np.ones(len(post_ids), bool)
    if cfg.which == "untagged":
        return n_tags == 0
    want = read_post_ids_file(cfg.post_ids_file)
    keep = np.isin(post_ids, want)
    missing = np.setdiff1d(want, post_ids)
    if len(missing):
        raise InputError(f"--post-ids-file {cfg.post_ids_file}: {len(missing)} post id(s) not in "
                         f"{cfg.posts_path()}, e.g. {missing[:5].tolist()}; remove them or fix --posts")
    return keep


def read_post_ids_file(path: str) -> np.ndarray:
    """Post ids from a .parquet (post_id column) or a text file (one integer per line)."""
    if not path:
        raise InputError("--which list needs --post-ids-file FILE (one post id per line, or a parquet post_id column)")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--post-ids-file {path} does not exist")
    if p.suffix == ".parquet":
        t = pq.read_table(p)
        if "post_id" not in t.column_names:
            raise InputError(f"--post-ids-file {path} has no post_id column (found {t.column_names})")
        return np.unique(t.column("post_id").to_numpy().astype(np.int64))
    lines = [s.strip() for s in p.read_text().splitlines() if s.strip()]
    try:
        return np.unique(np.array([int(s) for s in lines], dtype=np.int64))
    except ValueError:
        bad = next(s for s in lines if not s.lstrip("-").isdigit())
        raise InputError(f"--post-ids-file {path}: {bad!r} is not a post id (one integer per line)") from None


# --------------------------------------------------------------------------- task


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


def _score_shard(ctx: ScoreContext, shard: int, post_ids: np.ndarray, user_ids: np.ndarray,
                 item_ids: np.ndarray, indptr: np.ndarray | None, indices: np.ndarray | None) -> dict[str, Any]:
    """Ray task body: one shard's posts scored (store read-only in this worker)."""
    from models import host_memory

    # Every batch allocates and frees the same 8-60 MB buffers (reads, float32 features, score
    # blocks); keep them in the heap rather than have glibc map and zero-fill them afresh.
    host_memory.reuse_heap()
    t0 = time.perf_counter()
    res, times = score_posts(ctx, user_ids, item_ids, indptr, indices)
    return {"shard": shard, "post_id": post_ids, **res, **times, "task_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- writing


def record_fields(k: int) -> dict[str, tuple[str, int]]:
    return {"tags": ("int32", k), "scores": ("float32", k), "flags": ("uint8", 1)}


def to_records(tags: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> dict[str, np.ndarray]:
    """Record-view values. The store refuses non-finite floats: padding slots (tag -1) store 0."""
    return {"tags": tags, "scores": np.where(tags < 0, np.float32(0), scores).astype(np.float32),
            "flags": flags.reshape(-1, 1)}


def parquet_table(post_ids: np.ndarray, tags: np.ndarray, scores: np.ndarray, flags: np.ndarray,
                  vocab: pa.Array) -> pa.Table:
    """post_id, tags list<string> (padding dropped), scores list<float>, flags, fallback."""
    valid = tags >= 0  # (n, k)
    offsets = np.zeros(len(tags) + 1, np.int32)
    np.cumsum(valid.sum(1), out=offsets[1:])
    names = pc.take(vocab, pa.array(tags[valid].astype(np.int32)))
    return pa.table({
        "post_id": pa.array(post_ids, pa.int64()),
        "tags": pa.ListArray.from_arrays(pa.array(offsets), names),
        "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid], pa.float32())),
        "flags": pa.array(flags, pa.uint8()),
        "fallback": pa.array(flags != 0),
    })


def write_part(path: Path, table: pa.Table) -> None:
    """Atomic: a killed run leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def part_path(out_dir: Path, first_post_id: int) -> Path:
    return out_dir / f"part-{first_post_id:020d}.parquet"


def prepare_out_dir(out_dir: Path, info: dict[str, Any]) -> None:
    """Part files belong to one model id, k and shard layout: those of another are removed
    (stale); the view is the truth, and missing part files are rebuilt from it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = out_dir / "_topk.json"
    keys = ("model_id", "k", "shard_size")
    if meta.is_file():
        old = json.loads(meta.read_text())
        if {k: old.get(k) for k in keys} != {k: info[k] for k in keys}:
            log.info("removing part files of %s from %s", {k: old.get(k) for k in keys}, out_dir)
            for p in out_dir.glob("part-*.parquet"):
                p.unlink()
    write_json(meta, info)


# --------------------------------------------------------------------------- driver


def check_views(store: Any, views: dict[str, str], model_name: str) -> None:
    """StoreError naming the feature views the model reads that the store lacks."""
    have = set(store.list_views())
    missing = [v for v in views.values() if v not in have]
    if missing:
        raise StoreError(f"model {model_name} reads feature view(s) {missing} that store {store.path} lacks "
                         f"(it has {sorted(have)}); run python -m jobs.extract / jobs.embed_users first")


def check_same_options(store: Any, view: str, producer: dict[str, Any]) -> None:
    """Rows of one view are all scored the same way: refuse to mix k or --exclude-own-tags settings."""
    if view not in store.list_views():
        return
    old = store.describe(view).producer or {}
    if "k" in old and old["k"] != producer["k"]:
        raise JobError(f"view {view} holds top-{old['k']} tags; pass --k {old['k']} to resume it, "
                       f"or drop the view (Store.drop_view) to rescore with --k {producer['k']}")
    if "exclude_own_tags" in old and old["exclude_own_tags"] != producer["exclude_own_tags"]:
        flag = "--exclude-own-tags" if old["exclude_own_tags"] else "--no-exclude-own-tags"
        raise JobError(f"view {view} was scored with exclude_own_tags={old['exclude_own_tags']}; pass {flag} "
                       f"to resume it, or drop the view (Store.drop_view) to rescore")


def validate(cfg: ScoreConfig) -> None:
    """Flag checks that need no files (JobError naming the flag)."""
    for name in ("k", "shard_size", "max_in_flight", "batch_size"):
        if getattr(cfg, name) < 1:
            raise JobError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.which == "list" and not cfg.post_ids_file:
        read_post_ids_file("")  # raises the one-line error
    if cfg.kernel:
        from models.scoring import get_kernel

        get_kernel(cfg.kernel)


@dataclasses.dataclass
class Shard:
    """One contiguous range [start, stop) of the sorted archive posts."""

    index: int
    start: int
    stop: int
    done: np.ndarray  # (stop-start,) bool: already in the view
    todo: np.ndarray  # (stop-start,) bool: selected and not done: scored by this run


@dataclasses.dataclass
class Plan:
    """Everything checked and resolved before any work: model, store, view, posts."""

    model_name: str
    model_id: str
    view: str
    out_dir: Path
    store: Any
    vocab: list[str]
    ctx: ScoreContext
    posts: dict[str, np.ndarray]
    read_posts_s: float


def plan(cfg: ScoreConfig) -> Plan:
    """Validate flags, load the model, check the store has its views, read the posts, create
    the view and the Parquet folder. Every user error surfaces here, before any scoring."""
    from featurestore import Store, topk_view

    validate(cfg)
    model_dir = resolve_model_dir(cfg)
    model = load_model(model_dir)
    vocab = tag_vocabulary(model)
    tag_matrix = np.ascontiguousarray(model.tag_matrix(), dtype=np.float32)  # (T, D)
    if tag_matrix.shape[0] != len(vocab):
        raise ModelError(f"{model_dir}: tag matrix has {tag_matrix.shape[0]} rows, vocabulary {len(vocab)} tags")
    if cfg.k > len(vocab):
        raise ModelError(f"--k {cfg.k} exceeds the model's {len(vocab)} tags; pass --k <= {len(vocab)}")
    store_path = cfg.store_path()
    if not store_path.is_dir():
        raise StoreError(f"feature store {store_path} does not exist; pass --store or run jobs.extract first")
    store = Store.open(store_path, create=False, readonly=False)
    views = feature_views(model)
    check_views(store, views, model_dir.name)
    mid = model_id(model, model_dir)
    view = topk_view(mid)
    t0 = time.perf_counter()
    posts = read_posts_sorted(cfg, vocab)
    t_posts = time.perf_counter() - t0
    producer = {"model": model_dir.name, "model_id": mid, "k": cfg.k,
                "exclude_own_tags": cfg.exclude_own_tags, "views": views, "tags": len(vocab)}
    check_same_options(store, view, producer)
    store.create_record_view(view, fields=record_fields(cfg.k), producer=producer)
    out_dir = Path(cfg.out) / "topk" / model_dir.name
    prepare_out_dir(out_dir, {"model_id": mid, "view": view, "k": cfg.k, "shard_size": cfg.shard_size,
                              "producer": producer})
    ctx = ScoreContext(model, tag_matrix, IdIndex(id_vocab(model, "user")), IdIndex(id_vocab(model, "item")),
                       FeatureReader(store_path, views), uses_item_factor(model), cfg.k, cfg.kernel, cfg.batch_size)
    return Plan(model_dir.name, mid, view, out_dir, store, vocab, ctx, posts, t_posts)


def run(cfg: ScoreConfig) -> dict[str, Any]:
    """Score the selected posts; returns the summary (counts, fallbacks, posts/s, time split)."""
    import ray

    from jobs._ray import init_ray

    t_start = time.perf_counter()
    p = plan(cfg)
    posts = p.posts
    n_sel = int(posts["selected"].sum())
    log.info("scoring %d of %d posts (%s) with %s into %s and %s", n_sel, len(posts["post_id"]), cfg.which,
             p.model_id, p.view, p.out_dir)
    remote: list[Any] = []  # [task, ctx ref] once there is work: a run with nothing to score starts no Ray

    def submit(*args: Any) -> Any:
        if not remote:
            init_ray(cfg.ray_address, cfg.num_cpus)
            remote.extend([ray.remote(num_cpus=cfg.task_cpus, num_gpus=cfg.task_gpus)(_score_shard),
                           ray.put(p.ctx)])
        return remote[0].remote(remote[1], *args)

    wr = _ShardWriter(posts, cfg, p.store.reader(p.view), p.out_dir, pa.array(p.vocab, pa.string()))
    progress = Progress("score", total=n_sel, unit="posts")
    with p.store.writer(p.view) as w:
        wr.w = w
        pending: dict[Any, Shard] = {}

        def drain(limit: int) -> None:  # backpressure: at most `limit` tasks stay in flight
            while len(pending) > limit:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    sh = pending.pop(ref)
                    wr.write(sh, ray.get(ref))
                    progress.update(int(sh.todo.sum()))

        for sh in _shards(posts, cfg, w, wr):
            progress.update(int((sh.done & posts["selected"][sh.start:sh.stop]).sum()))  # skipped: done before
            if not sh.todo.any():  # nothing to score: a part file to rebuild from the view at most
                if sh.done.any() and not wr.part(sh).is_file():
                    wr.write(sh, None)
                else:
                    wr.stats["skipped_shards"] += 1
                continue
            rows = np.flatnonzero(sh.todo) + sh.start
            ip = ix = None
            if cfg.exclude_own_tags:
                ip, ix = take_rows(posts["indptr"], posts["indices"], rows)
            drain(cfg.max_in_flight - 1)
            pending[submit(sh.index, posts["post_id"][rows], posts["user_id"][rows], posts["item_id"][rows],
                           ip, ix)] = sh
        drain(0)
    progress.close()
    return _summary(cfg, wr, p.model_name, p.model_id, p.view, p.out_dir, n_sel, p.read_posts_s,
                    time.perf_counter() - t_start)


def _shards(posts: dict[str, np.ndarray], cfg: ScoreConfig, w: Any, wr: _ShardWriter):
    """Fixed ranges of the sorted archive, with what is done (in the view) and what to score."""
    n = len(posts["post_id"])
    for index, start in enumerate(range(0, n, cfg.shard_size)):
        stop = min(start + cfg.shard_size, n)
        t0 = time.perf_counter()
        done = np.asarray(w.existing(posts["post_id"][start:stop]), bool)
        wr.stats["resume_check_s"] += time.perf_counter() - t0
        sel = posts["selected"][start:stop]
        wr.stats["shards"] += 1
        wr.stats["skipped_posts"] += int((sel & done).sum())
        yield Shard(index, start, stop, done, sel & ~done)


def _summary(cfg: ScoreConfig, wr: _ShardWriter, name: str, mid: str, view: str, out_dir: Path,
             n_sel: int, t_posts: float, wall: float) -> dict[str, Any]:
    st, fc = wr.stats, wr.flag_counts
    scored = st["scored_posts"]
    summary = {
        "model": name, "model_id": mid, "view": view, "parquet": str(out_dir), "k": cfg.k,
        "which": cfg.which, "selected_posts": n_sel, "scored_posts": scored,
        "skipped_posts": st["skipped_posts"], "shards": st["shards"], "skipped_shards": st["skipped_shards"],
        "fallback_posts": int(fc[1:].sum()),
        "fallbacks": {nm: int(sum(fc[f] for f in range(256) if f & bit)) for bit, nm in FLAG_NAMES.items()},
        "posts_per_s": round(scored / wall, 1) if wall > 0 else 0.0,
        # worker-seconds for reads/compute (summed over tasks); driver seconds for the rest
        "time_s": {"total": round(wall, 3), "read_posts": round(t_posts, 3),
                   "resume_check": round(st["resume_check_s"], 3),
                   "store_reads_worker": round(st["read_s"], 3), "compute_worker": round(st["compute_s"], 3),
                   "writes": round(st["write_s"], 3)},
    }
    log.info("score: %d posts scored (%d skipped) in %.1fs, %.0f posts/s; %d with fallbacks; time %s",
             scored, st["skipped_posts"], wall, summary["posts_per_s"], summary["fallback_posts"],
             summary["time_s"])
    return summary


class _ShardWriter:
    """The single writer (driver): per shard, the part file, then the store commit.

    A part file holds every post of its shard that is in the view after the commit (rows a
    previous run committed come back from the view), so it is the same whatever runs made it.
    """

    def __init__(self, posts: dict[str, np.ndarray], cfg: ScoreConfig, reader: Any, out_dir: Path,
                 vocab: pa.Array) -> None:
        self.posts, self.k, self.reader, self.out_dir, self.vocab = posts, cfg.k, reader, out_dir, vocab
        self.w: Any = None
        self.flag_counts = np.zeros(256, np.int64)
        self.stats: dict[str, Any] = {"skipped_posts": 0, "scored_posts": 0, "write_s": 0.0, "read_s": 0.0,
                                      "compute_s": 0.0, "resume_check_s": 0.0, "shards": 0, "skipped_shards": 0}

    def part(self, sh: Shard) -> Path:
        return part_path(self.out_dir, int(self.posts["post_id"][sh.start]))

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
        write_part(self.part(sh), parquet_table(ids[keep], tags[keep], scores[keep], flags[keep], self.vocab))
        if res is not None:
            self.w.put(res["post_id"], to_records(res["tags"], res["scores"], res["flags"]))
            np.add.at(self.flag_counts, res["flags"], 1)
            self.stats["scored_posts"] += len(res["post_id"])
            self.stats["read_s"] += res["read_s"]
            self.stats["compute_s"] += res["compute_s"]
        self.stats["write_s"] += time.perf_counter() - t0


def main() -> None:
    main_for("score", ScoreConfig, run, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
