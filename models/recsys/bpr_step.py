"""One BPR step of the factorization models (Rendle et al. 2009; Nguyen et al. 2017, Alg. 1).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.recsys.factorization import FactorizationModel, score_reference

# C of the step rule (module docstring). Small enough that a projection or tag row moving
# C samples' worth of coherent gradient at the default lr stays stable; large enough that
# sparse rows (users, items: a handful of samples per step) follow Algorithm 1 exactly.
MAX_ROW_SAMPLES = 32

Grads = dict[str, "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]  # dense, or (row idx, row values)



def bpr_grads(model: FactorizationModel, inp: dict[str, torch.Tensor], pos: torch.Tensor,
              neg: torch.Tensor, reg: float, rows: torch.Tensor | None = None,
              post_vecs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, Grads]:
    """(summed BPR loss, gradients) for B samples (post, pos[b], neg[b]); no autograd.

    inp: `model.inputs(...)` of the batch's posts: one row per sample (rows=None), or one
    row per *distinct* post with rows (B,) naming each sample's post — then each post's
    features are projected once and its samples' gradients summed before the W gradient,
    so the cost of the (d × k) projections scales with distinct posts, not samples.
    post_vecs: `model.block_vectors(inp)` when the caller has them already (the hard-negative
    draw projects the same posts with the same parameters).
    Row tables come back as (idx, values) pairs to scatter-add, dense parameters as tensors.
    """
    p = model.params
    blocks = model.blocks()
    if post_vecs is None:
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
                   cap: int = MAX_ROW_SAMPLES, post_vecs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One BPR step in place (see `bpr_grads` for rows and post_vecs, the module docstring for
    cap); returns the summed loss (0-d, not synchronised)."""
    loss, grads = bpr_grads(model, inp, pos, neg, reg, rows, post_vecs)
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
