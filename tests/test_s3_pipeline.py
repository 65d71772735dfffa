"""Jobs on an archive in a bucket of a real S3-compatible server (moto, on 127.0.0.1): the same
results as from local files, and one clear line for each problem with the bucket."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from featurestore import Store
from jobs._cli import run_job

BUCKET = "pipeline-archive"


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
