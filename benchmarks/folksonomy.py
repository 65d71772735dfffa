"""The generated folksonomy's frequency baselines and its Bayes-optimal ceiling.

    python benchmarks/folksonomy.py [--seeds 0,1,2] [--set tag_zipf=1.1 --set combine=mixture ...]

Per seed: `jobs._synth_folksonomy` at the sizes of a public music-tagging dataset (the
generator's defaults, changed by `--set name=value`), `jobs.prepare` (10-core on users,
tags and items, one validation and one test post per user), then test F1@5 of the
frequency baselines (most-popular, user-popular, item-popular, user-item-popular with its
weight chosen on validation, as `jobs.evaluate` does) and of the planted ranking: the tags
ordered by the generator's own p(t | u, i) (`Planted.scores`), the Bayes-optimal ranking no
recommender can beat on average. The strengths of the generator are set by looking at the
baselines only (benchmarks/results/folksonomy.md). Prints a table, then
`RATIO user_item_popular_vs_planted <mix / planted>` (1: the mix is Bayes-optimal).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _value(field: dataclasses.Field, text: str):
    kind = {"int": int, "float": float, "str": str}[str(field.type)]
    return kind(text)


def params(seed: int, sets: list[str]):
    from jobs._synth_folksonomy import FolksonomyParams

    fields = {f.name: f for f in dataclasses.fields(FolksonomyParams)}
    kw = {}
    for s in sets:
        name, _, text = s.partition("=")
        if name not in fields:
            raise SystemExit(f"--set {s}: unknown parameter {name!r}; valid: {sorted(fields)}")
        kw[name] = _value(fields[name], text)
    return FolksonomyParams(**{**kw, "seed": seed})


def planted_topk(f, d, test, k: int = 5) -> np.ndarray:
    """(P, k) split tag indices ranked by the planted p(t | u, i) of each test post."""
    from jobs._synth_world import tag_names

    by_name = {n: j for j, n in enumerate(tag_names(len(f.tag_genre)))}
    cand = np.array([by_name[t] for t in d.tags], np.int64)       # split tag index -> generator tag
    users = (d.user_ids[test.user_index] - 1000) // 7                # contract ids -> generator indices
    items = d.item_ids[test.item_index] - 1
    out = np.empty((len(test), k), np.int64)
    for j, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        s = f.planted.scores(u, i, cand)
        top = np.argpartition(-s, k)[:k]
        out[j] = top[np.argsort(-s[top], kind="stable")]
    return out


def measure(seed: int, sets: list[str]) -> dict[str, float]:
    import pyarrow.parquet as pq

    from jobs._synth_folksonomy import make_folksonomy, posts_table
    from jobs._synth_world import tag_names
    from jobs._train_data import _read, load_split
    from jobs.posts import post_data
    from jobs.prepare import PrepareConfig
    from jobs.prepare import run as prepare
    from models.baselines import MostPopular, PopularityMix, tune_alpha
    from models.metrics import metrics_at_k
    from models.recsys.data import IdIndex

    p = params(seed, sets)
    f = make_folksonomy(p)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(posts_table(f, tag_names(p.num_tags)), Path(tmp) / "posts.parquet")
        prepare(PrepareConfig(posts=str(Path(tmp) / "posts.parquet"), out=tmp, p_core=10, p_core_items=True,
                              test_per_user=1, seed=seed))
        d = load_split(Path(tmp) / "split")
        test, _ = post_data(_read(Path(tmp) / "split", "test"), IdIndex(d.user_ids), IdIndex(d.item_ids), d.tags)
    tr, va, nt, nu, ni = d.train, d.val, len(d.tags), len(d.user_ids), len(d.item_ids)
    post, tag = tr.pairs()

    def f1(topk: np.ndarray) -> float:
        return metrics_at_k(topk, test.indptr, test.indices, ks=(5,))["f1@5"]

    r = {"test posts": float(len(test)), "tags": float(nt),
         "most-popular": f1(MostPopular(nt).fit(tr.user_index[post], tag).recommend(test.user_index, 5))}
    for name, alpha in (("user-popular", 1.0), ("item-popular", 0.0), ("user-item-popular", 0.5)):
        m = PopularityMix(nt, nu, ni, alpha=alpha).fit(tr.user_index[post], tag, tr.item_index[post], post_index=post)
        if name == "user-item-popular":
            tune_alpha(m, va.user_index, va.item_index, va.indptr, va.indices)
            r["alpha"] = m.alpha
        r[name] = f1(m.recommend(test.user_index, 5, test.item_index))
    r["planted p(t|u,i)"] = f1(planted_topk(f, d, test))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (archive and split)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a FolksonomyParams field, e.g. tag_zipf=1.1 or combine=mixture (repeatable)")
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = [measure(s, a.set) for s in seeds]
    print(f"generator: {' '.join(a.set) or 'defaults'}; test F1@5 (10-core, one test post per user)")
    for k in rows[0]:
        vals = [r[k] for r in rows]
        fmt = "{:.0f}" if k in ("test posts", "tags") else "{:.4f}"
        print(f"{k:<22}" + "".join(f"{fmt.format(v):>10}" for v in vals) + f"   mean {fmt.format(np.mean(vals))}")
    mix, top = np.mean([r["user-item-popular"] for r in rows]), np.mean([r["planted p(t|u,i)"] for r in rows])
    print(f"RATIO user_item_popular_vs_planted {mix / top:.3f}")


if __name__ == "__main__":
    main()
