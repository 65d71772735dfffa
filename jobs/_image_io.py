"""Reading one image's bytes from a path or URI for the extract pipeline's read/decode tasks.

Runs on the Ray workers (never the driver): each task reads its images itself through
`featurestore.uri` (pyarrow.fs: local, S3, GCS), with retries and backoff on transient errors.
An image that cannot be read is a bad image like an undecodable one: a `DecodeFailure` whose
reason is recorded in the store's errors and counted; the job goes on, and a re-run retries it.
"""

from __future__ import annotations

import logging

from featurestore import uri
from featurestore.uri import UriError
from models.vision.decode import DecodeFailure, DecodeLimits

log = logging.getLogger("jobs.extract")

# featurestore.uri's reasons -> the bad-image reasons of models.vision.decode
REASON = {"missing": "missing", "no-bucket": "missing", "too-large": "too-large", "denied": "denied",
          "unreachable": "read-failed", "failed": "read-failed", "invalid": "unreadable"}


def read_image(path: str, limits: DecodeLimits) -> bytes:
    """The image's bytes, or DecodeFailure(missing | empty | too-large | denied | read-failed | unreadable).

    The full reason (the URI and the error) is logged on the worker, where Ray forwards it to
    the driver's log; the store records the short reason.
    """
    if not path:
        raise DecodeFailure("missing", "no image path")
    try:
        data = uri.read_bytes(path, max_bytes=limits.max_bytes)
    except UriError as e:
        reason = REASON.get(e.reason, "unreadable")
        if reason in ("denied", "read-failed"):
            log.warning("extract: bad image (%s): %s", reason, e)
        raise DecodeFailure(reason, str(e)) from None
    if not data:
        raise DecodeFailure("empty", path)
    return data
