"""Recommender models behind one registry, saved and loaded without pickle.

    from models.recsys import get_model, list_models, save, load
    m = get_model("PITF-IC-OD", n_users=U, n_items=I, n_tags=T, dim=128)
    scores = m.post_vectors(batch) @ m.tag_matrix().T      # docs/interfaces.md
    save(m, "runs/demo/models/PITF-IC-OD", meta={...});  m2, meta = load("runs/demo/models/PITF-IC-OD")

Names: PITF, FM, PITF-IC, PITF-OD, PITF-IC-OD, FM-IC, FM-OD, FM-IC-OD, each also with
"+SN", and social-multilabel, visual-multilabel. The frequency baselines (most-popular,
user-popular) live in models/baselines.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.errors import ModelError
from models.recsys import factorization, multilabel
from models.recsys.io import load, save

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str, builder: Callable[..., Any]) -> None:
    """Add a builder `builder(name, **hp)` under `name`."""
    _REGISTRY[name] = builder


for _n in factorization.NAMES:
    register_model(_n, factorization.FactorizationModel)
for _n in multilabel.NAMES:
    register_model(_n, multilabel.MultiLabelNet)


def list_models() -> list[str]:
    """Every registered model name, in the papers' order."""
    return list(_REGISTRY)


def get_model(name: str, **hp: Any) -> Any:
    """Build model `name` with hyperparameters `hp`; ModelError listing valid names if unknown."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    try:
        return _REGISTRY[name](name, **hp)
    except TypeError as e:  # a misspelt hyperparameter: say which
        raise ModelError(f"model {name}: bad hyperparameters {sorted(hp)}: {e}") from None


def required_features(name: str) -> tuple[str, ...]:
    """Store features ('ic', 'od', 'sn') that model `name` reads."""
    if name in factorization.NAMES:
        return factorization.parse_name(name).features
    if name in multilabel.NAMES:
        return ("ic", "sn") if name == "social-multilabel" else ("ic",)
    raise ModelError(f"unknown model {name!r}; valid: {', '.join(list_models())}")


__all__ = ["get_model", "list_models", "register_model", "required_features", "save", "load", "ModelError"]
