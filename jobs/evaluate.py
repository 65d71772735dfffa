"""Evaluate every model on the same test split: `python -m jobs.evaluate`.

    split/{train,val,test}.parquet → baselines fitted on train (user-item-popular's mix weight
    chosen on val) → saved models scored on the test posts → P@k, R@k, F1@k, Acc@k for
    k = 1..10 → the backfill report (calibrated probabilities: precision reached at each
    precision target, tags written per post) → evaluation.{json,md}, f1_at_k.png,
    precision_coverage.png

`evaluation.json` maps model name → metric name (`precision@k`, `recall@k`, `f1@k`,
`accuracy@k`) → value, plus `split` (the split's sizes), `subsets` (the same table on the
users with few training posts, where cold-start models should shine), `baselines` (what
each baseline chose, e.g. user-item-popular's weight) and `backfill` (per model and target:
precision reached, its 95% interval, tags written, whether the target was kept).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore import uri
from jobs._backfill import Lists
from jobs._backfill import markdown as backfill_markdown
from jobs._backfill import report as backfill_report
from jobs._cli import ArchiveArgs, SplitArgs, arg, main_for, write_json
from jobs.errors import JobError
from jobs.posts import tag_csr, tag_rows, tag_vocabulary
from jobs.prepare import read_split
from models.baselines import (
    BASELINES,
    SOCIAL_BASELINES,
    FriendsPopular,
    PopularityMix,
    get_baseline,
    tune_alpha,
)
from models.calibration import MISS_TOLERANCE, TARGETS
from models.csr import indptr_of, take_rows
from models.metrics import METRICS, metrics_at_k
from models.recsys.data import IdIndex, index_of

log = logging.getLogger("jobs.evaluate")

K_MAX = 10
COLD_MAX_TRAIN_POSTS = 2


@dataclasses.dataclass
class EvaluateConfig(ArchiveArgs, SplitArgs):
    """Which models to compare and where to write the table."""

    models: list[str] = arg([], "model names under <out>/models (or model folders); empty: every saved model")
    baselines: list[str] = arg(list(BASELINES + SOCIAL_BASELINES),
                               "baselines to include (friends-popular reads --edges; left out when there is none)")
    precision_targets: list[float] = arg(list(TARGETS), "precision targets of the backfill report: per model, the "
                                                        "precision its calibrated tags reach on test and how many "
                                                        "it writes")
    plot: bool = arg(True, "write f1_at_k.png and precision_coverage.png")
    results: str = arg("", "where evaluation.{json,md}, f1_at_k.png and precision_coverage.png go: a folder or a "
                           "URI prefix (s3://bucket/reports/run-1); empty: <out>")


@dataclasses.dataclass
class Posts:
    """One split's posts, tags as indices into the training vocabulary (CSR)."""

    post_ids: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray


@dataclasses.dataclass
class EvalData:
    """The three splits against one training tag vocabulary."""

    tags: list[str]              # training tag vocabulary, index = tag index
    train: Posts
    val: Posts                   # empty when the split has no validation posts
    test: Posts
    train_user_ids: np.ndarray   # sorted users seen in training
    train_posts_per_user: np.ndarray  # aligned with train_user_ids


def _posts(t: pa.Table, vocab: np.ndarray) -> Posts:
    ptr, idx, _ = tag_csr(t.column("tags"), vocab)
    return Posts(t.column("post_id").to_numpy(), t.column("user_id").to_numpy().astype(np.int64),
                 t.column("item_id").to_numpy().astype(np.int64), ptr, idx)


def load_data(out: str | Path) -> EvalData:
    """train/val/test against the training vocabulary (no val.parquet: an empty validation split)."""
    train, test = read_split(out, "train"), read_split(out, "test")
    val = read_split(out, "val") if (Path(out) / "split" / "val.parquet").exists() else test.slice(0, 0)
    vocab = tag_vocabulary(train.column("tags"))
    users, counts = np.unique(train.column("user_id").to_numpy(), return_counts=True)
    return EvalData(vocab.tolist(), _posts(train, vocab), _posts(val, vocab), _posts(test, vocab), users, counts)


# --------------------------------------------------------------------------- baselines


def _friends(edges: str, users: IdIndex) -> tuple[np.ndarray, np.ndarray] | None:
    """Undirected CSR over training-user indices of the social graph (a path or URI); None without
    an edges file (an unreachable one raises, as every read does)."""
    if not uri.is_file(edges):
        return None
    from jobs.contract import read_edges

    table, _ = read_edges(edges)
    a, b = users(table.column("src").to_numpy()), users(table.column("dst").to_numpy())
    ok = (a >= 0) & (b >= 0) & (a != b)
    src, dst = np.concatenate([a[ok], b[ok]]), np.concatenate([b[ok], a[ok]])
    n = len(users)
    key = np.unique(src * n + dst)
    return indptr_of(np.bincount(key // n, minlength=n)), key % n


def fit_baselines(cfg: EvaluateConfig, d: EvalData) -> tuple[dict[str, Any], tuple[IdIndex, IdIndex], dict[str, Any]]:
    """({name: fitted baseline}, (user, item) rows of their tables, {name: what it chose}) for cfg.baselines."""
    users, items = IdIndex(d.train_user_ids), IdIndex(np.unique(d.train.item_ids))
    post = np.repeat(np.arange(len(d.train.post_ids)), np.diff(d.train.indptr))
    u, i, t = users(d.train.user_ids[post]), items(d.train.item_ids[post]), d.train.indices
    fitted: dict[str, Any] = {}
    chose: dict[str, Any] = {}
    for name in cfg.baselines:
        if name in SOCIAL_BASELINES:
            nb = _friends(cfg.edges_uri(), users)
            if nb is None:
                log.info("evaluate: leaving out %s: no social graph at %s", name, cfg.edges_uri())
                continue
            fitted[name] = FriendsPopular(len(d.tags), len(users), *nb).fit(u, t, post_index=post)
            continue
        b = get_baseline(name, len(d.tags), len(users), len(items)).fit(u, t, i, post_index=post)
        if name == "user-item-popular" and isinstance(b, PopularityMix):
            grid = tune_alpha(b, users(d.val.user_ids), items(d.val.item_ids), d.val.indptr, d.val.indices)
            chose[name] = {"alpha": b.alpha, "val_f1@5_by_alpha": grid,
                           "note": ("alpha: weight of the user's tag shares, 1 - alpha the item's; chosen on "
                                    "validation") if grid else "no validation posts: alpha 0.5"}
        fitted[name] = b
    return fitted, (users, items), chose


def baseline_lists(b: Any, ids: tuple[IdIndex, IdIndex], d: EvalData) -> Lists:
    users, items = ids
    tt, ts = b.scores_topk(users(d.test.user_ids), K_MAX, items(d.test.item_ids))
    vt, vs = b.scores_topk(users(d.val.user_ids), K_MAX, items(d.val.item_ids))
    return Lists(tt, ts, vt, vs)


# --------------------------------------------------------------------------- models


def model_lists(model_dir: Path, d: EvalData, store: Path) -> Lists:
    """Top-10 tags (in the evaluation vocabulary) and scores of a saved recommender on the test
    posts, with its saved calibration, or its validation lists to fit one when it has none."""
    from models.recsys import load

    model = load(model_dir)
    saved = (getattr(model, "meta", {}) or {}).get("calibration")
    tt, ts = _scored(model, d.test, d.tags, store)
    if saved:
        return Lists(tt, ts, saved=saved)
    vt, vs = _scored(model, d.val, d.tags, store)
    return Lists(tt, ts, vt, vs)


def _scored(model: Any, posts: Posts, tags: list[str], store: Path) -> tuple[np.ndarray, np.ndarray]:
    from jobs.features import FeatureReader
    from models.recsys.evaluate import topk_scored
    from models.recsys.saved import feature_views, id_vocab
    from models.recsys.saved import tag_vocabulary as model_tags

    out_t = np.full((len(posts.post_ids), K_MAX), -1, dtype=np.int64)
    out_s = np.zeros((len(posts.post_ids), K_MAX), dtype=np.float32)
    if not len(posts.post_ids):
        return out_t, out_s
    batch, _ = FeatureReader(store, feature_views(model)).read(posts.user_ids, posts.item_ids)
    batch["user_index"] = index_of(id_vocab(model, "user"), posts.user_ids)
    batch["item_index"] = index_of(id_vocab(model, "item"), posts.item_ids)
    top, scores = topk_scored(model, batch, K_MAX)  # (n, <=K) indices into the model's vocabulary
    # Map the model's tag vocabulary onto the evaluation vocabulary (both from the same train split).
    mapped = tag_rows(tags, model_tags(model))
    out_t[:, : top.shape[1]] = mapped[top]
    out_s[:, : top.shape[1]] = scores
    return out_t, out_s


def discover_models(cfg: EvaluateConfig) -> list[tuple[str, Path]]:
    root = Path(cfg.out) / "models"
    if cfg.models:
        found = []
        for m in cfg.models:
            p = Path(m) if Path(m).is_dir() else root / m
            if not (p / "model.json").exists():
                have = sorted(d.name for d in root.glob("*") if (d / "model.json").exists()) if root.exists() else []
                raise JobError(f"no saved model {m!r} (looked for {p}/model.json); saved models: {have}")
            found.append((p.name, p))
        return found
    return sorted((d.name, d) for d in root.glob("*") if (d / "model.json").exists()) if root.exists() else []


def markdown_table(results: dict[str, dict[str, float]], ks: tuple[int, ...] = (1, 3, 5, 10)) -> str:
    cols = [f"{name}@{k}" for k in ks for name in ("P", "R", "F1", "Acc")]
    keys = [f"{m}@{k}" for k in ks for m in METRICS]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    best = {k: max(r[k] for r in results.values()) for k in keys} if results else {}
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["f1@5"]):
        cells = [(f"**{r[k]:.4f}**" if r[k] == best[k] else f"{r[k]:.4f}") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    d = load_data(cfg.out)
    if len(d.test.post_ids) == 0:
        raise JobError(f"the test split in {cfg.out}/split is empty; check --test-per-user and the filters")
    if any(not 0 < t <= 1 for t in cfg.precision_targets):
        raise JobError(f"--precision-targets must lie in (0, 1], got {cfg.precision_targets}")
    lists: dict[str, Lists] = {}
    fitted, ids, chose = fit_baselines(cfg, d)
    for name, b in fitted.items():
        lists[name] = baseline_lists(b, ids, d)
    for name, path in discover_models(cfg):
        log.info("scoring %s on %d test posts", name, len(d.test.post_ids))
        lists[name] = model_lists(path, d, cfg.store_path())
    pos = np.searchsorted(d.train_user_ids, d.test.user_ids)
    n_train = d.train_posts_per_user[np.clip(pos, 0, len(d.train_user_ids) - 1)]
    cold = n_train <= COLD_MAX_TRAIN_POSTS
    results, cold_results = {}, {}
    for name, li in lists.items():
        results[name] = metrics_at_k(li.test_tags, d.test.indptr, d.test.indices)
        if cold.any():
            ptr, idx = take_rows(d.test.indptr, d.test.indices, cold)
            cold_results[name] = metrics_at_k(li.test_tags[cold], ptr, idx)
    targets = tuple(cfg.precision_targets)
    backfill, curves = backfill_report(lists, d.test.indptr, d.test.indices, d.val.indptr, d.val.indices, targets)
    split_sizes = _split_sizes(cfg.out)
    report = {**results, "split": split_sizes,
              "subsets": {f"users with <= {COLD_MAX_TRAIN_POSTS} training posts": cold_results},
              "baselines": chose, "backfill": backfill}
    out = cfg.results or cfg.out
    write_json(uri.join(out, "evaluation.json"), report)
    order = sorted(results, key=lambda n: -results[n]["f1@5"])
    md = ["# Evaluation", "", f"Test posts: {len(d.test.post_ids)}; tags: {len(d.tags)}; split: {split_sizes}", "",
          markdown_table(results), ""]
    if "user-item-popular" in chose:
        md += [f"user-item-popular: weight of the user's tag shares {chose['user-item-popular']['alpha']:g} "
               "(the item's: 1 minus it), chosen on the validation split.", ""]
    if cold_results:
        md += [f"## Users with <= {COLD_MAX_TRAIN_POSTS} training posts ({int(cold.sum())} test posts)", "",
               markdown_table(cold_results), ""]
    if backfill:
        md += ["## Backfill at a precision target", "",
               "Tags whose calibrated probability meets the target P (what `jobs.score --min-precision P` "
               "writes): the precision they reach on the test split and the tags written per post. "
               f"More than {MISS_TOLERANCE:g} below P, the cell gives the 95% interval of that precision "
               "over the tags written: **MISSED** when the whole interval lies below P (a miss the "
               "number of tags does not explain), '(few tags)' when it still reaches P.", "",
               backfill_markdown(backfill, order, targets), ""]
    uri.write_bytes(uri.join(out, "evaluation.md"), "\n".join(md).encode())
    outputs = [uri.join(out, "evaluation.json"), uri.join(out, "evaluation.md")]
    if cfg.plot and results:
        from jobs._plots import plot_f1_at_k, plot_precision_coverage

        outputs.append(uri.join(out, "f1_at_k.png"))
        plot_f1_at_k(results, outputs[-1], K_MAX)
        if curves:
            outputs.append(uri.join(out, "precision_coverage.png"))
            plot_precision_coverage(curves, outputs[-1], targets, {n: r["f1@5"] for n, r in results.items()})
    print(markdown_table(results, ks=(1, 5, 10)))
    if backfill:
        print(backfill_markdown(backfill, order, targets))
    missed = sorted(n for n, r in backfill.items() for v in r["targets"].values() if v["target_kept"] == "no")
    if missed:
        log.warning("evaluate: calibrated precision missed its target on test for %s", ", ".join(missed))
    return {"models": sorted(results), "test_posts": len(d.test.post_ids),
            "f1@5": {k: round(v["f1@5"], 4) for k, v in results.items()},
            "backfill_missed": missed, "outputs": outputs}


def _split_sizes(out: str | Path) -> dict[str, Any]:
    import json

    p = Path(out) / "split" / "split.json"
    if not p.exists():
        return {}
    rep = json.loads(p.read_text())
    return {name: rep[name] for name in ("train", "val", "test") if name in rep} | {"tags": rep.get("tags")}


def main() -> None:
    main_for("evaluate", EvaluateConfig, run, __doc__)


if __name__ == "__main__":
    main()
