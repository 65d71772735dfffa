"""Feature part of a recommender batch, read from the feature store (docs/interfaces.md).

    reader = FeatureReader(store_path, views=("ic", "od", "sn"))   # picklable; opens per process
    batch, missing = reader.read(user_ids, item_ids)
    # batch {"ic": (n, 512) float32, "has_ic": (n,) bool, "od": ..., "sn": (n, d), "has_sn": ...}
    # missing {"ic": rows without a stored vector, ...}

The one reader train, evaluate and score use. Image views are keyed by item id, the user
view by user id (`models.views`). Missing rows (a failed image, a user outside the graph)
are the documented fallback: a zero vector and `has_* = False`, counted and logged. A view
absent from the store is an error before any read, naming the job that writes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError
from models.views import DEFAULT_FEATURE_VIEWS, FEATURES

log = logging.getLogger("jobs")

CHUNK = 65536  # ids per store read: bounds each read transaction and its working copy


class MissingViewError(ModelError):
    """A model needs a store view (or a store) that is not there; names the job that writes it."""


def resolve_views(views: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """("ic", "sn") or {"ic": "image/vgg16@2"} -> {feature: view name}."""
    if isinstance(views, Mapping):
        out = dict(views)
    else:
        out = {f: DEFAULT_FEATURE_VIEWS.get(f, "") for f in views}
    bad = sorted(f for f in out if f not in FEATURES)
    if bad:
        raise ModelError(f"unknown feature key(s) {bad}; valid: {sorted(FEATURES)}")
    return out


def _open_store(store_path: str | Path) -> Any:
    try:
        from featurestore import Store
    except ImportError as e:
        raise ModelError(f"the feature store package is not importable ({e}); models reading features need it") from None
    if not Path(store_path).exists():
        raise MissingViewError(f"feature store {store_path} does not exist; run `python -m jobs.extract` / "
                               "`python -m jobs.embed_users` first")
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
                                   f"{sorted(have) or 'no views'}); run `python -m {FEATURES[f].writer}` first")
        info = store.describe(name)
        out[f] = {"view": name, "dim": int(info.dim), "count": int(getattr(info, "count", 0) or 0),
                  "producer": getattr(info, "producer", {})}
    return out


class FeatureReader:
    """Reads the feature views of a set of posts from one store.

    Picklable (a Ray task gets it in its context): the store and its readers are opened on
    first use in each process, never shipped.
    """

    def __init__(self, store_path: str | Path, views: Sequence[str] | Mapping[str, str] = ("ic", "od", "sn")) -> None:
        self.store_path = str(store_path)
        self.views = resolve_views(views)
        self._open: dict[str, tuple[Any, np.dtype, int]] = {}
        self._pid = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"store_path": self.store_path, "views": self.views}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store_path"], state["views"])  # type: ignore[misc]

    def _readers(self) -> dict[str, tuple[Any, np.dtype, int]]:
        """{feature: (store reader, stored dtype, dim)}, opened once per process."""
        if self._open and self._pid == os.getpid():
            return self._open
        store = _open_store(self.store_path) if self.views else None
        opened = {}
        for f, name in self.views.items():
            try:
                reader, info = store.reader(name), store.describe(name)  # type: ignore[union-attr]
            except Exception as e:  # the store's own error names the view; keep its message
                raise ModelError(f"cannot read view {name} from {self.store_path}: {e}; "
                                 f"run `python -m {FEATURES[f].writer}`") from None
            opened[f] = (reader, np.dtype(info.dtype), int(info.dim))
        self._open, self._pid = opened, os.getpid()
        return opened

    def store_readers(self) -> dict[str, Any]:
        """{feature: the store's reader of its view}, opened once per process."""
        return {f: reader for f, (reader, _, _) in self._readers().items()}

    def read(self, user_ids: np.ndarray, item_ids: np.ndarray, compact: bool = False,
             spill_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(batch, missing) for n posts (user_ids[j], item_ids[j]); zeros and has_*=False where missing.

        Values are float32, or with compact=True float16 for views stored as float16 (lossless:
        a quarter of the float32 copy's memory per post).

        spill_dir: write each feature array to a `.npy` file there, chunk by chunk, and return it
        memory-mapped read-only. The rows then live in the page cache (reclaimable, like the
        store's own map) instead of the process heap, so a training job's memory does not grow
        with the archive. The files are the caller's to delete (a temporary directory).
        """
        user_ids, item_ids = np.asarray(user_ids, np.int64), np.asarray(item_ids, np.int64)
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
        out: dict[str, np.ndarray] = {}
        missing: dict[str, int] = {}
        for f, (reader, stored, dim) in self._readers().items():
            ids = item_ids if FEATURES[f].keyed_by == "item" else user_ids
            # float16 storage: exact either way (read_vectors widened the values from it)
            dtype = np.float16 if compact and stored == np.float16 else np.float32
            if spill_dir is None:
                out[f], out[f"has_{f}"] = _read_in_memory(reader, ids, dtype, dim)
            else:
                out[f], out[f"has_{f}"] = _read_to_file(reader, ids, dtype, dim, Path(spill_dir) / f)
            missing[f] = int((~out[f"has_{f}"]).sum())
            if missing[f]:
                log.info("features: %d of %d posts have no %s vector (zero vector, has_%s=False)",
                         missing[f], len(ids), self.views[f], f)
        return out, missing


def gather(store_path: str | Path, user_ids: np.ndarray, item_ids: np.ndarray,
           views: Sequence[str] | Mapping[str, str] = ("ic", "od", "sn"), compact: bool = False,
           spill_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One-off `FeatureReader(store_path, views).read(...)`: (batch, missing rows per feature)."""
    return FeatureReader(store_path, views).read(user_ids, item_ids, compact, spill_dir)


def _fill(reader: Any, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[j] = the vector of ids[j] (zeros where missing), CHUNK posts at a time with one
    read per distinct id per chunk; returns found (n,) bool."""
    has = np.zeros(len(ids), bool)
    for s in range(0, len(ids), CHUNK):
        uniq, inverse = np.unique(ids[s:s + CHUNK], return_inverse=True)
        v, ok = read_vectors(reader, uniq)
        values[s:s + len(inverse)] = v[inverse]
        has[s:s + len(inverse)] = ok[inverse]
    return has


def _read_in_memory(reader: Any, ids: np.ndarray, dtype: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, dim) dtype, found (n,)) in memory."""
    values = np.empty((len(ids), dim), dtype)
    return values, _fill(reader, ids, values)


def _read_to_file(reader: Any, ids: np.ndarray, dtype: Any, dim: int, stem: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same into `<stem>-<random>.npy`; the values come back memory-mapped read-only."""
    import uuid

    path = stem.with_name(f"{stem.name}-{uuid.uuid4().hex}.npy")
    values = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(ids), dim))
    has = _fill(reader, ids, values)
    values.flush()
    del values
    return np.load(path, mmap_mode="r"), has


def read_vectors(reader: Any, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values float32 (n, dim), found bool (n,)) for ids in request order, zero rows where missing.

    Values are read in their stored dtype (float16) and widened with torch, which converts
    float16 faster than numpy's cast.
    """
    import torch

    v, ok = reader.get_many(ids, dtype=None)
    v = torch.from_numpy(np.ascontiguousarray(v)).float().numpy()
    ok = np.asarray(ok, bool)
    v[~ok] = 0.0
    return v, ok
