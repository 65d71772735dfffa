"""jobs.features.FeatureReader / gather on a real LMDB store: values, missing-row fallback, missing views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobs import features
from models.errors import ModelError


@pytest.fixture
def store(tmp_path):
    from featurestore import Store

    s = Store.open(str(tmp_path / "store"), create=True)
    s.create_view("image/yolo@1", 80, producer={"model": "test"})
    s.create_view("user/node2vec@1", 4, dtype="float32", producer={"model": "test"})
    with s.writer("image/yolo@1") as w:
        w.put(np.array([10, 11, 12], np.int64), np.arange(240, dtype=np.float32).reshape(3, 80) / 240)
    with s.writer("user/node2vec@1") as w:
        w.put(np.array([1, 2], np.int64), np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32))
    s.close()
    return tmp_path / "store"


def test_gather_values_and_fallback(store):
    users = np.array([1, 2, 3, 1])  # user 3 has no vector
    items = np.array([12, 99, 10, 12])  # item 99 failed extraction
    b, missing = features.gather(store, users, items, views=("od", "sn"))
    assert b["od"].shape == (4, 80) and b["od"].dtype == np.float32
    np.testing.assert_allclose(b["od"][0], np.arange(160, 240) / 240, atol=1e-3)  # float16 in the store
    assert b["has_od"].tolist() == [True, False, True, True] and not b["od"][1].any()
    assert b["has_sn"].tolist() == [True, True, False, True] and not b["sn"][2].any()
    np.testing.assert_array_equal(b["sn"][1], [5, 6, 7, 8])
    assert missing == {"od": 1, "sn": 1}
    assert features.check_views(store, ["sn"])["sn"]["dim"] == 4


def test_missing_view_and_store_name_the_fix(store, tmp_path):
    with pytest.raises(ModelError, match=r"view image/vgg16@1 \(ic features\) is not in store .* jobs.extract"):
        features.check_views(store, ["ic", "od"])
    with pytest.raises(ModelError, match="does not exist; run `python -m jobs.extract`"):
        features.gather(tmp_path / "nowhere", np.array([1]), np.array([1]), views=("od",))
    with pytest.raises(ModelError, match=r"unknown feature key\(s\) \['xx'\]"):
        features.gather(store, np.array([1]), np.array([1]), views=("xx",))


@pytest.mark.parametrize("compact", [False, True])
def test_spilled_gather_equals_in_memory(store, tmp_path, monkeypatch, compact):
    """Spilled to memory-mapped files (training at archive scale): the same values, dtype and
    fallbacks as the in-memory gather, across several read chunks and with repeated ids."""
    monkeypatch.setattr(features, "CHUNK", 3)  # several chunks, a repeated id inside one
    users = np.array([1, 2, 3, 1, 2, 2, 9])
    items = np.array([12, 99, 10, 12, 11, 11, 10])
    want, want_missing = features.gather(store, users, items, views=("od", "sn"), compact=compact)
    got, got_missing = features.gather(store, users, items, views=("od", "sn"), compact=compact,
                                       spill_dir=tmp_path / "spill")
    assert got_missing == want_missing == {"od": 1, "sn": 2}
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_array_equal(got[k], want[k])
    assert isinstance(got["od"], np.memmap) and not got["od"].flags.writeable  # read-only map, not heap
    assert got["od"].dtype == (np.float16 if compact else np.float32)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "spill").iterdir()) == ["od", "sn"]


def test_train_removes_spills_of_killed_runs_only(tmp_path):
    import os

    from jobs import _train_data as train

    dead = tmp_path / f"{train.SPILL_PREFIX}999999999-abc"  # no such pid
    alive = tmp_path / f"{train.SPILL_PREFIX}{os.getpid()}-def"
    other = tmp_path / "store"
    for d in (dead, alive, other):
        d.mkdir()
        (d / "f.npy").write_bytes(b"x")
    d = train._spill_dir(tmp_path)
    assert not dead.exists() and alive.exists() and other.exists()
    assert Path(d.name).parent == tmp_path and Path(d.name).name.startswith(f"{train.SPILL_PREFIX}{os.getpid()}-")



def test_train_spills_to_tmp_when_the_store_location_is_read_only(tmp_path, monkeypatch):
    """A store on a read-only mount: the feature files go to the system temporary directory
    (root ignores file modes here, so the refusal is simulated at the directory creation)."""
    import tempfile

    from jobs import _train_data as train

    ro, scratch = tmp_path / "ro", tmp_path / "scratch"
    ro.mkdir()
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real = tempfile.TemporaryDirectory

    def refuse_ro(*a, **k):
        if k.get("dir") is not None and Path(k["dir"]) == ro:
            raise PermissionError(13, "Read-only file system", str(ro))
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse_ro)
    d = train._spill_dir(ro)
    assert Path(d.name).parent == scratch and Path(d.name).name.startswith(train.SPILL_PREFIX)
    assert train._spill_dir(tmp_path).name.startswith(str(tmp_path))  # writable: beside the store
