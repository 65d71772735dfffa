"""One interface for training every recommender, and the one epoch loop.

A `Trainer` runs epochs of one model kind over one partition of the training posts (all of
them in a single process). BPR (`bpr.BPRTrainer`) and the multi-label networks
(`multilabel.MultiLabelTrainer`) implement it; the registry (`models.recsys.model_entry`)
says which trainer and which settings class each model name uses, so a job drives any
model the same way:

    trainer = entry.trainer.for_partition(model, data, settings)   # or one per Ray worker
    train_epochs(trainer, model, settings.epochs, hp=entry.trainer.describe(model, settings))

With several partitions (posts split by user over workers) the trainers sum what they share
in one all-reduce per step (`Partition.sync`), and after each epoch each sends
`owned_state()` to the driver, which rebuilds the whole model with `merge_states`.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from models.errors import NumericalError
from models.recsys.data import PostData


@dataclass
class Partition:
    """The part of the training posts one trainer owns (all of them by default)."""

    rank: int = 0
    world: int = 1
    sync: Any = None                  # allreduce_(tensors) summing in place (distributed.TorchDistSync)
    total: int | None = None          # work units over all partitions (None: this partition's)
    keys: np.ndarray | None = None    # (n,) each post's row in the whole training set
    shared: Any = None                # the kind's cross-partition bookkeeping (`Trainer.shared_state`)


class Trainer(ABC):
    """Epochs of one model over one partition of the posts."""

    unit: ClassVar[str]     # what an epoch passes over: "samples" (BPR pairs) or "posts"
    advice: ClassVar[str]   # how to fix a divergence, in the job's flags

    @classmethod
    @abstractmethod
    def for_partition(cls, model: Any, data: PostData, cfg: Any, part: Partition | None = None) -> Trainer:
        """The trainer of `model` over `data`, one partition `part` of the training set."""

    @staticmethod
    @abstractmethod
    def work_units(data: PostData) -> int:
        """What an epoch over `data` passes over (`unit`)."""

    @classmethod
    def prepare(cls, model: Any, data: PostData) -> None:
        """Fit what the model derives from all training posts before training starts."""
        return None

    @classmethod
    def shared_state(cls, model: Any, parts: list[PostData]) -> Any:
        """Bookkeeping every partition needs about the others (`Partition.shared`); None by default."""
        return None

    @classmethod
    @abstractmethod
    def describe(cls, model: Any, cfg: Any) -> dict[str, Any]:
        """The settings a divergence message names."""

    @abstractmethod
    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this partition in a seeded order; (summed loss, work units)."""

    @abstractmethod
    def owned_state(self) -> dict[str, Any]:
        """What this partition sends the driver after an epoch (`merge_states` reads it)."""

    @staticmethod
    @abstractmethod
    def merge_states(model: Any, states: list[dict[str, Any]]) -> dict[str, Any]:
        """Load every partition's `owned_state` into the driver's model; returns the optimizer state."""

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """The optimizer's state to checkpoint (empty for plain SGD)."""
        return {}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore `optimizer_state()` (a resumed run then equals an uninterrupted one)."""
        return None

    def close(self) -> None:
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.close()


def check_finite(model: Any, loss: float, epoch: int, hp: dict, advice: str = "lower --lr or raise --reg") -> None:
    """NumericalError naming the hyperparameters when the loss (or a tag factor) is NaN/inf."""
    bad = not math.isfinite(loss)
    if model is not None and not bad:
        bad = not bool(torch.isfinite(torch.as_tensor(model.tag_matrix())).all())
    if bad:
        name = getattr(model, "name", "model")
        hps = ", ".join(f"{k}={v}" for k, v in hp.items())
        raise NumericalError(f"{name}: training diverged (loss {loss}) in epoch {epoch} with {hps}; {advice}")


EpochHook = Callable[[int, float, int, float], None]   # (epoch, mean loss, work units, seconds)


def train_epochs(engine: Any, model: Any, epochs: int, start: int = 0, hp: dict | None = None,
                 advice: str = "lower --lr or raise --reg", on_epoch: EpochHook | None = None) -> list[float]:
    """Epochs start..epochs-1 of `engine` (a Trainer, or a job's engine of several); the mean
    loss of each. A NaN/inf loss or tag matrix stops with NumericalError naming `hp`."""
    losses = []
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        loss, n = engine.run_epoch(epoch)
        seconds = time.perf_counter() - t0
        mean = loss / max(n, 1)
        check_finite(model, mean, epoch, hp or {}, advice)
        losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean, n, seconds)
    return losses
