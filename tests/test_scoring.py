"""Contract test of every scoring kernel against the slow numpy reference (models.scoring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import scoring as S
from models.csr import csr_from_lists
from models.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
FAST = [k for k in S.available_kernels() if k != "reference"]


def _inputs(seed: int, n: int = 257, t: int = 300, d: int = 19, max_excl: int = 6):
    rng = np.random.default_rng(seed)
    posts = rng.standard_normal((n, d)).astype(np.float32)
    tags = rng.standard_normal((t, d)).astype(np.float32)
    lists = [rng.choice(t, size=rng.integers(0, max_excl + 1), replace=False) for _ in range(n)]
    return posts, tags, *csr_from_lists(lists)


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_reference(kernel, seed):
    posts, tags, indptr, indices = _inputs(seed)
    for k in (1, 10):
        want = S.topk_reference(posts, tags, k, indptr, indices)
        got = S.get_kernel(kernel)(posts, tags, k, indptr, indices)
        assert got.tags.dtype == np.int32 and got.scores.dtype == np.float32
        ok, why = S.same_topk(posts, tags, got, want, indptr, indices)
        assert ok, why
        ok, why = S.same_topk(posts, tags, S.get_kernel(kernel)(posts, tags, k),
                              S.topk_reference(posts, tags, k))
        assert ok, why


@pytest.mark.parametrize("kernel", FAST)
def test_kernel_small_blocks_and_ties(kernel):
    """Blocks that do not divide n, and exact ties (duplicated tag vectors) at the boundary."""
    posts, tags, indptr, indices = _inputs(3, n=50, t=40)
    tags[20:30] = tags[5]  # 11 identical tags: any 10 of them may be the top 10 for some posts
    want = S.topk_reference(posts, tags, 10, indptr, indices)
    kw = {"block": 7} if kernel in ("numpy", "torch", "torch-cuda") else {}
    got = S.get_kernel(kernel)(posts, tags, 10, indptr, indices, **kw)
    ok, why = S.same_topk(posts, tags, got, want, indptr, indices)
    assert ok, why


@pytest.mark.parametrize("kernel", FAST)
def test_fewer_eligible_tags_than_k_are_padded(kernel):
    posts, tags, _, _ = _inputs(4, n=5, t=6)
    indptr, indices = csr_from_lists([[0, 1, 2, 3], [], [5], [0, 1, 2, 3, 4, 5], [2]])
    got = S.get_kernel(kernel)(posts, tags, 4, indptr, indices)
    assert (got.tags[0, 2:] == S.NO_TAG).all() and set(got.tags[0, :2]) == {4, 5}
    assert (got.tags[3] == S.NO_TAG).all() and np.isneginf(got.scores[3]).all()
    assert (got.tags[1] != S.NO_TAG).all()


def test_planted_signal_is_found():
    """Each post is built to prefer one tag by a wide margin; every kernel must rank it first."""
    rng = np.random.default_rng(7)
    tags = np.eye(32, dtype=np.float32)[:, :16].repeat(1, 0)  # (32, 16): tag j = e_j for j < 16, 0 after
    tags += 0.01 * rng.standard_normal(tags.shape).astype(np.float32)
    best = rng.integers(0, 16, size=100)
    posts = 0.01 * rng.standard_normal((100, 16)).astype(np.float32)
    posts[np.arange(100), best] = 5.0
    for kernel in FAST + ["reference"]:
        got = S.get_kernel(kernel)(posts, tags, 3)
        assert (got.tags[:, 0] == best).all(), kernel
        # and when that tag is excluded, it never comes back
        indptr, indices = csr_from_lists([[b] for b in best])
        got = S.get_kernel(kernel)(posts, tags, 3, indptr, indices)
        assert (got.tags != best[:, None]).all(), kernel


def test_same_topk_catches_a_wrong_answer():
    posts, tags, indptr, indices = _inputs(5, n=20)
    want = S.topk_reference(posts, tags, 5, indptr, indices)
    bad = S.TopK(want.tags.copy(), want.scores.copy())
    bad.tags[3, 4], bad.scores[3, 4] = bad.tags[3, 0], bad.scores[3, 0]  # a tag twice
    assert not S.same_topk(posts, tags, bad, want, indptr, indices)[0]
    worse = S.topk_reference(posts, -tags, 5)  # the worst tags, with scores negated
    assert not S.same_topk(posts, tags, S.TopK(worse.tags, -worse.scores), want, indptr, indices)[0]


def test_bad_inputs_raise_model_error():
    posts, tags, indptr, indices = _inputs(6, n=4, t=8)
    with pytest.raises(ModelError, match="k=9"):
        S.topk(posts, tags, 9)
    with pytest.raises(ModelError, match="same D"):
        S.topk(posts, tags[:, :3], 2)
    with pytest.raises(ModelError, match="indptr"):
        S.topk(posts, tags, 2, indptr[:-1], indices)
    with pytest.raises(ModelError, match="valid"):
        S.get_kernel("nope")


def test_empty_input():
    posts, tags, _, _ = _inputs(8, n=0)
    got = S.topk(posts, tags, 3)
    assert got.tags.shape == (0, 3)


def test_triton_kernel_under_interpreter():
    """The fused Triton kernel, run by Triton's CPU interpreter (no GPU here)."""
    pytest.importorskip("triton")
    code = (
        "import numpy as np\n"
        "from models import scoring as S\n"
        "from tests.test_scoring import _inputs\n"
        "posts, tags, ip, ix = _inputs(11, n=70, t=300, d=19)\n"
        "tags[20:30] = tags[5]\n"
        "for k in (1, 10):\n"
        "    for ex in ((ip, ix), (None, None)):\n"
        "        ok, why = S.same_topk(posts, tags, S.topk_triton(posts, tags, k, *ex),\n"
        "                              S.topk_reference(posts, tags, k, *ex), *ex)\n"
        "        assert ok, why\n"
        "print('OK')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.needs_cuda
@pytest.mark.parametrize("kernel", ["torch-cuda", "triton"])
def test_cuda_kernels_large(kernel):
    posts, tags, indptr, indices = _inputs(12, n=5000, t=2000, d=64)
    want = S.topk_numpy(posts, tags, 10, indptr, indices)
    got = S.get_kernel(kernel)(posts, tags, 10, indptr, indices)
    ok, why = S.same_topk(posts, tags, got, want, indptr, indices, rtol=1e-3, atol=1e-3)
    assert ok, why


def test_rescore_is_exact_and_batch_invariant():
    posts, tags, indptr, indices = _inputs(13, n=300)
    want = S.topk_reference(posts, tags, 5, indptr, indices)
    whole = S.rescore(posts, tags, S.topk(posts, tags, 5, indptr, indices))
    ok, why = S.same_topk(posts, tags, whole, want, indptr, indices, rtol=1e-6, atol=1e-6)
    assert ok, why
    parts = [S.rescore(posts[s:s + 7], tags, S.topk(posts[s:s + 7], tags, 5, indptr[s:s + 8] - indptr[s],
                                                   indices[indptr[s]:indptr[min(s + 7, 300)]]))
             for s in range(0, 300, 7)]
    assert np.concatenate([p.scores for p in parts]).tobytes() == whole.scores.tobytes()
