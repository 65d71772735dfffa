"""PITF, FM and their content (IC, OD) and social (+SN) variants as one parameterised model.

Nguyen, Wistuba, Schmidt-Thieme (2017), for post (u, i) and tag t:

    PITF        y = <v_u, a_t> + <v_i, b_t>
    FM          y = w_t + <v_u + v_i, c_t>
    PITF-IC-OD  y = w_t + <v_u, a_t> + <W_Z^T z_i, b_t> + <W_O^T o_i, c_t>   (-IC / -OD: one term)
    FM-IC-OD    y = w_t + <v_u + W_Z^T z_i + W_O^T o_i, c_t>                   (-IC / -OD: one term)

+SN (beyond both papers): the user factor becomes `v_u + W_S^T s_u` with s_u the user's
node2vec vector, so a user with few or no training posts still gets a personal term.
In +SN models the user rows v_u start at zero (everything else at N(0, σ²) as in
Algorithm 1): the social term already gives every user a starting point, and a user with
one or two training posts keeps v_u close to its start, so a random start would be noise
of norm ~σ·√k on top of the social prior exactly where the prior matters (zero rows score
better on those users: benchmarks/results/design-measurements.md).
The gradient of v_u does not vanish at zero (it is `-(a_t+ - a_t-)σ(-x)`, and the tag
rows start random), so users with history still learn their own factor.

Every score is one inner product (docs/interfaces.md): the model is a list of *blocks*,
each a tag table (T, k) paired with a post-side vector that is a sum of *components*
(user row, item row, projected IC / OD / SN feature); a bias w_t pairs with a constant 1.
`post_vectors` concatenates the blocks' post sides (and the 1), `tag_matrix` the tag tables
(and w). The BPR steps in `bpr_step.py` work on the same blocks.

Feature vectors enter L2-normalised, centred and L2-normalised again (zero where missing):
VGG16 pooled activations vary in scale from image to image, and a unit scale lets one
learning-rate grid serve IC, OD and SN. Centring (`fit_centre`, the mean unit vector of the
training posts, saved with the weights as `centre_<f>`) matters because the image features
are non-negative (ReLU + global average pooling; YOLO probabilities): their unit vectors all
lie in one orthant and share one dominant direction (cosine ~0.9 between random images with
random CNN weights). Uncentred, every sample's gradient of a projection W is nearly the same
outer product, a batch of B samples adds them up coherently, and the effective step along
that direction is ~B·lr (the demo diverged so); the common direction also carries no
information about which tag fits. Centred, what is left is what tells images apart.
Unseen users/items (index -1) contribute a zero row.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from models.errors import ModelError
from models.views import FEATURE_DIMS  # sn: the store view's dim, given at construction

FAMILIES = ("PITF", "FM")
CONTENTS = {"": (), "-IC": ("ic",), "-OD": ("od",), "-IC-OD": ("ic", "od")}
CENTRE_CHUNK = 65536  # posts per chunk in fit_centre: bounds its float32 working copy
_BASES = ("PITF", "FM", "PITF-IC", "PITF-OD", "PITF-IC-OD", "FM-IC", "FM-OD", "FM-IC-OD")  # the papers' order
NAMES = _BASES + tuple(b + "+SN" for b in _BASES)


@dataclass(frozen=True)
class Spec:
    """What a model name means: family, content features, social term."""

    family: str  # "PITF" | "FM"
    content: tuple[str, ...]  # subset of ("ic", "od")
    social: bool

    @property
    def features(self) -> tuple[str, ...]:
        """Store features this model reads: ic, od, sn."""
        return self.content + (("sn",) if self.social else ())

    @property
    def has_item_factor(self) -> bool:
        # Content variants replace the item factor by projected image features (the paper).
        return not self.content

    @property
    def has_bias(self) -> bool:
        return not (self.family == "PITF" and not self.content)


def parse_name(name: str) -> Spec:
    """`PITF-IC-OD+SN` -> Spec; ModelError listing the valid names otherwise."""
    if name not in NAMES:
        raise ModelError(f"unknown factorization model {name!r}; valid: {', '.join(NAMES)}")
    base, social = (name[:-3], True) if name.endswith("+SN") else (name, False)
    family = "PITF" if base.startswith("PITF") else "FM"
    return Spec(family, CONTENTS[base[len(family):]], social)


def l2_normalise(x: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; rows with has=False (or all zero) become zero. (n, d) -> (n, d)."""
    norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.where(has[:, None] & (norm > 1e-12), x / norm, torch.zeros_like(x))


def centre_features(x: torch.Tensor, has: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """Unit rows, minus the training mean of unit rows, unit again; missing rows stay zero. (n, d) -> (n, d).

    Normalising first keeps an image's overall activation scale from weighting the mean;
    normalising again restores the unit scale the learning rates assume.
    """
    x = l2_normalise(x, has)
    if centre is None or not bool(centre.any()):
        return x
    return l2_normalise(x - centre[None, :], has)


def _tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not torch.is_tensor(x):
        x = np.asarray(x)
        if not x.flags.writeable:  # arrays from Ray's object store are read-only views
            x = x.copy()
    return torch.as_tensor(x, dtype=dtype).to(device)


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] with zero rows where idx == -1 (unseen). (n,) -> (n, k)."""
    rows = table.index_select(0, idx.clamp_min(0))
    return rows * (idx >= 0).to(rows.dtype)[:, None]


class FactorizationModel:
    """One factorization model; parameters are plain tensors in `self.params` (see PARAM docs).

    Parameters: user (U, k) v_u; item (I, k) v_i [PITF, FM]; W_ic (512, k) W_Z; W_od (80, k)
    W_O; W_sn (d, k) W_S [+SN]; tag tables (T, k): PITF tag_user a_t, tag_item b_t,
    tag_ic b_t, tag_od c_t; FM tag c_t; bias (T,) w_t [all but PITF].
    """

    kind = "factorization"

    def __init__(self, name: str, n_users: int, n_items: int, n_tags: int, dim: int = 128,
                 sn_dim: int = 0, init_std: float = 0.1, seed: int = 0, device: str = "cpu") -> None:
        self.name = name
        self.spec = parse_name(name)
        if self.spec.social and sn_dim <= 0:
            raise ModelError(f"{name} needs the user vector dim (sn_dim > 0, the store's user/node2vec view)")
        if min(n_users, n_tags, dim) <= 0:
            raise ModelError(f"{name}: n_users={n_users}, n_tags={n_tags}, dim={dim} must all be > 0")
        self.n_users, self.n_items, self.n_tags, self.dim = n_users, n_items, n_tags, dim
        self.sn_dim = sn_dim if self.spec.social else 0
        self.init_std, self.seed = init_std, seed
        self.params = self._init_params(torch.Generator().manual_seed(seed))
        # Per-feature centres (d,) subtracted in `inputs`; zero (no centring) until `fit_centre`.
        self.centres = {f: torch.zeros(self._feature_dim(f)) for f in self.spec.features}
        self.to(device)

    # ------------------------------------------------------------------ structure

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter this model has."""
        k, T, s = self.dim, self.n_tags, self.spec
        out: dict[str, tuple[int, ...]] = {"user": (self.n_users, k)}
        if s.has_item_factor:
            out["item"] = (max(self.n_items, 1), k)
        for f in s.content:
            out[f"W_{f}"] = (FEATURE_DIMS[f], k)
        if s.social:
            out["W_sn"] = (self.sn_dim, k)
        for tag_param, _ in self.blocks():
            out[tag_param] = (T, k)
        if s.has_bias:
            out["bias"] = (T,)
        return out

    def _feature_dim(self, f: str) -> int:
        return self.sn_dim if f == "sn" else FEATURE_DIMS[f]

    def blocks(self) -> list[tuple[str, tuple[str, ...]]]:
        """[(tag table, components of its post-side vector)] in `post_vectors` order."""
        s = self.spec
        user: tuple[str, ...] = ("user", "sn") if s.social else ("user",)
        if s.family == "FM":
            return [("tag", user + (("item",) if s.has_item_factor else ()) + s.content)]
        out: list[tuple[str, tuple[str, ...]]] = [("tag_user", user)]
        if s.has_item_factor:
            out.append(("tag_item", ("item",)))
        out += [(f"tag_{f}", (f,)) for f in s.content]
        return out

    def _init_params(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        # Algorithm 1: factors drawn from N(0, sigma^2); the bias starts at zero, and so do
        # the user rows of +SN models (module docstring: the social term is their start).
        out = {}
        for name, shape in self.shapes().items():
            draw = torch.randn(shape, generator=gen) * self.init_std  # drawn for every tensor: the
            if name == "bias" or (name == "user" and self.spec.social):  # generator stream stays the same
                out[name] = torch.zeros(shape)
            else:
                out[name] = draw
        return out

    @property
    def hyperparameters(self) -> dict:
        """Constructor arguments (JSON-able) that rebuild this model's shapes."""
        return {"n_users": self.n_users, "n_items": self.n_items, "n_tags": self.n_tags, "dim": self.dim,
                "sn_dim": self.sn_dim, "init_std": self.init_std, "seed": self.seed}

    @property
    def device(self) -> torch.device:
        return self.params["user"].device

    def to(self, device: str | torch.device) -> FactorizationModel:
        self.params = {k: v.to(device).contiguous() for k, v in self.params.items()}
        self.centres = {k: v.to(device).contiguous() for k, v in self.centres.items()}
        return self

    @torch.no_grad()
    def fit_centre(self, batch: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Set each feature's centre to the mean unit vector of the posts in `batch` that have it.

        Called once on the whole training split before training (the driver, not a worker,
        so every worker centres alike); the centres travel in `state_dict`.
        """
        n = len(batch["user_index"])
        for f in self.spec.features:
            if f not in batch:
                raise ModelError(f"{self.name} needs batch key {f!r} ({f} features) and has_{f}")
            has_all = batch.get(f"has_{f}", np.ones(n, bool))
            total, k = torch.zeros(batch[f].shape[-1], device=self.device), 0
            for s in range(0, n, CENTRE_CHUNK):  # chunks: no float32 copy of every post at once
                has = _tensor(has_all[s:s + CENTRE_CHUNK], torch.bool, self.device)
                x = l2_normalise(_tensor(batch[f][s:s + CENTRE_CHUNK], torch.float32, self.device), has)  # (c, d)
                k += int((has & (x.abs().sum(1) > 0)).sum())
                total += x.sum(0)
            self.centres[f] = total / max(k, 1)

    # ------------------------------------------------------------------ inputs and scores

    def inputs(self, batch: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Torch inputs on the model's device: user/item indices and normalised features.

        Missing feature keys are a ModelError naming the key; rows with has_* False are zero.
        """
        dev = self.device
        n = len(batch["user_index"])
        out = {"user": _tensor(batch["user_index"], torch.int64, dev)}
        if self.spec.has_item_factor:
            out["item"] = _tensor(batch.get("item_index", np.full(n, -1)), torch.int64, dev)
        for f in self.spec.features:
            if f not in batch:
                raise ModelError(f"{self.name} needs batch key {f!r} ({f} features) and has_{f}")
            x = _tensor(batch[f], torch.float32, dev)
            has = _tensor(batch.get(f"has_{f}", np.ones(n, bool)), torch.bool, dev)
            want = self.params[f"W_{f}"].shape[0]
            if x.ndim != 2 or x.shape != (n, want):
                raise ModelError(f"{self.name}: batch[{f!r}] has shape {tuple(x.shape)}, expected ({n}, {want})")
            out[f] = centre_features(x, has, self.centres.get(f))
        return out

    def component(self, comp: str, inp: dict[str, torch.Tensor]) -> torch.Tensor:
        """One post-side component (n, k): a factor row or a projected feature."""
        if comp in ("user", "item"):
            return gather_rows(self.params[comp], inp[comp])
        return inp[comp] @ self.params[f"W_{comp}"]  # (n, d) @ (d, k)

    def block_vectors(self, inp: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Post side of every block, [(n, k)]."""
        return [sum(self.component(c, inp) for c in comps) for _, comps in self.blocks()]  # type: ignore[misc]

    def tag_matrix(self) -> np.ndarray:
        """(T, D) float32: the tag tables side by side, then w_t."""
        cols = [self.params[t] for t, _ in self.blocks()]
        if self.spec.has_bias:
            cols.append(self.params["bias"][:, None])
        return torch.cat(cols, 1).float().cpu().numpy()

    @torch.no_grad()
    def post_vectors(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(n, D) float32 with scores = post_vectors @ tag_matrix().T."""
        inp = self.inputs(batch)
        cols = self.block_vectors(inp)
        if self.spec.has_bias:
            cols.append(torch.ones(len(inp["user"]), 1, device=self.device))
        return torch.cat(cols, 1).float().cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters, plus `centre_<f>` (d,) for each feature the model reads."""
        out = {k: v.detach().cpu().contiguous() for k, v in self.params.items()}
        out.update({f"centre_{f}": v.detach().cpu().contiguous() for f, v in self.centres.items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors in, checking names and shapes (ModelError naming the first mismatch)."""
        want = self.shapes()
        missing = sorted(set(want) - set(state))
        if missing:
            raise ModelError(f"{self.name}: weights lack tensor(s) {missing}")
        for k, shape in want.items():
            if tuple(state[k].shape) != shape:
                raise ModelError(f"{self.name}: tensor {k!r} has shape {tuple(state[k].shape)}, expected {shape}")
        self.params = {k: state[k].to(self.device, torch.float32).contiguous().clone() for k in want}
        for f in self.spec.features:  # a model saved before centring existed: no centre (zeros)
            c = state.get(f"centre_{f}")
            if c is not None and tuple(c.shape) != (self._feature_dim(f),):
                raise ModelError(f"{self.name}: tensor 'centre_{f}' has shape {tuple(c.shape)}, "
                                 f"expected ({self._feature_dim(f)},)")
            self.centres[f] = (torch.zeros(self._feature_dim(f)) if c is None else c.float().clone()).to(self.device)


def average(models: list[FactorizationModel]) -> FactorizationModel:
    """One model whose every score is the mean of `models`' scores (replicas of one model
    trained from different seeds), of dimension n·k.

    Every score is a sum of inner products <post side, tag row> plus w_t, so the mean of n
    models is one model of the same form: each (·, k) parameter of the replicas side by side,
    scaled by 1/√n (a product of two such halves carries 1/n), and the biases averaged. The
    scoring, calibration and store paths serve it unchanged. ModelError when the models
    differ in anything but their weights (name, sizes, feature centres).
    """
    if not models:
        raise ModelError("average: no models")
    first, n = models[0], len(models)
    for m in models[1:]:
        if (m.name, m.hyperparameters | {"seed": 0}) != (first.name, first.hyperparameters | {"seed": 0}):
            raise ModelError(f"average: {m.name} {m.hyperparameters} differs from {first.name} "
                             f"{first.hyperparameters} beyond the seed")
        for f, c in first.centres.items():
            if not torch.equal(m.centres[f].cpu(), c.cpu()):
                raise ModelError(f"average: the replicas' {f} feature centres differ (not fitted on one split)")
    out = copy.copy(first)  # its structure; no fresh random tables of the wider size
    out.dim, scale = n * first.dim, 1.0 / math.sqrt(n)
    out.params = {}
    for k in first.params:
        parts = [m.params[k].detach().cpu().float() for m in models]
        out.params[k] = (torch.stack(parts).mean(0) if k == "bias" else torch.cat(parts, 1) * scale).contiguous()
    out.centres = {f: c.detach().cpu().clone() for f, c in first.centres.items()}
    return out.to(first.device)


def score_reference(model: FactorizationModel, inp: dict[str, torch.Tensor], n: int, t: int,
                    params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """y(post n, tag t) written out from the papers' formulas, one scalar: the test oracle.

    Deliberately independent of `blocks()`: each family's equation is spelled out.
    """
    p = params if params is not None else model.params
    s = model.spec

    def row(name: str) -> torch.Tensor:
        i = int(inp[name][n])
        return p[name][i] if i >= 0 else torch.zeros(model.dim)

    v_u = row("user")
    if s.social:
        v_u = v_u + inp["sn"][n] @ p["W_sn"]
    feats = {f: inp[f][n] @ p[f"W_{f}"] for f in s.content}  # W^T x, (k,)
    if s.family == "PITF":
        y = v_u @ p["tag_user"][t]
        if s.has_item_factor:
            y = y + row("item") @ p["tag_item"][t]
        for f, proj in feats.items():
            y = y + proj @ p[f"tag_{f}"][t]
    else:
        post = v_u + (row("item") if s.has_item_factor else 0) + sum(feats.values(), torch.zeros(model.dim))
        y = post @ p["tag"][t]
    if s.has_bias:
        y = y + p["bias"][t]
    return y
