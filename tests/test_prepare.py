"""p-core filtering and the leave-posts-out split."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from jobs._cli import run_job
from jobs.prepare import PrepareConfig, make_split, p_core, run


def _archive(tmp_path, n=400, users=30, tags=25, seed=0):
    rng = np.random.default_rng(seed)
    tag_lists = [[f"t{j}" for j in rng.choice(tags, rng.integers(0, 4), replace=False)] for _ in range(n)]
    t = pa.table({"post_id": pa.array(np.arange(n) * 3 + 5, pa.int64()),
                  "user_id": pa.array(rng.integers(0, users, n), pa.int64()),
                  "image": pa.array([f"img/{i}.jpg" for i in range(n)]),
                  "tags": pa.array(tag_lists, pa.list_(pa.string()))})
    path = tmp_path / "posts.parquet"
    pq.write_table(t, path)
    return path, t


def test_split_is_deterministic_disjoint_and_covers_users_and_tags(tmp_path):
    path, t = _archive(tmp_path)
    cfg = PrepareConfig(posts=str(path), out=str(tmp_path / "o"), seed=3, test_per_user=2, val_per_user=1)
    s1, rep = make_split(t.append_column("item_id", t.column("post_id")), cfg)
    s2, _ = make_split(t.append_column("item_id", t.column("post_id")), cfg)
    for name in s1:
        assert s1[name].equals(s2[name])
    ids = [set(s1[n]["post_id"].to_list()) for n in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    train_users = set(s1["train"]["user_id"].to_list())
    train_tags = set(s1["train"].explode("tags")["tags"].to_list())
    for name in ("val", "test"):
        assert set(s1[name]["user_id"].to_list()) <= train_users
        assert set(s1[name].explode("tags")["tags"].to_list()) <= train_tags
    per_user = s1["test"].group_by("user_id").len()["len"]
    assert per_user.max() <= 2
    assert rep["untagged_posts"] > 0  # untagged posts are not in any split
    other_seed, _ = make_split(t.append_column("item_id", t.column("post_id")),
                               PrepareConfig(seed=4, test_per_user=2))
    assert not other_seed["test"].equals(s1["test"])


def test_users_with_one_post_stay_in_train():
    t = pa.table({"post_id": pa.array([1, 2, 3], pa.int64()), "user_id": pa.array([1, 2, 2], pa.int64()),
                  "item_id": pa.array([1, 2, 3], pa.int64()),
                  "tags": pa.array([["a"], ["a"], ["a"]], pa.list_(pa.string()))})
    s, _ = make_split(t, PrepareConfig(test_per_user=1, val_per_user=1))
    assert s["train"]["user_id"].to_list().count(1) == 1  # user 1 has one post: it stays in train
    assert s["test"].height == 1 and s["val"].height == 0  # user 2 keeps one training post


def test_unseen_test_tags_are_dropped_and_counted():
    # 'rare' appears only in user 1's test post candidates: whichever post is held out,
    # a tag unseen in train must be removed from test and counted.
    t = pa.table({"post_id": pa.array([1, 2], pa.int64()), "user_id": pa.array([1, 1], pa.int64()),
                  "item_id": pa.array([1, 2], pa.int64()),
                  "tags": pa.array([["a", "rare1"], ["a", "rare2"]], pa.list_(pa.string()))})
    s, rep = make_split(t, PrepareConfig(test_per_user=1, val_per_user=0))
    assert rep["dropped"]["test_unseen_tag_assignments"] == 1
    assert s["test"]["tags"].to_list() == [["a"]]


def test_p_core_reaches_a_fixed_point():
    rng = np.random.default_rng(1)
    pairs = pl.DataFrame({"post_id": np.repeat(np.arange(500), 2), "user_id": np.repeat(rng.integers(0, 60, 500), 2),
                          "item_id": np.repeat(np.arange(500), 2),
                          "tag": [f"t{x}" for x in rng.zipf(1.3, 1000) % 200]})
    rep = {}
    out = p_core(pairs, 5, False, rep)
    assert out.height > 0 and rep["p_core"]["rounds"] >= 2
    assert out.group_by("user_id").agg(pl.col("post_id").n_unique())["post_id"].min() >= 5
    assert out.group_by("tag").agg(pl.col("post_id").n_unique())["post_id"].min() >= 5


def test_filters_top_tags_and_overused(tmp_path):
    t = pa.table({"post_id": pa.array(range(6), pa.int64()), "user_id": pa.array([1, 1, 1, 2, 2, 2], pa.int64()),
                  "item_id": pa.array(range(6), pa.int64()),
                  "tags": pa.array([["me", "a"], ["me", "b"], ["me", "a"], ["a"], ["b"], ["c"]], pa.list_(pa.string()))})
    s, rep = make_split(t, PrepareConfig(test_per_user=0, val_per_user=0, max_user_tag_frac=0.9, top_tags=2))
    tags = set(s["train"].explode("tags")["tags"].to_list())
    assert "me" not in tags and tags == {"a", "b"}
    assert rep["dropped_overused_user_tags"] == 3


def test_job_writes_split_files_and_report(tmp_path):
    path, _ = _archive(tmp_path)
    out = tmp_path / "run"
    assert run_job("prepare", PrepareConfig, run, ["--posts", str(path), "--out", str(out), "--p-core", "2"]) == 0
    for name in ("train", "val", "test"):
        table = pq.read_table(out / "split" / f"{name}.parquet")
        assert table.column_names == ["post_id", "user_id", "item_id", "tags"]
    rep = json.loads((out / "split" / "split.json").read_text())
    assert rep["p_core"]["p"] == 2
    assert (out / "reports" / "prepare.summary.json").exists()
    assert (out / "reports" / "prepare.config.json").exists()


def test_job_fails_cleanly_when_everything_is_filtered(tmp_path, capsys):
    path, _ = _archive(tmp_path)
    code = run_job("prepare", PrepareConfig, run, ["--posts", str(path), "--out", str(tmp_path / "o"), "--p-core", "1000"])
    assert code == 2
    assert "no tagged posts are left" in capsys.readouterr().err
