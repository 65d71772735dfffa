"""Evaluate every model on the same test split: `python -m jobs.evaluate`.

    split/{train,test}.parquet → baselines fitted on train → saved models scored on the
    test posts → P@k, R@k, F1@k, Acc@k for k = 1..10 → evaluation.{json,md}, f1_at_k.png

`evaluation.json` maps model name → metric name (`precision@k`, `recall@k`, `f1@k`,
`accuracy@k`) → value, plus `split` (the split's sizes) and `subsets` (the same table on
the users with few training posts, where cold-start models should shine).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from featurestore import uri
from jobs._cli import ArchiveArgs, SplitArgs, arg, main_for, write_json
from jobs.errors import JobError
from jobs.posts import tag_csr, tag_rows, tag_vocabulary
from jobs.prepare import read_split
from models.baselines import BASELINES, get_baseline
from models.csr import take_rows
from models.metrics import METRICS, metrics_at_k
from models.recsys.data import IdIndex, index_of

log = logging.getLogger("jobs.evaluate")

K_MAX = 10
COLD_MAX_TRAIN_POSTS = 2


@dataclasses.dataclass
class EvaluateConfig(ArchiveArgs, SplitArgs):
    """Which models to compare and where to write the table."""

    models: list[str] = arg([], "model names under <out>/models (or model folders); empty: every saved model")
    baselines: list[str] = arg(list(BASELINES), "baselines to include")
    plot: bool = arg(True, "write f1_at_k.png")
    results: str = arg("", "where evaluation.{json,md} and f1_at_k.png go: a folder or a URI prefix "
                           "(s3://bucket/reports/run-1); empty: <out>")


@dataclasses.dataclass
class TestSet:
    """The test posts with tags as indices into the training vocabulary."""

    tags: list[str]              # training tag vocabulary, index = tag index
    post_ids: np.ndarray         # (n,)
    user_ids: np.ndarray         # (n,)
    item_ids: np.ndarray         # (n,)
    indptr: np.ndarray           # CSR of true tag indices
    indices: np.ndarray
    train_user_ids: np.ndarray   # sorted users seen in training
    train_posts_per_user: np.ndarray  # aligned with train_user_ids


def load_test_set(out: str | Path) -> tuple[TestSet, dict[str, np.ndarray]]:
    """The test set, and the training (user_id, tag index) pairs the baselines fit on."""
    train, test = read_split(out, "train"), read_split(out, "test")
    vocab = tag_vocabulary(train.column("tags"))
    tr_ptr, tr_idx, _ = tag_csr(train.column("tags"), vocab)
    tr_users = train.column("user_id").to_numpy()
    users, counts = np.unique(tr_users, return_counts=True)
    te_ptr, te_idx, _ = tag_csr(test.column("tags"), vocab)
    ts = TestSet(vocab.tolist(), test.column("post_id").to_numpy(), test.column("user_id").to_numpy(),
                 test.column("item_id").to_numpy(), te_ptr, te_idx, users, counts)
    pairs = {"user_id": np.repeat(tr_users, np.diff(tr_ptr)), "tag_index": tr_idx}
    return ts, pairs


def baseline_topk(name: str, ts: TestSet, pairs: dict[str, np.ndarray]) -> np.ndarray:
    users = IdIndex(ts.train_user_ids)
    model = get_baseline(name, len(ts.tags), len(users)).fit(users(pairs["user_id"]), pairs["tag_index"])
    return model.recommend(users(ts.user_ids), K_MAX)


def model_topk(model_dir: Path, ts: TestSet, store: Path) -> np.ndarray:
    """Top-10 tag indices (in the evaluation vocabulary) of a saved recommender on the test posts."""
    from jobs.features import FeatureReader
    from models.recsys import load
    from models.recsys.evaluate import topk_tags
    from models.recsys.saved import feature_views, id_vocab
    from models.recsys.saved import tag_vocabulary as model_tags

    model = load(model_dir)
    batch, _ = FeatureReader(store, feature_views(model)).read(ts.user_ids, ts.item_ids)
    batch["user_index"] = index_of(id_vocab(model, "user"), ts.user_ids)
    batch["item_index"] = index_of(id_vocab(model, "item"), ts.item_ids)
    top = topk_tags(model, batch, K_MAX)  # (n, <=K) indices into the model's vocabulary
    # Map the model's tag vocabulary onto the evaluation vocabulary (both from the same train split).
    mapped = tag_rows(ts.tags, model_tags(model))
    out = np.full((len(ts.post_ids), K_MAX), -1, dtype=np.int64)
    out[:, : top.shape[1]] = mapped[top]
    return out


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


def plot_f1(results: dict[str, dict[str, float]], path: str | Path) -> None:
    """F1@k per model as a PNG at `path` (a local path or a URI)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = range(1, K_MAX + 1)
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["f1@5"]):
        ax.plot(list(ks), [r[f"f1@{k}"] for k in ks], marker="o", markersize=3, label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("F1@k")
    ax.set_xticks(list(ks))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("F1@k on the test split")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    uri.write_bytes(path, png.getvalue())


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    ts, pairs = load_test_set(cfg.out)
    if len(ts.post_ids) == 0:
        raise JobError(f"the test split in {cfg.out}/split is empty; check --test-per-user and the filters")
    topks: dict[str, np.ndarray] = {}
    for name in cfg.baselines:
        topks[name] = baseline_topk(name, ts, pairs)
    for name, path in discover_models(cfg):
        log.info("scoring %s on %d test posts", name, len(ts.post_ids))
        topks[name] = model_topk(path, ts, cfg.store_path())
    pos = np.searchsorted(ts.train_user_ids, ts.user_ids)
    n_train = ts.train_posts_per_user[np.clip(pos, 0, len(ts.train_user_ids) - 1)]
    cold = n_train <= COLD_MAX_TRAIN_POSTS
    results, cold_results = {}, {}
    for name, topk in topks.items():
        results[name] = metrics_at_k(topk, ts.indptr, ts.indices)
        if cold.any():
            ptr, idx = take_rows(ts.indptr, ts.indices, cold)
            cold_results[name] = metrics_at_k(topk[cold], ptr, idx)
    split_sizes = _split_sizes(cfg.out)
    report = {**results, "split": split_sizes,
              "subsets": {f"users with <= {COLD_MAX_TRAIN_POSTS} training posts": cold_results}}
    out = cfg.results or cfg.out
    write_json(uri.join(out, "evaluation.json"), report)
    md = ["# Evaluation", "", f"Test posts: {len(ts.post_ids)}; tags: {len(ts.tags)}; split: {split_sizes}", "",
          markdown_table(results), ""]
    if cold_results:
        md += [f"## Users with <= {COLD_MAX_TRAIN_POSTS} training posts ({int(cold.sum())} test posts)", "",
               markdown_table(cold_results), ""]
    uri.write_bytes(uri.join(out, "evaluation.md"), "\n".join(md).encode())
    if cfg.plot and results:
        plot_f1(results, uri.join(out, "f1_at_k.png"))
    print(markdown_table(results, ks=(1, 5, 10)))
    return {"models": sorted(results), "test_posts": len(ts.post_ids),
            "f1@5": {k: round(v["f1@5"], 4) for k, v in results.items()},
            "outputs": [uri.join(out, "evaluation.json"), uri.join(out, "evaluation.md")]}


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
