"""LMDB feature store: views of fixed-size vectors/records keyed by int64 id (no torch, no Ray).

    from featurestore import Store, DEFAULT_VIEWS, StoreError
    store = Store.open(path, create=True)
    store.create_view(DEFAULT_VIEWS.IC, 512, producer={"model": "vgg16", "weights": "random weights"})
    with store.writer(DEFAULT_VIEWS.IC) as w:
        w.put(ids, vectors)
    vectors, found = store.reader(DEFAULT_VIEWS.IC).get_many(ids)

See docs/interfaces.md ("Feature store") and `python -m featurestore --help`.
"""

from featurestore.errors import StoreError
from featurestore.meta import DEFAULT_VIEWS, ViewInfo, topk_view
from featurestore.reader import Reader
from featurestore.store import Store
from featurestore.writer import Writer

__all__ = ["DEFAULT_VIEWS", "Reader", "Store", "StoreError", "ViewInfo", "Writer", "topk_view"]
