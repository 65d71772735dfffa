"""Image bytes through featurestore.uri for extract: each read failure becomes a bad-image reason."""

from __future__ import annotations

import pytest

from jobs._image_io import read_image
from models.vision.decode import REASONS, DecodeFailure, DecodeLimits

LIMITS = DecodeLimits(max_bytes=1000)


@pytest.fixture(scope="module")
def images(s3_server):
    c = s3_server.client()
    c.create_bucket(Bucket="images-io")
    c.put_object(Bucket="images-io", Key="ok.jpg", Body=b"\xff\xd8jpeg bytes")
    c.put_object(Bucket="images-io", Key="empty.jpg", Body=b"")
    c.put_object(Bucket="images-io", Key="big.jpg", Body=b"x" * 2000)
    return "s3://images-io"


def test_local_reads_and_failures(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"abc")
    (tmp_path / "e.jpg").write_bytes(b"")
    assert read_image(str(tmp_path / "a.jpg"), LIMITS) == b"abc"
    for path, reason in ((str(tmp_path / "none.jpg"), "missing"), (str(tmp_path / "e.jpg"), "empty"),
                         (str(tmp_path), "unreadable"), ("", "missing")):
        with pytest.raises(DecodeFailure) as e:
            read_image(path, LIMITS)
        assert e.value.reason == reason and reason in REASONS


def test_s3_reads_each_failure_with_its_reason(images, s3_env, s3_proxy, monkeypatch):
    assert read_image(f"{images}/ok.jpg", LIMITS) == b"\xff\xd8jpeg bytes"
    cases = {f"{images}/none.jpg": "missing", "s3://no-bucket-io/x.jpg": "missing",
             f"{images}/empty.jpg": "empty", f"{images}/big.jpg": "too-large"}
    for path, reason in cases.items():
        with pytest.raises(DecodeFailure) as e:
            read_image(path, LIMITS)
        assert e.value.reason == reason, (path, e.value)
    s3_env(endpoint=s3_proxy.url)
    monkeypatch.setenv("TAGREC_IO_ATTEMPTS", "2")
    s3_proxy.clear()
    s3_proxy.fail("/images-io/ok.jpg", times=-1)
    with pytest.raises(DecodeFailure) as e:
        read_image(f"{images}/ok.jpg", LIMITS)
    assert e.value.reason == "read-failed" and "gave up after 2 attempts" in str(e.value)
    s3_proxy.clear()
    s3_env(user="nobody")
    with pytest.raises(DecodeFailure) as e:
        read_image(f"{images}/ok.jpg", LIMITS)
    assert e.value.reason == "denied"
