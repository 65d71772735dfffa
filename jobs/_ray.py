"""Starting or joining Ray: one place, so every stage behaves the same under `ray job submit`."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("jobs")


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
    ray.init(address="local", include_dashboard=False, log_to_driver=True, runtime_env=env,
             object_store_memory=int(os.environ.get("TAGREC_OBJECT_STORE_BYTES", 512 * 1024**2)),
             num_cpus=num_cpus if num_cpus > 0 else None)
