"""The data contract on URIs: posts and edges read from a real S3-compatible server (moto) and
a real GCS emulator (gcp-storage-emulator)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.contract import check_posts, iter_posts, read_edges, read_posts
from jobs.errors import InputError

BUCKET = "contract-test"


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


POSTS = pa.table({
    "post_id": pa.array([1, 2, 3, 4], pa.int64()),
    "user_id": pa.array([10, 10, 11, 12], pa.int64()),
    "image": pa.array(["img/a.jpg", "img/b.jpg", "s3://other/c.jpg", "/abs/d.jpg"]),
    "tags": pa.array([["sky"], [], ["sea"], ["dog"]], pa.list_(pa.string())),
})
EDGES = pa.table({"src": pa.array([10, 11], pa.int64()), "dst": pa.array([11, 99], pa.int64())})


@pytest.fixture(scope="module")
def local_posts(tmp_path_factory):
    local = tmp_path_factory.mktemp("local")
    pq.write_table(POSTS, local / "posts.parquet")
    return local


@pytest.fixture
def archive(object_store, local_posts):
    """The archive in s3://BUCKET/arch or gs://BUCKET/arch (each store in turn), and on local disk."""
    object_store.create_bucket(BUCKET)
    object_store.put(BUCKET, "arch/posts.parquet", _parquet(POSTS))
    object_store.put(BUCKET, "arch/edges.parquet", _parquet(EDGES))
    object_store.put(BUCKET, "arch/bad.parquet", _parquet(POSTS.drop(["user_id"])))
    return f"{object_store.scheme}://{BUCKET}/arch", local_posts


def test_posts_in_an_object_store_read_like_local_ones_with_images_relative_to_the_manifest_uri(archive):
    prefix, local = archive
    remote, here = read_posts(f"{prefix}/posts.parquet"), read_posts(local / "posts.parquet")
    assert remote.column("image").to_pylist() == [f"{prefix}/img/a.jpg", f"{prefix}/img/b.jpg",
                                                  "s3://other/c.jpg", "/abs/d.jpg"]
    assert here.column("image").to_pylist()[2:] == ["s3://other/c.jpg", "/abs/d.jpg"]
    # item ids hash the manifest's own strings: the same archive gets the same ids wherever it lives
    np.testing.assert_array_equal(remote.column("item_id").to_numpy(), here.column("item_id").to_numpy())
    assert check_posts(f"{prefix}/posts.parquet") == 4
    streamed = pa.Table.from_batches(list(iter_posts(f"{prefix}/posts.parquet", columns=("post_id", "image"))))
    assert streamed.column("image").to_pylist() == remote.column("image").to_pylist()
    edges, report = read_edges(f"{prefix}/edges.parquet", np.array([10, 11, 12]))
    assert edges.num_rows == 2 and report.unknown_users == 1


@pytest.mark.parametrize("path,user,needle", [
    ("s3://contract-test/arch/nope.parquet", "admin", "posts file s3://contract-test/arch/nope.parquet does not exist"),
    ("s3://no-bucket-here/posts.parquet", "admin", "bucket 'no-bucket-here' of s3://no-bucket-here/posts.parquet does not exist"),
    ("s3://contract-test/arch/posts.parquet", "nobody", "access denied to s3://contract-test/arch/posts.parquet"),
    ("s3://contract-test/arch/bad.parquet", "admin", r"s3://contract-test/arch/bad.parquet: missing column\(s\) \['user_id'\]"),
    ("gs://contract-test/arch/nope.parquet", "", "posts file gs://contract-test/arch/nope.parquet does not exist"),
    ("gs://no-bucket-here/posts.parquet", "", "bucket 'no-bucket-here' of gs://no-bucket-here/posts.parquet does not exist"),
    ("gs://contract-test/arch/bad.parquet", "", r"gs://contract-test/arch/bad.parquet: missing column\(s\) \['user_id'\]"),
])
def test_bad_posts_uris_are_one_line_input_errors(request, path, user, needle):
    if path.startswith("s3://"):
        request.getfixturevalue("s3_env")(user=user)
        store = request.getfixturevalue("s3_server")
    else:                                          # the emulator cannot deny access: no "nobody" there
        request.getfixturevalue("gcs_env")
        store = request.getfixturevalue("gcs_server")
    store.create_bucket(BUCKET)
    store.put(BUCKET, "arch/bad.parquet", _parquet(POSTS.drop(["user_id"])))
    for read in (read_posts, check_posts):
        with pytest.raises(InputError, match=needle) as e:
            read(path)
        assert "\n" not in str(e.value)
