"""The Ray Data side of `jobs.extract`: decode tasks, the model actor and the pipeline.

    item blocks -> read + decode + preprocess (CPU tasks, `decode_batch`)    [--decode cpu]
                   read bytes (CPU tasks, `read_batch`), decode in the actor  [--decode gpu: nvJPEG]
                -> `FeatureActor`: VGG16-GAP + YOLO, loaded once per actor, on an actor pool

Stateless preprocessing functions and one callable class (the Ray inference idiom); the
resources (`num_gpus`, `batch_size`, pool size) are set at the `map_batches` calls in
`build_dataset`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from models.views import IC_DIM, OD_DIM

if TYPE_CHECKING:
    from jobs.extract import ExtractConfig

log = logging.getLogger("jobs.extract")


def decode_batch(batch: dict[str, np.ndarray], vgg_size: int, yolo_size: tuple[int, int],
                 max_pixels: int, max_bytes: int) -> dict[str, np.ndarray]:
    """CPU task: image paths or URIs -> both models' uint8 inputs (decoded once) or an error reason."""
    import torch

    from jobs._image_io import read_image
    from models.vision.decode import DecodeFailure, DecodeLimits, decode_image
    from models.vision.extractor import preprocess_image

    # No torch.set_num_threads here: on CPU this function is fused into the model actor, whose
    # thread count it would override (Ray already gives 1-CPU tasks OMP_NUM_THREADS=1).
    limits = DecodeLimits(max_pixels=max_pixels, max_bytes=max_bytes, draft=max(yolo_size))
    n = len(batch["item_id"])
    vgg = np.zeros((n, vgg_size, vgg_size, 3), np.uint8)
    yolo = np.zeros((n, *yolo_size, 3), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["image"]):
        try:
            img = torch.from_numpy(decode_image(read_image(path, limits), limits))
            v, y = preprocess_image(img, vgg_size, yolo_size)
            vgg[i], yolo[i] = v.numpy(), y.numpy()
        except DecodeFailure as e:
            errors[i] = e.reason
    return {"item_id": batch["item_id"], "error": errors, "vgg": vgg, "yolo": yolo}


def read_batch(batch: dict[str, np.ndarray], max_bytes: int) -> dict[str, np.ndarray]:
    """CPU task for --decode gpu: image paths or URIs -> raw bytes (decoded in the GPU actor)."""
    from jobs._image_io import read_image
    from models.vision.decode import DecodeFailure, DecodeLimits

    limits = DecodeLimits(max_bytes=max_bytes)
    n = len(batch["item_id"])
    data = np.empty(n, dtype=object)
    errors = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["image"]):
        try:
            data[i] = read_image(path, limits)
        except DecodeFailure as e:
            data[i], errors[i] = b"", e.reason
    return {"item_id": batch["item_id"], "error": errors, "data": data}


class FeatureActor:
    """Callable class on the actor pool: loads both models once, runs each batch.

    Input batches come from `decode_batch` (uint8 crops) or, with decode_on_device, from
    `read_batch` (bytes, decoded here in one batched nvJPEG call). Output: item_id, error,
    vgg16 (n, 512) float16, yolo (n, 80) float16 (zeros where error != ""), node (the Ray node
    this actor runs on, for the job's placement record).
    """

    def __init__(self, ecfg: Any, decode_on_device: bool, max_pixels: int, max_bytes: int) -> None:
        from models import host_memory
        from models.vision.extractor import ExtractorConfig, ImageFeatureExtractor

        # Build with large frees returned to the OS; the extractor then (CPU backend) switches
        # the allocator to reuse the heap for its batches (models/host_memory.py).
        host_memory.release_large_frees()

        # ecfg: an ExtractorConfig, or its fields (what the torch-free driver sends)
        self.x = ImageFeatureExtractor(ExtractorConfig(**ecfg) if isinstance(ecfg, dict) else ecfg)
        self.decode_on_device = decode_on_device
        self.device = self.x.backend.device
        from models.vision.decode import DecodeLimits

        self.limits = DecodeLimits(max_pixels=max_pixels, max_bytes=max_bytes, draft=0)
        from jobs._ray import node_id

        self.node = node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        errors = np.asarray(batch["error"], dtype=object).copy()
        if self.decode_on_device:
            vgg, yolo = self._decode_on_device(batch["data"], errors)
        else:
            ok = errors == ""
            vgg, yolo = torch.from_numpy(batch["vgg"][ok]), torch.from_numpy(batch["yolo"][ok])
        ok = errors == ""
        ic, od = self.x(vgg, yolo)
        n = len(errors)
        out_ic, out_od = np.zeros((n, IC_DIM), np.float16), np.zeros((n, OD_DIM), np.float16)
        out_ic[ok], out_od[ok] = ic, od
        return {"item_id": batch["item_id"], "error": errors, "vgg16": out_ic, "yolo": out_od,
                "node": np.full(n, self.node, dtype=object)}

    def _decode_on_device(self, datas: np.ndarray, errors: np.ndarray):
        import torch

        from models.vision.decode import decode_batch_torch
        from models.vision.extractor import preprocess_image

        idx = [i for i in range(len(datas)) if errors[i] == ""]
        decoded = decode_batch_torch([bytes(datas[i]) for i in idx], self.device, self.limits)
        vgg, yolo = [], []
        for i, (img, reason) in zip(idx, decoded):
            if img is None:
                errors[i] = reason
                continue
            v, y = preprocess_image(img, self.x.cfg.vgg_size, self.x.yolo_size)
            vgg.append(v)
            yolo.append(y)
        if not vgg:
            return (torch.zeros((0, 1, 1, 3), dtype=torch.uint8),) * 2
        return torch.stack(vgg), torch.stack(yolo)


BLOCK_BATCHES = 16   # model batches per Ray Data input block (see build_dataset)


def block_rows(cfg: ExtractConfig, items: int, gpus: int) -> int:
    """Items per Ray Data input block: up to BLOCK_BATCHES batches, but at least ~4 blocks per actor.

    So every actor (and the decode tasks) has work from the start. Not one block per batch: each
    block and its task cost the driver Ray Data bookkeeping memory and scheduling time, and the
    store a commit (benchmarks/results/design-measurements.md).
    """
    actors = max(gpus or cfg.cpu_actors, 1)
    return cfg.batch_size * max(1, min(BLOCK_BATCHES, items // (4 * actors * cfg.batch_size)))


def dataset_from_blocks(blocks: Iterator[Any]):
    """A Ray Dataset of pyarrow tables put in the object store one by one, as they come.

    What `ray.data.from_blocks` does, for a generator: each block's metadata is computed here.
    `ray.data.from_arrow_refs` (the public route from refs) runs a Ray task per block for it,
    which costs the driver native memory per block (several times this way's;
    benchmarks/results/design-measurements.md) and a worker process. Falls back to it if Ray's
    internals moved.
    """
    import ray

    try:
        from ray.data.block import BlockMetadataWithSchema
    except ImportError:
        return ray.data.from_arrow_refs([ray.put(t) for t in blocks])  # type: ignore[misc]
    refs: list[Any] = []
    metas: list[Any] = []
    for t in blocks:
        refs.append(ray.put(t))
        metas.append(BlockMetadataWithSchema.from_block(t))
    try:  # as ray.data.from_blocks builds it
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators.from_operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset

        ctx = DataContext.get_current().copy()
        return MaterializedDataset(LogicalPlan(FromArrow(refs, metas), ctx), ctx,
                                   DatasetStats(metadata={"FromArrow": metas}, parent=None))
    except (ImportError, TypeError, AttributeError) as e:  # Ray's internals moved: the public route
        log.info("extract: building the dataset through ray.data.from_arrow_refs (%s)", e)
        return ray.data.from_arrow_refs(refs)


def build_dataset(cfg: ExtractConfig, blocks: Iterator[Any], ecfg: Any, gpus: int,
                  on_device: bool, yolo_size: tuple[int, int]):
    """The Ray Data pipeline: item blocks -> (bytes | decoded crops) -> features on the actor pool.

    Each (item_id, image) block goes to the object store as it is cut (`item_blocks`), so the
    driver holds one block's paths at a time, not the archive's.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False                 # our own Progress lines, CI-log friendly
    ctx.enable_operator_progress_bars = False
    ds = dataset_from_blocks(blocks)
    if on_device:
        ds = ds.map_batches(read_batch, fn_kwargs={"max_bytes": cfg.max_bytes}, batch_size=cfg.batch_size,
                            batch_format="numpy", num_cpus=0.5)
    else:
        ds = ds.map_batches(decode_batch, batch_size=cfg.batch_size, batch_format="numpy", num_cpus=1,
                            fn_kwargs={"vgg_size": cfg.vgg_size, "yolo_size": yolo_size,
                                       "max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes})
    # On CPU, Ray Data fuses decode_batch into the actor (same resources): decode then runs in the
    # actor process and crops never cross the object store. GPU actors (num_gpus=1) are not fused
    # with the CPU decode tasks, so decoding stays off the GPU actor.
    resources: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    if cfg.actor_resources:   # custom resources: e.g. keep the actors on the pool's nodes
        resources["resources"] = dict(cfg.actor_resources)
    if not gpus:
        # One malloc arena for the whole CPU actor: Ray Data calls the model from its own thread,
        # whose arena would serve every buffer over 64 MB with a fresh mmap, zero-filled by the
        # kernel each batch, whatever the actor's heap policy (models/host_memory.py;
        # benchmarks/results/design-measurements.md).
        from models.host_memory import ONE_ARENA_ENV

        resources["runtime_env"] = {"env_vars": dict(ONE_ARENA_ENV)}
    return ds.map_batches(
        FeatureActor, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=gpus or cfg.cpu_actors), **resources,
        fn_constructor_kwargs={"ecfg": ecfg, "decode_on_device": on_device,
                               "max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes})


def node_cpus() -> int:
    """CPUs Ray gives this node (the CPU actors' torch threads are split from them)."""
    import ray

    try:
        node = ray.get_runtime_context().get_node_id()
        res = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node)
        return max(1, int(res.get("CPU", 1)))
    except Exception:  # noqa: BLE001 — fall back to the OS count
        return os.cpu_count() or 1
