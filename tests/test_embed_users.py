"""jobs.embed_users end to end on a real local Ray and a real LMDB store."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs._cli import run_job
from jobs.embed_users import EmbedUsersConfig, run
from jobs.errors import InputError, JobError

N_COMM, SIZE = 4, 30


def planted_archive(tmp_path, extra_users=(), weight=False, src=None, dst=None):
    """Users 100.. in 4 planted communities (dense inside, sparse across), one post each."""
    rng = np.random.default_rng(0)
    n = N_COMM * SIZE
    users = 100 + np.arange(n)
    if src is None:
        s = np.repeat(np.arange(n), 6)
        same = rng.random(s.size) < 0.9
        d = np.where(same, (s // SIZE) * SIZE + rng.integers(0, SIZE, s.size), rng.integers(0, n, s.size))
        src, dst = users[s], users[d]
    all_users = np.concatenate([users, np.asarray(extra_users, np.int64)])
    posts = pa.table({"post_id": pa.array(np.arange(all_users.size), pa.int64()),
                      "user_id": pa.array(all_users, pa.int64()),
                      "image": pa.array([f"{i}.jpg" for i in range(all_users.size)]),
                      "tags": pa.array([["t"]] * all_users.size, pa.list_(pa.string()))})
    pq.write_table(posts, tmp_path / "posts.parquet")
    cols = {"src": pa.array(np.asarray(src), pa.int64()), "dst": pa.array(np.asarray(dst), pa.int64())}
    if weight:
        cols["weight"] = pa.array(np.linspace(0.5, 2.0, len(src)), pa.float32())
    pq.write_table(pa.table(cols), tmp_path / "edges.parquet")
    return EmbedUsersConfig(posts=str(tmp_path / "posts.parquet"), edges=str(tmp_path / "edges.parquet"),
                            out=str(tmp_path / "out"), store=str(tmp_path / "store"), p=0.5, q=2.0,
                            walk_length=20, walks_per_node=8, dim=16, window=4, sg_workers=1, seed=3)


def read_view(cfg, ids):
    from featurestore import Store

    with Store.open(cfg.store, create=False) as st:
        info = st.describe(cfg.view)
        vecs, found = st.reader(cfg.view).get_many(np.asarray(ids, np.int64))
    return info, vecs, found


def test_vectors_written_and_share_community(tmp_path, ray_local):
    cfg = planted_archive(tmp_path, extra_users=[5000, 5001])
    res = run(cfg)
    users = 100 + np.arange(N_COMM * SIZE)
    info, vecs, found = read_view(cfg, np.r_[users, 5000, 5001])
    assert found.all() and info.dim == 16 and info.dtype == "float16"
    assert info.producer["p"] == 0.5 and info.producer["q"] == 2.0 and info.producer["walk_length"] == 20
    # Users with posts but no edges: zero vectors, counted.
    assert res["users_without_edges"] == 2 and np.all(vecs[-2:] == 0)
    x = vecs[:-2] / np.linalg.norm(vecs[:-2], axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    comm = np.arange(users.size) // SIZE
    nn = np.argsort(-sim, axis=1)[:, :5]
    assert (comm[nn] == comm[:, None]).mean() > 0.8
    # A re-run with the same arguments is a no-op.
    assert run(cfg)["skipped"] is True


def test_reproducible_regardless_of_shards(tmp_path, ray_local):
    a = planted_archive(tmp_path)
    b = dataclasses.replace(a, store=str(tmp_path / "store2"), shards=7)
    a = dataclasses.replace(a, shards=1)
    # Walks a killed run left behind (its pid is gone) are removed; nothing of this run stays.
    from jobs.embed_users import WALKS_PREFIX

    stale = tmp_path / "out" / "tmp" / f"{WALKS_PREFIX}999999999-abc"
    stale.mkdir(parents=True)
    (stale / "walks-00000.npy").write_bytes(b"x" * 1000)
    run(a)
    assert not (tmp_path / "out" / "tmp").exists()
    run(b)
    ids = 100 + np.arange(N_COMM * SIZE)
    assert np.array_equal(read_view(a, ids)[1], read_view(b, ids)[1])


def test_other_parameters_need_a_new_view(tmp_path, ray_local):
    cfg = planted_archive(tmp_path)
    run(cfg)
    with pytest.raises(JobError, match="other parameters.*user/node2vec@<n\\+1>"):
        run(dataclasses.replace(cfg, q=4.0))
    res = run(dataclasses.replace(cfg, q=4.0, view="user/node2vec@2", directed=True, weighted=False,
                                  dtype="float32"))
    assert res["written"] == N_COMM * SIZE


def test_gensim_trainer_writes_its_own_view(tmp_path, ray_local):
    # The other trainer makes other vectors: the producer says which, and reusing the view is refused.
    cfg = planted_archive(tmp_path)
    run(cfg)
    with pytest.raises(JobError, match="skipgram: 'numba SGNS"):
        run(dataclasses.replace(cfg, sg_trainer="gensim"))
    g = dataclasses.replace(cfg, sg_trainer="gensim", view="user/node2vec@2")
    assert run(g)["written"] == N_COMM * SIZE
    users = 100 + np.arange(N_COMM * SIZE)
    (info_n, vn, _), (info_g, vg, _) = read_view(cfg, users), read_view(g, users)
    assert info_n.producer["skipgram"].startswith("numba") and info_g.producer["skipgram"].startswith("gensim")
    comm = np.arange(users.size) // SIZE
    for v in (vn, vg):   # both trainers find the planted communities
        x = v / np.linalg.norm(v, axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        assert (comm[np.argsort(-sim, axis=1)[:, :5]] == comm[:, None]).mean() > 0.8


def test_weighted_and_unknown_users(tmp_path, ray_local):
    # Edges naming users without posts are allowed, embedded and counted.
    src = np.r_[100 + np.arange(10), 900, 901]
    dst = np.r_[101 + np.arange(10), 100, 900]
    cfg = planted_archive(tmp_path, weight=True, src=src, dst=dst)
    res = run(dataclasses.replace(cfg, weighted=True))
    assert res["edge_users_without_posts"] == 2 and res["edges_naming_users_without_posts"] == 2
    info, vecs, found = read_view(cfg, [900, 901, 100])
    assert found.all() and info.producer["weighted"] is True and np.all(np.linalg.norm(vecs, axis=1) > 0)


# --------------------------------------------------------------------------- bad input


def test_empty_edges_file(tmp_path):
    cfg = planted_archive(tmp_path, src=[], dst=[])
    with pytest.raises(InputError, match="has no edges"):
        run(cfg)


def test_only_self_loops(tmp_path):
    cfg = planted_archive(tmp_path, src=[100, 101], dst=[100, 101])
    with pytest.raises(InputError, match="self-loops"):
        run(cfg)


def test_weighted_without_weight_column(tmp_path):
    cfg = planted_archive(tmp_path)
    with pytest.raises(InputError, match="no 'weight' column"):
        run(dataclasses.replace(cfg, weighted=True))


@pytest.mark.parametrize("field,value,msg", [("p", 0.0, "--p must be"), ("q", -1.0, "--q must be"),
                                             ("p", float("nan"), "--p must be"),
                                             ("walk_length", 0, "--walk-length must be >= 2"),
                                             ("walks_per_node", 0, "--walks-per-node"), ("dim", 0, "--dim"),
                                             ("epochs", -1, "--epochs")])
def test_bad_parameters(tmp_path, field, value, msg):
    cfg = planted_archive(tmp_path)
    with pytest.raises(JobError, match=msg):
        run(dataclasses.replace(cfg, **{field: value}))


def test_cli_exit_code_for_bad_q(tmp_path, capsys):
    cfg = planted_archive(tmp_path)
    argv = ["--posts", cfg.posts, "--edges", cfg.edges, "--out", cfg.out, "--q", "0"]
    assert run_job("embed_users", EmbedUsersConfig, run, argv) == 2
    assert "--q must be a finite number > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- --tune


def write_labels(tmp_path, users, labels, name="labels.parquet", user_type=None, label_type=None):
    cols = {"user_id": pa.array(users, user_type or pa.int64()),
            "label": pa.array(labels, label_type) if label_type is not None else pa.array(labels)}
    pq.write_table(pa.table(cols), tmp_path / name)
    return str(tmp_path / name)


def community_labels(tmp_path, extra=()):
    """Each planted user's community, plus a second row for every fourth user (several per user)."""
    users = 100 + np.arange(N_COMM * SIZE)
    comm = np.arange(users.size) // SIZE
    u = np.r_[users, users[::4], np.asarray(extra, np.int64)]
    lab = np.r_[comm, np.full(users[::4].size, 9), np.zeros(len(extra), np.int64)]
    return write_labels(tmp_path, u, lab)


# 4 points x 4 of 8 walks + 2 finalists x 8 + the winner for 2 epochs x 8 = 6 runs of 8 walks
TUNE = dict(tune=True, p_grid=[0.5, 2.0], q_grid=[0.5, 2.0], tune_budget=6.0)


def test_tune_by_link_prediction_records_grid_and_choice(tmp_path, ray_local):
    cfg = dataclasses.replace(planted_archive(tmp_path), **TUNE)
    res = run(cfg)
    tune = res["tune"]
    assert "link prediction" in tune["scoring"] and tune["p_grid"] == [0.5, 2.0] and tune["q_grid"] == [0.5, 2.0]
    assert [(pt["p"], pt["q"]) for pt in tune["points"]] == [(0.5, 0.5), (0.5, 2.0), (2.0, 0.5), (2.0, 2.0)]
    assert tune["walks_per_node"] == 4
    top = sorted(tune["points"], key=lambda pt: -pt["score"])[:2]   # the finalists, trained on every walk
    assert {(f["p"], f["q"]) for f in tune["finalists"]} == {(t["p"], t["q"]) for t in top}
    best = max(tune["finalists"], key=lambda pt: pt["score"])
    (more,) = tune["epoch_runs"]                                    # the winner again, for 2 epochs
    assert (more["p"], more["q"], more["epochs"], best["epochs"]) == (best["p"], best["q"], 2, 1)
    won = more if more["score"] > best["score"] else best
    assert tune["chosen"] == {k: won[k] for k in ("p", "q", "epochs")} == {k: res[k] for k in ("p", "q", "epochs")}
    assert all(0.5 < pt["auc"] <= 1 for pt in tune["points"] + tune["finalists"] + tune["epoch_runs"])
    info, _, found = read_view(cfg, 100 + np.arange(N_COMM * SIZE))
    assert found.all() and [info.producer[k] for k in ("p", "q", "epochs")] == [res[k] for k in ("p", "q", "epochs")]
    assert info.producer["tune"]["points"] == tune["points"]          # the view's metadata holds the search
    # The same request again is a no-op that reports the stored search; another grid is another view.
    again = run(cfg)
    assert again["skipped"] is True and again["tune"]["chosen"] == tune["chosen"]
    with pytest.raises(JobError, match="other parameters"):
        run(dataclasses.replace(cfg, q_grid=[1.0]))


def test_tune_by_labels_scores_macro_f1(tmp_path, ray_local):
    cfg = dataclasses.replace(planted_archive(tmp_path), labels=community_labels(tmp_path, extra=[777, 778]),
                              **TUNE)
    res = run(cfg)
    tune = res["tune"]
    assert "Macro-F1" in tune["scoring"] and tune["labelled_users"] == N_COMM * SIZE
    assert tune["labelled_users_not_in_graph"] == 2 and tune["labels"] == N_COMM + 1
    assert all(0 < pt["macro_f1"] <= 1 and "micro_f1" in pt for pt in tune["points"])
    assert max(pt["macro_f1"] for pt in tune["points"]) > 0.6        # communities are learnable
    best = max(tune["finalists"], key=lambda pt: pt["score"])
    assert (res["p"], res["q"]) == (best["p"], best["q"])
    assert res["epochs"] == tune["chosen"]["epochs"] in (1, 2)
    # --label-column names another column
    other = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(cfg.labels).rename_columns(["user_id", "group"]), other)
    res2 = run(dataclasses.replace(cfg, labels=str(other), label_column="group", view="user/node2vec@2"))
    def scores(points):
        return [{k: v for k, v in pt.items() if k != "seconds"} for pt in points]

    assert scores(res2["tune"]["points"]) == scores(tune["points"])


@pytest.mark.parametrize("field,value,msg", [
    ("p_grid", [0.0, 1.0], "--p-grid must be a non-empty list of finite numbers > 0"),
    ("q_grid", [], "--q-grid must be a non-empty list"),
    ("q_grid", [1.0, float("nan")], "--q-grid"),
    ("p_grid", [2.0, 2.0], "--p-grid lists a value twice"),
    ("tune_budget", 0.0, "--tune-budget must be > 0"),
    ("tune_max_nodes", 1, "--tune-max-nodes must be >= 2"),
    ("tune_finalists", -1, "--tune-finalists must be >= 0"),
    ("tune_epochs", [1, 0], "--tune-epochs must be distinct whole numbers >= 1"),
])
def test_bad_tune_parameters(tmp_path, field, value, msg):
    cfg = dataclasses.replace(planted_archive(tmp_path), tune=True, **{field: value})
    with pytest.raises(JobError, match=msg):
        run(cfg)


def test_labels_without_tune(tmp_path):
    cfg = dataclasses.replace(planted_archive(tmp_path), labels=community_labels(tmp_path))
    with pytest.raises(JobError, match="--labels is only read by --tune"):
        run(cfg)


@pytest.mark.parametrize("case,msg", [
    ("missing", "labels file .* does not exist"),
    ("not_parquet", "not a readable Parquet file"),
    ("no_label_column", "no column 'label' \\(--label-column"),
    ("no_user_column", "no column 'user_id'"),
    ("user_id_string", "column 'user_id' must be an integer"),
    ("label_float", "column 'label' must be an integer or a string"),
    ("null_label", "column 'label' has 1 null"),
    ("unknown_users", "none of its 2 labelled users is a user of the graph"),
])
def test_bad_labels_files(tmp_path, case, msg):
    users = [100, 101]
    path = {
        "missing": lambda: str(tmp_path / "nope.parquet"),
        "not_parquet": lambda: (tmp_path / "bad.parquet").write_text("user_id,label\n1,2\n") and
        str(tmp_path / "bad.parquet"),
        "no_label_column": lambda: (pq.write_table(pa.table({"user_id": users, "group": [1, 2]}),
                                                   tmp_path / "l.parquet"), str(tmp_path / "l.parquet"))[1],
        "no_user_column": lambda: (pq.write_table(pa.table({"user": users, "label": [1, 2]}),
                                                  tmp_path / "l.parquet"), str(tmp_path / "l.parquet"))[1],
        "user_id_string": lambda: write_labels(tmp_path, ["100", "101"], [1, 2], user_type=pa.string()),
        "label_float": lambda: write_labels(tmp_path, users, [1.5, 2.0], label_type=pa.float64()),
        "null_label": lambda: write_labels(tmp_path, users, [1, None], label_type=pa.int64()),
        "unknown_users": lambda: write_labels(tmp_path, [5, 6], ["a", "b"]),
    }[case]()
    cfg = dataclasses.replace(planted_archive(tmp_path), tune=True, labels=path)
    with pytest.raises(InputError, match=msg):
        run(cfg)


def test_cli_exit_code_for_bad_grid(tmp_path, capsys):
    cfg = planted_archive(tmp_path)
    argv = ["--posts", cfg.posts, "--edges", cfg.edges, "--out", cfg.out, "--tune", "--p-grid", "0.5,-1"]
    assert run_job("embed_users", EmbedUsersConfig, run, argv) == 2
    assert "--p-grid must be a non-empty list of finite numbers > 0, got [0.5, -1.0]" in capsys.readouterr().err


def test_killed_tune_run_is_finished_with_its_choice(tmp_path, ray_local):
    # A run killed after tuning leaves a partial view whose metadata holds the choice; the
    # re-run finishes it with that choice instead of searching again.
    from featurestore import Store
    from jobs._embed_tune import tune_request
    from jobs.embed_users import producer, read_graph, read_users

    cfg = dataclasses.replace(planted_archive(tmp_path), **TUNE)
    graph, _ = read_graph(cfg, read_users(cfg))
    chosen = {"chosen": {"p": 2.0, "q": 0.5, "epochs": 2}, "points": [], "finalists": [], "epoch_runs": [],
              "request": tune_request(cfg)}
    prod = producer(dataclasses.replace(cfg, p=2.0, q=0.5, epochs=2), graph, chosen)
    with Store.open(cfg.store, create=True) as store:
        store.create_view(cfg.view, dim=cfg.dim, dtype=cfg.dtype, producer=prod)
        with store.writer(cfg.view) as w:
            w.put(graph.node_ids[:5], np.ones((5, cfg.dim), np.float16))
    res = run(cfg)
    assert res["skipped"] is False and (res["p"], res["q"], res["epochs"]) == (2.0, 0.5, 2) and res["tune"] == chosen
    info, vecs, found = read_view(cfg, graph.node_ids)
    assert found.all() and info.producer == prod and not np.all(vecs[:5] == 1)
    # the vectors are those of the chosen p, q and epochs, as a plain run makes them
    plain = dataclasses.replace(cfg, tune=False, p=2.0, q=0.5, epochs=2, store=str(tmp_path / "plain-store"))
    run(plain)
    assert np.array_equal(read_view(plain, graph.node_ids)[1], vecs)


def test_labels_read_from_s3_equal_the_local_file(tmp_path, s3_env, s3_server):
    """--labels takes a URI like every other input: the same matrix and digest as the local file,
    and a missing key is the same one-line error as a missing path."""
    from jobs._embed_tune import file_digest, read_labels
    from jobs.embed_users import read_graph, read_users

    cfg = planted_archive(tmp_path)
    graph, _ = read_graph(cfg, read_users(cfg))
    local = community_labels(tmp_path)
    s3_server.client().create_bucket(Bucket="labels-test")
    s3_server.client().put_object(Bucket="labels-test", Key="l.parquet", Body=open(local, "rb").read())
    y_local, rep_local = read_labels(local, "label", graph)
    y_s3, rep_s3 = read_labels("s3://labels-test/l.parquet", "label", graph)
    assert np.array_equal(y_local, y_s3) and y_s3.any()
    assert {k: v for k, v in rep_s3.items() if k != "labels_file"} == \
        {k: v for k, v in rep_local.items() if k != "labels_file"}
    assert file_digest("s3://labels-test/l.parquet") == file_digest(local)
    with pytest.raises(InputError, match="labels file s3://labels-test/nope.parquet does not exist"):
        read_labels("s3://labels-test/nope.parquet", "label", graph)
