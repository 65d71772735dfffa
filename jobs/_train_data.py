"""The split as `jobs.train` trains on it: vocabularies, posts as arrays, features attached.

`load_split` reads split/{train,val}.parquet into `SplitData` (training vocabularies, the
train and validation posts as `PostData`); `attach_features` reads the store features a
model needs into them, once per job for all models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jobs._spill import spill_dir
from jobs.errors import JobError
from jobs.posts import post_data, tag_vocabulary
from models.recsys.data import IdIndex, PostData

log = logging.getLogger("jobs")


@dataclass
class SplitData:
    """Training vocabularies and the train/val posts as index arrays."""

    user_ids: np.ndarray  # (U,) int64, sorted: row r of the user table
    item_ids: np.ndarray  # (I,) int64, sorted
    tags: np.ndarray  # (T,) str, sorted: row t of the tag matrix
    train: PostData
    val: PostData
    train_keys: tuple[np.ndarray, np.ndarray]  # (user_id, item_id) per train post, for features
    val_keys: tuple[np.ndarray, np.ndarray]
    dropped: dict[str, int]


def _read(split_dir: Path, name: str) -> pa.Table:
    path = split_dir / f"{name}.parquet"
    if not path.is_file():
        raise JobError(f"{path} does not exist; run `python -m jobs.prepare` first (or pass --split)")
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    missing = [c for c in ("user_id", "item_id", "tags") if c not in t.column_names]
    if missing:
        raise JobError(f"{path} lacks column(s) {missing}; expected post_id, user_id, item_id, tags")
    return t


def load_split(split_dir: Path) -> SplitData:
    """Vocabularies from train; val posts mapped onto them (unseen users/items -> -1)."""
    train, val = _read(split_dir, "train"), _read(split_dir, "val")
    if train.num_rows == 0:
        raise JobError(f"{split_dir}/train.parquet has no posts; check jobs.prepare's p-core settings")
    tags = tag_vocabulary(train["tags"])
    user_ids = np.unique(train["user_id"].to_numpy().astype(np.int64))
    item_ids = np.unique(train["item_id"].to_numpy().astype(np.int64))
    users, items = IdIndex(user_ids), IdIndex(item_ids)
    tr, _ = post_data(train, users, items, tags)
    va, dropped = post_data(val, users, items, tags)
    if dropped:
        log.info("train: dropped %d validation tags never seen in training", dropped)
    keys = lambda t: (t["user_id"].to_numpy().astype(np.int64), t["item_id"].to_numpy().astype(np.int64))  # noqa: E731
    return SplitData(user_ids, item_ids, tags, tr, va, keys(train), keys(val),
                     {"val_tags_unseen_in_train": dropped,
                      "val_posts_unseen_user": int((va.user_index < 0).sum())})


SPILL_PREFIX = ".train-features-"  # + "<pid>-<random>": a killed job's files are removed by the next


def _spill_dir(parent: Path) -> Any:
    """A TemporaryDirectory for this run's feature files beside the store (jobs/_spill.py)."""
    return spill_dir(parent, SPILL_PREFIX, "train")


def attach_features(data: SplitData, store: Path, features: tuple[str, ...], cache: dict) -> dict[str, dict]:
    """Gather the features a model needs into data.train/val (cached across models).

    Training features are spilled to memory-mapped files in a temporary directory beside the
    store (deleted when `cache` is dropped): they grow with the archive (IC + OD in float16 per
    post), and in the page cache they do not count against the job's heap, so the job's
    memory does not grow with the archive. Validation features (one holdout post per user at
    most) stay in memory.
    """
    from jobs.features import FeatureReader, check_views

    info = check_views(store, features)  # errors before any work
    if features and "_spill" not in cache:
        cache["_spill"] = _spill_dir(Path(store).parent)
    for f in features:
        if f not in cache:
            reader = FeatureReader(store, [f])
            tr, tr_missing = reader.read(*data.train_keys, compact=True, spill_dir=cache["_spill"].name)
            va, va_missing = reader.read(*data.val_keys, compact=True)
            cache[f] = (tr, va, {"train_missing": tr_missing.get(f, 0), "val_missing": va_missing.get(f, 0)})
        tr, va, counts = cache[f]
        data.train.features[f], data.train.has[f] = tr[f], tr[f"has_{f}"]
        data.val.features[f], data.val.has[f] = va[f], va[f"has_{f}"]
        info[f].update(counts)
    return info
