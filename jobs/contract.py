"""The data contract: what users bring, validated the same way by every job.

posts.parquet
    post_id int64 (unique, non-null), user_id int64 (non-null), image string (path or URI
    relative to the parquet file's folder or URI, or absolute: a path or a URI such as
    s3://bucket/key; may be null), tags list<string>
    (may be empty), optional item_id int64 (the item a post is about; by default one
    item per distinct image).
edges.parquet
    src int64, dst int64 (non-null), optional weight float (> 0, finite).

Both files may be local paths or URIs (s3://, gs://, file://: `featurestore.uri`). Every
violation raises `InputError` with one line naming the file, the column and a few offending rows. Validation reads columns one at a time, vectorised (pyarrow compute),
so it holds at 10^7 posts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore import uri
from featurestore.uri import UriError
from jobs.errors import InputError

POSTS_REQUIRED = {"post_id": "int64", "user_id": "int64", "image": "string", "tags": "list<string>"}
POSTS_OPTIONAL = {"item_id": "int64"}
EDGES_REQUIRED = {"src": "int64", "dst": "int64"}
EDGES_OPTIONAL = {"weight": "float"}

_SHOW = 5  # offending rows named in a message
# Streamed reads: no pre-buffering of every row group's column chunks and no decode threads.
# Both make Arrow's allocator hold more memory at once (and keep it), in about the same time
# (benchmarks/results/design-measurements.md).
_STREAM = {"use_threads": False}


@dataclass
class EdgeReport:
    """What `read_edges` found beyond hard errors (allowed, but counted)."""

    edges: int
    self_loops: int
    duplicates: int
    unknown_users: int  # edges with an endpoint that has no posts (when posts were given)
    unknown_user_examples: list[int]
    weighted: bool = False  # the file has a weight column


# --------------------------------------------------------------------------- types


def _is_int64(t: pa.DataType) -> bool:
    return pa.types.is_int64(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type))
    )


def _is_list_of_string(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


_CHECKS = {"int64": _is_int64, "string": _is_string, "list<string>": _is_list_of_string, "float": _is_float}


def _check_schema(path: str, schema: pa.Schema, required: dict[str, str], optional: dict[str, str]) -> None:
    names = set(schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; the contract needs {list(required)}"
            f" (optional: {list(optional)}), found {schema.names}"
        )
    for col, want in {**required, **{k: v for k, v in optional.items() if k in names}}.items():
        got = schema.field(col).type
        if not _CHECKS[want](got):
            hint = " (cast it with pyarrow: table.cast(...))" if want == "int64" and pa.types.is_integer(got) else ""
            raise InputError(f"{path}: column '{col}' must be {want}, found {got}{hint}")


def _name(path: str | os.PathLike) -> str:
    """How messages name a contract file: as the user wrote it (a path or a URI)."""
    return os.fspath(path)


def _open(path: str | os.PathLike, what: str, streaming: bool = False) -> pq.ParquetFile:
    """Open a contract file (path or URI); `streaming`: for reading it a batch at a time (see _STREAM)."""
    p = _name(path)
    try:
        f = uri.open_input_file(p)
    except UriError as e:
        if e.reason == "missing":
            raise InputError(f"{what} file {p} does not exist") from None
        raise InputError(f"{what} file: {e}") from None
    try:
        return pq.ParquetFile(f, pre_buffer=not streaming)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def _examples(values: np.ndarray) -> str:
    vals = values[:_SHOW].tolist()
    more = f" and {len(values) - _SHOW} more" if len(values) > _SHOW else ""
    return f"{vals}{more}"


def _check_not_null(path: str, table: pa.Table, col: str) -> None:
    arr = table.column(col)
    if arr.null_count:
        rows = np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False))
        raise InputError(f"{path}: column '{col}' has {arr.null_count} null value(s), at rows {_examples(rows)}")


def _check_unique(path: str, ids: np.ndarray, col: str) -> None:
    """Raise if `ids` holds a value twice. Sorts `ids` in place (no copy at 10^7 posts)."""
    if len(ids) < 2:
        return
    ids.sort()
    dup = ids[1:][ids[1:] == ids[:-1]]
    if len(dup):
        dup = np.unique(dup)
        raise InputError(f"{path}: column '{col}' must be unique; {len(dup)} duplicated value(s): {_examples(dup)}")


# --------------------------------------------------------------------------- items


_ITEM_MASK = np.uint64((1 << 63) - 1)


def item_ids_for_images(images: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Stable item ids: blake2b-64 of each image string, masked to 63 bits (int64, >= 0).

    The same photo posted twice is one item, and an id does not change when the
    manifest grows (unlike a row number), so backfills stay resumable.
    """
    if isinstance(images, (pa.Array, pa.ChunkedArray)):
        images = images.to_pylist()
    out = np.empty(len(images), dtype=np.uint64)
    for i, s in enumerate(images):
        out[i] = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "big")
    return (out & _ITEM_MASK).astype(np.int64)


_NEEDS_ITEM_ID = "posts without an 'image' need an explicit 'item_id' column (one item per distinct image otherwise)"


def _with_item_ids(table: pa.Table) -> pa.Table:
    if "item_id" in table.column_names:
        return table
    images = table.column("image")
    if images.null_count:
        raise InputError(_NEEDS_ITEM_ID)
    # Hash each distinct image once.
    uniq = pc.unique(images)
    ids = item_ids_for_images(uniq)
    idx = pc.index_in(images, value_set=uniq).to_numpy(zero_copy_only=False)
    return table.append_column("item_id", pa.array(ids[idx], type=pa.int64()))


def _resolve_images(table: pa.Table, manifest: str) -> pa.Table:
    """Make relative image paths absolute against the manifest's folder (a local folder or a URI
    prefix); absolute paths and URIs are kept as they are."""
    images = table.column("image")
    if pa.types.is_dictionary(images.type):
        images = images.cast(pa.string())
    base = uri.parent(manifest)
    prefix = base.rstrip("/") + "/" if uri.is_remote(base) else os.path.realpath(base) + os.sep
    is_abs = pc.or_(pc.starts_with(images, os.sep), pc.match_substring_regex(images, uri.URI_REGEX))
    resolved = pc.if_else(is_abs, images, pc.binary_join_element_wise(prefix, images, ""))
    return table.set_column(table.schema.get_field_index("image"), "image", resolved)


# --------------------------------------------------------------------------- posts


class _Rows:
    """Offending rows of one check over record batches: how many, and the first few (global numbers)."""

    __slots__ = ("count", "first")

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] = []

    def add(self, rows: np.ndarray, offset: int) -> None:
        room = _SHOW - len(self.first)
        if room > 0:
            self.first += (rows[:room] + offset).tolist()
        self.count += len(rows)

    def text(self) -> str:
        more = f" and {self.count - _SHOW} more" if self.count > _SHOW else ""
        return f"{self.first}{more}"


class _PostsCheck:
    """The contract's checks on posts, accumulated record batch by record batch.

    `finish()` raises the violation `validate_posts` would raise on the whole table (same check
    order, same counts, same global row numbers): the whole-table validator and the streamed
    one (`check_posts`) are this one code path. Holds per check a count and a few row numbers,
    plus post_id as one int64 array for the uniqueness check (8 bytes per post, sorted in place).
    """

    def __init__(self, path: str, names: Sequence[str], num_rows: int, image_source: bool = False) -> None:
        self.path = path
        self.ids = ("post_id", "user_id") + (("item_id",) if "item_id" in names else ())
        self.nulls = {c: _Rows() for c in self.ids}
        self.negative = {c: _Rows() for c in self.ids}
        self.null_lists, self.bad_tags = _Rows(), _Rows()
        # read_posts derives item ids from images, which needs every image (checked after the rest)
        self.image_nulls = image_source and "item_id" not in names
        self.null_images = 0
        self.post_ids = np.empty(num_rows, dtype=np.int64)
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        """Check one batch: the next `batch.num_rows` rows of the file."""
        off, n = self.rows, batch.num_rows
        for col in self.ids:
            arr = batch.column(col)
            if arr.null_count:
                self.nulls[col].add(np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False)), off)
            neg = pc.fill_null(pc.less(arr, 0), False).to_numpy(zero_copy_only=False)
            self.negative[col].add(np.flatnonzero(neg), off)
        # nulls only matter after their own (earlier) error has been raised
        self.post_ids[off:off + n] = pc.fill_null(batch.column("post_id"), 0).to_numpy(zero_copy_only=False)
        tags = batch.column("tags")
        if tags.null_count:
            self.null_lists.add(np.flatnonzero(pc.is_null(tags).to_numpy(zero_copy_only=False)), off)
        flat = pc.list_flatten(tags)
        bad = pc.or_kleene(pc.is_null(flat), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(flat)), 0))
        if pc.any(bad).as_py():
            parents = pc.list_parent_indices(tags).to_numpy()
            self.bad_tags.add(np.unique(parents[bad.to_numpy(zero_copy_only=False)]), off)
        if self.image_nulls:
            self.null_images += batch.column("image").null_count
        self.rows += n

    def finish(self) -> None:
        """Raise InputError for the first violation, in validate_posts' order."""
        p = self.path
        for col in self.ids:
            if self.nulls[col].count:
                nulls = self.nulls[col]
                raise InputError(f"{p}: column '{col}' has {nulls.count} null value(s), at rows {nulls.text()}")
            if self.negative[col].count:
                raise InputError(f"{p}: column '{col}' must be >= 0; negative at rows {self.negative[col].text()}")
        _check_unique(p, self.post_ids[:self.rows], "post_id")
        if self.null_lists.count:
            # A null list is read as "no tags" would hide a broken export: say so.
            raise InputError(f"{p}: column 'tags' has null lists at rows {self.null_lists.text()}; "
                             "use [] for untagged posts")
        if self.bad_tags.count:
            raise InputError(f"{p}: column 'tags' holds null or empty tag strings at rows {self.bad_tags.text()}")
        if self.null_images:
            raise InputError(_NEEDS_ITEM_ID)


def validate_posts(path: str | os.PathLike, table: pa.Table) -> None:
    """Raise InputError for the first contract violation found in a posts table."""
    p = _name(path)
    _check_schema(p, table.schema, POSTS_REQUIRED, POSTS_OPTIONAL)
    check = _PostsCheck(p, table.column_names, table.num_rows)
    for batch in table.to_batches():
        check.add(batch)
    check.finish()


def check_posts(path: str | os.PathLike, batch_rows: int = 65536) -> int:
    """Validate posts.parquet as `read_posts` does, streamed: returns the number of posts.

    Raises the same InputError `read_posts` raises on the same file, but reads only the
    checked columns one record batch at a time; what it holds grows by 8 bytes per post
    (post_id, for the uniqueness check), not with the manifest's strings or tag lists.
    """
    p = _name(path)
    f = _open(p, "posts", streaming=True)
    schema = f.schema_arrow
    _check_schema(p, schema, POSTS_REQUIRED, POSTS_OPTIONAL)
    has_item = "item_id" in schema.names
    cols = ["post_id", "user_id", "tags"] + (["item_id"] if has_item else ["image"])
    check = _PostsCheck(p, schema.names, f.metadata.num_rows, image_source=True)
    try:
        for batch in f.iter_batches(batch_size=batch_rows, columns=cols, **_STREAM):
            check.add(batch)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    check.finish()
    return check.rows


def count_posts(path: str | os.PathLike) -> int:
    """Rows of posts.parquet (a path or URI) from its footer, without reading them."""
    return _open(path, "posts", streaming=True).metadata.num_rows


def read_posts(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read and validate posts.parquet; adds `item_id` when absent, makes `image` absolute."""
    f = _open(path, "posts")
    try:
        table = f.read()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    validate_posts(path, table)
    table = _with_item_ids(table)
    table = _resolve_images(table, _name(path))
    if columns is not None:
        table = table.select(list(columns))
    return table


def iter_posts(
    path: str | os.PathLike, columns: Sequence[str] = ("post_id", "user_id", "item_id"), batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Stream validated posts in record batches (row groups), for archive-scale jobs.

    Types are checked on the schema up front; per-batch checks cover nulls and negative
    ids. Uniqueness of post_id across batches is checked by `read_posts`/`jobs.prepare`.
    """
    f = _open(path, "posts", streaming=True)
    _check_schema(_name(path), f.schema_arrow, POSTS_REQUIRED, POSTS_OPTIONAL)
    has_item = "item_id" in f.schema_arrow.names
    want = list(columns)
    read_cols = sorted(set(want) - {"item_id"} | ({"item_id"} if has_item else {"image"} if "item_id" in want else set()))
    for batch in f.iter_batches(batch_size=batch_rows, columns=read_cols, **_STREAM):
        t = pa.Table.from_batches([batch])
        for col in ("post_id", "user_id"):
            if col in t.column_names:
                _check_not_null(_name(path), t, col)
        if "item_id" in want:
            t = _with_item_ids(t)
        if "image" in want:
            t = _resolve_images(t, _name(path))
        yield from t.select(want).to_batches()


# --------------------------------------------------------------------------- edges


def read_edges(path: str | os.PathLike, user_ids: np.ndarray | None = None) -> tuple[pa.Table, EdgeReport]:
    """Read and validate edges.parquet; returns (src, dst, weight float32) and a report.

    `user_ids`, when given, are the users that have posts: edges naming others are
    allowed (they shape the graph) but counted in the report.
    """
    f = _open(path, "edges")
    p = _name(path)
    _check_schema(p, f.schema_arrow, EDGES_REQUIRED, EDGES_OPTIONAL)
    table = f.read()
    for col in ("src", "dst"):
        _check_not_null(p, table, col)
        neg = np.flatnonzero(table.column(col).to_numpy() < 0)
        if len(neg):
            raise InputError(f"{p}: column '{col}' must be >= 0; negative at rows {_examples(neg)}")
    if "weight" in table.column_names:
        w = table.column("weight").cast(pa.float64())
        if w.null_count:
            rows = np.flatnonzero(pc.is_null(w).to_numpy(zero_copy_only=False))
            raise InputError(f"{p}: column 'weight' has nulls at rows {_examples(rows)}")
        with np.errstate(over="ignore"):
            wn = w.to_numpy().astype(np.float32)  # checked after the cast: 1e39 overflows float32
        bad = np.flatnonzero(~np.isfinite(wn) | (wn <= 0))
        if len(bad):
            raise InputError(f"{p}: column 'weight' must be finite and > 0; bad at rows {_examples(bad)}")
        weight = pa.array(wn)
    else:
        weight = pa.array(np.ones(table.num_rows, dtype=np.float32))
    src = table.column("src").to_numpy()
    dst = table.column("dst").to_numpy()
    out = pa.table({"src": src, "dst": dst, "weight": weight})
    # Exact repeats of a (src, dst) row; the graph builder merges them.
    dups = len(src) - len(np.unique(np.stack([src, dst], axis=1), axis=0)) if len(src) else 0
    unknown, examples = 0, []
    if user_ids is not None and len(src):
        known = np.unique(user_ids)
        src_unknown, dst_unknown = ~np.isin(src, known), ~np.isin(dst, known)
        unknown = int((src_unknown | dst_unknown).sum())
        ends = np.concatenate([src[src_unknown], dst[dst_unknown]])
        examples = np.unique(ends)[:_SHOW].tolist()
    report = EdgeReport(int(len(src)), int((src == dst).sum()), int(dups), unknown, examples,
                        weighted="weight" in table.column_names)
    return out, report
