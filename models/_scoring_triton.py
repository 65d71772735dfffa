"""Fused matmul + top-k for the `triton` scoring kernel. Imported only by `topk_triton`.

Why fused: the plain torch path writes the (n, T) float32 score matrix to GPU memory and
reads it back for `torch.topk` (8 KB per post at T = 2000), which bounds it far below the
matmul's compute bound. Here each program computes one (BLOCK_M posts x BLOCK_N tags) score
tile in registers, masks padding and excluded tags, and keeps only that tile's k best
(k passes of max/argmax). Only n x ceil(T / BLOCK_N) x k candidates reach global memory;
a small `torch.topk` over them gives the result. That is exact: a tag in the true top k is
in its own tile's top k.

Exclusion comes as a padded (n, E) int32 matrix of tag ids, -1 padding (posts have few tags).

NOT VERIFIED ON A GPU in this project's sessions: tested only under `TRITON_INTERPRET=1`
on CPU tensors (tests/test_scoring.py). Block sizes are untuned guesses.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl


def device() -> torch.device:
    """CUDA when present; CPU only under the Triton interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    raise RuntimeError("the triton scoring kernel needs CUDA (or TRITON_INTERPRET=1 for tests)")


def padded_exclusion(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """CSR exclusion -> (n, E) int32 tag ids padded with -1 (E >= 1)."""
    lens = np.diff(indptr)
    n, e = len(lens), max(int(lens.max(initial=0)), 1)
    out = np.full((n, e), -1, dtype=np.int32)
    rows = np.repeat(np.arange(n), lens)
    cols = np.arange(len(rows)) - np.repeat(indptr[:-1] - indptr[0], lens)
    out[rows, cols] = indices[indptr[0]:indptr[-1]]
    return out


@triton.jit
def _tile_topk(P, TG, EX, CV, CI, n, t, d, E,
               stride_p, stride_t, stride_e, stride_c,
               K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, HAS_EX: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # post rows of this tile
    cn = tl.arange(0, BLOCK_N)
    rn = pid_n * BLOCK_N + cn  # tag ids of this tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(P + rm[:, None] * stride_p + rd[None, :],
                    mask=(rm[:, None] < n) & (rd[None, :] < d), other=0.0)  # (BLOCK_M, BLOCK_D)
        b = tl.load(TG + rn[None, :] * stride_t + rd[:, None],
                    mask=(rn[None, :] < t) & (rd[:, None] < d), other=0.0)  # (BLOCK_D, BLOCK_N)
        acc += tl.dot(a, b, input_precision=PRECISION)
    acc = tl.where(rn[None, :] < t, acc, float("-inf"))
    if HAS_EX:
        for j in range(E):
            ex = tl.load(EX + rm * stride_e + j, mask=rm < n, other=-1)  # (BLOCK_M,)
            acc = tl.where(rn[None, :] == ex[:, None], float("-inf"), acc)
    for j in tl.static_range(K):
        v = tl.max(acc, axis=1)
        i = tl.argmax(acc, axis=1)
        tl.store(CV + rm * stride_c + pid_n * K + j, v, mask=rm < n)
        tl.store(CI + rm * stride_c + pid_n * K + j, (pid_n * BLOCK_N + i).to(tl.int64), mask=rm < n)
        acc = tl.where(cn[None, :] == i[:, None], float("-inf"), acc)


def topk_fused(posts: torch.Tensor, tags: torch.Tensor, k: int, excl: torch.Tensor | None = None,
               block_m: int = 64, block_n: int = 256, precision: str = "ieee"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """posts (n, D), tags (T, D) on one device -> (tags int64 (n, k), scores float32 (n, k)).

    precision: "ieee" (exact fp32) or "tf32" (faster on tensor cores, ~1e-3 relative error).
    """
    n, d = posts.shape
    t = tags.shape[0]
    posts, tags = posts.contiguous(), tags.to(posts.dtype).contiguous()
    nb = triton.cdiv(t, block_n)
    cv = torch.empty((n, nb * k), dtype=torch.float32, device=posts.device)
    ci = torch.empty((n, nb * k), dtype=torch.int64, device=posts.device)
    if n == 0:
        return ci[:, :k], cv[:, :k]
    block_d = max(16, min(64, triton.next_power_of_2(d)))
    ex = excl.contiguous() if excl is not None else torch.empty((1, 1), dtype=torch.int32, device=posts.device)
    grid = (triton.cdiv(n, block_m), nb)
    _tile_topk[grid](posts, tags, ex, cv, ci, n, t, d, ex.shape[1],
                     posts.stride(0), tags.stride(0), ex.stride(0), cv.stride(0),
                     K=k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                     HAS_EX=excl is not None, PRECISION=precision,
                     num_warps=8)  # a 64 x 256 fp32 tile is 128 registers/thread at 4 warps
    v, j = torch.topk(cv, k, dim=1, largest=True, sorted=True)
    return ci.gather(1, j), v
