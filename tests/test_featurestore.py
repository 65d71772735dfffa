"""Feature store core: views, writer, readers, bad input (real LMDB in tmp_path)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from featurestore import DEFAULT_VIEWS, Store, StoreError, topk_view

IC = DEFAULT_VIEWS.IC


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "store", create=True)
    yield s
    s.close()


def _vecs(n, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_default_views():
    assert (DEFAULT_VIEWS.IC, DEFAULT_VIEWS.OD, DEFAULT_VIEWS.SN) == ("image/vgg16@1", "image/yolo@1", "user/node2vec@1")
    assert DEFAULT_VIEWS["SN"] == "user/node2vec@1" and dict(DEFAULT_VIEWS.items())["OD"] == "image/yolo@1"
    assert DEFAULT_VIEWS.topk_view("PITF-IC-OD") == topk_view("PITF-IC-OD") == "post/topk@PITF-IC-OD"


def test_round_trip_request_order_and_found_mask(store):
    store.create_view(IC, 16, producer={"model": "vgg16", "weights": "random weights"})
    ids = np.arange(0, 2000, 2, dtype=np.int64)
    v = _vecs(len(ids))
    with store.writer(IC) as w:
        assert w.put(ids[:500], v[:500]) == 500                      # append path
        w.put(ids[500:][::-1], v[500:][::-1])                        # unsorted batch: sorted inside
    r = store.reader(IC)
    q = np.array([1998, 3, 0, 1000, 0])                              # odd ids are absent; 0 twice
    got, found = r.get_many(q)
    assert got.dtype == np.float32 and got.shape == (5, 16)
    np.testing.assert_array_equal(found, [True, False, True, True, True])
    ref = v.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got[0], ref[999])
    np.testing.assert_array_equal(got[2], ref[0])
    np.testing.assert_array_equal(got[3], ref[500])
    assert not got[1].any()
    raw, _ = r.get_many([2], dtype=None)
    assert raw.dtype == np.float16
    assert r.get(3) is None and np.array_equal(r.get(2), ref[1])
    assert r.count() == 1000 and store.describe(IC).count == 1000


def test_scan_batches_and_key_range(store):
    store.create_view(IC, 4, dtype="float32")
    ids = np.arange(100, dtype=np.int64) * 10
    v = _vecs(100, 4)
    with store.writer(IC) as w:
        w.put(ids, v)
    r = store.reader(IC)
    batches = list(r.scan(batch_size=30))
    assert [len(b[0]) for b in batches] == [30, 30, 30, 10]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ids)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), v)       # float32 view: exact
    sub = np.concatenate([b for b, _ in r.scan(batch_size=7, start=55, stop=300)])
    np.testing.assert_array_equal(sub, np.arange(60, 300, 10))
    assert list(r.scan(start=5000)) == []


def test_idempotent_reput_existing_and_errors_cleared(store):
    store.create_view(IC, 8)
    ids, v = np.arange(50), _vecs(50, 8)
    with store.writer(IC) as w:
        w.put(ids, v)
        digest = store.describe(IC).digest
        w.put(ids[10:20], v[10:20])                   # same values again: nothing changes
        assert store.describe(IC).digest == digest and store.describe(IC).count == 50
        w.put_errors([60, 61, 62], ["decode: truncated JPEG", "decode: truncated JPEG", "missing file"])
        np.testing.assert_array_equal(w.existing([0, 49, 50, 60]), [True, True, False, False])
        w.put([61], _vecs(1, 8, seed=3))              # a later success clears the error
    eids, reasons = store.errors(IC)
    np.testing.assert_array_equal(eids, [60, 62])
    assert reasons == ["decode: truncated JPEG", "missing file"]
    info = store.describe(IC)
    assert info.count == 51 and info.errors == 2
    assert store.verify() == []


def test_overwrite_with_new_values_keeps_digest_consistent(store):
    store.create_view(IC, 8)
    with store.writer(IC) as w:
        w.put(np.arange(20), _vecs(20, 8, 1))
        w.put(np.arange(5, 15), _vecs(10, 8, 2))     # overwrite in the middle (non-append path)
    got, _ = store.reader(IC).get_many([7])
    np.testing.assert_array_equal(got[0], _vecs(10, 8, 2)[2].astype(np.float16).astype(np.float32))
    assert store.verify() == []


def test_views_create_describe_list_drop(store):
    a = store.create_view(IC, 512, producer={"model": "vgg16"})
    assert store.create_view(IC, 512, producer={"model": "vgg16"}).created == a.created   # idempotent
    with pytest.raises(StoreError, match="another schema"):
        store.create_view(IC, 256)
    with pytest.raises(StoreError, match="another schema"):
        store.create_view(IC, 512, dtype="float32")
    store.create_view(DEFAULT_VIEWS.SN, 64, dtype="float32")
    assert store.list_views() == [IC, DEFAULT_VIEWS.SN]
    info = store.describe(IC)
    assert (info.dim, info.dtype, info.producer, info.count) == (512, "float16", {"model": "vgg16"}, 0)
    store.drop_view(DEFAULT_VIEWS.SN)
    assert store.list_views() == [IC]
    with pytest.raises(StoreError, match="no view"):
        store.describe(DEFAULT_VIEWS.SN)
    store.create_view(DEFAULT_VIEWS.SN, 32)                      # a dropped name can be re-created
    assert store.describe(DEFAULT_VIEWS.SN).dim == 32


@pytest.mark.parametrize("name", ["vgg16", "image/vgg16", "Image/x@1", "image/vgg16@", "a/b@1 ", ""])
def test_bad_view_names(store, name):
    with pytest.raises(StoreError, match="bad view name"):
        store.create_view(name, 4)


def test_bad_schema_arguments(store):
    with pytest.raises(StoreError, match="dtype"):
        store.create_view(IC, 4, dtype="int8")
    with pytest.raises(StoreError, match="dim"):
        store.create_view(IC, 0)
    with pytest.raises(StoreError, match="dtype"):
        store.create_record_view(topk_view("M"), {"tags": ("complex64", 3)})


def test_record_view_round_trip(store):
    name = topk_view("PITF-IC-OD")
    store.create_record_view(name, fields={"tags": ("int32", 3), "scores": ("float32", 3)}, producer={"model": "m"})
    rec = np.zeros(3, dtype=[("tags", "<i4", (3,)), ("scores", "<f4", (3,))])
    rec["tags"] = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    rec["scores"] = [[0.9, 0.5, 0.1]] * 3
    with store.writer(name) as w:
        w.put([30, 10, 20], rec)
        w.put([40], {"tags": [[0, 0, 1]], "scores": np.array([[1.0, 0.0, 0.0]])})   # a dict of columns works too
    got, found = store.reader(name).get_many([20, 99, 30, 40])
    assert got.dtype.names == ("tags", "scores")
    np.testing.assert_array_equal(found, [True, False, True, True])
    np.testing.assert_array_equal(got["tags"][[0, 2, 3]], [[7, 8, 9], [1, 2, 3], [0, 0, 1]])
    with store.writer(name) as w:
        with pytest.raises(StoreError, match="fields"):
            w.put([1], {"tags": [[1, 2, 3]]})
        with pytest.raises(StoreError, match="tags"):
            w.put([1], {"tags": [[1.5, 2, 3]], "scores": [[1, 2, 3.0]]})
        with pytest.raises(StoreError, match="ids 5"):
            w.put([5], {"tags": [[1, 2, 3]], "scores": [[np.nan, 2, 3.0]]})


# ------------------------------------------------------------------ bad input
@pytest.fixture
def writer(store):
    store.create_view(IC, 4)
    with store.writer(IC) as w:
        yield w


def test_wrong_dim_rejected(writer):
    with pytest.raises(StoreError, match=r"shape \(2, 4\)"):
        writer.put([1, 2], np.zeros((2, 5), np.float32))


def test_wrong_dtype_rejected(writer):
    with pytest.raises(StoreError, match="floating point"):
        writer.put([1, 2], np.zeros((2, 4), np.int64))


def test_nan_and_inf_rejected_with_ids(writer):
    v = np.zeros((4, 4), np.float32)
    v[1, 2] = np.nan
    v[3, 0] = np.inf
    with pytest.raises(StoreError, match="ids 11, 13"):
        writer.put([10, 11, 12, 13], v)
    big = np.full((1, 4), 1e6, np.float32)                       # overflows float16 -> inf
    with pytest.raises(StoreError, match="ids 7"):
        writer.put([7], big)
    assert writer.store.describe(IC).count == 0                  # the batch was refused whole


@pytest.mark.parametrize("ids,msg", [
    ([1.5, 2.0], "integers"),
    (["a", "b"], "integers"),
    ([True, False], "integers"),
    ([-1, 2], "non-negative"),
    ([2**63, 1], "int64|integers in"),
    (np.array([2**64 - 1, 1], dtype=np.uint64), "int64"),
    ([[1, 2]], "1-D"),
])
def test_bad_ids_rejected(writer, ids, msg):
    with pytest.raises(StoreError, match=msg):
        writer.put(ids, np.zeros((2, 4), np.float32))


def test_duplicate_ids_in_one_batch_rejected(writer):
    with pytest.raises(StoreError, match="duplicate ids in one batch: 3"):
        writer.put([3, 1, 3], np.zeros((3, 4), np.float32))


def test_put_outside_context_and_on_readonly(store, tmp_path):
    store.create_view(IC, 4)
    with pytest.raises(StoreError, match="context manager"):
        store.writer(IC).put([1], np.zeros((1, 4), np.float32))
    store.close()
    ro = Store.open(tmp_path / "store", readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        with ro.writer(IC):
            pass
    with pytest.raises(StoreError, match="read-only"):
        ro.create_view(DEFAULT_VIEWS.OD, 80)
    ro.close()


def test_missing_view_in_reader_and_writer(store):
    with pytest.raises(StoreError, match="no view 'image/vgg16@1'"):
        store.reader(IC)
    with pytest.raises(StoreError, match="no view"):
        store.writer(IC)


def test_reader_pickles_without_env(store):
    store.create_view(IC, 4)
    with store.writer(IC) as w:
        w.put([1, 2], np.ones((2, 4), np.float32))
    r = store.reader(IC)
    r.get(1)
    blob = pickle.dumps(r)
    assert len(blob) < 200 and b"Environment" not in blob
    r2 = pickle.loads(blob)
    np.testing.assert_array_equal(r2.get(2), np.ones(4, np.float32))


def test_empty_batches_are_noops(writer):
    assert writer.put(np.array([], np.int64), np.zeros((0, 4), np.float32)) == 0
    assert writer.put_errors([], []) == 0


def test_read_all_dense_arrays(store):
    store.create_view(IC, 4)
    ids, v = np.arange(0, 300, 3), _vecs(100, 4)
    with store.writer(IC) as w:
        w.put(ids, v)
    r = store.reader(IC)
    got_ids, got = r.read_all(batch_size=7)
    np.testing.assert_array_equal(got_ids, ids)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, v.astype(np.float16).astype(np.float32))
    sub_ids, sub = r.read_all(dtype=None, start=30, stop=60, batch_size=4)
    np.testing.assert_array_equal(sub_ids, np.arange(30, 60, 3))
    assert sub.dtype == np.float16 and sub.shape == (10, 4)
    with pytest.raises(StoreError, match="float dtype"):
        r.get_many([0], dtype=np.int32)


@pytest.mark.parametrize("durable", [False, "relaxed"])
def test_relaxed_durability_syncs_on_close(tmp_path, durable):
    s = Store.open(tmp_path / "s", create=True, durable=durable)
    s.create_view(IC, 4)
    with s.writer(IC) as w:
        w.put(np.arange(10), np.ones((10, 4), np.float32))
    s.close()
    with Store.open(tmp_path / "s", readonly=True) as r:
        assert r.describe(IC).count == 10 and r.verify() == []
    with pytest.raises(StoreError, match="durable"):
        Store.open(tmp_path / "s", durable="sometimes")


def test_writable_open_after_readonly_in_same_process(tmp_path):
    w = Store.open(tmp_path / "s", create=True)
    w.create_view(IC, 4)
    w.close()
    ro = Store.open(tmp_path / "s", readonly=True)               # e.g. a training stage of a pipeline
    r = ro.reader(IC)
    assert r.count() == 0
    rw = Store.open(tmp_path / "s")                              # then a scoring stage, same process
    with rw.writer(IC) as wr:
        wr.put([1, 2], np.ones((2, 4), np.float32))
    assert r.count() == 2 and ro.describe(IC).count == 2         # old handles carry on
    with pytest.raises(StoreError, match="read-only"):
        ro.create_view(DEFAULT_VIEWS.OD, 80)
    ro.close()
    rw.close()
