"""Top-k tag scoring: `scores = post_vectors @ tag_matrix.T`, keep the k best tags per post.

Every recommender scores a post against all tags as an inner product (docs/interfaces.md),
so batch scoring is one kernel: a (n, D) x (D, T) matrix product followed by a per-row
top-k, optionally excluding tags the post already has (passed as CSR arrays
`indptr (n+1,)`, `indices (nnz,)` of tag indices, so no Python lists cross a boundary).

Kernels (registry `KERNELS`; `get_kernel(name)`, `available_kernels()`, `default_kernel()`):

- ``reference`` — slow, obviously correct numpy (float64, one row at a time, stable sort).
- ``numpy``     — blocked float32 matmul + `argpartition`; CPU.
- ``torch``     — blocked matmul + `torch.topk` on CPU (the default CPU kernel: faster top-k).
- ``torch-cuda``— the same on a CUDA device.
- ``triton``    — fused matmul + per-tile top-k on CUDA (the n x T score matrix never reaches
  global memory), then a small `torch.topk` over the tile candidates. Triton is imported
  only inside; runs under `TRITON_INTERPRET=1` on CPU for the contract test.

All kernels return `TopK(tags int32 (n, k), scores float32 (n, k))`, best first. Rows with
fewer than k eligible tags are padded with tag -1 and score -inf. Ties may come out in any
order; `same_topk` compares results up to ties. `rescore` recomputes the k chosen scores
in float64 row by row, so they do not depend on the batch a post was scored in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.errors import ModelError

NO_TAG = -1  # padding tag id where fewer than k tags are eligible


@dataclass
class TopK:
    """The k best tags of n posts, best first: tags int32 (n, k), scores float32 (n, k)."""

    tags: np.ndarray
    scores: np.ndarray


Kernel = Callable[..., TopK]


# --------------------------------------------------------------------------- helpers


def _check(posts: Any, tags: Any, k: int, indptr: Any, indices: Any) -> None:
    """Shapes and k: a ModelError naming the bad value, before any work."""
    if posts.ndim != 2 or tags.ndim != 2 or posts.shape[1] != tags.shape[1]:
        raise ModelError(f"post vectors {tuple(posts.shape)} and tag matrix {tuple(tags.shape)} "
                         "must be (n, D) and (T, D) with the same D")
    if not 1 <= k <= tags.shape[0]:
        raise ModelError(f"k={k} must be between 1 and the number of tags ({tags.shape[0]})")
    if (indptr is None) != (indices is None):
        raise ModelError("exclusion needs both indptr and indices (CSR), or neither")
    if indptr is not None and len(indptr) != posts.shape[0] + 1:
        raise ModelError(f"exclusion indptr has {len(indptr)} entries, expected n+1 = {posts.shape[0] + 1}")


def _excluded_coords(indptr: np.ndarray, indices: np.ndarray, start: int, stop: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(row-in-block, tag) coordinates of excluded tags for posts [start, stop)."""
    lo, hi = int(indptr[start]), int(indptr[stop])
    rows = np.repeat(np.arange(stop - start), np.diff(indptr[start:stop + 1]))
    return rows, np.asarray(indices[lo:hi], dtype=np.int64)


def _pad_missing(tags: np.ndarray, scores: np.ndarray) -> TopK:
    """Excluded tags carry -inf; where they reached the top k, there were fewer than k eligible."""
    tags = tags.astype(np.int32, copy=False)
    tags[np.isneginf(scores)] = NO_TAG
    return TopK(tags, scores.astype(np.float32, copy=False))


# --------------------------------------------------------------------------- reference


def topk_reference(posts: np.ndarray, tags: np.ndarray, k: int,
                   indptr: np.ndarray | None = None, indices: np.ndarray | None = None) -> TopK:
    """Slow and obviously correct: float64 scores, one post at a time, ties to the lower tag id."""
    posts, tags = np.asarray(posts), np.asarray(tags)
    _check(posts, tags, k, indptr, indices)
    n, t = posts.shape[0], tags.shape[0]
    out_t = np.full((n, k), NO_TAG, dtype=np.int32)
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    for i in range(n):
        s = tags.astype(np.float64) @ posts[i].astype(np.float64)  # (T,)
        excluded = set() if indptr is None or indices is None else {
            int(x) for x in indices[indptr[i]:indptr[i + 1]]}
        ranked = [j for j in sorted(range(t), key=lambda j: (-s[j], j)) if j not in excluded][:k]
        out_t[i, :len(ranked)] = ranked
        out_s[i, :len(ranked)] = s[ranked]
    return TopK(out_t, out_s)


# --------------------------------------------------------------------------- numpy


def topk_numpy(posts: np.ndarray, tags: np.ndarray, k: int,
               indptr: np.ndarray | None = None, indices: np.ndarray | None = None,
               block: int = 2048) -> TopK:
    """Blocked float32 `posts @ tags.T` (BLAS) and `argpartition` top-k per block."""
    posts = np.ascontiguousarray(posts, dtype=np.float32)
    tags_t = np.ascontiguousarray(np.asarray(tags, dtype=np.float32).T)  # (D, T)
    _check(posts, tags_t.T, k, indptr, indices)
    n, t = posts.shape[0], tags_t.shape[1]
    out_t = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = posts[start:stop] @ tags_t  # (b, T)
        if indptr is not None and indices is not None:
            s[_excluded_coords(indptr, indices, start, stop)] = -np.inf
        part = np.argpartition(s, t - k, axis=1)[:, t - k:] if k < t else np.tile(np.arange(t), (stop - start, 1))
        vals = np.take_along_axis(s, part, axis=1)  # (b, k) unordered
        order = np.argsort(-vals, axis=1, kind="stable")
        out_t[start:stop] = np.take_along_axis(part, order, axis=1)
        out_s[start:stop] = np.take_along_axis(vals, order, axis=1)
    return _pad_missing(out_t, out_s)


# --------------------------------------------------------------------------- torch


def topk_torch_tensors(posts: Any, tags: Any, k: int, indptr: Any = None, indices: Any = None,
                       block: int = 4096) -> tuple[Any, Any]:
    """torch tensors in, torch tensors out, on the tensors' device (CPU or CUDA).

    posts (n, D), tags (T, D); indptr (n+1,) int64, indices (nnz,) int64 on the same device.
    Returns (tags int64 (n, k), scores float32 (n, k)); excluded/missing entries score -inf.
    """
    import torch

    n = posts.shape[0]
    tags_t = tags.to(posts.dtype).T.contiguous()  # (D, T)
    out_i = torch.empty((n, k), dtype=torch.int64, device=posts.device)
    out_s = torch.empty((n, k), dtype=torch.float32, device=posts.device)
    lens = None if indptr is None else indptr[1:] - indptr[:-1]
    with torch.inference_mode():
        for start in range(0, n, block):
            stop = min(start + block, n)
            s = (posts[start:stop] @ tags_t).float()  # (b, T)
            if indptr is not None and indices is not None and lens is not None:
                lo, hi = int(indptr[start]), int(indptr[stop])
                if hi > lo:
                    rows = torch.repeat_interleave(
                        torch.arange(stop - start, device=s.device), lens[start:stop], output_size=hi - lo)
                    s[rows, indices[lo:hi].long()] = float("-inf")
            v, i = torch.topk(s, k, dim=1, largest=True, sorted=True)
            out_s[start:stop] = v
            out_i[start:stop] = i
    return out_i, out_s


def _torch_kernel(device: str) -> Kernel:
    # CPU: 512 rows x T = 2000 scores (4 MB) stay in cache between the matmul and the top-k
    # (~15% faster than 4096 rows on this machine); GPU: big blocks keep the device busy.
    default_block = 512 if device == "cpu" else 65536

    def topk_torch(posts: np.ndarray, tags: np.ndarray, k: int,
                   indptr: np.ndarray | None = None, indices: np.ndarray | None = None,
                   block: int = default_block) -> TopK:
        import torch

        # writable: arrays from Ray's object store are read-only, which torch warns about
        posts = np.require(posts, np.float32, ["C", "W"])
        tags = np.require(tags, np.float32, ["C", "W"])
        _check(posts, tags, k, indptr, indices)
        dev = torch.device(device)
        p, t = torch.from_numpy(posts).to(dev), torch.from_numpy(tags).to(dev)
        ip = ix = None
        if indptr is not None:
            ip = torch.from_numpy(np.asarray(indptr, dtype=np.int64)).to(dev)
            ix = torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(dev)
        i, s = topk_torch_tensors(p, t, k, ip, ix, block=block)
        return _pad_missing(i.cpu().numpy(), s.cpu().numpy())

    topk_torch.__doc__ = f"Blocked matmul + torch.topk on {device}."
    return topk_torch


# --------------------------------------------------------------------------- triton


def topk_triton(posts: np.ndarray, tags: np.ndarray, k: int,
                indptr: np.ndarray | None = None, indices: np.ndarray | None = None,
                block: int = 1 << 20) -> TopK:
    """Fused matmul + per-tile top-k (Triton) on CUDA; numpy in, numpy out."""
    import torch

    from models import _scoring_triton as tt

    posts = np.ascontiguousarray(posts, dtype=np.float32)
    tags = np.ascontiguousarray(tags, dtype=np.float32)
    _check(posts, tags, k, indptr, indices)
    dev = tt.device()
    p, t = torch.from_numpy(posts).to(dev), torch.from_numpy(tags).to(dev)
    excl = None
    if indptr is not None:
        excl = torch.from_numpy(tt.padded_exclusion(np.asarray(indptr), np.asarray(indices))).to(dev)
    outs = [tt.topk_fused(p[s:s + block], t, k, None if excl is None else excl[s:s + block])
            for s in range(0, posts.shape[0], block)]
    i = torch.cat([o[0] for o in outs]) if outs else torch.empty((0, k), dtype=torch.int64)
    s = torch.cat([o[1] for o in outs]) if outs else torch.empty((0, k))
    return _pad_missing(i.cpu().numpy(), s.cpu().numpy())


# --------------------------------------------------------------------------- registry


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no CUDA kernels
        return False


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    # Off a GPU, Triton runs only in its interpreter (slow; for the contract test).
    return _has_cuda() or os.environ.get("TRITON_INTERPRET") == "1"


KERNELS: dict[str, tuple[Kernel, Callable[[], bool]]] = {
    "reference": (topk_reference, lambda: True),
    "numpy": (topk_numpy, lambda: True),
    "torch": (_torch_kernel("cpu"), lambda: True),
    "torch-cuda": (_torch_kernel("cuda"), _has_cuda),
    "triton": (topk_triton, _has_triton),
}


def list_kernels() -> list[str]:
    """Every registered kernel name, available here or not."""
    return sorted(KERNELS)


def available_kernels() -> list[str]:
    """The kernels that can run on this machine."""
    return [name for name, (_, ok) in sorted(KERNELS.items()) if ok()]


def get_kernel(name: str) -> Kernel:
    """The kernel registered as `name`; ModelError listing valid names otherwise."""
    if name not in KERNELS:
        raise ModelError(f"unknown scoring kernel {name!r}; valid: {list_kernels()}")
    fn, ok = KERNELS[name]
    if not ok():
        raise ModelError(f"scoring kernel {name!r} cannot run here (needs CUDA/Triton); "
                         f"available: {available_kernels()}")
    return fn


def default_kernel() -> str:
    """torch on CUDA where there is a GPU, else torch on CPU (faster top-k than numpy)."""
    return "torch-cuda" if _has_cuda() else "torch"


def topk(posts: np.ndarray, tags: np.ndarray, k: int, indptr: np.ndarray | None = None,
         indices: np.ndarray | None = None, kernel: str | None = None) -> TopK:
    """Top-k tags per post with the named (or default) kernel."""
    return get_kernel(kernel or default_kernel())(posts, tags, k, indptr, indices)


# --------------------------------------------------------------------------- exact scores


def rescore(posts: np.ndarray, tags: np.ndarray, result: TopK, chunk: int = 512) -> TopK:
    """The chosen tags' scores recomputed row by row in float64, re-sorted best first.

    BLAS/torch matmuls round differently depending on how many rows a call holds, so the
    same post scored in another batch can differ in the last bit. Here each score is a
    float64 dot product of the post's and the tag's vectors, rounded once to float32, so the
    reported scores are a function of (post vector, tag vector) only and a resumed job writes
    the same bytes as an uninterrupted one. Cost n * k * D, small beside the n * T * D product
    (chunks of 512 rows keep the gathered (512, k, D) tag vectors in cache).
    """
    posts = np.asarray(posts, dtype=np.float32)
    tags = np.asarray(tags, dtype=np.float32)
    sc = np.empty(result.scores.shape, np.float32)
    for s in range(0, len(posts), chunk):
        t = result.tags[s:s + chunk]  # (b, k)
        # dtype=float64: einsum casts in its buffers and accumulates in float64
        sc[s:s + chunk] = np.einsum("nd,nkd->nk", posts[s:s + chunk], tags[np.maximum(t, 0)], dtype=np.float64)
    sc[result.tags < 0] = -np.inf
    order = np.argsort(-sc, axis=1, kind="stable")
    return TopK(np.take_along_axis(result.tags, order, 1), np.take_along_axis(sc, order, 1))


# --------------------------------------------------------------------------- comparison


def same_topk(posts: np.ndarray, tags: np.ndarray, got: TopK, want: TopK,
              indptr: np.ndarray | None = None, indices: np.ndarray | None = None,
              rtol: float = 1e-4, atol: float = 1e-4) -> tuple[bool, str]:
    """Whether `got` is a correct top-k, given the reference `want`, up to ties.

    Row by row: the sorted scores agree within tolerance, the same slots are padding,
    no excluded tag is returned, no tag twice, and each returned tag's exact (float64)
    score equals its reported score and is at least the k-th best exact score (so tags that
    tie at the boundary may be swapped). Returns (ok, first problem).
    """
    if got.tags.shape != want.tags.shape:
        return False, f"shape {got.tags.shape} != {want.tags.shape}"
    tags64 = np.asarray(tags, dtype=np.float64)
    for i in range(got.tags.shape[0]):
        g, w = got.tags[i], want.tags[i]
        if not np.array_equal(g == NO_TAG, w == NO_TAG):
            return False, f"row {i}: padding differs: {g} vs {w}"
        gv = g[g != NO_TAG]
        if len(set(gv.tolist())) != len(gv):
            return False, f"row {i}: a tag twice: {g}"
        if indptr is not None and indices is not None and (
                set(gv.tolist()) & set(indices[indptr[i]:indptr[i + 1]].tolist())):
            return False, f"row {i}: an excluded tag returned: {g}"
        if not len(gv):
            continue
        exact = tags64[gv] @ np.asarray(posts[i], dtype=np.float64)
        scale = atol + rtol * max(1.0, float(np.abs(exact).max()))
        if not np.allclose(got.scores[i, :len(gv)], exact, rtol=0, atol=scale):
            return False, f"row {i}: reported scores {got.scores[i]} != exact {exact}"
        if exact.min() < float(want.scores[i, len(gv) - 1]) - scale:
            return False, f"row {i}: tags {g} (exact {exact}) miss the reference {w} ({want.scores[i]})"
        if not np.allclose(np.sort(exact)[::-1], want.scores[i, :len(gv)], rtol=0, atol=scale):
            return False, f"row {i}: scores {exact} != reference {want.scores[i]}"
    return True, ""
