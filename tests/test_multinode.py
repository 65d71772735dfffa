"""Jobs on a Ray cluster of three nodes on this machine (tests/_ray_cluster.py): each job's outputs
equal the single-node run's, and its summary says which node did what (the test checks placement).
embed_users and score run in the default suite; train and extract (heavier) are marked slow.

The single-node reference runs in this process on the session's local Ray (`ray_local`); the
cluster runs are subprocesses joining with --ray-address, as a `ray job submit` driver on the head.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurestore import Store

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny synthetic archive (no images; IC/OD vectors written straight into <out>/store) with
    its split: 30 users, 120 posts."""
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth

    out = tmp_path_factory.mktemp("mn")
    synth(SynthConfig(out=str(out), num_users=30, num_posts=120, num_tags=12, images=False, write_features=True,
                      seed=5))
    prepare(PrepareConfig(out=str(out), seed=5))
    return out


def cluster_job(stage: str, cluster, env_extra: dict | None = None, *args: str, out: Path) -> dict:
    """Run `python -m jobs.<stage> --ray-address <cluster>` as a driver on the head; its summary."""
    import os

    from _ray_cluster import clean_env

    env = clean_env({**os.environ, **(env_extra or {}),
                     "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    done = subprocess.run([PY, "-m", f"jobs.{stage}", "--ray-address", cluster.address, "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "reports" / f"{stage}.summary.json").read_text())


def check_driver_on_store_node(summary: dict, cluster) -> dict:
    pl = summary["placement"]
    assert pl["driver"] == {"node": cluster.head, "holds_store": True}
    assert set(pl["nodes"]) == {cluster.head, *cluster.workers}
    return pl


def test_embed_users_walks_spread_over_nodes_and_vectors_equal_single_node(archive, ray_cluster, ray_local,
                                                                           tmp_path):
    from jobs.embed_users import EmbedUsersConfig
    from jobs.embed_users import run as embed

    flags = {"walk_length": 10, "walks_per_node": 4, "dim": 8, "window": 3, "sg_workers": 1, "shards": 9}
    ref = embed(EmbedUsersConfig(out=str(archive), store=str(tmp_path / "ref"), seed=5, **flags))
    assert set(ref["placement"]["walks"]) == {ref["placement"]["driver"]["node"]}      # one node
    args = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    got = cluster_job("embed_users", ray_cluster, None, "--posts", str(archive / "archive" / "posts.parquet"),
                      "--edges", str(archive / "archive" / "edges.parquet"), "--store", str(tmp_path / "mn"),
                      "--seed", "5", *args, out=tmp_path / "run")
    pl = check_driver_on_store_node(got, ray_cluster)
    walks = pl["walks"]
    assert sum(walks.values()) == sum(ref["placement"]["walks"].values())
    assert set(walks) <= {ray_cluster.head, *ray_cluster.workers} and set(walks) & set(ray_cluster.workers), walks
    assert len(walks) >= 2, f"walk tasks all ran on one node: {walks}"
    assert pl["skipgram_and_writes"] == {ray_cluster.head: got["written"]}
    a = Store.open(tmp_path / "ref", readonly=True).reader("user/node2vec@1")
    b = Store.open(tmp_path / "mn", readonly=True).reader("user/node2vec@1")
    ids = a.ids()
    np.testing.assert_array_equal(ids, b.ids())
    va, _ = a.get_many(ids, dtype=None)
    vb, _ = b.get_many(ids, dtype=None)
    assert va.tobytes() == vb.tobytes()                 # bit-identical vectors (--sg-workers 1)


@pytest.mark.slow
def test_train_two_workers_on_two_nodes_equal_the_single_node_run(archive, ray_cluster, ray_local, tmp_path):
    import torch

    from jobs.train import TrainConfig
    from jobs.train import run as train
    from models.recsys import load

    flags = {"model": "PITF", "num_workers": 2, "epochs": 3, "dim": 8}
    ref = train(TrainConfig(out=str(archive), split=str(archive / "split"), seed=5, **flags))
    ref_pl = ref["models"]["PITF"]["placement"]
    assert len(ref_pl["node_of_rank"]) == 2 and len(set(ref_pl["node_of_rank"])) == 1    # one node
    args = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    got = cluster_job("train", ray_cluster, None, "--split", str(archive / "split"), "--seed", "5", *args,
                      out=tmp_path / "run")
    pl = check_driver_on_store_node(got["models"]["PITF"], ray_cluster)
    ranks = pl["node_of_rank"]
    assert len(ranks) == 2 and len(set(ranks)) == 2, f"both workers on one node: {ranks}"
    a, b = load(archive / "models" / "PITF"), load(tmp_path / "run" / "models" / "PITF")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def test_score_tasks_run_on_nodes_without_the_store_and_equal_the_single_node_run(archive, ray_cluster, ray_local,
                                                                                  tmp_path):
    """The driver ships each shard's features: tasks score on the worker nodes, which have no store."""
    from jobs.score import ScoreConfig
    from jobs.score import run as score
    from jobs.train import TrainConfig
    from jobs.train import run as train

    train(TrainConfig(out=str(archive), model="PITF-IC-OD", epochs=2, dim=8, seed=5))
    for name in ("ref", "ship", "store"):
        shutil.copytree(archive / "store", tmp_path / name)          # the same features for every run
    flags = ["--model", str(archive / "models" / "PITF-IC-OD"), "--shard-size", "20", "--max-in-flight", "4",
             "--posts", str(archive / "archive" / "posts.parquet")]
    ref = score(ScoreConfig(out=str(tmp_path / "ref-run"), store=str(tmp_path / "ref"), shard_size=20,
                            max_in_flight=4, model=str(archive / "models" / "PITF-IC-OD"),
                            posts=str(archive / "archive" / "posts.parquet")))
    got = cluster_job("score", ray_cluster, None, *flags, "--store", str(tmp_path / "ship"), out=tmp_path / "ship-run")
    pl = check_driver_on_store_node(got, ray_cluster)
    tasks = pl["score_tasks"]
    assert sum(tasks.values()) == got["scored_posts"] == ref["scored_posts"] == 120
    assert set(tasks) & set(ray_cluster.workers), f"no scoring task ran off the store's node: {tasks}"
    assert pl["feature_reads_and_writes"] == {ray_cluster.head: 120} and got["shipped_mb"] > 0
    assert got["features"] == "ship"                                # auto on a cluster
    assert _parts(tmp_path / "ship-run" / "topk" / "PITF-IC-OD") == _parts(tmp_path / "ref-run" / "topk" / "PITF-IC-OD")
    # --features store: the tasks read the store themselves, so they stay on its node
    pinned = cluster_job("score", ray_cluster, None, *flags, "--store", str(tmp_path / "store"), "--features",
                         "store", out=tmp_path / "store-run")
    assert check_driver_on_store_node(pinned, ray_cluster)["score_tasks"] == {ray_cluster.head: 120}
    assert _parts(tmp_path / "store-run" / "topk" / "PITF-IC-OD") == _parts(tmp_path / "ref-run" / "topk" / "PITF-IC-OD")
    view = ref["view"]
    a, b = Store.open(tmp_path / "ref", readonly=True).reader(view), Store.open(tmp_path / "ship", readonly=True).reader(view)
    ids = a.ids()
    assert ids.tolist() == b.ids().tolist()
    assert a.get_many(ids)[0].tobytes() == b.get_many(ids)[0].tobytes()


# One torch thread per actor in every run: the thread count changes the float summation order.
EXTRACT = ["--vgg-size", "32", "--yolo-size", "64", "--random-weights", "--batch-size", "4", "--seed", "7",
           "--threads", "1"]


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory, s3_server):
    """A tiny archive with images, on local disk and in s3://multinode-archive/a/."""
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth

    out = tmp_path_factory.mktemp("mnimg")
    synth(SynthConfig(out=str(out), num_users=8, num_posts=16, num_tags=6, image_size="48x40", seed=7))
    s3_server.client().create_bucket(Bucket="multinode-archive")
    s3_server.upload_tree(out / "archive", "multinode-archive", "a")
    return out / "archive"


@pytest.mark.slow
def test_extract_actors_on_the_pool_read_s3_and_equal_the_single_node_run(image_archive, s3_server, s3_proxy,
                                                                          ray_cluster, ray_local, tmp_path):
    """Model actors on the two worker nodes (the `pool` resource) read the images from S3 themselves;
    the driver on the head, the store's single writer, commits every batch."""
    from jobs.extract import ExtractConfig
    from jobs.extract import run as extract

    ref = extract(ExtractConfig(posts=str(image_archive / "posts.parquet"), store=str(tmp_path / "ref"),
                                out=str(tmp_path / "ref-run"), vgg_size=32, yolo_size=64, random_weights=True,
                                batch_size=4, seed=7, threads=1))
    got = cluster_job("extract", ray_cluster, s3_server.env("admin", s3_proxy.url),
                      "--posts", "s3://multinode-archive/a/posts.parquet", "--store", str(tmp_path / "mn"),
                      "--cpu-actors", "2", "--actor-resources", '{"pool": 1}', *EXTRACT, out=tmp_path / "run")
    pl = check_driver_on_store_node(got, ray_cluster)
    # off the head (whether both pool actors get a block depends on which loads its models first)
    assert pl["model_actors"] and set(pl["model_actors"]) <= set(ray_cluster.workers), pl["model_actors"]
    assert sum(pl["model_actors"].values()) == got["processed"] == ref["processed"] > 0
    assert pl["store_writes"] == {ray_cluster.head: got["processed"]}
    assert got["failed"] == ref["failed"] == 0
    for view in ("image/vgg16@1", "image/yolo@1"):
        a = Store.open(tmp_path / "ref", readonly=True).reader(view)
        b = Store.open(tmp_path / "mn", readonly=True).reader(view)
        ids = a.ids()
        assert ids.tolist() == b.ids().tolist()
        assert a.get_many(ids, dtype=None)[0].tobytes() == b.get_many(ids, dtype=None)[0].tobytes()
