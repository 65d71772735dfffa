"""Sampling the synthetic archive's posts, one chunk of post indices at a time.

Each post gets a user (every user posts at least once, activity heavy-tailed), 1..6 tags
from the user's mixture (personal, community slice, global Zipf, a followee's personal
tags), maybe a re-post of an earlier photo, an image spec drawn from its visual tags, and
maybe hidden tags (posts to be tagged). A chunk's draws depend only on (seed, its first
index), so the posts are the same whatever the chunking downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs._synth_images import MAX_TAGS, ImageSpecs
from jobs._synth_world import World, sample_cdf, stream

if TYPE_CHECKING:
    from jobs.synth import SynthConfig

CANDIDATES = 10             # tag draws per post before de-duplication (for up to 6 distinct)


def post_users(cfg: SynthConfig, world: World) -> np.ndarray:
    """(P,) user index of every post: each user >= 1 post, activity log-normal (heavy tail)."""
    rng = stream(cfg.seed, 8)
    act = rng.lognormal(0.0, 1.0, cfg.num_users)
    counts = 1 + rng.multinomial(cfg.num_posts - cfg.num_users, act / act.sum())
    return rng.permutation(np.repeat(np.arange(cfg.num_users), counts))


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
    pos = sample_cdf(tm.slice_cdf, c + rng.random(len(c)), lo, lo + tm.slice_size[c])
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


def visual_only(tags: np.ndarray, visual: np.ndarray) -> np.ndarray:
    """(m, MAX_TAGS) tags -> the visual ones, in order, -1 padded (what an image shows)."""
    keep = (tags >= 0) & visual[np.maximum(tags, 0)]
    return first_unique(np.where(keep, tags, -1), np.full(len(tags), MAX_TAGS))
