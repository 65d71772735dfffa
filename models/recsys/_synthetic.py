"""A tiny seeded archive with planted signal, for the recommender tests and the benchmark.

The generative story (every quantity seeded):

- each item has a topic (a, b): `a` is visible in its 512-d IC vector (a prototype plus
  noise), `b` in its 80-d OD vector (a few "object" classes lit up), so IC and OD each carry
  half of what is needed and IC-OD carries all of it;
- each topic owns `tags_per_topic` tags; each user belongs to a community, and every
  community prefers 2 of each topic's tags (its "style");
- the user's node2vec vector is its community prototype plus noise, so a user with no
  history still reveals its style through the social graph;
- a post's tags are its user's community's 2 preferred tags of its item's topic, plus with
  probability `p_extra` one other tag of the topic;
- most users have many posts, a third have only 1-2 (the cold-start users);
- every post is a new photo, so held-out posts have unseen items (`item_index = -1`).

Therefore: PITF/FM (no content) cannot know a held-out post's topic; content models can;
+SN models know the style of users with little history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SynthArchive:
    """Split posts as arrays: the shapes `models.recsys.data.PostData` is built from."""

    n_users: int
    n_tags: int
    train: dict[str, np.ndarray]  # user_index, item_index, tags (object array of int arrays), ic, od, sn
    test: dict[str, np.ndarray]
    n_train_posts_per_user: np.ndarray  # (n_users,)


def make_synthetic(
    n_users: int = 160,
    n_communities: int = 4,
    n_a: int = 3,
    n_b: int = 3,
    tags_per_topic: int = 8,
    p_extra: float = 0.2,
    sn_dim: int = 16,
    seed: int = 0,
    ic_noise: float = 0.6,
    od_noise: float = 0.15,
    sn_noise: float = 0.5,
    test_per_user: int = 1,
) -> SynthArchive:
    """A train/test split with `test_per_user` held-out posts per user (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_topics = n_a * n_b
    n_tags = n_topics * tags_per_topic
    community = rng.integers(0, n_communities, n_users)
    # Each community prefers 2 of each topic's tags: (communities, topics, 2) local tag ids.
    prefer = np.stack([np.stack([rng.choice(tags_per_topic, 2, replace=False) for _ in range(n_topics)])
                       for _ in range(n_communities)])
    cold = rng.random(n_users) < 1 / 3
    n_train = np.where(cold, rng.integers(1, 3, n_users), rng.integers(8, 16, n_users))
    n_posts = n_train + test_per_user  # the last ones are held out
    ic_proto = rng.normal(size=(n_a, 512)).astype(np.float32)
    od_classes = rng.choice(80, size=(n_b, 4), replace=False) if n_b * 4 <= 80 else rng.integers(0, 80, (n_b, 4))
    sn_proto = rng.normal(size=(n_communities, sn_dim)).astype(np.float32)
    sn = sn_proto[community] + sn_noise * rng.normal(size=(n_users, sn_dim)).astype(np.float32)

    rows: dict[str, list] = {k: [] for k in ("user_index", "item_index", "tags", "ic", "od", "held")}
    for u in range(n_users):
        for j in range(n_posts[u]):
            a, b = rng.integers(n_a), rng.integers(n_b)
            topic = a * n_b + b
            local = list(prefer[community[u], topic])
            if rng.random() < p_extra:
                others = [t for t in range(tags_per_topic) if t not in local]
                local.append(int(rng.choice(others)))
            od = (od_noise * rng.random(80)).astype(np.float32)
            od[od_classes[b]] = 0.6 + 0.4 * rng.random(4)
            rows["user_index"].append(u)
            rows["tags"].append(np.asarray(sorted(topic * tags_per_topic + t for t in local), np.int64))
            rows["ic"].append(np.maximum(ic_proto[a] + ic_noise * rng.normal(size=512), 0).astype(np.float32))
            rows["od"].append(od)
            rows["held"].append(j >= n_train[u])
    held = np.asarray(rows["held"])
    n = len(held)
    item = np.arange(n, dtype=np.int64)  # every post is a new photo

    def part(mask: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        users = np.asarray(rows["user_index"], np.int64)[mask]
        tags = np.empty(int(mask.sum()), dtype=object)
        tags[:] = [t for t, m in zip(rows["tags"], mask) if m]
        return {"user_index": users, "item_index": items, "tags": tags,
                "ic": np.stack(rows["ic"])[mask], "od": np.stack(rows["od"])[mask], "sn": sn[users]}

    train_items = np.arange(int((~held).sum()), dtype=np.int64)
    del item
    train = part(~held, train_items)
    test = part(held, -np.ones(int(held.sum()), np.int64))
    return SynthArchive(n_users, n_tags, train, test, n_train)
