"""`python -m jobs.social_influence`: do connected users tag alike?

The test of "Image Tag Recommendation by Exploiting Social-Network Metadata":
for each connected pair (u_i, u_j) draw a user u_k not connected to u_i; for each
tag u_i used, s_p = 1 if u_j used it, s_r = 1 if u_k used it. S_p and S_r collect
these 0/1 samples. Reported: the means, a one-sided two-sample t-test
(H1: mean S_p > mean S_r; Student's pooled test, and Welch's), the effect size

    (mean S_p - mean S_r) / sqrt((|S_p| v_p + |S_r| v_r) / (|S_p| + |S_r| - 2))

(v = sample variance) and the relative lift (mean S_p - mean S_r) / mean S_r,
written to <out>/social_influence.{md,json}.

Vectorised: a user x tag sparse 0/1 matrix U; for a block of pairs (I, J, K) the
sample counts are row sums of U[I] * U[J] and U[I] * U[K]. S_p and S_r are
Bernoulli samples, so (count, sum) are sufficient statistics; no per-tag rows.

Choices (documented in the report): connections are undirected by default, each
edge giving both ordered pairs (u_i, u_j) and (u_j, u_i); only users with posts
take part; u_k is drawn uniformly from users with posts, excluding u_i and
everyone connected to u_i in either direction. The t-test treats samples as
independent, as the paper does; they are not quite (a user's tags recur over
their pairs), so read the p-value as a screening number and the effect size as
the result.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from jobs._cli import ArchiveArgs, arg, main_for, write_json
from jobs._progress import Progress
from jobs.errors import InputError, JobError

log = logging.getLogger("jobs")

BLOCK = 200_000  # pairs per vectorised block (bounds the sparse temporaries)
MAX_DRAW_ROUNDS = 64


@dataclass
class SocialInfluenceConfig(ArchiveArgs):
    """Flags of `python -m jobs.social_influence` (plus the contract flags)."""

    directed: bool = arg(False, "use each edge as given (u_i = src, u_j = dst) instead of both ways")
    max_pairs: int = arg(0, "sample at most this many connected pairs (0: all)")


# --------------------------------------------------------------------------- inputs


def user_tag_matrix(posts_path: str) -> tuple[np.ndarray, sparse.csr_matrix, int]:
    """(sorted user ids (n,), U (n, n_tags) csr 0/1 float32, n_tags) from posts, streamed."""
    import polars as pl
    import pyarrow as pa

    from jobs.contract import iter_posts

    users, pairs = [], []
    for batch in iter_posts(posts_path, columns=("user_id", "tags")):
        df = pl.from_arrow(pa.Table.from_batches([batch]))
        assert isinstance(df, pl.DataFrame)  # a Table always gives a DataFrame
        users.append(df["user_id"].to_numpy())
        pairs.append(df.explode("tags").drop_nulls("tags").unique())
    if not users:
        raise InputError(f"{posts_path} has no posts")
    user_ids = np.unique(np.concatenate(users))
    ut = pl.concat(pairs).unique()
    if ut.height == 0:
        raise InputError(f"{posts_path}: no post has a tag; the analysis compares tags of connected users")
    tag_code = (ut["tags"].rank("dense").to_numpy() - 1).astype(np.int64)
    rows = np.searchsorted(user_ids, ut["user_id"].to_numpy())
    n_tags = int(tag_code.max()) + 1
    u = sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, tag_code)), shape=(user_ids.size, n_tags))
    return user_ids, u, n_tags


def connected_pairs(edges_path: str, user_ids: np.ndarray, directed: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Ordered pairs (I, J) of dense users with posts, unique, no self-pairs; plus counts."""
    from jobs.contract import read_edges

    table, report = read_edges(edges_path, user_ids)
    if report.edges == 0:
        raise InputError(f"{edges_path} has no edges; the analysis needs connected users")
    src, dst = table.column("src").to_numpy(), table.column("dst").to_numpy()
    n = user_ids.size
    i = np.searchsorted(user_ids, src).clip(0, n - 1)
    j = np.searchsorted(user_ids, dst).clip(0, n - 1)
    ok = (user_ids[i] == src) & (user_ids[j] == dst) & (i != j)
    i, j = i[ok], j[ok]
    if not directed:
        i, j = np.concatenate([i, j]), np.concatenate([j, i])
    key = np.unique(i * np.int64(n) + j)
    counts = {"edges_in": report.edges, "edges_naming_users_without_posts": report.unknown_users,
              "self_loops": report.self_loops}
    if key.size == 0:
        raise InputError(f"{edges_path}: no edge connects two users that have posts")
    return key // n, key % n, counts


# --------------------------------------------------------------------------- sampling


def draw_unconnected(i: np.ndarray, n: int, linked: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each u_i a uniform u_k != u_i with no link to u_i; -1 where none was found.

    linked: sorted int64 keys a * n + b of links in both directions.
    """
    k = np.full(i.size, -1, np.int64)
    todo = np.arange(i.size)
    for _ in range(MAX_DRAW_ROUNDS):
        if todo.size == 0:
            break
        cand = rng.integers(0, n, todo.size)
        q = i[todo] * np.int64(n) + cand
        pos = np.searchsorted(linked, q).clip(0, linked.size - 1)
        good = (cand != i[todo]) & (linked[pos] != q)
        k[todo[good]] = cand[good]
        todo = todo[~good]
    return k


def sufficient_stats(u: sparse.csr_matrix, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> tuple[int, int, int]:
    """(|S| = tags of u_i summed over pairs, sum S_p, sum S_r), in blocks of pairs."""
    n_s = s_p = s_r = 0
    prog = Progress("social_influence", total=int(i.size), unit="pairs")
    for lo in range(0, i.size, BLOCK):
        a = u[i[lo:lo + BLOCK]]  # (block, n_tags) 0/1
        n_s += int(a.sum())
        s_p += int(a.multiply(u[j[lo:lo + BLOCK]]).sum())
        s_r += int(a.multiply(u[k[lo:lo + BLOCK]]).sum())
        prog.update(min(BLOCK, i.size - lo))
    prog.close()
    return n_s, s_p, s_r


# --------------------------------------------------------------------------- statistics


def influence_stats(n: int, sum_p: int, sum_r: int) -> dict[str, Any]:
    """Means, variances, one-sided t-tests, effect size and lift of two 0/1 samples of size n."""
    from scipy import stats

    if n < 2:
        raise InputError(f"only {n} tag sample(s) from connected pairs; the t-test needs at least 2")
    m_p, m_r = sum_p / n, sum_r / n
    v_p = n * m_p * (1 - m_p) / (n - 1)  # sample variance of a 0/1 sample
    v_r = n * m_r * (1 - m_r) / (n - 1)
    pooled = (n * v_p + n * v_r) / (2 * n - 2)
    effect = (m_p - m_r) / math.sqrt(pooled) if pooled > 0 else 0.0
    out: dict[str, Any] = {"n_samples": n, "mean_sp": m_p, "mean_sr": m_r, "var_sp": v_p, "var_sr": v_r,
                           "effect_size": effect,
                           "relative_lift": (m_p - m_r) / m_r if m_r > 0 else None}
    for name, equal in (("student", True), ("welch", False)):
        if pooled > 0:
            t = stats.ttest_ind_from_stats(m_p, math.sqrt(v_p), n, m_r, math.sqrt(v_r), n,
                                           equal_var=equal, alternative="greater")
            out[f"t_{name}"], out[f"p_value_{name}"] = float(t.statistic), float(t.pvalue)
        else:  # both samples constant: no evidence either way
            out[f"t_{name}"], out[f"p_value_{name}"] = 0.0, 1.0
    return out


def report_markdown(res: dict[str, Any]) -> str:
    """A small markdown table of the result."""
    lift = "n/a" if res["relative_lift"] is None else f"{100 * res['relative_lift']:+.1f}%"
    rows = [
        ("connected pairs (u_i, u_j)", f"{res['pairs']:,}"),
        ("pairs dropped (u_i linked to everyone)", f"{res['pairs_without_unconnected_user']:,}"),
        ("tag samples (size of S_p = size of S_r)", f"{res['n_samples']:,}"),
        ("mean S_p (friend used the tag)", f"{res['mean_sp']:.4f}"),
        ("mean S_r (random non-friend used it)", f"{res['mean_sr']:.4f}"),
        ("relative lift", lift),
        ("effect size (pooled)", f"{res['effect_size']:.4f}"),
        ("t (Student, one-sided)", f"{res['t_student']:.2f}"),
        ("p-value (Student, H1: S_p > S_r)", f"{res['p_value_student']:.3g}"),
        ("p-value (Welch)", f"{res['p_value_welch']:.3g}"),
    ]
    lines = ["# Social influence: do connected users use the same tags?", "",
             "| quantity | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
             f"Connections: {'directed' if res['directed'] else 'undirected (both ordered pairs per edge)'}; "
             f"u_k uniform over users with posts, not linked to u_i; seed {res['seed']}.",
             "The t-test treats tag samples as independent (as the paper does); the effect size is the result.",
             ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run


def run(cfg: SocialInfluenceConfig) -> dict[str, Any]:
    """posts + edges -> pairs -> S_p, S_r statistics -> <out>/social_influence.{md,json}."""
    if cfg.max_pairs < 0:
        raise JobError(f"--max-pairs must be >= 0 (0: all), got {cfg.max_pairs}")
    user_ids, u, n_tags = user_tag_matrix(cfg.posts_uri())
    i, j, counts = connected_pairs(cfg.edges_uri(), user_ids, cfg.directed)
    n = user_ids.size
    # Every link, both directions: u_k must be unconnected to u_i either way.
    linked = np.unique(np.concatenate([i * np.int64(n) + j, j * np.int64(n) + i]))
    rng = np.random.default_rng([cfg.seed, 0x5151])
    if cfg.max_pairs and i.size > cfg.max_pairs:
        sel = np.sort(rng.choice(i.size, cfg.max_pairs, replace=False))
        i, j = i[sel], j[sel]
    k = draw_unconnected(i, n, linked, rng)
    keep = k >= 0
    n_s, s_p, s_r = sufficient_stats(u, i[keep], j[keep], k[keep])
    res = {"pairs": int(keep.sum()), "pairs_without_unconnected_user": int((~keep).sum()),
           "users_with_posts": int(n), "tags": n_tags, "directed": cfg.directed, "seed": cfg.seed,
           **counts, **influence_stats(n_s, s_p, s_r)}
    out = Path(cfg.out)
    write_json(out / "social_influence.json", res)
    (out / "social_influence.md").write_text(report_markdown(res))
    log.info("social influence: mean S_p %.4f vs S_r %.4f, effect %.3f, p %.2g",
             res["mean_sp"], res["mean_sr"], res["effect_size"], res["p_value_student"])
    return res


def main() -> None:
    main_for("social_influence", SocialInfluenceConfig, run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
