"""Recommender models behind one registry, saved and loaded without pickle.

    from models.recsys import get_model, list_models, save, load
    m = get_model("PITF-IC-OD", n_users=U, n_items=I, n_tags=T, dim=128)
    scores = m.post_vectors(batch) @ m.tag_matrix().T      # docs/interfaces.md
    save(m, "runs/demo/models/PITF-IC-OD", meta={...});  m2, meta = load("runs/demo/models/PITF-IC-OD")

Names: PITF, FM, PITF-IC, PITF-OD, PITF-IC-OD, FM-IC, FM-OD, FM-IC-OD, each also with
"+SN", and social-multilabel, visual-multilabel. The frequency baselines (most-popular,
user-popular) live in models/baselines.py.

Each name's `ModelEntry` (`model_entry(name)`) says which store features it reads, which
trainer trains it (`trainer.Trainer`: `bpr.BPRTrainer` or `multilabel.MultiLabelTrainer`),
that trainer's settings class and which size hyperparameter a job sets, so a job drives
every model the same way without asking what kind it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.errors import ModelError
from models.recsys import factorization, multilabel
from models.recsys.bpr import BPRConfig, BPRTrainer
from models.recsys.io import load, save
from models.recsys.multilabel import MultiLabelConfig, MultiLabelTrainer
from models.recsys.trainer import Trainer


@dataclass(frozen=True)
class ModelEntry:
    """What a job needs to know about a model name (as torchvision's weights carry `meta`)."""

    name: str
    builder: Callable[..., Any]        # builder(name, n_users=, n_items=, n_tags=, sn_dim=, seed=, device=, **size)
    features: tuple[str, ...]          # store features it reads: "ic", "od", "sn" (models.views)
    trainer: type[Trainer]             # how it trains (one partition's epochs)
    config: type                       # its trainer's settings: BPRConfig or MultiLabelConfig
    size: tuple[str, ...] = ()         # builder hyperparameters a job sets from its flags ("dim", "hidden")
    tunable: bool = False              # `--tune` searches its lr × reg


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., Any], features: tuple[str, ...] = (),
                   trainer: type[Trainer] = BPRTrainer, config: type = BPRConfig, size: tuple[str, ...] = (),
                   tunable: bool = False) -> None:
    """Add model `name`: its builder `builder(name, **hp)` and the metadata of its `ModelEntry`."""
    _REGISTRY[name] = ModelEntry(name, builder, tuple(features), trainer, config, tuple(size), tunable)


for _n in factorization.NAMES:
    register_model(_n, factorization.FactorizationModel, factorization.parse_name(_n).features,
                   BPRTrainer, BPRConfig, size=("dim",), tunable=True)
for _n in multilabel.NAMES:
    register_model(_n, multilabel.MultiLabelNet, multilabel.features_of(_n),
                   MultiLabelTrainer, MultiLabelConfig, size=("hidden",))


def list_models() -> list[str]:
    """Every registered model name, in the papers' order."""
    return list(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; ModelError listing the valid names if unknown."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    return _REGISTRY[name]


def get_model(name: str, **hp: Any) -> Any:
    """Build model `name` with hyperparameters `hp`; ModelError listing valid names if unknown."""
    entry = model_entry(name)
    try:
        return entry.builder(name, **hp)
    except TypeError as e:  # a misspelt hyperparameter: say which
        raise ModelError(f"model {name}: bad hyperparameters {sorted(hp)}: {e}") from None


def required_features(name: str) -> tuple[str, ...]:
    """Store features ('ic', 'od', 'sn') that model `name` reads."""
    return model_entry(name).features


__all__ = ["ModelEntry", "get_model", "list_models", "model_entry", "register_model", "required_features",
           "save", "load", "ModelError"]
