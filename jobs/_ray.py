"""Starting or joining Ray: one place, so every stage behaves the same under `ray job submit`."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("jobs")


def init_ray(address: str = "", num_cpus: int = 0) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as `ray job submit` sets), else start a local Ray.

    A local Ray gets no dashboard and a small object store so that tests and laptops stay light.
    Calling it again in the same process is a no-op.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    # Workers import the project's packages; make them find it when run from a checkout.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    log.info("starting a local Ray (%s CPUs)", num_cpus or os.cpu_count())
    ray.init(include_dashboard=False, log_to_driver=True, runtime_env=env,
             object_store_memory=int(os.environ.get("TAGREC_OBJECT_STORE_BYTES", 512 * 1024**2)),
             num_cpus=num_cpus if num_cpus > 0 else None)
