"""Jobs next to a Ray that a developer or CI started with `ray start --head` on the same machine.

A job without `--ray-address` (and no RAY_ADDRESS) starts a private local Ray, whatever is
running; `--ray-address auto` joins the running head. The head here uses Ray's default temp
dir, as a plain `ray start --head` does, so a bare `ray.init()` would find it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from _ray_head import start_head, stop_head

PY = sys.executable
WHERE = """
import sys
import ray
from jobs._ray import init_ray
init_ray(sys.argv[1], 1)
print("GCS", ray.get_runtime_context().gcs_address)
"""


@pytest.fixture(scope="module")
def running_head():
    head = start_head(num_cpus=1, dashboard=False, default_temp_dir=True)
    yield head
    stop_head(head)


def _gcs(head, address: str) -> str:
    """The GCS address of the Ray that init_ray(address) ends up on (the head's token in the env)."""
    done = subprocess.run([PY, "-c", WHERE, address], env=head.env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return next(ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("GCS"))


def test_no_address_starts_a_private_ray_and_auto_joins_the_running_one(running_head):
    port = running_head.gcs_address.rsplit(":", 1)[1]
    assert not _gcs(running_head, "").endswith(":" + port), "a job without --ray-address joined the running Ray"
    assert _gcs(running_head, "auto").endswith(":" + port), "--ray-address auto must join the running head"


def test_a_job_runs_to_the_end_beside_a_running_ray(running_head, tmp_path):
    out = tmp_path / "run"
    synth = [PY, "-m", "jobs.synth", "--out", str(out), "--num-users", "12", "--num-posts", "30", "--no-images"]
    done = subprocess.run(synth, env=running_head.env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    embed = [PY, "-m", "jobs.embed_users", "--out", str(out), "--walks-per-node", "2", "--walk-length", "10",
             "--dim", "8", "--num-cpus", "1"]
    done = subprocess.run(embed, env=running_head.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting a local Ray" in done.stderr
    from featurestore import Store

    assert Store.open(out / "store", readonly=True).reader("user/node2vec@1").count() > 0
