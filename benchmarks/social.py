"""Does the friendship graph help predict a user's tags? Measured on a real graph.

    python benchmarks/social.py --blogcatalog DIR [--seeds 3] [--quick]
    python benchmarks/social.py --folksonomy [--seeds 3]   # the generated folksonomy's graph

BlogCatalog (Tang & Liu 2009; `edges.parquet`, `labels.parquet`, not in the repository):
10,312 bloggers, 333,983 friendships, each blogger's groups (39) are their tags. Every
user is one post whose tags are their groups. A random half of the users is the training
set (tags known), a tenth validation, the rest test: their tags are held out and
predicted from the graph alone (cold-start users, no history). Methods, each scored on the
same test users:

- `most-popular`: the groups most users are in;
- `friends-popular`: the share of the user's labelled friends in each group (ties and users
  without labelled friends: most-popular), the graph used directly;
- `PITF+SN` / `FM+SN`: the project's social models, user vectors from `jobs.embed_users`
  (node2vec, the job's defaults) through a learned projection, BPR with early stopping
  on validation F1@5 (`SN only`: PITF+SN without the per-post item rows, which on unique
  items memorise each training post);
- `node2vec + logistic regression`: one-vs-rest L2 logistic regression on the same user
  vectors (the node2vec paper's protocol; its L2 strength chosen on validation);
- `gated`: w(n) * friends' share + (1 - w(n)) * the regression's probability, with
  w(n) = n / (n + kappa) for a user with n labelled friends, kappa chosen on validation
  (kappa = 0: friends only; infinity: vectors only) — the social signal gated by how much
  of it there is.

Reported: F1@1/3/5 (the project's metric), Macro-/Micro-F1 with as many groups predicted as
the user truly has (the node2vec paper's), F1@5 by labelled-friend count, over several
random splits. Prints `RATIO <method>_vs_most_popular <F1@5 ratio>` lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.metrics import metrics_at_k  # noqa: E402

KS = (1, 3, 5)
KAPPAS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, float("inf"))
BUCKETS = ((0, 0), (1, 2), (3, 10), (11, 50), (51, 10**9))


# --------------------------------------------------------------------------- data


def blogcatalog(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(user ids, label matrix (U, T) bool, src, dst) with users 0..U-1 in id order."""
    import pyarrow.parquet as pq

    e, lab = pq.read_table(folder / "edges.parquet"), pq.read_table(folder / "labels.parquet")
    src, dst = e["src"].to_numpy(), e["dst"].to_numpy()
    uid, grp = lab["user_id"].to_numpy(), lab["group"].to_numpy()
    users = np.unique(np.concatenate([src, dst, uid]))
    groups = np.unique(grp)
    y = np.zeros((len(users), len(groups)), bool)
    y[np.searchsorted(users, uid), np.searchsorted(groups, grp)] = True
    return users, y, np.searchsorted(users, src), np.searchsorted(users, dst), len(groups)


def folksonomy_users(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The generated folksonomy seen the same way: a user's tags are every tag they used."""
    from jobs._synth_folksonomy import FolksonomyParams, make_folksonomy, user_ids

    f = make_folksonomy(FolksonomyParams(seed=seed))
    used, counts = np.unique(f.tags, return_counts=True)
    keep = used[counts >= 50]                                 # tags a user could be predicted with
    rows = np.repeat(f.user, np.diff(f.indptr))
    ok = np.isin(f.tags, keep)
    y = np.zeros((len(f.personal), len(keep)), bool)
    y[rows[ok], np.searchsorted(keep, f.tags[ok])] = True
    return user_ids(len(f.personal)), y, f.src, f.dst, len(keep)


def neighbours(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected CSR (indptr, indices), duplicates and self-loops dropped."""
    a, b = np.concatenate([src, dst]), np.concatenate([dst, src])
    key = np.unique((a * n + b)[a != b])
    a, b = key // n, key % n
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])
    return indptr, b


# --------------------------------------------------------------------------- methods


def friends_share(rows: np.ndarray, nb: tuple[np.ndarray, np.ndarray], y: np.ndarray,
                  labelled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share (n, T) of each user's labelled friends in each tag, labelled-friend count (n,))."""
    indptr, idx = nb
    lens = indptr[rows + 1] - indptr[rows]
    q = np.repeat(np.arange(len(rows)), lens)
    f = idx[np.concatenate([np.arange(indptr[r], indptr[r + 1]) for r in rows])] if len(q) else np.zeros(0, int)
    keep = labelled[f]
    q, f = q[keep], f[keep]
    count = np.bincount(q, minlength=len(rows))
    share = np.zeros((len(rows), y.shape[1]))
    np.add.at(share, q, y[f].astype(float))
    return share / np.maximum(count, 1)[:, None], count


def logistic(x_tr: np.ndarray, y_tr: np.ndarray, x: np.ndarray, l2: float) -> np.ndarray:
    """One-vs-rest L2 logistic regression (LBFGS, torch); P(tag) (n, T)."""
    import torch

    xt, yt = torch.as_tensor(x_tr, dtype=torch.float64), torch.as_tensor(y_tr, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], yt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(yt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="sum")
        loss = loss + l2 / 2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64) @ w + b).numpy()


def bpr_social(name: str, vec: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, with_items: bool,
               seed: int) -> tuple[np.ndarray, int]:
    """Scores (U, T) of a +SN model trained on the training users with early stopping; best epoch."""
    import torch

    from models.recsys import get_model
    from models.recsys.bpr import BPRConfig, BPRTrainer
    from models.recsys.data import PostData
    from models.recsys.early_stopping import EarlyStopping
    from models.recsys.evaluate import evaluate

    def data(rows: np.ndarray, seen: bool) -> PostData:
        tags = [np.flatnonzero(y[r]) for r in rows]
        items = np.arange(len(rows)) if (seen and with_items) else -np.ones(len(rows), np.int64)
        users = np.arange(len(rows)) if seen else -np.ones(len(rows), np.int64)
        return PostData.from_lists(users, items, tags, y.shape[1], {"sn": vec[rows]})

    train, val = data(tr, True), data(va, False)
    m = get_model(name, n_users=len(tr), n_items=len(tr), n_tags=y.shape[1], dim=64, sn_dim=vec.shape[1], seed=seed)
    m.fit_centre(train.batch())
    trainer = BPRTrainer(m, train, BPRConfig(lr=0.05, reg=1e-4, batch_size=1024, seed=seed),
                         total_pairs=len(train.pairs()[0]))
    es, best = EarlyStopping(patience=10, max_epochs=300), None
    while not es.should_stop():
        trainer.run_epoch(es.last_epoch)
        if es.update(es.last_epoch + 1, evaluate(m, val)["f1@5"]):
            best = {k: v.clone() for k, v in m.params.items()}
    m.params = best  # type: ignore[assignment]
    every = PostData.from_lists(-np.ones(len(y), np.int64), -np.ones(len(y), np.int64),
                                [np.zeros(0, np.int64)] * len(y), y.shape[1], {"sn": vec})
    with torch.no_grad():
        return m.post_vectors(every.batch()) @ m.tag_matrix().T, es.best_epoch


def topk(scores: np.ndarray, k: int, tie: np.ndarray) -> np.ndarray:
    """(n, k) best-first by score, ties by the global order `tie` (lower first)."""
    return np.lexsort((np.broadcast_to(tie, scores.shape), -scores), axis=1)[:, :k]


def macro_micro(scores: np.ndarray, y: np.ndarray, tie: np.ndarray) -> tuple[float, float]:
    """The node2vec paper's F1s: each user gets as many tags as they truly have."""
    order = np.lexsort((np.broadcast_to(tie, scores.shape), -scores), axis=1)
    n_true = y.sum(1)
    pred = np.zeros_like(y)
    rank = np.argsort(order, axis=1)
    pred[rank < n_true[:, None]] = True
    tp, fp, fn = (pred & y).sum(0), (pred & ~y).sum(0), (~pred & y).sum(0)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return float(f1[(tp + fn) > 0].mean()), float(micro)


def f1_table(scores: np.ndarray, y: np.ndarray, tie: np.ndarray) -> dict[str, float]:
    top = topk(scores, max(KS), tie)
    indptr = np.concatenate([[0], np.cumsum(y.sum(1))])
    m = metrics_at_k(top, indptr, np.nonzero(y)[1], ks=KS)
    macro, micro = macro_micro(scores, y, tie)
    return {**{f"F1@{k}": m[f"f1@{k}"] for k in KS}, "Macro-F1": macro, "Micro-F1": micro}


# --------------------------------------------------------------------------- one split


def node2vec(users: np.ndarray, src: np.ndarray, dst: np.ndarray, tmp: Path) -> np.ndarray:
    """(U, 128) user vectors from jobs.embed_users at its defaults (one post per user as the archive)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore import Store
    from jobs.embed_users import EmbedUsersConfig
    from jobs.embed_users import run as embed

    pq.write_table(pa.table({"post_id": pa.array(users), "user_id": pa.array(users),
                             "image": pa.array(["none.jpg"] * len(users)),
                             "tags": pa.array([[] for _ in users], pa.list_(pa.string()))}), tmp / "posts.parquet")
    pq.write_table(pa.table({"src": pa.array(users[src]), "dst": pa.array(users[dst])}), tmp / "edges.parquet")
    embed(EmbedUsersConfig(posts=str(tmp / "posts.parquet"), edges=str(tmp / "edges.parquet"), out=str(tmp),
                           num_cpus=2))
    with Store.open(str(tmp / "store"), readonly=True) as st:
        vec, found = st.reader("user/node2vec@1").get_many(users)
    vec = np.asarray(vec, np.float32)
    vec[~found] = 0
    return vec


def run_split(y: np.ndarray, nb, vec: np.ndarray, seed: int, quick: bool) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    tr, va, te = np.split(perm, [len(y) // 2, len(y) * 6 // 10])
    labelled = np.zeros(len(y), bool)
    labelled[tr] = True
    tie = np.argsort(np.argsort(-y[tr].sum(0), kind="stable"))      # global rank of each tag
    pop = np.broadcast_to(y[tr].mean(0), (len(y), y.shape[1]))
    out: dict[str, dict[str, float]] = {}
    share_va, n_va = friends_share(va, nb, y, labelled)
    share_te, n_te = friends_share(te, nb, y, labelled)
    out["most-popular"] = f1_table(pop[te], y[te], tie)
    out["friends-popular"] = f1_table(share_te, y[te], tie)
    l2s = (0.1, 1.0, 10.0) if quick else (0.01, 0.1, 1.0, 10.0, 100.0)
    best_l2 = max(l2s, key=lambda l2: f1_table(logistic(vec[tr], y[tr], vec[va], l2), y[va], tie)["F1@5"])
    p_lr = logistic(vec[tr], y[tr], vec[np.concatenate([va, te])], best_l2)
    p_va, p_te = p_lr[:len(va)], p_lr[len(va):]
    out["node2vec + logistic regression"] = f1_table(p_te, y[te], tie)

    def gate(share, n, p, kappa):
        w = np.ones(len(n)) if kappa == 0 else (n / (n + kappa) if np.isfinite(kappa) else np.zeros(len(n)))
        return w[:, None] * share + (1 - w[:, None]) * p

    kappa = max(KAPPAS, key=lambda k: f1_table(gate(share_va, n_va, p_va, k), y[va], tie)["F1@5"])
    out["gated friends + regression"] = {**f1_table(gate(share_te, n_te, p_te, kappa), y[te], tie), "kappa": kappa}
    names = [("PITF+SN", "PITF+SN", True), ("SN only (PITF+SN, no item rows)", "PITF+SN", False)]
    if not quick:
        names.append(("FM+SN", "FM+SN", True))
    for label, name, items in names:
        s, ep = bpr_social(name, vec, y, tr, va, items, seed)
        out[label] = {**f1_table(s[te], y[te], tie), "best_epoch": ep}
    for label, scores in (("friends-popular", share_te), ("node2vec + logistic regression", p_te),
                          ("gated friends + regression", gate(share_te, n_te, p_te, kappa))):
        for lo, hi in BUCKETS:
            sel = (n_te >= lo) & (n_te <= hi)
            if sel.sum() >= 20:
                out[label][f"F1@5, {lo}-{hi if hi < 10**9 else 'more'} labelled friends"] = \
                    f1_table(scores[sel], y[te][sel], tie)["F1@5"]
                out[label][f"users with {lo}-{hi if hi < 10**9 else 'more'} labelled friends"] = int(sel.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blogcatalog", default="", help="folder with BlogCatalog's edges.parquet and labels.parquet")
    ap.add_argument("--folksonomy", action="store_true", help="the generated folksonomy's graph instead")
    ap.add_argument("--seeds", type=int, default=3, help="random splits")
    ap.add_argument("--quick", action="store_true", help="fewer L2 strengths, no FM+SN")
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if bool(a.blogcatalog) == a.folksonomy:
        ap.error("give exactly one of --blogcatalog DIR and --folksonomy")
    users, y, src, dst, n_tags = blogcatalog(Path(a.blogcatalog)) if a.blogcatalog else folksonomy_users(0)
    y = y[:, y.sum(0) > 0]
    nb = neighbours(len(users), src, dst)
    with tempfile.TemporaryDirectory() as tmp:
        vec = node2vec(users, src, dst, Path(tmp))
    print(f"{'BlogCatalog' if a.blogcatalog else 'folksonomy'}: {len(users):,} users, {len(src):,} edges, "
          f"{y.shape[1]} tags, {y.sum(1).mean():.2f} tags per user; {(vec ** 2).sum(1).astype(bool).mean():.3f} "
          "of users have a vector")
    runs = [run_split(y, nb, vec, s, a.quick) for s in range(a.seeds)]
    keys = list(runs[0])
    cols = [f"F1@{k}" for k in KS] + ["Macro-F1", "Micro-F1"]
    print(f"\nmean over {a.seeds} splits (±: half the range)")
    print(f"{'method':<34}" + "".join(f"{c:>16}" for c in cols))
    for k in keys:
        cells = []
        for c in cols:
            v = np.array([r[k][c] for r in runs])
            cells.append(f"{v.mean():.4f}±{(v.max() - v.min()) / 2:.4f}")
        print(f"{k:<34}" + "".join(f"{c:>16}" for c in cells))
    for k in keys:
        extra = list(dict.fromkeys(e for r in runs for e in r[k] if e not in cols))
        for e in extra:
            vals = [r[k][e] for r in runs if e in r[k]]
            print(f"  {k}: {e} = " + ", ".join(f"{v:.4g}" for v in vals))
    base = np.mean([r["most-popular"]["F1@5"] for r in runs])
    for k in keys[1:]:
        slug = re.sub(r"[^a-z0-9]+", "_", k.split(" (")[0].lower().replace("+", " plus ")).strip("_")
        print(f"RATIO {slug}_f1_at_5_vs_most_popular {np.mean([r[k]['F1@5'] for r in runs]) / base:.3f}")


if __name__ == "__main__":
    main()
