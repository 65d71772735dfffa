"""models.host_memory: the allocator policy of CPU inference processes.

Each case runs in a fresh interpreter: mallopt settings are process-wide and would leak into
the rest of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from models import host_memory

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(host_memory.malloc_stats() is None, reason="needs glibc's mallinfo2")

# Allocates and frees a 64 MB buffer twice and reports how glibc served it.
PROBE = """
import json, numpy as np
from models import host_memory as hm
def probe():
    before = hm.malloc_stats()
    a = np.ones(64 << 20, np.uint8)
    during = hm.malloc_stats()
    del a
    after = hm.malloc_stats()
    b = np.ones(64 << 20, np.uint8)
    again = hm.malloc_stats()
    del b
    return {"mmapped": during["hblkhd"] - before["hblkhd"],
            "heap_grew": during["arena"] - before["arena"],
            "kept_after_free": after["arena"] - before["arena"],
            "heap_grew_again": again["arena"] - after["arena"]}
"""


BASE_ENV = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}   # glibc's default arenas


def run_py(body: str, env: dict[str, str] | None = None) -> dict:
    code = PROBE + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         check=True, env={**BASE_ENV, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_release_large_frees_returns_big_buffers_to_the_os():
    r = run_py("""
        assert hm.release_large_frees()
        print(json.dumps(probe()))
    """)
    assert r["mmapped"] >= 64 << 20          # its own mapping ...
    assert r["kept_after_free"] < 1 << 20    # ... gone after the free


def test_reuse_heap_serves_big_buffers_from_the_heap_and_keeps_them():
    r = run_py("""
        assert hm.release_large_frees()
        assert hm.reuse_heap()
        print(json.dumps(probe()))
    """)
    assert r["mmapped"] == 0                   # no mmap, so no zero-filled pages per batch
    assert r["heap_grew"] >= 60 << 20          # (less what the heap had free)
    assert r["kept_after_free"] >= 60 << 20    # kept for the next batch ...
    assert r["heap_grew_again"] < 1 << 20      # ... which reuses it


def test_cpu_extractor_switches_to_heap_reuse_after_building_and_results_do_not_change():
    r = run_py("""
        import numpy as np, torch
        from models.vision.extractor import ExtractorConfig, ImageFeatureExtractor
        hm.release_large_frees()
        g = torch.Generator().manual_seed(0)
        vgg = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g)
        yolo = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=g)
        kw = dict(random_weights=True, backend="cpu", vgg_size=64, yolo_size=64, max_batch=2, threads=1)
        ic0, od0 = ImageFeatureExtractor(ExtractorConfig(reuse_heap=False, **kw))(vgg, yolo)
        off = probe()
        x = ImageFeatureExtractor(ExtractorConfig(**kw))
        on = probe()
        ic1, od1 = x(vgg, yolo)
        print(json.dumps({"off": off["mmapped"], "on": on["mmapped"],
                          "same": bool(np.array_equal(ic0, ic1) and np.array_equal(od0, od1))}))
    """)
    assert r["off"] >= 64 << 20   # reuse_heap=False leaves the process as it was
    assert r["on"] == 0
    assert r["same"]


# Like Ray Data's actor: the model runs on a thread of its own, started after the policy is set.
OFF_MAIN_THREAD = """
    hm.release_large_frees()
    hm.reuse_heap()
    from concurrent.futures import ThreadPoolExecutor
    print(json.dumps(ThreadPoolExecutor(1).submit(probe).result()))
"""


def test_off_the_main_thread_reuse_heap_needs_one_arena():
    many = run_py(OFF_MAIN_THREAD)
    one = run_py(OFF_MAIN_THREAD, env=dict(host_memory.ONE_ARENA_ENV))
    assert many["mmapped"] >= 64 << 20     # the thread's own arena maps big buffers anyway
    assert one["mmapped"] == 0 and one["heap_grew_again"] < 1 << 20

