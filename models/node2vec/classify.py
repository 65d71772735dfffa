"""Node classification as the node2vec paper scores it (Grover & Leskovec 2016, section 4.3).

One-vs-rest L2-regularised logistic regression on the node vectors of a random share of
the labelled nodes; every held-out node is given as many labels as it truly has (its
top-scoring ones), and Macro-F1 / Micro-F1 are taken over the label columns. The
regression is scikit-learn's `LogisticRegression(C=1)` objective (lbfgs: the intercept is
not penalised), solved for all labels at once with scipy's L-BFGS (the labels' problems
are separate, so the joint minimum is each label's minimum). Features are standardised
with the training split's mean and deviation first (scikit-learn's StandardScaler), so
the fixed penalty weighs the same whatever the vectors' scale, which grows with how long
skip-gram trained: comparing p, q settings or trainers is then not a comparison of norms.

    y = label_matrix(node_index, label_codes, n_nodes)         # (n, L) bool
    scores = node_classification(vecs, y, train_frac=0.5, splits=5, seed=0)
    scores["macro_f1"], scores["micro_f1"]                      # means over the splits
"""

from __future__ import annotations

import numpy as np

from models.errors import ModelError


def label_matrix(nodes: np.ndarray, labels: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """((n_nodes, L) bool membership, (L,) label values) from (node, label) rows (dense node ids)."""
    nodes = np.asarray(nodes, np.int64)
    values, codes = np.unique(np.asarray(labels), return_inverse=True)
    y = np.zeros((n_nodes, values.size), bool)
    y[nodes, codes] = True
    return y, values


def fit_logistic_ovr(x: np.ndarray, y: np.ndarray, c: float = 1.0, tol: float = 1e-4,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic regression: (W (d, L), b (L,)) minimising, for every label l,
    c * sum_i log(1 + exp(-s_il (x_i . W[:, l] + b_l))) + ||W[:, l]||^2 / 2, s_il = +-1.

    x: (n, d) float, y: (n, L) bool. tol and max_iter are scikit-learn's lbfgs defaults.
    """
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    yf = np.asarray(y, np.float64)
    n, d = x.shape
    n_lab = yf.shape[1]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[:d * n_lab].reshape(d, n_lab)
        b = theta[d * n_lab:]
        z = x @ w + b
        # log(1 + exp(z)) - y z, stably; its derivative is sigmoid(z) - y
        loss = c * float((np.logaddexp(0.0, z) - yf * z).sum()) + 0.5 * float((w * w).sum())
        r = c * (0.5 * (1.0 + np.tanh(0.5 * z)) - yf)
        return loss, np.concatenate([(x.T @ r + w).ravel(), r.sum(axis=0)])

    res = minimize(loss_grad, np.zeros((d + 1) * n_lab), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12})
    theta = res.x
    return theta[:d * n_lab].reshape(d, n_lab), theta[d * n_lab:]


def top_k_predictions(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, L) bool: for row i, the k[i] highest-scoring labels (ties by label order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks < np.asarray(k)[:, None]


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(Macro-F1 over label columns, Micro-F1); a label with no true and no predicted member scores 0."""
    tp = (y_true & y_pred).sum(axis=0).astype(np.float64)
    fp = (~y_true & y_pred).sum(axis=0).astype(np.float64)
    fn = (y_true & ~y_pred).sum(axis=0).astype(np.float64)
    den = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    return float(per_label.mean()), float(2 * tp.sum() / micro_den) if micro_den else 0.0


def node_classification(vecs: np.ndarray, y: np.ndarray, train_frac: float = 0.5, splits: int = 1,
                        seed: int = 0, c: float = 1.0) -> dict[str, float]:
    """Macro-F1 and Micro-F1 of held-out labelled nodes, averaged over `splits` random splits.

    vecs: (n, d); y: (n, L) bool, rows without any label are not used. Each split trains on a
    random `train_frac` of the labelled nodes and predicts the rest (top-k, k = true count).
    """
    if not 0 < train_frac < 1:
        raise ModelError(f"train_frac must be in (0, 1), got {train_frac}")
    labelled = np.flatnonzero(y.any(axis=1))
    if labelled.size < 4:
        raise ModelError(f"node classification needs at least 4 labelled nodes, got {labelled.size}")
    rng = np.random.default_rng([seed, 0x4E43])
    macro, micro = [], []
    for _ in range(splits):
        perm = rng.permutation(labelled)
        cut = min(max(1, int(round(train_frac * perm.size))), perm.size - 1)
        tr, te = perm[:cut], perm[cut:]
        x = np.asarray(vecs, np.float64)
        mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0)
        x = (x - mu) / np.where(sd > 0, sd, 1.0)
        w, b = fit_logistic_ovr(x[tr], y[tr], c=c)
        pred = top_k_predictions(x[te] @ w + b, y[te].sum(axis=1))
        ma, mi = f1_scores(y[te], pred)
        macro.append(ma)
        micro.append(mi)
    return {"macro_f1": float(np.mean(macro)), "micro_f1": float(np.mean(micro)),
            "macro_f1_std": float(np.std(macro)), "splits": splits}
