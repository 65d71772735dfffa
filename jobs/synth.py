"""`python -m jobs.synth`: a synthetic photo archive in the data contract's format (issue 2).

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
each), so 10^6 posts with `--no-images` take seconds in bounded memory. Output is a pure
function of the flags: the same seed gives byte-identical Parquet files and images,
whatever `--workers` is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs._cli import ArchiveArgs, arg, main_for, write_json
from jobs._progress import Progress
from jobs._synth_images import (
    MAX_TAGS,
    SHAPES,
    TEXTURES,
    ImageSpecs,
    TagSignatures,
    hex_colours,
    make_feature_model,
    make_signatures,
    render_many,
    synthetic_features,
)
from jobs.errors import JobError
from models.views import IC_DIM, IC_VIEW, OD_DIM, OD_VIEW

log = logging.getLogger("jobs")

ROW_GROUP = 65_536          # posts per chunk and per Parquet row group
CANDIDATES = 10             # tag draws per post before de-duplication (for up to 6 distinct)
FORMAT_VERSION = 1
FEATURE_PRODUCER = {"model": "synthetic", "weights": "none"}

_WORDS = (
    "sunset beach portrait city night street dog cat flower nature sky landscape water tree "
    "mountain snow winter summer autumn spring food travel architecture bridge car train bird "
    "macro bokeh blackandwhite family friends party wedding baby kids music concert festival art "
    "graffiti museum church castle lake river sea ocean boat harbour lighthouse forest park garden "
    "rain fog clouds storm moon stars desert road fields farm horse cow sheep insect butterfly "
    "reflection window door light shadow abstract texture colour red blue green yellow orange pink "
    "purple vintage film polaroid selfie fashion model studio sport football running cycling "
    "skate surf hiking camping coffee cake breakfast dinner market shop sign neon skyline tower "
    "station airport plane ship island village cottage ruins statue fountain stairs tunnel"
).split()


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
    image_size: str = arg("320x240", "mean image size WxH (sizes vary around it; the issue's realistic "
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
    # Python callers may say SynthConfig(no_images=True) as issue 2 names the mode; not a flag
    # (the CLI spelling --no-images comes from `images` above).
    no_images: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, no_images: bool | None) -> None:
        if no_images is not None:
            self.images = not no_images


# --------------------------------------------------------------------------- flags


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


def archive_dir(cfg: SynthConfig) -> Path:
    if cfg.archive:
        return Path(cfg.archive)
    return Path(cfg.posts).parent if cfg.posts else Path(cfg.out) / "archive"


def _rng(seed: int, stream: int) -> np.random.Generator:
    """One independent generator per named part, so parts don't shift each other's draws."""
    return np.random.default_rng([seed, stream])


def _sample_cdf(flat_cdf: np.ndarray, target: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling in segments: segment s of `flat_cdf` rises from s to s+1.

    target = s + U[0,1); returns positions clipped into [lo, hi) of each draw's segment
    (the clip guards float round-off at segment ends).
    """
    pos = np.searchsorted(flat_cdf, target, side="right")
    return np.clip(pos, lo, hi - 1)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """Users, graph and tag model: everything except the posts themselves."""

    user_ids: np.ndarray        # (U,) int64
    community: np.ndarray       # (U,) int32
    src: np.ndarray             # (E,) int64 user indices (follower)
    dst: np.ndarray             # (E,) int64 user indices (followee)
    weight: np.ndarray          # (E,) float32
    tag_names: list[str]        # (T,)
    tags: TagModel
    personal: np.ndarray        # (U, 5) int32 personal tags (3 own + 2 borrowed from followees)
    personal_weight: np.ndarray  # (U,) float64 chance a tag draw comes from the personal tags
    out_start: np.ndarray       # (U,) int64 first edge of each user (edges sorted by src)
    out_degree: np.ndarray      # (U,) int64 follows of each user
    social: float               # chance a tag draw copies a followee's personal tag
    signatures: TagSignatures
    visual: np.ndarray          # (T,) bool: the tag shows in the image (else place/event/group tag)


def tag_names(num_tags: int) -> list[str]:
    """Readable unique names: the word list, then word2, word3, ..."""
    return [_WORDS[i % len(_WORDS)] + ("" if i < len(_WORDS) else str(i // len(_WORDS) + 1))
            for i in range(num_tags)]


def _communities(cfg: SynthConfig) -> np.ndarray:
    """Balanced communities in random order: (U,) int32."""
    return _rng(cfg.seed, 1).permutation(np.arange(cfg.num_users) % cfg.num_communities).astype(np.int32)


def _graph(cfg: SynthConfig, community: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed Chung-Lu follows with Pareto(gamma=2.5) expected degrees, mostly in-community."""
    rng = _rng(cfg.seed, 2)
    u, c = cfg.num_users, cfg.num_communities
    w = (1.0 - rng.random(u)) ** (-1.0 / 1.5)                       # heavy tail, E[w] = 3
    w = np.minimum(w, max(u / 4.0, 1.0))
    m = int(round(u * cfg.avg_degree))
    src = np.searchsorted(np.cumsum(w) / w.sum(), rng.random(m), side="right").clip(0, u - 1)
    # target community: the follower's, or (outside follows) a uniformly chosen other one
    inside = rng.random(m) < cfg.within_community if c > 1 else np.ones(m, bool)
    target_c = np.where(inside, community[src], (community[src] + rng.integers(1, max(c, 2), m)) % c)
    # in-community sampling proportional to w: users sorted by community, one CDF segment each
    order = np.argsort(community, kind="stable")
    sizes = np.bincount(community, minlength=c)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = _segment_cdf(w[order], community[order], sizes)
    pos = _sample_cdf(flat, target_c + rng.random(m), starts[target_c], starts[target_c] + sizes[target_c])
    dst = order[pos]
    key = np.sort((src * u + dst)[src != dst])                      # drop self-loops and duplicates
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
    src, dst = key // u, key % u
    # tie strength: log-normal, stronger inside a community
    same = community[src] == community[dst]
    weight = np.round(rng.lognormal(0.0, 0.5, len(src)) * np.where(same, 1.5, 1.0), 3).astype(np.float32)
    return src.astype(np.int64), dst.astype(np.int64), weight


@dataclass
class TagModel:
    """Zipf popularity plus one vocabulary slice per community (sampling tables)."""

    popularity: np.ndarray      # (T,) float64 global Zipf probabilities
    pop_cdf: np.ndarray         # (T,) its CDF
    community: np.ndarray       # (T,) int32 the community whose slice holds each tag
    slice_order: np.ndarray     # (T,) tag indices sorted by community
    slice_cdf: np.ndarray       # (T,) segment c rises from c to c+1 over community c's slice (Zipf within)
    slice_start: np.ndarray     # (C,) int64
    slice_size: np.ndarray      # (C,) int64
    own_weight: np.ndarray      # (C,) chance a community draw comes from its own slice (else global head)


def _tag_model(cfg: SynthConfig) -> TagModel:
    """Community c's tag distribution = 0.3 * global Zipf + 0.7 * Zipf restricted to its slice.

    Kept as a two-part mixture (two small CDFs of T entries) rather than a dense (C, T) table:
    inverse-CDF sampling then stays in cache, ~10x faster at T = 5000, C = 50.
    """
    rng = _rng(cfg.seed, 3)
    t, c = cfg.num_tags, cfg.num_communities
    pop = 1.0 / np.arange(1, t + 1) ** 1.05
    pop /= pop.sum()
    tag_comm = np.empty(t, np.int32)
    tag_comm[rng.permutation(t)] = np.arange(t) % c                 # vocabulary sliced among communities
    order = np.argsort(tag_comm, kind="stable")
    sizes = np.bincount(tag_comm, minlength=c).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return TagModel(pop, np.cumsum(pop) / pop.sum(), tag_comm, order, _segment_cdf(pop[order], tag_comm[order], sizes),
                    starts, sizes, np.where(sizes > 0, 0.7, 0.0))


def _segment_cdf(weights: np.ndarray, segment: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenated CDFs: entries of segment s (contiguous, `sizes[s]` long) rise from s to s+1."""
    seg_sum = np.zeros(len(sizes))
    np.add.at(seg_sum, segment, weights)
    before = np.repeat(np.cumsum(seg_sum) - seg_sum, sizes)
    return segment + (np.cumsum(weights) - before) / np.repeat(np.maximum(seg_sum, 1e-300), sizes)


OWN_PERSONAL, BORROWED = 3, 2   # personal tags per user: own ones, and ones taken from followees


def _personal_tags(cfg: SynthConfig, pop: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, 5) personal tags: 3 own from the flattened tail, 2 borrowed from random followees.

    The borrowed ones make followers tag like the people they follow beyond what their
    community explains (the social signal node2vec user vectors should carry).
    """
    rng = _rng(cfg.seed, 4)
    u = cfg.num_users
    flat = pop ** 0.4
    own = np.searchsorted(np.cumsum(flat) / flat.sum(), rng.random((u, OWN_PERSONAL)), side="right")
    own = own.clip(0, len(pop) - 1).astype(np.int32)                  # (U, 3)
    outdeg = np.bincount(src, minlength=u)                          # edges are sorted by src
    first = np.concatenate([[0], np.cumsum(outdeg)[:-1]])[:, None]
    pick = first + np.floor(rng.random((u, BORROWED)) * np.maximum(outdeg, 1)[:, None]).astype(np.int64)
    followee = dst[np.minimum(pick, len(dst) - 1)] if len(dst) else np.zeros((u, BORROWED), np.int64)
    slot = rng.integers(0, OWN_PERSONAL, (u, BORROWED))
    rows = np.arange(u)[:, None]
    # users who follow nobody draw their own instead
    extra = np.where(outdeg[:, None] > 0, own[followee, slot], own[rows, (slot + 1) % OWN_PERSONAL])
    weight = rng.beta(2.0, 3.0, u)                                   # mean 0.4
    return np.concatenate([own, extra], 1), weight


def _visual_tags(cfg: SynthConfig, tags: TagModel) -> np.ndarray:
    """(T,) bool: all but the round(nonvisual_frac * size) most used tags of each community slice.

    A community's most used tags are its places, events and groups (on photo sites the top
    tags are largely such: cities, years, events), and they do not show in the pixels.
    Stratified by slice so every community has its own: knowing a user's community (what
    node2vec vectors carry) then predicts exactly the tags the image cannot. No random
    draw: the tags, graph and posts do not move with the flag.
    """
    order = tags.slice_order                                          # by slice, most popular first
    rank = np.arange(len(order)) - tags.slice_start[tags.community[order]]   # position inside its slice
    hidden = rank < np.rint(cfg.nonvisual_frac * tags.slice_size[tags.community[order]])
    visual = np.ones(len(order), bool)
    visual[order[hidden]] = False
    return visual


def visual_only(tags: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """(m, MAX_TAGS) tags -> the visual ones, in order, -1 padded (what an image shows)."""
    keep = (tags >= 0) & visual[np.maximum(tags, 0)]
    return first_unique(np.where(keep, tags, -1), np.full(len(tags), MAX_TAGS))


def build_world(cfg: SynthConfig) -> World:
    community = _communities(cfg)
    src, dst, weight = _graph(cfg, community)
    tags = _tag_model(cfg)
    personal, pweight = _personal_tags(cfg, tags.popularity, src, dst)
    return World(
        user_ids=1000 + 7 * np.arange(cfg.num_users, dtype=np.int64),   # not 0..U-1 on purpose
        community=community, src=src, dst=dst, weight=weight,
        tag_names=tag_names(cfg.num_tags), tags=tags,
        personal=personal, personal_weight=pweight,
        out_start=np.searchsorted(src, np.arange(cfg.num_users)).astype(np.int64),
        out_degree=np.bincount(src, minlength=cfg.num_users).astype(np.int64),
        social=cfg.social_influence,
        signatures=make_signatures(cfg.num_tags, _rng(cfg.seed, 5)),
        visual=_visual_tags(cfg, tags),
    )


# --------------------------------------------------------------------------- posts


def first_unique(cand: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per row, the first n[i] distinct non-negative values of cand (m, K) -> (m, MAX_TAGS), -1 padded."""
    m, k = cand.shape
    dup = cand < 0
    for j in range(1, k):                                            # K is small: K^2/2 vector compares
        dup[:, j] |= (cand[:, :j] == cand[:, j:j + 1]).any(1)
    keep = ~dup & (np.cumsum(~dup, 1) <= n[:, None])
    out = np.full((m, MAX_TAGS), -1, np.int32)
    rows, cols = np.nonzero(keep)
    slot = np.cumsum(keep, 1)[rows, cols] - 1
    out[rows, slot] = cand[rows, cols]
    return out


def _draw_tags(world: World, uidx: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(m, MAX_TAGS) tags of m posts of users `uidx`, from each user's three-part mixture.

    Each of CANDIDATES draws is a personal tag (prob. personal_weight), else a tag of the
    user's community slice (prob. own_weight), else a globally popular tag (Zipf).
    """
    tm, m = world.tags, len(uidx)
    comm = world.community[uidx].astype(np.int64)[:, None]                  # (m, 1)
    r = rng.random((m, CANDIDATES))
    pw = world.personal_weight[uidx][:, None]
    personal = r < pw
    own = ~personal & (r < pw + (1 - pw) * tm.own_weight[comm])
    glob = ~personal & ~own
    cand = np.empty((m, CANDIDATES), np.int32)
    rows, cols = np.nonzero(personal)
    cand[rows, cols] = world.personal[uidx[rows], rng.integers(0, world.personal.shape[1], len(rows))]
    c = np.broadcast_to(comm, own.shape)[own]                               # row-major, as cand[own]
    lo = tm.slice_start[c]
    pos = _sample_cdf(tm.slice_cdf, c + rng.random(len(c)), lo, lo + tm.slice_size[c])
    cand[own] = tm.slice_order[pos]
    g = int(glob.sum())
    cand[glob] = np.searchsorted(tm.pop_cdf, rng.random(g), side="right").clip(0, len(tm.pop_cdf) - 1)
    # Social influence: some draws copy a personal tag of someone the user follows.
    deg = world.out_degree[uidx]
    social = (rng.random((m, CANDIDATES)) < world.social) & (deg > 0)[:, None]
    rows, cols = np.nonzero(social)
    edge = world.out_start[uidx[rows]] + np.floor(rng.random(len(rows)) * deg[rows]).astype(np.int64)
    followee = world.dst[edge]
    cand[rows, cols] = world.personal[followee, rng.integers(0, world.personal.shape[1], len(rows))]
    return first_unique(cand, n)


@dataclass
class PostChunk:
    table: pa.Table            # the contract columns of this chunk
    hidden: pa.Table           # post_id, tags of the untagged posts (their hidden truth)
    specs: ImageSpecs          # one row per original (non-shared) image
    reposts: int
    tag_counts: np.ndarray     # (T,) visible uses of each tag


def image_strings(number: np.ndarray, png: np.ndarray) -> pa.Array:
    """images/<number // 1000, 3 digits>/<number>.jpg|png, built by pyarrow compute (no row loop)."""
    num = pa.array(number)
    folder = pc.utf8_lpad(pc.cast(pc.divide(num, 1000), pa.string()), 3, "0")
    ext = pc.if_else(pa.array(png), ".png", ".jpg")
    return pc.binary_join_element_wise("images/", folder, "/", pc.cast(num, pa.string()), ext, "")


def _tags_list(tags: np.ndarray, show: np.ndarray, vocab: pa.Array) -> pa.Array:
    """list<string> column from (m, MAX_TAGS) indices; rows with show=False are empty lists."""
    valid = (tags >= 0) & show[:, None]
    offsets = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(tags[valid])))


def sample_chunk(cfg: SynthConfig, world: World, user_of_post: np.ndarray, a: int, b: int,
                 size: tuple[int, int], vocab: pa.Array) -> PostChunk:
    """Posts a..b-1 (global indices): tags, hidden tags, shared photos, image specs."""
    rng = np.random.default_rng([cfg.seed, 6, a])
    m = b - a
    uidx = user_of_post[a:b]
    n = 1 + np.minimum(rng.poisson(1.6, m), MAX_TAGS - 1)            # 1..6 tags
    tags = _draw_tags(world, uidx, n, rng)
    # Re-posts: a photo first posted earlier in this chunk by another user; the re-poster's
    # tags start from the photo's tags (same photo, similar words) and go on with their own.
    number = np.arange(a, b, dtype=np.int64)
    repost = rng.random(m) < cfg.shared_items_frac
    repost[0] = False
    source = np.floor(rng.random(m) * np.arange(m)).astype(np.int64)   # an earlier row of the chunk
    source = np.where(repost, source, np.arange(m))
    # follow chains to the original and drop self re-posts
    for _ in range(64):
        chained = repost[source]
        if not chained.any():
            break
        source = np.where(chained, source[source], source)
    repost &= ~repost[source] & (uidx[source] != uidx)
    source = np.where(repost, source, np.arange(m))
    if repost.any():
        r = np.nonzero(repost)[0]
        cand = np.concatenate([tags[source[r]], _draw_tags(world, uidx[r], np.full(len(r), MAX_TAGS), rng)], 1)
        tags[r] = first_unique(cand, n[r])
    number = number[source]
    w, h = size
    png = rng.random(m) < cfg.png_frac
    png = png[source]                                                  # a shared photo is one file
    gray = rng.random(m) < cfg.gray_frac
    scale = np.exp(rng.normal(0.0, 0.15, m))
    orient = rng.random(m)
    bw = np.where(orient < 0.7, w, np.where(orient < 0.9, h, np.sqrt(w * h)))   # landscape/portrait/square
    bh = np.where(orient < 0.7, h, np.where(orient < 0.9, w, np.sqrt(w * h)))
    width = np.clip(np.rint(bw * scale), 16, 4096).astype(np.int32)
    height = np.clip(np.rint(bh * scale), 16, 4096).astype(np.int32)
    hide = rng.random(m) < cfg.untagged_frac
    post_id = 10_000_000 + 3 * np.arange(a, b, dtype=np.int64)       # unique, not contiguous
    cols: dict[str, pa.Array] = {
        "post_id": pa.array(post_id),
        "user_id": pa.array(world.user_ids[uidx]),
        "image": image_strings(number, png),
        "tags": _tags_list(tags, ~hide, vocab),
    }
    if cfg.item_id_column or cfg.write_features:
        cols["item_id"] = pa.array(number + 1)                       # one item per file
    orig = ~repost
    # The image shows the visual tags only; non-visual ones (places, events) leave no trace.
    specs = ImageSpecs(number[orig], width[orig], height[orig], gray[orig], png[orig],
                       visual_only(tags[orig], world.visual))
    hidden = pa.table({"post_id": pa.array(post_id[hide]), "tags": _tags_list(tags[hide], np.ones(hide.sum(), bool), vocab)})
    visible = tags[(tags >= 0) & ~hide[:, None]]
    counts = np.bincount(visible, minlength=len(world.tag_names))
    return PostChunk(pa.table(cols), hidden, specs, int(repost.sum()), counts)


# --------------------------------------------------------------------------- writing


def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP)
    tmp.replace(path)


@dataclass
class Paths:
    """Where the archive goes: `image` strings are relative to the posts file's folder."""

    root: Path       # archive.json, users/tags/untagged_truth.parquet
    posts: Path
    edges: Path

    @property
    def image_root(self) -> Path:
        return self.posts.parent

    @staticmethod
    def of(cfg: SynthConfig) -> Paths:
        root = archive_dir(cfg)
        return Paths(root, Path(cfg.posts) if cfg.posts else root / "posts.parquet",
                     Path(cfg.edges) if cfg.edges else root / "edges.parquet")


def _prepare_dir(paths: Paths, params: dict[str, Any]) -> bool:
    """Claim the target folder; returns True when images already there may be kept.

    archive.json is written first (marked incomplete), so a killed run is recognised as
    ours: re-run with the same flags, it keeps the images already written (each one was
    renamed into place whole) and draws only the rest. Other flags: the old images go.
    """
    meta = paths.root / "archive.json"
    if paths.posts.exists() and not meta.exists():
        raise JobError(f"{paths.posts} exists and was not written by jobs.synth; choose another "
                       f"--archive/--out or remove it")
    same = False
    if meta.exists():
        try:
            same = json.loads(meta.read_text()).get("params") == params
        except (json.JSONDecodeError, OSError):
            same = False
        images = paths.image_root / "images"
        if not same and images.is_dir():
            shutil.rmtree(images)               # ours (archive.json says so), drawn with other flags
    for d in (paths.root, paths.posts.parent, paths.edges.parent):
        d.mkdir(parents=True, exist_ok=True)
    write_json(meta, {"generator": "jobs.synth", "format": FORMAT_VERSION, "complete": False, "params": params})
    return same


def _user_table(cfg: SynthConfig, world: World, user_of_post: np.ndarray, vocab: pa.Array) -> pa.Table:
    k = world.personal.shape[1]
    offsets = pa.array(np.arange(0, k * cfg.num_users + 1, k, dtype=np.int32))
    return pa.table({
        "user_id": pa.array(world.user_ids),
        "community": pa.array(world.community),
        "personal_tags": pa.ListArray.from_arrays(offsets, vocab.take(pa.array(world.personal.reshape(-1)))),
        "personal_weight": pa.array(world.personal_weight.astype(np.float32)),
        "num_posts": pa.array(np.bincount(user_of_post, minlength=cfg.num_users).astype(np.int32)),
    })


def _tag_table(world: World, vocab: pa.Array) -> pa.Table:
    sig = world.signatures
    return pa.table({
        "tag": vocab,
        "popularity": pa.array(world.tags.popularity),
        "community": pa.array(world.tags.community),
        "visual": pa.array(world.visual),
        "texture": pa.array(np.array(TEXTURES)[sig.texture]),
        "shape": pa.array(np.array(SHAPES)[sig.shape]),
        "colour_a": pa.array(hex_colours(sig.palette[:, 0])),
        "colour_b": pa.array(hex_colours(sig.palette[:, 1])),
        "accent": pa.array(hex_colours(sig.palette[:, 2])),
    })


def _user_of_post(cfg: SynthConfig, world: World) -> np.ndarray:
    """(P,) user index of every post: each user >= 1 post, activity log-normal (heavy tail)."""
    rng = _rng(cfg.seed, 8)
    act = rng.lognormal(0.0, 1.0, cfg.num_users)
    counts = 1 + rng.multinomial(cfg.num_posts - cfg.num_users, act / act.sum())
    return rng.permutation(np.repeat(np.arange(cfg.num_users), counts))


def _params(cfg: SynthConfig) -> dict[str, Any]:
    """The flags that shape the output (not where it goes, nor how many workers)."""
    skip = {"posts", "edges", "store", "out", "archive", "workers"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def _write_features(cfg: SynthConfig, specs: ImageSpecs) -> int:
    """Synthetic IC/OD vectors for every item, keyed by item_id = number + 1, in 64k batches."""
    try:
        from featurestore import Store
    except ImportError as e:
        raise JobError(f"--write-features needs featurestore.Store ({e})") from None
    model = make_feature_model(cfg.num_tags, _rng(cfg.seed, 9))
    order = np.argsort(specs.number, kind="stable")                  # keys ascending: LMDB appends
    prog = Progress("synth features", total=len(order), unit="item")
    # durable=False: no fsync per 64k batch (the writer syncs once when it closes); a crash
    # only means re-running this deterministic job.
    with Store.open(str(cfg.store_path()), create=True, durable=False) as store:
        store.create_view(IC_VIEW, IC_DIM, producer=FEATURE_PRODUCER)
        store.create_view(OD_VIEW, OD_DIM, producer=FEATURE_PRODUCER)
        _put_features(store, specs, order, model, cfg.seed, prog)
    prog.close()
    return len(order)


def _put_features(store: Any, specs: ImageSpecs, order: np.ndarray, model: Any, seed: int, prog: Progress) -> None:
    """One transaction per view per 64k items; re-running rewrites the same bytes (idempotent)."""
    with store.writer(IC_VIEW) as wz, store.writer(OD_VIEW) as wo:
        for k, a in enumerate(range(0, len(order), ROW_GROUP)):
            idx = order[a:a + ROW_GROUP]
            z, o = synthetic_features(specs.tags[idx], model, np.random.default_rng([seed, 10, k]))
            ids = specs.number[idx] + 1
            wz.put(ids, z)                                       # (n, 512)
            wo.put(ids, o)                                       # (n, 80)
            prog.update(len(idx))


def _write_world(paths: Paths, cfg: SynthConfig, world: World, user_of_post: np.ndarray, vocab: pa.Array) -> None:
    _write_table(paths.edges, pa.table({"src": pa.array(world.user_ids[world.src]),
                                        "dst": pa.array(world.user_ids[world.dst]),
                                        "weight": pa.array(world.weight)}))
    _write_table(paths.root / "users.parquet", _user_table(cfg, world, user_of_post, vocab))
    _write_table(paths.root / "tags.parquet", _tag_table(world, vocab))


@dataclass
class PostsWritten:
    specs: ImageSpecs          # the distinct images to draw
    untagged: int
    reposts: int
    tag_counts: np.ndarray     # (T,) visible uses


def _write_posts(paths: Paths, cfg: SynthConfig, world: World, user_of_post: np.ndarray,
                 size: tuple[int, int], vocab: pa.Array) -> PostsWritten:
    """posts.parquet one 64k row group per chunk (streamed: one chunk in memory at a time)."""
    prog = Progress("synth posts", total=cfg.num_posts, unit="post")
    specs, hidden, reposts, tag_counts = [], [], 0, np.zeros(cfg.num_tags, np.int64)
    tmp = paths.posts.with_name(paths.posts.name + ".tmp")
    writer = None
    try:
        for a in range(0, cfg.num_posts, ROW_GROUP):
            chunk = sample_chunk(cfg, world, user_of_post, a, min(a + ROW_GROUP, cfg.num_posts), size, vocab)
            writer = writer or pq.ParquetWriter(tmp, chunk.table.schema)
            writer.write_table(chunk.table, row_group_size=ROW_GROUP)
            specs.append(chunk.specs)
            hidden.append(chunk.hidden)
            reposts += chunk.reposts
            tag_counts += chunk.tag_counts
            prog.update(chunk.table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(paths.posts)
    prog.close()
    untagged = pa.concat_tables(hidden)
    _write_table(paths.root / "untagged_truth.parquet", untagged)
    return PostsWritten(ImageSpecs.concat(specs), untagged.num_rows, reposts, tag_counts)


def _draw_images(cfg: SynthConfig, paths: Paths, world: World, specs: ImageSpecs, keep: bool) -> tuple[int, int, float]:
    """(written, kept, seconds): every distinct image, over a process pool."""
    t0 = time.perf_counter()
    written = kept = 0
    workers = cfg.workers or os.cpu_count() or 1
    prog = Progress("synth images", total=len(specs), unit="img")
    for w, k in render_many(specs, paths.image_root, world.signatures, cfg.seed, workers, skip_existing=keep):
        written, kept = written + w, kept + k
        prog.update(w + k)
    prog.close()
    return written, kept, time.perf_counter() - t0


def run(cfg: SynthConfig) -> dict[str, Any]:
    """Write the archive; returns the summary (counts, planted-signal statistics, files)."""
    size = validate(cfg)
    paths = Paths.of(cfg)
    params = _params(cfg)
    keep_images = _prepare_dir(paths, params)

    t0 = time.perf_counter()
    world = build_world(cfg)
    vocab = pa.array(world.tag_names, pa.string())
    user_of_post = _user_of_post(cfg, world)
    _write_world(paths, cfg, world, user_of_post, vocab)
    posts = _write_posts(paths, cfg, world, user_of_post, size, vocab)
    sample_s = time.perf_counter() - t0

    written, kept, image_s = _draw_images(cfg, paths, world, posts.specs, keep_images) if cfg.images else (0, 0, 0.0)
    features = _write_features(cfg, posts.specs) if cfg.write_features else 0

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
    write_json(paths.root / "archive.json", _archive_meta(cfg, paths, params, summary))
    _print_summary(summary)
    return summary


def _archive_meta(cfg: SynthConfig, paths: Paths, params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """archive.json: generation flags, files, counts and where the ground truth is."""
    rel = lambda p: os.path.relpath(p, paths.root)  # noqa: E731
    return {
        "generator": "jobs.synth",
        "format": FORMAT_VERSION,
        "complete": True,
        "params": params,
        "files": {"posts": rel(paths.posts), "edges": rel(paths.edges), "users": "users.parquet",
                  "tags": "tags.parquet", "untagged_truth": "untagged_truth.parquet",
                  "images": rel(paths.image_root / "images") if cfg.images else None},
        "counts": {k: summary[k] for k in ("posts", "users", "edges", "tags", "tags_used", "untagged_posts",
                                           "shared_posts", "distinct_images")},
        "truth": {
            "within_community_edge_frac": summary["within_community_edge_frac"],
            "community_of_user": "users.parquet: user_id, community, personal_tags (3 own + 2 from followees)",
            "tag_signatures": "tags.parquet: tag, popularity, community, visual (shows in the image), "
                              "texture, shape, colours",
            "untagged_posts": "untagged_truth.parquet: post_id, the hidden tags",
            "item_id": ("column: number of the photo's first post + 1" if cfg.item_id_column or cfg.write_features
                        else "no column: one item per distinct image (jobs.contract)"),
            "features": {"views": [IC_VIEW, OD_VIEW], "producer": FEATURE_PRODUCER} if cfg.write_features else None,
        },
    }


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
