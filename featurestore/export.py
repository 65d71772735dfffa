"""Export a view to Parquet/Arrow (streaming) and build a faiss index over it.

Parquet columns: `id` int64 and `vector` list<float> (float32) for vector views, or one
list column per record field (e.g. `tags` list<int32>, `scores` list<float>) for record
views. Memory is bounded by one scan batch. faiss is imported only in `build_index`.

Outputs go to a local path or a URI (s3://bucket/key, gs://: `featurestore.uri`), and appear
only once written whole; the store itself stays a local path.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from featurestore import uri
from featurestore.errors import StoreError
from featurestore.reader import Reader

IVF_MIN_ROWS = 100_000          # "auto" picks IVF at or above this many rows
TRAIN_ROWS_PER_LIST = 64         # faiss wants >= 39 training points per centroid


def _list_column(flat_2d: np.ndarray) -> Any:
    """(n, k) array -> Arrow list<T> column without a per-row Python loop."""
    import pyarrow as pa

    n, k = flat_2d.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(flat_2d).reshape(-1)))


def arrow_batches(reader: Reader, batch_size: int = 65536) -> Iterator[Any]:
    """The view as a stream of pyarrow RecordBatches (id int64 + vector or record fields)."""
    import pyarrow as pa

    codec = reader.codec
    for ids, vals in reader.scan(batch_size=batch_size):
        cols = {"id": pa.array(ids, type=pa.int64())}
        if codec.kind == "vector":
            cols["vector"] = _list_column(vals.astype(np.float32, copy=False))
        else:
            for f in codec.record.names or ():
                col = vals[f]
                cols[f] = _list_column(col.astype(np.float32) if col.dtype == np.float16 else col)
        yield pa.RecordBatch.from_pydict(cols)


def export_parquet(reader: Reader, out: str | os.PathLike, batch_size: int = 65536,
                   compression: str = "zstd") -> int:
    """Write the view to one Parquet file (one row group per scan batch) at a path or URI;
    returns the row count. Readers never see a half-written file (`uri.atomic_output`)."""
    import pyarrow.parquet as pq

    rows = 0
    with uri.atomic_output(out) as f:
        writer = None
        try:
            for rb in arrow_batches(reader, batch_size):
                if writer is None:
                    writer = pq.ParquetWriter(f, rb.schema, compression=compression)
                writer.write_batch(rb)
                rows += rb.num_rows
            if writer is None:                   # empty view: still a valid file with the schema
                writer = pq.ParquetWriter(f, _empty_schema(reader), compression=compression)
        finally:
            if writer is not None:
                writer.close()
    return rows


def _empty_schema(reader: Reader) -> Any:
    import pyarrow as pa

    codec = reader.codec
    fields = [pa.field("id", pa.int64())]
    if codec.kind == "vector":
        fields.append(pa.field("vector", pa.list_(pa.float32())))
    else:
        for f in codec.record.names or ():
            base = codec.record[f].base
            fields.append(pa.field(f, pa.list_(pa.from_numpy_dtype(np.float32 if base == np.float16 else base))))
    return pa.schema(fields)


# ------------------------------------------------------------------------ faiss
def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise StoreError("building an index needs faiss: pip install 'tagrec[faiss]' (faiss-cpu)") from None
    return faiss


def build_index(reader: Reader, out_dir: str | os.PathLike, kind: str = "auto", metric: str = "ip",
                nlist: int = 0, batch_size: int = 65536, seed: int = 0) -> dict[str, Any]:
    """Build a faiss index over a vector view and save it with the id mapping.

    Writes `index.faiss` (ids inside: IndexIDMap2 for flat, IVF's own ids), `ids.npy`
    (int64, row order of insertion) and `index.json` (view, kind, metric, dim, count) into
    `out_dir`, a local folder or a URI prefix; index.json is written last.
    kind: flat | ivf | auto (IVF from IVF_MIN_ROWS rows); metric: ip (inner product) | l2.
    """
    faiss = _faiss()
    info = reader.info
    if info.kind != "vector":
        raise StoreError(f"view {info.name!r} holds records; a faiss index needs a vector view")
    if kind not in ("flat", "ivf", "auto") or metric not in ("ip", "l2"):
        raise StoreError(f"kind must be flat|ivf|auto and metric ip|l2, got {kind!r}, {metric!r}")
    n, d = reader.count(), info.dim
    if n == 0:
        raise StoreError(f"view {info.name!r} is empty; nothing to index")
    if kind == "auto":
        kind = "ivf" if n >= IVF_MIN_ROWS else "flat"
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlat(d, fmetric))
    else:
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // TRAIN_ROWS_PER_LIST or 1))
        quant = faiss.IndexFlat(d, fmetric)
        index = faiss.IndexIVFFlat(quant, d, nlist, fmetric)
        index.train(_training_sample(reader, nlist * TRAIN_ROWS_PER_LIST, n, seed))
        index.nprobe = min(nlist, 16)
    all_ids = []
    for ids, vals in reader.scan(batch_size=batch_size):
        index.add_with_ids(np.ascontiguousarray(vals, dtype=np.float32), ids)
        all_ids.append(ids)
    uri.write_bytes(uri.join(out_dir, "index.faiss"), faiss.serialize_index(index).tobytes())
    ids_npy = io.BytesIO()
    np.save(ids_npy, np.concatenate(all_ids))
    uri.write_bytes(uri.join(out_dir, "ids.npy"), ids_npy.getvalue())
    meta = {"view": info.name, "kind": kind, "metric": metric, "dim": d, "count": int(index.ntotal),
            "nlist": int(nlist) if kind == "ivf" else 0, "producer": info.producer}
    uri.write_bytes(uri.join(out_dir, "index.json"), json.dumps(meta, indent=2).encode())
    return meta


def _training_sample(reader: Reader, want: int, n: int, seed: int) -> np.ndarray:
    """A seeded, evenly spread sample of up to `want` vectors for IVF training (bounded memory)."""
    ids = reader.ids()
    if len(ids) > want:
        ids = np.sort(np.random.default_rng(seed).choice(ids, size=want, replace=False))
    vals, _ = reader.get_many(ids)
    return np.ascontiguousarray(vals, dtype=np.float32)


def load_index(out_dir: str | os.PathLike) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """(faiss index, ids (n,) int64, metadata) as saved by build_index (a folder or a URI prefix)."""
    faiss = _faiss()
    meta = json.loads(uri.read_bytes(uri.join(out_dir, "index.json")))
    index = faiss.deserialize_index(np.frombuffer(uri.read_bytes(uri.join(out_dir, "index.faiss")), np.uint8))
    ids = np.load(io.BytesIO(uri.read_bytes(uri.join(out_dir, "ids.npy"))))
    return index, ids, meta
