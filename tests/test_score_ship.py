"""Shipped features (jobs._score_ship): what a scoring task rebuilds from the rows the driver
sent equals what it would read from the store itself."""

from __future__ import annotations

import pickle

import numpy as np

from featurestore import Store
from jobs._score_ship import ship
from jobs._score_task import KEYED_BY
from jobs.features import FeatureReader


def test_shipped_rows_give_the_batches_the_store_gives(tmp_path):
    rng = np.random.default_rng(0)
    store = Store.open(tmp_path / "s", create=True)
    views = {"ic": "image/vgg16@1", "sn": "user/node2vec@1"}
    for f, dim, n in (("ic", 512, 300), ("sn", 16, 40)):
        store.create_view(views[f], dim, producer={"model": "test"})
        with store.writer(views[f]) as w:        # every other id stored: the rest are missing
            w.put(np.arange(0, 2 * n, 2), rng.standard_normal((n, dim)).astype(np.float16))
    store.close()
    reader = FeatureReader(tmp_path / "s", views)
    users = rng.integers(0, 90, 500)             # repeats, and ids with no vector
    items = rng.integers(0, 650, 500)
    shipped = pickle.loads(pickle.dumps(ship(reader.store_readers(), KEYED_BY, users, items)))
    assert shipped.ids["sn"].tolist() == np.unique(users).tolist()           # each distinct id once
    assert shipped.values["ic"].dtype == np.float16                          # sent as stored
    for lo, hi in ((0, 500), (100, 137)):
        got, got_missing = shipped.read(users[lo:hi], items[lo:hi])
        want, want_missing = reader.read(users[lo:hi], items[lo:hi])
        assert got_missing == want_missing and want_missing["ic"] > 0
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].dtype == want[k].dtype
