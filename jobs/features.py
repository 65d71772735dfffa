"""Feature part of a recommender batch, read from the feature store (docs/interfaces.md).

    batch = gather(store_path, user_ids, item_ids, views=("ic", "od", "sn"))
    # {"ic": (n, 512) float32, "has_ic": (n,) bool, "od": ..., "sn": (n, d), "has_sn": ...}

Image views are keyed by item id, the user view by user id. Missing rows (a failed image,
a user outside the graph) are the documented fallback: a zero vector and `has_* = False`,
counted in `last_missing` and logged. A view absent from the store is an error before any
read, naming the job that writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError
from models.recsys.saved import DEFAULT_FEATURE_VIEWS

log = logging.getLogger("jobs")

# feature key -> (default view, key space, job that writes it)
VIEWS = DEFAULT_FEATURE_VIEWS
KEYED_BY = {"ic": "item", "od": "item", "sn": "user"}
WRITER = {"ic": "jobs.extract", "od": "jobs.extract", "sn": "jobs.embed_users"}
CHUNK = 65536

last_missing: dict[str, int] = {}


class MissingViewError(ModelError):
    """A model needs a store view (or a store) that is not there; names the job that writes it."""  # feature -> rows without a stored vector in the last gather


def resolve_views(views: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """("ic", "sn") or {"ic": "image/vgg16@2"} -> {feature: view name}."""
    if isinstance(views, Mapping):
        out = dict(views)
    else:
        out = {f: VIEWS.get(f, "") for f in views}
    bad = sorted(f for f in out if f not in VIEWS)
    if bad:
        raise ModelError(f"unknown feature key(s) {bad}; valid: {sorted(VIEWS)}")
    return out


def _open_store(store_path: str | Path):
    try:
        from featurestore import Store
    except ImportError as e:
        raise ModelError(f"the feature store package is not importable ({e}); models reading features need it") from None
    if not Path(store_path).exists():
        raise MissingViewError(f"feature store {store_path} does not exist; run `python -m jobs.extract` / `python -m jobs.embed_users` first")
    return Store.open(str(store_path), create=False, readonly=True)


def check_views(store_path: str | Path, views: Sequence[str] | Mapping[str, str]) -> dict[str, dict]:
    """{feature: {"view", "dim", "count", "producer"}} for the views; ModelError naming the job
    that writes a missing one. Call before training so a missing view fails before work."""
    views = resolve_views(views)
    if not views:
        return {}
    store = _open_store(store_path)
    have = set(store.list_views())
    out = {}
    for f, name in views.items():
        if name not in have:
            raise MissingViewError(f"view {name} ({f} features) is not in store {store_path} (it holds "
                             f"{sorted(have) or 'no views'}); run `python -m {WRITER[f]}` first")
        info = store.describe(name)
        out[f] = {"view": name, "dim": int(info.dim), "count": int(getattr(info, "count", 0) or 0),
                  "producer": getattr(info, "producer", {})}
    return out


def gather(store_path: str | Path, user_ids: np.ndarray, item_ids: np.ndarray,
           views: Sequence[str] | Mapping[str, str] = ("ic", "od", "sn"),
           compact: bool = False, spill_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Feature arrays for n posts (user_ids[j], item_ids[j]); zeros and has_*=False where missing.

    Values are float32, or with compact=True float16 for views stored as float16 (lossless:
    a quarter of the float32 copy's memory per post, which dominated training at 10^6 posts).

    spill_dir: write each feature array to a `.npy` file there, chunk by chunk, and return it
    memory-mapped read-only. The rows then live in the page cache (reclaimable, like the
    store's own map) instead of the process heap: training at 10^7 tag assignments holds
    ~4.8 GB of float16 features, which is what made its memory grow with the archive (issue 9).
    The files are the caller's to delete (a temporary directory).
    """
    views = resolve_views(views)
    store = _open_store(store_path) if views else None
    user_ids, item_ids = np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64)
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    last_missing.clear()
    for f, name in views.items():
        ids = item_ids if KEYED_BY[f] == "item" else user_ids
        try:
            reader = store.reader(name)  # type: ignore[union-attr]
            info = store.describe(name)  # type: ignore[union-attr]
        except Exception as e:  # the store's own error names the view; keep its message
            raise ModelError(f"cannot read view {name} from {store_path}: {e}; run `python -m {WRITER[f]}`") from None
        # float16 storage: exact either way (read_vectors widened the values from it)
        dtype = np.float16 if compact and np.dtype(info.dtype) == np.float16 else np.float32
        if spill_dir is None:
            out[f], out[f"has_{f}"] = _read_in_memory(reader, ids, dtype)
        else:
            out[f], out[f"has_{f}"] = _read_to_file(reader, ids, dtype, int(info.dim), Path(spill_dir) / f)
        last_missing[f] = int((~out[f"has_{f}"]).sum())
        if last_missing[f]:
            log.info("features: %d of %d posts have no %s vector (zero vector, has_%s=False)",
                     last_missing[f], len(ids), name, f)
    return out


def _read_in_memory(reader, ids: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, dim) dtype, found (n,)) in memory, one read per distinct id."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    values, found = _read_all(reader, uniq)
    return values.astype(dtype, copy=False)[inverse], found[inverse]


def _read_to_file(reader, ids: np.ndarray, dtype: Any, dim: int, stem: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same into `<stem>-<random>.npy`, CHUNK posts at a time (one read per distinct id per
    chunk); the values come back memory-mapped read-only."""
    import uuid

    path = stem.with_name(f"{stem.name}-{uuid.uuid4().hex}.npy")
    values = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(ids), dim))
    has = np.zeros(len(ids), bool)
    for s in range(0, len(ids), CHUNK):
        uniq, inverse = np.unique(ids[s:s + CHUNK], return_inverse=True)
        v, ok = read_vectors(reader, uniq)
        values[s:s + len(inverse)] = v[inverse]
        has[s:s + len(inverse)] = ok[inverse]
    values.flush()
    del values
    return np.load(path, mmap_mode="r"), has


def read_vectors(reader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values float32 (n, dim), found bool (n,)) for ids in request order, zero rows where missing.

    Values are read in their stored dtype (float16) and widened with torch: numpy's
    float16 -> float32 cast took half of a gather's time (0.23 of 0.49 s per 64k posts).
    """
    import torch

    v, ok = reader.get_many(ids, dtype=None)
    v = torch.from_numpy(np.ascontiguousarray(v)).float().numpy()
    ok = np.asarray(ok, bool)
    v[~ok] = 0.0
    return v, ok


def _read_all(reader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """read_vectors in chunks of CHUNK ids (bounded transactions)."""
    vals, found = [], []
    for s in range(0, len(ids), CHUNK):
        v, ok = read_vectors(reader, ids[s:s + CHUNK])
        vals.append(v)
        found.append(ok)
    if not vals:
        dim = int(getattr(reader, "dim", 0) or 0)
        return np.zeros((0, dim), np.float32), np.zeros(0, bool)
    return np.concatenate(vals), np.concatenate(found)
