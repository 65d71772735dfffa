"""The synchronised BPR step: two partitions with an all-reduce equal one step over their union."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from models.recsys import get_model
from models.recsys.bpr import BPRConfig, BPRTrainer
from models.recsys.bpr_step import bpr_step_fused
from models.recsys.data import PostData


class ThreadSync:
    """An all-reduce between threads (a Barrier and a shared sum): the gloo group's contract."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.parts: dict[int, list[torch.Tensor]] = {}

    def for_rank(self, rank: int):
        sync = self

        class _Rank:
            def allreduce_(self, tensors):
                sync.parts[rank] = [t.clone() for t in tensors]
                sync.barrier.wait()
                total = [sum(p[i] for p in sync.parts.values()) for i in range(len(tensors))]
                sync.barrier.wait()
                for t, s in zip(tensors, total):
                    t.copy_(s)

            def close(self):
                pass

        return _Rank()


@pytest.mark.parametrize("name", ["PITF", "FM-IC-OD+SN"])
@pytest.mark.parametrize("cap", [32, 1])  # cap 1: shared items (1 sample per worker) scale too
def test_two_synced_partitions_equal_one_step_over_their_union(name, cap):
    rng = np.random.default_rng(0)
    n_users, n_items, n_tags, k = 6, 5, 9, 4
    posts = PostData.from_lists(
        user_index=np.array([0, 1, 2, 3, 4, 5, 0, 3]),
        item_index=np.array([0, 1, 2, 2, 3, 4, 4, 0]),  # items 2, 4 and 0 are posted on both partitions
        tags=[rng.choice(n_tags, 2, replace=False) for _ in range(8)], n_tags=n_tags,
        features={"ic": rng.random((8, 512), dtype=np.float32), "od": rng.random((8, 80), dtype=np.float32),
                  "sn": rng.normal(size=(8, 3)).astype(np.float32)})
    part = np.array([0, 0, 0, 1, 1, 1, 0, 1])  # users 0-2 on rank 0, 3-5 on rank 1
    hp = dict(n_users=n_users, n_items=n_items, n_tags=n_tags, dim=k, sn_dim=3, seed=1)
    single = get_model(name, **hp)
    replicas = [get_model(name, **hp) for _ in range(2)]
    seen = np.zeros((2, n_items), bool)
    for r in range(2):
        seen[r, posts.item_index[part == r]] = True
    shared = seen.all(0)
    slot = np.where(shared, np.cumsum(shared) - 1, -1)
    sync = ThreadSync(2)
    cfg = BPRConfig(lr=0.1, reg=0.01, batch_size=8, max_row_samples=cap)
    trainers = [BPRTrainer(replicas[r], posts.subset(np.flatnonzero(part == r)), cfg, 8, r, 2,
                           sync.for_rank(r), slot) for r in range(2)]
    # One step: each rank takes all its posts with the first tag as t+ and a fixed t-.
    batches = []
    for tr in trainers:
        p = torch.arange(len(tr.data))
        pos = torch.as_tensor(tr.data.indices[tr.data.indptr[:-1]])
        neg = (pos + 1) % n_tags  # the step's algebra does not depend on how t- was drawn
        batches.append((p, pos, neg))
    threads = [threading.Thread(target=lambda r=r: trainers[r]._synced_step(
        {k_: v.index_select(0, batches[r][0]) for k_, v in trainers[r].inp.items()}, batches[r][1], batches[r][2]))
        for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The same samples in one batch on one model.
    order = np.concatenate([np.flatnonzero(part == 0), np.flatnonzero(part == 1)])
    inp = single.inputs(posts.batch(order))
    bpr_step_fused(single, inp, torch.cat([b[1] for b in batches]), torch.cat([b[2] for b in batches]),
                   cfg.lr, cfg.reg, cap=cap)
    for key, want in single.params.items():
        for r, rep in enumerate(replicas):
            got = rep.params[key]
            if key == "user":  # each rank owns its users' rows
                rows = np.unique(posts.user_index[part == r])
                torch.testing.assert_close(got[rows], want[rows])
            elif key == "item":  # own items, plus the shared ones on every rank
                rows = np.union1d(np.flatnonzero(shared), posts.item_index[part == r])
                torch.testing.assert_close(got[rows], want[rows])
            else:
                torch.testing.assert_close(got, want)
