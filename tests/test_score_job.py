"""`python -m jobs.score` end to end: real Ray, real LMDB store, real Parquet, a saved model.

A tiny archive whose features sit in the store, some images failed (no IC or OD vector), some
users without a node2vec vector or unseen in training; a PITF-IC-OD+SN model with one tag
given a huge bias (the planted signal: it must come first unless the post already has it and
--exclude-own-tags is on). Results are checked against a brute-force numpy scoring that
builds the batch from the arrays written, not from the store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import Store, StoreError
from jobs import _score_task as T
from jobs import score as J
from jobs.errors import InputError, JobError
from models import scoring as S
from models.csr import csr_from_lists
from models.errors import ModelError
from models.recsys import get_model, save
from models.views import DEFAULT_FEATURE_VIEWS

VOCAB = [f"t{i:02d}" for i in range(12)]
PLANTED = 3  # tag index with the huge bias
N_POSTS, SN_DIM = 300, 16
VIEWS = DEFAULT_FEATURE_VIEWS


def _world(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    post_id = 1000 + 3 * rng.permutation(N_POSTS)  # not sorted in the file, not contiguous
    user_id = rng.integers(100, 140, N_POSTS)
    item_id = 5000 + np.arange(N_POSTS)
    tags = [[VOCAB[j] for j in rng.choice(12, rng.integers(0, 4), replace=False)] for _ in range(N_POSTS)]
    for i in range(0, N_POSTS, 7):
        tags[i] = tags[i] + ["not-in-vocab"]
    tags[1], tags[2] = [VOCAB[PLANTED]], []
    ic = rng.standard_normal((N_POSTS, 512)).astype(np.float16)
    od = rng.random((N_POSTS, 80)).astype(np.float16)
    has_ic = np.arange(N_POSTS) % 17 != 0  # image failed
    has_od = np.arange(N_POSTS) % 23 != 0
    users = np.arange(100, 140)
    sn = rng.standard_normal((40, SN_DIM)).astype(np.float16)
    has_sn = ~np.isin(users, [101, 107])
    return dict(post_id=post_id, user_id=user_id, item_id=item_id, tags=tags, ic=ic, od=od, has_ic=has_ic,
                has_od=has_od, users=users, sn=sn, has_sn=has_sn, trained_users=np.arange(100, 135))


def _build(root: Path, w: dict, with_sn: bool = True) -> Path:
    """posts.parquet, store and a saved model under root (the job's --out)."""
    (root / "archive").mkdir(parents=True)
    pq.write_table(pa.table({
        "post_id": pa.array(w["post_id"], pa.int64()), "user_id": pa.array(w["user_id"], pa.int64()),
        "image": pa.array([f"img/{i}.jpg" for i in range(N_POSTS)]), "tags": pa.array(w["tags"], pa.list_(pa.string())),
        "item_id": pa.array(w["item_id"], pa.int64())}), root / "archive" / "posts.parquet", row_group_size=100)
    store = Store.open(root / "store", create=True)
    for f, dim in (("ic", 512), ("od", 80)):
        store.create_view(VIEWS[f], dim)
        with store.writer(VIEWS[f]) as wr:
            ok = w[f"has_{f}"]
            wr.put(w["item_id"][ok], w[f][ok])
            wr.put_errors(w["item_id"][~ok], "image failed to decode")
    if with_sn:
        store.create_view(VIEWS["sn"], SN_DIM)
        with store.writer(VIEWS["sn"]) as wr:
            wr.put(w["users"][w["has_sn"]], w["sn"][w["has_sn"]])
    # no store.close(): re-opening a closed store in the same process fails (featurestore, reported)
    m = get_model("PITF-IC-OD+SN", n_users=len(w["trained_users"]), n_items=0, n_tags=len(VOCAB), dim=8,
                  sn_dim=SN_DIM, init_std=0.3, seed=1)
    m.params["bias"][PLANTED] = 50.0
    save(m, root / "models" / "PITF-IC-OD+SN",
         meta={"tags": VOCAB, "user_ids": w["trained_users"],  # "views" as jobs.train writes them
               "views": {f: {"view": v, "dim": d} for (f, v), d in zip(VIEWS.items(), (512, 80, SN_DIM))}})
    return root


def _brute_force(w: dict, model_dir: Path, k: int, exclude: bool) -> tuple[np.ndarray, S.TopK, np.ndarray, np.ndarray]:
    """Sorted post ids, the reference top-k, the exclusion CSR, and the expected flags."""
    from models.recsys import load

    m = load(model_dir)
    order = np.argsort(w["post_id"])
    uidx = {u: i for i, u in enumerate(w["trained_users"].tolist())}
    upos = w["user_id"][order] - 100
    batch = {
        "user_index": np.array([uidx.get(u, -1) for u in w["user_id"][order].tolist()], np.int64),
        "item_index": np.full(N_POSTS, -1, np.int64),
        "ic": np.where(w["has_ic"][order, None], w["ic"][order].astype(np.float32), 0), "has_ic": w["has_ic"][order],
        "od": np.where(w["has_od"][order, None], w["od"][order].astype(np.float32), 0), "has_od": w["has_od"][order],
        "sn": np.where(w["has_sn"][upos, None], w["sn"][upos].astype(np.float32), 0), "has_sn": w["has_sn"][upos],
    }
    pv, tm = m.post_vectors(batch), m.tag_matrix()
    own = [[VOCAB.index(t) for t in w["tags"][i] if t in VOCAB] for i in order]
    ip, ix = csr_from_lists(own) if exclude else (None, None)
    flags = ((~batch["has_ic"]) * T.FLAG_NO_IC | (~batch["has_od"]) * T.FLAG_NO_OD
             | (~batch["has_sn"]) * T.FLAG_NO_USER_VECTOR | (batch["user_index"] < 0) * T.FLAG_UNSEEN_USER)
    return w["post_id"][order], S.topk_reference(pv, tm, k, ip, ix), flags.astype(np.uint8), (pv, tm, ip, ix)


def _cfg(root: Path, **kw) -> J.ScoreConfig:
    base = dict(out=str(root), model="PITF-IC-OD+SN", k=4, shard_size=64, max_in_flight=2, batch_size=40)
    return J.ScoreConfig(**{**base, **kw})


def _read_parts(root: Path) -> pa.Table:
    parts = sorted((root / "topk" / "PITF-IC-OD+SN").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _as_topk(table: pa.Table, k: int) -> S.TopK:
    tags = np.full((table.num_rows, k), S.NO_TAG, np.int32)
    scores = np.full((table.num_rows, k), -np.inf, np.float32)
    for r, (ts, ss) in enumerate(zip(table.column("tags").to_pylist(), table.column("scores").to_pylist())):
        tags[r, :len(ts)] = [VOCAB.index(t) for t in ts]
        scores[r, :len(ss)] = ss
    return S.TopK(tags, scores)


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, world, ray_local):
    """One full run with --exclude-own-tags, shared by the read-only checks."""
    root = _build(tmp_path_factory.mktemp("score"), world)
    summary = J.run(_cfg(root, exclude_own_tags=True))
    return root, summary


def test_parquet_and_view_match_brute_force(scored, world):
    root, summary = scored
    ids, want, flags, (pv, tm, ip, ix) = _brute_force(world, root / "models" / "PITF-IC-OD+SN", 4, True)
    table = _read_parts(root)
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table.schema.field("scores").type == pa.list_(pa.float32())
    assert table.column("post_id").to_numpy().tolist() == ids.tolist()  # every post once, in id order
    ok, why = S.same_topk(pv, tm, _as_topk(table, 4), want, ip, ix)
    assert ok, why
    assert np.array_equal(table.column("flags").to_numpy(), flags)
    assert np.array_equal(table.column("fallback").to_numpy(zero_copy_only=False), flags != 0)
    # the store view holds the same
    store = Store.open(root / "store", readonly=True)
    rec, found = store.reader(summary["view"]).get_many(ids)
    assert found.all()
    ok, why = S.same_topk(pv, tm, S.TopK(rec["tags"], np.where(rec["tags"] < 0, -np.inf, rec["scores"])),
                          want, ip, ix)
    assert ok, why
    assert np.array_equal(rec["flags"][:, 0], flags)
    assert summary["scored_posts"] == N_POSTS and summary["fallback_posts"] == int((flags != 0).sum())
    assert summary["fallbacks"]["no_ic"] == int((~world["has_ic"]).sum())


def test_planted_tag_first_unless_own(scored, world):
    root, _ = scored
    table = _read_parts(root).to_pydict()
    own = dict(zip(world["post_id"].tolist(), world["tags"]))
    for pid, tags in zip(table["post_id"], table["tags"]):
        if VOCAB[PLANTED] in own[pid]:
            assert VOCAB[PLANTED] not in tags
            assert not set(tags) & set(own[pid])
        else:
            assert tags[0] == VOCAB[PLANTED]


def test_rerun_skips_and_rebuilds_a_lost_part_file(scored):
    root, _ = scored
    before = _read_parts(root)
    parts = sorted((root / "topk" / "PITF-IC-OD+SN").glob("part-*.parquet"))
    parts[1].unlink()
    s = J.run(_cfg(root, exclude_own_tags=True))
    assert s["scored_posts"] == 0 and s["skipped_posts"] == N_POSTS
    assert s["skipped_shards"] == s["shards"] - 1
    assert _read_parts(root).equals(before)
    with pytest.raises(JobError, match="exclude_own_tags"):
        J.run(_cfg(root, exclude_own_tags=False))
    with pytest.raises(JobError, match="--k 4"):
        J.run(_cfg(root, exclude_own_tags=True, k=3))


def test_interrupted_run_resumes_to_the_same_result(tmp_path, world, scored):
    """A run that scored only some posts (as a killed run leaves), re-run for all: same output.
    The first run ships features from the driver, the others read the store in their tasks
    (`--features auto` on a one-node Ray): the modes give the same top-k."""
    full_root, full = scored
    root = _build(tmp_path / "r", world)
    ids_file = tmp_path / "ids.txt"
    first = np.sort(world["post_id"])[[0, 5, 70, 71, 200, 299]]
    ids_file.write_text("\n".join(map(str, first)) + "\n")
    s1 = J.run(_cfg(root, exclude_own_tags=True, which="list", post_ids_file=str(ids_file), features="ship"))
    assert s1["scored_posts"] == len(first) and s1["selected_posts"] == len(first)
    assert s1["features"] == "ship" and s1["shipped_mb"] > 0
    assert sorted(_read_parts(root).column("post_id").to_pylist()) == first.tolist()
    s2 = J.run(_cfg(root, exclude_own_tags=True))
    assert s2["skipped_posts"] == len(first) and s2["scored_posts"] == N_POSTS - len(first)
    assert s2["features"] == full["features"] == "store"       # auto, one node
    assert _read_parts(root).equals(_read_parts(full_root))
    ids = np.sort(world["post_id"])
    # each store under its own view name: models.recsys.save of equal tensors can differ in its
    # file digest (safetensors writes __metadata__ in hash-map order), hence in the model id
    a, _ = Store.open(root / "store", readonly=True).reader(s2["view"]).get_many(ids)
    b, _ = Store.open(full_root / "store", readonly=True).reader(full["view"]).get_many(ids)
    assert a.tobytes() == b.tobytes()


def test_features_auto_reads_the_store_on_one_node_and_ships_on_a_cluster():
    from jobs._score_task import resolve_features

    store = {"Alive": True, "Resources": {"CPU": 2.0, "store": 1.0}}
    plain = {"Alive": True, "Resources": {"CPU": 2.0}}
    assert resolve_features([store]) == "store"
    assert resolve_features([store, {**plain, "Alive": False}]) == "store"   # a dead node runs nothing
    assert resolve_features([store, plain]) == "ship"
    assert resolve_features([store], private=False) == "ship"   # joined a cluster (e.g. under ray job submit)
    # a head started without the store resource (ray start --head): store-reading tasks could
    # never be placed, so auto ships and an explicit --features store is refused
    assert resolve_features([plain]) == "ship"
    assert resolve_features([plain], "ship") == "ship" and resolve_features([store, plain], "store") == "store"
    with pytest.raises(JobError, match="--features store: no node of the Ray cluster has the 'store' resource"):
        resolve_features([plain], "store")


def test_untagged_only_without_exclusion(tmp_path, world, ray_local):
    root = _build(tmp_path / "u", world)
    s = J.run(_cfg(root, which="untagged", k=3, kernel="numpy"))
    untagged = sorted(p for p, t in zip(world["post_id"].tolist(), world["tags"]) if not t)
    table = _read_parts(root).to_pydict()
    assert table["post_id"] == untagged and s["scored_posts"] == len(untagged)
    assert all(t[0] == VOCAB[PLANTED] and len(t) == 3 for t in table["tags"])


# --------------------------------------------------------------------------- bad inputs


def _nothing_written(root: Path) -> bool:
    return not (root / "topk").exists()


def test_unknown_model_is_an_error_before_work(tmp_path, world):
    root = _build(tmp_path / "m", world)
    with pytest.raises(ModelError, match="unknown model 'nope'.*PITF-IC-OD\\+SN"):
        J.run(_cfg(root, model="nope"))
    assert _nothing_written(root)


def test_corrupt_model_file_is_an_error(tmp_path, world):
    root = _build(tmp_path / "c", world)
    (root / "models" / "PITF-IC-OD+SN" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        J.run(_cfg(root))
    assert _nothing_written(root)


def test_missing_feature_view_is_an_error_before_work(tmp_path, world):
    root = _build(tmp_path / "v", world, with_sn=False)
    with pytest.raises(StoreError, match="user/node2vec@1"):
        J.run(_cfg(root))
    # the views named in model.json are the ones read, not the defaults
    meta_path = root / "models" / "PITF-IC-OD+SN" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["views"] = {"ic": {"view": "image/vgg16@2"}, "od": {"view": "image/yolo@1"}, "sn": {"view": "image/yolo@1"}}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="image/vgg16@2"):
        J.run(_cfg(root))
    assert _nothing_written(root)


def test_bad_flags(tmp_path, world):
    root = _build(tmp_path / "f", world)
    with pytest.raises(ModelError, match="--k 13"):
        J.run(_cfg(root, k=13))
    with pytest.raises(JobError, match="--post-ids-file"):
        J.run(_cfg(root, which="list"))
    with pytest.raises(JobError, match="--shard-size"):
        J.run(_cfg(root, shard_size=0))
    with pytest.raises(ModelError, match="unknown scoring kernel"):
        J.run(_cfg(root, kernel="fast"))
    bad = tmp_path / "ids.txt"
    bad.write_text("1000\n7\n")
    with pytest.raises(InputError, match="not in"):
        J.run(_cfg(root, which="list", post_ids_file=str(bad)))
    bad.write_text("1000\nabc\n")
    with pytest.raises(InputError, match="'abc'"):
        J.run(_cfg(root, which="list", post_ids_file=str(bad)))
    assert _nothing_written(root)


def test_cli_exit_code_2_for_a_user_error(tmp_path, world, capsys):
    from jobs._cli import run_job

    root = _build(tmp_path / "cli", world)
    rc = run_job("score", J.ScoreConfig, J.run, ["--out", str(root), "--model", "nope"])
    assert rc == 2 and "unknown model" in capsys.readouterr().err
    shutil.rmtree(root)


def test_task_feature_reader_matches_a_fresh_one(scored, world):
    """The feature reader a score task unpickles (it opens the store in the task's process)
    reads what a reader opened here reads, missing rows included."""
    import pickle

    from jobs.features import FeatureReader, gather

    root, _ = scored
    views = dict(VIEWS)
    uid, iid = world["user_id"], world["item_id"]
    shipped = pickle.loads(pickle.dumps(FeatureReader(root / "store", views)))
    (want, _), (got, _) = gather(root / "store", uid, iid, views=views), shipped.read(uid, iid)
    assert sorted(want) == sorted(got)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
    assert not got["has_ic"].all() and not got["has_sn"].all()  # the fallback rows are there


@pytest.mark.needs_cuda
def test_job_on_gpu_matches_cpu(tmp_path, world, scored):
    """Tasks with a GPU each, scoring with torch on CUDA: the same top-k as the CPU run."""
    full_root, full = scored
    root = _build(tmp_path / "g", world)
    s = J.run(_cfg(root, exclude_own_tags=True, kernel="torch-cuda", task_gpus=0.5))
    assert s["scored_posts"] == N_POSTS
    a, b = _read_parts(root).to_pydict(), _read_parts(full_root).to_pydict()
    assert a["post_id"] == b["post_id"] and a["flags"] == b["flags"]
    assert np.allclose(np.array(a["scores"]), np.array(b["scores"]), atol=1e-5)


def _calibrated(root: Path) -> Path:
    """The saved model with a calibration in its model.json: P(right) = sigmoid(score)."""
    from models.calibration import Calibrator

    path = root / "models" / "PITF-IC-OD+SN" / "model.json"
    doc = json.loads(path.read_text())
    doc["calibration"] = Calibrator("platt", False, maps=[{"a": 1.0, "b": 0.0}], n_posts=1).to_json()
    path.write_text(json.dumps(doc))
    return path.parent


def test_probabilities_beside_scores_and_backfill_at_a_precision_target(tmp_path, world, ray_local):
    root = _build(tmp_path / "cal", world)
    _calibrated(root)
    full = J.run(_cfg(root))
    table = _read_parts(root).to_pydict()
    assert full["tags_per_post_written"] == 4
    for scores, probs in zip(table["scores"], table["probabilities"]):
        np.testing.assert_allclose(probs, 1 / (1 + np.exp(-np.asarray(scores))), rtol=1e-5)
        assert probs == sorted(probs, reverse=True)
    # --min-precision: the same view (nothing rescored), part files rebuilt with the sure tags only
    sure = J.run(_cfg(root, min_precision=0.6))
    assert sure["scored_posts"] == 0 and sure["skipped_posts"] == N_POSTS
    kept = _read_parts(root).to_pydict()
    assert kept["post_id"] == table["post_id"]
    n_kept = 0
    for tags, probs, all_tags, all_scores in zip(kept["tags"], kept["probabilities"], table["tags"],
                                                 table["scores"]):
        want = [t for t, s in zip(all_tags, all_scores) if 1 / (1 + np.exp(-float(np.float32(s)))) >= 0.6]
        assert tags == want and all(p >= 0.6 for p in probs)
        n_kept += len(tags)
    assert N_POSTS <= n_kept < 4 * N_POSTS  # the planted tag (huge bias) is sure on every post; others drop
    assert sure["tags_per_post_written"] == pytest.approx(n_kept / N_POSTS, abs=1e-4)


def test_min_precision_needs_a_calibrated_model(tmp_path, world):
    root = _build(tmp_path / "uncal", world)
    with pytest.raises(ModelError, match="--min-precision 0.8: .*holds no calibration; retrain"):
        J.run(_cfg(root, min_precision=0.8))
    assert _nothing_written(root)
    with pytest.raises(JobError, match=r"--min-precision must be in \[0, 1\]"):
        J.run(_cfg(root, min_precision=1.5))


def test_uncalibrated_model_writes_null_probabilities(tmp_path, world, ray_local):
    root = _build(tmp_path / "nullp", world)
    J.run(_cfg(root))
    table = _read_parts(root)
    assert table.schema.field("probabilities").type == pa.list_(pa.float32())
    assert table.column("probabilities").null_count == N_POSTS
