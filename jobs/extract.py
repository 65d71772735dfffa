"""Stage: image features for every distinct image of the archive (issue 4).

    posts.parquet -> unique items (item_id, image) -> skip ids committed in the store
      -> Ray Data: read bytes + decode + preprocess (CPU tasks)   [--decode cpu]
                   read bytes (CPU tasks), decode in the actor     [--decode gpu: nvJPEG]
      -> VGG16-GAP + YOLO in one callable class on an actor pool (num_gpus=1 each on GPU)
      -> the driver (the store's single writer): image/vgg16@1 (512) and image/yolo@1 (80),
         float16 by item_id; failed images -> the views' error records with a reason.

Resumable: each batch is committed as it arrives; a re-run skips ids present in both views,
and (batches being padded to one static size) recomputes the rest to the same bytes.

Archive scale (issue 9): the driver streams the manifest (validation, item ids, image paths)
in record batches and keeps 16 bytes per distinct item (id and first row); image paths are read
back a window of items at a time and the (item_id, image) blocks go to the object store as they
are cut. The driver never imports torch (weight files are checked in a short-lived child
process): the models live in the actors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs.errors import InputError, JobError
from models.views import IC_DIM, IC_VIEW, OD_DIM, OD_VIEW

log = logging.getLogger("jobs.extract")



@dataclasses.dataclass
class ExtractConfig(ArchiveArgs, RayArgs):
    """Flags of `python -m jobs.extract`."""

    vgg_weights: str = arg("", "torchvision VGG16 state_dict (.pt/.pth loaded weights-only, or .safetensors)")
    yolo_weights: str = arg("", "state_dict of the built-in YOLOv2 (Darknet-19, 448x448)")
    yolo_onnx: str = arg("", "or: an ONNX detector in the YOLOv5 [B,N,85] / YOLOv8 [B,84,N] layout")
    random_weights: bool = arg(False, "allow seeded random weights (--seed) where no weights are given; "
                                      "the store records 'random weights'")
    batch_size: int = arg(16, "images per model call (per actor batch)")
    gpus: int = arg(-1, "GPU actors, one GPU each (-1: every GPU of the cluster, 0: CPU actors only)")
    cpu_actors: int = arg(1, "model actors when running on CPU")
    threads: int = arg(0, "torch threads per CPU actor (0: this node's CPUs / cpu_actors)")
    backend: str = arg("auto", "inference backend (auto: tensorrt > cuda > cpu)",
                       choices=["auto", "cpu", "cuda", "tensorrt"])
    precision: str = arg("", "fp32 | fp16 | bf16 (empty: the backend's default: cpu fp32, GPU fp16)",
                         choices=["", "fp32", "fp16", "bf16"])
    decode: str = arg("auto", "where JPEGs are decoded (auto: gpu with GPU actors, else cpu)",
                      choices=["auto", "cpu", "gpu"])
    limit: int = arg(0, "process at most this many not-yet-committed images (0: all)")
    vgg_size: int = arg(224, "VGG16 input size (224: what torchvision's weights expect)")
    yolo_size: int = arg(448, "built-in YOLOv2 input size, a multiple of 32 (an ONNX detector sets its own)")
    max_pixels: int = arg(64_000_000, "refuse images with more pixels (from the header, before decoding)")
    max_bytes: int = arg(64 * 1024 * 1024, "refuse image files larger than this")
    engine_cache: str = arg("", "TensorRT engine cache folder (empty: ~/.cache/tagrec/tensorrt)")


# ------------------------------------------------------------------ items


def item_index(posts: Path, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(distinct item ids sorted, manifest row of each one's first post), streamed.

    Validates the manifest first (`contract.check_posts`: the same errors as `read_posts`, one
    record batch at a time). Holds 8 bytes per post (the item id of every row) while it runs and
    16 bytes per distinct item after: never the manifest's strings or tag lists.
    """
    import pyarrow as pa

    from jobs.contract import check_posts, iter_posts

    n = check_posts(posts, batch_rows)
    ids = np.empty(n, dtype=np.int64)
    pos = 0
    for b in iter_posts(posts, columns=("item_id",), batch_rows=batch_rows):   # hashed from images if absent
        ids[pos:pos + b.num_rows] = b.column(0).to_numpy()
        pos += b.num_rows
    uniq, first = np.unique(ids[:pos], return_index=True)  # sorted ids: --limit takes the lowest
    del ids
    pa.default_memory_pool().release_unused()      # give Arrow's freed read buffers back (~60 MB)
    return uniq, first.astype(np.int64)


def paths_of_rows(posts: Path, rows: np.ndarray, batch_rows: int = 65536) -> Any:
    """Absolute image paths of ascending manifest `rows`, as one pyarrow string array.

    One pass over the manifest's image column, a record batch at a time, stopping after the last
    row asked for: only the rows asked for are kept.
    """
    import pyarrow as pa

    from jobs.contract import iter_posts

    parts: list[Any] = []
    k = pos = 0
    for b in iter_posts(posts, columns=("image",), batch_rows=batch_rows):
        if k == len(rows):
            break
        j = int(np.searchsorted(rows, pos + b.num_rows))       # rows[k:j] are in this batch
        if j > k:
            parts.append(b.column(0).take(pa.array(rows[k:j] - pos)).cast(pa.string()))
        k, pos = j, pos + b.num_rows
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


PATH_WINDOW = 131_072   # items whose paths the driver holds at once (~8 MB), at least 1/16 of them


def item_blocks(posts: Path, ids: np.ndarray, rows: np.ndarray, per_block: int,
                batch_rows: int = 65536, window: int = 0) -> Iterator[Any]:
    """(item_id int64, image string) pyarrow tables of `per_block` items, in the order of `ids`.

    `rows[i]` is the manifest row of item `ids[i]`. Ascending ids let the store append in key
    order: committing 256-id batches in random key order cost 2.8x the CPU and 1.5x the time
    (measured, 2x10^5 error records). Paths are read a window of items at a time
    (`paths_of_rows`: one pass over the image column per window), so the driver holds at most
    `window` paths (default: PATH_WINDOW, or 1/16 of the items: at most 16 passes).
    """
    import pyarrow as pa

    n = len(ids)
    window = window or max(PATH_WINDOW, -(-n // 16))
    window = max(per_block, window // per_block * per_block)        # whole blocks per window
    for w in range(0, n, window):
        w_rows = rows[w:w + window]
        order = np.argsort(w_rows, kind="stable")
        paths = paths_of_rows(posts, w_rows[order], batch_rows)   # in row order
        at = np.empty_like(order)
        at[order] = np.arange(len(order))                           # item i's path is paths[at[i]]
        for b in range(0, len(w_rows), per_block):
            yield pa.table({"item_id": pa.array(ids[w + b:w + b + per_block], pa.int64()),
                            "image": paths.take(pa.array(at[b:b + per_block]))})   # a compact copy


# ------------------------------------------------------------------ Ray Data stages (stateless)


def decode_batch(batch: dict[str, np.ndarray], vgg_size: int, yolo_size: tuple[int, int],
                 max_pixels: int, max_bytes: int) -> dict[str, np.ndarray]:
    """CPU task: image paths -> both models' uint8 inputs (decoded once) or an error reason."""
    import torch

    from models.vision.decode import DecodeFailure, DecodeLimits, decode_image, read_bytes
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
            if not path:
                raise DecodeFailure("missing", "no image path")
            img = torch.from_numpy(decode_image(read_bytes(path, limits), limits))
            v, y = preprocess_image(img, vgg_size, yolo_size)
            vgg[i], yolo[i] = v.numpy(), y.numpy()
        except DecodeFailure as e:
            errors[i] = e.reason
    return {"item_id": batch["item_id"], "error": errors, "vgg": vgg, "yolo": yolo}


def read_batch(batch: dict[str, np.ndarray], max_bytes: int) -> dict[str, np.ndarray]:
    """CPU task for --decode gpu: image paths -> raw bytes (decoded in the GPU actor)."""
    from models.vision.decode import DecodeFailure, DecodeLimits, read_bytes

    limits = DecodeLimits(max_bytes=max_bytes)
    n = len(batch["item_id"])
    data = np.empty(n, dtype=object)
    errors = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["image"]):
        try:
            if not path:
                raise DecodeFailure("missing", "no image path")
            data[i] = read_bytes(path, limits)
        except DecodeFailure as e:
            data[i], errors[i] = b"", e.reason
    return {"item_id": batch["item_id"], "error": errors, "data": data}


class FeatureActor:
    """Callable class on the actor pool: loads both models once, runs each batch.

    Input batches come from `decode_batch` (uint8 crops) or, with decode_on_device, from
    `read_batch` (bytes, decoded here in one batched nvJPEG call). Output: item_id, error,
    vgg16 (n, 512) float16, yolo (n, 80) float16 (zeros where error != "").
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
        return {"item_id": batch["item_id"], "error": errors, "vgg16": out_ic, "yolo": out_od}

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


# ------------------------------------------------------------------ the job


def _cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def _placement(cfg: ExtractConfig) -> tuple[int, str, bool]:
    """(GPU actors or 0, backend name to record, decode on device?)."""
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


def _extractor_config(cfg: ExtractConfig, backend: str, threads: int) -> dict[str, Any]:
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

    weights = check_weights(ExtractorConfig(**_extractor_config(cfg, "cpu", 0)))
    producers: dict[str, Any] = {}
    for backend in BACKENDS:
        try:
            producers[backend] = plan_producers(ExtractorConfig(**_extractor_config(cfg, backend, 0)), backend,
                                                weights)
        except ModelError as e:
            producers[backend] = e
    return {"yolo_size": tuple(weights.yolo_size), "producers": producers}


def start_model_plan(cfg: ExtractConfig) -> Callable[[], dict[str, Any]]:
    """Start `model_plan`; returns the call that waits for its result (or raises its error).

    In a short-lived child process unless torch is loaded here already: checking weights needs
    torch (~275 MB of heap once imported, never given back); the driver needs none otherwise,
    and that is a sixth of the whole job's memory on one node (issue 9). The child (a few
    seconds: importing torch) runs while the driver reads the manifest.
    """
    import sys

    if "torch" in sys.modules:
        plan = model_plan(cfg)                  # errors raised now, as before
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


def _check(cfg: ExtractConfig) -> None:
    if cfg.batch_size < 1:
        raise JobError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.limit < 0:
        raise JobError(f"--limit must be >= 0, got {cfg.limit}")
    if cfg.cpu_actors < 1:
        raise JobError(f"--cpu-actors must be >= 1, got {cfg.cpu_actors}")
    if cfg.max_pixels < 1 or cfg.max_bytes < 1:
        raise JobError("--max-pixels and --max-bytes must be >= 1")
    for flag, path in (("--vgg-weights", cfg.vgg_weights), ("--yolo-weights", cfg.yolo_weights),
                       ("--yolo-onnx", cfg.yolo_onnx)):
        if path and not Path(path).is_file():
            raise JobError(f"{flag} {path} does not exist")


BLOCK_BATCHES = 16   # model batches per Ray Data input block (see build_dataset)


def block_rows(cfg: ExtractConfig, items: int, gpus: int) -> int:
    """Items per Ray Data input block: up to BLOCK_BATCHES batches, but at least ~4 blocks per actor.

    So every actor (and the decode tasks) has work from the start. Not one block per batch: each
    block and its task cost the driver Ray Data bookkeeping (~74 KB per block with `from_arrow`,
    ~3 KB with `dataset_from_blocks`; issue 9), ~10 ms of scheduling, and the store a commit.
    """
    actors = max(gpus or cfg.cpu_actors, 1)
    return cfg.batch_size * max(1, min(BLOCK_BATCHES, items // (4 * actors * cfg.batch_size)))


def dataset_from_blocks(blocks: Iterator[Any]):
    """A Ray Dataset of pyarrow tables put in the object store one by one, as they come.

    What `ray.data.from_blocks` does, for a generator: each block's metadata is computed here.
    `ray.data.from_arrow_refs` (the public route from refs) runs a Ray task per block for it,
    which cost the driver ~40 KB of native memory per block (+73 MB for 1,563 blocks against
    +14 MB this way, measured) and a worker process. Falls back to it if Ray's internals moved.
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
    if not gpus:
        # One malloc arena for the whole CPU actor: Ray Data calls the model from its own thread,
        # whose arena would serve every buffer over 64 MB with a fresh mmap, zero-filled by the
        # kernel each batch, whatever the actor's heap policy (models/host_memory.py;
        # measured in the actor: 0.09 -> 0.00 system CPU-s per image).
        from models.host_memory import ONE_ARENA_ENV

        resources["runtime_env"] = {"env_vars": dict(ONE_ARENA_ENV)}
    return ds.map_batches(
        FeatureActor, batch_size=cfg.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=gpus or cfg.cpu_actors), **resources,
        fn_constructor_kwargs={"ecfg": ecfg, "decode_on_device": on_device,
                               "max_pixels": cfg.max_pixels, "max_bytes": cfg.max_bytes})


def _node_cpus() -> int:
    """CPUs Ray gives this node (the CPU actors' torch threads are split from them)."""
    import ray

    try:
        node = ray.get_runtime_context().get_node_id()
        res = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == node)
        return max(1, int(res.get("CPU", 1)))
    except Exception:  # noqa: BLE001 — fall back to the OS count
        return os.cpu_count() or 1


def committed(w_ic: Any, w_od: Any, ids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Bool mask: ids with a value in both views. Looked up a chunk at a time, since the store's
    `existing` makes a bytes key per id (Python objects per row: ~100 MB at 10^6 ids at once)."""
    done = np.zeros(len(ids), dtype=bool)
    for i in range(0, len(ids), chunk):
        part = ids[i:i + chunk]
        have = w_ic.existing(part)
        if have.any():
            have[have] &= w_od.existing(part[have])
        done[i:i + chunk] = have
    return done


def _extract(cfg: ExtractConfig, store: Any, producers: dict, posts: Path, ids: np.ndarray, rows: np.ndarray,
             ecfg: Any, gpus: int, on_device: bool, yolo_size: tuple[int, int], backend: str):
    """Create the views, skip committed ids, run the pipeline, commit each batch as it arrives."""
    from jobs._progress import Progress

    store.create_view(IC_VIEW, IC_DIM, "float16", producer=producers["vgg16"])
    store.create_view(OD_VIEW, OD_DIM, "float16", producer=producers["yolo"])
    failed: Counter[str] = Counter()
    ok = 0
    with store.writer(IC_VIEW) as w_ic, store.writer(OD_VIEW) as w_od:
        done = committed(w_ic, w_od, ids)
        todo = np.flatnonzero(~done)
        if cfg.limit:
            todo = todo[:cfg.limit]                   # the lowest item ids, as before
        log.info("extract: %d distinct images, %d already committed, %d to do (backend %s, %s actors, decode %s)",
                 len(ids), int(done.sum()), len(todo), backend, gpus or cfg.cpu_actors,
                 "gpu" if on_device else "cpu")
        progress = Progress("extract", total=len(todo), unit="img")
        if len(todo):
            blocks = item_blocks(posts, ids[todo], rows[todo], block_rows(cfg, len(todo), gpus))
            ds = build_dataset(cfg, blocks, ecfg, gpus, on_device, yolo_size)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                n_ok, reasons = write_batch(w_ic, w_od, batch)
                ok += n_ok
                failed.update(reasons)
                progress.update(len(batch["item_id"]))
        progress.close()
        rate = progress.rate()
    return rate, ok, failed, done, todo


def run(cfg: ExtractConfig) -> dict[str, Any]:
    """Extract IC and OD features for every not-yet-committed item; returns the summary."""
    from featurestore import Store
    from jobs._ray import init_ray

    _check(cfg)
    plan_result = start_model_plan(cfg)         # bad/unsafe weights: refused before Ray
    posts = cfg.posts_path()
    try:
        ids, rows = item_index(posts)
    except InputError:
        plan_result()                           # a weights error is still the one reported first
        raise
    plan = plan_result()
    init_ray(cfg.ray_address, cfg.num_cpus)
    gpus, backend, on_device = _placement(cfg)
    threads = cfg.threads or max(1, _node_cpus() // cfg.cpu_actors)
    ecfg = _extractor_config(cfg, backend, threads if not gpus else 0)
    producers = plan["producers"][backend]
    if isinstance(producers, Exception):        # e.g. a --precision this backend lacks
        raise producers

    with Store.open(cfg.store_path(), create=True) as store:
        rate, ok, failed, done, todo = _extract(cfg, store, producers, posts, ids, rows, ecfg, gpus, on_device,
                                                plan["yolo_size"], backend)
    summary = {"images": int(len(ids)), "skipped_committed": int(done.sum()), "processed": int(len(todo)),
               "ok": ok, "failed": int(sum(failed.values())), "failed_by_reason": dict(sorted(failed.items())),
               "images_per_s": round(rate, 3), "backend": backend, "precision": producers["vgg16"]["precision"],
               "gpu_actors": gpus, "decode": "gpu" if on_device else "cpu", "views": [IC_VIEW, OD_VIEW],
               "weights": {"vgg16": producers["vgg16"]["weights"], "yolo": producers["yolo"]["weights"]}}
    log.info("extract: ok %d, failed %d %s, %.2f img/s", ok, summary["failed"], summary["failed_by_reason"], rate)
    return summary


def write_batch(w_ic, w_od, batch: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """Commit one result batch: values for decoded images, error records for the rest."""
    ids = np.asarray(batch["item_id"], dtype=np.int64)
    errors = np.asarray(batch["error"], dtype=object)
    ok = errors == ""
    if ok.any():
        w_ic.put(ids[ok], batch["vgg16"][ok])
        w_od.put(ids[ok], batch["yolo"][ok])
    bad = [str(r) for r in errors[~ok]]
    if bad:
        w_ic.put_errors(ids[~ok], bad)
        w_od.put_errors(ids[~ok], bad)
    return int(ok.sum()), bad


def main() -> None:
    main_for("extract", ExtractConfig, run, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
