"""Preprocessing and the leave-posts-out split: `python -m jobs.prepare`.

    read_posts → drop untagged → drop over-used personal tags → top-N tags → p-core
    (users, tags[, items]) to a fixed point → per user: n posts to test, n to validation
    → drop test/val tags unseen in train → split/{train,val,test}.parquet + split.json

All table work is polars on the exploded (post, tag) pairs, vectorised, so it holds at
10^7 posts. The split is deterministic by seed: each post's rank inside its user comes
from a seeded hash of its post_id, independent of row order.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from jobs._cli import ArchiveArgs, SplitArgs, arg, main_for, write_json
from jobs.contract import read_posts
from jobs.errors import InputError

log = logging.getLogger("jobs.prepare")

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class PrepareConfig(ArchiveArgs, SplitArgs):
    """Filters and split sizes; every filter is off unless asked for."""

    val_per_user: int = arg(1, "posts per user held out for validation (hyperparameter tuning); 0: none")
    test_frac: float = arg(0.0, "fraction of each user's posts held out for test instead of --test-per-user (0: off)")
    max_user_tag_frac: float = arg(0.0, "drop a (user, tag) pair when the user puts the tag on more than this "
                                        "fraction of their posts (0: off), as the PITF-IC-OD paper does")
    top_tags: int = arg(0, "keep only the N most frequent tags (0: all)")
    min_user_posts: int = arg(2, "users with fewer tagged posts keep them all in train (they need one to learn from)")


def _explode(posts: pa.Table) -> pl.DataFrame:
    """(post_id, user_id, item_id, tag) pairs of the tagged posts, duplicate tags per post removed."""
    df = pl.from_arrow(posts.select(["post_id", "user_id", "item_id", "tags"]))
    assert isinstance(df, pl.DataFrame)
    return (df.explode("tags").drop_nulls("tags").rename({"tags": "tag"})
            .with_columns(pl.col("tag").str.strip_chars()).unique(["post_id", "tag"], maintain_order=True))


def filter_pairs(pairs: pl.DataFrame, cfg: PrepareConfig, report: dict[str, Any]) -> pl.DataFrame:
    """Apply the optional filters to (post, tag) pairs; counts what each one removed."""
    if cfg.max_user_tag_frac > 0:
        posts_per_user = pairs.group_by("user_id").agg(pl.col("post_id").n_unique().alias("n_user"))
        frac = (pairs.group_by(["user_id", "tag"]).agg(pl.len().alias("n_ut"))
                .join(posts_per_user, on="user_id").with_columns((pl.col("n_ut") / pl.col("n_user")).alias("frac")))
        over = frac.filter((pl.col("frac") > cfg.max_user_tag_frac) & (pl.col("n_user") > 1)).select("user_id", "tag")
        before = pairs.height
        pairs = pairs.join(over, on=["user_id", "tag"], how="anti")
        report["dropped_overused_user_tags"] = before - pairs.height
    if cfg.top_tags > 0:
        keep = pairs.group_by("tag").agg(pl.len().alias("n")).sort(["n", "tag"], descending=[True, False]).head(cfg.top_tags)
        before = pairs.height
        pairs = pairs.join(keep.select("tag"), on="tag", how="semi")
        report["dropped_by_top_tags"] = before - pairs.height
    if cfg.p_core > 0:
        pairs = p_core(pairs, cfg.p_core, cfg.p_core_items, report)
    return pairs


def p_core(pairs: pl.DataFrame, p: int, items: bool, report: dict[str, Any]) -> pl.DataFrame:
    """Keep users and tags (and items) that occur in >= p posts, iterated to a fixed point."""
    keys = ["user_id", "tag"] + (["item_id"] if items else [])
    rounds = 0
    while True:
        rounds += 1
        before = pairs.height
        for key in keys:
            ok = pairs.group_by(key).agg(pl.col("post_id").n_unique().alias("n")).filter(pl.col("n") >= p)
            pairs = pairs.join(ok.select(key), on=key, how="semi")
        if pairs.height == before:
            break
    report["p_core"] = {"p": p, "items": items, "rounds": rounds, "pairs_left": pairs.height}
    return pairs


def _post_rank(post_ids: pl.Series, seed: int) -> pl.Series:
    """A seeded pseudo-random key per post, independent of row order (splitmix64)."""
    with np.errstate(over="ignore"):
        x = post_ids.to_numpy().astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return pl.Series("rank_key", x)


def assign_splits(posts: pl.DataFrame, cfg: PrepareConfig) -> pl.DataFrame:
    """Add a `split` column: per user, the first n posts by seeded rank to test, the next to val."""
    posts = posts.with_columns(_post_rank(posts["post_id"], cfg.seed))
    posts = posts.with_columns(
        pl.col("rank_key").rank("ordinal").over("user_id").alias("r"),
        pl.len().over("user_id").alias("n_user"),
    )
    if cfg.test_frac > 0:
        n_test = (pl.col("n_user") * cfg.test_frac).floor().clip(lower_bound=1)
    else:
        n_test = pl.lit(cfg.test_per_user)
    n_val = pl.lit(cfg.val_per_user)
    eligible = pl.col("n_user") >= cfg.min_user_posts
    # Each user keeps at least one training post: test and val shrink to fit.
    n_test = pl.min_horizontal(n_test, pl.col("n_user") - 1)
    n_val = pl.min_horizontal(n_val, pl.col("n_user") - 1 - n_test)
    split = (pl.when(~eligible).then(pl.lit("train"))
             .when(pl.col("r") <= n_test).then(pl.lit("test"))
             .when(pl.col("r") <= n_test + n_val).then(pl.lit("val"))
             .otherwise(pl.lit("train")))
    return posts.with_columns(split.alias("split")).drop(["rank_key", "r", "n_user"])


def make_split(posts: pa.Table, cfg: PrepareConfig) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """The whole preprocessing: returns {split: (post_id, user_id, item_id, tags)} and a report."""
    report: dict[str, Any] = {"posts_in": posts.num_rows}
    pairs = _explode(posts)
    report["untagged_posts"] = posts.num_rows - pairs["post_id"].n_unique()
    pairs = filter_pairs(pairs, cfg, report)
    if pairs.height == 0:
        raise InputError("no tagged posts are left after filtering; lower --p-core / --top-tags, or tag some posts")
    post_split = assign_splits(pairs.select("post_id", "user_id", "item_id").unique("post_id"), cfg)
    pairs = pairs.join(post_split.select("post_id", "split"), on="post_id")
    train_tags = pairs.filter(pl.col("split") == "train").select("tag").unique()
    out, dropped = {}, {}
    for name in SPLITS:
        part = pairs.filter(pl.col("split") == name)
        if name != "train":
            before_posts = part["post_id"].n_unique()
            kept = part.join(train_tags, on="tag", how="semi")
            dropped[f"{name}_unseen_tag_assignments"] = part.height - kept.height
            dropped[f"{name}_posts_left_without_tags"] = before_posts - kept["post_id"].n_unique()
            part = kept
        out[name] = (part.group_by("post_id", maintain_order=True)
                     .agg(pl.col("user_id").first(), pl.col("item_id").first(), pl.col("tag").alias("tags"))
                     .sort("post_id"))
    report["dropped"] = dropped
    for name, df in out.items():
        report[name] = {"posts": df.height, "users": df["user_id"].n_unique(),
                        "tag_assignments": int(df["tags"].list.len().sum() or 0)}
    report["tags"] = train_tags.height
    return out, report


def run(cfg: PrepareConfig) -> dict[str, Any]:
    posts = read_posts(cfg.posts_uri(), columns=["post_id", "user_id", "item_id", "tags"])
    splits, report = make_split(posts, cfg)
    folder = Path(cfg.out) / "split"
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in splits.items():
        tmp = folder / f"{name}.parquet.tmp"
        pq.write_table(df.to_arrow(), tmp, row_group_size=65536)
        tmp.replace(folder / f"{name}.parquet")
    write_json(folder / "split.json", {"config": dataclasses.asdict(cfg), **report})
    log.info("split: train %d, val %d, test %d posts; %d tags; dropped %s",
             report["train"]["posts"], report["val"]["posts"], report["test"]["posts"], report["tags"],
             report["dropped"])
    return report


def read_split(out: str | Path, name: str) -> pa.Table:
    """Read one split written by this stage, with a clear error if the stage has not run."""
    path = Path(out) / "split" / f"{name}.parquet"
    if not path.exists():
        raise InputError(f"{path} does not exist; run `python -m jobs.prepare --out {out}` first")
    return pq.read_table(path)


def main() -> None:
    main_for("prepare", PrepareConfig, run, __doc__)


if __name__ == "__main__":
    main()
