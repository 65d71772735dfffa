"""What a job needs to know about a saved recommender beyond its scores.

`models.recsys.load` gives the model with `.meta` (model.json), `.tags`, `.user_ids` and
`.item_ids`. Scoring, evaluation and the benchmarks read the same facts from it: the store
views it was trained on, its tag vocabulary, and its training id vocabularies (look ids up
in them with `models.recsys.data.IdIndex`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import ModelError
from models.views import DEFAULT_FEATURE_VIEWS


def feature_views(model: Any) -> dict[str, str]:
    """Feature key (ic, od, sn) -> the store view the model reads.

    model.json "views" as jobs.train writes it ({"ic": {"view": "image/vgg16@1", "dim": ...}}),
    or {"ic": "image/vgg16@1"}; the default views where it names none.
    """
    from models.recsys import required_features

    meta = getattr(model, "meta", {}) or {}
    views = meta.get("views") or {}
    views = views if isinstance(views, dict) else {}
    out = {}
    for f in required_features(meta.get("name") or model.name):
        v = views.get(f)
        v = v.get("view") if isinstance(v, dict) else v
        out[f] = str(v or DEFAULT_FEATURE_VIEWS[f])
    return out


def uses_item_factor(model: Any) -> bool:
    """Whether an unseen item loses a learned term (PITF/FM without content features)."""
    spec = getattr(model, "spec", None)
    return bool(getattr(spec, "has_item_factor", False))


def tag_vocabulary(model: Any) -> list[str]:
    """Tag names in tag-matrix row order (model.json "tags")."""
    tags = getattr(model, "tags", None)
    if not tags:
        raise ModelError("model.json holds no tag vocabulary ('tags'); re-save the model with jobs.train")
    return [str(t) for t in tags]


def id_vocab(model: Any, which: str) -> np.ndarray:
    """Training ids of users or items (row r of the factor table is ids[r])."""
    ids = getattr(model, f"{which}_ids", None)
    return np.zeros(0, np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
