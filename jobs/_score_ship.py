"""Features shipped by the driver to scoring tasks, so that they score on any node.

The LMDB store sits on one node's local disk. The driver, which runs there as its single
writer, is also its single reader for scoring: per shard it reads the distinct user and item
ids the shard's posts need, in their stored dtype (float16), and sends them through Ray's object
store with the task (`ship`). The task rebuilds each batch's feature arrays from them
(`ShippedFeatures.read`: the same batch `jobs.features.FeatureReader.read` gives), so it needs no
store and runs wherever there are CPUs or GPUs. Memory in flight is bounded by the number of
shards in flight (the job's `--max-in-flight`); arrays arrive zero-copy (read-only views of the
object store) on the task's node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

CHUNK = 65536  # ids per store read: bounds each read transaction

@dataclasses.dataclass
class ShippedFeatures:
    """One shard's feature rows: per feature, the distinct ids (sorted), their stored rows
    (m, dim) in the stored dtype and whether each was found."""

    keyed_by: dict[str, str]            # feature -> "user" | "item"
    ids: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    found: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for d in (self.ids, self.values, self.found) for a in d.values())

    def read(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(batch, missing) for posts (user_ids[j], item_ids[j]), as `FeatureReader.read` returns it:
        {f: (n, dim) float32 (zero rows where missing), has_f: (n,) bool}, {f: rows missing}."""
        import torch

        out: dict[str, np.ndarray] = {}
        missing: dict[str, int] = {}
        for f, ids in self.ids.items():
            keys = np.asarray(item_ids if self.keyed_by[f] == "item" else user_ids, np.int64)
            pos = np.searchsorted(ids, keys)
            if len(keys) and (pos.max(initial=0) >= len(ids) or not np.array_equal(ids[pos], keys)):
                raise ValueError(f"shipped {f} features lack ids the batch asks for")
            has = self.found[f][pos]
            # gather in the stored dtype (half the bytes), then widen with torch (faster than numpy)
            v = torch.from_numpy(np.ascontiguousarray(self.values[f][pos])).float().numpy()
            v[~has] = 0.0
            out[f], out[f"has_{f}"] = v, has
            missing[f] = int((~has).sum())
        return out, missing


def ship(readers: Mapping[str, Any], keyed_by: Mapping[str, str], user_ids: np.ndarray,
         item_ids: np.ndarray) -> ShippedFeatures:
    """Read, in this process, the rows a shard's posts need from the store's `readers`
    ({feature: featurestore Reader}): each distinct id once, in its stored dtype."""
    ids: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    found: dict[str, np.ndarray] = {}
    for f, reader in readers.items():
        keys = np.unique(np.asarray(item_ids if keyed_by[f] == "item" else user_ids, np.int64))
        parts = [reader.get_many(keys[s:s + CHUNK], dtype=None) for s in range(0, len(keys), CHUNK)]
        if parts:
            values[f] = np.concatenate([np.asarray(v) for v, _ in parts])
            found[f] = np.concatenate([np.asarray(ok, bool) for _, ok in parts])
        else:
            values[f], found[f] = np.zeros((0, reader.info.dim), reader.info.dtype), np.zeros(0, bool)
        ids[f] = keys
    return ShippedFeatures({f: keyed_by[f] for f in readers}, ids, values, found)
