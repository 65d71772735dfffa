"""The archive's distinct images, streamed from posts.parquet for `jobs.extract`.

The driver keeps 16 bytes per distinct item (its id and the manifest row of its first post)
and reads image paths back a window of items at a time, so it never holds the manifest's
strings; `item_blocks` cuts (item_id, image) tables for the Ray Data pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def item_index(posts: str, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(distinct item ids sorted, manifest row of each one's first post), streamed.

    Validates the manifest first (`contract.check_posts`: the same errors as `read_posts`, one
    record batch at a time). Holds 8 bytes per post (the item id of every row) while it runs and
    16 bytes per distinct item after: never the manifest's strings or tag lists.
    """
    import pyarrow as pa

    from jobs.contract import check_posts, iter_posts

    n = check_posts(posts, batch_rows)
    ids = np.empty(n, dtype=np.int64)
    pos = 0
    for b in iter_posts(posts, columns=("item_id",), batch_rows=batch_rows):   # hashed from images if absent
        ids[pos:pos + b.num_rows] = b.column(0).to_numpy()
        pos += b.num_rows
    uniq, first = np.unique(ids[:pos], return_index=True)  # sorted ids: --limit takes the lowest
    del ids
    pa.default_memory_pool().release_unused()      # give Arrow's freed read buffers back
    return uniq, first.astype(np.int64)


def paths_of_rows(posts: str, rows: np.ndarray, batch_rows: int = 65536) -> Any:
    """Absolute image paths or URIs of ascending manifest `rows`, as one pyarrow string array.

    One pass over the manifest's image column, a record batch at a time, stopping after the last
    row asked for: only the rows asked for are kept.
    """
    import pyarrow as pa

    from jobs.contract import iter_posts

    parts: list[Any] = []
    k = pos = 0
    for b in iter_posts(posts, columns=("image",), batch_rows=batch_rows):
        if k == len(rows):
            break
        j = int(np.searchsorted(rows, pos + b.num_rows))       # rows[k:j] are in this batch
        if j > k:
            parts.append(b.column(0).take(pa.array(rows[k:j] - pos)).cast(pa.string()))
        k, pos = j, pos + b.num_rows
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


PATH_WINDOW = 131_072   # items whose paths the driver holds at once, at least 1/16 of them


def item_blocks(posts: str, ids: np.ndarray, rows: np.ndarray, per_block: int,
                batch_rows: int = 65536, window: int = 0) -> Iterator[Any]:
    """(item_id int64, image string) pyarrow tables of `per_block` items, in the order of `ids`.

    `rows[i]` is the manifest row of item `ids[i]`. Ascending ids let the store append in key
    order (random key order costs several times the CPU; benchmarks/results/design-measurements.md).
    Paths are read a window of items at a time
    (`paths_of_rows`: one pass over the image column per window), so the driver holds at most
    `window` paths (default: PATH_WINDOW, or 1/16 of the items: at most 16 passes).
    """
    import pyarrow as pa

    n = len(ids)
    window = window or max(PATH_WINDOW, -(-n // 16))
    window = max(per_block, window // per_block * per_block)        # whole blocks per window
    for w in range(0, n, window):
        w_rows = rows[w:w + window]
        order = np.argsort(w_rows, kind="stable")
        paths = paths_of_rows(posts, w_rows[order], batch_rows)   # in row order
        at = np.empty_like(order)
        at[order] = np.arange(len(order))                           # item i's path is paths[at[i]]
        for b in range(0, len(w_rows), per_block):
            yield pa.table({"item_id": pa.array(ids[w + b:w + b + per_block], pa.int64()),
                            "image": paths.take(pa.array(at[b:b + per_block]))})   # a compact copy
