"""`featurestore verify`: a full check of a store, value by value.

LMDB keeps no checksums, so besides structure (header, file size, sub-databases, key and
value sizes, counts) every view's values are re-hashed and compared with the digest the
writer keeps in the same transaction as the data: an edited value is caught too.
"""

from __future__ import annotations

import json
import os
from itertools import islice
from typing import TYPE_CHECKING, Any

import lmdb
import numpy as np

from featurestore import _env, meta
from featurestore.codec import KEY_BYTES, MAX_ID, digest_sum, row_hashes
from featurestore.errors import StoreError
from featurestore.meta import ViewInfo

if TYPE_CHECKING:
    from featurestore.store import Store

BATCH = 65536


def verify_store(store: Store) -> list[str]:
    """All problems found in the store (empty: healthy). Reads in one consistent snapshot."""
    problems: list[str] = []
    h = store._h
    path = store.path
    need = (h.env.info()["last_pgno"] + 1) * h.env.stat()["psize"]
    have = os.path.getsize(os.path.join(path, _env.DATA_FILE))
    if have < need:
        return [f"data file truncated: {have} bytes, needs {need}"]
    try:
        names = store.list_views()
        for name in names:          # handles first: a txn sees only handles opened before it began
            for sub in (meta.data_db(name), meta.errors_db(name)):
                try:
                    h.db(sub)
                except StoreError as e:
                    problems.append(f"view {name}: {e}")
        with h.begin() as txn:
            problems += _check_main(txn, h)
            for name in store._list_in(txn):
                if (meta.data_db(name) in h.dbs) and (meta.errors_db(name) in h.dbs):
                    problems += _check_view(txn, h, name)
    except lmdb.Error as e:
        problems.append(f"LMDB error while reading (corrupt pages?): {e}")
    except StoreError as e:
        problems.append(str(e))
    return problems


def _check_main(txn: lmdb.Transaction, h: _env.EnvHandle) -> list[str]:
    out = []
    mdb = h.db(meta.META_DB)
    try:
        meta.check_header(txn.get(meta.STORE_KEY, db=mdb), h.path)
    except StoreError as e:
        out.append(str(e))
    views = set()
    for k in txn.cursor(mdb).iternext(values=False):
        k = bytes(k)
        if k.startswith(b"view:"):
            views.add(k[5:].decode(errors="replace"))
        elif k != meta.STORE_KEY:
            out.append(f"unknown metadata key {k[:40]!r}")
    for k in txn.cursor().iternext(values=False):
        k = bytes(k)
        if k == meta.META_DB:
            continue
        for prefix in (b"data:", b"errors:"):
            if k.startswith(prefix) and k[len(prefix):].decode(errors="replace") in views:
                break
        else:
            out.append(f"sub-database {k[:60]!r} belongs to no view")
    return out


def _check_view(txn: lmdb.Transaction, h: _env.EnvHandle, name: str) -> list[str]:
    raw = txn.get(meta.view_key(name), db=h.db(meta.META_DB))
    try:
        if raw is None:
            return [f"view {name}: metadata vanished"]
        info = ViewInfo.from_json(raw, name)
        codec = info.codec()
        db, edb = h.db(meta.data_db(name)), h.db(meta.errors_db(name))
    except StoreError as e:
        return [f"view {name}: {e}"]
    out: list[str] = []
    nb, total, rows = codec.nbytes, 0, 0
    cur = txn.cursor(db)
    cur.first()
    it = cur.iternext()
    while True:
        items = list(islice(it, BATCH))
        if not items:
            break
        keys, vals = zip(*items)
        good = [i for i, (k, v) in enumerate(items) if len(k) == KEY_BYTES and len(v) == nb]
        if len(good) != len(items):
            for k, v in items:
                if len(k) != KEY_BYTES:
                    out.append(f"view {name}: key {bytes(k)[:16]!r} is {len(k)} bytes, not {KEY_BYTES}")
                elif len(v) != nb:
                    out.append(f"view {name}: id {int.from_bytes(k, 'big')} has {len(v)} bytes, "
                               f"metadata says {nb}")
        rows += len(items)
        if not good:
            continue
        ids_u = np.frombuffer(b"".join(keys[i] for i in good), dtype=">u8")
        if (ids_u > MAX_ID).any():
            out.append(f"view {name}: keys beyond int64: {ids_u[ids_u > MAX_ID][:5].tolist()}")
        ids = ids_u.astype(np.int64)
        blob = b"".join(vals[i] for i in good)
        try:
            codec.decode_block(blob, ids)
        except StoreError as e:
            out.append(f"view {name}: {e}")
        total += digest_sum(row_hashes(ids, blob, nb))
    if rows != info.count:
        out.append(f"view {name}: {rows} rows but metadata count is {info.count}")
    if format(total % (1 << 64), "x") != info.digest:
        out.append(f"view {name}: content digest {total % (1 << 64):x} != metadata {info.digest} "
                   "(values were edited outside the writer)")
    errs = 0
    for k, v in txn.cursor(edb).iternext():
        errs += 1
        if len(k) != KEY_BYTES:
            out.append(f"view {name}: error record with a {len(k)}-byte key")
        try:
            bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            out.append(f"view {name}: error reason for id {int.from_bytes(k, 'big')} is not UTF-8")
    if errs != info.errors:
        out.append(f"view {name}: {errs} error records but metadata says {info.errors}")
    return out


def summary(problems: list[str]) -> dict[str, Any]:
    return {"ok": not problems, "problems": problems}


def to_json(problems: list[str]) -> str:
    return json.dumps(summary(problems), indent=2)
