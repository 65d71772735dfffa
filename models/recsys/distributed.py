"""Training over several workers: posts partitioned by user, sums across workers.

`partition_by_user` cuts the training posts so that each user's posts (and so each user's
factor row) live on one worker; `TorchDistSync` sums tensors across the workers with one
torch.distributed collective (gloo on CPU, NCCL on CUDA). The trainers (`bpr.BPRTrainer`,
`multilabel.MultiLabelTrainer`) decide what to sum.
"""

from __future__ import annotations

import numpy as np
import torch

from models.recsys.data import PostData


def partition_by_user(data: PostData, world: int, seed: int) -> np.ndarray:
    """Worker of each post: users in a seeded order cut into `world` runs of ~equal pair counts."""
    pairs_per_post = np.diff(data.indptr)
    n_users = int(data.user_index.max(initial=-1)) + 1
    weight = np.bincount(data.user_index, weights=pairs_per_post, minlength=n_users)
    order = np.random.default_rng(seed).permutation(n_users)
    before = np.cumsum(weight[order]) - weight[order]  # pairs placed before each user
    worker_of_user = np.empty(n_users, np.int64)
    worker_of_user[order] = np.minimum((before * world // max(weight.sum(), 1)).astype(np.int64), world - 1)
    return worker_of_user[data.user_index]


class TorchDistSync:
    """Sums tensors across workers with torch.distributed (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, init_method: str, rank: int, world: int, backend: str = "gloo",
                 timeout_s: float = 300.0) -> None:
        import datetime

        import torch.distributed as dist

        self.dist = dist
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def allreduce_(self, tensors: list[torch.Tensor]) -> None:
        """In-place sum of every tensor across workers, one collective for all of them."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.dist.all_reduce(flat)
        at = 0
        for t in tensors:
            t.copy_(flat[at:at + t.numel()].view_as(t))
            at += t.numel()

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()
