"""models.recsys.saved: id lookups against a dict reference; feature views and vocabulary of a saved model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import ModelError
from models.recsys import get_model, load, save
from models.recsys.data import IdIndex, index_of
from models.recsys.saved import feature_views, id_vocab, tag_vocabulary

ids64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(vocab=st.lists(ids64, unique=True, max_size=50), extra=st.lists(ids64, max_size=30))
def test_idindex_equals_dict_lookup(vocab, extra):
    ref = {v: i for i, v in enumerate(vocab)}
    rng = np.random.default_rng(len(vocab))
    queries = np.array(list(vocab) + extra, dtype=np.int64)
    queries = queries[rng.permutation(len(queries))] if len(queries) else queries
    want = np.array([ref.get(int(q), -1) for q in queries], dtype=np.int64)
    index = IdIndex(np.array(vocab, dtype=np.int64))
    np.testing.assert_array_equal(index(queries), want)
    np.testing.assert_array_equal(index_of(np.array(vocab, dtype=np.int64), queries), want)
    assert index(queries).dtype == np.int64 and len(index) == len(vocab)


def test_saved_model_facts(tmp_path):
    m = get_model("PITF-IC", n_users=3, n_items=0, n_tags=4, dim=8, seed=0)
    save(m, tmp_path / "m", meta={"tags": ["a", "b", "c", "d"], "user_ids": np.array([30, 10, 20]),
                                  "views": {"ic": {"view": "image/vgg16@7", "dim": 512}}})
    m2 = load(tmp_path / "m")
    assert feature_views(m2) == {"ic": "image/vgg16@7"}
    assert tag_vocabulary(m2) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(IdIndex(id_vocab(m2, "user"))(np.array([20, 30, 99])), [2, 0, -1])
    assert len(id_vocab(m2, "item")) == 0
    m2.tags = []
    with pytest.raises(ModelError, match="no tag vocabulary"):
        tag_vocabulary(m2)
