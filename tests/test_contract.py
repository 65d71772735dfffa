"""The data contract validator: each violation gets one clear message naming file, column and rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.contract import check_posts, item_ids_for_images, iter_posts, read_edges, read_posts
from jobs.errors import InputError


def _posts(**over):
    cols = {
        "post_id": pa.array([1, 2, 3, 4], pa.int64()),
        "user_id": pa.array([10, 10, 11, 12], pa.int64()),
        "image": pa.array(["a.jpg", "b.jpg", "a.jpg", "/abs/c.jpg"]),
        "tags": pa.array([["sky", "sea"], ["sky"], [], ["dog"]], pa.list_(pa.string())),
    }
    cols.update(over)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def _write(tmp_path, table, name="posts.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def test_valid_posts_get_item_ids_and_absolute_images(tmp_path):
    t = read_posts(_write(tmp_path, _posts()))
    assert t.column_names == ["post_id", "user_id", "image", "tags", "item_id"]
    images = t.column("image").to_pylist()
    assert images[0] == str(tmp_path.resolve() / "a.jpg")
    assert images[3] == "/abs/c.jpg"
    items = t.column("item_id").to_numpy()
    assert items[0] == items[2]  # same photo posted twice is one item
    assert len(set(items.tolist())) == 3 and (items >= 0).all()


def test_item_ids_are_stable_and_63_bit():
    a = item_ids_for_images(["x/1.jpg", "x/2.jpg"])
    b = item_ids_for_images(pa.array(["x/2.jpg", "x/1.jpg"]))
    assert a[0] == b[1] and a[1] == b[0]
    assert a.dtype == np.int64 and (a >= 0).all()


def test_explicit_item_id_is_kept(tmp_path):
    t = read_posts(_write(tmp_path, _posts(item_id=pa.array([7, 8, 9, 7], pa.int64()))))
    assert t.column("item_id").to_pylist() == [7, 8, 9, 7]


@pytest.mark.parametrize(
    "over, match",
    [
        ({"user_id": None}, r"missing column\(s\) \['user_id'\]"),
        ({"post_id": pa.array([1, 2, 3, 4], pa.int32())}, r"'post_id' must be int64, found int32.*cast"),
        ({"tags": pa.array(["a", "b", "c", "d"])}, r"'tags' must be list<string>"),
        ({"image": pa.array([1, 2, 3, 4])}, r"'image' must be string"),
        ({"post_id": pa.array([1, 2, 2, 4], pa.int64())}, r"'post_id' must be unique; 1 duplicated value\(s\): \[2\]"),
        ({"user_id": pa.array([1, None, 3, None], pa.int64())}, r"'user_id' has 2 null value\(s\), at rows \[1, 3\]"),
        ({"post_id": pa.array([1, -2, 3, 4], pa.int64())}, r"'post_id' must be >= 0; negative at rows \[1\]"),
        ({"tags": pa.array([["a"], None, [], ["b"]], pa.list_(pa.string()))}, r"null lists at rows \[1\]"),
        ({"tags": pa.array([["a"], [""], [], ["b", None]], pa.list_(pa.string()))}, r"null or empty tag strings at rows \[1, 3\]"),
        ({"item_id": pa.array([1, None, 3, 4], pa.int64())}, r"'item_id' has 1 null"),
    ],
)
def test_each_violation_names_file_column_rows(tmp_path, over, match):
    path = _write(tmp_path, _posts(**over))
    with pytest.raises(InputError, match=match) as e:
        read_posts(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_many_offending_rows_are_summarised(tmp_path):
    n = 50
    t = pa.table({"post_id": pa.array(np.zeros(n, np.int64)), "user_id": pa.array(np.arange(n)),
                  "image": pa.array(["a"] * n), "tags": pa.array([[]] * n, pa.list_(pa.string()))})
    with pytest.raises(InputError, match=r"\[0\]"):
        read_posts(_write(tmp_path, t))


@pytest.mark.parametrize("reader", [read_posts, check_posts], ids=["read_posts", "check_posts"])
def test_missing_and_unreadable_files(tmp_path, reader):
    with pytest.raises(InputError, match="does not exist"):
        reader(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable Parquet"):
        reader(bad)


def test_iter_posts_streams_in_batches(tmp_path):
    n = 1000
    t = pa.table({"post_id": pa.array(np.arange(n)), "user_id": pa.array(np.arange(n) % 7),
                  "image": pa.array([f"{i % 300}.jpg" for i in range(n)]),
                  "tags": pa.array([["t"]] * n, pa.list_(pa.string()))})
    path = tmp_path / "p.parquet"
    pq.write_table(t, path, row_group_size=128)
    batches = list(iter_posts(path, columns=("post_id", "item_id", "image"), batch_rows=100))
    assert len(batches) >= 10 and all(b.num_rows <= 128 for b in batches)
    got = pa.Table.from_batches(batches)
    full = read_posts(path)
    assert got.column("item_id").to_pylist() == full.column("item_id").to_pylist()
    assert got.column("image").to_pylist() == full.column("image").to_pylist()


def _grouped(tmp_path, n=40, **over):
    """posts.parquet of n valid posts (post_id = 3 * row) in row groups of 6, with columns replaced."""
    cols = {"post_id": pa.array(np.arange(n) * 3), "user_id": pa.array(np.arange(n) % 5),
            "image": pa.array([f"{i % 7}.jpg" for i in range(n)]),
            "tags": pa.array([["t", f"u{i % 3}"] for i in range(n)], pa.list_(pa.string()))}
    cols.update(over)
    path = tmp_path / "grouped.parquet"
    pq.write_table(pa.table({k: v for k, v in cols.items() if v is not None}), path, row_group_size=6)
    assert pq.ParquetFile(path).num_row_groups == -(-n // 6)
    return path


_INT64 = pa.int64()


def _with(values, rows, to, type_=_INT64):
    """`values` as a pyarrow array, with the given rows replaced by `to` (a value, or row -> value)."""
    vals = list(values)
    for r in rows:
        vals[r] = to(r) if callable(to) else to
    return pa.array(vals, type_)


_IDS = np.arange(40) * 3
_TAGS = [["t", f"u{i % 3}"] for i in range(40)]


@pytest.mark.parametrize(
    "over, match",
    [
        # duplicates whose copies sit in different row groups (and batches)
        ({"post_id": _with(_IDS, [33, 20], lambda r: {33: 6, 20: 15}[r])},
         r"'post_id' must be unique; 2 duplicated value\(s\): \[6, 15\]$"),
        ({"user_id": _with(np.arange(40) % 5, [1, 13, 25, 31, 37, 39], None)},
         r"'user_id' has 6 null value\(s\), at rows \[1, 13, 25, 31, 37\] and 1 more$"),
        ({"item_id": _with(np.arange(40) % 9, [3, 38], -1)}, r"'item_id' must be >= 0; negative at rows \[3, 38\]$"),
        ({"tags": _with(_TAGS, [30], None, pa.list_(pa.string()))}, r"'tags' has null lists at rows \[30\]"),
        ({"tags": _with(_TAGS, [7, 19, 20], lambda r: ["ok", " "] if r != 20 else [None], pa.list_(pa.string()))},
         r"null or empty tag strings at rows \[7, 19, 20\]$"),
        ({"image": _with([f"{i}.jpg" for i in range(40)], [26], None, pa.string())}, r"explicit 'item_id'"),
        ({"user_id": pa.array(np.arange(40) % 5, pa.int32())}, r"'user_id' must be int64, found int32"),
        # several violations: the first in the contract's order wins, not the first row group's
        ({"tags": _with(_TAGS, [0], None, pa.list_(pa.string())), "post_id": _with(_IDS, [35], 3)},
         r"'post_id' must be unique; 1 duplicated value\(s\): \[3\]$"),
    ],
)
def test_streamed_check_gives_read_posts_errors(tmp_path, over, match):
    """check_posts reads a batch at a time (here 4 rows, across row groups of 6) and must raise
    exactly what read_posts raises on the whole table: global rows, totals, the same first error."""
    path = _grouped(tmp_path, **over)
    with pytest.raises(InputError, match=match) as whole:
        read_posts(path)
    for batch_rows in (4, 13, 65536):
        with pytest.raises(InputError) as streamed:
            check_posts(path, batch_rows=batch_rows)
        assert str(streamed.value) == str(whole.value)


def test_streamed_check_counts_valid_posts(tmp_path):
    assert check_posts(_grouped(tmp_path), batch_rows=4) == 40


def test_edges_report_and_errors(tmp_path):
    e = pa.table({"src": pa.array([1, 2, 2, 3, 9], pa.int64()), "dst": pa.array([2, 3, 3, 3, 1], pa.int64())})
    table, rep = read_edges(_write(tmp_path, e, "edges.parquet"), user_ids=np.array([1, 2, 3]))
    assert table.column("weight").to_pylist() == [1.0] * 5
    assert (rep.edges, rep.self_loops, rep.duplicates, rep.unknown_users) == (5, 1, 1, 1)
    assert rep.unknown_user_examples == [9]
    with pytest.raises(InputError, match=r"'weight' must be finite and > 0; bad at rows \[1\]"):
        read_edges(_write(tmp_path, e.append_column("weight", pa.array([1.0, -1, 1, 1, 1])), "w.parquet"))
    with pytest.raises(InputError, match=r"'dst' must be int64, found string"):
        read_edges(_write(tmp_path, pa.table({"src": pa.array([1], pa.int64()), "dst": ["x"]}), "s.parquet"))
    with pytest.raises(InputError, match=r"missing column\(s\) \['dst'\]"):
        read_edges(_write(tmp_path, pa.table({"src": pa.array([1], pa.int64())}), "m.parquet"))


def test_empty_edges_file_is_valid_but_empty(tmp_path):
    e = pa.table({"src": pa.array([], pa.int64()), "dst": pa.array([], pa.int64())})
    table, rep = read_edges(_write(tmp_path, e, "edges.parquet"))
    assert table.num_rows == 0 and rep.edges == 0
