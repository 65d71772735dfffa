"""Readers: picklable handles on one view, opened lazily in each process.

A Reader pickles as (store path, view name) only; the first call in a process opens the
environment read-only (or shares the one this process already has) and remembers the pid,
so a reader passed to Ray tasks, multiprocessing workers or a forked child never uses an
env from another process. Every call runs in its own short read transaction: a long scan
never pins old pages while the writer writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np

from featurestore import _env, meta
from featurestore.codec import MAX_ID, ValueCodec, as_ids, decode_keys, encode_key, encode_keys
from featurestore.errors import StoreError
from featurestore.meta import ViewInfo

DEFAULT_SCAN_BATCH = 65536


class Reader:
    """Read one view: get, get_many, scan, count. Safe to pickle and to use after fork."""

    def __init__(self, path: str, name: str, handle: _env.EnvHandle | None = None) -> None:
        self.path = os.fspath(path)
        self.name = meta.check_view_name(name)
        self._h: _env.EnvHandle | None = None
        self._info: ViewInfo | None = None
        if handle is not None and handle.pid == os.getpid():
            with _env._REG_LOCK:
                handle.refs += 1
            self._h = handle

    # ------------------------------------------------------------ process-local state
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name}      # never the env

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.name = state["path"], state["name"]
        self._h, self._info = None, None

    def _handle(self) -> _env.EnvHandle:
        h = self._h
        if h is None or h.pid != os.getpid():
            self._h = h = _env.acquire(self.path, readonly=True)
            self._info = None
        return h

    def close(self) -> None:
        """Release this process's env reference (optional; process exit does it too)."""
        h, self._h = self._h, None
        if h is not None:
            _env.release(h)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Reader({self.path!r}, {self.name!r})"

    @property
    def info(self) -> ViewInfo:
        """The view's metadata (cached per process)."""
        h = self._handle()
        if self._info is None:
            with h.begin() as txn:
                raw = txn.get(meta.view_key(self.name), db=h.db(meta.META_DB))
            if raw is None:
                raise StoreError(f"no view {self.name!r} in store {self.path}")
            self._info = ViewInfo.from_json(raw, self.name)
        return self._info

    @property
    def codec(self) -> ValueCodec:
        return self.info.codec()

    @property
    def dim(self) -> int:
        return self.info.dim

    def _db(self) -> Any:
        _ = self.info                                   # loads (and checks) the view's metadata
        return self._handle().db(meta.data_db(self.name))

    # -------------------------------------------------------------------- reads
    def count(self) -> int:
        """Rows in the view (exact, O(1))."""
        h, db = self._handle(), self._db()
        with h.begin() as txn:
            return int(txn.stat(db)["entries"])

    def get(self, id_: int, dtype: Any = np.float32) -> np.ndarray | None:
        """One vector (dim,) (or record), or None when the id is absent."""
        vals, found = self.get_many([id_], dtype=dtype)
        return vals[0] if found[0] else None

    def get_many(self, ids: Any, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Values for ids in request order: ((n, dim) array, found (n,) bool).

        Missing ids give zero rows and found=False. dtype: the float dtype to return for
        vector views (None: the stored dtype, fastest). Record views give a structured (n,) array.
        """
        ids = as_ids(ids)
        codec, db, h = self.codec, self._db(), self._handle()
        n, nb = len(ids), codec.nbytes
        out = bytearray(n * nb)
        mv = memoryview(out)
        flags = bytearray(n)
        kb = encode_keys(ids)
        i = 0
        try:
            with h.begin(buffers=True) as txn:
                get = txn.get
                for i in range(n):
                    v = get(kb[8 * i:8 * i + 8], None, db)
                    if v is not None:
                        mv[i * nb:(i + 1) * nb] = v          # ValueError when the stored size is wrong
                        flags[i] = 1
        except ValueError:
            raise StoreError(f"corrupt value for id {int(ids[i])} in view {self.name!r}: wrong size "
                             f"(the view stores {nb} bytes); run `featurestore verify`") from None
        del mv
        found = np.frombuffer(bytes(flags), dtype=np.bool_).copy()
        return codec.decode_block(out, ids, found, dtype=_out_dtype(codec, dtype)), found

    def scan(self, batch_size: int = DEFAULT_SCAN_BATCH, start: int | None = None, stop: int | None = None,
             dtype: Any = np.float32, _check: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches (ids (b,) int64 ascending, values (b, dim)) over ids in [start, stop).

        Each batch is read in its own transaction, resuming after the last id seen, so
        memory stays bounded and the writer is never held back by a long scan.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise StoreError(f"batch_size must be a positive int, got {batch_size!r}")
        codec, db, h = self.codec, self._db(), self._handle()
        nb = codec.nbytes
        next_key = b"" if start is None else encode_key(start)
        stop_id = None if stop is None else int(as_ids(stop, "stop")[0])
        while True:
            with h.begin() as txn:
                cur = txn.cursor(db)
                if not cur.set_range(next_key):
                    return
                items = list(islice(cur.iternext(), batch_size))
            if not items:
                return
            keys, vals = zip(*items)
            ids = decode_keys(keys)
            done = len(items) < batch_size
            if stop_id is not None and ids[-1] >= stop_id:
                cut = int(np.searchsorted(ids, stop_id))
                ids, vals, done = ids[:cut], vals[:cut], True
            if len(ids):
                if min(map(len, vals)) != nb or max(map(len, vals)) != nb:
                    bad = next(j for j, v in enumerate(vals) if len(v) != nb)
                    raise StoreError(f"corrupt value for id {int(ids[bad])} in view {self.name!r}: "
                                     f"{len(vals[bad])} bytes, the view stores {nb}; run `featurestore verify`")
                blob = b"".join(vals)
                if _check:
                    yield ids, codec.decode_block(blob, ids, dtype=_out_dtype(codec, dtype))
                else:                                   # read_all checks after its own conversion
                    yield ids, np.frombuffer(blob, dtype=codec.record, count=len(ids))
            if done or ids[-1] >= MAX_ID:
                return
            next_key = encode_key(int(ids[-1]) + 1)

    def read_all(self, dtype: Any = np.float32, start: int | None = None, stop: int | None = None,
                 batch_size: int = DEFAULT_SCAN_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """The whole view (or [start, stop)) as dense arrays: ids (n,) and values (n, dim) / records.

        Values are converted straight into one preallocated array (no per-batch copies), so
        memory is the result plus one batch. Rows added while it runs may or may not appear.
        """
        codec = self.codec
        out_dt = _out_dtype(codec, dtype)
        cap = self.count() if start is None and stop is None else 0
        shape = (cap, codec.dim) if codec.kind == "vector" else (cap,)
        vals = np.empty(shape, out_dt or (codec.record.base if codec.kind == "vector" else codec.record))
        ids = np.empty(cap, np.int64)
        pos, extra_i, extra_v = 0, [], []
        for bi, bv in self.scan(batch_size=batch_size, start=start, stop=stop, dtype=None, _check=False):
            m = len(bi)
            if pos + m <= cap:
                vals[pos:pos + m] = bv                  # converts float16 -> dtype in the copy
                ids[pos:pos + m] = bi
                codec._check_stored_finite(vals[pos:pos + m], bi, None)
            else:                                       # the view grew meanwhile (or a range scan)
                extra_i.append(bi)
                extra_v.append(codec.decode_block(bv.tobytes(), bi, dtype=out_dt))
            pos += m
        ids, vals = ids[:min(pos, cap)], vals[:min(pos, cap)]
        if extra_i:
            ids, vals = np.concatenate([ids, *extra_i]), np.concatenate([vals, *extra_v])
        return ids, vals

    def ids(self, batch_size: int = DEFAULT_SCAN_BATCH) -> np.ndarray:
        """All ids of the view, ascending (keys only, read in batches; values are not copied)."""
        h, db = self._handle(), self._db()
        parts, next_key = [], b""
        while True:
            with h.begin() as txn:
                cur = txn.cursor(db)
                if not cur.set_range(next_key):
                    break
                keys = list(islice(cur.iternext(values=False), batch_size))
            ids = decode_keys(keys)
            parts.append(ids)
            if len(keys) < batch_size or ids[-1] >= MAX_ID:
                break
            next_key = encode_key(int(ids[-1]) + 1)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

def _out_dtype(codec: ValueCodec, dtype: Any) -> Any:
    """The dtype to return: records as stored; vectors as asked (None: as stored)."""
    if codec.kind != "vector" or dtype is None:
        return None
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise StoreError(f"dtype must be a float dtype or None, got {dt}")
    return dt
