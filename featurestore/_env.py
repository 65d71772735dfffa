"""Opening the LMDB environment: checks before touching a file, and one env per process.

LMDB must not be opened twice in one process (closing one handle drops the other's
POSIX locks), and an environment inherited through fork must never be used or closed in
the child. So envs live in a registry keyed by (pid, real path): a Store and the readers
of the same process share one env; a child process opens its own.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import lmdb

from featurestore import meta
from featurestore.errors import StoreError

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
MAX_DBS = 512                      # 2 per view (+1): 255 views
DEFAULT_MAP_SIZE = 1 << 36         # 64 GiB of address space; the file grows only as data arrives
GROW_FACTOR = 2


@dataclass
class EnvHandle:
    """An open environment shared by the Store and readers of one process."""

    env: lmdb.Environment
    path: str
    readonly: bool
    pid: int
    refs: int = 0
    dbs: dict[bytes, Any] = field(default_factory=dict)     # sub-db name -> handle
    lock: threading.Lock = field(default_factory=threading.Lock)

    def db(self, name: bytes, create: bool = False) -> Any:
        """A named sub-database handle, opened once per env.

        Call it BEFORE beginning the transaction that uses the handle: LMDB does not show a
        handle opened later to a transaction that is already running.
        """
        h = self.dbs.get(name)
        if h is not None:
            return h
        with self.lock:
            if name in self.dbs:
                return self.dbs[name]
            try:
                # No txn passed: py-lmdb opens it in its own txn and keeps the handle (a read
                # txn passed in would forget it). In a writable env that is a short empty
                # write txn, so never call this while this thread holds a write txn.
                h = self.env.open_db(name, create=create)
            except lmdb.NotFoundError:
                raise StoreError(f"{self.path}: sub-database {name.decode(errors='replace')!r} is missing; "
                                 "the view may have been dropped (run `featurestore info`)") from None
            self.dbs[name] = h
            return h

    def begin(self, **kw: Any) -> lmdb.Transaction:
        """Begin a txn, adopting a map that another process grew (MDB_MAP_RESIZED)."""
        try:
            return self.env.begin(**kw)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(**kw)


_REGISTRY: dict[tuple[int, str], EnvHandle] = {}
_REG_LOCK = threading.Lock()


def _prechecks(path: str, create: bool, readonly: bool) -> bool:
    """Check the folder before LMDB sees it; returns True when a new store must be made."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise StoreError(f"{path} is a file, not a store folder; a store is a directory holding data.mdb")
    data = os.path.join(path, DATA_FILE)
    if not os.path.exists(data) or os.path.getsize(data) == 0:
        if not create:
            raise StoreError(f"no feature store at {path} (no {DATA_FILE}); create one with "
                             "Store.open(path, create=True)")
        if readonly:
            raise StoreError(f"cannot create a store at {path} read-only; open with readonly=False")
        os.makedirs(path, exist_ok=True)
        return True
    return False


def _check_size(env: lmdb.Environment, path: str) -> None:
    """A data file shorter than its last page was truncated: refuse before a read faults (SIGBUS)."""
    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    have = os.path.getsize(os.path.join(path, DATA_FILE))
    if have < need:
        raise StoreError(f"{path}/{DATA_FILE} is truncated: {have} bytes, the store needs {need}; "
                         "restore it from a snapshot")


# meminit=True: LMDB zeroes the unused part of pages it writes; without it stray process
# memory (other views' values, anything malloc'd before) ends up in a file other teams read.
def _open_raw(path: str, readonly: bool, map_size: int, durable: bool | str, lock: bool) -> lmdb.Environment:
    try:
        return lmdb.open(path, subdir=True, readonly=readonly, lock=lock, max_dbs=MAX_DBS,
                         map_size=map_size, sync=durable is not False, metasync=durable is True, readahead=False,
                         meminit=True, max_readers=1024, create=not readonly)
    except lmdb.InvalidError:
        raise StoreError(f"{path}/{DATA_FILE} is not an LMDB file, so not a feature store") from None
    except lmdb.VersionMismatchError as e:
        raise StoreError(f"{path}: LMDB version mismatch ({e}); not a store this code made") from None
    except lmdb.Error as e:
        hint = " (a read-only copy on read-only media? open it with readonly=True, lock=False)" if readonly else ""
        raise StoreError(f"cannot open store at {path}: {e}{hint}") from None


def _check_or_init_header(env: lmdb.Environment, path: str, new: bool, create: bool, readonly: bool) -> None:
    try:
        with env.begin() as txn:
            main_entries = txn.stat()["entries"]
            has_meta = txn.get(meta.META_DB) is not None
        if has_meta:
            with env.begin() as txn:
                mdb = env.open_db(meta.META_DB, txn=txn, create=False)
                raw = txn.get(meta.STORE_KEY, db=mdb)
            meta.check_header(raw, path)
            return
    except lmdb.IncompatibleError:
        raise StoreError(f"{path} is an LMDB environment but not a feature store") from None
    except lmdb.Error as e:
        raise StoreError(f"{path}: cannot read the store header ({e}); run `featurestore verify`") from None
    # No metadata: only an empty environment (ours, just made) may become a store.
    if main_entries == 0 and (new or create) and not readonly:
        with env.begin(write=True) as txn:
            mdb = env.open_db(meta.META_DB, txn=txn, create=True)
            txn.put(meta.STORE_KEY, meta.store_header(), db=mdb)
        return
    meta.check_header(None, path)


def acquire(path: str, *, create: bool = False, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE,
            durable: bool | str = True, lock: bool = True) -> EnvHandle:
    """Open (or share) the environment at `path` for this process and check it is a store."""
    real = os.path.realpath(path)
    key = (os.getpid(), real)
    with _REG_LOCK:
        h = _REGISTRY.get(key)
        if h is not None:
            if h.readonly and not readonly:
                _upgrade(h, map_size, durable, lock)
            h.refs += 1
            return h
        _drop_inherited(real)
        new = _prechecks(real, create, readonly)
        env = _open_raw(real, readonly, map_size, durable, lock)
        try:
            _check_size(env, real)
            _check_or_init_header(env, real, new, create, readonly)
        except BaseException:
            env.close()
            raise
        h = EnvHandle(env=env, path=real, readonly=readonly, pid=os.getpid(), refs=1)
        h.db(meta.META_DB)   # a handle is valid only in txns begun after it was opened: open it first
        _REGISTRY[key] = h
        return h


def _upgrade(h: EnvHandle, map_size: int, durable: bool | str, lock: bool) -> None:
    """A writable open where this process has the env read-only: reopen it writable in place.

    Stores and readers of this process share the handle, so they carry on with the new env
    (their sub-db handles are reopened on next use). Their short per-call transactions are
    never open across calls, so nothing is lost; a read-only Store object still refuses writes.
    """
    with h.lock:
        h.env.close()
        h.dbs.clear()
        h.env = _open_raw(h.path, False, map_size, durable, lock)
        h.readonly = False
        _check_or_init_header(h.env, h.path, False, False, False)
    h.db(meta.META_DB)


def _drop_inherited(real: str) -> None:
    """In a forked child, close the env inherited from the parent before opening our own.

    py-lmdb refuses to open files that are "already open in this process", and the child
    inherited that record. Closing the inherited copy in the child is safe with LMDB 0.9.x:
    mdb_env_close clears only reader slots of getpid() (the child's, none), py-lmdb does not
    abort the parent's transactions after fork, and fcntl locks are not inherited.
    """
    me = os.getpid()
    for key in [k for k in _REGISTRY if k[1] == real and k[0] != me]:
        h = _REGISTRY.pop(key)
        try:
            h.env.close()
        except lmdb.Error:
            pass


def release(h: EnvHandle) -> None:
    """Drop one reference; the last one in the owning process closes the env."""
    if h.pid != os.getpid():
        return          # inherited through fork: never close the parent's env (it would free its reader slots)
    with _REG_LOCK:
        h.refs -= 1
        if h.refs > 0:
            return
        _REGISTRY.pop((h.pid, h.path), None)
        h.env.close()
