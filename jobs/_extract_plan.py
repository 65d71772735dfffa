"""What `jobs.extract` settles before any image is read: flags, weights, backend and placement.

Weight files are checked (and the store's producer metadata worked out per backend) in a
short-lived child process, so the driver never imports torch; where the actors run (GPU or
CPU, decode on the device or not) is resolved against the Ray cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobError

if TYPE_CHECKING:
    from jobs.extract import ExtractConfig


def check_flags(cfg: ExtractConfig) -> None:
    if cfg.batch_size < 1:
        raise JobError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.limit < 0:
        raise JobError(f"--limit must be >= 0, got {cfg.limit}")
    if cfg.cpu_actors < 1:
        raise JobError(f"--cpu-actors must be >= 1, got {cfg.cpu_actors}")
    if cfg.max_pixels < 1 or cfg.max_bytes < 1:
        raise JobError("--max-pixels and --max-bytes must be >= 1")
    bad = {k: v for k, v in cfg.actor_resources.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0}
    if bad:
        raise JobError(f"--actor-resources must map resource names to amounts > 0, got {bad}")
    for flag, path in (("--vgg-weights", cfg.vgg_weights), ("--yolo-weights", cfg.yolo_weights),
                       ("--yolo-onnx", cfg.yolo_onnx)):
        if path and not Path(path).is_file():
            raise JobError(f"{flag} {path} does not exist")


def _cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def check_actor_resources(cfg: ExtractConfig) -> None:
    """JobError when no Ray node advertises a custom resource the actors ask for (they would wait
    for it forever)."""
    import ray

    have = ray.cluster_resources()
    short = {k: v for k, v in cfg.actor_resources.items() if have.get(k, 0) < v}
    if short:
        custom = sorted(k for k in have if k not in ("CPU", "GPU", "memory", "object_store_memory")
                        and not k.startswith(("node:", "accelerator_type:")))
        raise JobError(f"--actor-resources {short}: the Ray cluster has {', '.join(custom) or 'no custom resources'}"
                       f" ({ {k: have.get(k, 0) for k in short} }); start nodes with --resources or change the flag")


def placement(cfg: ExtractConfig) -> tuple[int, str, bool]:
    """(GPU actors or 0, backend name to record, decode on device?)."""
    check_actor_resources(cfg)
    if cfg.backend == "cpu" or cfg.gpus == 0:
        if cfg.backend in ("cuda", "tensorrt"):
            raise JobError(f"--backend {cfg.backend} needs GPU actors; drop --gpus 0 or use --backend cpu")
        if cfg.decode == "gpu":
            raise JobError("--decode gpu needs GPU actors; use --decode cpu (or auto)")
        return 0, "cpu", False
    have = _cluster_gpus()
    gpus = have if cfg.gpus < 0 else cfg.gpus
    if gpus == 0 or have == 0:
        if cfg.backend in ("cuda", "tensorrt") or cfg.decode == "gpu":
            raise JobError(f"--backend {cfg.backend} / --decode {cfg.decode} need a GPU, and the Ray cluster has "
                           "none; use --backend cpu --decode cpu")
        return 0, "cpu", False
    if gpus > have:
        raise JobError(f"--gpus {gpus} but the Ray cluster has {have} GPU(s)")
    import ray

    # The driver may have no GPU (a CPU head): resolve `auto` where the actors will run.
    backend = ray.get(ray.remote(num_gpus=1)(_select_backend).remote(cfg.backend))
    return gpus, backend, cfg.decode in ("auto", "gpu")


def extractor_config(cfg: ExtractConfig, backend: str, threads: int) -> dict[str, Any]:
    """The actors' ExtractorConfig as plain fields (building the class would import torch here)."""
    return dict(
        vgg_weights=cfg.vgg_weights, yolo_weights=cfg.yolo_weights, yolo_onnx=cfg.yolo_onnx,
        random_weights=cfg.random_weights, seed=cfg.seed, backend=backend, precision=cfg.precision,
        vgg_size=cfg.vgg_size, yolo_size=cfg.yolo_size, max_batch=cfg.batch_size, threads=threads,
        engine_cache=cfg.engine_cache)


BACKENDS = ("cpu", "cuda", "tensorrt")   # where the actors may run (`auto` is resolved on their node)


def model_plan(cfg: ExtractConfig) -> dict[str, Any]:
    """Check every weight file the actors will load, and the store's producer metadata per backend.

    {"yolo_size": (h, w), "producers": {backend: producers dict, or the ModelError that running
    on that backend would raise (e.g. a precision it lacks)}}: plain data, so that it can come
    from a child process. Raises ModelError for missing/malformed/unsafe weights.
    """
    from models.errors import ModelError
    from models.vision.extractor import ExtractorConfig, check_weights, plan_producers

    weights = check_weights(ExtractorConfig(**extractor_config(cfg, "cpu", 0)))
    producers: dict[str, Any] = {}
    for backend in BACKENDS:
        try:
            producers[backend] = plan_producers(ExtractorConfig(**extractor_config(cfg, backend, 0)), backend,
                                                weights)
        except ModelError as e:
            producers[backend] = e
    return {"yolo_size": tuple(weights.yolo_size), "producers": producers}


def start_model_plan(cfg: ExtractConfig) -> Callable[[], dict[str, Any]]:
    """Start `model_plan`; returns the call that waits for its result (or raises its error).

    In a short-lived child process unless torch is loaded here already: checking weights needs
    torch, whose heap is never given back once imported, and the driver needs none otherwise
    (a large share of the job's memory on one node; benchmarks/results/design-measurements.md).
    The child (importing torch takes seconds) runs while the driver reads the manifest.
    """
    import sys

    if "torch" in sys.modules:
        plan = model_plan(cfg)                  # errors raised here, before any work
        return lambda: plan
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(model_plan, cfg)
    pool.shutdown(wait=False)                   # the child exits once the plan is done
    return future.result                        # raises the child's ModelError


def _select_backend(name: str) -> str:
    """Resolve `name` ('auto') where this runs (a GPU actor's node), importing torch there only."""
    from models.vision.backends import select_backend

    return select_backend(name)
