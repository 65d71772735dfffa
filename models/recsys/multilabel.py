"""The social multi-label network (Salehi & Kaitha) and its visual-only ablation.

    image features z (512, VGG16 standing in for AlexNet) -> FC + ReLU + Dropout ─┐
    node2vec user vector s (d)                            -> FC + ReLU + Dropout ─┴ concat
    -> linear to all T tags -> sigmoid, trained with binary cross-entropy,
    SGD lr 0.01, momentum 0.9, dropout 0.5, batch 450 (the paper's settings).

`visual-multilabel` drops the user branch. Scores as one inner product
(docs/interfaces.md): post vector = [last hidden layer, 1], tag matrix = [W_out, b_out];
sigmoid is monotone, so ranking by the logit is ranking by the probability.

Two choices make the paper's settings train on these features and any number of tags
(diagnosed on the synthetic archive; numbers in the README):

- **Inputs at unit scale per coordinate**: each feature vector is L2-normalised (zero where
  missing, as in the factorization models) and multiplied by √d. The paper feeds raw AlexNet
  activations, O(1) per coordinate, which is what `nn.Linear`'s default init assumes; a unit
  vector's coordinates are ~1/√d, so the hidden layer would start √d (22× at d = 512) too
  small and SGD at lr 0.01 would barely move it.
- **A per-post loss** (`tag_reduction="sum"`): binary cross-entropy summed over the T tags,
  averaged over the posts of the batch. torch's default mean over the tags as well divides
  each tag's gradient by T: at T = 72 lr 0.01 would act as 1.4e-4, at T = 2000 as 5e-6.

Training (`MultiLabelTrainer`) is data-parallel: with `world > 1` each worker holds a shard
of the posts, and in each step every worker adds up the gradient of its posts' summed loss;
one all-reduce (`distributed.TorchDistSync`, the same process group as BPR) sums the gradients and
the post counts, and every worker divides by the global count and takes the same SGD
step, so the replicas stay identical. Which step a post falls in and its dropout mask are
functions of (seed, epoch, post key) only — a counter-based hash, not a per-worker random
stream — so N workers draw the same global batches and masks as one worker: they differ
from one worker only by the order in which floating-point gradients are added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ModelError
from models.recsys.data import PostData
from models.recsys.factorization import _tensor, l2_normalise
from models.recsys.trainer import Partition, Trainer, train_epochs
from models.views import FEATURE_DIMS

NAMES = ("social-multilabel", "visual-multilabel")
TAG_REDUCTIONS = ("sum", "mean")


def features_of(name: str) -> tuple[str, ...]:
    """Store features a multi-label net reads: the image, and the user vector for the social one."""
    return ("ic", "sn") if name == "social-multilabel" else ("ic",)


class _Net(nn.Module):
    """The layers; dropout is applied by the trainer with hashed masks (`dropout_keep`)."""

    def __init__(self, n_tags: int, sn_dim: int, hidden: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(FEATURE_DIMS["ic"], hidden), nn.ReLU())
        self.user = nn.Sequential(nn.Linear(sn_dim, hidden), nn.ReLU()) if sn_dim else None
        self.out = nn.Linear(hidden * (2 if sn_dim else 1), n_tags)

    def hidden(self, ic: torch.Tensor, sn: torch.Tensor | None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n, H) or (n, 2H) last hidden layer; `keep` (same shape): inverted-dropout factors."""
        h = self.image(ic)  # (n, hidden)
        if self.user is not None:
            h = torch.cat([h, self.user(sn)], 1)  # (n, 2 hidden)
        return h if keep is None else h * keep


class MultiLabelNet:
    """`social-multilabel` (image + user branches) or `visual-multilabel` (image only)."""

    kind = "multilabel"

    def __init__(self, name: str, n_tags: int, sn_dim: int = 0, hidden: int = 512, dropout: float = 0.5,
                 seed: int = 0, n_users: int = 0, n_items: int = 0, device: str = "cpu") -> None:
        if name not in NAMES:
            raise ModelError(f"unknown multi-label model {name!r}; valid: {', '.join(NAMES)}")
        self.name, self.social = name, name == "social-multilabel"
        if self.social and sn_dim <= 0:
            raise ModelError(f"{name} needs the user vector dim (sn_dim > 0, the store's user/node2vec view)")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"{name}: dropout must be in [0, 1), got {dropout}")
        self.n_tags, self.hidden_dim, self.dropout, self.seed = n_tags, hidden, dropout, seed
        self.sn_dim = sn_dim if self.social else 0
        self.n_users, self.n_items = n_users, n_items  # vocabulary sizes, kept for the saved model
        torch.manual_seed(seed)
        self.net = _Net(n_tags, self.sn_dim, hidden).to(device)

    @property
    def features(self) -> tuple[str, ...]:
        return features_of(self.name)

    @property
    def hyperparameters(self) -> dict:
        return {"n_tags": self.n_tags, "sn_dim": self.sn_dim, "hidden": self.hidden_dim,
                "dropout": self.dropout, "seed": self.seed, "n_users": self.n_users, "n_items": self.n_items}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def width(self) -> int:
        """Units of the last hidden layer (the post vector without its constant 1)."""
        return self.net.out.in_features

    def inputs(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """{"ic": (n, 512), "sn": (n, d)}: unit vectors times √d (module docstring), zero where missing."""
        n = len(batch["user_index"])
        out = {}
        for f in self.features:
            if f not in batch:
                raise ModelError(f"{self.name} needs batch key {f!r} ({f} features) and has_{f}")
            x = _tensor(batch[f], torch.float32, self.device)
            want = FEATURE_DIMS["ic"] if f == "ic" else self.sn_dim
            if x.shape != (n, want):
                raise ModelError(f"{self.name}: batch[{f!r}] has shape {tuple(x.shape)}, expected ({n}, {want})")
            has = _tensor(batch.get(f"has_{f}", np.ones(n, bool)), torch.bool, self.device)
            out[f] = l2_normalise(x, has) * math.sqrt(want)
        return out

    def logits(self, inp: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        """(n, T) tag logits of `inputs(...)`; keep: dropout factors (training) or None (eval)."""
        return self.net.out(self.net.hidden(inp["ic"], inp.get("sn"), keep))

    def tag_matrix(self) -> np.ndarray:
        """(T, H+1) float32: [W_out, b_out]."""
        o = self.net.out
        return torch.cat([o.weight, o.bias[:, None]], 1).detach().float().cpu().numpy()

    @torch.no_grad()
    def post_vectors(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, H+1) float32: [last hidden layer (no dropout), 1]."""
        self.net.eval()
        inp = self.inputs(batch)
        h = self.net.hidden(inp["ic"], inp.get("sn"))
        return torch.cat([h, torch.ones(len(h), 1, device=h.device)], 1).float().cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        want = self.net.state_dict()
        for k, v in want.items():
            if k not in state:
                raise ModelError(f"{self.name}: weights lack tensor {k!r}")
            if tuple(state[k].shape) != tuple(v.shape):
                raise ModelError(f"{self.name}: tensor {k!r} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        self.net.load_state_dict({k: torch.as_tensor(state[k]) for k in want})


# --------------------------------------------------------------------------- hashed randomness


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping): a counter-based random stream."""
    x = np.asarray(x, np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _salt(seed: int, epoch: int, stream: int) -> np.uint64:
    return _mix(np.array([(seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFF) << 8 | stream], np.uint64))[0]


def step_of(keys: np.ndarray, seed: int, epoch: int, n_steps: int) -> np.ndarray:
    """(n,) int64 step of each post in this epoch: uniform over n_steps, hashed from its key."""
    with np.errstate(over="ignore"):
        return (_mix(np.asarray(keys, np.int64).astype(np.uint64) + _salt(seed, epoch, 1))
                % np.uint64(n_steps)).astype(np.int64)


def dropout_keep(keys: np.ndarray, width: int, p: float, seed: int, epoch: int) -> np.ndarray:
    """(n, width) float32 inverted-dropout factors (0 or 1/(1-p)) of posts `keys` in `epoch`."""
    k = np.asarray(keys, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        counters = k[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)[None, :]
        u = (_mix(counters + _salt(seed, epoch, 2)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u >= p, 1.0 / (1.0 - p), 0.0).astype(np.float32)


# --------------------------------------------------------------------------- training


@dataclass
class MultiLabelConfig:
    """SGD settings of the multi-label networks (defaults: the paper's)."""

    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 450  # posts per step over all workers (on average: steps are hashed)
    epochs: int = 30
    seed: int = 0
    tag_reduction: str = "sum"  # "sum": per-post loss (module docstring); "mean": torch's default


class MultiLabelTrainer(Trainer):
    """SGD epochs over one shard of the posts (all of them when world == 1).

    data: a PostData; keys (n,) int64: each post's global key (its row in the whole
    training set), which fixes its step and dropout mask; default 0..n-1. total_posts: posts
    over all shards, so every worker takes the same number of steps (the collectives line up).
    sync: an object with `allreduce_(list of tensors)` summing in place (distributed.TorchDistSync).
    """

    def __init__(self, model: MultiLabelNet, data: PostData, cfg: MultiLabelConfig, total_posts: int | None = None,
                 rank: int = 0, world: int = 1, sync: Any = None, keys: np.ndarray | None = None) -> None:
        if world > 1 and sync is None:
            raise ModelError("a trainer with world > 1 needs a sync (distributed.TorchDistSync)")
        if cfg.tag_reduction not in TAG_REDUCTIONS:
            raise ModelError(f"tag_reduction {cfg.tag_reduction!r} is not one of {TAG_REDUCTIONS}")
        if cfg.batch_size < 1 or cfg.lr <= 0 or not 0 <= cfg.momentum < 1:
            raise ModelError(f"multi-label SGD needs batch_size >= 1, lr > 0, 0 <= momentum < 1; got "
                             f"batch_size={cfg.batch_size}, lr={cfg.lr}, momentum={cfg.momentum}")
        self.model, self.data, self.cfg, self.rank, self.world, self.sync = model, data, cfg, rank, world, sync
        self.keys = np.arange(len(data), dtype=np.int64) if keys is None else np.asarray(keys, np.int64)
        if len(self.keys) != len(data):
            raise ModelError(f"keys has {len(self.keys)} entries for {len(data)} posts")
        self.n_steps = max(1, math.ceil((len(data) if total_posts is None else total_posts) / cfg.batch_size))
        self.named = list(model.net.named_parameters())
        self.opt = torch.optim.SGD([p for _, p in self.named], lr=cfg.lr, momentum=cfg.momentum)

    unit = "posts"
    advice = "lower --ml-lr"

    @classmethod
    def for_partition(cls, model: Any, data: PostData, cfg: Any, part: Partition | None = None) -> MultiLabelTrainer:
        part = part or Partition()
        total = cls.work_units(data) if part.total is None else part.total
        return cls(model, data, cfg, total, part.rank, part.world, part.sync, part.keys)

    @staticmethod
    def work_units(data: PostData) -> int:
        return len(data)

    @classmethod
    def describe(cls, model: Any, cfg: Any) -> dict[str, Any]:
        return {"lr": cfg.lr, "momentum": cfg.momentum, "batch_size": cfg.batch_size,
                "tag_reduction": cfg.tag_reduction, "hidden": model.hidden_dim, "dropout": model.dropout}

    def owned_state(self) -> dict[str, Any]:
        """The replicas are identical: rank 0 sends the weights and the optimizer state."""
        if self.rank:
            return {}
        return {"net": self.model.state_dict(), "optimizer": self.optimizer_state()}

    @staticmethod
    def merge_states(model: Any, states: list[dict[str, Any]]) -> dict[str, Any]:
        model.load_state_dict(states[0]["net"])
        return states[0]["optimizer"]

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this shard; (summed per-post loss, posts)."""
        step = step_of(self.keys, self.cfg.seed, epoch, self.n_steps)
        order = np.argsort(step, kind="stable")
        bounds = np.searchsorted(step[order], np.arange(self.n_steps + 1))
        self.model.net.train()
        total = 0.0
        for s in range(self.n_steps):
            total += self.step(order[bounds[s]:bounds[s + 1]], epoch)
        return total, len(self.data)

    def step(self, rows: np.ndarray, epoch: int) -> float:
        """One synchronised SGD step on this worker's posts `rows` (maybe none); their summed loss."""
        model, cfg, dev = self.model, self.cfg, self.model.device
        for _, p in self.named:
            p.grad = None
        loss = 0.0
        if len(rows):
            inp = model.inputs(self.data.batch(rows))
            keep = torch.from_numpy(dropout_keep(self.keys[rows], model.width, model.dropout, cfg.seed, epoch)).to(dev)
            target = torch.zeros(len(rows), model.n_tags, device=dev)  # (b, T) multi-hot
            r, t = self.data.tag_entries(rows)
            target[torch.as_tensor(r, device=dev), torch.as_tensor(t, device=dev)] = 1.0
            summed = F.binary_cross_entropy_with_logits(model.logits(inp, keep), target, reduction="sum")
            summed.backward()
            loss = float(summed.detach())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.named]
        count = torch.tensor([float(len(rows))], device=dev)
        if self.sync is not None:
            self.sync.allreduce_(grads + [count])  # sums: every worker now holds the global ones
        per_tag = model.n_tags if cfg.tag_reduction == "mean" else 1
        n = float(count[0])
        if n > 0:  # every worker sees the same count, so all step or all skip
            for (_, p), g in zip(self.named, grads):
                p.grad = g.div_(n * per_tag)
            self.opt.step()
        return loss / per_tag

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """{"momentum.<param>": buffer} (CPU copies); empty before the first step."""
        out = {}
        for name, p in self.named:
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{name}"] = buf.detach().cpu().clone().contiguous()
        return out

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore `optimizer_state()`'s buffers (a resumed run then equals an uninterrupted one)."""
        for name, p in self.named:
            buf = state.get(f"momentum.{name}")
            if buf is None:
                continue
            buf = torch.as_tensor(np.array(buf)) if not torch.is_tensor(buf) else buf
            if tuple(buf.shape) != tuple(p.shape):
                raise ModelError(f"{self.model.name}: optimizer state 'momentum.{name}' has shape "
                                 f"{tuple(buf.shape)}, expected {tuple(p.shape)}; delete the checkpoint")
            self.opt.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=p.dtype).clone()


def train_multilabel(model: MultiLabelNet, data: Any, epochs: int, lr: float = 0.01, momentum: float = 0.9,
                     batch_size: int = 450, seed: int = 0, start_epoch: int = 0,
                     on_epoch: Callable[[int, float], None] | None = None, tag_reduction: str = "sum",
                     optimizer_state: dict[str, Any] | None = None) -> list[float]:
    """Single-process SGD on `data` (a PostData) for epochs; returns the mean loss per post.

    tag_reduction: "sum" (the per-post loss, as `jobs.train` and `MultiLabelConfig` use) or
    "mean" (torch's default; "mean" at lr x equals "sum" at lr x/T).
    optimizer_state: momentum buffers to resume from.
    """
    cfg = MultiLabelConfig(lr=lr, momentum=momentum, batch_size=batch_size, epochs=epochs, seed=seed,
                           tag_reduction=tag_reduction)
    trainer = MultiLabelTrainer.for_partition(model, data, cfg)
    if optimizer_state:
        trainer.load_optimizer_state(optimizer_state)
    hook = (lambda epoch, mean, n, s: on_epoch(epoch, mean)) if on_epoch is not None else None
    return train_epochs(trainer, model, epochs, start_epoch, MultiLabelTrainer.describe(model, cfg),
                        MultiLabelTrainer.advice, hook)
