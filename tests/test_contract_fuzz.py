"""Property-based fuzzing of the posts/edges validator.

Whatever schema and values a file holds, the validator either accepts it with the
contract's invariants holding, or raises InputError — never another exception.
Each property checks that it ran its cases (tests/_fuzz.py); the run's summary lists them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _fuzz import CASES, counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.contract import read_edges, read_posts
from jobs.errors import InputError

N_EXAMPLES = 150

_ints = st.lists(st.one_of(st.none(), st.integers(-3, 2**62)), min_size=0, max_size=8)


def _column(kind: str, data: st.DataObject, n: int) -> pa.Array:
    """A column of `n` rows of a randomly chosen (often wrong) type."""
    if kind == "int64":
        vals = data.draw(_ints)
        vals = (vals * (n // max(len(vals), 1) + 1))[:n] if vals else [0] * n
        return pa.array(vals, pa.int64())
    if kind == "int32":
        return pa.array(data.draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), pa.int32())
    if kind == "string":
        return pa.array(data.draw(st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=n, max_size=n)))
    if kind == "list<string>":
        return pa.array(data.draw(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.text(max_size=4)),
                                                                          max_size=3)), min_size=n, max_size=n)),
                        pa.list_(pa.string()))
    return pa.array(data.draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)), pa.float64())


KINDS = ["int64", "int32", "string", "list<string>", "float"]


@counted(N_EXAMPLES)
@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_posts_validator_never_crashes(tmp_path, data):
    n = data.draw(st.integers(0, 8))
    names = data.draw(st.lists(st.sampled_from(["post_id", "user_id", "image", "tags", "item_id", "extra"]),
                               unique=True, min_size=0, max_size=6))
    # Bias towards the right type so that deep checks are reached too.
    right = {"post_id": "int64", "user_id": "int64", "image": "string", "tags": "list<string>", "item_id": "int64",
             "extra": "float"}
    cols = {c: _column(right[c] if data.draw(st.booleans()) or data.draw(st.booleans()) else
                       data.draw(st.sampled_from(KINDS)), data, n) for c in names}
    path = tmp_path / f"posts{CASES['test_posts_validator_never_crashes']}.parquet"
    pq.write_table(pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int64())}), path)
    try:
        t = read_posts(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    ids = t.column("post_id").to_numpy()
    assert len(np.unique(ids)) == len(ids) and (ids >= 0).all()
    assert t.column("user_id").null_count == 0 and t.column("item_id").null_count == 0


@counted(N_EXAMPLES)
@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_edges_validator_never_crashes(tmp_path, data):
    n = data.draw(st.integers(0, 8))
    names = data.draw(st.lists(st.sampled_from(["src", "dst", "weight"]), unique=True, max_size=3))
    right = {"src": "int64", "dst": "int64", "weight": "float"}
    cols = {c: _column(right[c] if data.draw(st.booleans()) or data.draw(st.booleans()) else
                       data.draw(st.sampled_from(KINDS)), data, n) for c in names}
    path = tmp_path / f"edges{CASES['test_edges_validator_never_crashes']}.parquet"
    pq.write_table(pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int64())}), path)
    users = np.array(data.draw(st.lists(st.integers(0, 10), max_size=5)), dtype=np.int64)
    try:
        t, rep = read_edges(path, user_ids=users)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    w = t.column("weight").to_numpy()
    assert np.isfinite(w).all() and (w > 0).all()
    assert rep.edges == t.num_rows and 0 <= rep.unknown_users <= rep.edges
