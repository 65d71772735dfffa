"""The writer: validated, sorted batches committed one transaction per `put`.

Each `put(ids, values)` is all-or-nothing: validated in full before LMDB is touched, then
written with `putmulti` in key order (the append fast path when every key is beyond the
view's last key) together with the view's metadata (count, digest) in ONE transaction, so
a crash leaves either the whole batch or none of it. Re-putting an id overwrites it with
the same bytes (idempotent) and clears any error recorded for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from featurestore import meta
from featurestore.codec import (
    as_ids,
    check_unique,
    digest_sum,
    encode_keys,
    row_hashes,
    split_keys,
)
from featurestore.errors import StoreError
from featurestore.meta import ViewInfo

if TYPE_CHECKING:
    from featurestore.store import Store

MAX_REASON_BYTES = 1000
_U64 = 1 << 64


class Writer:
    """Writes one view; use as a context manager (holds the store's writer lock)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = meta.check_view_name(name)
        self._active = False
        info = store.describe(name)              # fails now for a missing view
        self.codec = info.codec()
        self.rows_written = 0
        self.errors_written = 0

    def __enter__(self) -> Writer:
        if self.store.readonly:
            raise StoreError(f"store {self.store.path} is open read-only; open it with readonly=False to write")
        self.store._lock.acquire()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush (when the store is not durable per commit) and release the writer lock."""
        if not self._active:
            return
        self._active = False
        try:
            if self.store.durable is not True:
                self.store.env.sync(True)
        finally:
            self.store._lock.release()

    def _check(self) -> None:
        if not self._active:
            raise StoreError("use the writer as a context manager: `with store.writer(name) as w: w.put(...)`")

    # ------------------------------------------------------------------ values
    def put(self, ids: Any, values: Any) -> int:
        """Write one batch (one transaction): ids (n,) int64 >= 0, values (n, dim) floats or
        records. Refuses the whole batch for a wrong shape/dtype, NaN/inf (naming the ids),
        bad or duplicate ids. Returns the number of rows written."""
        self._check()
        ids = as_ids(ids)
        arr = self.codec.encode(values, ids)           # (n, dim) or (n,) records, little-endian
        n = len(ids)
        if n == 0:
            return 0
        if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
            order = np.argsort(ids, kind="stable")
            ids, arr = ids[order], arr[order]
            check_unique(ids)
        nbytes = self.codec.nbytes
        vblob = arr.tobytes()
        keys = split_keys(encode_keys(ids))
        vals = [vblob[i:i + nbytes] for i in range(0, n * nbytes, nbytes)]
        add = digest_sum(row_hashes(ids, vblob, nbytes))
        name = self.name
        data, errs = meta.data_db(name), meta.errors_db(name)
        st = self.store

        db, edb = st._db(data), st._db(errs)      # resolved outside the write txn

        def fn(txn: lmdb.Transaction) -> None:
            info = st._info_in(txn, name)
            cur = txn.cursor(db)
            append = not cur.last() or bytes(cur.key()) < keys[0]
            sub = 0 if append else _old_digest(txn, db, keys, ids, nbytes)
            cur.putmulti(zip(keys, vals), append=append, overwrite=True)
            if txn.stat(edb)["entries"]:
                for k in keys:           # an id that now has a value is no longer failed
                    txn.delete(k, db=edb)
            _save_info(txn, st, info, db, edb, (int(info.digest, 16) + add - sub) % _U64)

        st._write(fn)
        self.rows_written += n
        return n

    def existing(self, ids: Any) -> np.ndarray:
        """Bool mask (n,): which ids already have a value (to skip work that is done)."""
        ids = as_ids(ids)
        keys = split_keys(encode_keys(ids))
        st = self.store
        db = st._db(meta.data_db(self.name))
        with st._h.begin(buffers=True) as txn:
            get = txn.get
            flags = bytearray(len(keys))
            for i, k in enumerate(keys):
                if get(k, None, db) is not None:
                    flags[i] = 1
        return np.frombuffer(bytes(flags), dtype=np.bool_).copy()

    # ------------------------------------------------------------------ errors
    def put_errors(self, ids: Any, reasons: str | Sequence[str]) -> int:
        """Record failed ids with a reason each (one transaction); cleared when later put."""
        self._check()
        ids = as_ids(ids)
        n = len(ids)
        if isinstance(reasons, str):
            reasons = [reasons] * n
        reasons = list(reasons)
        if len(reasons) != n:
            raise StoreError(f"put_errors: {n} ids but {len(reasons)} reasons")
        if n == 0:
            return 0
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        check_unique(ids)
        enc = [str(reasons[i]).encode("utf-8")[:MAX_REASON_BYTES] or b"unknown" for i in order.tolist()]
        keys = split_keys(encode_keys(ids))
        name, st = self.name, self.store

        db, edb = st._db(meta.data_db(name)), st._db(meta.errors_db(name))

        def fn(txn: lmdb.Transaction) -> None:
            info = st._info_in(txn, name)
            txn.cursor(edb).putmulti(zip(keys, enc), overwrite=True)
            _save_info(txn, st, info, db, edb, int(info.digest, 16))

        st._write(fn)
        self.errors_written += n
        return n


def _old_digest(txn: lmdb.Transaction, db: Any, keys: list[bytes], ids: np.ndarray, nbytes: int) -> int:
    """Digest share of the values this batch overwrites (0 for new keys)."""
    get = txn.get
    old_idx, old_vals = [], []
    for i, k in enumerate(keys):
        v = get(k, None, db)
        if v is not None and len(v) == nbytes:
            old_idx.append(i)
            old_vals.append(v)
    if not old_idx:
        return 0
    return digest_sum(row_hashes(ids[np.asarray(old_idx)], b"".join(old_vals), nbytes))


def _save_info(txn: lmdb.Transaction, st: Store, info: ViewInfo, db: Any, edb: Any, digest: int) -> None:
    """Metadata in the same transaction as the data: count and digest never disagree with it."""
    info.count = txn.stat(db)["entries"]
    info.errors = txn.stat(edb)["entries"]
    info.digest = format(digest, "x")
    info.updated = meta.now_iso()
    txn.put(meta.view_key(info.name), info.to_json(), db=st._meta_db())
