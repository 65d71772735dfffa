"""BPR training of the factorization models (Rendle et al. 2009; Nguyen et al. 2017, Alg. 1).

The step itself (gradients, the crowded-row step rule, the reference steps) is in
`bpr_step.py`; here are the settings, the negative sampling and the trainer.

`BPRTrainer` runs epochs over one partition of the posts. With `world > 1` (one trainer
per worker, posts partitioned by user) the user rows stay local and the tag tables, bias,
projections and the rows of items posted on several partitions are summed across workers
with one all-reduce per step (`TorchDistSync`), together with how many samples touched each
of them (the step rule's n), so N workers with batch B/N each take the same steps as one
worker with batch B.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.errors import ModelError
from models.recsys.bpr_step import (
    MAX_ROW_SAMPLES,
    Grads,
    apply_grads,
    bpr_grads,
    bpr_step_fused,
    cap_grads,
    row_scale,
    touch_counts,
)
from models.recsys.data import PostData
from models.recsys.distributed import TorchDistSync
from models.recsys.factorization import FactorizationModel
from models.recsys.trainer import Partition, Trainer, train_epochs

# Grids searched by `--tune` (per the paper's protocol: learning rate and L2 strength chosen
# on a validation split). The paper's exact grid values could not be checked offline.
LR_GRID = (0.01, 0.05, 0.1)
REG_GRID = (1e-5, 1e-4, 1e-3)


@dataclass
class BPRConfig:
    """Hyperparameters of one BPR run."""

    lr: float = 0.05  # α
    reg: float = 1e-4  # λ
    batch_size: int = 1024  # global samples per step (split over workers)
    epochs: int = 20
    seed: int = 0
    max_row_samples: int = MAX_ROW_SAMPLES  # C: a row's step is at most C samples' worth
    kernel: str = "torch"  # "torch": the batched step; "sgd": per-sample numba SGD (`sgd.py`); "auto": see `use_sgd`
    threads: int = 1       # per-sample SGD: Hogwild threads (1: deterministic)
    negatives: int = 1     # t- is the highest-scored of this many uniform draws (1: Algorithm 1; both kernels)


KERNELS = ("auto", "sgd", "torch")


def use_sgd(model: Any, cfg: BPRConfig, world: int) -> bool:
    """Whether `BPRTrainer.for_partition` hands `model` to the per-sample SGD trainer (`sgd_for`)."""
    return sgd_for(getattr(model, "spec", None), str(model.device), cfg, world)


def sgd_for(spec: Any, device: str, cfg: BPRConfig, world: int) -> bool:
    """Whether a model of `spec` (`factorization.Spec`; None: not a factorization model) on
    `device`, trained over `world` partitions, runs on the per-sample SGD trainer.

    "auto": for PITF and FM without content or +SN, on CPU, in one process (the per-sample
    kernel trains at Algorithm 1's rate and has nothing to synchronise across workers); the
    batched torch step for the content and social models, on GPUs and over several workers.
    """
    from models.recsys.sgd import supports_spec

    if cfg.kernel not in KERNELS:
        raise ModelError(f"unknown BPR kernel {cfg.kernel!r}; valid: {list(KERNELS)}")
    if cfg.kernel == "sgd":
        return True
    return cfg.kernel == "auto" and supports_spec(spec) and device == "cpu" and world == 1


# --------------------------------------------------------------------------- sampling


def sample_negatives(post: np.ndarray, pos_codes: np.ndarray, n_tags: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform t- per sample, redrawn while it is one of the post's tags.

    pos_codes: sorted `post * n_tags + tag` of all positive pairs of this partition.
    """
    neg = rng.integers(0, n_tags, len(post))
    todo = np.arange(len(post))
    for _ in range(1000):
        codes = post[todo] * n_tags + neg[todo]
        at = np.searchsorted(pos_codes, codes).clip(max=max(len(pos_codes) - 1, 0))
        bad = pos_codes[at] == codes if len(pos_codes) else np.zeros(len(todo), bool)
        todo = todo[bad]
        if not len(todo):
            return neg
        neg[todo] = rng.integers(0, n_tags, len(todo))
    raise ModelError("could not draw a negative tag in 1000 tries: a post carries nearly every tag")


@torch.no_grad()
def hardest_of(model: Any, post_vecs: list[torch.Tensor], rows: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """(B,) the candidate negative the model scores highest for each sample; cands (K, B)
    tag indices, post_vecs `model.block_vectors(inp)` of the step's distinct posts, rows (B,)
    each sample's row of them."""
    scores = torch.zeros(cands.shape, device=cands.device)
    for (tname, _), pv in zip(model.blocks(), post_vecs):
        scores += (model.params[tname][cands] * pv.index_select(0, rows)[None]).sum(-1)   # (K, B)
    if model.spec.has_bias:
        scores += model.params["bias"][cands]
    return cands.gather(0, scores.argmax(0, keepdim=True))[0]


# --------------------------------------------------------------------------- training


class BPRTrainer(Trainer):
    """BPR epochs over one partition of the posts (all of them when world == 1).

    total_pairs: training pairs over *all* partitions, so every worker takes the same
    number of steps per epoch (the collectives line up) and the global batch is
    cfg.batch_size whatever the number of workers. shared_item_slot (n_items,) int64:
    slot of each item whose posts span several partitions, else -1 (world > 1 only).
    """

    def __init__(self, model: FactorizationModel, data: PostData, cfg: BPRConfig, total_pairs: int,
                 rank: int = 0, world: int = 1, sync: TorchDistSync | None = None,
                 shared_item_slot: np.ndarray | None = None) -> None:
        if world > 1 and sync is None:
            raise ModelError("a trainer with world > 1 needs a sync (TorchDistSync)")
        self.model, self.data, self.cfg = model, data, cfg
        self.rank, self.world, self.sync = rank, world, sync
        self.shared_item_slot = shared_item_slot
        self.post, self.tag = data.pairs()
        self.pos_codes = np.sort(np.repeat(np.arange(len(data)), np.diff(data.indptr)) * data.n_tags + data.indices)
        self.n_steps = max(1, math.ceil(total_pairs / cfg.batch_size))
        dev = model.device
        self.shared_slot = None
        self.n_shared = 0
        if world > 1 and shared_item_slot is not None and "item" in model.params:
            self.shared_slot = torch.from_numpy(np.array(shared_item_slot, dtype=np.int64)).to(dev)
            self.n_shared = int(shared_item_slot.max(initial=-1)) + 1
            self.shared_rows = torch.as_tensor(np.flatnonzero(shared_item_slot >= 0)[
                np.argsort(shared_item_slot[shared_item_slot >= 0])], dtype=torch.int64, device=dev)

    unit = "samples"
    advice = "lower --lr or raise --reg"

    @classmethod
    def for_partition(cls, model: Any, data: PostData, cfg: Any, part: Partition | None = None) -> BPRTrainer:
        part = part or Partition()
        if use_sgd(model, cfg, part.world):
            from models.recsys.sgd import SGDTrainer

            return SGDTrainer(model, data, cfg, part.rank, part.world)
        total = cls.work_units(data) if part.total is None else part.total
        return cls(model, data, cfg, total, part.rank, part.world, part.sync, part.shared)

    @staticmethod
    def work_units(data: PostData) -> int:
        return len(data.pairs()[0])

    @classmethod
    def prepare(cls, model: Any, data: PostData) -> None:
        """Feature centres from all training posts (before workers copy the model's state)."""
        model.fit_centre(data.batch())

    @classmethod
    def shared_state(cls, model: Any, parts: list[PostData]) -> np.ndarray | None:
        """(n_items,) slot of each item posted on several partitions (its rows are synchronised), else -1."""
        if "item" not in model.params:
            return None
        seen = np.zeros((len(parts), model.params["item"].shape[0]), bool)
        for r, p in enumerate(parts):
            seen[r, p.item_index[p.item_index >= 0]] = True
        shared = seen.sum(0) > 1
        return np.where(shared, np.cumsum(shared) - 1, -1).astype(np.int64)

    @classmethod
    def describe(cls, model: Any, cfg: Any) -> dict[str, Any]:
        if use_sgd(model, cfg, 1):
            return {"lr": cfg.lr, "reg": cfg.reg, "kernel": "per-sample SGD", "dim": getattr(model, "dim", None)}
        return {"lr": cfg.lr, "reg": cfg.reg, "batch_size": cfg.batch_size, "dim": getattr(model, "dim", None),
                "kernel": "torch"}

    def owned_state(self) -> dict[str, Any]:
        """Rows this partition owns (its users, its unshared items) and, on rank 0, the shared tensors."""
        data, slot = self.data, self.shared_item_slot
        p = {k: v.detach().cpu() for k, v in self.model.params.items()}
        users = np.unique(data.user_index[data.user_index >= 0])
        out: dict[str, Any] = {"user": (users, p["user"][users].numpy())}
        if "item" in p:
            items = np.unique(data.item_index[data.item_index >= 0])
            if slot is not None:
                items = items[slot[items] < 0] if self.rank else np.union1d(items, np.flatnonzero(slot >= 0))
            out["item"] = (items, p["item"][items].numpy())
        if self.rank == 0:
            out.update({k: v.numpy() for k, v in p.items() if k not in ("user", "item")})
        return out

    @staticmethod
    def merge_states(model: Any, states: list[dict[str, Any]]) -> dict[str, Any]:
        params = model.params
        for part in states:
            for k, v in part.items():
                if isinstance(v, tuple):
                    idx, rows = v
                    params[k][torch.from_numpy(np.array(idx, dtype=np.int64))] = (
                        torch.from_numpy(np.array(rows)).to(params[k].device))
                else:
                    params[k].copy_(torch.from_numpy(np.array(v)))
        return {}

    @property
    def inp(self) -> dict[str, torch.Tensor]:
        """model.inputs of every local post, built on demand (not kept: a float32 copy per post)."""
        return self.model.inputs(self.data.batch())

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """One pass over this partition's pairs in a seeded order; (summed loss, samples)."""
        cfg, dev = self.cfg, self.model.device
        rng = np.random.default_rng([cfg.seed, epoch, self.rank])
        order = rng.permutation(len(self.post))
        loss_sum = torch.zeros((), device=dev)
        n = len(order)
        for s in range(self.n_steps):
            chunk = order[s * n // self.n_steps:(s + 1) * n // self.n_steps]
            post = self.post[chunk]
            neg = sample_negatives(post, self.pos_codes, self.data.n_tags, rng)
            distinct, rows = np.unique(post, return_inverse=True)  # project each post once
            inp = self.model.inputs(self.data.batch(distinct))  # this step's posts only
            rows_t = torch.as_tensor(rows.reshape(-1), device=dev)
            pos_t = torch.as_tensor(self.tag[chunk], device=dev)
            neg_t = torch.as_tensor(neg, device=dev)
            post_vecs = None
            if cfg.negatives > 1:   # adaptive oversampling, as the per-sample kernel does
                draws = [neg, *(sample_negatives(post, self.pos_codes, self.data.n_tags, rng)
                                for _ in range(cfg.negatives - 1))]
                cands = torch.as_tensor(np.stack(draws), device=dev)
                with torch.no_grad():   # projected once: the step's gradients use the same vectors
                    post_vecs = self.model.block_vectors(inp)
                neg_t = hardest_of(self.model, post_vecs, rows_t, cands)
            if self.world == 1:
                loss_sum += bpr_step_fused(self.model, inp, pos_t, neg_t, cfg.lr, cfg.reg, rows_t,
                                           cfg.max_row_samples, post_vecs)
            else:
                loss_sum += self._synced_step(inp, pos_t, neg_t, rows_t, post_vecs)
        return float(loss_sum), n

    @torch.no_grad()
    def _synced_step(self, inp: dict[str, torch.Tensor], pos: torch.Tensor, neg: torch.Tensor,
                     rows: torch.Tensor | None = None, post_vecs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Local rows updated locally; shared parameters' gradients summed across workers."""
        model, cfg = self.model, self.cfg
        cap = cfg.max_row_samples
        loss, grads = bpr_grads(model, inp, pos, neg, cfg.reg, rows, post_vecs)
        counts = touch_counts(model, inp, pos, neg, rows)
        # Users live on one worker: local counts are global counts.
        local: Grads = cap_grads({"user": grads.pop("user")}, counts, cap) if "user" in grads else {}
        dense: dict[str, torch.Tensor] = {}
        for name, gr in grads.items():
            if name == "item":
                continue
            if isinstance(gr, tuple):  # tag tables, bias: densify for the all-reduce
                dense[name] = torch.zeros_like(model.params[name]).index_add_(0, gr[0], gr[1])
            else:
                dense[name] = gr
            dense[f"n:{name}"] = counts[name].reshape(-1).clone()  # summed with the gradients
        if "item" in grads:
            idx, vals = grads["item"]
            slot = self.shared_slot[idx] if self.shared_slot is not None else torch.full_like(idx, -1)
            mine = (slot < 0).to(vals.dtype)[:, None]  # masks by multiplication, as in bpr_grads
            local.update(cap_grads({"item": (idx, vals * mine)}, counts, cap))  # unshared items: local counts
            if self.n_shared:
                s_idx = slot.clamp_min(0)
                dense["item_shared"] = torch.zeros(self.n_shared, model.dim, device=idx.device).index_add_(
                    0, s_idx, vals * (1 - mine))
                # samples per shared item on this worker (rows of `inp`, or of `rows`, that name it)
                item_idx = inp["item"] if rows is None else inp["item"].index_select(0, rows)
                assert self.shared_slot is not None   # n_shared > 0 only when the slots were given
                it_slot = self.shared_slot[item_idx.clamp_min(0)]
                dense["n:item_shared"] = torch.zeros(self.n_shared, device=idx.device).index_add_(
                    0, it_slot.clamp_min(0), ((item_idx >= 0) & (it_slot >= 0)).to(vals.dtype))
        names = sorted(dense)
        self.sync.allreduce_([dense[k] for k in names])  # type: ignore[union-attr]
        for name in [k for k in names if not k.startswith("n:")]:  # the rule, on global counts
            g = dense[name]
            scale = row_scale(dense.pop(f"n:{name}"), cap)  # (rows,); (1,) for a projection
            dense[name] = g * scale.reshape((-1,) + (1,) * (g.ndim - 1))
        if "item_shared" in dense:
            model.params["item"].index_add_(0, self.shared_rows, dense.pop("item_shared"), alpha=-cfg.lr)
        apply_grads(model, {**local, **dense}, cfg.lr)
        return loss


def train_bpr(model: FactorizationModel, data: PostData, cfg: BPRConfig, start_epoch: int = 0,
              on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Single-process BPR for cfg.epochs epochs; on_epoch(epoch, mean loss) after each.

    From epoch 0 the feature centres are first fitted on `data` (`fit_centre`).

    The same `BPRTrainer` a one-worker Ray job runs, so the two give identical factors.
    """
    if start_epoch == 0:  # a resumed model keeps the centres it was trained with
        BPRTrainer.prepare(model, data)
    trainer = BPRTrainer.for_partition(model, data, cfg)
    hook = (lambda epoch, mean, n, s: on_epoch(epoch, mean)) if on_epoch is not None else None
    return train_epochs(trainer, model, cfg.epochs, start_epoch, BPRTrainer.describe(model, cfg),
                        BPRTrainer.advice, hook)
