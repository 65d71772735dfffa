"""Feature store vs raw py-lmdb doing the same work, on the same data, in one run.

Work measured (each side in its own fresh environment, same LMDB settings: sync on commit):
  put      sorted batches of 10k (ids ascending), one transaction per batch (opening the
           store / creating the view is not timed, on either side)
  get      random get_many of ids (90% present) into a dense array in request order, float32
  get16    the same into the stored float16 (store: dtype=None)
  scan     full scan of ids + values into dense arrays, float32 (store: Reader.read_all)
  scan16   the same in float16
  export   the view to Parquet (id int64, vector list<float>), zstd, 64k-row row groups

Prints a table and `RATIO <name> <store rate / raw rate>` (>1: the store is faster). Rates use
the CPU time of this process (time.process_time), because the 2-core machine these numbers
come from is shared and wall clock swings by 2x between identical runs; wall is printed too.

    python benchmarks/store.py            # 200k x 512 float16
    python benchmarks/store.py --quick    # 50k, well under a minute
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from itertools import islice

import lmdb
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featurestore import Store  # noqa: E402
from featurestore.export import export_parquet  # noqa: E402

VIEW = "image/vgg16@1"
BATCH = 10_000
SCAN_BATCH = 65_536
MAP = 1 << 33


# --------------------------------------------------------------------------- clock
def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since t0."""
    return time.perf_counter() - t0[0], time.process_time() - t0[1]


# --------------------------------------------------------------------------- raw
def raw_put(path: str, ids: np.ndarray, vals: np.ndarray) -> tuple[float, float]:
    env = lmdb.open(path, max_dbs=4, map_size=MAP, sync=True, metasync=True, readahead=False, meminit=True)
    db = env.open_db(b"v")
    nb = vals.shape[1] * vals.itemsize
    t = _clock()
    for lo in range(0, len(ids), BATCH):
        kb = ids[lo:lo + BATCH].astype(">u8").tobytes()
        vb = vals[lo:lo + BATCH].tobytes()
        keys = [kb[i:i + 8] for i in range(0, len(kb), 8)]
        vs = [vb[i:i + nb] for i in range(0, len(vb), nb)]
        with env.begin(write=True) as txn:
            txn.cursor(db).putmulti(zip(keys, vs), append=True)
    t = _since(t)
    env.close()
    return t


def _raw_env(path: str):
    env = lmdb.open(path, max_dbs=4, readonly=True, readahead=False)
    return env, env.open_db(b"v")


def raw_get(path: str, q: np.ndarray, dim: int, dtype) -> np.ndarray:
    env, db = _raw_env(path)
    nb = dim * 2
    kb = q.astype(">u8").tobytes()
    out = bytearray(len(q) * nb)
    found = bytearray(len(q))
    with env.begin(buffers=True) as txn:
        get = txn.get
        for i, o in enumerate(range(0, len(kb), 8)):
            v = get(kb[o:o + 8], None, db)
            if v is not None:
                out[i * nb:(i + 1) * nb] = v
                found[i] = 1
    arr = np.frombuffer(out, dtype="<f2").reshape(len(q), dim)
    env.close()
    return arr.astype(dtype) if dtype is not None else arr


def _raw_batches(env, db):
    """(keys, values) tuples of up to SCAN_BATCH entries, by plain cursor iteration."""
    with env.begin() as txn:
        cur = txn.cursor(db)
        cur.first()
        it = cur.iternext()
        while True:
            items = list(islice(it, SCAN_BATCH))
            if not items:
                return
            yield tuple(zip(*items))


def raw_scan(path: str, n: int, dim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    env, db = _raw_env(path)
    ids = np.empty(n, np.int64)
    vals = np.empty((n, dim), dtype or np.float16)
    pos = 0
    for ks, vs in _raw_batches(env, db):
        m = len(ks)
        ids[pos:pos + m] = np.frombuffer(b"".join(ks), ">u8")
        vals[pos:pos + m] = np.frombuffer(b"".join(vs), "<f2").reshape(m, dim)
        pos += m
    env.close()
    return ids, vals


def raw_export(path: str, out: str, dim: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    env, db = _raw_env(path)
    w = None
    for ks, vs in _raw_batches(env, db):
        m = len(ks)
        ids = np.frombuffer(b"".join(ks), ">u8").astype(np.int64)
        v = np.frombuffer(b"".join(vs), "<f2").astype(np.float32)
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32)), pa.array(v))
        rb = pa.RecordBatch.from_pydict({"id": pa.array(ids), "vector": col})
        if w is None:
            w = pq.ParquetWriter(out, rb.schema, compression="zstd")
        w.write_batch(rb)
    w.close()
    env.close()


# ------------------------------------------------------------------------- store
def store_put(path: str, ids: np.ndarray, vals: np.ndarray) -> tuple[float, float]:
    s = Store.open(path, create=True, map_size=MAP)
    s.create_view(VIEW, vals.shape[1])
    t = _clock()
    with s.writer(VIEW) as w:
        for lo in range(0, len(ids), BATCH):
            w.put(ids[lo:lo + BATCH], vals[lo:lo + BATCH])
    t = _since(t)
    s.close()
    return t


def store_get(path: str, q: np.ndarray, dtype) -> np.ndarray:
    s = Store.open(path, readonly=True)
    vals, _ = s.reader(VIEW).get_many(q, dtype=dtype)
    s.close()
    return vals


def store_scan(path: str, n: int, dim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    s = Store.open(path, readonly=True)
    ids, vals = s.reader(VIEW).read_all(dtype=dtype, batch_size=SCAN_BATCH)
    s.close()
    return ids, vals


def store_export(path: str, out: str) -> None:
    s = Store.open(path, readonly=True)
    export_parquet(s.reader(VIEW), out, batch_size=SCAN_BATCH)
    s.close()


# ------------------------------------------------------------------------ driver
def pair(fn_store, fn_raw, repeats: int) -> tuple[float, float, float, float]:
    """Best (wall, CPU) of each side, alternating store/raw runs so that load from other work
    on a shared machine hits both sides alike. Returns (store cpu, raw cpu, store wall, raw wall)."""
    res: dict[str, list[tuple[float, float]]] = {"s": [], "r": []}
    for _ in range(repeats):
        for fn, side in ((fn_store, "s"), (fn_raw, "r")):
            t0 = _clock()
            inner = fn()                        # puts time themselves (setup excluded on both sides)
            timed = isinstance(inner, tuple) and all(isinstance(x, float) for x in inner)
            res[side].append(inner if timed else _since(t0))
    return (min(c for _, c in res["s"]), min(c for _, c in res["r"]),
            min(w for w, _ in res["s"]), min(w for w, _ in res["r"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50k vectors (under a minute)")
    ap.add_argument("--n", type=int, default=0, help="vectors (default 200k, quick 50k)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=0, help="best of R alternating runs per side (default 5, quick 3)")
    ap.add_argument("--dir", default="", help="work folder (default: a temp folder, removed after)")
    a = ap.parse_args()
    n = a.n or (50_000 if a.quick else 200_000)
    reps = a.repeats or (3 if a.quick else 5)
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.arange(n * 4, dtype=np.int64), size=n, replace=False))
    vals = rng.standard_normal((n, a.dim)).astype(np.float16)
    q = np.where(rng.random(n // 2) < 0.9, rng.choice(ids, n // 2), ids.max() + 1 + rng.integers(0, n, n // 2))
    work = tempfile.mkdtemp(prefix="fsbench-", dir=a.dir or None)
    sp, rp = os.path.join(work, "store"), os.path.join(work, "raw")
    rows = []
    try:
        def put_store() -> tuple[float, float]:
            shutil.rmtree(sp, ignore_errors=True)
            return store_put(sp, ids, vals)

        def put_raw() -> tuple[float, float]:
            shutil.rmtree(rp, ignore_errors=True)
            return raw_put(rp, ids, vals)

        rows.append(("put", n, *pair(put_store, put_raw, reps)))
        for name, dt in (("get", np.float32), ("get16", None)):
            rows.append((name, len(q), *pair(lambda dt=dt: store_get(sp, q, dt), lambda dt=dt: raw_get(rp, q, a.dim, dt), reps)))
        for name, dt in (("scan", np.float32), ("scan16", None)):
            rows.append((name, n, *pair(lambda dt=dt: store_scan(sp, n, a.dim, dt), lambda dt=dt: raw_scan(rp, n, a.dim, dt), reps)))
        rows.append(("export", n, *pair(lambda: store_export(sp, os.path.join(work, "s.parquet")),
                                        lambda: raw_export(rp, os.path.join(work, "r.parquet"), a.dim), reps)))
        # Same answers (the benchmark is only honest if both sides did the same work).
        np.testing.assert_array_equal(store_get(sp, q, None), raw_get(rp, q, a.dim, None))
        si, sv = store_scan(sp, n, a.dim, None)
        ri, rv = raw_scan(rp, n, a.dim, None)
        assert np.array_equal(si, ri) and np.array_equal(sv, rv) and np.array_equal(sv, vals)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# feature store vs raw py-lmdb {lmdb.__version__}: n={n} dim={a.dim} float16, best of {reps} "
          f"(load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print("# ratio = raw CPU s / store CPU s of this process (wall clock shown too; it is at the mercy of other load)")
    print(f"{'op':8s} {'rows':>8s} {'store cpu':>10s} {'raw cpu':>9s} {'store wall':>11s} {'raw wall':>9s} "
          f"{'store rows/s':>13s} {'raw rows/s':>11s} {'ratio':>6s} {'wall ratio':>10s}")
    for name, m, cs, cr, ws, wr in rows:
        print(f"{name:8s} {m:8d} {cs:10.3f} {cr:9.3f} {ws:11.3f} {wr:9.3f} {m / cs:13,.0f} {m / cr:11,.0f} "
              f"{cr / cs:6.2f} {wr / ws:10.2f}")
    for name, _, cs, cr, _, _ in rows:
        print(f"RATIO store_{name} {cr / cs:.3f}")


if __name__ == "__main__":
    main()
