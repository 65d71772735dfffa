"""The Store: open a store folder, manage views, hand out the writer and readers.

    store = Store.open("runs/demo/store", create=True)
    store.create_view("image/vgg16@1", 512, producer={"model": "vgg16", "weights": "random weights"})
    with store.writer("image/vgg16@1") as w:
        w.put(ids, vectors)                 # one transaction per call
    vecs, found = store.reader("image/vgg16@1").get_many(ids)
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import numpy as np

from featurestore import _env, meta
from featurestore._lock import WriterLock
from featurestore.codec import ValueCodec, decode_keys
from featurestore.errors import StoreError
from featurestore.meta import ViewInfo

if TYPE_CHECKING:
    from featurestore.reader import Reader
    from featurestore.writer import Writer

T = TypeVar("T")


_DISK_ERRNOS = ("Input/output error", "No space", "File too large", "quota", "space")


def _disk_error(path: str, e: BaseException) -> StoreError:
    try:
        st = os.statvfs(path)
        free = f"{st.f_bavail * st.f_frsize / 2**20:.1f} MiB free on its disk"
    except OSError:
        free = "free space unknown"
    # LMDB reports a short write (ENOSPC mid-page) as EIO, so EIO is treated as "disk full?" too.
    return StoreError(f"write to store {path} failed ({e}; {free}): the disk is full or failing; "
                      "committed batches are intact: free space and re-run (done work is skipped)")


class Store:
    """An LMDB feature store folder: views of fixed-size values keyed by int64 id."""

    def __init__(self, handle: _env.EnvHandle, *, readonly: bool, max_map_size: int | None,
                 durable: bool | str):
        self._h = handle
        self.path = handle.path
        self.readonly = readonly
        self.max_map_size = max_map_size
        self.durable = durable
        self._lock = WriterLock(self.path)
        self._closed = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False, readonly: bool = False, *,
             map_size: int = _env.DEFAULT_MAP_SIZE, max_map_size: int | None = None,
             durable: bool | str = True, lock: bool = True) -> Store:
        """Open the store at `path` (a folder).

        create: make a new store when none exists (an existing LMDB that is not a store is
            refused either way). readonly: no writes; many processes may read at once.
        map_size: initial LMDB map size (address space, not disk); the writer doubles it on
            MapFullError up to `max_map_size` (None: no limit but the disk).
        durable: True (default): fsync data and meta page on every commit.
            "relaxed": one fsync per commit (LMDB NOMETASYNC): an OS crash or power loss may
            undo the last commit, never consistency. False: no fsync per commit (LMDB NOSYNC),
            the writer syncs when it closes: an OS crash may lose recent commits (and, on a
            filesystem that reorders writes, damage the file). A killed *process* loses
            nothing committed in any mode: the data is already in the OS page cache.
        lock: False only for a read-only copy on read-only media with no writer (LMDB NOLOCK).
        """
        if durable not in (True, False, "relaxed"):
            raise StoreError(f"durable must be True, 'relaxed' or False, got {durable!r}")
        if "://" in os.fspath(path):
            raise StoreError(f"feature store {os.fspath(path)}: a store is an LMDB folder on a local disk "
                             "(LMDB needs local file locks and mmap); give a local path on the store's node")
        if max_map_size is not None and max_map_size < map_size:
            map_size = int(max_map_size)
        h = _env.acquire(os.fspath(path), create=create, readonly=readonly, map_size=map_size,
                         durable=durable, lock=lock)
        return cls(h, readonly=readonly or h.readonly, max_map_size=max_map_size, durable=durable)

    def close(self) -> None:
        """Release this Store's env reference (readers made from it keep their own)."""
        if not self._closed:
            self._closed = True
            self._lock.release()
            _env.release(self._h)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, readonly={self.readonly})"

    @property
    def env(self) -> lmdb.Environment:
        self._check_open()
        return self._h.env

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        if self._h.pid != os.getpid():
            raise StoreError("this Store was opened before fork; open it again in this process "
                             "(readers made with store.reader() are safe to pass)")

    # --------------------------------------------------------------- internals
    def _db(self, name: bytes) -> Any:
        return self._h.db(name)

    def _meta_db(self) -> Any:
        return self._h.db(meta.META_DB)

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run fn in one write transaction; grow the map and retry on MapFullError."""
        self._check_open()
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only; open it with readonly=False to write")
        self._meta_db()      # sub-db handles are opened in read txns, never inside the write txn
        while True:
            txn = self._h.begin(write=True)
            try:
                out = fn(txn)
                txn.commit()
                return out
            except lmdb.MapFullError:
                _abort(txn)
                self._grow()
            except StoreError:
                _abort(txn)
                raise
            except (lmdb.DiskError, lmdb.PanicError) as e:
                _abort(txn)
                raise _disk_error(self.path, e) from None
            except lmdb.Error as e:
                _abort(txn)
                if any(m in str(e) for m in _DISK_ERRNOS):
                    raise _disk_error(self.path, e) from None
                raise StoreError(f"write to store {self.path} failed: {e}") from None
            except BaseException:
                _abort(txn)
                raise

    def _grow(self) -> None:
        cur = self._h.env.info()["map_size"]
        new = cur * _env.GROW_FACTOR
        if self.max_map_size is not None:
            new = min(new, int(self.max_map_size))
        if new <= cur:
            raise StoreError(f"store {self.path} is full: map size {cur} bytes reached max_map_size="
                             f"{self.max_map_size}; committed batches are intact; reopen with a larger max_map_size")
        self._h.env.set_mapsize(new)

    def _info_in(self, txn: lmdb.Transaction, name: str) -> ViewInfo:
        raw = txn.get(meta.view_key(meta.check_view_name(name)), db=self._meta_db())
        if raw is None:
            have = ", ".join(self._list_in(txn)) or "none"
            raise StoreError(f"no view {name!r} in store {self.path} (views: {have}); create it with create_view()")
        return ViewInfo.from_json(raw, name)

    def _list_in(self, txn: lmdb.Transaction) -> list[str]:
        cur = txn.cursor(self._meta_db())
        out = []
        if cur.set_range(b"view:"):
            for k in cur.iternext(values=False):
                k = bytes(k)
                if not k.startswith(b"view:"):
                    break
                out.append(k[5:].decode())
        return out

    # ------------------------------------------------------------------- views
    def create_view(self, name: str, dim: int, dtype: str = "float16",
                    producer: dict[str, Any] | None = None) -> ViewInfo:
        """Create a vector view (idempotent for the same dim/dtype; StoreError for another schema)."""
        ValueCodec.vector(dim, dtype)
        info = ViewInfo(name=meta.check_view_name(name), kind="vector", dim=int(dim), dtype=dtype,
                        producer=dict(producer or {}), created=meta.now_iso())
        return self._create(info)

    def create_record_view(self, name: str, fields: dict[str, Any],
                           producer: dict[str, Any] | None = None) -> ViewInfo:
        """Create a fixed-width record view, e.g. fields={"tags": ("int32", k), "scores": ("float32", k)}."""
        codec = ValueCodec.records(fields)
        norm: list[list[Any]] = [[n, str(codec.record[n].base.name), int(codec.record[n].shape[0])]
                                 for n in codec.record.names or ()]
        info = ViewInfo(name=meta.check_view_name(name), kind="record", dim=0, dtype="record", fields=norm,
                        producer=dict(producer or {}), created=meta.now_iso())
        return self._create(info)

    def _create(self, info: ViewInfo) -> ViewInfo:
        def fn(txn: lmdb.Transaction) -> ViewInfo:
            mdb = self._meta_db()
            raw = txn.get(meta.view_key(info.name), db=mdb)
            if raw is not None:
                old = ViewInfo.from_json(raw, info.name)
                if old.schema() != info.schema():
                    raise StoreError(
                        f"view {info.name!r} exists with another schema ({_schema_str(old)}; asked for "
                        f"{_schema_str(info)}); use a new version, e.g. {info.name.rsplit('@', 1)[0]}@<n+1>")
                if info.producer and old.producer != info.producer:
                    warnings.warn(f"view {info.name!r} exists with producer {old.producer}; keeping it "
                                  f"(asked: {info.producer}); different weights deserve a new version",
                                  stacklevel=4)
                return old
            self._h.env.open_db(meta.data_db(info.name), txn=txn, create=True)
            self._h.env.open_db(meta.errors_db(info.name), txn=txn, create=True)
            txn.put(meta.view_key(info.name), info.to_json(), db=mdb)
            return info

        with self._locked():
            return self._write(fn)

    def describe(self, name: str) -> ViewInfo:
        """The view's metadata with live counts (rows and recorded errors)."""
        self._check_open()
        with self._h.begin() as txn:
            info = self._info_in(txn, name)
        db, edb = self._db(meta.data_db(name)), self._db(meta.errors_db(name))
        with self._h.begin() as txn:
            info.count = txn.stat(db)["entries"]
            info.errors = txn.stat(edb)["entries"]
        return info

    def list_views(self) -> list[str]:
        """Names of all views, sorted."""
        self._check_open()
        with self._h.begin() as txn:
            return self._list_in(txn)

    def drop_view(self, name: str) -> None:
        """Delete a view, its errors and its metadata (readers of it must be re-made)."""
        self.describe(name)
        handles = [self._db(meta.data_db(name)), self._db(meta.errors_db(name))]

        def fn(txn: lmdb.Transaction) -> None:
            self._info_in(txn, name)
            for h in handles:
                txn.drop(h, delete=True)
            txn.delete(meta.view_key(name), db=self._meta_db())

        with self._locked():
            self._write(fn)
        for sub in (meta.data_db(name), meta.errors_db(name)):
            self._h.dbs.pop(sub, None)

    def _locked(self) -> _Locked:
        return _Locked(self._lock)

    # -------------------------------------------------------- writer & readers
    def writer(self, name: str) -> Writer:
        """The view's writer; use as `with store.writer(name) as w:` (takes the store's writer lock)."""
        from featurestore.writer import Writer

        self._check_open()
        return Writer(self, name)

    def reader(self, name: str) -> Reader:
        """A picklable read handle on a view; each process opens the env lazily, read-only."""
        from featurestore.reader import Reader

        self.describe(name)          # fail now, in the caller, for a missing view
        return Reader(self.path, name, handle=self._h)

    def errors(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Ids recorded as failed for the view and their reasons, sorted by id."""
        self.describe(name)
        edb = self._db(meta.errors_db(name))
        with self._h.begin() as txn:
            items = list(txn.cursor(edb).iternext())
        ids = decode_keys([k for k, _ in items])
        return ids, [bytes(v).decode("utf-8", errors="replace") for _, v in items]

    # ------------------------------------------------------------ maintenance
    def snapshot(self, dest: str | os.PathLike) -> str:
        """A compact copy of the whole store at `dest` (a new or empty folder), consistent as of
        one moment; writes may go on meanwhile (LMDB copies inside one read transaction)."""
        self._check_open()
        dest = os.fspath(dest)
        if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
            raise StoreError(f"snapshot destination {dest} exists and is not an empty folder")
        os.makedirs(dest, exist_ok=True)
        try:
            self._h.env.copy(dest, compact=True)
        except lmdb.Error as e:
            raise StoreError(f"snapshot to {dest} failed: {e}") from None
        return dest

    def info(self) -> dict[str, Any]:
        """Everything `featurestore info` prints: views, counts, errors by reason, metadata."""
        self._check_open()
        views = {}
        for name in self.list_views():
            d = self.describe(name).__dict__.copy()
            _, reasons = self.errors(name)
            by: dict[str, int] = {}
            for r in reasons:
                by[r] = by.get(r, 0) + 1
            d["errors_by_reason"] = by
            views[name] = d
        e = self._h.env
        return {"path": self.path, "map_size": e.info()["map_size"],
                "file_bytes": os.path.getsize(os.path.join(self.path, _env.DATA_FILE)),
                "views": views, "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def verify(self) -> list[str]:
        """Problems found by a full check (empty list: healthy). See featurestore.verify."""
        from featurestore.verify import verify_store

        return verify_store(self)


class _Locked:
    """Context manager holding the (re-entrant) writer lock for a metadata change."""

    def __init__(self, lock: WriterLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def _abort(txn: lmdb.Transaction) -> None:
    try:
        txn.abort()
    except lmdb.Error:
        pass


def _schema_str(i: ViewInfo) -> str:
    return f"dim={i.dim}, dtype={i.dtype}" if i.kind == "vector" else f"fields={i.fields}"


