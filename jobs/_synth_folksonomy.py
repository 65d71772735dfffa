"""A folksonomy where many users tag the same items (music artists, URLs, ...).

The photo archive of `jobs.synth` has one item per photo; social-tagging sites are the
other shape: a few thousand users tag the same items again and again, so what an item
is tagged with by everyone else is the strongest single signal, and what a user says of
every item (their own vocabulary) the second. Planted, as folksonomy data shows it
(Golder & Huberman 2006; Cattuto et al. 2007):

* Zipf popularity of items (a post picks an item by it) and of tags;
* genres: every tag but the generic ones ("seen live", "favourites", "awesome") belongs to
  one genre; every item has one or two genres, and its tags come from its genres' shared
  distribution (every rock band gets "rock", "alternative", ...; popular tags likelier) or
  from its own sparse distribution (a Dirichlet draw over a handful of its genres' tags);
* users have one to three favourite genres (most of their items come from them), an
  activity drawn from a heavy-tailed log-normal, a personal vocabulary (generic tags and
  tags of their genres, a few borrowed from friends) and a personal weight: how much their
  own vocabulary counts against the item's tags;
* a tag fits both the person and the item: p(t | u, i) is a product of the user's and the
  item's distributions (a product of experts, `Planted`), not a mixture of them. Which
  tags a resource gets depends jointly on who tags and what is tagged: users re-use their
  own vocabulary, but only where it describes the resource (Golder & Huberman 2006), which
  is the premise of the factorization models of tag recommendation (PITF: Rendle &
  Schmidt-Thieme, WSDM 2010; TTD: Symeonidis et al. 2008). Under a mixture (a draw from
  the user's vocabulary or else from the item's tags, `combine="mixture"`), the linear mix
  of the user's and the item's tag frequencies estimates the right ranking directly, which
  leaves little for a model to add; under the product, a tag of the user's that does not
  fit the item is unlikely, which frequencies added up cannot express;
* a friendship graph with homophily (friends share a favourite genre more often than
  chance) and heavy-tailed degrees;
* one post per (user, item), each with 1 + Poisson(1.6) distinct tags.

Pure numpy, seeded: the same parameters give the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_TAGS = 10        # distinct tags per post at most
GENERIC_FRAC = 0.1   # tags that belong to no genre (opinions, personal organisation)
COMBINE = ("product", "mixture")  # how a user's and an item's tag distributions combine (`Planted`)


@dataclass
class FolksonomyParams:
    """Sizes and strengths of the planted structure.

    The sizes are those of a public music-tagging dataset (~1,900 users, ~17,000 artists,
    ~12,000 tags, ~70,000 tagged (user, artist) pairs, ~13 friends per user). The strengths
    (tag Zipf exponent, personal weight, vocabulary size, sharpness, background) were set so that the frequency
    baselines reach on it about what they reach on that dataset after a 10-core with one
    test post per user (most-popular, user-popular, user-item-popular; the recommenders were
    not looked at), and the tail of the users' activity so that the same 10-core keeps about
    as many users as on that dataset (614 there; ~630 here, where a lighter tail kept ~1,070):
    benchmarks/results/folksonomy.md.
    """

    num_users: int = 1900
    num_items: int = 17_000
    num_tags: int = 12_000
    num_posts: int = 70_000
    num_genres: int = 25
    item_zipf: float = 1.0        # exponent of item popularity
    tag_zipf: float = 1.0         # exponent of tag popularity
    personal_weight: float = 0.45  # mean chance a tag comes from the user's vocabulary
    vocab_size: float = 20.0      # mean tags of a user's personal vocabulary (before borrowing from friends)
    sharpness: float = 1.7        # τ: exponent of the product of experts
    genre_share: float = 0.4      # weight of its genres' shared distribution in an item's side
    background: float = 0.02      # η: weight of global tag popularity in both sides (any tag can occur)
    combine: str = "product"      # how a user's side and an item's combine: "product" (of experts) or "mixture"
    taste: float = 0.7            # chance a post's item comes from a favourite genre
    activity_sigma: float = 1.9   # σ of the log-normal activity (posts per user): the tail of heavy taggers
    avg_friends: float = 13.0
    homophily: float = 0.6        # chance a friendship stays inside a favourite genre
    seed: int = 0

    def __post_init__(self) -> None:
        if self.combine not in COMBINE:
            raise ValueError(f"FolksonomyParams: combine {self.combine!r} is not a rule; use one of {list(COMBINE)}")
        if not self.num_users <= self.num_posts <= self.num_users * self.num_items:
            raise ValueError(f"FolksonomyParams: num_posts ({self.num_posts}) must be between num_users "
                             f"({self.num_users}) and num_users * num_items (one post per (user, item))")


@dataclass
class Folksonomy:
    """Posts as arrays plus the planted truth."""

    user: np.ndarray           # (P,) int64 user index
    item: np.ndarray           # (P,) int64 item index
    indptr: np.ndarray         # (P+1,) CSR of each post's tags
    tags: np.ndarray           # (nnz,) int64 tag indices
    src: np.ndarray            # (E,) friendships, undirected, src < dst
    dst: np.ndarray
    tag_genre: np.ndarray      # (T,) int64, -1 generic
    item_genres: np.ndarray    # (I, 2) int64 (second may repeat the first)
    user_genres: np.ndarray    # (U, 3) int64 favourite genres (may repeat)
    personal: np.ndarray       # (U,) float64 personal weight
    planted: Planted | None = None  # p(t | u, i), for the Bayes-optimal ranking


def _zipf(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.searchsorted(cdf, u * cdf[-1], side="right").clip(0, len(cdf) - 1)


def _genre_tables(p: FolksonomyParams, rng: np.random.Generator, tag_pop: np.ndarray) -> tuple[np.ndarray, list]:
    """(T,) genre of each tag (-1 generic) and, per genre, its tags with their popularity CDF."""
    genre = rng.integers(0, p.num_genres, p.num_tags)
    genre[rng.random(p.num_tags) < GENERIC_FRAC] = -1
    tables = []
    for g in range(-1, p.num_genres):
        tags = np.flatnonzero(genre == g)
        tables.append((tags, np.cumsum(tag_pop[tags]) if len(tags) else np.zeros(0)))
    return genre, tables  # tables[g + 1] holds genre g


def _items(p: FolksonomyParams, rng: np.random.Generator, tables: list) -> tuple[np.ndarray, list]:
    """Each item's genres and its own sparse tag distribution (tags, CDF) over them."""
    genres = rng.integers(0, p.num_genres, (p.num_items, 2))
    genres[:, 1] = np.where(rng.random(p.num_items) < 0.5, genres[:, 0], genres[:, 1])
    dists = []
    size = 3 + rng.poisson(5, p.num_items)
    for i in range(p.num_items):
        g = np.where(rng.random(size[i]) < 0.75, genres[i, 0], genres[i, 1])
        g = np.where(rng.random(size[i]) < 0.1, -1, g)
        cand = np.concatenate([tables[gg + 1][0][_draw(tables[gg + 1][1], rng.random(1))] for gg in g])
        tags = np.unique(cand)
        w = rng.dirichlet(np.full(len(tags), 0.7))
        dists.append((tags, np.cumsum(w)))
    return genres, dists


def _users(p: FolksonomyParams, rng: np.random.Generator, tables: list) -> tuple[np.ndarray, np.ndarray, list]:
    """Favourite genres, personal weight and vocabulary (tags, weights, genres) of every user."""
    n_fav = rng.integers(1, 4, p.num_users)
    fav = rng.integers(0, p.num_genres, (p.num_users, 3))
    fav[:, 1] = np.where(n_fav > 1, fav[:, 1], fav[:, 0])
    fav[:, 2] = np.where(n_fav > 2, fav[:, 2], fav[:, 0])
    a = 2.0
    personal = rng.beta(a, a * (1 - p.personal_weight) / p.personal_weight, p.num_users)
    vocab = []
    size = 3 + rng.poisson(p.vocab_size - 3, p.num_users)
    for u in range(p.num_users):
        g = np.where(rng.random(size[u]) < 0.4, -1, fav[u, rng.integers(0, 3, size[u])])
        tags = np.unique(np.concatenate([tables[gg + 1][0][_draw(tables[gg + 1][1], rng.random(1))] for gg in g]))
        vocab.append([tags, rng.dirichlet(np.full(len(tags), 0.5))])
    return fav, personal, vocab


def _friends(p: FolksonomyParams, rng: np.random.Generator, fav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected Chung-Lu friendships with Pareto weights, a share inside a favourite genre."""
    u = p.num_users
    w = (1.0 - rng.random(u)) ** (-1.0 / 1.5)
    cdf = np.cumsum(w)
    m = int(u * p.avg_friends / 2)
    src = _draw(cdf, rng.random(m))
    dst = _draw(cdf, rng.random(m))
    same = rng.random(m) < p.homophily
    if same.any():  # re-draw the partner among users sharing the source's first favourite genre
        by_genre = [np.flatnonzero((fav == g).any(1)) for g in range(p.num_genres)]
        g = fav[src[same], 0]
        pick = np.array([by_genre[x][rng.integers(0, len(by_genre[x]))] for x in g])
        dst[same] = pick
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = np.unique((a * u + b)[a != b])
    return key // u, key % u


def _borrow(rng: np.random.Generator, vocab: list, src: np.ndarray, dst: np.ndarray) -> None:
    """Each user takes up to two tags of a random friend's vocabulary (social influence)."""
    n = len(vocab)
    nb: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(src.tolist(), dst.tolist()):
        nb[a].append(b)
        nb[b].append(a)
    for u in range(n):
        if not nb[u]:
            continue
        f = nb[u][rng.integers(0, len(nb[u]))]
        ftags = vocab[f][0]
        take = rng.choice(ftags, min(2, len(ftags)), replace=False)
        tags = np.unique(np.concatenate([vocab[u][0], take]))
        vocab[u] = [tags, rng.dirichlet(np.full(len(tags), 0.5))]


def _posts_per_user(p: FolksonomyParams, rng: np.random.Generator) -> np.ndarray:
    """Posts of every user (one post per (user, item), so at most num_items), summing to num_posts.

    A user drawn past num_items posts is capped there and the excess goes to the others by
    their activity (the heavy tail would otherwise lose posts on small catalogues).
    """
    act = rng.lognormal(0.0, p.activity_sigma, p.num_users)
    n = 1 + rng.multinomial(p.num_posts - p.num_users, act / act.sum())
    while (n > p.num_items).any():
        excess = int((n - p.num_items).clip(0).sum())
        n = np.minimum(n, p.num_items)
        room = act * (n < p.num_items)
        n += rng.multinomial(excess, room / room.sum())
    return n


def _pick_items(p, rng, fav, n_posts, item_pop, item_genres) -> list[np.ndarray]:
    """Distinct items per user: from a favourite genre with prob `taste`, else by popularity."""
    cdf_all = np.cumsum(item_pop)
    by_genre = [np.flatnonzero(item_genres[:, 0] == g) for g in range(p.num_genres)]
    cdf_genre = [np.cumsum(item_pop[ix]) for ix in by_genre]
    out = []
    for u in range(p.num_users):
        want, got = int(n_posts[u]), np.zeros(0, np.int64)
        for _ in range(20):
            k = 2 * (want - len(got)) + 4
            g = fav[u, rng.integers(0, 3, k)]
            mine = rng.random(k) < p.taste
            pick = _draw(cdf_all, rng.random(k))
            for j in np.flatnonzero(mine):
                ix = by_genre[g[j]]
                if len(ix):
                    pick[j] = ix[_draw(cdf_genre[g[j]], rng.random(1))[0]]
            got = np.concatenate([got, pick])
            got = got[np.sort(np.unique(got, return_index=True)[1])]
            if len(got) >= want:
                break
        if len(got) < want:  # a very active user on a small catalogue: the rest by popularity
            rest = np.setdiff1d(np.arange(p.num_items), got)
            w = item_pop[rest] / item_pop[rest].sum()
            got = np.concatenate([got, rng.choice(rest, want - len(got), replace=False, p=w)])
        out.append(got[:want])
    return out


class Planted:
    """The planted tag distribution p(t | u, i) of every (user, item), sparse.

    With v_u = (1 - η) · the user's vocabulary + η · g and s_i = (1 - η) · the item's side +
    η · g (g: the tags' global popularity, η `background`; the item's side is `genre_share` ×
    its genres' shared distributions + the rest × its own sparse one) and w_u the user's
    personal weight:

    * "product" (the default): p(t | u, i) ∝ (v_u(t)^w_u · s_i(t)^(1 - w_u))^τ, τ `sharpness`,
      a product of experts: a tag is likely when it fits both the person and the item;
    * "mixture": p(t | u, i) = w_u · v_u(t) + (1 - w_u) · s_i(t), a tag from the user's
      vocabulary or else from the item's side, for which the linear mix of the user's and the
      item's tag frequencies is the right ranking.

    `scores` ranks tags by p: the Bayes-optimal ranking, the ceiling of any recommender.
    """

    def __init__(self, p: FolksonomyParams, tag_pop: np.ndarray, tables: list, item_genres: np.ndarray,
                 item_dists: list, vocab: list, personal: np.ndarray) -> None:
        self.eta, self.genre_share, self.tag_pop, self.combine = p.background, p.genre_share, tag_pop, p.combine
        self.tau = p.sharpness if p.combine == "product" else 1.0
        self.cdf_all = np.cumsum(tag_pop ** self.tau)
        self.g_tau = float((tag_pop ** self.tau).sum())
        self.tables = [(t, np.diff(c, prepend=0.0) / c[-1] if len(c) else c) for t, c in tables]
        self.item_genres, self.item_dists, self.vocab, self.personal = item_genres, item_dists, vocab, personal

    def item_side(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted tags, probabilities) of item i's side: its genres' shared tags and its own."""
        parts_t, parts_w = [], []
        for g in self.item_genres[i]:
            gt, gw = self.tables[g + 1]
            parts_t.append(gt)
            parts_w.append(0.5 * self.genre_share * gw)
        it, icdf = self.item_dists[i]
        parts_t.append(it)
        parts_w.append((1 - self.genre_share) * np.diff(icdf, prepend=0.0) / icdf[-1])
        tags, inv = np.unique(np.concatenate(parts_t), return_inverse=True)
        return tags, np.bincount(inv, np.concatenate(parts_w), len(tags))

    def support(self, u: int, side: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        """(tags, unnormalised p(t | u, i) on them, p's mass on every other tag together) for
        user u and an item's `item_side`."""
        st, sw = side
        vt, vw = self.vocab[u]
        at = np.searchsorted(st, vt).clip(max=len(st) - 1)
        new = st[at] != vt
        tags = np.concatenate([st, vt[new]])
        user = np.zeros(len(tags))
        user[np.where(new, len(st) + np.cumsum(new) - 1, at)] = vw
        item = np.concatenate([sw, np.zeros(int(new.sum()))])
        g, eta, w = self.tag_pop[tags], self.eta, self.personal[u]
        v, s = (1 - eta) * user + eta * g, (1 - eta) * item + eta * g
        if self.combine == "mixture":
            return tags, w * v + (1 - w) * s, eta * max(0.0, 1.0 - float(g.sum()))
        # a tag in neither side has v = s = η · g(t), so p ∝ (η · g(t))^τ
        prob = (v ** w * s ** (1 - w)) ** self.tau
        return tags, prob, eta ** self.tau * max(0.0, self.g_tau - float((g ** self.tau).sum()))

    def scores(self, u: int, i: int, candidates: np.ndarray) -> np.ndarray:
        """p(t | u, i) (unnormalised, one normaliser per (u, i)) of the tags `candidates`."""
        tags, prob, _ = self.support(u, self.item_side(i))
        out = (self.eta * self.tag_pop[candidates]) ** self.tau
        order = np.argsort(tags)
        at = np.searchsorted(tags[order], candidates).clip(max=len(tags) - 1)
        hit = tags[order][at] == candidates
        out[hit] = prob[order][at[hit]]
        return out


def _post_tags(rng: np.random.Generator, user: np.ndarray, item: np.ndarray, planted: Planted) -> list[np.ndarray]:
    """1 + Poisson(1.6) distinct tags per post, the first distinct of draws from p(t | u, i)
    (`Planted`); posts are visited item by item so each item's side is built once."""
    n = 1 + np.minimum(rng.poisson(1.6, len(user)), MAX_TAGS - 1)
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(user)
    order = np.argsort(item, kind="stable")
    bounds = np.flatnonzero(np.diff(item[order])) + 1
    for group in np.split(order, bounds):
        side = planted.item_side(int(item[group[0]]))
        for j in group:
            tags, prob, rest = planted.support(int(user[j]), side)
            k = 3 * n[j] + 3
            cdf = np.cumsum(prob)
            r = rng.random(k) * (cdf[-1] + rest)
            inside = r < cdf[-1]
            cand = np.empty(k, np.int64)
            cand[inside] = tags[_draw(cdf, r[inside] / cdf[-1])]
            cand[~inside] = _background(rng, planted.cdf_all, np.sort(tags), int((~inside).sum()))
            first = np.sort(np.unique(cand, return_index=True)[1])
            out[j] = cand[first][: n[j]]
    return out


def _background(rng: np.random.Generator, cdf: np.ndarray, exclude: np.ndarray, m: int) -> np.ndarray:
    """m tags drawn by global popularity (to the power τ) outside the sorted tags `exclude`."""
    out = _draw(cdf, rng.random(m))
    for _ in range(1000):
        at = np.searchsorted(exclude, out).clip(max=len(exclude) - 1)
        bad = exclude[at] == out
        if not bad.any():
            break
        out[bad] = _draw(cdf, rng.random(int(bad.sum())))
    return out


def make_folksonomy(p: FolksonomyParams) -> Folksonomy:
    """Draw the whole folksonomy (see the module docstring)."""
    rng = np.random.default_rng([p.seed, 0xF01C])
    tag_pop = _zipf(p.num_tags, p.tag_zipf)[rng.permutation(p.num_tags)]
    tag_genre, tables = _genre_tables(p, rng, tag_pop)
    item_genres, item_dists = _items(p, rng, tables)
    fav, personal, vocab = _users(p, rng, tables)
    src, dst = _friends(p, rng, fav)
    _borrow(rng, vocab, src, dst)
    item_pop = _zipf(p.num_items, p.item_zipf)[rng.permutation(p.num_items)]
    picks = _pick_items(p, rng, fav, _posts_per_user(p, rng), item_pop, item_genres)
    user = np.repeat(np.arange(p.num_users), [len(x) for x in picks])
    item = np.concatenate(picks).astype(np.int64)
    planted = Planted(p, tag_pop, tables, item_genres, item_dists, vocab, personal)
    tags = _post_tags(rng, user, item, planted)
    indptr = np.zeros(len(tags) + 1, np.int64)
    np.cumsum([len(t) for t in tags], out=indptr[1:])
    return Folksonomy(user.astype(np.int64), item, indptr, np.concatenate(tags).astype(np.int64),
                      src.astype(np.int64), dst.astype(np.int64), tag_genre, item_genres, fav, personal, planted)


def user_ids(n: int) -> np.ndarray:
    """Contract ids of user indices (not 0..U-1, so ids and indices are never confused)."""
    return 1000 + 7 * np.arange(n, dtype=np.int64)


def posts_table(f: Folksonomy, tag_names: list[str]) -> pa.Table:
    """The data contract's posts: one per (user, item), `item_id` explicit, no image files
    (each `image` names its item, `items/<item id>.jpg`, and does not exist: a tag-only archive)."""
    item_id = f.item + 1
    images = pc.binary_join_element_wise("items/", pc.cast(pa.array(item_id), pa.string()), ".jpg", "")
    vocab = pa.array(tag_names, pa.string())
    tags = pa.ListArray.from_arrays(pa.array(f.indptr.astype(np.int32)), vocab.take(pa.array(f.tags)))
    return pa.table({"post_id": pa.array(1 + np.arange(len(f.user), dtype=np.int64)),
                     "user_id": pa.array(user_ids(len(f.personal))[f.user]), "image": images, "tags": tags,
                     "item_id": pa.array(item_id)})


def edges_table(f: Folksonomy) -> pa.Table:
    """Friendships, each once (src < dst); the graph is undirected."""
    ids = user_ids(len(f.personal))
    return pa.table({"src": pa.array(ids[f.src]), "dst": pa.array(ids[f.dst])})


# --------------------------------------------------------------------------- jobs.synth --kind folksonomy


def params_from(cfg: Any) -> FolksonomyParams:
    """The generator's parameters from jobs.synth's flags (sizes, genres, friends, seed)."""
    return FolksonomyParams(num_users=cfg.num_users, num_items=cfg.num_items or max(1, cfg.num_posts // 4),
                            num_tags=cfg.num_tags, num_posts=cfg.num_posts, num_genres=cfg.num_genres,
                            avg_friends=cfg.avg_degree, seed=cfg.seed)


def truth_tables(f: Folksonomy, tag_names: list[str]) -> dict[str, pa.Table]:
    """users/items/tags.parquet: the planted genres, personal weights and post counts."""
    ids = user_ids(len(f.personal))
    return {
        "users": pa.table({"user_id": pa.array(ids), "favourite_genres": pa.array(f.user_genres.tolist()),
                           "personal_weight": pa.array(f.personal.astype(np.float32)),
                           "num_posts": pa.array(np.bincount(f.user, minlength=len(ids)).astype(np.int32))}),
        "items": pa.table({"item_id": pa.array(np.arange(1, len(f.item_genres) + 1, dtype=np.int64)),
                           "genres": pa.array(f.item_genres.tolist()),
                           "num_posts": pa.array(np.bincount(f.item, minlength=len(f.item_genres)).astype(np.int32))}),
        "tags": pa.table({"tag": pa.array(tag_names), "genre": pa.array(f.tag_genre.astype(np.int32))}),
    }


def write_folksonomy(cfg: Any, root: Path, posts: Path, edges: Path, tag_names: list[str]) -> dict[str, Any]:
    """posts.parquet, edges.parquet and the truth tables of a folksonomy; the summary's counts."""
    import pyarrow.parquet as pq

    f = make_folksonomy(params_from(cfg))
    for path, table in ((posts, posts_table(f, tag_names)), (edges, edges_table(f)),
                        *((root / f"{k}.parquet", t) for k, t in truth_tables(f, tag_names).items())):
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=65_536)
        tmp.replace(path)
    per_item = np.bincount(f.item)
    return {"posts": len(f.user), "users": len(f.personal), "items_tagged": int((per_item > 0).sum()),
            "edges": len(f.src), "tags": len(f.tag_genre), "tags_used": int(len(np.unique(f.tags))),
            "tag_assignments": len(f.tags), "posts_of_top_1pct_items": int(np.sort(per_item)[::-1][
                :max(1, len(per_item) // 100)].sum())}
