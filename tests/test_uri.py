"""featurestore.uri against local files, a real S3-compatible server (moto) and a real GCS
emulator (gcp-storage-emulator) on 127.0.0.1, with a real HTTP proxy in front of them for reads
that fail."""

from __future__ import annotations

import os
import subprocess
import sys

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


@pytest.fixture
def remote(object_store):
    """s3://uri-test or gs://uri-test (each store in turn) holding a/x.bin, a/y.bin and a/sub/z.bin."""
    object_store.create_bucket("uri-test")
    for key, data in (("a/x.bin", b"hello"), ("a/y.bin", b"world!"), ("a/sub/z.bin", b"deep")):
        object_store.put("uri-test", key, data)
    return f"{object_store.scheme}://uri-test"


def test_read_list_write_and_parquet_round_trip_on_each_object_store(remote, object_store):
    assert uri.read_bytes(f"{remote}/a/x.bin") == b"hello"
    assert uri.file_size(f"{remote}/a/y.bin") == 6
    assert uri.file_size(f"{remote}/a/none.bin") is None
    assert uri.exists(f"{remote}/a") and uri.is_file(f"{remote}/a/x.bin") and not uri.is_file(f"{remote}/a")
    assert uri.list_files(f"{remote}/a", "*.bin") == [f"{remote}/a/x.bin", f"{remote}/a/y.bin"]
    uri.write_bytes(f"{remote}/out/w.bin", b"written")
    assert object_store.objects("uri-test", "out/w.bin") == {"out/w.bin": b"written"}   # seen by another client
    t = pa.table({"id": pa.array([3, 1, 2], pa.int64())})
    with uri.atomic_output(f"{remote}/out/t.parquet") as f:
        pq.write_table(t, f)
    assert pq.read_table(uri.open_input_file(f"{remote}/out/t.parquet")).equals(t)
    with pytest.raises(RuntimeError), uri.atomic_output(f"{remote}/out/half.parquet") as f:
        f.write(b"PAR1 half")
        raise RuntimeError("killed while writing")
    assert uri.list_files(f"{remote}/out") == [f"{remote}/out/t.parquet", f"{remote}/out/w.bin"]   # nothing half-written
    uri.delete(f"{remote}/out/w.bin")
    uri.delete(f"{remote}/out/w.bin")                      # missing_ok
    # (pyarrow's S3 leaves an empty "out/" marker so that the folder stays: not a file)
    assert [k for k in sorted(object_store.objects("uri-test", "out/")) if not k.endswith("/")] == ["out/t.parquet"]


@pytest.mark.parametrize("path,reason,needle", [
    ("{remote}/a/missing.bin", "missing", "{remote}/a/missing.bin does not exist"),
    ("{scheme}://no-such-bucket/k", "no-bucket", "bucket 'no-such-bucket' of {scheme}://no-such-bucket/k does not exist"),
])
def test_missing_object_and_bucket_are_one_line_on_each_object_store(remote, object_store, path, reason, needle):
    path, needle = (x.format(remote=remote, scheme=object_store.scheme) for x in (path, needle))
    for op in (uri.read_bytes, uri.open_input_file):
        with pytest.raises(UriError, match=needle) as e:
            op(path)
        assert e.value.reason == reason and "\n" not in str(e.value)
    if reason == "no-bucket":                              # a write into it says so too
        with pytest.raises(UriError, match=needle) as e:
            uri.write_bytes(path, b"x")
        assert e.value.reason == reason


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
    assert e.value.reason == "unreachable"


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


# --------------------------------------------------------------------------- GCS (the emulator)


def test_gcs_endpoint_comes_from_storage_emulator_host(gcs_env, gcs_server, monkeypatch):
    gcs_server.create_bucket("uri-gcs")
    gcs_server.put("uri-gcs", "k.bin", b"via the emulator")
    # host:port without a scheme means http, as for Google's client libraries
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url.split("://", 1)[1])
    uri.clear_cache()
    assert uri.read_bytes("gs://uri-gcs/k.bin") == b"via the emulator"
    assert uri.read_bytes("gcs://uri-gcs/k.bin") == b"via the emulator"      # the other spelling
    # a cached client follows a change of the variable once the cache is cleared
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "1")
    uri.clear_cache()
    with pytest.raises(UriError, match=r"cannot reach the GCS endpoint http://127.0.0.1:1 to read gs://uri-gcs/k.bin "
                                       r"\(UNAVAILABLE: .*Could not connect.*\); check the endpoint "
                                       r"\(STORAGE_EMULATOR_HOST") as e:
        uri.read_bytes("gs://uri-gcs/k.bin")
    assert e.value.reason == "unreachable"
    assert "\n" not in str(e.value) and "error_info" not in str(e.value)      # Google's status, shortened
    monkeypatch.setenv("TAGREC_GCS_RETRY_S", "soon")
    with pytest.raises(UriError, match="TAGREC_GCS_RETRY_S must be a whole number of seconds"):
        uri.read_bytes("gs://uri-gcs/k.bin")


def test_gcs_unreachable_endpoint_fails_in_bounded_time_with_one_line(tmp_path):
    """A closed port with the Google client's default retry limit (one attempt of ours): without a
    retry limit the Google client keeps retrying for many minutes and the subprocess is killed."""
    from _gcs import GCS_VARS
    from _s3 import free_port

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in GCS_VARS and not k.startswith("TAGREC_")}
    env.update({"STORAGE_EMULATOR_HOST": f"127.0.0.1:{free_port()}", "TAGREC_IO_ATTEMPTS": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))})
    code = ("from featurestore import uri\n"
            "try:\n    uri.read_bytes('gs://archive/posts.parquet')\n"
            "except uri.UriError as e:\n    print(e.reason, '|', e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    out = done.stdout.strip()
    assert done.returncode == 0 and out.startswith("unreachable | cannot reach the GCS endpoint 127.0.0.1:"), done
    assert "STORAGE_EMULATOR_HOST" in out and len(out.splitlines()) == 1


@pytest.fixture
def gcs_proxy(gcs_server, tmp_path):
    """A real HTTP proxy (its own process) in front of the emulator, answering chosen requests with an error."""
    from _gcs import ProxyProcess

    proxy = ProxyProcess(gcs_server.url, tmp_path / "proxy.log")
    yield proxy
    proxy.close()


def test_gcs_denied_and_transient_answers_are_classified_and_retried(gcs_env, gcs_server, gcs_proxy, monkeypatch):
    """The emulator cannot deny access: the proxy answers 403 the way GCS does when the credentials
    may not read an object. 503s are retried by the Google client and by ours, then give up."""
    gcs_server.create_bucket("uri-gcs")
    gcs_server.put("uri-gcs", "p/x.bin", b"hello")
    gcs_env(endpoint=gcs_proxy.url)
    gcs_proxy.fail("/o/p%2Fx.bin", times=-1, status=403)
    with pytest.raises(UriError, match=r"access denied to gs://uri-gcs/p/x.bin \(PERMISSION_DENIED: .*\); check that "
                                       r"the credentials \(GOOGLE_APPLICATION_CREDENTIALS") as e:
        uri.read_bytes("gs://uri-gcs/p/x.bin")
    assert e.value.reason == "denied" and "\n" not in str(e.value)
    gcs_proxy.clear()
    gcs_proxy.fail("/o/p%2Fx.bin", times=2)                # 503 twice, then the object
    assert uri.read_bytes("gs://uri-gcs/p/x.bin") == b"hello"
    statuses = [st for _, _, st in gcs_proxy.requests_for("/o/p%2Fx.bin")]
    assert statuses.count(503) == 2 and statuses[-1] == 200
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "2")
    gcs_proxy.clear()
    gcs_proxy.fail("/o/p%2Fx.bin", times=-1)
    with pytest.raises(UriError, match=r"read gs://uri-gcs/p/x.bin failed: UNAVAILABLE: .*gave up after 2 attempts") as e:
        uri.read_bytes("gs://uri-gcs/p/x.bin")
    assert e.value.reason == "failed"                      # a 503 is not an unreachable endpoint
    assert len(gcs_proxy.requests_for("/o/p%2Fx.bin")) >= 2
