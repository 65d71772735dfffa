"""A Ray cluster of three nodes on this machine (`ray.cluster_utils.Cluster`), as cluster.yaml lays
one out: a head holding the `store` resource (the store's node, where job drivers run) and two
worker nodes with their own CPUs and a `pool` resource (the GPU pool's stand-in).

Each node is a real raylet with its own object store; tasks and actors placed on a node run in
that node's worker processes. Jobs join with `--ray-address <address>` from a subprocess, as a
`ray job submit` driver on the head would. Only this cluster's processes are stopped, never
`ray stop`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
NODE_OBJECT_STORE_BYTES = 96 * 1024**2
POOL = "pool"   # the worker nodes' custom resource
# What a Ray started in this process (ray.init: RAY_AUTH_MODE=token) leaves in os.environ; nodes
# and drivers of this cluster run without it, whatever started first.
FOREIGN_RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH", "RAY_CLIENT_MODE")


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without another Ray's address or auth settings."""
    return {k: v for k, v in env.items() if not k.startswith(FOREIGN_RAY_VARS)}


@dataclass
class LocalCluster:
    cluster: object
    address: str           # host:port of the head's GCS, for --ray-address
    head: str              # node ids
    workers: list[str]

    def role(self, node: str) -> str:
        return "head" if node == self.head else "worker" if node in self.workers else "unknown"


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` applied while the nodes start: their raylets and workers inherit it."""
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_env({**old, **env}))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def start_cluster(env: dict[str, str]) -> LocalCluster:
    """Head (1 CPU, store) + 2 workers (1 CPU and `pool` each); `env` reaches every node's processes.

    Cluster records its address in Ray's default temp dir for `ray.init("auto")`; that would
    send other Ray users of this machine to this cluster, so it is not written (nor removed).
    """
    from ray.cluster_utils import Cluster

    env = {"RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env}
    with _environ(env), mock.patch("ray._private.utils.write_ray_address"):
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 1, "resources": {"store": 1}, "include_dashboard": False,
                                    "object_store_memory": NODE_OBJECT_STORE_BYTES})
        workers = [c.add_node(num_cpus=1, resources={POOL: 1}, object_store_memory=NODE_OBJECT_STORE_BYTES)
                   for _ in range(2)]
        c.wait_for_nodes()
    return LocalCluster(c, c.address, c.head_node.node_id, [w.node_id for w in workers])


def stop_cluster(lc: LocalCluster) -> None:
    with mock.patch("ray._common.utils.reset_ray_address"):
        lc.cluster.shutdown()  # type: ignore[attr-defined]
