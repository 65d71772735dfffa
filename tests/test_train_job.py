"""jobs.train end to end on a seeded planted-signal split: in-process, on Ray, resume, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import train as jt
from jobs.errors import JobError
from models.errors import ModelError
from models.recsys import load
from models.recsys._synthetic import make_synthetic

SN_DIM = 16


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _table(part: dict, offset: int) -> pa.Table:
    n = len(part["user_index"])
    items = np.where(part["item_index"] >= 0, part["item_index"], np.arange(n) + 500_000) + 1_000_000
    return pa.table({
        "post_id": pa.array(np.arange(n) + offset, pa.int64()),
        "user_id": pa.array(part["user_index"] + 1000, pa.int64()),
        "item_id": pa.array(items, pa.int64()),
        "tags": pa.array([[f"tag{t:03d}" for t in ts] for ts in part["tags"]], pa.list_(pa.string())),
    })


def write_archive(out, seed=0, with_store=True, n_users=160, test_per_user=1):
    """split/{train,val}.parquet and (optionally) a real LMDB store with ic, od, sn views."""
    s = make_synthetic(n_users=n_users, sn_dim=SN_DIM, seed=seed, test_per_user=test_per_user)
    split = out / "split"
    split.mkdir(parents=True)
    train, val = _table(s.train, 0), _table(s.test, 100_000)
    pq.write_table(train, split / "train.parquet")
    pq.write_table(val, split / "val.parquet")
    if with_store:
        from featurestore import Store

        store = Store.open(str(out / "store"), create=True)
        for f, name, dim in (("ic", "image/vgg16@1", 512), ("od", "image/yolo@1", 80), ("sn", "user/node2vec@1", SN_DIM)):
            store.create_view(name, dim, producer={"model": "synthetic test"})
            with store.writer(name) as w:
                if f == "sn":
                    users = np.concatenate([s.train["user_index"], s.test["user_index"]])
                    vecs = np.concatenate([s.train["sn"], s.test["sn"]])
                    ids, first = np.unique(users, return_index=True)
                    w.put(ids + 1000, vecs[first])
                else:
                    ids = np.concatenate([train["item_id"].to_numpy(), val["item_id"].to_numpy()])
                    w.put(ids, np.concatenate([s.train[f], s.test[f]]))
        store.close()
    return s


def cfg(tmp_path, **kw) -> jt.TrainConfig:
    # One replica: these tests are about one training run (replicas have their own tests below).
    base = dict(out=str(tmp_path), dim=16, epochs=6, batch_size=128, lr=0.05, reg=1e-4, patience=0, replicas=1)
    return jt.TrainConfig(**{**base, **kw})


def test_cli_trains_and_saves_a_loadable_model(tmp_path, recsys_split):
    recsys_split(tmp_path)
    from jobs._cli import run_job

    code = run_job("train", jt.TrainConfig, jt.run,
                   ["--out", str(tmp_path), "--model", "PITF-IC-OD+SN", "--dim", "16", "--epochs", "8",
                    "--batch-size", "128"])
    assert code == 0
    m = load(tmp_path / "models" / "PITF-IC-OD+SN")
    meta = m.meta
    assert meta["views"]["ic"]["view"] == "image/vgg16@1" and meta["views"]["sn"]["dim"] == SN_DIM
    assert len(meta["metrics"]["history"]) == 8 and meta["metrics"]["val"]["f1@5"] > 0.4
    assert m.tags[0] == "tag000" and len(m.user_ids) == 160
    summary = json.loads((tmp_path / "reports" / "train.summary.json").read_text())
    assert summary["models"]["PITF-IC-OD+SN"]["val_f1@5"] == pytest.approx(meta["metrics"]["val"]["f1@5"], abs=1e-6)
    # The social multi-label net reads the same store; the paper's SGD settings by default.
    out = jt.run(cfg(tmp_path, model="social-multilabel", epochs=30, hidden=32))
    net = load(tmp_path / "models" / "social-multilabel")
    training = net.meta["training"]
    assert net.meta["kind"] == "multilabel" and (training["batch_size"], training["lr"]) == (450, 0.01)
    assert training["momentum"] == 0.9 and training["tag_reduction"] == "sum"
    assert out["models"]["social-multilabel"]["val_f1@5"] > 0.4


def test_resumed_job_equals_uninterrupted(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    jt.run(cfg(tmp_path, model="FM", epochs=2))  # "killed" after epoch 2
    jt.run(cfg(tmp_path, model="FM", epochs=4))  # same settings, more epochs: resumes at epoch 2
    resumed = load(tmp_path / "models" / "FM")
    assert [h["epoch"] for h in resumed.meta["metrics"]["history"]] == [1, 2, 3, 4]
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    (fresh_dir / "split").symlink_to(tmp_path / "split")
    jt.run(cfg(fresh_dir, model="FM", epochs=4))
    fresh = load(fresh_dir / "models" / "FM")
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)


def test_two_ray_workers_match_one_worker(tmp_path, ray_local, recsys_split):
    # 8 held-out posts per user: F1 differences of 0.005 are above the validation set's noise.
    recsys_split(tmp_path, with_store=False, n_users=160, test_per_user=8)
    s = make_synthetic(n_users=160, sn_dim=SN_DIM, seed=0, test_per_user=8)
    data = jt.load_split(tmp_path / "split")
    # Features straight from the generator (the store path is covered above).
    for part, src in ((data.train, s.train), (data.val, s.test)):
        for f in ("ic", "od"):
            part.features[f], part.has[f] = src[f], np.ones(len(src[f]), bool)
    # Settings where one worker's own run-to-run spread (sampling order) is ~0.003 F1@5.
    bpr = jt.BPRConfig(lr=0.1, reg=1e-4, batch_size=512, epochs=30, seed=0)
    f1 = {}
    for workers in (0, 2):
        c = cfg(tmp_path / f"w{workers}", num_workers=workers)
        model, hist, _ = jt.fit("PITF-IC-OD", data, c, bpr, 0, "cpu", ckpt=None)
        f1[workers] = hist[-1]["val_f1@5"]
        print(f"PITF-IC-OD val F1@5 with {workers or 1} worker(s) ({workers} Ray): {f1[workers]:.4f}")
    assert f1[0] > 0.5
    assert abs(f1[2] - f1[0]) <= 0.005, f1


@pytest.mark.slow  # the two-worker kill test below covers the restart; this adds Ray == in-process
def test_killed_worker_resumes_from_last_epoch(tmp_path, ray_local, recsys_split):
    recsys_split(tmp_path, with_store=False)
    data = jt.load_split(tmp_path / "split")
    bpr = jt.BPRConfig(lr=0.05, reg=1e-4, batch_size=128, epochs=3, seed=0)
    ref, _, _ = jt.fit("PITF", data, cfg(tmp_path), bpr, 0, "cpu", ckpt=None)
    c = cfg(tmp_path, num_workers=1, fail_at="1:0")  # the worker dies hard in epoch 2
    got, hist, _ = jt.fit("PITF", data, c, bpr, 0, "cpu", ckpt=None)
    assert (tmp_path / "fault-fired").exists()
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for k, v in ref.state_dict().items():  # one Ray worker = the in-process trainer, bit for bit
        torch.testing.assert_close(got.state_dict()[k], v, rtol=0, atol=0)


def test_model_needing_a_missing_view_fails_before_work(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    with pytest.raises(ModelError, match="does not exist|image/vgg16@1"):
        jt.run(cfg(tmp_path, model="PITF-IC"))
    assert not (tmp_path / "checkpoints").exists()


def test_all_skips_models_whose_view_is_missing(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    out = jt.run(cfg(tmp_path, all=True, epochs=1))
    assert set(out["models"]) == {"PITF", "FM"}
    assert "PITF-IC-OD" in out["skipped"] and "social-multilabel" in out["skipped"]


def test_unknown_model_and_missing_split_are_user_errors(tmp_path):
    with pytest.raises(ModelError, match="valid: PITF, FM"):
        jt.run(cfg(tmp_path, model="PITF-XX"))
    with pytest.raises(JobError, match="jobs.prepare"):
        jt.run(cfg(tmp_path, model="PITF"))
    with pytest.raises(JobError, match="--max-row-samples must be >= 1, got 0"):
        jt.run(cfg(tmp_path, model="PITF", max_row_samples=0))


def test_unseen_validation_tags_are_dropped_and_counted(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    val = pq.read_table(tmp_path / "split" / "val.parquet").to_pylist()
    val[0]["tags"] = val[0]["tags"] + ["never-seen"]
    pq.write_table(pa.Table.from_pylist(val, schema=pq.read_schema(tmp_path / "split" / "val.parquet")),
                   tmp_path / "split" / "val.parquet")
    out = jt.run(cfg(tmp_path, model="PITF", epochs=1))
    assert out["dropped"]["val_tags_unseen_in_train"] == 1


def test_tune_picks_from_the_grid(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    out = jt.run(cfg(tmp_path, model="FM", tune=True, tune_epochs=2, epochs=2, lr_grid=[0.001, 0.1],
                     reg_grid=[1e-4], replicas=2))
    fm = load(tmp_path / "models" / "FM")
    tuning = fm.meta["training"]["tuning"]
    # the search's best point is the first replica; the second trains at the chosen lr and reg
    assert [r["seed"] for r in fm.meta["training"]["replicas"]] == [0, 1] and fm.dim == 2 * 16
    assert fm.meta["training"]["lr"] == tuning["best"]["lr"] and (tmp_path / "checkpoints" / "FM" / "replica-1").is_dir()
    ok = [p for p in tuning["points"] if p["val_f1@5"] == p["val_f1@5"]]
    assert len(tuning["points"]) >= 2
    assert out["models"]["FM"]["lr"] == max(ok, key=lambda r: r["val_f1@5"])["lr"] == tuning["best"]["lr"]
    # a best lr or reg on the edge of a grid widens it, and says so
    assert tuning["widened"] and all("widening the grid to" in w for w in tuning["widened"])


def test_killed_worker_of_two_restarts_both_and_matches_an_uninterrupted_run(tmp_path, ray_local, recsys_split):
    """Rank 1 dies while rank 0 waits in the all-reduce: both restart from the last epoch."""
    recsys_split(tmp_path, with_store=False)
    data = jt.load_split(tmp_path / "split")
    bpr = jt.BPRConfig(lr=0.05, reg=1e-4, batch_size=128, epochs=3, seed=0)
    ref, _, _ = jt.fit("FM", data, cfg(tmp_path / "a", num_workers=2), bpr, 0, "cpu", ckpt=None)
    got, hist, _ = jt.fit("FM", data, cfg(tmp_path / "b", num_workers=2, fail_at="1:1"), bpr, 0, "cpu", ckpt=None)
    assert (tmp_path / "b" / "fault-fired").exists() and len(hist) == 3
    for k, v in ref.state_dict().items():  # gloo's two-way sum is order-free: bit for bit again
        torch.testing.assert_close(got.state_dict()[k], v, rtol=0, atol=0)


def test_more_workers_than_cpus_is_a_user_error(tmp_path, ray_local, recsys_split):
    recsys_split(tmp_path, with_store=False)
    with pytest.raises(JobError, match="--num-workers 5 needs 5 CPUs but the Ray cluster has 2"):
        jt.run(cfg(tmp_path, model="PITF", num_workers=5))


def _most_popular_f1(data: jt.SplitData) -> float:
    from models.metrics import metrics_at_k

    top = np.argsort(-np.bincount(data.train.indices, minlength=len(data.tags)), kind="stable")[:5]
    return metrics_at_k(np.tile(top, (len(data.val), 1)), data.val.indptr, data.val.indices, ks=(5,))["f1@5"]


def test_collinear_relu_features_with_one_batch_per_epoch_stay_finite_and_learn(tmp_path, recsys_split):
    """The demo's divergence: non-negative, nearly collinear image features (like ReLU + GAP
    activations of a random CNN: cosine ~0.99 between any two), the whole epoch in one batch
    (batch size 4096 > pairs), every other setting the job's default (lr, reg, dim, epochs).
    Summed over the batch, the projections' gradients added up along the common direction
    and training diverged in epoch 26; centring + the capped row step must keep it finite."""
    s = recsys_split(tmp_path, n_users=60)
    from featurestore import Store

    rng = np.random.default_rng(1)
    common = {"ic": np.abs(rng.normal(size=512)) * 6, "od": np.abs(rng.normal(size=80)) * 3}
    store = Store.open(str(tmp_path / "store"), create=False)
    for f, name in (("ic", "image/vgg16@1"), ("od", "image/yolo@1")):
        ids = np.concatenate([_table(s.train, 0)["item_id"].to_numpy(), _table(s.test, 0)["item_id"].to_numpy()])
        vecs = np.concatenate([s.train[f], s.test[f]]) + common[f].astype(np.float32)
        with store.writer(name) as w:
            w.put(ids, vecs)
    store.close()
    data = jt.load_split(tmp_path / "split")
    defaults = jt.TrainConfig(out=str(tmp_path))
    assert len(data.train.pairs()[0]) < 4096  # one step per epoch
    out = jt.run(jt.TrainConfig(out=str(tmp_path), model="PITF-IC-OD", batch_size=4096))
    m = load(tmp_path / "models" / "PITF-IC-OD")
    hist = m.meta["metrics"]["history"]
    assert len(hist) < defaults.epochs and all(np.isfinite(h["loss"]) for h in hist)  # stopped early
    assert min(h["loss"] for h in hist) < 0.5 * hist[0]["loss"]
    mp = _most_popular_f1(data)
    assert out["models"]["PITF-IC-OD"]["val_f1@5"] > mp + 0.15, (out["models"], mp)
    # The centre was fitted on the training posts, saved, and is what scoring subtracts.
    centre = m.centres["ic"].numpy()
    x = s.train["ic"] + common["ic"]
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(centre, want, rtol=1e-3, atol=1e-5)


def test_all_records_a_diverging_model_and_trains_the_others(tmp_path, monkeypatch, caplog, recsys_split):
    """--all: a NumericalError in one model is a result (summary 'failed'), not the job's end;
    exit code 0 while one model trained. Fault injection: FM's training raises, as a
    divergence would (the divergence itself is real in the single-model case below)."""
    recsys_split(tmp_path, with_store=False)
    from jobs._cli import run_job
    from models.errors import NumericalError

    real = jt.train_one

    def diverging_fm(name, *a, **kw):
        if name == "FM":
            raise NumericalError("FM: training diverged (loss nan) in epoch 3 with lr=9; lower --lr or raise --reg")
        return real(name, *a, **kw)

    monkeypatch.setattr(jt, "train_one", diverging_fm)
    code = run_job("train", jt.TrainConfig, jt.run, ["--out", str(tmp_path), "--all", "--dim", "8", "--epochs", "1"])
    assert code == 0
    summary = json.loads((tmp_path / "reports" / "train.summary.json").read_text())
    assert set(summary["models"]) == {"PITF"}
    assert summary["failed"] == {"FM": "FM: training diverged (loss nan) in epoch 3 with lr=9; lower --lr or raise --reg"}
    assert "FAILED FM" in caplog.text
    assert not (tmp_path / "models" / "FM").exists()


def test_single_diverging_model_exits_2_with_one_line(tmp_path, capsys, recsys_split):
    recsys_split(tmp_path, with_store=False)
    from jobs._cli import run_job

    code = run_job("train", jt.TrainConfig, jt.run, ["--out", str(tmp_path), "--model", "FM", "--dim", "8",
                                                     "--epochs", "2", "--lr", "1e30"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: train: FM: training diverged") and "lr=1e+30" in err


# --------------------------------------------------------------------------- early stopping, calibration


def test_early_stopping_keeps_the_best_epoch_and_says_why(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    out = jt.run(cfg(tmp_path, model="PITF", epochs=200, patience=3, patience_frac=0.0, lr=0.2))
    m = load(tmp_path / "models" / "PITF")
    hist, stop = m.meta["metrics"]["history"], m.meta["training"]["early_stopping"]
    best = max(range(len(hist)), key=lambda i: (hist[i]["val_f1@5"], -i))
    assert len(hist) < 200 and len(hist) == best + 1 + 3 == stop["epochs_run"]   # 3 epochs of patience
    assert stop["best_epoch"] == best + 1 and "best epoch" in stop["reason"] and stop["capped"] is False
    # the saved weights are the best epoch's, not the last one's
    assert out["models"]["PITF"]["val_f1@5"] == pytest.approx(hist[best]["val_f1@5"], abs=1e-6)
    assert m.meta["training"]["trainer"]["kernel"] == "per-sample SGD"  # PITF on CPU: the numba kernel


def test_run_cut_by_the_epoch_cap_says_so(tmp_path, caplog, recsys_split):
    recsys_split(tmp_path, with_store=False)
    with caplog.at_level(logging.WARNING, logger="jobs"):
        jt.run(cfg(tmp_path, model="PITF", epochs=3, patience=10, lr=0.2))
    stop = load(tmp_path / "models" / "PITF").meta["training"]["early_stopping"]
    assert stop["capped"] is True and stop["epochs_run"] == 3 and "reached max_epochs 3" in stop["reason"]
    assert "stopped at the epoch cap (3)" in caplog.text and "--epochs" in caplog.text
    caplog.clear()
    ruled = tmp_path / "ruled"
    ruled.mkdir()
    (ruled / "split").symlink_to(tmp_path / "split")
    with caplog.at_level(logging.WARNING, logger="jobs"):  # stopped by the rule: no warning
        jt.run(cfg(ruled, model="PITF", epochs=200, patience=2, patience_frac=0.0, lr=0.2))
    assert load(ruled / "models" / "PITF").meta["training"]["early_stopping"]["capped"] is False
    assert "epoch cap" not in caplog.text


def test_early_stopped_run_resumed_equals_an_uninterrupted_one(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    kw = dict(model="FM", patience=3, lr=0.2)
    jt.run(cfg(tmp_path, epochs=4, **kw))      # "killed" after epoch 4 (best weights kept in the checkpoint)
    jt.run(cfg(tmp_path, epochs=200, **kw))    # resumes: the stopper replays the history
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "split").symlink_to(tmp_path / "split")
    jt.run(cfg(fresh, epochs=200, **kw))
    a, b = load(tmp_path / "models" / "FM"), load(fresh / "models" / "FM")
    assert a.meta["training"]["early_stopping"] == b.meta["training"]["early_stopping"]
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, rtol=0, atol=0)


def test_early_stopping_without_validation_posts_is_a_user_error(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    val = pq.read_table(tmp_path / "split" / "val.parquet")
    pq.write_table(val.slice(0, 0), tmp_path / "split" / "val.parquet")
    with pytest.raises(JobError, match=r"early stopping \(--patience 10\) needs validation posts.*--patience 0"):
        jt.run(cfg(tmp_path, model="PITF", patience=10))
    assert jt.run(cfg(tmp_path, model="PITF", epochs=1))["models"]["PITF"]["epochs"] == 1  # --patience 0


def test_saved_calibration_maps_scores_to_probabilities(tmp_path, recsys_split):
    from models.calibration import PER_RANK_Z, Calibrator

    recsys_split(tmp_path, with_store=False)
    jt.run(cfg(tmp_path, model="FM", epochs=10))
    m = load(tmp_path / "models" / "FM")
    cal = Calibrator.from_json(m.meta["calibration"])
    assert cal.n_posts == len(jt.load_split(tmp_path / "split").val)
    # tail-bounded isotonic maps, one per rank, are what jobs.train saves
    assert (cal.method, cal.per_rank, cal.z, len(cal.maps)) == ("isotonic", True, PER_RANK_Z, 10)
    p = cal.predict(np.array([[5.0, 1.0, -3.0], [0.0, -1.0, -2.0]]))
    assert np.all(np.diff(p, axis=1) <= 0) and 0 <= p.min() and p.max() <= 1 and p[0, 0] >= p[1, 0]
    jt.run(cfg(tmp_path / "nocal", split=str(tmp_path / "split"), model="FM", epochs=1, calibrate=False))
    assert "calibration" not in load(tmp_path / "nocal" / "models" / "FM").meta


def test_bad_stopping_flags_are_user_errors(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    for kw in ({"patience": -1}, {"sgd_threads": 0}, {"tune_epochs": -2}, {"sgd_negatives": 0}):
        with pytest.raises(JobError, match="--patience .* --patience-frac .* --tune-epochs .* --sgd-threads"):
            jt.run(cfg(tmp_path, model="PITF", **kw))


# --------------------------------------------------------------------------- replicas


def test_replicas_default_to_three_where_the_per_sample_kernel_trains():
    bpr = jt.BPRConfig(kernel="auto")
    c = jt.TrainConfig(replicas=0)
    assert [jt.replicas(n, c, bpr, "cpu") for n in ("PITF", "FM", "PITF-IC", "FM+SN", "social-multilabel")] \
        == [jt.AUTO_REPLICAS, jt.AUTO_REPLICAS, 1, 1, 1] and jt.AUTO_REPLICAS == 3
    assert jt.replicas("PITF", c, bpr, "cuda") == 1 and jt.replicas("PITF", jt.TrainConfig(num_workers=2), bpr, "cpu") == 1
    assert jt.replicas("PITF", c, jt.BPRConfig(kernel="torch"), "cpu") == 1
    two = jt.TrainConfig(replicas=2)  # asked for: every factorization model; the multi-label nets train once
    assert [jt.replicas(n, two, bpr, "cpu") for n in ("PITF-IC-OD+SN", "visual-multilabel")] == [2, 1]
    # by default the mean's factor tables stay under AUTO_REPLICAS_BYTES; asked for, any size
    fits = jt.AUTO_REPLICAS_BYTES // (jt.AUTO_REPLICAS * c.dim * 4)
    assert [jt.replicas("PITF", c, bpr, "cpu", rows) for rows in (fits, fits + 1)] == [jt.AUTO_REPLICAS, 1]
    assert jt.replicas("PITF", two, bpr, "cpu", 10 * fits) == 2


def test_replicas_average_into_one_model_and_resume_one_by_one(tmp_path, recsys_split, caplog):
    recsys_split(tmp_path, with_store=False)
    kw = dict(model="PITF", epochs=40, patience=3, lr=0.1, replicas=0)  # the default: 3 on CPU
    jt.run(cfg(tmp_path, **{**kw, "replicas": 2}))   # "killed" before the third replica
    with caplog.at_level(logging.INFO, logger="jobs"):
        out = jt.run(cfg(tmp_path, **kw))["models"]["PITF"]   # resumes: two replicas restored, the third trained
    m = load(tmp_path / "models" / "PITF")
    said = f"the mean of 3 replicas (seeds 0..2): validation F1@5 {out['val_f1@5']:.4f} (each: "
    assert said in caplog.text
    recs = m.meta["training"]["replicas"]
    assert out["replicas"] == 3 and m.dim == 3 * 16 and [r["seed"] for r in recs] == [0, 1, 2]
    assert recs[0]["epochs_run"] == len(m.meta["metrics"]["history"]) == out["epochs"]  # the first replica's
    assert all(r["best_epoch"] < r["epochs_run"] for r in recs)  # each stopped by its own early stopping
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "PITF").glob("replica-*")) == ["replica-1", "replica-2"]
    # The same as an uninterrupted run, and its scores the mean of three single runs seeded 0, 1, 2.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "split").symlink_to(tmp_path / "split")
    jt.run(cfg(fresh, **kw))
    for k, v in load(fresh / "models" / "PITF").state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)
    from jobs._train_data import load_split

    batch = load_split(tmp_path / "split").val.batch()
    singles = []
    for seed in range(3):
        one = tmp_path / f"seed{seed}"
        one.mkdir()
        (one / "split").symlink_to(tmp_path / "split")
        jt.run(cfg(one, **{**kw, "replicas": 1, "seed": seed}))
        r = load(one / "models" / "PITF")
        singles.append(r.post_vectors(batch) @ r.tag_matrix().T)
        assert r.meta["training"]["replicas"] == [recs[seed]]
    np.testing.assert_allclose(m.post_vectors(batch) @ m.tag_matrix().T, np.mean(singles, 0), rtol=1e-5, atol=1e-6)


def test_negative_replicas_is_a_user_error(tmp_path, recsys_split):
    recsys_split(tmp_path, with_store=False)
    with pytest.raises(JobError, match=r"--replicas \(-1\) must be >= 0"):
        jt.run(cfg(tmp_path, model="PITF", replicas=-1))
