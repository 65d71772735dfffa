"""`python -m jobs.synth`: a synthetic photo archive in the data contract's format.

    read flags -> build_world (communities, social graph, tag vocabulary, preferences)
               -> write users/tags/edges -> sample posts chunk by chunk -> posts.parquet
               -> render images (process pool) | or --write-features into the store

What is planted, so that later stages have a signal a correct implementation must find:

* users fall in communities; the follow graph is Chung-Lu with Pareto (power-law)
  expected degrees, and a fraction `--within-community` of follows stays inside the
  follower's community;
* tag popularity is Zipf (long tail); each community prefers its own slice of the
  vocabulary; each user has personal tags and borrows one from someone they follow,
  so connected users tag alike (the social signal) and users have personal tags;
* each post draws 1..6 tags from its user's mixture; its image is drawn from the
  visual signatures of those tags (`jobs._synth_images`), so pixels carry tag signal;
* a fraction `--nonvisual-frac` of each community's slice of the vocabulary, its most
  used tags, is *not visual* (place, event, group tags: "berlin", "wedding2019", "ourclub",
  as on photo sites where such tags lead the frequency lists): such tags never
  show in the pixels or the synthetic features (a post with only such tags gets a
  neutral image). Only the user's history, their community and the people they follow
  predict them, which is what user factors and node2vec user vectors (+SN) are for: for
  a user with one or two posts, the social vector is the only other source. With every
  tag visual (0) the image alone nearly determines a post's tags;
* `--untagged-frac` posts have their tags hidden (kept in `untagged_truth.parquet`),
  `--shared-items-frac` posts re-post another user's photo (same `image` string).

Everything is vectorised numpy/pyarrow in chunks of 65,536 posts (one Parquet row group
each), so 10^6 posts with `--no-images` need bounded memory (benchmarks/results/synth.md). Output is a pure
function of the flags: the same seed gives byte-identical Parquet files and images,
whatever `--workers` is.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from jobs._cli import ArchiveArgs, arg, main_for, write_json
from jobs._synth_posts import post_users
from jobs._synth_world import build_world
from jobs._synth_write import (
    Paths,
    archive_meta,
    draw_images,
    params_of,
    prepare_dir,
    write_features,
    write_posts,
    write_world,
)
from jobs.errors import JobError

log = logging.getLogger("jobs")


@dataclass
class SynthConfig(ArchiveArgs):
    """Flags of `python -m jobs.synth` (plus the contract flags of ArchiveArgs).

    `--posts PATH` keeps its contract meaning (where posts.parquet goes); the sizes are
    `--num-users`, `--num-posts`, `--num-tags`, `--num-communities`.
    """

    archive: str = arg("", "archive folder for posts/edges/images/ground truth; empty: the folder of "
                           "--posts if given, else <out>/archive")
    num_users: int = arg(60, "number of users (each posts at least once)")
    num_posts: int = arg(400, "number of posts (>= --num-users)")
    num_tags: int = arg(40, "tag vocabulary size (Zipf popularity)")
    num_communities: int = arg(4, "user communities, each with its preferred tags")
    avg_degree: float = arg(8.0, "follows drawn per user before removing duplicates and self-loops")
    within_community: float = arg(0.85, "fraction of follows that stay inside the follower's community")
    social_influence: float = arg(0.15, "chance each tag draw copies a personal tag of a followee "
                                        "(similarity along edges beyond the community's)")
    nonvisual_frac: float = arg(0.25, "fraction of each community's tags, its most used ones, that do not show "
                                      "in images or features (place/event/group tags, predictable only from "
                                      "the user, their community and followees); 0: every tag is visual")
    image_size: str = arg("320x240", "mean image size WxH (sizes vary around it; a realistic photo-site "
                                     "size is 500x375, the demo default is smaller for speed)")
    # `images`, not `no_images`: argparse's BooleanOptionalAction reads any flag starting with
    # `--no-` as False, so a field named no_images could never be switched on.
    images: bool = arg(True, "write the image files; --no-images writes none (image strings still "
                             "point where the files would be)")
    untagged_frac: float = arg(0.05, "fraction of posts whose tags are hidden (posts to be tagged)")
    shared_items_frac: float = arg(0.0, "fraction of posts that re-post another user's photo (same image)")
    gray_frac: float = arg(0.05, "fraction of images saved grayscale")
    png_frac: float = arg(0.05, "fraction of images saved as PNG instead of JPEG")
    item_id_column: bool = arg(False, "write an explicit item_id column (forced by --write-features)")
    write_features: bool = arg(False, "write synthetic image/vgg16@1 and image/yolo@1 vectors into --store, "
                                      "keyed by item_id (for archive-scale tests; no CNN runs)")
    workers: int = arg(0, "processes rendering images (0: os.cpu_count())")
    # Python callers may say SynthConfig(no_images=True), the mode's name in the docs; not a flag
    # (the CLI spelling --no-images comes from `images` above).
    no_images: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, no_images: bool | None) -> None:
        if no_images is not None:
            self.images = not no_images


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise JobError(f"--image-size must be WxH such as 500x375, got {text!r}") from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise JobError(f"--image-size {text}: width and height must be in 16..4096")
    return w, h


def validate(cfg: SynthConfig) -> tuple[int, int]:
    """Check every flag; returns the mean image size (w, h). Raises JobError (exit 2)."""
    if cfg.posts.strip().isdigit():
        raise JobError(f"--posts is the posts.parquet path (contract flag), got {cfg.posts!r}; "
                       f"for the number of posts use --num-posts {cfg.posts.strip()}")
    checks = [
        (cfg.num_users >= 1, f"--num-users must be >= 1, got {cfg.num_users}"),
        (cfg.num_posts >= cfg.num_users,
         f"--num-posts ({cfg.num_posts}) must be >= --num-users ({cfg.num_users}): every user posts at least once"),
        (cfg.num_tags >= 1, f"--num-tags must be >= 1, got {cfg.num_tags}"),
        (1 <= cfg.num_communities <= cfg.num_users,
         f"--num-communities must be in 1..--num-users ({cfg.num_users}), got {cfg.num_communities}"),
        (cfg.avg_degree >= 0 and np.isfinite(cfg.avg_degree), f"--avg-degree must be >= 0, got {cfg.avg_degree}"),
        (0.0 <= cfg.within_community <= 1.0, f"--within-community must be in [0, 1], got {cfg.within_community}"),
        (0.0 <= cfg.social_influence <= 1.0, f"--social-influence must be in [0, 1], got {cfg.social_influence}"),
        (0.0 <= cfg.nonvisual_frac <= 1.0, f"--nonvisual-frac must be in [0, 1], got {cfg.nonvisual_frac}"),
        (0.0 <= cfg.untagged_frac < 1.0, f"--untagged-frac must be in [0, 1), got {cfg.untagged_frac}"),
        (0.0 <= cfg.shared_items_frac < 1.0, f"--shared-items-frac must be in [0, 1), got {cfg.shared_items_frac}"),
        (0.0 <= cfg.gray_frac <= 1.0, f"--gray-frac must be in [0, 1], got {cfg.gray_frac}"),
        (0.0 <= cfg.png_frac <= 1.0, f"--png-frac must be in [0, 1], got {cfg.png_frac}"),
        (cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}"),
        (cfg.workers >= 0, f"--workers must be >= 0 (0: all CPUs), got {cfg.workers}"),
        (cfg.num_posts < 2**40, f"--num-posts {cfg.num_posts} is absurd"),
        (not (cfg.write_features and cfg.images),
         "--write-features needs --no-images (with images, run jobs.extract on them instead)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise JobError(msg)
    return _parse_size(cfg.image_size)


def run(cfg: SynthConfig) -> dict[str, Any]:
    """Write the archive; returns the summary (counts, planted-signal statistics, files)."""
    size = validate(cfg)
    paths = Paths.of(cfg)
    params = params_of(cfg)
    keep_images = prepare_dir(paths, params)

    t0 = time.perf_counter()
    world = build_world(cfg)
    vocab = pa.array(world.tag_names, pa.string())
    user_of_post = post_users(cfg, world)
    write_world(paths, cfg, world, user_of_post, vocab)
    posts = write_posts(paths, cfg, world, user_of_post, size, vocab)
    sample_s = time.perf_counter() - t0

    written, kept, image_s = draw_images(cfg, paths, world, posts.specs, keep_images) if cfg.images else (0, 0, 0.0)
    features = write_features(cfg, posts.specs) if cfg.write_features else 0

    same = world.community[world.src] == world.community[world.dst]
    summary = {
        "archive": str(paths.root),
        "posts_file": str(paths.posts),
        "edges_file": str(paths.edges),
        "posts": cfg.num_posts,
        "users": cfg.num_users,
        "edges": int(len(world.src)),
        "tags": cfg.num_tags,
        "tags_used": int((posts.tag_counts > 0).sum()),
        "nonvisual_tags": int((~world.visual).sum()),
        "nonvisual_tag_use_frac": round(float(posts.tag_counts[~world.visual].sum() / max(posts.tag_counts.sum(), 1)), 4),
        "communities": cfg.num_communities,
        "untagged_posts": posts.untagged,
        "shared_posts": posts.reposts,
        "distinct_images": len(posts.specs),
        "within_community_edge_frac": round(float(same.mean()) if len(same) else 0.0, 4),
        "top_tag_share": round(float(posts.tag_counts.max() / max(posts.tag_counts.sum(), 1)), 4),
        "images_written": written,
        "images_kept": kept,
        "images_per_s": round(written / image_s, 1) if written else None,
        "features_written": features,
        "sample_s": round(sample_s, 3),
    }
    write_json(paths.root / "archive.json", archive_meta(cfg, paths, params, summary))
    _print_summary(summary)
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    imgs = (f"{s['images_written']} images written ({s['images_per_s']} img/s), {s['images_kept']} kept"
            if s["images_written"] or s["images_kept"] else "no image files (--no-images)")
    print(f"synth: {s['posts']} posts by {s['users']} users, {s['edges']} follows "
          f"({100 * s['within_community_edge_frac']:.0f}% in-community), {s['tags_used']}/{s['tags']} tags used, "
          f"{s['untagged_posts']} untagged, {s['shared_posts']} shared photos -> {s['archive']}")
    print(f"synth: {imgs}; {s['features_written']} feature rows")


def main() -> None:
    main_for("synth", SynthConfig, run, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
