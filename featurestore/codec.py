"""Key and value codecs: ids <-> 8-byte big-endian keys, arrays <-> raw little-endian bytes.

Everything here is pure numpy (no LMDB) so it can be property-tested alone.
Keys are unsigned big-endian so that byte order is numeric order; ids are non-negative
int64 (0 .. 2**63 - 1). Values are the raw little-endian bytes of one fixed-size record
whose layout lives in the view's metadata, never pickle.

A decoder never trusts its input: a value of the wrong size, a key of the wrong length or
above the int64 range, or a float that the writer would have refused (NaN, inf) raises
`StoreError` naming the id, instead of returning a wrong vector.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurestore.errors import StoreError

Buf = bytes | bytearray | memoryview      # what LMDB hands back (memoryview with buffers=True)

MAX_ID = 2**63 - 1
KEY_BYTES = 8
VECTOR_DTYPES = ("float16", "float32")
FIELD_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                "float16", "float32", "float64", "bool")


def _few(values: Any, limit: int = 8) -> str:
    """A short listing of offending values for an error message."""
    vals = list(np.asarray(values).ravel()[:limit].tolist())
    more = len(np.asarray(values).ravel()) - len(vals)
    return ", ".join(map(str, vals)) + (f" (+{more} more)" if more > 0 else "")


# ----------------------------------------------------------------------------- keys
def as_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """Validate ids and return them as a 1-D int64 array (any order, duplicates kept).

    Accepts integer arrays/lists/scalars; refuses floats, bools, strings, negatives and
    values beyond int64 with a StoreError that names a few of them.
    """
    try:
        a = np.asarray(ids)
    except (OverflowError, ValueError, TypeError) as e:
        raise StoreError(f"{what} must be non-negative int64 integers: {e}") from None
    if not isinstance(ids, np.ndarray) and a.dtype.kind in "iu" and isinstance(ids, (list, tuple)) \
            and any(isinstance(x, (bool, np.bool_)) for x in ids):
        raise StoreError(f"{what} must be integers (int64), not booleans")   # numpy upcasts [0, False]
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise StoreError(f"{what} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.empty(0, np.int64)
    if a.dtype == object:
        bad = [x for x in a.tolist() if not isinstance(x, (int, np.integer)) or isinstance(x, bool)
               or not 0 <= int(x) <= MAX_ID]
        if bad:
            raise StoreError(f"{what} must be integers in 0..2**63-1; bad: {_few(np.array(bad, dtype=object))}")
        return np.array([int(x) for x in a.tolist()], dtype=np.int64)
    if a.dtype.kind == "u":
        over = a > MAX_ID
        if over.any():
            raise StoreError(f"{what} must fit int64 (<= 2**63-1); bad: {_few(a[over])}")
        return a.astype(np.int64)
    if a.dtype.kind == "i":
        neg = a < 0
        if neg.any():
            raise StoreError(f"{what} must be non-negative; bad: {_few(a[neg])}")
        return a.astype(np.int64, copy=False)
    raise StoreError(f"{what} must be integers (int64), got dtype {a.dtype}; "
                     "convert with np.asarray(ids, dtype=np.int64) if they are whole numbers")


def check_unique(sorted_ids: np.ndarray, what: str = "ids") -> None:
    """Refuse duplicate ids in one batch (which value would win would be an accident)."""
    dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if dup.size:
        raise StoreError(f"duplicate {what} in one batch: {_few(np.unique(dup))}; "
                         "deduplicate before put()")


def encode_keys(ids: np.ndarray) -> bytes:
    """int64 ids (n,) -> n * 8 bytes, big-endian unsigned (byte order = numeric order)."""
    return np.asarray(ids, dtype=np.int64).astype(">u8").tobytes()


def split_keys(blob: bytes) -> list[bytes]:
    """A key blob from `encode_keys` -> list of 8-byte keys."""
    return [blob[i:i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]


def encode_key(i: int) -> bytes:
    """One id -> its 8-byte key."""
    return encode_keys(as_ids(i))


def decode_key(key: bytes) -> int:
    """One stored key -> its id; StoreError for a key no writer of this store makes."""
    if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_BYTES:
        raise StoreError(f"corrupt key {bytes(key)[:16]!r}: expected {KEY_BYTES} bytes; run `featurestore verify`")
    v = int.from_bytes(bytes(key), "big")
    if v > MAX_ID:
        raise StoreError(f"corrupt key {bytes(key).hex()}: id beyond int64; run `featurestore verify`")
    return v


def decode_keys(keys: Sequence[Buf]) -> np.ndarray:
    """Stored keys -> int64 ids (n,), validating every key's length and range."""
    if not keys:
        return np.empty(0, np.int64)
    if min(map(len, keys)) != KEY_BYTES or max(map(len, keys)) != KEY_BYTES:
        bad = next(k for k in keys if len(k) != KEY_BYTES)
        raise StoreError(f"corrupt key {bytes(bad)[:16]!r}: expected {KEY_BYTES} bytes; run `featurestore verify`")
    u = np.frombuffer(b"".join(keys), dtype=">u8")
    if (u > MAX_ID).any():
        raise StoreError(f"corrupt key(s) beyond int64: {_few(u[u > MAX_ID])}; run `featurestore verify`")
    return u.astype(np.int64)


# --------------------------------------------------------------------------- values
def f16_bad_rows(a: np.ndarray) -> np.ndarray:
    """Rows of a float16 array (n, ...) holding a NaN or inf: bool (n,).

    A float16 is NaN/inf when its 5 exponent bits are all ones; numpy vectorises these
    uint16 ops, and not np.isfinite on float16 (~10x slower).
    """
    n = a.shape[0]
    u = np.ascontiguousarray(a).reshape(n, -1).view(np.uint16)       # (n, k)
    return ((u & np.uint16(0x7C00)) == np.uint16(0x7C00)).any(axis=1)


@dataclass(frozen=True)
class ValueCodec:
    """The layout of one stored value: a vector (dim,) of float16/float32, or a record.

    `record` is the little-endian numpy dtype of one value: a sub-array dtype for vector
    views, a packed structured dtype for record views. `nbytes` is the exact size of every
    stored value.
    """

    kind: str                      # "vector" | "record"
    record: np.dtype               # dtype of one value (little-endian, packed)
    dim: int                       # vector length (record views: 0)

    @property
    def nbytes(self) -> int:
        return int(self.record.itemsize)

    @staticmethod
    def vector(dim: int, dtype: str) -> ValueCodec:
        if dtype not in VECTOR_DTYPES:
            raise StoreError(f"unsupported vector dtype {dtype!r}; use one of {VECTOR_DTYPES}")
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not 0 < int(dim) <= 1 << 20:
            raise StoreError(f"dim must be a positive int (<= 2**20), got {dim!r}")
        base = np.dtype(dtype).newbyteorder("<")
        return ValueCodec("vector", np.dtype((base, (int(dim),))), int(dim))

    @staticmethod
    def records(fields: dict[str, Any]) -> ValueCodec:
        """fields: {"tags": ("int32", k), "scores": ("float32", k)}; k >= 1 (or a bare dtype for k = 1)."""
        if not isinstance(fields, dict) or not fields:
            raise StoreError("fields must be a non-empty dict name -> (dtype, k)")
        spec = []
        for name, f in fields.items():
            dt, k = (f, 1) if isinstance(f, str) else tuple(f)
            if not isinstance(name, str) or not name.isidentifier():
                raise StoreError(f"record field name must be an identifier, got {name!r}")
            if dt not in FIELD_DTYPES:
                raise StoreError(f"field {name!r}: unsupported dtype {dt!r}; use one of {FIELD_DTYPES}")
            if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 < int(k) <= 1 << 16:
                raise StoreError(f"field {name!r}: length must be a positive int, got {k!r}")
            spec.append((name, np.dtype(dt).newbyteorder("<") if dt != "bool" else np.dtype("?"), (int(k),)))
        return ValueCodec("record", np.dtype(spec), 0)

    @property
    def float_fields(self) -> list[str]:
        if self.kind == "vector":
            return []
        return [n for n in self.record.names or () if self.record[n].base.kind == "f"]

    # -------------------------------------------------------------------- encoding
    def encode(self, values: Any, ids: np.ndarray) -> np.ndarray:
        """Validate `values` for `ids` and return them as a C-contiguous array whose bytes
        are the stored values in the same order: vectors (n, dim) little-endian; records (n,).
        """
        n = len(ids)
        if self.kind == "vector":
            return self._encode_vectors(values, ids, n)
        return self._encode_records(values, ids, n)

    def _encode_vectors(self, values: Any, ids: np.ndarray, n: int) -> np.ndarray:
        a = np.asarray(values)
        if a.ndim == 1 and n == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2 or a.shape != (n, self.dim):
            raise StoreError(f"values must have shape ({n}, {self.dim}) for {n} ids, got {a.shape}")
        if a.dtype.kind != "f":
            raise StoreError(f"values must be floating point (view stores {self.record.base}), got dtype {a.dtype}")
        with np.errstate(over="ignore"):          # overflow becomes inf and is refused just below
            out = np.ascontiguousarray(a, dtype=self.record.base)
        self._check_finite(out, ids, "values")
        return out

    def _encode_records(self, values: Any, ids: np.ndarray, n: int) -> np.ndarray:
        names = list(self.record.names or ())
        if isinstance(values, np.ndarray) and values.dtype.names is not None:
            have = list(values.dtype.names)
            get = values.__getitem__
        elif isinstance(values, dict):
            have = list(values)
            get = values.__getitem__
        else:
            raise StoreError(f"record values must be a structured array or dict with fields {names}")
        if sorted(have) != sorted(names):
            raise StoreError(f"record fields must be exactly {names}, got {have}")
        out = np.zeros(n, dtype=self.record)
        for name in names:
            want = self.record[name]
            col = np.asarray(get(name))
            k = want.shape[0]
            if col.ndim == 1 and k == 1:
                col = col.reshape(-1, 1)
            if col.shape != (n, k):
                raise StoreError(f"field {name!r} must have shape ({n}, {k}), got {col.shape}")
            if not np.can_cast(col.dtype, want.base, casting="same_kind") or (
                    want.base.kind in "iu" and col.dtype.kind == "f"):
                raise StoreError(f"field {name!r} stores {want.base}; got dtype {col.dtype}")
            if want.base.kind in "iu" and col.size:
                info = np.iinfo(want.base)
                if col.min() < info.min or col.max() > info.max:
                    raise StoreError(f"field {name!r}: values out of {want.base} range")
            conv = col.astype(want.base)
            if want.base.kind == "f":
                self._check_finite(conv, ids, f"field {name!r}")
            out[name] = conv
        return out

    @staticmethod
    def _check_finite(a: np.ndarray, ids: np.ndarray, what: str) -> None:
        """Refuse NaN/inf (also float16 overflow of large float32 inputs), naming the ids."""
        if a.size == 0:
            return
        if a.dtype == np.float16:
            bad_rows = f16_bad_rows(a)
        else:
            bad_rows = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
        if bad_rows.any():
            raise StoreError(f"{what} contain NaN or inf (or overflow {a.dtype}) for ids {_few(ids[bad_rows])}; "
                             "fix or record them with put_errors()")

    # -------------------------------------------------------------------- decoding
    def decode_block(self, blob: bytes | bytearray, ids: np.ndarray, found: np.ndarray | None = None,
                     dtype: Any = None) -> np.ndarray:
        """Packed bytes of len(ids) values -> (n, dim) vectors (stored dtype, or `dtype`), or (n,) records.

        Checks the size and that stored floats are finite (a writer never stores NaN/inf,
        so one means the file was edited). `found` masks rows that were filled.
        """
        n = len(ids)
        if len(blob) != n * self.nbytes:
            raise StoreError(f"corrupt block: {len(blob)} bytes for {n} values of {self.nbytes}")
        if n == 0:
            arr = np.zeros((0, self.dim) if self.kind == "vector" else 0, self.record.base if self.kind == "vector"
                           else self.record)
            return arr.astype(dtype) if dtype is not None and self.kind == "vector" else arr
        # vector views: frombuffer with a sub-array dtype already gives (n, dim)
        arr = np.frombuffer(blob, dtype=self.record, count=n)
        if self.kind == "vector" and dtype is not None and np.dtype(dtype) != arr.dtype:
            out = arr.astype(dtype)                     # NaN/inf survive the cast: check the (faster) result
            self._check_stored_finite(out, ids, found)
            return out
        self._check_stored_finite(arr, ids, found)
        return arr

    def _check_stored_finite(self, arr: np.ndarray, ids: np.ndarray, found: np.ndarray | None) -> None:
        cols = [arr] if self.kind == "vector" else [arr[f] for f in self.float_fields]
        for c in cols:
            if c.size == 0:
                continue
            if c.dtype.kind == "f" and c.dtype.itemsize >= 4 and np.isfinite(np.add.reduce(c, axis=None)):
                continue        # fast path, one pass: a NaN/inf anywhere makes the sum non-finite
            if c.dtype.base == np.float16 or c.dtype == np.float16:
                bad = f16_bad_rows(c)
            else:
                bad = ~np.isfinite(c).reshape(len(c), -1).all(axis=1)
            if found is not None:
                bad &= found
            if bad.any():
                raise StoreError(f"corrupt value(s) for ids {_few(ids[bad])}: NaN/inf never written by a writer; "
                                 "run `featurestore verify`")

    def decode_value(self, buf: Any, id_: int = -1) -> np.ndarray:
        """One stored value -> a vector (dim,) in the stored dtype, or one record."""
        try:
            b = bytes(buf)
        except TypeError:
            raise StoreError(f"corrupt value for id {id_}: not bytes") from None
        if len(b) != self.nbytes:
            raise StoreError(f"corrupt value for id {id_}: {len(b)} bytes, the view stores {self.nbytes}; "
                             "run `featurestore verify`")
        arr = self.decode_block(b, np.array([id_], dtype=np.int64))
        return arr[0].copy()


# --------------------------------------------------------------------------- digest
_KEY_MUL = np.uint64(0x9E3779B97F4A7C15)   # odd: distinct ids give distinct row terms


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 wraps silently on arrays)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def _weights(words: int) -> np.ndarray:
    # Odd multipliers: any change of a single 64-bit word changes its row's sum (mod 2**64).
    w = _mix(np.arange(1, words + 1, dtype=np.uint64)) | np.uint64(1)
    w.setflags(write=False)
    return w


def row_hashes(ids: np.ndarray, blob: bytes | bytearray, nbytes: int) -> np.ndarray:
    """A 64-bit hash of each (key, value) row: (n,) uint64, vectorised.

    Summed mod 2**64 over a view it gives an order-free digest the writer maintains
    incrementally, so `verify` can detect an edited value (LMDB has no checksums).
    """
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.uint64)
    rows = np.frombuffer(blob, dtype=np.uint8, count=n * nbytes).reshape(n, nbytes)
    pad = (-nbytes) % 8
    if pad:
        rows = np.concatenate([rows, np.zeros((n, pad), np.uint8)], axis=1)
    words = rows.view("<u8")                                     # (n, ceil(nbytes / 8))
    h = words @ _weights(words.shape[1])                         # (n,) uint64, wraps
    h += np.asarray(ids, dtype=np.int64).astype(np.uint64) * _KEY_MUL + np.uint64(nbytes)
    return _mix(h)


def digest_sum(h: np.ndarray) -> int:
    """Sum of row hashes mod 2**64 as a Python int."""
    return int(h.sum(dtype=np.uint64)) if h.size else 0
