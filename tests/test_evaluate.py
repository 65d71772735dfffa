"""The evaluation job: JSON/markdown/plot outputs, and a planted personal signal baselines must show."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs._cli import run_job
from jobs.evaluate import EvaluateConfig
from jobs.evaluate import run as evaluate
from jobs.prepare import PrepareConfig
from jobs.prepare import run as prepare


def _personal_archive(tmp_path, users=40, per_user=12, seed=0):
    """Each user mostly uses their own two tags plus a popular one: user-popular must win."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for j in range(per_user):
            tags = [f"own{u}a", f"own{u}b"] if rng.random() < 0.8 else []
            tags += ["common"] if rng.random() < 0.5 else [f"noise{rng.integers(0, 5)}"]
            rows.append((u * 100 + j, u, tags))
    t = pa.table({"post_id": pa.array([r[0] for r in rows], pa.int64()),
                  "user_id": pa.array([r[1] for r in rows], pa.int64()),
                  "image": pa.array([f"{r[0]}.jpg" for r in rows]),
                  "tags": pa.array([r[2] for r in rows], pa.list_(pa.string()))})
    pq.write_table(t, tmp_path / "posts.parquet")
    return tmp_path / "posts.parquet"


def test_evaluate_writes_tables_and_finds_personal_signal(tmp_path):
    posts = _personal_archive(tmp_path)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out), test_per_user=2))
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out)]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(ev) >= {"most-popular", "user-popular", "split", "subsets"}
    for model in ("most-popular", "user-popular"):
        assert set(ev[model]) >= {f"{m}@{k}" for m in ("precision", "recall", "f1", "accuracy") for k in range(1, 11)}
    assert ev["user-popular"]["f1@3"] > ev["most-popular"]["f1@3"] + 0.2
    assert ev["split"]["test"]["posts"] > 0
    md = (out / "evaluation.md").read_text()
    assert "| user-popular |" in md and "F1@5" in md
    assert (out / "f1_at_k.png").stat().st_size > 1000


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    posts = _personal_archive(tmp_path, users=5)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out)))
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out), "--models", "NOPE"]) == 2
    assert "no saved model 'NOPE'" in capsys.readouterr().err


def test_missing_split_says_which_stage_to_run(tmp_path, capsys):
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(tmp_path / "x")]) == 2
    assert "run `python -m jobs.prepare" in capsys.readouterr().err


def test_evaluate_scores_a_saved_model_beside_the_baselines(tmp_path):
    from jobs.train import TrainConfig
    from jobs.train import run as train

    posts = _personal_archive(tmp_path)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out), test_per_user=2))
    train(TrainConfig(out=str(out), model="PITF", epochs=15, dim=16))
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out)]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    # PITF learns the users' own tags: far above the non-personal baseline.
    assert ev["PITF"]["f1@3"] > ev["most-popular"]["f1@3"] + 0.15


def test_evaluation_outputs_to_an_s3_uri_match_the_local_ones(tmp_path, s3_env, s3_server):
    posts = _personal_archive(tmp_path, users=10)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out), test_per_user=2))
    s3_server.client().create_bucket(Bucket="eval-test")
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out), "--results", "s3://eval-test/r/1"]) == 0
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out)]) == 0
    remote = s3_server.objects("eval-test", "r/1/")
    assert sorted(remote) == ["r/1/evaluation.json", "r/1/evaluation.md", "r/1/f1_at_k.png",
                              "r/1/precision_coverage.png"]
    assert json.loads(remote["r/1/evaluation.json"]) == json.loads((out / "evaluation.json").read_text())
    assert remote["r/1/evaluation.md"] == (out / "evaluation.md").read_bytes()


def _shared_items_archive(tmp_path, users=40, items=15, per_user=14, seed=0):
    """Many users tag the same items: each item has two tags of its own, each user one; a ring of
    friendships (edges.parquet) for friends-popular."""
    rng = np.random.default_rng(seed)
    rows, pid = [], 0
    for u in range(users):
        for i in rng.choice(items, per_user, replace=False):
            tags = [f"item{i}a", f"item{i}b"] if rng.random() < 0.9 else [f"item{i}a"]
            tags += [f"user{u}"] if rng.random() < 0.7 else []
            rows.append((pid, u, int(i), tags))
            pid += 1
    t = pa.table({"post_id": pa.array([r[0] for r in rows], pa.int64()),
                  "user_id": pa.array([r[1] for r in rows], pa.int64()),
                  "image": pa.array([f"i{r[2]}.jpg" for r in rows]),
                  "tags": pa.array([r[3] for r in rows], pa.list_(pa.string())),
                  "item_id": pa.array([r[2] for r in rows], pa.int64())})
    pq.write_table(t, tmp_path / "posts.parquet")
    src = np.arange(users)
    pq.write_table(pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array((src + 1) % users, pa.int64())}),
                   tmp_path / "edges.parquet")
    return tmp_path / "posts.parquet", tmp_path / "edges.parquet"


def test_item_baselines_mix_weight_and_backfill_report(tmp_path, caplog):
    posts, edges = _shared_items_archive(tmp_path)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out), test_per_user=2))
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out), "--edges", str(edges)]) == 0
    ev = json.loads((out / "evaluation.json").read_text())
    f1 = {k: ev[k]["f1@3"] for k in ("most-popular", "user-popular", "item-popular", "user-item-popular",
                                    "friends-popular")}
    assert f1["item-popular"] > f1["user-popular"] + 0.15 and f1["user-item-popular"] >= f1["item-popular"], f1
    mix = ev["baselines"]["user-item-popular"]
    assert 0 < mix["alpha"] < 1 and len(mix["val_f1@5_by_alpha"]) == 9
    rep = ev["backfill"]["user-item-popular"]
    assert rep["source"] == "fitted on the validation split here" and set(rep["targets"]) == {"0.5", "0.7", "0.9"}
    kept = rep["targets"]["0.5"]
    assert kept["tags_written"] > 0 and kept["target_kept"] in ("yes", "within noise"), kept
    md = (out / "evaluation.md").read_text()
    assert "## Backfill at a precision target" in md and "| item-popular |" in md
    assert (out / "precision_coverage.png").stat().st_size > 1000
    # without a social graph friends-popular is left out, and the log says why
    caplog.set_level("INFO", logger="jobs.evaluate")
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out), "--edges", str(tmp_path / "none")]) == 0
    assert "friends-popular" not in json.loads((out / "evaluation.json").read_text())
    assert "leaving out friends-popular: no social graph" in caplog.text


def test_bad_precision_targets_are_a_user_error(tmp_path, capsys):
    posts, _ = _shared_items_archive(tmp_path, users=8)
    out = tmp_path / "run"
    prepare(PrepareConfig(posts=str(posts), out=str(out)))
    assert run_job("evaluate", EvaluateConfig, evaluate, ["--out", str(out), "--precision-targets", "0.5,1.5"]) == 2
    assert "--precision-targets must lie in (0, 1]" in capsys.readouterr().err


def test_backfill_report_flags_a_real_miss_and_not_noise():
    """Saved maps that claim P >= 0.5 for the top tag: on 400 test posts it is right 0.43 of the
    time (a 7-point miss the interval does not explain: MISSED), on 20 posts 0.40 (too few tags
    to tell), on 400 posts 0.49 (within the tolerance)."""
    from jobs._backfill import Lists, markdown, report
    from models.calibration import Calibrator

    saved = Calibrator("isotonic", False, maps=[{"x": [0.0, 1.0], "y": [0.1, 0.6]}], n_posts=1000, z=0.0).to_json()
    lists, ptrs, idxs = {}, [], []
    for name, n, right in (("missed", 400, 172), ("few", 20, 8), ("kept", 400, 196)):
        tags = np.tile([[0, 1]], (n, 1))          # the top tag scores 1.0 (P 0.6), the second 0 (P 0.1)
        scores = np.tile([[1.0, 0.0]], (n, 1))
        truth = np.where(np.arange(n) < right, 0, 2)  # true tag: the top one for `right` posts
        lists[name] = Lists(tags, scores, saved=saved)
        ptrs.append(np.arange(n + 1))
        idxs.append(truth)
    rep = {}
    for (name, li), ptr, idx in zip(lists.items(), ptrs, idxs):
        rep.update(report({name: li}, ptr, idx, ptr[:1], idx[:0], targets=(0.5,))[0])
    verdict = {name: r["targets"]["0.5"]["target_kept"] for name, r in rep.items()}
    assert verdict == {"missed": "no", "few": "within noise", "kept": "yes"}, verdict
    md = markdown(rep, list(rep), targets=(0.5,))
    assert "| missed | 0.430 [0.382, 0.479], 1.00 **MISSED** |" in md, md
    assert "| few | 0.400 [" in md and "(few tags)" in md and "| kept | 0.490, 1.00 |" in md, md
