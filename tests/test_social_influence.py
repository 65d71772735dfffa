"""The social-influence analysis: a hand-computed answer, the planted signal of the
synthetic archive, a null archive, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from jobs._cli import run_job
from jobs.errors import InputError, JobError
from jobs.social_influence import SocialInfluenceConfig, influence_stats, run


def write_archive(tmp_path, users, tags, src, dst):
    """posts.parquet (one post per (user, tag list)) and edges.parquet in tmp_path."""
    posts = pa.table({"post_id": pa.array(np.arange(len(users)), pa.int64()),
                      "user_id": pa.array(users, pa.int64()),
                      "image": pa.array([f"{i}.jpg" for i in range(len(users))]),
                      "tags": pa.array(tags, pa.list_(pa.string()))})
    pq.write_table(posts, tmp_path / "posts.parquet")
    pq.write_table(pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())}),
                   tmp_path / "edges.parquet")
    return SocialInfluenceConfig(posts=str(tmp_path / "posts.parquet"), edges=str(tmp_path / "edges.parquet"),
                                 out=str(tmp_path / "out"))


def test_hand_computed_answer(tmp_path):
    # A -- B connected; C is the only user unconnected to either, so u_k = C always.
    # A {x, y}, B {x}, C {y, z}.  S_p: (A,B): x->1, y->0; (B,A): x->1.  S_r: (A,C): x->0, y->1; (B,C): x->0.
    cfg = write_archive(tmp_path, [1, 1, 2, 3], [["x"], ["y"], ["x"], ["y", "z"]], [1], [2])
    res = run(cfg)
    sp, sr = [1, 0, 1], [0, 1, 0]
    assert res["pairs"] == 2 and res["n_samples"] == 3
    assert res["mean_sp"] == pytest.approx(2 / 3) and res["mean_sr"] == pytest.approx(1 / 3)
    ref = stats.ttest_ind(sp, sr, equal_var=True, alternative="greater")
    assert res["t_student"] == pytest.approx(ref.statistic) and res["p_value_student"] == pytest.approx(ref.pvalue)
    v_p, v_r = np.var(sp, ddof=1), np.var(sr, ddof=1)
    assert res["effect_size"] == pytest.approx((2 / 3 - 1 / 3) / np.sqrt((3 * v_p + 3 * v_r) / (3 + 3 - 2)))
    assert res["relative_lift"] == pytest.approx(1.0)
    on_disk = json.loads((tmp_path / "out" / "social_influence.json").read_text())
    assert on_disk["mean_sp"] == pytest.approx(2 / 3)
    md = (tmp_path / "out" / "social_influence.md").read_text()
    assert "| mean S_p (friend used the tag) | 0.6667 |" in md


def test_directed_uses_edges_as_given(tmp_path):
    cfg = write_archive(tmp_path, [1, 1, 2, 3], [["x"], ["y"], ["x"], ["y", "z"]], [1], [2])
    cfg.directed = True
    res = run(cfg)
    assert res["pairs"] == 1 and res["n_samples"] == 2 and res["mean_sp"] == pytest.approx(0.5)


def _synth(synth_archive, seed=0):
    archive = synth_archive(no_images=True, num_users=200, num_posts=1500, seed=seed)
    return archive / "posts.parquet", archive / "edges.parquet"


def test_planted_social_signal_is_positive(tmp_path, synth_archive):
    posts, edges = _synth(synth_archive)
    res = run(SocialInfluenceConfig(posts=str(posts), edges=str(edges), out=str(tmp_path / "o")))
    assert res["mean_sp"] > res["mean_sr"]
    assert res["effect_size"] > 0.1 and res["relative_lift"] > 0.1 and res["p_value_student"] < 1e-6


def test_no_signal_when_users_are_shuffled(tmp_path, synth_archive):
    # Same tags and graph, but users relabelled at random: friends no longer tag alike.
    posts, edges = _synth(synth_archive)
    t = pq.read_table(posts)
    uid = t.column("user_id").to_numpy()
    uniq = np.unique(uid)
    perm = dict(zip(uniq.tolist(), np.random.default_rng(1).permutation(uniq).tolist()))
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id",
                     pa.array([perm[u] for u in uid.tolist()], pa.int64()))
    pq.write_table(t, tmp_path / "shuffled.parquet")
    res = run(SocialInfluenceConfig(posts=str(tmp_path / "shuffled.parquet"), edges=str(edges),
                                    out=str(tmp_path / "o")))
    # Over seeds the null effect stays within +-0.05 and the planted one is 0.14-0.17.
    assert abs(res["effect_size"]) < 0.07 and abs(res["relative_lift"]) < 0.1


def test_max_pairs_subsamples_reproducibly(tmp_path, synth_archive):
    posts, edges = _synth(synth_archive)
    cfg = SocialInfluenceConfig(posts=str(posts), edges=str(edges), out=str(tmp_path / "o"), max_pairs=300, seed=5)
    a, b = run(cfg), run(cfg)
    assert a["pairs"] == 300 and a == b


def test_influence_stats_constant_samples():
    res = influence_stats(10, 10, 10)  # both all ones: no variance, no evidence
    assert res["effect_size"] == 0.0 and res["p_value_student"] == 1.0


# --------------------------------------------------------------------------- bad input


def test_empty_edges_file(tmp_path):
    cfg = write_archive(tmp_path, [1, 2], [["x"], ["x"]], [], [])
    with pytest.raises(InputError, match="no edges"):
        run(cfg)


def test_edges_only_between_users_without_posts(tmp_path):
    cfg = write_archive(tmp_path, [1, 2], [["x"], ["x"]], [7, 8], [8, 9])
    with pytest.raises(InputError, match="no edge connects two users that have posts"):
        run(cfg)


def test_unknown_users_counted(tmp_path):
    cfg = write_archive(tmp_path, [1, 1, 2, 3], [["x"], ["y"], ["x"], ["y", "z"]], [1, 1, 9], [2, 9, 9])
    res = run(cfg)
    assert res["edges_naming_users_without_posts"] == 2 and res["pairs"] == 2


def test_no_tags_at_all(tmp_path):
    cfg = write_archive(tmp_path, [1, 2], [[], []], [1], [2])
    with pytest.raises(InputError, match="no post has a tag"):
        run(cfg)


def test_user_connected_to_everyone_is_dropped_and_counted(tmp_path):
    # A star: the hub is linked to all users, so no u_k exists for it.
    cfg = write_archive(tmp_path, [1, 2, 3], [["x"], ["x"], ["y"]], [1, 1], [2, 3])
    res = run(cfg)
    assert res["pairs_without_unconnected_user"] == 2 and res["pairs"] == 2


def test_bad_flag_exit_code(tmp_path, capsys):
    cfg = write_archive(tmp_path, [1, 2], [["x"], ["x"]], [1], [2])
    argv = ["--posts", cfg.posts, "--edges", cfg.edges, "--out", cfg.out, "--max-pairs", "-1"]
    from jobs.social_influence import run as si_run

    assert run_job("social_influence", SocialInfluenceConfig, si_run, argv) == 2
    assert "--max-pairs must be >= 0" in capsys.readouterr().err
    with pytest.raises(JobError):
        si_run(SocialInfluenceConfig(posts=cfg.posts, edges=cfg.edges, out=cfg.out, max_pairs=-1))
