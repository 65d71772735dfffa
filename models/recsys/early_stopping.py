"""Early stopping on a validation metric: train until it stops improving, keep the best epoch.

A trainer calls `update(epoch, value)` after each epoch's validation (F1@5 for every
model here); it answers whether this epoch is the best so far (then the caller keeps a
copy of the weights: the best checkpoint) and `should_stop()` turns true after
max(`patience`, `patience_frac` × the best epoch) epochs without an improvement of more
than `min_delta`, or at `max_epochs`. The wait grows with the best epoch because late in
training improvements come slowly and a validation metric on a few thousand posts is
noisy: with a fixed patience, BPR models stopped at a fraction of the quality that longer
training reaches (measured in benchmarks/results/train.md). The state is JSON-able, so a
resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from models.errors import ModelError


@dataclass
class EarlyStopping:
    """Patience-based stopping; epochs count from 1 (the first finished epoch)."""

    patience: int = 10          # epochs without improvement before stopping (at least)
    patience_frac: float = 0.0  # ... or this fraction of the best epoch, when more
    max_epochs: int = 500       # a hard cap, whatever the metric does
    min_delta: float = 0.0      # an improvement must exceed this to count
    best: float = -math.inf     # best metric value seen
    best_epoch: int = 0         # the epoch that reached it (0: none yet)
    last_epoch: int = 0         # the last epoch reported

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ModelError(f"early stopping: patience must be >= 1, got {self.patience}")
        if self.max_epochs < 1:
            raise ModelError(f"early stopping: max_epochs must be >= 1, got {self.max_epochs}")
        if self.patience_frac < 0:
            raise ModelError(f"early stopping: patience_frac must be >= 0, got {self.patience_frac}")
        if self.min_delta < 0:
            raise ModelError(f"early stopping: min_delta must be >= 0, got {self.min_delta}")

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch's validation value; True when it is the new best (keep its weights).

        A NaN value never improves (a diverging model runs out of patience).
        """
        self.last_epoch = epoch
        if value == value and value > self.best + self.min_delta:
            self.best, self.best_epoch = float(value), epoch
            return True
        return False

    @property
    def wait(self) -> int:
        """Epochs without improvement that end training, at the current best epoch."""
        return max(self.patience, math.ceil(self.patience_frac * self.best_epoch))

    def should_stop(self) -> bool:
        return self.last_epoch >= self.max_epochs or self.last_epoch - self.best_epoch >= self.wait

    @property
    def capped(self) -> bool:
        """Whether training ended at `max_epochs` before the rule fired (the metric may still rise)."""
        return self.last_epoch >= self.max_epochs and self.last_epoch - self.best_epoch < self.wait

    @property
    def reason(self) -> str:
        """Why training stopped (or would stop now), for the log and model.json."""
        if self.last_epoch - self.best_epoch >= self.wait:
            return (f"no improvement of validation F1@5 for {self.wait} epochs; best epoch "
                    f"{self.best_epoch} ({self.best:.4f}) kept")
        return f"reached max_epochs {self.max_epochs}; best epoch {self.best_epoch} ({self.best:.4f}) kept"

    def to_json(self) -> dict:
        d = asdict(self)
        d["best"] = None if d["best"] == -math.inf else d["best"]
        return d

    @classmethod
    def from_json(cls, doc: dict) -> EarlyStopping:
        doc = dict(doc)
        doc["best"] = -math.inf if doc.get("best") is None else doc["best"]
        return cls(**doc)
