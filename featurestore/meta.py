"""View names, default views, the per-view metadata record and the store header.

The metadata sub-database (`__meta__`) holds JSON only:
  b"store"        -> {"magic": MAGIC, "format": FORMAT_VERSION, "created": ...}
  b"view:<name>"  -> ViewInfo as JSON (dim, dtype, producer, created, count, digest, ...)
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from featurestore.codec import ValueCodec
from featurestore.errors import StoreError
from models import views as _views

MAGIC = "tagrec-featurestore"
FORMAT_VERSION = 1
META_DB = b"__meta__"
STORE_KEY = b"store"

_NAME = re.compile(r"^[a-z][a-z0-9_]*/[A-Za-z0-9_.\-]+@[A-Za-z0-9_.+\-]+$")


def check_view_name(name: str) -> str:
    """Refuse names that are not `entity/name@version` (e.g. image/vgg16@1)."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise StoreError(f"bad view name {name!r}: use entity/name@version, e.g. image/vgg16@1")
    return name


def data_db(name: str) -> bytes:
    return b"data:" + name.encode()


def errors_db(name: str) -> bytes:
    return b"errors:" + name.encode()


def view_key(name: str) -> bytes:
    return b"view:" + name.encode()


def topk_view(model_id: str) -> str:
    """The view holding a recommender's top-k tags per post: post/topk@<model id>."""
    return check_view_name(f"{_views.TOPK_VIEW_PREFIX}{model_id}")


@dataclass(frozen=True)
class DefaultViews:
    """Default view names every job uses unless told otherwise (their one home: models/views.py)."""

    IC: str = _views.IC_VIEW      # VGG16 GAP, 512-d, by item_id
    OD: str = _views.OD_VIEW      # YOLO per-class max prob, 80-d, by item_id
    SN: str = _views.SN_VIEW      # node2vec, by user_id

    def topk_view(self, model_id: str) -> str:
        return topk_view(model_id)

    def __getitem__(self, key: str) -> str:
        return getattr(self, key)

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def items(self) -> Any:
        return self.as_dict().items()

    def keys(self) -> Any:
        return self.as_dict().keys()

    def values(self) -> Any:
        return self.as_dict().values()


DEFAULT_VIEWS = DefaultViews()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ViewInfo:
    """What a view holds and what produced it (the JSON record in `__meta__`)."""

    name: str
    kind: str                                  # "vector" | "record"
    dim: int                                   # vector length; record views: 0
    dtype: str                                 # "float16" | "float32" | "record"
    fields: list[list[Any]] = field(default_factory=list)   # record views: [[name, dtype, k], ...] in layout order
    producer: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    count: int = 0                             # rows, kept in the same transaction as the data
    digest: str = "0"                          # hex sum of row hashes (codec.row_hashes), for verify
    errors: int = 0                            # ids recorded as failed

    def codec(self) -> ValueCodec:
        if self.kind == "vector":
            return ValueCodec.vector(self.dim, self.dtype)
        if self.kind == "record":
            return ValueCodec.records({f[0]: (f[1], f[2]) for f in self.fields})
        raise StoreError(f"view {self.name!r}: unknown kind {self.kind!r} in metadata")

    @property
    def value_bytes(self) -> int:
        return self.codec().nbytes

    def schema(self) -> tuple:
        return (self.kind, self.dim, self.dtype, tuple(tuple(f) for f in self.fields))

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes | memoryview, name: str = "?") -> ViewInfo:
        try:
            d = json.loads(bytes(raw))
            names = {f.name for f in dataclasses.fields(ViewInfo)}
            info = ViewInfo(**{k: v for k, v in d.items() if k in names})
            info.codec()  # validates kind/dim/dtype/fields
            return info
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"corrupt metadata for view {name!r}: {e}; run `featurestore verify`") from None


def store_header() -> bytes:
    return json.dumps({"magic": MAGIC, "format": FORMAT_VERSION, "created": now_iso()}).encode()


def check_header(raw: bytes | memoryview | None, path: str) -> dict[str, Any]:
    """Refuse a store this code did not make, or one of a newer format."""
    if raw is None:
        raise StoreError(f"{path} is an LMDB environment but not a feature store (no store header); "
                         "point at a folder made by featurestore")
    try:
        hdr = json.loads(bytes(raw))
    except Exception:
        raise StoreError(f"{path}: corrupt store header; not a feature store") from None
    if not isinstance(hdr, dict) or hdr.get("magic") != MAGIC:
        raise StoreError(f"{path} is not a feature store (bad magic); point at a folder made by featurestore")
    fmt = hdr.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION or fmt < 1:
        raise StoreError(f"{path}: store format {fmt!r} is not supported by this code (knows {FORMAT_VERSION}); "
                         "upgrade the package")
    return hdr
