"""featurestore.uri against local files and a real S3-compatible server (moto) on 127.0.0.1,
with a real HTTP proxy in front of it for reads that fail."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import uri
from featurestore.uri import UriError


@pytest.fixture(scope="module")
def bucket(s3_server):
    c = s3_server.client()
    c.create_bucket(Bucket="uri-test")
    c.put_object(Bucket="uri-test", Key="a/x.bin", Body=b"hello")
    c.put_object(Bucket="uri-test", Key="a/y.bin", Body=b"world!")
    c.put_object(Bucket="uri-test", Key="a/sub/z.bin", Body=b"deep")
    return "uri-test"


def test_names():
    assert uri.join("s3://b/archive", "images/1.jpg") == "s3://b/archive/images/1.jpg"
    assert uri.join("s3://b/archive/", "s3://c/x.jpg") == "s3://c/x.jpg"
    assert uri.join("/data/archive", "images/1.jpg") == "/data/archive/images/1.jpg"
    assert uri.join("s3://b/archive", "/mnt/x.jpg") == "/mnt/x.jpg"
    assert uri.parent("s3://b/archive/posts.parquet") == "s3://b/archive"
    assert uri.parent("s3://b/posts.parquet") == "s3://b"
    assert uri.parent("file:///data/a/posts.parquet") == "/data/a"
    assert uri.normalize("rel/x") == os.path.abspath("rel/x")
    assert uri.is_remote("s3://b/k") and uri.is_remote("gs://b/k") and not uri.is_remote("/x")
    assert uri.basename("s3://b/a/part-1.parquet") == "part-1.parquet"


@pytest.mark.parametrize("bad,needle", [
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("s3:///key", "no bucket name"),
    ("s3://AKIA:secret@bucket/key", "credentials in a URI are refused"),
])
def test_bad_uris_are_refused_with_one_line(bad, needle):
    with pytest.raises(UriError, match=needle) as e:
        uri.resolve(bad)
    assert "\n" not in str(e.value) and "secret" not in str(e.value)


def test_local_read_write_list_and_atomic_output(tmp_path):
    target = tmp_path / "out" / "f.bin"
    uri.write_bytes(target, b"abc")                        # parent created
    assert uri.read_bytes(target) == b"abc" and uri.file_size(target) == 3
    assert uri.list_files(tmp_path / "out", "*.bin") == [str(target)]
    with pytest.raises(RuntimeError), uri.atomic_output(tmp_path / "out" / "g.bin") as f:
        f.write(b"half")
        raise RuntimeError("killed while writing")
    assert sorted(os.listdir(tmp_path / "out")) == ["f.bin"]      # no half file, no temporary left
    with pytest.raises(UriError, match="does not exist") as e:
        uri.read_bytes(tmp_path / "nope.bin")
    assert e.value.reason == "missing"
    with pytest.raises(UriError, match="too-large|> 2") as e:
        uri.read_bytes(target, max_bytes=2)
    assert e.value.reason == "too-large"


def test_s3_read_list_write_and_parquet_round_trip(s3_env, bucket):
    assert uri.read_bytes(f"s3://{bucket}/a/x.bin") == b"hello"
    assert uri.file_size(f"s3://{bucket}/a/y.bin") == 6
    assert uri.file_size(f"s3://{bucket}/a/none.bin") is None
    assert uri.list_files(f"s3://{bucket}/a", "*.bin") == [f"s3://{bucket}/a/x.bin", f"s3://{bucket}/a/y.bin"]
    t = pa.table({"id": pa.array([3, 1, 2], pa.int64())})
    with uri.atomic_output(f"s3://{bucket}/out/t.parquet") as f:
        pq.write_table(t, f)
    assert pq.read_table(uri.open_input_file(f"s3://{bucket}/out/t.parquet")).equals(t)
    with pytest.raises(RuntimeError), uri.atomic_output(f"s3://{bucket}/out/half.parquet") as f:
        f.write(b"PAR1 half")
        raise RuntimeError("killed while writing")
    assert uri.list_files(f"s3://{bucket}/out") == [f"s3://{bucket}/out/t.parquet"]   # nothing half-written


def test_s3_endpoint_comes_from_the_standard_variables(s3_env, s3_server, bucket, monkeypatch):
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL, as in boto3 and the AWS CLI
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    uri.clear_cache()
    assert uri.read_bytes(f"s3://{bucket}/a/x.bin") == b"hello"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "2")
    uri.clear_cache()
    with pytest.raises(UriError, match=r"cannot reach the S3 endpoint http://127.0.0.1:1 .*AWS_ENDPOINT_URL") as e:
        uri.read_bytes(f"s3://{bucket}/a/x.bin")
    assert e.value.reason == "unreachable" and "gave up after 2 attempts" in str(e.value)


def test_s3_errors_are_one_clear_line(s3_env, s3_server, bucket):
    with pytest.raises(UriError, match=f"s3://{bucket}/a/missing.bin does not exist") as e:
        uri.read_bytes(f"s3://{bucket}/a/missing.bin")
    assert e.value.reason == "missing"
    with pytest.raises(UriError, match="bucket 'no-such-bucket' of s3://no-such-bucket/k does not exist") as e:
        uri.read_bytes("s3://no-such-bucket/k")
    assert e.value.reason == "no-bucket"
    env = s3_env(user="nobody")
    with pytest.raises(UriError, match=f"access denied to s3://{bucket}/a/x.bin .*credentials") as e:
        uri.read_bytes(f"s3://{bucket}/a/x.bin")
    assert e.value.reason == "denied"
    with pytest.raises(UriError, match="access denied") as e:
        uri.write_bytes(f"s3://{bucket}/out/denied.bin", b"x")
    for err in (str(e.value),):
        assert "\n" not in err and env["AWS_SECRET_ACCESS_KEY"] not in err


def test_a_read_that_fails_then_succeeds_is_retried(s3_env, s3_proxy, bucket):
    s3_env(endpoint=s3_proxy.url)
    s3_proxy.clear()
    s3_proxy.fail("/a/y.bin", times=2)             # two 503 SlowDown answers, then the object
    assert uri.read_bytes(f"s3://{bucket}/a/y.bin") == b"world!"
    statuses = [st for _, _, st in s3_proxy.requests_for("/a/y.bin")]
    assert statuses.count(503) == 2 and statuses[-1] in (200, 206)   # HEAD, then a ranged GET


def test_a_read_that_keeps_failing_gives_up_with_the_reason(s3_env, s3_proxy, bucket, monkeypatch):
    s3_env(endpoint=s3_proxy.url)
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "3")
    s3_proxy.clear()
    s3_proxy.fail("/a/x.bin", times=-1)
    with pytest.raises(UriError, match=r"read s3://uri-test/a/x.bin failed: .*gave up after 3 attempts") as e:
        uri.read_bytes(f"s3://{bucket}/a/x.bin")
    assert e.value.reason == "failed"
    # our 3 attempts, each after the SDK's own quick retries: every one reached the proxy
    assert len(s3_proxy.requests_for("/a/x.bin")) >= 3
    s3_proxy.clear()
    assert uri.read_bytes(f"s3://{bucket}/a/x.bin") == b"hello"
