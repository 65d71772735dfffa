"""BPR training of the factorization models (Rendle et al. 2009; Nguyen et al. 2017, Alg. 1).

Algorithm 1 draws a training (post, t+), a t- that is not among the post's tags, and moves
every parameter θ touched by x = y(post, t+) - y(post, t-) by
`θ <- θ + α (σ(-x) ∂x/∂θ - λ θ)`. Here a mini-batch applies B such updates at once:
gradients of the *summed* per-sample loss `-ln σ(x) + λ/2 Σ_touched ||θ||²`, so a row
touched twice gets two updates and the dense projections (touched by every sample) get B
regularisation terms — the same per-sample semantics as the paper, batched.

Crowded rows (`max_row_samples`, the step rule): sequential per-sample updates correct
themselves (after a few, σ(-x) falls), but n gradients taken at the same point and summed
move a row n times as far. For a sparse row (a user, an item) n is small and the batched
sum is Algorithm 1; for a row every sample touches (the projections W_Z/W_O/W_S, the tag
rows and bias of frequent tags) n grows with the batch, and with coherent inputs the step
along the common direction is ~n·α: the step size would depend on the batch size, and
large batches diverge. So each row's gradient (a table row, or a whole projection matrix)
summed over the n samples that touched it in the step is scaled by min(1, C / n), C =
`max_row_samples`: up to C samples it is exactly the paper's update, beyond that the mean
gradient times C — a step bounded independently of the batch size. n counts samples over
*all* workers (summed in the same all-reduce), so N workers still take one worker's step.

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
import torch.nn.functional as F

from models.errors import ModelError, NumericalError
from models.recsys.data import PostData
from models.recsys.factorization import FactorizationModel, score_reference

# Grids searched by `--tune` (per the paper's protocol: learning rate and L2 strength chosen
# on a validation split). The paper's exact grid values could not be checked offline.
LR_GRID = (0.01, 0.05, 0.1)
REG_GRID = (1e-5, 1e-4, 1e-3)

# C of the step rule (module docstring). Small enough that a projection or tag row moving
# C samples' worth of coherent gradient at the default lr stays stable; large enough that
# sparse rows (users, items: a handful of samples per step) follow Algorithm 1 exactly.
MAX_ROW_SAMPLES = 32

Grads = dict[str, "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]  # dense, or (row idx, row values)


@dataclass
class BPRConfig:
    """Hyperparameters of one BPR run."""

    lr: float = 0.05  # α
    reg: float = 1e-4  # λ
    batch_size: int = 1024  # global samples per step (split over workers)
    epochs: int = 20
    seed: int = 0
    max_row_samples: int = MAX_ROW_SAMPLES  # C: a row's step is at most C samples' worth


# --------------------------------------------------------------------------- data


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


def touch_counts(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                 neg: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Samples that touched each row in this step: {param: (rows,) float} for tables, 0-d for W_*.

    Tag tables and bias count t+ and t- alike; user/item rows count samples with a seen (>= 0)
    index; a projection is one "row" every sample touches.
    """
    dev = pos.device
    out: dict[str, torch.Tensor] = {}
    tags = torch.zeros(model.n_tags, device=dev).index_add_(
        0, torch.cat([pos, neg]), torch.ones(2 * len(pos), device=dev))  # (T,)
    for name, t in model.params.items():
        if name in ("user", "item"):
            idx = inp[name] if rows is None else inp[name].index_select(0, rows)  # (B,)
            out[name] = torch.zeros(t.shape[0], device=dev).index_add_(
                0, idx.clamp_min(0), (idx >= 0).to(torch.float32))
        elif name.startswith("W_"):
            out[name] = torch.tensor(float(len(pos)), device=dev)
        else:  # tag tables, bias
            out[name] = tags
    return out


def row_scale(count: torch.Tensor, cap: int) -> torch.Tensor:
    """min(1, cap / count) per row (untouched rows: 1; their gradient is zero anyway)."""
    return (cap / count.clamp_min(1e-30)).clamp(max=1.0)


def cap_grads(grads: Grads, counts: dict[str, torch.Tensor], cap: int) -> Grads:
    """The step rule: each row's summed gradient scaled by min(1, cap / samples that touched it)."""
    out: Grads = {}
    for name, gr in grads.items():
        scale = row_scale(counts[name], cap)
        if isinstance(gr, tuple):
            f = scale.index_select(0, gr[0])  # (n,)
            out[name] = (gr[0], gr[1] * (f[:, None] if gr[1].ndim == 2 else f))
        elif scale.ndim == 0:
            out[name] = gr * scale
        else:  # a densified table: scale its rows
            out[name] = gr * (scale[:, None] if gr.ndim == 2 else scale)
    return out


def apply_grads(model: FactorizationModel, grads: Grads, lr: float) -> None:
    """θ <- θ - lr * grad, scatter-adding row gradients (repeated rows add up)."""
    for name, gr in grads.items():
        if isinstance(gr, tuple):
            model.params[name].index_add_(0, gr[0], gr[1], alpha=-lr)
        else:
            model.params[name].add_(gr, alpha=-lr)


@torch.no_grad()
def bpr_step_fused(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                   neg: torch.Tensor, lr: float, reg: float, rows: torch.Tensor | None = None,
                   cap: int = MAX_ROW_SAMPLES) -> torch.Tensor:
    """One BPR step in place (see `bpr_grads` for rows, the module docstring for cap);
    returns the summed loss (0-d, not synchronised)."""
    loss, grads = bpr_grads(model, inp, pos, neg, reg, rows)
    apply_grads(model, cap_grads(grads, touch_counts(model, inp, pos, neg, rows), cap), lr)
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
                       neg: torch.Tensor, lr: float, reg: float, cap: int = MAX_ROW_SAMPLES) -> float:
    """Slow, obviously correct: the per-sample loss from the formulas, autograd, one update
    with each row's gradient scaled by min(1, cap / samples touching it), counted in a loop."""
    params = {k: v.detach().cpu().clone().requires_grad_(True) for k, v in model.params.items()}
    cpu_inp = {k: v.cpu() for k, v in inp.items()}
    total = torch.zeros(())
    count = {k: torch.zeros(v.shape[0]) if not k.startswith("W_") else torch.zeros(1) for k, v in params.items()}
    for b in range(len(pos)):
        tp, tn = int(pos[b]), int(neg[b])
        x = score_reference(model, cpu_inp, b, tp, params) - score_reference(model, cpu_inp, b, tn, params)
        total = total - F.logsigmoid(x) + reg / 2 * _touched_reg(model, params, cpu_inp, b, tp, tn)
        for k in params:
            if k in ("user", "item"):
                if int(cpu_inp[k][b]) >= 0:
                    count[k][int(cpu_inp[k][b])] += 1
            elif k.startswith("W_"):
                count[k][0] += 1
            else:  # tag tables, bias
                count[k][tp] += 1
                count[k][tn] += 1
    total.backward()
    with torch.no_grad():
        for k, v in params.items():
            grad = v.grad if v.grad is not None else torch.zeros_like(v)  # untouched table
            scale = torch.tensor([min(1.0, cap / float(c)) if c > 0 else 1.0 for c in count[k]])
            scale = scale.reshape((-1,) + (1,) * (grad.ndim - 1)) if not k.startswith("W_") else scale[0]
            model.params[k].copy_((v - lr * scale * grad).to(model.device))
    return float(total.detach())


def bpr_step_autograd(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
                      neg: torch.Tensor, lr: float, reg: float, rows: torch.Tensor | None = None,
                      cap: int = MAX_ROW_SAMPLES) -> torch.Tensor:
    """The plain torch step: vectorised forward, autograd (dense gradients), the capped SGD update."""
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
        counts = touch_counts(model, inp, pos, neg)
        for name, v in params.items():
            if v.grad is not None:  # a table no sample touched has no gradient
                scale = row_scale(counts[name], cap)
                v.sub_(lr * v.grad * (scale.reshape((-1,) + (1,) * (v.ndim - 1)) if scale.ndim else scale))
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
        dev = model.device
        self.shared_slot = None
        self.n_shared = 0
        if world > 1 and shared_item_slot is not None and "item" in model.params:
            self.shared_slot = torch.from_numpy(np.array(shared_item_slot, dtype=np.int64)).to(dev)
            self.n_shared = int(shared_item_slot.max(initial=-1)) + 1
            self.shared_rows = torch.as_tensor(np.flatnonzero(shared_item_slot >= 0)[
                np.argsort(shared_item_slot[shared_item_slot >= 0])], dtype=torch.int64, device=dev)

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
            if self.world == 1:
                loss_sum += bpr_step_fused(self.model, inp, pos_t, neg_t, cfg.lr, cfg.reg, rows_t,
                                           cfg.max_row_samples)
            else:
                loss_sum += self._synced_step(inp, pos_t, neg_t, rows_t)
        return float(loss_sum), n

    @torch.no_grad()
    def _synced_step(self, inp: dict[str, torch.Tensor], pos: torch.Tensor, neg: torch.Tensor,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Local rows updated locally; shared parameters' gradients summed across workers."""
        model, cfg = self.model, self.cfg
        cap = cfg.max_row_samples
        loss, grads = bpr_grads(model, inp, pos, neg, cfg.reg, rows)
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

    From epoch 0 the feature centres are first fitted on `data` (`fit_centre`).

    The same `BPRTrainer` a one-worker Ray job runs, so the two give identical factors.
    """
    if start_epoch == 0:  # a resumed model keeps the centres it was trained with
        model.fit_centre(data.batch())
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
