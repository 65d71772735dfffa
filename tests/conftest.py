"""Shared fixtures: a small local Ray, the needs_cuda marker, tiny seeded archives."""

from __future__ import annotations

import os

import pytest

# Keep Ray light and quiet in tests: a small object store, no usage stats.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TAGREC_OBJECT_STORE_BYTES", str(256 * 1024**2))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing or broken: no CUDA tests
        return False


HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the whole session and shut down at its end."""
    import ray

    from jobs._ray import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: one torch thread avoids spin-waiting on a 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
