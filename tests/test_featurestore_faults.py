"""Feature store faults: not-a-store, second writer, fork, SIGKILL mid-write, full disk, edits."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import lmdb
import numpy as np
import pytest

from featurestore import DEFAULT_VIEWS, Store, StoreError
from featurestore.cli import main as cli_main

IC = DEFAULT_VIEWS.IC
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}

# A writer in its own process: batch b holds ids [b*N, (b+1)*N) with values seeded by b.
WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from featurestore import Store
    path, batches, n, dim, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    s = Store.open(path, create=True)
    s.create_view("image/vgg16@1", dim)
    with s.writer("image/vgg16@1") as w:
        print("locked", flush=True)
        for b in range(batches):
            ids = np.arange(b * n, (b + 1) * n)
            if w.existing(ids[[0, -1]]).all():
                continue                                    # resume: skip committed batches
            w.put(ids, np.random.default_rng(b).standard_normal((n, dim)).astype(np.float32))
            print("committed", b, flush=True)
            time.sleep(pause)
    print("done", flush=True)
""")


def _expected(b, n, dim):
    return np.random.default_rng(b).standard_normal((n, dim)).astype(np.float32).astype(np.float16).astype(np.float32)


def _start_writer(path, batches, n, dim, pause):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batches), str(n), str(dim), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


# ------------------------------------------------------------------ not a store
def test_refuses_missing_path_and_file(tmp_path):
    with pytest.raises(StoreError, match="no feature store at"):
        Store.open(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()           # nothing created without create=True
    f = tmp_path / "a_file"
    f.write_text("hello")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(f, create=True)


def test_refuses_non_lmdb_data_file(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "data.mdb").write_bytes(os.urandom(64 * 1024))
    before = (d / "data.mdb").read_bytes()
    for create in (False, True):
        with pytest.raises(StoreError, match="not an LMDB file|not a feature store"):
            Store.open(d, create=create)
    assert (d / "data.mdb").read_bytes() == before


def test_refuses_foreign_lmdb_even_with_create(tmp_path):
    d = tmp_path / "foreign"
    env = lmdb.open(str(d), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"some", b"thing")
    env.close()
    for create in (False, True):
        with pytest.raises(StoreError, match="not a feature store"):
            Store.open(d, create=create)


def test_refuses_bad_magic_and_future_format(tmp_path):
    for i, header in enumerate([b'{"magic": "someone-else", "format": 1}', b'{"magic": "tagrec-featurestore", "format": 99}',
                                b"\x00garbage"]):
        d = tmp_path / f"s{i}"
        env = lmdb.open(str(d), max_dbs=4)
        db = env.open_db(b"__meta__")
        with env.begin(write=True) as txn:
            txn.put(b"store", header, db=db)
        env.close()
        with pytest.raises(StoreError, match="not a feature store|not supported|corrupt store header"):
            Store.open(d)


# -------------------------------------------------------------- one writer process
def test_second_writer_process_refused_while_readers_read(tmp_path):
    path = tmp_path / "s"
    p = _start_writer(path, batches=40, n=500, dim=8, pause=0.05)
    try:
        assert p.stdout.readline().strip() == "locked"
        assert p.stdout.readline().startswith("committed")
        s = Store.open(path)
        with pytest.raises(StoreError, match=r"already has a writer \(pid \d+\)"):
            with s.writer(IC):
                pass
        with pytest.raises(StoreError, match="already has a writer"):
            s.create_view(DEFAULT_VIEWS.OD, 80)
        r = s.reader(IC)                                   # reading while the other process writes
        seen = [r.count() for _ in range(5) if not time.sleep(0.05)]
        assert seen == sorted(seen) and seen[0] % 500 == 0
        got, found = r.get_many(np.arange(500))
        assert found.all()
        np.testing.assert_array_equal(got, _expected(0, 500, 8))
        s.close()
    finally:
        p.kill()
        p.wait()


def test_second_store_object_in_same_process_cannot_write(tmp_path):
    a = Store.open(tmp_path / "s", create=True)
    a.create_view(IC, 4)
    with a.writer(IC) as w:
        w.put([1], np.ones((1, 4), np.float32))
        b = Store.open(tmp_path / "s")                      # shares the env; its own lock
        with pytest.raises(StoreError, match="already has a writer"):
            with b.writer(IC):
                pass
        b.close()
    c = Store.open(tmp_path / "s")
    with c.writer(IC) as w2:                                  # released: writable again
        w2.put([2], np.ones((1, 4), np.float32))
    c.close()
    a.close()


# -------------------------------------------------------------------- fork / spawn
def _read_in_child(reader, q):
    try:
        vals, found = reader.get_many([0, 5, 999])
        n = sum(len(i) for i, _ in reader.scan(batch_size=7))
        q.put((vals.tolist(), found.tolist(), n, reader.count()))
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_across_fork_and_spawn(tmp_path, method):
    s = Store.open(tmp_path / "s", create=True)
    s.create_view(IC, 3, dtype="float32")
    v = np.arange(60, dtype=np.float32).reshape(20, 3)
    with s.writer(IC) as w:
        w.put(np.arange(20), v)
    r = s.reader(IC)
    assert r.get(5) is not None                               # env opened in the parent before fork
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_read_in_child, args=(r, q))
    p.start()
    res = q.get(timeout=60)
    p.join(60)
    assert not isinstance(res, str), res
    vals, found, n, count = res
    assert found == [True, True, False] and vals[1] == v[5].tolist() and n == 20 and count == 20
    with s.writer(IC) as w:                                   # the parent's env still works after the child
        w.put([100], np.ones((1, 3), np.float32))
    assert r.count() == 21 and s.verify() == []
    s.close()


# ---------------------------------------------------------------- SIGKILL mid-write
def test_sigkill_mid_write_then_rerun_completes(tmp_path):
    path, batches, n, dim = tmp_path / "s", 30, 4000, 64
    p = _start_writer(path, batches, n, dim, pause=0.0)
    lines = [p.stdout.readline() for _ in range(4)]            # locked + 3 commits
    assert lines[0].strip() == "locked" and all(x.startswith("committed") for x in lines[1:]), lines
    time.sleep(0.03)                                           # well inside a later batch's transaction
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    s = Store.open(path)                                       # opens fine; the lock died with the process
    r = s.reader(IC)
    ids = np.concatenate([i for i, _ in r.scan()]) if r.count() else np.empty(0, np.int64)
    committed = sorted(set((ids // n).tolist()))
    assert 3 <= len(committed) < batches, "killed too late to test anything"
    assert committed == list(range(len(committed)))            # whole batches, in order
    assert len(ids) == n * len(committed)                      # no partial batch visible
    for b in committed[:: max(1, len(committed) // 3)]:
        got, found = r.get_many(np.arange(b * n, (b + 1) * n))
        assert found.all()
        np.testing.assert_array_equal(got, _expected(b, n, dim))
    assert s.verify() == []
    s.close()
    out = subprocess.run([sys.executable, "-c", WRITER, str(path), str(batches), str(n), str(dim), "0"],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("committed") == batches - len(committed)   # skipped what was done
    # Same store as an uninterrupted run: same count and content digest.
    ref = tmp_path / "ref"
    out = subprocess.run([sys.executable, "-c", WRITER, str(ref), str(batches), str(n), str(dim), "0"],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    with Store.open(path, readonly=True) as a, Store.open(ref, readonly=True) as b:
        ia, ib = a.describe(IC), b.describe(IC)
        assert (ia.count, ia.digest) == (ib.count, ib.digest) == (batches * n, ib.digest)
        assert a.verify() == []


# ------------------------------------------------------------------- disk full
def _fill_until_error(s, n=2000, dim=64):
    s.create_view(IC, dim)
    done = 0
    with s.writer(IC) as w:
        with pytest.raises(StoreError) as ei:
            for b in range(10_000):
                w.put(np.arange(b * n, (b + 1) * n), _expected(b, n, dim))
                done += 1
    return done, str(ei.value)


def _check_intact(path, done, n=2000, dim=64):
    with Store.open(path) as s:
        r = s.reader(IC)
        assert r.count() == done * n
        got, found = r.get_many(np.arange((done - 1) * n, done * n))
        assert found.all()
        np.testing.assert_array_equal(got, _expected(done - 1, n, dim))
        assert s.verify() == []
        with s.writer(IC) as w:                              # still writable once there is room
            w.put([10**9], np.zeros((1, dim), np.float32))


def test_store_full_at_max_map_size_grows_then_stops_cleanly(tmp_path):
    """Simulated disk limit: the map grows by doubling from 1 MiB and stops at max_map_size (8 MiB)."""
    path = tmp_path / "s"
    s = Store.open(path, create=True, map_size=1 << 20, max_map_size=8 << 20)
    done, msg = _fill_until_error(s)
    assert "max_map_size" in msg and "intact" in msg
    assert done * 2000 * 128 > (4 << 20)                     # it did grow past the initial map
    s.close()
    _check_intact(path, done)


def _mount_tmpfs(where, size):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_real_disk_full_on_small_tmpfs(tmp_path):
    """A real ENOSPC: a 6 MiB tmpfs (needs root to mount; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    if not _mount_tmpfs(mnt, "6m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = mnt / "s"
        s = Store.open(path, create=True, map_size=64 << 20)
        done, msg = _fill_until_error(s)
        assert "disk is full" in msg and "intact" in msg, msg
        assert done >= 5
        s.close()
        # Free room as an operator would (the store is on its own disk here: grow the tmpfs).
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        _check_intact(path, done)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- growth & readers
def test_map_grows_while_reader_in_other_process_reads(tmp_path):
    path = tmp_path / "s"
    s = Store.open(path, create=True, map_size=256 << 10)
    s.create_view(IC, 64)
    code = ("import sys; from featurestore import Store; r = Store.open(sys.argv[1], readonly=True).reader('image/vgg16@1');"
            "print(r.count(), flush=True); sys.stdin.readline(); print(r.count(), r.get(0) is not None, flush=True)")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=ENV, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "0"
        with s.writer(IC) as w:
            for b in range(10):
                w.put(np.arange(b * 2000, (b + 1) * 2000), _expected(b, 2000, 64))
        assert s.env.info()["map_size"] > 256 << 10
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().split() == ["20000", "True"]
    finally:
        p.kill()
        p.wait()
    s.close()


def test_snapshot_while_writing(tmp_path):
    s = Store.open(tmp_path / "s", create=True)
    s.create_view(IC, 32)
    stop = threading.Event()
    n = 1000

    def write():
        with s.writer(IC) as w:
            b = 0
            while not stop.is_set() and b < 400:
                w.put(np.arange(b * n, (b + 1) * n), _expected(b, n, 32))
                b += 1

    t = threading.Thread(target=write)
    t.start()
    while s.describe(IC).count < 3 * n:
        time.sleep(0.01)
    dest = s.snapshot(tmp_path / "snap")
    stop.set()
    t.join()
    with Store.open(dest, readonly=True) as snap:
        c = snap.describe(IC).count
        assert c >= 3 * n and c % n == 0
        got, found = snap.reader(IC).get_many(np.arange(c - n, c))
        assert found.all()
        np.testing.assert_array_equal(got, _expected(c // n - 1, n, 32))
        assert snap.verify() == []
    with pytest.raises(StoreError, match="not an empty folder"):
        s.snapshot(dest)
    s.close()
    with Store.open(dest, readonly=True, lock=False) as snap:      # e.g. a backup on read-only media
        assert snap.describe(IC).count == c


# ---------------------------------------------------------------- verify / edits
def _small_store(path, dim=8):
    s = Store.open(path, create=True)
    s.create_view(IC, dim, dtype="float32")
    v = np.full((50, dim), 0.25, np.float32)
    v[7] = np.arange(100, 100 + dim)                     # a byte pattern to find in the file
    with s.writer(IC) as w:
        w.put(np.arange(50), v)
    s.close()
    return v


def _find_all(raw: bytearray, pattern: bytes) -> list[int]:
    """Every offset of pattern (the live copy, plus any stale copy in a freed page)."""
    out, pos = [], raw.find(pattern)
    while pos >= 0:
        out.append(pos)
        pos = raw.find(pattern, pos + 1)
    assert out, "value not found in data.mdb"
    return out


def test_verify_catches_edited_value(tmp_path, capsys):
    path = tmp_path / "s"
    v = _small_store(path)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    for pos in _find_all(raw, v[7].tobytes()):
        raw[pos] ^= 0x01                                   # lowest mantissa bit: still a finite float
    data.write_bytes(bytes(raw))
    with Store.open(path, readonly=True) as s:
        problems = s.verify()
    assert any("digest" in p and "edited" in p for p in problems), problems
    assert cli_main(["verify", str(path)]) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_nan_edit_detected_by_reader_and_verify(tmp_path):
    path = tmp_path / "s"
    v = _small_store(path)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    for pos in _find_all(raw, v[7].tobytes()):
        raw[pos:pos + 4] = np.array([np.nan], np.float32).tobytes()
    data.write_bytes(bytes(raw))
    with Store.open(path, readonly=True) as s:
        with pytest.raises(StoreError, match="corrupt value.*ids 7"):
            s.reader(IC).get_many([6, 7])
        with pytest.raises(StoreError, match="corrupt"):
            list(s.reader(IC).scan())
        with pytest.raises(StoreError, match="corrupt"):
            s.reader(IC).read_all()
        assert s.verify()


def test_wrong_size_value_detected(tmp_path):
    path = tmp_path / "s"
    _small_store(path)
    env = lmdb.open(str(path), max_dbs=512)                 # someone writes behind the store's back
    db = env.open_db(b"data:" + IC.encode())
    with env.begin(write=True) as txn:
        txn.put((9).to_bytes(8, "big"), b"\x00" * 12, db=db)
    env.close()
    with Store.open(path, readonly=True) as s:
        with pytest.raises(StoreError, match="corrupt value for id 9"):
            s.reader(IC).get_many([9])
        with pytest.raises(StoreError, match="id 9"):
            list(s.reader(IC).scan())
        assert any("id 9 has 12 bytes" in p for p in s.verify())


def test_truncated_data_file_refused_and_verify_fails(tmp_path, capsys):
    path = tmp_path / "s"
    _small_store(path)
    data = path / "data.mdb"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size - 4096)
    with pytest.raises(StoreError, match="truncated"):
        Store.open(path, readonly=True)
    assert cli_main(["verify", str(path)]) == 1
    assert "truncated" in capsys.readouterr().out
