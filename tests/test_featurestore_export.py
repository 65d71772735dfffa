"""Feature store outputs: Parquet export, faiss index, the CLI, and the Ray adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore import DEFAULT_VIEWS, Store, topk_view
from featurestore.cli import main as cli_main
from featurestore.export import build_index, export_parquet, load_index

IC = DEFAULT_VIEWS.IC
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def filled(tmp_path):
    """A store with 300 vectors (ids 0, 3, 6, ...) and a 2-row record view."""
    path = tmp_path / "store"
    s = Store.open(path, create=True)
    s.create_view(IC, 16, producer={"model": "vgg16", "weights": "random weights"})
    ids = np.arange(300, dtype=np.int64) * 3
    v = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    with s.writer(IC) as w:
        w.put(ids, v)
        w.put_errors([1, 2, 4], ["decode: truncated", "decode: truncated", "missing"])
    name = topk_view("M1")
    s.create_record_view(name, {"tags": ("int32", 2), "scores": ("float32", 2)})
    rec = np.zeros(2, dtype=s.reader(name).codec.record)
    rec["tags"], rec["scores"] = [[5, 6], [7, 8]], [[0.5, 0.25], [1.0, 0.0]]
    with s.writer(name) as w:
        w.put([10, 11], rec)
    yield s, ids, v.astype(np.float16).astype(np.float32)
    s.close()


def test_export_parquet_streams_vectors(filled, tmp_path):
    s, ids, v = filled
    out = tmp_path / "ic.parquet"
    assert export_parquet(s.reader(IC), out, batch_size=64) == 300
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 5                       # one row group per scan batch: bounded memory
    t = f.read()
    assert str(t.schema.field("id").type) == "int64" and str(t.schema.field("vector").type) == "list<element: float>"
    np.testing.assert_array_equal(t["id"].to_numpy(), ids)
    np.testing.assert_array_equal(np.stack(t["vector"].to_numpy(zero_copy_only=False)), v)


def test_export_record_view_and_empty_view(filled, tmp_path):
    s, _, _ = filled
    t = pq.read_table(_export(s, topk_view("M1"), tmp_path / "t.parquet"))
    assert t.column_names == ["id", "tags", "scores"]
    assert t.to_pylist()[1] == {"id": 11, "tags": [7, 8], "scores": [1.0, 0.0]}
    s.create_view(DEFAULT_VIEWS.SN, 8)
    t = pq.read_table(_export(s, DEFAULT_VIEWS.SN, tmp_path / "e.parquet"))
    assert t.num_rows == 0 and t.column_names == ["id", "vector"]


def _export(s, view, out):
    export_parquet(s.reader(view), out)
    return out


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_index_finds_planted_neighbour(filled, tmp_path, kind):
    s, ids, v = filled
    meta = build_index(s.reader(IC), tmp_path / "idx", kind=kind, metric="l2", nlist=4 if kind == "ivf" else 0)
    assert meta["count"] == 300 and meta["kind"] == kind
    index, saved_ids, m = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(saved_ids, ids)
    if kind == "ivf":
        index.nprobe = 4                               # all lists: exact, so the test is deterministic
    q = v[[17, 250]] + 1e-3                            # planted: nearest neighbour is the stored vector itself
    _, found = index.search(q, 1)
    assert found[:, 0].tolist() == [ids[17], ids[250]] and m["view"] == IC


def test_index_refuses_record_view(filled, tmp_path):
    s, _, _ = filled
    from featurestore import StoreError
    with pytest.raises(StoreError, match="vector view"):
        build_index(s.reader(topk_view("M1")), tmp_path / "x")


# ------------------------------------------------------------------------- CLI
def test_cli_commands(filled, tmp_path, capsys):
    s, ids, v = filled
    path = s.path
    assert cli_main(["info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["views"][IC]["count"] == 300
    assert info["views"][IC]["errors_by_reason"] == {"decode: truncated": 2, "missing": 1}
    assert info["views"][IC]["producer"]["weights"] == "random weights"
    assert cli_main(["info", path]) == 0
    assert "image/vgg16@1" in capsys.readouterr().out
    assert cli_main(["get", path, "--view", IC, "3", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["found"] and np.allclose(rows[0]["vector"], v[1]) and rows[1] == {"id": 4, "found": False}
    assert cli_main(["export", path, "--view", IC, "--out", str(tmp_path / "o.parquet")]) == 0
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 300
    assert cli_main(["index", path, "--view", IC, "--out", str(tmp_path / "idx"), "--kind", "flat"]) == 0
    assert (tmp_path / "idx" / "index.faiss").exists()
    assert cli_main(["verify", path]) == 0
    assert cli_main(["snapshot", path, str(tmp_path / "snap")]) == 0
    capsys.readouterr()
    assert cli_main(["verify", str(tmp_path / "snap"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "problems": []}


@pytest.mark.parametrize("argv,msg", [
    (["info", "{tmp}/nope"], "no feature store at"),
    (["get", "{store}", "--view", "image/none@1", "1"], "no view 'image/none@1'"),
    (["export", "{store}", "--view", "bad name", "--out", "{tmp}/x.parquet"], "bad view name"),
    (["snapshot", "{store}", "{store}"], "not an empty folder"),
])
def test_cli_errors_are_one_line_exit_2(filled, tmp_path, capsys, argv, msg):
    s, _, _ = filled
    argv = [a.format(tmp=tmp_path, store=s.path) for a in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and err.startswith(f"featurestore {argv[0]}: error:")


def test_cli_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "featurestore", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.returncode == 0 and "verify" in out.stdout and "snapshot" in out.stdout


def test_core_imports_no_torch_or_ray():
    code = ("import sys, featurestore, featurestore.export, featurestore.cli, featurestore.ray_writer;"
            "print(any(m.split('.')[0] in ('torch', 'ray', 'faiss') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------- Ray
def test_ray_tasks_and_dataset_deliver_to_single_writer(ray_local, tmp_path):
    ray = ray_local
    from featurestore.ray_writer import write_dataset, write_from_refs

    @ray.remote
    def embed(lo, hi):                                 # a worker: values for ids [lo, hi), id 13 fails
        ids = np.arange(lo, hi)
        vec = np.repeat(ids[:, None], 4, axis=1).astype(np.float32)
        err = np.array(["decode: not an image" if i == 13 else "" for i in ids], dtype=object)
        return {"id": ids, "vector": vec, "error": err}

    s = Store.open(tmp_path / "s", create=True)
    s.create_view(IC, 4)
    refs = [embed.remote(lo, lo + 10) for lo in range(0, 50, 10)]
    stats = write_from_refs(s, IC, refs, batch_rows=16)
    assert stats["rows"] == 49 and stats["errors"] == 1 and stats["commits"] >= 3
    got, found = s.reader(IC).get_many([12, 13, 49])
    assert found.tolist() == [True, False, True] and got[2].tolist() == [49.0] * 4
    assert s.errors(IC)[1] == ["decode: not an image"]
    # Re-delivering the same results (a resumed job) skips what is there.
    again = write_from_refs(s, IC, [embed.remote(0, 20)], skip_existing=True)
    assert again["rows"] == 0 and again["skipped"] == 19

    s.create_view(DEFAULT_VIEWS.SN, 3, dtype="float32")
    ds = ray.data.range(40).map_batches(
        lambda b: {"id": b["id"], "vector": np.stack([b["id"] * 1.0] * 3, axis=1).astype(np.float32)},
        batch_format="numpy")
    stats = write_dataset(s, DEFAULT_VIEWS.SN, ds, batch_rows=16)
    assert stats["rows"] == 40 and s.reader(DEFAULT_VIEWS.SN).get(39).tolist() == [39.0] * 3
    assert s.verify() == []
    s.close()


def test_writer_actor_pinned_to_store_node(ray_local, tmp_path):
    ray = ray_local
    from featurestore.ray_writer import writer_actor

    actor = writer_actor(str(tmp_path / "s"), create=True)
    ray.get(actor.create_view.remote(IC, 4, "float32"))

    @ray.remote
    def work(actor, lo):                               # tasks deliver straight to the writer actor
        ids = np.arange(lo, lo + 25)
        return ray.get(actor.put.remote(IC, ids, np.repeat(ids[:, None], 4, axis=1).astype(np.float32)))

    assert sum(ray.get([work.remote(actor, lo) for lo in range(0, 100, 25)])) == 100
    ray.get(actor.put_errors.remote(IC, [500], ["decode: bad"]))
    assert ray.get(actor.existing.remote(IC, [0, 99, 100])).tolist() == [True, True, False]
    assert ray.get(actor.close.remote()) == {IC: 100}
    ray.kill(actor)
    with Store.open(tmp_path / "s") as s:
        assert s.reader(IC).get(42).tolist() == [42.0] * 4 and s.errors(IC)[0].tolist() == [500]
        with s.writer(IC) as w:                         # the actor released the writer lock
            w.put([1000], np.zeros((1, 4), np.float32))


# ------------------------------------------------------------------------- URIs
def test_export_and_index_to_s3_read_back_equal(filled, tmp_path, s3_env, s3_server):
    """--out as an s3:// URI (a real S3-compatible server): the same bytes as a local export."""
    s, ids, v = filled
    s3_server.client().create_bucket(Bucket="export-test")
    assert cli_main(["export", s.path, "--view", IC, "--out", "s3://export-test/f/ic.parquet"]) == 0
    export_parquet(s.reader(IC), tmp_path / "ic.parquet")
    remote = s3_server.objects("export-test", "f/")
    assert list(remote) == ["f/ic.parquet"]                       # one object, no temporary one
    assert remote["f/ic.parquet"] == (tmp_path / "ic.parquet").read_bytes()
    assert cli_main(["index", s.path, "--view", IC, "--out", "s3://export-test/idx", "--kind", "flat"]) == 0
    index, saved_ids, meta = load_index("s3://export-test/idx")
    np.testing.assert_array_equal(saved_ids, ids)
    _, found = index.search(v[[5]] + 1e-3, 1)
    assert found[0, 0] == ids[5] and meta["count"] == 300


def test_export_to_a_denied_or_missing_bucket_is_one_line_exit_2(filled, s3_env, capsys):
    s, _, _ = filled
    assert cli_main(["export", s.path, "--view", IC, "--out", "s3://no-such-export-bucket/ic.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurestore export: error:") and "no-such-export-bucket" in err and "\n" not in err
    s3_env(user="nobody")
    assert cli_main(["export", s.path, "--view", IC, "--out", "s3://export-test/denied.parquet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "access denied to s3://export-test/denied.parquet" in err and "\n" not in err


def test_store_refuses_a_uri_with_the_fix(tmp_path):
    from featurestore import StoreError
    with pytest.raises(StoreError, match="LMDB folder on a local disk"):
        Store.open("s3://bucket/store", create=True)
