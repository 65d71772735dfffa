"""The synthetic archive's world: communities, the follow graph and the tag model.

Everything `jobs.synth` plants before any post is drawn: balanced communities, a directed
Chung-Lu follow graph with power-law expected degrees kept mostly inside communities, a
Zipf tag vocabulary sliced among the communities, each user's personal tags (some borrowed
from followees: the social signal) and which tags are visual. Each part draws from its own
seeded stream (`rng(seed, part)`), so changing one part does not shift the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from jobs._synth_images import TagSignatures, make_signatures

if TYPE_CHECKING:
    from jobs.synth import SynthConfig

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



def stream(seed: int, part: int) -> np.random.Generator:
    """One independent generator per named part, so parts don't shift each other's draws."""
    return np.random.default_rng([seed, part])


def sample_cdf(flat_cdf: np.ndarray, target: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling in segments: segment s of `flat_cdf` rises from s to s+1.

    target = s + U[0,1); returns positions clipped into [lo, hi) of each draw's segment
    (the clip guards float round-off at segment ends).
    """
    pos = np.searchsorted(flat_cdf, target, side="right")
    return np.clip(pos, lo, hi - 1)


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
    return stream(cfg.seed, 1).permutation(np.arange(cfg.num_users) % cfg.num_communities).astype(np.int32)


def _graph(cfg: SynthConfig, community: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed Chung-Lu follows with Pareto(gamma=2.5) expected degrees, mostly in-community."""
    rng = stream(cfg.seed, 2)
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
    pos = sample_cdf(flat, target_c + rng.random(m), starts[target_c], starts[target_c] + sizes[target_c])
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
    inverse-CDF sampling then stays in cache (benchmarks/results/design-measurements.md).
    """
    rng = stream(cfg.seed, 3)
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
    rng = stream(cfg.seed, 4)
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
        signatures=make_signatures(cfg.num_tags, stream(cfg.seed, 5)),
        visual=_visual_tags(cfg, tags),
    )


