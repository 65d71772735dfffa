"""Property tests (hypothesis) of the store's key and value codecs.

Round trips, and: any byte string handed to a decoder gives a clear StoreError or exactly
the vector those bytes encode (never another exception, never a wrong vector).
Each property checks that it ran its cases (tests/_fuzz.py); the run's summary lists them.
"""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
from _fuzz import counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import Store, StoreError
from featurestore.codec import (
    MAX_ID,
    ValueCodec,
    as_ids,
    decode_key,
    decode_keys,
    encode_keys,
    split_keys,
)
from featurestore.meta import ViewInfo, check_header

FAST_CASES, SLOW_CASES = 300, 60
FAST = settings(max_examples=FAST_CASES, deadline=None, derandomize=True)
SLOW = settings(max_examples=SLOW_CASES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

ids_st = st.lists(st.integers(0, MAX_ID), max_size=50)
codec_st = st.one_of(
    st.builds(ValueCodec.vector, st.integers(1, 24), st.sampled_from(["float16", "float32"])),
    st.builds(lambda k, j: ValueCodec.records({"tags": ("int32", k), "scores": ("float32", j)}),
              st.integers(1, 6), st.integers(1, 6)),
)


# ------------------------------------------------------------------------ keys
@counted(FAST_CASES)
@FAST
@given(ids_st)
def test_key_round_trip_and_order(ids):
    a = np.array(ids, dtype=np.int64)
    keys = split_keys(encode_keys(a))
    assert all(len(k) == 8 for k in keys)
    np.testing.assert_array_equal(decode_keys(keys), a)
    assert [decode_key(k) for k in keys] == ids
    assert sorted(keys) == split_keys(encode_keys(np.sort(a)))


@counted(FAST_CASES)
@FAST
@given(st.binary(max_size=20))
def test_decode_key_any_bytes(b):
    try:
        v = decode_key(b)
    except StoreError:
        assert len(b) != 8 or int.from_bytes(b, "big") > MAX_ID
        return
    assert len(b) == 8 and v == int.from_bytes(b, "big") <= MAX_ID


@counted(FAST_CASES)
@FAST
@given(st.lists(st.binary(max_size=10), max_size=8))
def test_decode_keys_any_bytes(keys):
    try:
        out = decode_keys(keys)
    except StoreError:
        assert any(len(k) != 8 or int.from_bytes(k, "big") > MAX_ID for k in keys)
        return
    assert out.tolist() == [int.from_bytes(k, "big") for k in keys]


@counted(FAST_CASES)
@FAST
@given(st.lists(st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=3),
                          st.booleans(), st.none()), max_size=6))
def test_as_ids_any_input(xs):
    try:
        out = as_ids(xs)
    except StoreError:
        assert not xs or not all(type(x) is int and 0 <= x <= MAX_ID for x in xs)
        return
    assert all(type(x) is int and 0 <= x <= MAX_ID for x in xs)
    assert out.dtype == np.int64 and out.tolist() == xs


# ---------------------------------------------------------------------- values
def _random_values(codec: ValueCodec, n: int, data) -> np.ndarray:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if codec.kind == "vector":
        return (rng.standard_normal((n, codec.dim)) * 100).astype(np.float32)
    out = np.zeros(n, dtype=codec.record)
    out["tags"] = rng.integers(-2**31, 2**31, out["tags"].shape)
    out["scores"] = rng.standard_normal(out["scores"].shape)
    return out


@counted(FAST_CASES)
@FAST
@given(codec_st, st.integers(0, 20), st.data())
def test_value_round_trip(codec, n, data):
    ids = np.arange(n, dtype=np.int64)
    vals = _random_values(codec, n, data)
    enc = codec.encode(vals, ids)
    blob = enc.tobytes()
    assert len(blob) == n * codec.nbytes
    dec = codec.decode_block(blob, ids)
    if codec.kind == "vector":
        np.testing.assert_array_equal(dec.astype(np.float32), vals.astype(codec.record.base).astype(np.float32))
    else:
        np.testing.assert_array_equal(dec["tags"], vals["tags"])
        np.testing.assert_array_equal(dec["scores"], vals["scores"])


def _finite_bytes(codec: ValueCodec, b: bytes) -> bool:
    arr = np.frombuffer(b, dtype=codec.record, count=1)
    cols = [arr] if codec.kind == "vector" else [arr[f] for f in codec.float_fields]
    with np.errstate(invalid="ignore"):
        return all(np.isfinite(c.astype(np.float64)).all() for c in cols)


@counted(FAST_CASES)
@FAST
@given(codec_st, st.data())
def test_decode_value_any_bytes(codec, data):
    size = data.draw(st.one_of(st.just(codec.nbytes), st.integers(0, codec.nbytes + 9)))
    b = data.draw(st.binary(min_size=size, max_size=size))
    try:
        v = codec.decode_value(b, 7)
    except StoreError as e:
        assert "id 7" in str(e) or "ids 7" in str(e)
        assert len(b) != codec.nbytes or not _finite_bytes(codec, b)
        return
    assert len(b) == codec.nbytes and _finite_bytes(codec, b)
    assert v.tobytes() == b                                  # exactly the bytes given, never another vector


@counted(FAST_CASES)
@FAST
@given(st.binary(max_size=200))
def test_metadata_json_any_bytes(b):
    for fn in (lambda: ViewInfo.from_json(b, "x/y@1"), lambda: check_header(b, "/s")):
        try:
            fn()
        except StoreError:
            pass


# -------------------------------------------------- a real reader over LMDB bytes
@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "s"
    s = Store.open(path, create=True)
    s.create_view("image/vgg16@1", 4)
    with s.writer("image/vgg16@1") as w:
        w.put([1, 3], np.ones((2, 4), np.float32))
    s.close()
    return path


@counted(SLOW_CASES)
@SLOW
@given(st.one_of(st.binary(max_size=16), st.binary(min_size=8, max_size=8)))
def test_reader_on_any_stored_bytes(fuzz_store, b):
    """Bytes planted behind the store's back under id 2: get_many/scan raise StoreError or
    return exactly those bytes; ids 1 and 3 are never affected."""
    env = lmdb.open(str(fuzz_store), max_dbs=512)
    db = env.open_db(b"data:image/vgg16@1")
    with env.begin(write=True) as txn:
        txn.put((2).to_bytes(8, "big"), b, db=db)
    env.close()
    s = Store.open(fuzz_store, readonly=True)
    r = s.reader("image/vgg16@1")
    try:
        for call in (lambda: r.get_many([1, 2, 3], dtype=None), lambda: _scan_all(r)):
            try:
                vals, found = call()
            except StoreError as e:
                assert "2" in str(e)
                continue
            assert len(b) == 8 and found.all()
            assert vals[1].tobytes() == b
            np.testing.assert_array_equal(vals[[0, 2]], np.ones((2, 4), np.float16))
    finally:
        r.close()
        s.close()


def _scan_all(r):
    ids, vals = next(r.scan(dtype=None))
    assert ids.tolist() == [1, 2, 3]
    return vals, np.ones(3, bool)
