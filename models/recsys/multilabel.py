"""The social multi-label network (Salehi & Kaitha) and its visual-only ablation.

    image features z (512, VGG16 standing in for AlexNet) -> FC + ReLU + Dropout ─┐
    node2vec user vector s (d)                            -> FC + ReLU + Dropout ─┴ concat
    -> linear to all T tags -> sigmoid, trained with binary cross-entropy,
    SGD lr 0.01, momentum 0.9, dropout 0.5, batch 450 (the paper's settings).

`visual-multilabel` drops the user branch. Scores as one inner product
(docs/interfaces.md): post vector = [last hidden layer, 1], tag matrix = [W_out, b_out];
sigmoid is monotone, so ranking by the logit is ranking by the probability.
Inputs are L2-normalised and zero where missing, as in the factorization models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from models.errors import ModelError
from models.recsys.factorization import FEATURE_DIMS, _tensor, l2_normalise

NAMES = ("social-multilabel", "visual-multilabel")


class _Net(nn.Module):
    def __init__(self, n_tags: int, sn_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(FEATURE_DIMS["ic"], hidden), nn.ReLU(), nn.Dropout(dropout))
        self.user = (nn.Sequential(nn.Linear(sn_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
                     if sn_dim else None)
        self.out = nn.Linear(hidden * (2 if sn_dim else 1), n_tags)

    def hidden(self, ic: torch.Tensor, sn: torch.Tensor | None) -> torch.Tensor:
        h = self.image(ic)  # (n, hidden)
        if self.user is not None:
            h = torch.cat([h, self.user(sn)], 1)  # (n, 2 hidden)
        return h


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
        self.n_tags, self.hidden_dim, self.dropout, self.seed = n_tags, hidden, dropout, seed
        self.sn_dim = sn_dim if self.social else 0
        self.n_users, self.n_items = n_users, n_items  # vocabulary sizes, kept for the saved model
        torch.manual_seed(seed)
        self.net = _Net(n_tags, self.sn_dim, hidden, dropout).to(device)

    @property
    def features(self) -> tuple[str, ...]:
        return ("ic", "sn") if self.social else ("ic",)

    @property
    def hyperparameters(self) -> dict:
        return {"n_tags": self.n_tags, "sn_dim": self.sn_dim, "hidden": self.hidden_dim,
                "dropout": self.dropout, "seed": self.seed, "n_users": self.n_users, "n_items": self.n_items}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def inputs(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        n = len(batch["user_index"])
        out = {}
        for f in self.features:
            if f not in batch:
                raise ModelError(f"{self.name} needs batch key {f!r} ({f} features) and has_{f}")
            x = _tensor(batch[f], torch.float32, self.device)
            want = FEATURE_DIMS["ic"] if f == "ic" else self.sn_dim
            if x.shape != (n, want):
                raise ModelError(f"{self.name}: batch[{f!r}] has shape {tuple(x.shape)}, expected ({n}, {want})")
            out[f] = l2_normalise(x, _tensor(batch.get(f"has_{f}", np.ones(n, bool)), torch.bool, self.device))
        return out

    def tag_matrix(self) -> np.ndarray:
        """(T, H+1) float32: [W_out, b_out]."""
        o = self.net.out
        return torch.cat([o.weight, o.bias[:, None]], 1).detach().float().cpu().numpy()

    @torch.no_grad()
    def post_vectors(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, H+1) float32: [last hidden layer (eval mode), 1]."""
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
        self.net.load_state_dict({k: state[k] for k in want})


def train_multilabel(model: MultiLabelNet, data, epochs: int, lr: float = 0.01, momentum: float = 0.9,
                     batch_size: int = 450, seed: int = 0, start_epoch: int = 0,
                     on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SGD on BCE over multi-hot tag targets; `data` is a bpr.PostData. Returns mean losses.

    The optimizer's momentum is not checkpointed: a resumed run restarts it from zero.
    """
    from models.recsys.bpr import check_finite

    inp = model.inputs(data.batch())
    n = len(data)
    target = torch.zeros(n, model.n_tags, device=model.device)  # (n, T) multi-hot
    rows = np.repeat(np.arange(n), np.diff(data.indptr))
    target[torch.as_tensor(rows), torch.as_tensor(data.indices)] = 1.0
    opt = torch.optim.SGD(model.net.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.BCEWithLogitsLoss(reduction="mean")
    losses = []
    for epoch in range(start_epoch, epochs):
        model.net.train()
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        torch.manual_seed(seed * 100003 + epoch)  # dropout masks
        order = torch.randperm(n, generator=gen).to(model.device)
        total = 0.0
        for s in range(0, n, batch_size):
            b = order[s:s + batch_size]
            h = model.net.hidden(inp["ic"][b], inp["sn"][b] if "sn" in inp else None)
            loss = loss_fn(model.net.out(h), target[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        mean = total / max(n, 1)
        check_finite(model, mean, epoch, {"lr": lr, "momentum": momentum, "batch_size": batch_size,
                                         "hidden": model.hidden_dim, "dropout": model.dropout})
        losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
    return losses
