"""Deliver results from Ray tasks / Ray Data to the store's single writer (ray imported lazily).

Design: the DRIVER is the writer. A job submitted with `ray job submit` runs its driver on
the head node, where the store lives on local disk (LMDB must). Workers compute; their
results come back through Ray's object store and the driver consumes them as they finish
(`ray.wait` over task refs, or `Dataset.iter_batches()` for Ray Data, which also gives
back-pressure), buffers them into big sorted batches and commits one transaction per batch.
The driver holds the store's writer lock for the whole job, errors surface in the driver,
and no extra actor or copy hop is involved.

When the driver cannot run on the store's node (Ray Client, a store on a worker's disk),
`writer_actor()` starts one actor pinned to that node (NodeAffinitySchedulingStrategy,
soft=False) that owns the writer; tasks call `actor.put.remote(view, ids, values)` with big
batches (one transaction each) and the actor runs them one at a time.

    refs = [extract.remote(shard) for shard in shards]           # each -> {"id", "vector"[, "error"]}
    write_from_refs(store, "image/vgg16@1", refs)
    write_dataset(store, "image/vgg16@1", ds)                     # ds rows: id, vector[, error]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import StoreError

if TYPE_CHECKING:
    from featurestore.store import Store

DEFAULT_BATCH_ROWS = 8192


def _is_ref(x: Any) -> bool:
    return type(x).__name__ == "ObjectRef"


def _resolve(source: Iterable[Any]) -> Iterator[Any]:
    """Batches in completion order: ObjectRefs are awaited with ray.wait, others passed through."""
    items = list(source) if isinstance(source, (list, tuple)) else source
    if isinstance(items, list) and any(_is_ref(x) for x in items):
        import ray

        refs = [x for x in items if _is_ref(x)]
        yield from (x for x in items if not _is_ref(x))
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            for r in done:
                yield ray.get(r)
        return
    for x in items:
        yield _get_ref(x) if _is_ref(x) else x


def _get_ref(x: Any) -> Any:
    import ray

    return ray.get(x)


def _split(batch: Any, id_col: str, value_col: str, error_col: str) -> tuple[np.ndarray, Any, list[str] | None]:
    """One delivered batch -> (ids, values, reasons or None). Accepts dicts (Ray Data numpy
    batches), pandas frames, or tuples (ids, values[, reasons])."""
    if isinstance(batch, tuple):
        ids, vals = batch[0], batch[1]
        reasons = list(batch[2]) if len(batch) > 2 and batch[2] is not None else None
        return np.asarray(ids), vals, reasons
    try:
        ids = np.asarray(batch[id_col])
    except (KeyError, TypeError, IndexError):
        raise StoreError(f"a delivered batch has no {id_col!r} column; pass id_col=... "
                         "(batches must hold ids and values)") from None
    vals = batch[value_col] if value_col in batch else None
    reasons = None
    if error_col in batch:
        reasons = ["" if r is None else str(r) for r in list(batch[error_col])]
    if vals is not None and not isinstance(vals, np.ndarray):
        vals = np.stack([np.asarray(v) for v in vals]) if len(vals) else np.zeros((0, 0), np.float32)
    return ids, vals, reasons


def write_from_refs(store: Store, view: str, source: Iterable[Any], *, id_col: str = "id",
                    value_col: str = "vector", error_col: str = "error",
                    batch_rows: int = DEFAULT_BATCH_ROWS, skip_existing: bool = False) -> dict[str, int]:
    """Consume result batches (ObjectRefs, Ray Data batches or plain tuples) and write them.

    Rows whose `error_col` is a non-empty string are recorded with put_errors; the others are
    buffered and committed `batch_rows` at a time (one transaction each). skip_existing drops
    ids that already have a value (resume). Returns {"rows", "errors", "commits", "skipped"}.
    """
    stats = {"rows": 0, "errors": 0, "commits": 0, "skipped": 0}
    buf_ids: list[np.ndarray] = []
    buf_vals: list[Any] = []
    buffered = 0
    with store.writer(view) as w:
        def flush() -> None:
            nonlocal buffered
            if not buffered:
                return
            ids = np.concatenate(buf_ids)
            vals = np.concatenate(buf_vals)           # (rows, dim) vectors or (rows,) records
            w.put(ids, vals)
            stats["rows"] += len(ids)
            stats["commits"] += 1
            buf_ids.clear()
            buf_vals.clear()
            buffered = 0

        for batch in _resolve(source):
            ids, vals, reasons = _split(batch, id_col, value_col, error_col)
            if len(ids) == 0:
                continue
            ok = np.ones(len(ids), bool)
            if reasons is not None:
                bad = np.array([bool(r) for r in reasons])
                if bad.any():
                    w.put_errors(ids[bad], [r for r, b in zip(reasons, bad) if b])
                    stats["errors"] += int(bad.sum())
                ok = ~bad
            if vals is None:
                if ok.any():
                    raise StoreError(f"a delivered batch has no {value_col!r} column for {int(ok.sum())} rows")
                continue
            if skip_existing:
                done = w.existing(ids) & ok
                stats["skipped"] += int(done.sum())
                ok &= ~done
            if not ok.any():
                continue
            buf_ids.append(ids[ok])
            buf_vals.append(np.asarray(vals)[ok])
            buffered += int(ok.sum())
            if buffered >= batch_rows:
                flush()
        flush()
    return stats


def write_dataset(store: Store, view: str, ds: Any, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                  **kw: Any) -> dict[str, int]:
    """Write a Ray Dataset with columns id, vector[, error] through the driver (see module doc)."""
    return write_from_refs(store, view, ds.iter_batches(batch_size=batch_rows, batch_format="numpy"),
                           batch_rows=batch_rows, **kw)


# ----------------------------------------------------------------- writer actor
class StoreWriterActor:
    """The store's single writer as a Ray actor (see `writer_actor`); one call = one transaction."""

    def __init__(self, path: str, **open_kw: Any) -> None:
        from featurestore.store import Store

        self.store = Store.open(path, **open_kw)
        self.writers: dict[str, Any] = {}

    def _w(self, view: str) -> Any:
        if view not in self.writers:
            self.writers[view] = self.store.writer(view).__enter__()
        return self.writers[view]

    def create_view(self, name: str, dim: int, dtype: str = "float16", producer: dict | None = None) -> dict:
        return self.store.create_view(name, dim, dtype, producer).__dict__

    def put(self, view: str, ids: Any, values: Any) -> int:
        return int(self._w(view).put(ids, values))

    def put_errors(self, view: str, ids: Any, reasons: Any) -> int:
        return int(self._w(view).put_errors(ids, reasons))

    def existing(self, view: str, ids: Any) -> np.ndarray:
        return self._w(view).existing(ids)

    def close(self) -> dict[str, int]:
        """Release the writer lock and the store; returns rows written per view."""
        rows = {v: w.rows_written for v, w in self.writers.items()}
        for w in self.writers.values():
            w.close()
        self.writers.clear()
        self.store.close()
        return rows


def writer_actor(store_path: str, node_id: str | None = None, **open_kw: Any) -> Any:
    """Start the store's writer actor on `node_id` (default: this process's node).

    The actor takes the store's writer lock at its first put and keeps it until
    `ray.get(actor.close.remote())`; no other process may write meanwhile.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = node_id or ray.get_runtime_context().get_node_id()
    cls = ray.remote(num_cpus=0)(StoreWriterActor)     # a sync actor runs one call at a time
    return cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
        str(store_path), **open_kw)
