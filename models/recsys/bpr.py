"""BPR training of the factorization models (Rendle et al. 2009; Nguyen et al. 2017, Alg. 1).

Algorithm 1 draws a training (post, t+), a t- that is not among the post's tags, and moves
every parameter θ touched by x = y(post, t+) - y(post, t-) by
`θ <- θ + α (σ(-x) ∂x/∂θ - λ θ)`. Here a mini-batch applies B such updates at once:
gradients of the *summed* per-sample loss `-ln σ(x) + λ/2 Σ_touched ||θ||²`, so a row
touched twice gets two updates and the dense projections (touched by every sample) get B
regularisation terms — the same per-sample semantics as the paper, batched.

Three steps with one meaning, tested against each other:

- `bpr_step_fused`  — the training step: hand-written gradients, one gather per table,
  `index_add_` scatter, no autograd graph, each distinct post's features projected once
  per step (`rows`); runs on CPU and CUDA.
- `bpr_step_autograd` — the plain torch way (dense autograd gradients); the benchmark's
  reference.
- `bpr_step_reference` — slow and obviously correct: one sample at a time through
  `score_reference` (the papers' formulas spelled out) and autograd.

`BPRTrainer` runs epochs over one partition of the posts. With `world > 1` (one trainer
per worker, posts partitioned by user) the user rows stay local and the tag tables, bias,
projections and the rows of items posted on several partitions are summed across workers
with one all-reduce per step (`TorchDistSync`), so N workers with batch B/N each take the
same steps as one worker with batch B.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.errors import ModelError, NumericalError
from models.recsys.factorization import FactorizationModel, score_reference

# Grids searched by `--tune` (per the paper's protocol: learning rate and L2 strength chosen
# on a validation split). The paper's exact grid values could not be checked offline.
LR_GRID = (0.01, 0.05, 0.1)
REG_GRID = (1e-5, 1e-4, 1e-3)

Grads = dict[str, "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]  # dense, or (row idx, row values)


@dataclass
class BPRConfig:
    """Hyperparameters of one BPR run."""

    lr: float = 0.05  # α
    reg: float = 1e-4  # λ
    batch_size: int = 1024  # global samples per step (split over workers)
    epochs: int = 20
    seed: int = 0


# --------------------------------------------------------------------------- data


@dataclass
class PostData:
    """Posts as arrays: indices into the training vocabularies, tags as CSR, features per post.

    user_index, item_index int64 (P,) (-1 unseen); indptr (P+1,), indices (nnz,) tag indices;
    features {"ic": (P, 512), "od": (P, 80), "sn": (P, d)} float32 with has {"ic": (P,) bool}.
    """

    user_index: np.ndarray
    item_index: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    n_tags: int
    features: dict[str, np.ndarray] = field(default_factory=dict)
    has: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_lists(cls, user_index: np.ndarray, item_index: np.ndarray, tags: Sequence[np.ndarray],
                   n_tags: int, features: dict[str, np.ndarray] | None = None,
                   has: dict[str, np.ndarray] | None = None) -> PostData:
        lens = np.fromiter((len(t) for t in tags), np.int64, len(tags))
        indptr = np.zeros(len(tags) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        indices = np.concatenate([np.asarray(t, np.int64) for t in tags]) if len(tags) else np.zeros(0, np.int64)
        feats = dict(features or {})
        has = dict(has or {})
        for k, v in feats.items():
            has.setdefault(k, np.ones(len(v), bool))
        return cls(np.asarray(user_index, np.int64), np.asarray(item_index, np.int64), indptr, indices,
                   n_tags, feats, has)

    def __len__(self) -> int:
        return len(self.user_index)

    def batch(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The docs/interfaces.md batch dict for these posts (all when rows is None)."""
        sel = (lambda a: a) if rows is None else (lambda a: a[rows])
        out = {"user_index": sel(self.user_index), "item_index": sel(self.item_index)}
        for k, v in self.features.items():
            out[k], out[f"has_{k}"] = sel(v), sel(self.has[k])
        return out

    def subset(self, rows: np.ndarray) -> PostData:
        """The posts `rows` (int array), tags and features included."""
        rows = np.asarray(rows, np.int64)
        lens = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        take = (np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in rows]) if len(rows)
                else np.zeros(0, np.int64))
        return PostData(self.user_index[rows], self.item_index[rows], indptr,
                        self.indices[np.asarray(take, np.int64)], self.n_tags,
                        {k: v[rows] for k, v in self.features.items()}, {k: v[rows] for k, v in self.has.items()})

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(post, t+) of every training pair, posts tagged with every tag left out (no t- exists)."""
        lens = np.diff(self.indptr)
        post = np.repeat(np.arange(len(self), dtype=np.int64), lens)
        ok = np.repeat(lens < self.n_tags, lens)
        return post[ok], self.indices[ok]


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


# --------------------------------------------------------------------------- steps


def bpr_grads(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
              neg: torch.Tensor, reg: float, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, Grads]:
    """(summed BPR loss, gradients) for B samples (post, pos[b], neg[b]); no autograd.

    inp: `model.inputs(...)` of the batch's posts: one row per sample (rows=None), or one
    row per *distinct* post with rows (B,) naming each sample's post — then each post's
    features are projected once and its samples' gradients summed before the W gradient,
    so the cost of the (d × k) projections scales with distinct posts, not samples.
    Row tables come back as (idx, values) pairs to scatter-add, dense parameters as tensors.
    """
    p = model.params
    blocks = model.blocks()
    post_vecs = model.block_vectors(inp)  # [(n_posts, k)]
    if rows is not None:
        post_vecs = [pv.index_select(0, rows) for pv in post_vecs]  # [(B, k)]
    x = torch.zeros(len(pos), device=pos.device)
    diffs = []
    for (tname, _), pv in zip(blocks, post_vecs):
        tp, tn = p[tname].index_select(0, pos), p[tname].index_select(0, neg)  # (B, k) each
        diffs.append((tp, tn))
        x = x + (pv * (tp - tn)).sum(1)
    if model.spec.has_bias:
        bp, bn = p["bias"][pos], p["bias"][neg]
        x = x + bp - bn
    loss = F.softplus(-x).sum()  # -ln σ(x)
    g = torch.sigmoid(-x)[:, None]  # (B, 1): -dloss/dx
    grads: Grads = {}
    comp_grad: dict[str, torch.Tensor] = {}
    idx2 = torch.cat([pos, neg])
    for (tname, comps), pv, (tp, tn) in zip(blocks, post_vecs, diffs):
        gp = g * pv
        grads[tname] = (idx2, torch.cat([-gp + reg * tp, gp + reg * tn]))
        d_post = -g * (tp - tn)  # dloss / d(post-side vector), (B, k)
        for c in comps:
            comp_grad[c] = d_post
    if model.spec.has_bias:
        grads["bias"] = (idx2, torch.cat([-g[:, 0] + reg * bp, g[:, 0] + reg * bn]))
    for c, d in comp_grad.items():
        if c in ("user", "item"):
            idx = inp[c] if rows is None else inp[c].index_select(0, rows)  # (B,)
            # Unseen (-1) rows add a zero update to row 0: masking by multiplication keeps
            # the step free of data-dependent shapes (no host sync on CUDA).
            keep = (idx >= 0).to(d.dtype)[:, None]
            idx = idx.clamp_min(0)
            grads[c] = (idx, (d + reg * p[c].index_select(0, idx)) * keep)
        else:
            if rows is not None:  # sum each post's samples: (n_posts, k)
                d = torch.zeros(len(inp[c]), d.shape[1], device=d.device, dtype=d.dtype).index_add_(0, rows, d)
            w = p[f"W_{c}"]
            grads[f"W_{c}"] = inp[c].T @ d + (len(pos) * reg) * w  # (d, k)
    return loss, grads


def apply_grads(model: FactorizationModel, grads: Grads, lr: float) -> None:
    """θ <- θ - lr * grad, scatter-adding row gradients (repeated rows add up)."""
    for name, gr in grads.items():
        if isinstance(gr, tuple):
            model.params[name].index_add_(0, gr[0], gr[1], alpha=-lr)
        else:
            model.params[name].add_(gr, alpha=-lr)


@torch.no_grad()
def bpr_step_fused(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                   neg: torch.Tensor, lr: float, reg: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """One BPR step in place (see `bpr_grads` for rows); returns the summed loss (0-d, not synchronised)."""
    loss, grads = bpr_grads(model, inp, pos, neg, reg, rows)
    apply_grads(model, grads, lr)
    return loss


def _touched_reg(model: FactorizationModel, params: dict[str, torch.Tensor], inp: dict[str, torch.Tensor],
                 b: int, t_pos: int, t_neg: int) -> torch.Tensor:
    """Σ ||θ||² over the parameters sample b touches (Algorithm 1's regulariser)."""
    r = torch.zeros(())
    for name in ("user", "item"):
        if name in params and int(inp[name][b]) >= 0:
            r = r + params[name][int(inp[name][b])].pow(2).sum()
    for name, t in params.items():
        if name.startswith("W_"):
            r = r + t.pow(2).sum()
        elif name.startswith("tag") or name == "bias":
            r = r + t[t_pos].pow(2).sum() + t[t_neg].pow(2).sum()
    return r


def bpr_step_reference(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                       neg: torch.Tensor, lr: float, reg: float) -> float:
    """Slow, obviously correct: the per-sample loss from the formulas, autograd, one update."""
    params = {k: v.detach().cpu().clone().requires_grad_(True) for k, v in model.params.items()}
    cpu_inp = {k: v.cpu() for k, v in inp.items()}
    total = torch.zeros(())
    for b in range(len(pos)):
        tp, tn = int(pos[b]), int(neg[b])
        x = score_reference(model, cpu_inp, b, tp, params) - score_reference(model, cpu_inp, b, tn, params)
        total = total - F.logsigmoid(x) + reg / 2 * _touched_reg(model, params, cpu_inp, b, tp, tn)
    total.backward()
    with torch.no_grad():
        for k, v in params.items():
            grad = v.grad if v.grad is not None else torch.zeros_like(v)  # untouched table
            model.params[k].copy_((v - lr * grad).to(model.device))
    return float(total.detach())


def bpr_step_autograd(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                      neg: torch.Tensor, lr: float, reg: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The plain torch step: vectorised forward, autograd (dense gradients), SGD update."""
    params = {k: v.requires_grad_(True) for k, v in model.params.items()}
    blocks = model.blocks()
    x = torch.zeros(len(pos), device=pos.device)
    r = torch.zeros((), device=pos.device)
    if rows is not None:  # per-sample view of per-post inputs
        inp = {k: v.index_select(0, rows) for k, v in inp.items()}
    for (tname, _), pv in zip(blocks, model.block_vectors(inp)):
        tp, tn = params[tname][pos], params[tname][neg]
        x = x + (pv * (tp - tn)).sum(1)
        r = r + tp.pow(2).sum() + tn.pow(2).sum()
    if model.spec.has_bias:
        x = x + params["bias"][pos] - params["bias"][neg]
        r = r + params["bias"][pos].pow(2).sum() + params["bias"][neg].pow(2).sum()
    for name in ("user", "item"):
        if name in params:
            idx = inp[name][inp[name] >= 0]
            r = r + params[name][idx].pow(2).sum()
    for name, t in params.items():
        if name.startswith("W_"):
            r = r + len(pos) * t.pow(2).sum()
    loss = F.softplus(-x).sum()
    (loss + reg / 2 * r).backward()
    with torch.no_grad():
        for v in params.values():
            if v.grad is not None:  # a table no sample touched has no gradient
                v.sub_(lr * v.grad)
            v.grad = None
            v.requires_grad_(False)
    return loss.detach()


# --------------------------------------------------------------------------- training


class TorchDistSync:
    """Sums tensors across workers with torch.distributed (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, init_method: str, rank: int, world: int, backend: str = "gloo",
                 timeout_s: float = 300.0) -> None:
        import datetime

        import torch.distributed as dist

        self.dist = dist
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def allreduce_(self, tensors: list[torch.Tensor]) -> None:
        """In-place sum of every tensor across workers, one collective for all of them."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.dist.all_reduce(flat)
        at = 0
        for t in tensors:
            t.copy_(flat[at:at + t.numel()].view_as(t))
            at += t.numel()

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class BPRTrainer:
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
        self.post, self.tag = data.pairs()
        self.pos_codes = np.sort(np.repeat(np.arange(len(data)), np.diff(data.indptr)) * data.n_tags + data.indices)
        self.n_steps = max(1, math.ceil(total_pairs / cfg.batch_size))
        self.inp = model.inputs(data.batch())  # every local post, on the model's device
        dev = model.device
        self.shared_slot = None
        self.n_shared = 0
        if world > 1 and shared_item_slot is not None and "item" in model.params:
            self.shared_slot = torch.from_numpy(np.array(shared_item_slot, dtype=np.int64)).to(dev)
            self.n_shared = int(shared_item_slot.max(initial=-1)) + 1
            self.shared_rows = torch.as_tensor(np.flatnonzero(shared_item_slot >= 0)[
                np.argsort(shared_item_slot[shared_item_slot >= 0])], dtype=torch.int64, device=dev)

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
            distinct_t = torch.as_tensor(distinct, device=dev)
            inp = {k: v.index_select(0, distinct_t) for k, v in self.inp.items()}
            rows_t = torch.as_tensor(rows.reshape(-1), device=dev)
            pos_t = torch.as_tensor(self.tag[chunk], device=dev)
            neg_t = torch.as_tensor(neg, device=dev)
            if self.world == 1:
                loss_sum += bpr_step_fused(self.model, inp, pos_t, neg_t, cfg.lr, cfg.reg, rows_t)
            else:
                loss_sum += self._synced_step(inp, pos_t, neg_t, rows_t)
        return float(loss_sum), n

    @torch.no_grad()
    def _synced_step(self, inp: dict[str, torch.Tensor], pos: torch.Tensor, neg: torch.Tensor,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Local rows updated locally; shared parameters' gradients summed across workers."""
        model, cfg = self.model, self.cfg
        loss, grads = bpr_grads(model, inp, pos, neg, cfg.reg, rows)
        local: Grads = {"user": grads.pop("user")} if "user" in grads else {}
        dense: dict[str, torch.Tensor] = {}
        for name, gr in grads.items():
            if name == "item":
                continue
            if isinstance(gr, tuple):  # tag tables, bias: densify for the all-reduce
                dense[name] = torch.zeros_like(model.params[name]).index_add_(0, gr[0], gr[1])
            else:
                dense[name] = gr
        if "item" in grads:
            idx, vals = grads["item"]
            slot = self.shared_slot[idx] if self.shared_slot is not None else torch.full_like(idx, -1)
            mine = (slot < 0).to(vals.dtype)[:, None]  # masks by multiplication, as in bpr_grads
            local["item"] = (idx, vals * mine)
            if self.n_shared:
                dense["item_shared"] = torch.zeros(self.n_shared, model.dim, device=idx.device).index_add_(
                    0, slot.clamp_min(0), vals * (1 - mine))
        names = sorted(dense)
        self.sync.allreduce_([dense[k] for k in names])  # type: ignore[union-attr]
        if "item_shared" in dense:
            model.params["item"].index_add_(0, self.shared_rows, dense.pop("item_shared"), alpha=-cfg.lr)
        apply_grads(model, {**local, **dense}, cfg.lr)
        return loss


def check_finite(model: FactorizationModel | Any | None, loss: float, epoch: int, hp: dict) -> None:
    """NumericalError naming the hyperparameters when the loss (or a tag factor) is NaN/inf."""
    bad = not math.isfinite(loss)
    if model is not None and not bad:
        bad = not bool(torch.isfinite(torch.as_tensor(model.tag_matrix())).all())
    if bad:
        name = getattr(model, "name", "model")
        hps = ", ".join(f"{k}={v}" for k, v in hp.items())
        raise NumericalError(f"{name}: training diverged (loss {loss}) in epoch {epoch} with {hps}; "
                             "lower --lr or raise --reg")


def train_bpr(model: FactorizationModel, data: PostData, cfg: BPRConfig, start_epoch: int = 0,
              on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Single-process BPR for cfg.epochs epochs; on_epoch(epoch, mean loss) after each.

    The same `BPRTrainer` a one-worker Ray job runs, so the two give identical factors.
    """
    trainer = BPRTrainer(model, data, cfg, total_pairs=len(data.pairs()[0]))
    losses = []
    for epoch in range(start_epoch, cfg.epochs):
        loss, n = trainer.run_epoch(epoch)
        mean = loss / max(n, 1)
        check_finite(model, mean, epoch, {"lr": cfg.lr, "reg": cfg.reg, "dim": model.dim,
                                          "batch_size": cfg.batch_size})
        losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
    return losses
