"""Paths and URIs, one place: a local path, `file://`, `s3://bucket/key` or `gs://bucket/key`
becomes a `pyarrow.fs` filesystem plus a path on it (the filesystem layer Ray Data uses).

    fs, path = resolve("s3://archive/posts.parquet")
    data = read_bytes("s3://archive/images/001/7.jpg", max_bytes=64 << 20)
    with atomic_output("s3://out/topk/part-0.parquet") as f:   # visible only once complete
        pq.write_table(table, f)

S3: credentials only from the standard places, which the AWS SDK reads itself (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/{credentials,config}, the EC2
instance profile); they are never passed, logged or written by this project, and a URI carrying
them (`s3://key:secret@bucket`) is refused. The endpoint comes from AWS_ENDPOINT_URL_S3, else
AWS_ENDPOINT_URL (what boto3 and the AWS CLI honour; pyarrow does not read them, so they are passed
explicitly), the region from AWS_REGION / AWS_DEFAULT_REGION, else the bucket's own.

GCS: with STORAGE_EMULATOR_HOST set (`http://127.0.0.1:9023`, or `host:port` meaning http; the
variable Google's client libraries honour), that endpoint, anonymously, as for an emulator;
otherwise Google Cloud Storage with the default Google credentials (GOOGLE_APPLICATION_CREDENTIALS,
gcloud's application-default login, the metadata server), read by the Google client itself.

Every failure is a `UriError` with one line naming the URI, what went wrong and the fix, and a
`reason`: missing (no such key or file), no-bucket, denied, unreachable (endpoint down: retried
first), failed (a transient error that outlasted the retries), invalid (a bad URI). Transient
errors (connection refused or reset, timeouts, 5xx, throttling) are retried with exponential
backoff and jitter: the SDK's own retries are short (S3: three attempts a few tens of milliseconds
apart; GCS: TAGREC_GCS_RETRY_S seconds of the Google client's retries, without which it would keep
retrying an unreachable endpoint for many minutes) and absorb a blip; these are seconds apart and
ride out a throttling burst or a restarting endpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import posixpath
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger("featurestore.uri")

T = TypeVar("T")

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# A string column value that is a URI (any scheme) rather than a path: for pyarrow compute.
URI_REGEX = r"^[A-Za-z][A-Za-z0-9+.-]*://"


class UriError(Exception):
    """A path or URI that cannot be used; the message is one line naming it and the fix."""

    def __init__(self, message: str, reason: str, uri: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.uri = uri


# --------------------------------------------------------------------------- retries


def retry_policy() -> tuple[int, float]:
    """(attempts, first backoff in seconds) from TAGREC_IO_ATTEMPTS / TAGREC_IO_BACKOFF_S."""
    try:
        attempts = max(1, int(os.environ.get("TAGREC_IO_ATTEMPTS", "4")))
        backoff = max(0.0, float(os.environ.get("TAGREC_IO_BACKOFF_S", "0.5")))
    except ValueError:
        raise UriError("TAGREC_IO_ATTEMPTS must be an integer and TAGREC_IO_BACKOFF_S a number of seconds",
                       "invalid") from None
    return attempts, backoff


def gcs_retry_s() -> int:
    """Seconds the Google client retries one GCS request (TAGREC_GCS_RETRY_S, whole seconds >= 1)."""
    try:
        return max(1, int(os.environ.get("TAGREC_GCS_RETRY_S", "2")))
    except ValueError:
        raise UriError("TAGREC_GCS_RETRY_S must be a whole number of seconds", "invalid") from None


MAX_BACKOFF_S = 20.0
RETRIED = ("unreachable", "failed")    # reasons worth another attempt


def with_retries(what: str, uri: str, fn: Callable[[], T]) -> T:
    """fn(), retried on transient errors with exponential backoff and full jitter.

    Errors become `UriError`s (`classify`); only the reasons in RETRIED are retried.
    """
    attempts, backoff = retry_policy()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (OSError, pa.ArrowException, UriError) as e:
            err = e if isinstance(e, UriError) else classify(e, uri, what)
            if err.reason not in RETRIED or attempt == attempts:
                if err.reason in RETRIED and attempts > 1:
                    err = UriError(f"{err} (gave up after {attempts} attempts)", err.reason, uri)
                raise err from None
            delay = random.uniform(0, min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1)))
            log.warning("%s %s: %s; retry %d of %d in %.2fs", what, uri, _first_line(e), attempt,
                        attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


_GOOGLE_STATUS = re.compile(r"google::cloud::Status\((\w+): (.*?)(?: error_info=\{|\)\. Detail:|\)$)")


def _first_line(e: BaseException) -> str:
    """The error's first line; a Google client status shortened to its code and last message."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    m = _GOOGLE_STATUS.search(line)
    return f"{m.group(1)}: {m.group(2)}" if m else line


_DENIED = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
           "HTTP response code: 403", "PERMISSION_DENIED", "UNAUTHENTICATED")
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "Bucket does not exist", "bucket does not exist")
# Google's UNAVAILABLE also ends a run of 5xx/429 answers: only the curl errors say the endpoint is down.
_UNREACHABLE = ("NETWORK_CONNECTION", "Could not connect", "Couldn't connect", "Connection refused",
                "Could not resolve host", "curlCode: 7", "curlCode: 6", "curlCode: 28", "CURL error [7]",
                "CURL error [6]", "CURL error [28]")
_TRANSIENT = ("SLOW_DOWN", "SlowDown", "SERVICE_UNAVAILABLE", "ServiceUnavailable", "INTERNAL_FAILURE",
              "InternalError", "THROTTLING", "Throttling", "REQUEST_TIMEOUT", "RequestTimeout", "curlCode",
              "Connection reset", "timed out", "Timeout", "DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
              "CURL error")
_TRANSIENT_STATUS = re.compile(r"HTTP (?:status|response code):? (?:5\d\d|429)")


def classify(e: BaseException, uri: str, what: str = "read") -> UriError:
    """The UriError (one line, with a reason and the fix) for an error from pyarrow.fs or the OS."""
    msg = _first_line(e)
    if isinstance(e, FileNotFoundError) or "NO_SUCH_KEY" in msg or "NoSuchKey" in msg:
        if any(s in msg for s in _NO_BUCKET):
            return _no_bucket(uri)
        return UriError(f"{uri} does not exist", "missing", uri)
    if any(s in msg for s in _NO_BUCKET):
        return _no_bucket(uri)
    if isinstance(e, PermissionError) or any(s in msg for s in _DENIED):
        scheme = _scheme(uri)
        who = _CREDENTIALS.get("gs" if scheme == "gcs" else scheme)
        fix = (f"check that the credentials ({who}) may {'write' if what == 'write' else 'read'} it and that "
               "its bucket exists" if who else "check its permissions")
        return UriError(f"access denied to {uri} ({msg}); {fix}", "denied", uri)
    if any(s in msg for s in _UNREACHABLE):
        where = endpoint_description(uri)
        variables = ("STORAGE_EMULATOR_HOST, unset for Google Cloud Storage itself"
                     if _scheme(uri) in ("gs", "gcs") else "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")
        return UriError(f"cannot reach {where} to {what} {uri} ({msg}); check the endpoint ({variables}) and "
                        "the network", "unreachable", uri)
    if (any(s in msg for s in _TRANSIENT) or _TRANSIENT_STATUS.search(msg)
            or (isinstance(e, OSError) and e.errno in (5, 110, 104))):
        return UriError(f"{what} {uri} failed: {msg}", "failed", uri)
    if isinstance(e, IsADirectoryError):
        return UriError(f"{uri} is a folder, not a file", "invalid", uri)
    return UriError(f"{what} {uri} failed: {msg}", "invalid", uri)


_CREDENTIALS = {"s3": "AWS_ACCESS_KEY_ID / AWS_PROFILE / the instance profile",
                "gs": "GOOGLE_APPLICATION_CREDENTIALS / the metadata server's service account"}


def _no_bucket(uri: str) -> UriError:
    bucket = _split_bucket(uri)[0]
    return UriError(f"bucket {bucket!r} of {uri} does not exist; create it or fix the URI", "no-bucket", uri)


# --------------------------------------------------------------------------- resolving


def _scheme(uri: str) -> str:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs of an object store (s3://, gs://), False for local paths and file://."""
    return _scheme(os.fspath(uri)) in REMOTE_SCHEMES


def _split_bucket(uri: str) -> tuple[str, str]:
    """("bucket", "key/inside") of s3://bucket/key/inside."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def normalize(uri: str | os.PathLike) -> str:
    """A local path made absolute (file:// dropped), or a remote URI as given (checked)."""
    s = os.fspath(uri)
    scheme = _scheme(s)
    if scheme == "file":
        return os.path.abspath(s[len("file://"):])
    if not scheme:
        return os.path.abspath(s)
    if scheme not in REMOTE_SCHEMES:
        raise UriError(f"{s}: unsupported scheme {scheme!r}; use a local path, file://, s3:// or gs://", "invalid", s)
    bucket, key = _split_bucket(s)
    if "@" in bucket:
        raise UriError(f"{scheme}://…@{bucket.rsplit('@', 1)[1]}: credentials in a URI are refused; use the "
                       "standard AWS/GCS credentials (environment, profile, instance role)", "invalid")
    if not bucket:
        raise UriError(f"{s}: no bucket name; write {scheme}://BUCKET/KEY", "invalid", s)
    return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"


def s3_endpoint() -> str:
    """The S3 endpoint URL from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL ("" for AWS itself)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return ""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def gcs_endpoint() -> str:
    """The GCS endpoint from STORAGE_EMULATOR_HOST ("" for Google Cloud Storage itself)."""
    return os.environ.get("STORAGE_EMULATOR_HOST", "").strip()


def _endpoint_parts(endpoint: str, default_scheme: str) -> tuple[str, str]:
    """("http", "host:port") of an endpoint URL; `default_scheme` when it names no scheme."""
    m = re.match(r"^(https?)://([^/]+)", endpoint)
    return (m.group(1), m.group(2)) if m else (default_scheme, endpoint.split("/", 1)[0])


def endpoint_description(uri: str) -> str:
    scheme = _scheme(uri)
    if scheme == "s3":
        return f"the S3 endpoint {s3_endpoint() or '(AWS default)'}"
    if scheme in ("gs", "gcs"):
        endpoint = gcs_endpoint()
        return f"the GCS endpoint {endpoint}" if endpoint else "Google Cloud Storage"
    return "the file system"


_CACHE: dict[tuple, pafs.FileSystem] = {}
_LOCK = threading.Lock()


def _s3(bucket: str) -> pafs.FileSystem:
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    # Kept in this process's memory only: a change of credentials or profile gets a fresh client.
    who = (os.environ.get("AWS_PROFILE", ""), os.environ.get("AWS_ACCESS_KEY_ID", ""))
    key = ("s3", endpoint, region, "" if (region or endpoint) else bucket, who)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    kw: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3)}
    if endpoint:
        kw["scheme"], kw["endpoint_override"] = _endpoint_parts(endpoint, "https")
        region = region or "us-east-1"          # an S3-compatible server: any region signs
    if not region:
        try:
            region = pafs.resolve_s3_region(bucket)
        except (OSError, pa.ArrowException):
            region = ""                          # the SDK's own default; errors surface on first use
    if region:
        kw["region"] = region
    fs = pafs.S3FileSystem(**kw)
    with _LOCK:
        return _CACHE.setdefault(key, fs)


def clear_cache() -> None:
    """Forget the cached filesystems, S3 and GCS (after changing endpoint, region or credential variables)."""
    with _LOCK:
        _CACHE.clear()


def _gcs() -> pafs.FileSystem:
    endpoint = gcs_endpoint()
    retry_s = gcs_retry_s()
    key = ("gs", endpoint, os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""), retry_s)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    kw: dict[str, Any] = {"retry_time_limit": datetime.timedelta(seconds=retry_s)}
    if endpoint:                                 # an emulator: plain http unless the URL says https
        kw["anonymous"] = True
        kw["scheme"], kw["endpoint_override"] = _endpoint_parts(endpoint, "http")
    fs = pafs.GcsFileSystem(**kw)
    with _LOCK:
        return _CACHE.setdefault(key, fs)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path or URI; the filesystem is cached per process."""
    s = normalize(uri)
    scheme = _scheme(s)
    if not scheme:
        return pafs.LocalFileSystem(), s
    bucket, key = _split_bucket(s)
    fs = _s3(bucket) if scheme == "s3" else _gcs()
    return fs, f"{bucket}/{key}" if key else bucket


# --------------------------------------------------------------------------- names


def join(base: str | os.PathLike, *parts: str) -> str:
    """base/part/...; a part that is itself absolute (a path or URI) replaces what came before."""
    out = os.fspath(base)
    for p in parts:
        if _scheme(p) or p.startswith("/"):
            out = p
        elif _scheme(out):
            out = out.rstrip("/") + "/" + p
        else:
            out = os.path.join(out, p)
    return out


def parent(uri: str | os.PathLike) -> str:
    """The folder holding a file: `s3://b/a/x.parquet` -> `s3://b/a`; a local path made absolute."""
    s = normalize(uri)
    if not _scheme(s):
        return os.path.dirname(s)
    scheme, rest = s.split("://", 1)
    head = posixpath.dirname(rest.rstrip("/"))
    return f"{scheme}://{head or rest.split('/', 1)[0]}"


def basename(uri: str | os.PathLike) -> str:
    return posixpath.basename(os.fspath(uri).rstrip("/"))


# --------------------------------------------------------------------------- reading


def file_size(uri: str | os.PathLike) -> int | None:
    """Size in bytes, or None when there is no such file (a missing bucket raises)."""
    s = normalize(uri)
    fs, path = resolve(s)
    info = with_retries("stat", s, lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.File:
        raise UriError(f"{s} is a folder, not a file", "invalid", s)
    return int(info.size or 0)


def exists(uri: str | os.PathLike) -> bool:
    """True if a file or folder is there (an S3 "folder" is a prefix with objects under it)."""
    s = normalize(uri)
    fs, path = resolve(s)
    return with_retries("stat", s, lambda: fs.get_file_info(path)).type != pafs.FileType.NotFound


def is_file(uri: str | os.PathLike) -> bool:
    s = normalize(uri)
    fs, path = resolve(s)
    return with_retries("stat", s, lambda: fs.get_file_info(path)).type == pafs.FileType.File


def read_bytes(uri: str | os.PathLike, max_bytes: int = 0) -> bytes:
    """The whole file; UriError("too-large") past `max_bytes` (checked on the size before reading).

    A missing key tells a missing bucket apart (one more request), so the message says which.
    """
    s = normalize(uri)
    fs, path = resolve(s)

    def read() -> bytes:
        with fs.open_input_file(path) as f:
            size = f.size()
            if max_bytes and size > max_bytes:
                raise UriError(f"{s}: {size} bytes > {max_bytes}", "too-large", s)
            return f.read()

    try:
        return with_retries("read", s, read)
    except UriError as e:
        if e.reason == "missing" and is_remote(s):
            _check_bucket(s)
        raise


def _check_bucket(uri: str) -> None:
    """Raise the no-bucket error if the bucket of `uri` is not there (else return)."""
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except (OSError, pa.ArrowException):
        return                                   # cannot tell: keep the missing-key error
    if info.type == pafs.FileType.NotFound:
        raise _no_bucket(uri)


def open_input_file(uri: str | os.PathLike) -> Any:
    """A random-access file (pyarrow NativeFile) for Parquet readers; retried while opening."""
    s = normalize(uri)
    fs, path = resolve(s)
    try:
        return with_retries("open", s, lambda: fs.open_input_file(path))
    except UriError as e:
        if e.reason == "missing" and is_remote(s):
            _check_bucket(s)
        raise


def list_files(folder: str | os.PathLike, pattern: str = "*") -> list[str]:
    """URIs (or paths) of the files directly in `folder` whose names match the glob `pattern`."""
    import fnmatch

    s = normalize(folder)
    fs, path = resolve(s)
    sel = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    infos = with_retries("list", s, lambda: fs.get_file_info(sel))
    return sorted(join(s, i.base_name) for i in infos
                  if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.base_name, pattern))


# --------------------------------------------------------------------------- writing


def makedirs(folder: str | os.PathLike) -> None:
    """Create a local folder (and parents); object stores need none (keys are flat)."""
    s = normalize(folder)
    if not is_remote(s):
        try:
            os.makedirs(s, exist_ok=True)
        except OSError as e:
            raise classify(e, s, "write") from None


def delete(uri: str | os.PathLike, missing_ok: bool = True) -> None:
    s = normalize(uri)
    fs, path = resolve(s)
    try:
        with_retries("delete", s, lambda: fs.delete_file(path))
    except UriError as e:
        if not (missing_ok and e.reason == "missing"):
            raise


@contextlib.contextmanager
def atomic_output(uri: str | os.PathLike) -> Iterator[Any]:
    """An output stream whose file appears at `uri` only once written whole.

    Locally: written to a temporary sibling, then renamed. On an object store the object becomes
    visible only when its upload completes at close, so the stream writes the final key itself
    (no copy, no size limit); a killed process never completes it, and on an error here the
    stream is closed (which completes the upload, pyarrow having no abort) and the object is
    deleted at once.
    """
    s = normalize(uri)
    makedirs(parent(s))
    fs, path = resolve(s)
    target = path if is_remote(s) else f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        f = fs.open_output_stream(target)
    except (OSError, pa.ArrowException) as e:
        err = classify(e, s, "write")
        if err.reason == "missing" and is_remote(s):
            _check_bucket(s)                     # GCS answers a write into a missing bucket with 404
        raise err from None
    ok = False
    try:
        with f:
            yield f
        ok = True
    except (OSError, pa.ArrowException) as e:
        raise classify(e, s, "write") from None
    finally:
        if not ok:
            try:
                fs.delete_file(target)
            except (OSError, pa.ArrowException) as e:
                if is_remote(s):
                    log.error("could not remove the incomplete %s (%s); delete it by hand", s, _first_line(e))
    if target != path:
        with_retries("write", s, lambda: fs.move(target, path))


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `uri` atomically (see `atomic_output`), retried as a whole on transient errors."""
    s = normalize(uri)

    def write() -> None:
        with atomic_output(s) as f:
            f.write(data)

    with_retries("write", s, write)
