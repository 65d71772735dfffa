"""Jobs on an archive in a bucket of a real S3-compatible server (moto, on 127.0.0.1), and scoring
into the GCS emulator too: the same results as from local files, and one clear line for each
problem with the bucket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from featurestore import Store
from jobs._cli import run_job

BUCKET = "pipeline-archive"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, s3_server):
    """A tiny synthetic archive with images, on local disk and uploaded to s3://BUCKET/a/."""
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth

    out = tmp_path_factory.mktemp("s3pipe")
    synth(SynthConfig(out=str(out), num_users=10, num_posts=24, num_tags=8, image_size="64x48", seed=7))
    s3_server.client().create_bucket(Bucket=BUCKET)
    s3_server.client().create_bucket(Bucket="pipeline-out")
    s3_server.upload_tree(out / "archive", BUCKET, "a")
    return out / "archive"


def _view(store, name):
    r = Store.open(store, readonly=True).reader(name)
    ids = r.ids()
    v, _ = r.get_many(ids, dtype=None)
    return ids.tolist(), v.tobytes()


def test_prepare_social_influence_and_embed_users_read_s3_like_local_files(archive, s3_env, ray_local, tmp_path):
    """Ray workers here never read S3 (walks get the graph from the driver): the driver reads it all."""
    from jobs.embed_users import EmbedUsersConfig
    from jobs.embed_users import run as embed
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from jobs.social_influence import SocialInfluenceConfig
    from jobs.social_influence import run as influence

    runs = {"local": (str(archive / "posts.parquet"), str(archive / "edges.parquet")),
            "s3": (f"s3://{BUCKET}/a/posts.parquet", f"s3://{BUCKET}/a/edges.parquet")}
    res = {}
    for name, (posts, edges) in runs.items():
        out = tmp_path / name
        prepare(PrepareConfig(posts=posts, out=str(out), seed=7))
        si = influence(SocialInfluenceConfig(posts=posts, edges=edges, out=str(out), seed=7))
        emb = embed(EmbedUsersConfig(posts=posts, edges=edges, out=str(out), store=str(out / "store"), seed=7,
                                     walk_length=8, walks_per_node=2, dim=8, window=2, sg_workers=1))
        res[name] = (out, si, emb)
    (a, si_a, emb_a), (b, si_b, emb_b) = res["local"], res["s3"]
    secret = s3_env()["AWS_SECRET_ACCESS_KEY"]
    for f in b.rglob("*.json"):                    # configs and summaries name URIs, never credentials
        assert secret not in f.read_text(), f
    for part in ("train", "val", "test"):
        assert pq.read_table(a / "split" / f"{part}.parquet").equals(pq.read_table(b / "split" / f"{part}.parquet"))
    assert si_a["mean_sp"] == si_b["mean_sp"] and si_a["pairs"] == si_b["pairs"]
    assert emb_a["written"] == emb_b["written"] > 0
    assert _view(a / "store", "user/node2vec@1") == _view(b / "store", "user/node2vec@1")


@pytest.mark.parametrize("posts,user,needle", [
    (f"s3://{BUCKET}/a/nope.parquet", "admin", f"posts file s3://{BUCKET}/a/nope.parquet does not exist"),
    ("s3://no-such-archive/posts.parquet", "admin",
     "bucket 'no-such-archive' of s3://no-such-archive/posts.parquet does not exist"),
    (f"s3://{BUCKET}/a/posts.parquet", "nobody", f"access denied to s3://{BUCKET}/a/posts.parquet"),
])
def test_bad_archive_uris_are_one_line_exit_2_and_write_nothing(archive, s3_env, tmp_path, capsys, posts, user,
                                                                needle):
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare

    s3_env(user=user)
    out = tmp_path / "run"
    assert run_job("prepare", PrepareConfig, prepare, ["--posts", posts, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: prepare:") and needle in err
    assert not (out / "split").exists()


def test_unreachable_endpoint_is_retried_then_one_line(archive, s3_env, tmp_path, capsys, monkeypatch):
    from _s3 import free_port

    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare

    s3_env(endpoint=f"http://127.0.0.1:{free_port()}")         # nothing listens there
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "2")
    out = tmp_path / "run"
    assert run_job("prepare", PrepareConfig, prepare, ["--posts", f"s3://{BUCKET}/a/posts.parquet",
                                                       "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot reach the S3 endpoint" in err and "gave up after 2 attempts" in err
    assert "AWS_ENDPOINT_URL" in err and json.dumps(err).count("\\n") == 0
    assert not (out / "split").exists()


# One torch thread per actor in every run: the thread count changes the float summation order.
EXTRACT = {"vgg_size": 32, "yolo_size": 64, "random_weights": True, "batch_size": 4, "seed": 7, "threads": 1}


def _flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


def _job(stage: str, env: dict, *args: str, out) -> tuple[dict, str]:
    """`python -m jobs.<stage>` in a subprocess (its own local Ray, whose workers get `env`)."""
    done = subprocess.run([sys.executable, "-m", f"jobs.{stage}", "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "reports" / f"{stage}.summary.json").read_text()), done.stderr


@pytest.mark.slow
def test_extract_reads_images_from_s3_retries_counts_bad_reads_and_resumes(archive, s3_server, s3_proxy, ray_local,
                                                                           tmp_path):
    """Images read by the Ray workers through S3: a flaky read is retried, one that keeps failing
    and a missing key are bad images with their reasons; a re-run after the outage resumes and
    ends with the store a run on local files makes."""
    from jobs.extract import ExtractConfig
    from jobs.extract import run as extract

    ref = extract(ExtractConfig(posts=str(archive / "posts.parquet"), store=str(tmp_path / "ref"),
                                out=str(tmp_path / "ref-run"), **EXTRACT))
    images = sorted(set(pq.read_table(archive / "posts.parquet").column("image").to_pylist()))
    flaky, broken, gone = images[:3]
    s3_proxy.clear()
    s3_proxy.fail(f"/{BUCKET}/a/{flaky}", times=2)           # two 503s, then the object
    s3_proxy.fail(f"/{BUCKET}/a/{broken}", times=-1)         # 503 for good
    s3_server.client().delete_object(Bucket=BUCKET, Key=f"a/{gone}")
    env = {**s3_server.process_env(endpoint=s3_proxy.url), "TAGREC_IO_ATTEMPTS": "3", "TAGREC_IO_BACKOFF_S": "0.05",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = ["--posts", f"s3://{BUCKET}/a/posts.parquet", "--store", str(tmp_path / "s3"), *_flags(EXTRACT)]
    try:
        got, err = _job("extract", env, *args, out=tmp_path / "s3-run")
        assert got["failed_by_reason"] == {"missing": 1, "read-failed": 1}
        assert got["ok"] == ref["ok"] - 2 and got["processed"] == ref["processed"]
        statuses = [st for _, _, st in s3_proxy.requests_for(f"/a/{flaky}")]
        assert statuses.count(503) == 2 and statuses[-1] in (200, 206)
        assert f"s3://{BUCKET}/a/{broken}" in err and "read-failed" in err     # one clear line on the driver
    finally:
        s3_proxy.clear()
        s3_server.client().upload_file(str(archive / gone), BUCKET, f"a/{gone}")
    again, _ = _job("extract", env, *args, out=tmp_path / "s3-run")
    assert again["processed"] == 2 and again["skipped_committed"] == ref["ok"] - 2 and again["failed"] == 0
    for view in ("image/vgg16@1", "image/yolo@1"):
        assert _view(tmp_path / "s3", view) == _view(tmp_path / "ref", view)


@pytest.fixture(scope="module")
def scored_archive(tmp_path_factory):
    """No images: IC/OD vectors straight in the store, a split and a trained PITF-IC-OD."""
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth
    from jobs.train import TrainConfig
    from jobs.train import run as train

    out = tmp_path_factory.mktemp("s3score")
    synth(SynthConfig(out=str(out), num_users=12, num_posts=60, num_tags=8, images=False, write_features=True, seed=3))
    prepare(PrepareConfig(out=str(out), seed=3))
    train(TrainConfig(out=str(out), model="PITF-IC-OD", epochs=2, dim=8, seed=3))
    return out


def test_score_writes_topk_parts_to_an_object_store_equal_to_local_ones_and_rebuilds_a_lost_one(
        scored_archive, object_store, ray_local, tmp_path):
    """Each store in turn (S3 on moto, GCS on the emulator)."""
    from jobs.score import ScoreConfig
    from jobs.score import run as score

    out, scheme = scored_archive, object_store.scheme
    object_store.create_bucket("score-out")
    for name in ("local", scheme):
        shutil.copytree(out / "store", tmp_path / name)
    base = {"out": str(out), "model": "PITF-IC-OD", "shard_size": 16, "k": 5}
    score(ScoreConfig(store=str(tmp_path / "local"), topk_out=str(tmp_path / "topk"), **base))
    s = score(ScoreConfig(store=str(tmp_path / scheme), topk_out=f"{scheme}://score-out/topk", **base))
    assert s["parquet"] == f"{scheme}://score-out/topk/PITF-IC-OD" and s["scored_posts"] == 60
    local = {p.name: p.read_bytes() for p in (tmp_path / "topk" / "PITF-IC-OD").iterdir()
             if p.name.startswith("part-")}
    remote = {k.rsplit("/", 1)[1]: v for k, v in object_store.objects("score-out", "topk/PITF-IC-OD/").items()
              if "/part-" in k}
    assert len(local) == 4 and remote == local
    lost = sorted(remote)[1]
    object_store.delete("score-out", f"topk/PITF-IC-OD/{lost}")
    again = score(ScoreConfig(store=str(tmp_path / scheme), topk_out=f"{scheme}://score-out/topk", **base))
    assert again["scored_posts"] == 0 and again["skipped_shards"] == 3       # only the lost part rebuilt
    assert object_store.objects("score-out", f"topk/PITF-IC-OD/{lost}")[f"topk/PITF-IC-OD/{lost}"] == local[lost]


PIPELINE = ["--vgg-size", "32", "--yolo-size", "64", "--random-weights", "--no-all", "--model", "PITF-IC-OD+SN",
            "--train-epochs", "3", "--k", "5", "--seed", "7", "--sg-workers", "1"]


@pytest.mark.slow
def test_pipeline_on_an_s3_archive_equals_the_pipeline_on_local_files(archive, s3_server, tmp_path):
    """Manifest, edges and images read through S3 and the top-k parts and evaluation written
    there give the store and the top-k the same archive on local files gives."""
    env = {**s3_server.process_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    local, remote = tmp_path / "local", tmp_path / "s3"
    _job("pipeline", env, "--posts", str(archive / "posts.parquet"), "--edges", str(archive / "edges.parquet"),
         *PIPELINE, out=local)
    got, _ = _job("pipeline", env, "--posts", f"s3://{BUCKET}/a/posts.parquet", "--edges",
                  f"s3://{BUCKET}/a/edges.parquet", "--topk-out", "s3://pipeline-out/run/topk",
                  "--results", "s3://pipeline-out/run/reports", *PIPELINE, out=remote)
    assert "extract" in got["stages_run"] and "score" in got["stages_run"]
    views = Store.open(local / "store", readonly=True).list_views()
    assert any(v.startswith("post/topk@") for v in views) and "image/vgg16@1" in views
    assert Store.open(remote / "store", readonly=True).list_views() == views
    for view in views:
        assert _view(local / "store", view) == _view(remote / "store", view), view
    parts = {p.name: p.read_bytes() for p in (local / "topk" / "PITF-IC-OD+SN").glob("part-*.parquet")}
    objects = {k.rsplit("/", 1)[1]: v for k, v in s3_server.objects("pipeline-out", "run/topk/PITF-IC-OD+SN/").items()
               if "/part-" in k}
    assert parts and objects == parts
    key_id, secret = s3_server.keys["admin"]
    for f in remote.rglob("*.json"):               # configs and summaries name URIs, never credentials
        assert secret not in f.read_text() and key_id not in f.read_text(), f
    evaluation = json.loads(s3_server.objects("pipeline-out", "run/reports/")["run/reports/evaluation.json"])
    assert evaluation == json.loads((local / "evaluation.json").read_text())


@pytest.mark.parametrize("posts,needle", [
    ("gs://gcs-archive/a/nope.parquet", "posts file gs://gcs-archive/a/nope.parquet does not exist"),
    ("gs://no-such-archive/posts.parquet", "bucket 'no-such-archive' of gs://no-such-archive/posts.parquet does not exist"),
    ("gs://gcs-archive/a/posts.parquet", "cannot reach the GCS endpoint http://127.0.0.1:"),
])
def test_bad_gcs_archive_uris_are_one_line_exit_2_and_write_nothing(gcs_env, gcs_server, tmp_path, capsys,
                                                                    monkeypatch, posts, needle):
    from _s3 import free_port

    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare

    gcs_server.create_bucket("gcs-archive")
    if "cannot reach" in needle:
        gcs_env(endpoint=f"http://127.0.0.1:{free_port()}")        # nothing listens there
        monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "2")
    out = tmp_path / "run"
    assert run_job("prepare", PrepareConfig, prepare, ["--posts", posts, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: prepare:") and needle in err
    if "cannot reach" in needle:
        assert "STORAGE_EMULATOR_HOST" in err and "gave up after 2 attempts" in err
    assert not (out / "split").exists()
