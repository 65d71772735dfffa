"""Starting or joining Ray: one place, so every stage behaves the same under `ray job submit`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("jobs")

STORE_RESOURCE = "store"   # the custom resource of the node whose local disk holds the LMDB store


def resolve_address(address: str = "") -> str:
    """Where a job's Ray runs: `address`, else RAY_ADDRESS (`ray job submit` sets it), else "local".

    "local" starts a private Ray for this job even when `ray start --head` is running on the
    machine: a job joins a cluster only when told to, so a developer's running head never
    changes where (or whether) a job runs. `--ray-address auto` joins the running one.
    """
    return address or os.environ.get("RAY_ADDRESS", "") or "local"


def init_ray(address: str = "", num_cpus: int = 0) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a private local Ray.

    A local Ray gets no dashboard and a small object store so that tests and laptops stay light;
    `num_cpus` applies to it only (a running cluster has its own). Calling it again in the same
    process is a no-op.
    """
    import ray

    if ray.is_initialized():
        return
    address = resolve_address(address)
    if address != "local":
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    # Workers import the project's packages; make them find it when run from a checkout.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}}
    log.info("starting a local Ray (%s CPUs); --ray-address auto joins a running one instead",
             num_cpus or os.cpu_count())
    # Its only node holds the store, as the head of cluster.yaml does (the `store` resource).
    ray.init(address="local", include_dashboard=False, log_to_driver=True, runtime_env=env,
             object_store_memory=int(os.environ.get("TAGREC_OBJECT_STORE_BYTES", 512 * 1024**2)),
             num_cpus=num_cpus if num_cpus > 0 else None, resources={STORE_RESOURCE: 1})


def node_id() -> str:
    """The Ray node this process (driver, task or actor) runs on, as a hex id."""
    import ray

    return ray.get_runtime_context().get_node_id()


def placement(**roles: Mapping[str, int]) -> dict[str, Any]:
    """Which node did what, for a job's summary.

    {"driver": {"node": id, "holds_store": bool}, "nodes": {id: {"address": ip, "resources": {...}}},
    role: {node id: units of work}}: the driver (the store's single writer) must sit on the node
    with the `store` resource; each role (walk_tasks, model_actors, ...) counts work per node.
    """
    import ray

    me = node_id()
    nodes = {n["NodeID"]: {"address": n.get("NodeManagerAddress", ""),
                           "resources": {k: v for k, v in n.get("Resources", {}).items()
                                         if not k.startswith(("node:", "memory", "object_store_memory"))}}
             for n in ray.nodes() if n.get("Alive")}
    holds = STORE_RESOURCE in nodes.get(me, {}).get("resources", {})
    if not holds and len(nodes) > 1:
        log.warning("this driver runs on Ray node %s, which lacks the '%s' resource: the store is written on "
                    "its local disk; submit with --entrypoint-resources '{\"%s\": 1}'", me, STORE_RESOURCE,
                    STORE_RESOURCE)
    return {"driver": {"node": me, "holds_store": holds}, "nodes": nodes,
            **{role: dict(sorted(counts.items())) for role, counts in roles.items()}}
