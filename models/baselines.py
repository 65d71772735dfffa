"""The frequency baselines of the folksonomy literature (Jäschke et al. 2007, "most popular tags").

- `most-popular`: the globally most frequent training tags, the same list for every post.
- `user-popular`: the user's own most used tags.
- `item-popular`: the item's most used tags (what everyone else tagged this artist, URL, photo).
- `friends-popular`: the mean over the user's friends (social graph) of P(t | friend).
- `user-item-popular`: the mix `alpha * P(t | user) + (1 - alpha) * P(t | item)`, with
  P(t | user) the fraction of the user's training posts that carry t (likewise per item),
  so a user with many posts and an item with few weigh the same; `alpha` is chosen on the
  validation split (`tune_alpha`).

All but most-popular are one `PopularityMix` (user-popular: alpha = 1, item-popular:
alpha = 0). Ties, and the rest of a list after the user's and item's own tags, follow the
global order, so every list is full.

Fallbacks (where items are unique, each photo posted once, every test item is unseen in
training; the same for a user seen only in the test split): an unseen user or item adds
nothing, so item-popular falls back to most-popular, user-item-popular to user-popular for
an unseen item and to item-popular for an unseen user, and to most-popular when both are
unseen. On an archive of unique photos user-item-popular is therefore user-popular.

Fitted from (user index, tag index[, item index]) of every training (post, tag) pair plus
the post count of each user and item; `recommend(user_index, k, item_index) -> (n, k)`
tag indices and `scores_topk` with the scores, vectorised over candidate (post, tag) pairs
in chunks, so they hold at archive scale.
"""

from __future__ import annotations

import numpy as np

from models.metrics import metrics_at_k

BASELINES = ("most-popular", "user-popular", "item-popular", "user-item-popular")
SOCIAL_BASELINES = ("friends-popular",)  # need the social graph
# Weights tried for the mix: its ends (0: item-popular, 1: user-popular) are baselines of their
# own, and leaving them out keeps the mix a mix where one side carries no signal (unique items).
ALPHA_GRID = tuple(np.round(np.linspace(0.1, 0.9, 9), 2))
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (query row, tag, score) per candidate
CANDIDATES_PER_CHUNK = 1 << 22  # candidate (post, tag) pairs held at once by scores_topk


class MostPopular:
    """Global tag frequency; `order` is the tag indices, most frequent first (ties by index)."""

    name = "most-popular"

    def __init__(self, n_tags: int) -> None:
        self.n_tags = n_tags
        self.counts = np.zeros(n_tags, dtype=np.int64)
        self.order = np.arange(n_tags)

    def fit(self, user_index: np.ndarray, tag_index: np.ndarray, item_index: np.ndarray | None = None,
            post_index: np.ndarray | None = None) -> MostPopular:
        self.counts = np.bincount(tag_index, minlength=self.n_tags).astype(np.int64)
        self.order = np.lexsort((np.arange(self.n_tags), -self.counts))
        return self

    def scores_topk(self, user_index: np.ndarray, k: int,
                    item_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) tags and (n, k) scores: the share of training pairs each tag holds."""
        top = _pad(self.order[:k], k)
        share = np.where(top >= 0, self.counts[np.maximum(top, 0)] / max(self.counts.sum(), 1), 0.0)
        n = len(user_index)
        return np.broadcast_to(top, (n, k)).copy(), np.broadcast_to(share, (n, k)).copy()

    def recommend(self, user_index: np.ndarray, k: int, item_index: np.ndarray | None = None) -> np.ndarray:
        return self.scores_topk(user_index, k, item_index)[0]


class _RowShares:
    """Per row (a user or an item): each tag's share of the row's posts, as CSR sorted by row."""

    def __init__(self, rows: np.ndarray, tags: np.ndarray, posts_per_row: np.ndarray, n_tags: int) -> None:
        codes = rows.astype(np.int64) * n_tags + tags
        uniq, counts = np.unique(codes, return_counts=True)
        r = uniq // n_tags
        self.tags = uniq % n_tags
        self.share = counts / np.maximum(posts_per_row[r], 1)
        self.indptr = np.zeros(len(posts_per_row) + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=len(posts_per_row)), out=self.indptr[1:])

    def lengths(self, idx: np.ndarray) -> np.ndarray:
        ok = idx >= 0
        out = np.zeros(len(idx), np.int64)
        out[ok] = self.indptr[idx[ok] + 1] - self.indptr[idx[ok]]
        return out

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, tag, share) of every entry of rows idx (-1: none)."""
        lens = self.lengths(idx)
        q = np.repeat(np.arange(len(idx)), lens)
        start = np.repeat(np.where(idx >= 0, self.indptr[np.maximum(idx, 0)], 0) - np.cumsum(lens) + lens, lens)
        at = start + np.arange(int(lens.sum()))
        return q, self.tags[at], self.share[at]


class PopularityMix:
    """alpha * P(t | user) + (1 - alpha) * P(t | item), ties and the rest in the global order."""

    def __init__(self, n_tags: int, n_users: int, n_items: int = 0, alpha: float = 0.5,
                 name: str = "user-item-popular") -> None:
        self.n_tags, self.n_users, self.n_items, self.alpha, self.name = n_tags, n_users, n_items, alpha, name
        self.global_ = MostPopular(n_tags)
        self.users: _RowShares | None = None
        self.items: _RowShares | None = None

    def fit(self, user_index: np.ndarray, tag_index: np.ndarray, item_index: np.ndarray | None = None,
            post_index: np.ndarray | None = None) -> PopularityMix:
        """Pairs of the training posts; post_index (one per pair) counts each row's posts
        (without it every pair counts as a post, which orders a row's tags alike)."""
        user_index, tag_index = np.asarray(user_index, np.int64), np.asarray(tag_index, np.int64)
        self.global_.fit(user_index, tag_index)
        self.users = _RowShares(user_index, tag_index, _posts_per_row(user_index, post_index, self.n_users),
                                self.n_tags)
        if item_index is not None and self.n_items > 0:
            item_index = np.asarray(item_index, np.int64)
            self.items = _RowShares(item_index, tag_index, _posts_per_row(item_index, post_index, self.n_items),
                                    self.n_tags)
        return self

    def scores_topk(self, user_index: np.ndarray, k: int,
                    item_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) tag indices best first and (n, k) mixed scores in [0, 1]; -1 / 0 pad."""
        user_index = np.asarray(user_index, np.int64)
        item_index = np.full(len(user_index), -1, np.int64) if item_index is None else np.asarray(item_index, np.int64)
        tags = np.full((len(user_index), k), -1, np.int64)
        scores = np.zeros((len(user_index), k))
        per_post = self._lengths(user_index, item_index) + k
        bounds = np.searchsorted(np.cumsum(per_post), np.arange(0, per_post.sum(), CANDIDATES_PER_CHUNK), "right")
        cuts = np.unique(np.concatenate([[0], bounds, [len(user_index)]]))
        for a, b in zip(cuts[:-1], cuts[1:]):
            tags[a:b], scores[a:b] = self._chunk(user_index[a:b], item_index[a:b], k)
        return tags, scores

    def recommend(self, user_index: np.ndarray, k: int, item_index: np.ndarray | None = None) -> np.ndarray:
        return self.scores_topk(user_index, k, item_index)[0]

    def _parts(self) -> list[tuple[_RowShares, float, str]]:
        out = []
        if self.users is not None and self.alpha > 0:
            out.append((self.users, self.alpha, "user"))
        if self.items is not None and self.alpha < 1:
            out.append((self.items, 1.0 - self.alpha, "item"))
        return out

    def _lengths(self, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
        out = np.zeros(len(user_index), np.int64)
        for table, _, which in self._parts():
            out += table.lengths(user_index if which == "user" else item_index)
        return out

    def _candidates(self, user_index: np.ndarray, item_index: np.ndarray) -> list[Candidates]:
        """(query row, tag, weighted share) of the user's and the item's tags."""
        out: list[Candidates] = []
        for table, weight, which in self._parts():
            q, t, s = table.gather(user_index if which == "user" else item_index)
            out.append((q, t, weight * s))
        return out

    def _chunk(self, user_index: np.ndarray, item_index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k of the summed candidate scores per query, ties and the rest in the global order."""
        n, T = len(user_index), self.n_tags
        gk = self.global_.order[:k]
        cands: list[Candidates] = [(np.repeat(np.arange(n), len(gk)), np.tile(gk, n), np.zeros(n * len(gk)))]
        cands += self._candidates(user_index, item_index)
        codes = np.concatenate([c[0] for c in cands]) * T + np.concatenate([c[1] for c in cands])
        uniq, inv = np.unique(codes, return_inverse=True)
        score = np.bincount(inv.reshape(-1), weights=np.concatenate([c[2] for c in cands]), minlength=len(uniq))
        q, t = uniq // T, uniq % T
        rank = np.empty(T, np.int64)
        rank[self.global_.order] = np.arange(T)
        order = np.lexsort((rank[t], -score, q))
        q, t, score = q[order], t[order], score[order]
        start = np.searchsorted(q, np.arange(n))
        pos = np.arange(len(q)) - start[q]
        keep = pos < k
        tags = np.full((n, k), -1, np.int64)
        scores = np.zeros((n, k))
        tags[q[keep], pos[keep]] = t[keep]
        scores[q[keep], pos[keep]] = score[keep]
        return tags, scores


class UserPopular(PopularityMix):
    """Per-user tag frequency with the global order as tie-break and fallback."""

    def __init__(self, n_tags: int, n_users: int, n_items: int = 0) -> None:
        super().__init__(n_tags, n_users, n_items, alpha=1.0, name="user-popular")


class ItemPopular(PopularityMix):
    """Per-item tag frequency with the global order as tie-break and fallback."""

    def __init__(self, n_tags: int, n_users: int, n_items: int = 0) -> None:
        super().__init__(n_tags, n_users, n_items, alpha=0.0, name="item-popular")


class FriendsPopular(PopularityMix):
    """The mean over a user's friends of P(t | friend): what the people they know tag with.

    Friends are the user's neighbours in the social graph (CSR over user indices, both
    directions for an undirected graph) that have training posts; a user with none gets the
    global list. Needs no history of the user: the baseline of the cold-start user.
    """

    def __init__(self, n_tags: int, n_users: int, indptr: np.ndarray, indices: np.ndarray) -> None:
        super().__init__(n_tags, n_users, 0, alpha=1.0, name="friends-popular")
        self.nb_indptr, self.nb_indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)

    def _friends(self, user_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query row, friend) of every friend with training posts of each query user."""
        users = self.users
        assert users is not None, "fit first"
        lens = np.where(user_index >= 0, self.nb_indptr[np.maximum(user_index, 0) + 1]
                        - self.nb_indptr[np.maximum(user_index, 0)], 0)
        q = np.repeat(np.arange(len(user_index)), lens)
        start = np.repeat(np.where(user_index >= 0, self.nb_indptr[np.maximum(user_index, 0)], 0)
                          - np.cumsum(lens) + lens, lens)
        f = self.nb_indices[start + np.arange(int(lens.sum()))]
        has = users.lengths(f) > 0
        return q[has], f[has]

    def _lengths(self, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
        assert self.users is not None, "fit first"
        q, f = self._friends(user_index)
        return np.bincount(q, weights=self.users.lengths(f), minlength=len(user_index)).astype(np.int64)

    def _candidates(self, user_index: np.ndarray, item_index: np.ndarray) -> list[Candidates]:
        assert self.users is not None, "fit first"
        q, f = self._friends(user_index)
        n_friends = np.bincount(q, minlength=len(user_index))
        fq, t, share = self.users.gather(f)
        owner = q[fq]
        return [(owner, t, share / n_friends[owner])]


def _posts_per_row(rows: np.ndarray, post_index: np.ndarray | None, n_rows: int) -> np.ndarray:
    """Distinct posts per row (pairs per row without post_index)."""
    if post_index is None:
        return np.bincount(rows, minlength=n_rows)
    first = np.unique(np.asarray(post_index, np.int64), return_index=True)[1]
    return np.bincount(rows[first], minlength=n_rows)


def _pad(order: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, -1, dtype=np.int64)
    out[: len(order)] = order
    return out


def tune_alpha(model: PopularityMix, user_index: np.ndarray, item_index: np.ndarray, indptr: np.ndarray,
               indices: np.ndarray, grid: tuple[float, ...] = ALPHA_GRID, k: int = 5) -> dict[float, float]:
    """F1@k on validation posts for each alpha of the grid; sets model.alpha to the best
    (ties: the one nearest 0.5, the unweighted mix). With no validation posts alpha stays."""
    if len(user_index) == 0:
        return {}
    f1 = {}
    for a in grid:
        model.alpha = float(a)
        f1[float(a)] = metrics_at_k(model.recommend(user_index, k, item_index), indptr, indices, ks=(k,))[f"f1@{k}"]
    best = max(f1.values())
    model.alpha = min((a for a, v in f1.items() if v == best), key=lambda a: abs(a - 0.5))
    return f1


def get_baseline(name: str, n_tags: int, n_users: int, n_items: int = 0) -> MostPopular | PopularityMix:
    """A fresh baseline by name; ModelError listing the valid names otherwise."""
    if name == "most-popular":
        return MostPopular(n_tags)
    if name == "user-popular":
        return UserPopular(n_tags, n_users, n_items)
    if name == "item-popular":
        return ItemPopular(n_tags, n_users, n_items)
    if name == "user-item-popular":
        return PopularityMix(n_tags, n_users, n_items)
    from models.errors import ModelError

    raise ModelError(f"unknown baseline {name!r}; valid: {list(BASELINES)}")
