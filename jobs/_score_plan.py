"""What `jobs.score` checks and resolves before scoring: the model, its views, the posts.

Every user error (a bad flag, an unknown model, a store without the model's views, a k or
--exclude-own-tags that differs from the view being resumed, a bad post-ids file) surfaces
here, before any Ray task starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore import uri
from featurestore.errors import StoreError
from jobs._score_task import ScoreContext
from jobs._score_write import prepare_out_dir, record_fields
from jobs.errors import InputError, JobError
from jobs.features import FeatureReader
from jobs.posts import tag_csr
from models.csr import take_rows
from models.errors import ModelError
from models.recsys.data import IdIndex
from models.recsys.saved import feature_views, id_vocab, tag_vocabulary, uses_item_factor

if TYPE_CHECKING:
    from jobs.score import ScoreConfig


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


def read_posts_sorted(cfg: ScoreConfig, vocab: list[str]) -> dict[str, np.ndarray]:
    """Every post of the archive sorted by post_id: post_id, user_id, item_id, `selected` (the
    posts --which asks for), and own tags as CSR (indptr, indices into the model's vocabulary;
    tags the model does not know are dropped). Shards are cut over all posts, not only the
    selected ones, so every run sees the same shards."""
    from jobs.contract import count_posts, iter_posts

    path = cfg.posts_uri()
    # Streamed: each row group's tags become CSR indices (int32) at once, so the archive's tag
    # strings are never held whole (the Arrow tags column and its sorted copy would grow with
    # the archive; benchmarks/results/design-measurements.md); only compact int arrays are kept.
    value_set = pa.array(vocab, pa.string())
    n = count_posts(path)          # preallocated: no list of parts + concatenated copy
    out: dict[str, np.ndarray] = {c: np.empty(n, np.int64) for c in ("post_id", "user_id", "item_id")}
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
                         f"{cfg.posts_uri()}, e.g. {missing[:5].tolist()}; remove them or fix --posts")
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
    if not 0.0 <= cfg.min_precision <= 1.0:
        raise JobError(f"--min-precision must be in [0, 1] (0: write every top-k tag), got {cfg.min_precision}")


def calibration_of(model: Any, model_dir: Path, min_precision: float) -> Any:
    """The model's `Calibrator` from model.json, or None; ModelError when --min-precision needs one."""
    from models.calibration import Calibrator

    doc = (getattr(model, "meta", {}) or {}).get("calibration")
    if doc:
        return Calibrator.from_json(doc)
    if min_precision > 0:
        raise ModelError(f"--min-precision {min_precision:g}: {model_dir}/model.json holds no calibration; "
                         "retrain the model with jobs.train (it calibrates on the validation split by default)")
    return None


@dataclasses.dataclass
class Plan:
    """Everything checked and resolved before any work: model, store, view, posts."""

    model_name: str
    model_id: str
    view: str
    out_dir: str  # the model's top-k Parquet parts: a local folder or a URI prefix
    store: Any
    vocab: list[str]
    ctx: ScoreContext
    posts: dict[str, np.ndarray]
    read_posts_s: float
    calibrator: Any = None  # models.calibration.Calibrator, or None (no probabilities)


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
    out_dir = uri.join(cfg.topk_out or str(Path(cfg.out) / "topk"), model_dir.name)
    cal = calibration_of(model, model_dir, cfg.min_precision)
    cal_digest = hashlib.sha256(json.dumps(cal.to_json(), sort_keys=True).encode()).hexdigest()[:12] if cal else None
    prepare_out_dir(out_dir, {"model_id": mid, "view": view, "k": cfg.k, "shard_size": cfg.shard_size,
                              "calibration": cal_digest, "min_precision": cfg.min_precision, "producer": producer})
    ctx = ScoreContext(model, tag_matrix, IdIndex(id_vocab(model, "user")), IdIndex(id_vocab(model, "item")),
                       FeatureReader(store_path, views), uses_item_factor(model), cfg.k, cfg.kernel, cfg.batch_size)
    return Plan(model_dir.name, mid, view, out_dir, store, vocab, ctx, posts, t_posts, cal)
