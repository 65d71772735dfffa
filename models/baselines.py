"""The non-personal and personal frequency baselines.

`most-popular`: the globally most frequent training tags, the same list for every post.
`user-popular`: the user's own most frequent tags, ties and the rest of the list filled
from the global order; users unseen in training get the global list.

Both are fitted from (user index, tag index) pairs of the training posts and answer
`recommend(user_index, k) -> (n, k)` tag indices, vectorised (one lexsort), so they
hold at archive scale.
"""

from __future__ import annotations

import numpy as np

BASELINES = ("most-popular", "user-popular")


class MostPopular:
    """Global tag frequency; `order` is the tag indices, most frequent first (ties by index)."""

    name = "most-popular"

    def __init__(self, n_tags: int) -> None:
        self.n_tags = n_tags
        self.counts = np.zeros(n_tags, dtype=np.int64)
        self.order = np.arange(n_tags)

    def fit(self, user_index: np.ndarray, tag_index: np.ndarray) -> MostPopular:
        self.counts = np.bincount(tag_index, minlength=self.n_tags).astype(np.int64)
        self.order = np.lexsort((np.arange(self.n_tags), -self.counts))
        return self

    def recommend(self, user_index: np.ndarray, k: int) -> np.ndarray:
        top = _pad(self.order[:k], k)
        return np.broadcast_to(top, (len(user_index), k)).copy()


class UserPopular:
    """Per-user tag frequency with the global order as tie-break and fallback."""

    name = "user-popular"

    def __init__(self, n_tags: int, n_users: int) -> None:
        self.n_tags, self.n_users = n_tags, n_users
        self.global_ = MostPopular(n_tags)
        self._pairs_user = np.zeros(0, np.int64)
        self._pairs_tag = np.zeros(0, np.int64)
        self._pairs_count = np.zeros(0, np.int64)

    def fit(self, user_index: np.ndarray, tag_index: np.ndarray) -> UserPopular:
        self.global_.fit(user_index, tag_index)
        codes = user_index.astype(np.int64) * self.n_tags + tag_index
        uniq, counts = np.unique(codes, return_counts=True)
        self._pairs_user, self._pairs_tag, self._pairs_count = uniq // self.n_tags, uniq % self.n_tags, counts
        return self

    def recommend(self, user_index: np.ndarray, k: int) -> np.ndarray:
        user_index = np.asarray(user_index, dtype=np.int64)
        users = np.unique(user_index[user_index >= 0])
        table = self._user_topk(users, k)  # (len(users), k)
        out = np.broadcast_to(_pad(self.global_.order[:k], k), (len(user_index), k)).copy()
        known = user_index >= 0
        out[known] = table[np.searchsorted(users, user_index[known])]
        return out

    def _user_topk(self, users: np.ndarray, k: int) -> np.ndarray:
        """Top k per user from candidates = the user's own tags ∪ the global top k."""
        # Global rank in [0, 1) breaks ties among equal counts and ranks unseen tags.
        rank = np.empty(self.n_tags, dtype=np.float64)
        rank[self.global_.order] = np.arange(self.n_tags) / self.n_tags
        sel = np.isin(self._pairs_user, users)
        pu, pt, pc = self._pairs_user[sel], self._pairs_tag[sel], self._pairs_count[sel]
        gk = self.global_.order[:k]
        cu = np.concatenate([pu, np.repeat(users, len(gk))])
        ct = np.concatenate([pt, np.tile(gk, len(users))])
        cs = np.concatenate([pc.astype(np.float64), np.zeros(len(users) * len(gk))]) - rank[ct]
        # Drop global candidates the user already has (keep the first, highest-score copy).
        order = np.lexsort((-cs, ct, cu))
        cu, ct, cs = cu[order], ct[order], cs[order]
        first = np.ones(len(cu), dtype=bool)
        first[1:] = (cu[1:] != cu[:-1]) | (ct[1:] != ct[:-1])
        cu, ct, cs = cu[first], ct[first], cs[first]
        order = np.lexsort((-cs, cu))
        cu, ct = cu[order], ct[order]
        start = np.searchsorted(cu, users)
        pos = np.arange(len(cu)) - np.repeat(start, np.diff(np.append(start, len(cu))))
        keep = pos < k
        out = np.full((len(users), k), -1, dtype=np.int64)
        out[np.searchsorted(users, cu[keep]), pos[keep]] = ct[keep]
        return out


def _pad(order: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, -1, dtype=np.int64)
    out[: len(order)] = order
    return out


def get_baseline(name: str, n_tags: int, n_users: int) -> MostPopular | UserPopular:
    if name == "most-popular":
        return MostPopular(n_tags)
    if name == "user-popular":
        return UserPopular(n_tags, n_users)
    from models.errors import ModelError

    raise ModelError(f"unknown baseline {name!r}; valid: {list(BASELINES)}")
