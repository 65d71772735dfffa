"""Stage: image features for every distinct image of the archive (issue 4).

    posts.parquet -> unique items (item_id, image) -> skip ids committed in the store
      -> Ray Data: read bytes + decode + preprocess (CPU tasks)   [--decode cpu]
                   read bytes (CPU tasks), decode in the actor     [--decode gpu: nvJPEG]
      -> VGG16-GAP + YOLO in one callable class on an actor pool (num_gpus=1 each on GPU)
      -> the driver (the store's single writer): image/vgg16@1 (512) and image/yolo@1 (80),
         float16 by item_id; failed images -> the views' error records with a reason.

Resumable: each batch is committed as it arrives; a re-run skips ids present in both views,
and (batches being padded to one static size) recomputes the rest to the same bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs.errors import JobError

log = logging.getLogger("jobs.extract")

IC_VIEW, OD_VIEW = "image/vgg16@1", "image/yolo@1"
IC_DIM, OD_DIM = 512, 80


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


def unique_items(posts: Path) -> tuple[np.ndarray, Any]:
    """(item_ids sorted, image path of each as a pyarrow string array) — one row per distinct item.

    The paths stay an Arrow array (one buffer), not a list of Python strings: at 10^6 items a
    list costs ~100 bytes per path in the driver (issue 9).
    """
    from jobs.contract import read_posts

    t = read_posts(posts, columns=["item_id", "image"])
    ids = t.column("item_id").to_numpy()
    uniq, first = np.unique(ids, return_index=True)    # sorted ids: the store appends in key order
    images = t.column("image").take(first).combine_chunks()
    return uniq.astype(np.int64), images


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
        from models.vision.extractor import ImageFeatureExtractor

        self.x = ImageFeatureExtractor(ecfg)
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
    from models.vision.backends import select_backend

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
    backend = ray.get(ray.remote(num_gpus=1)(select_backend).remote(cfg.backend))
    return gpus, backend, cfg.decode in ("auto", "gpu")


def _extractor_config(cfg: ExtractConfig, backend: str, threads: int):
    from models.vision.extractor import ExtractorConfig

    return ExtractorConfig(
        vgg_weights=cfg.vgg_weights, yolo_weights=cfg.yolo_weights, yolo_onnx=cfg.yolo_onnx,
        random_weights=cfg.random_weights, seed=cfg.seed, backend=backend, precision=cfg.precision,
        vgg_size=cfg.vgg_size, yolo_size=cfg.yolo_size, max_batch=cfg.batch_size, threads=threads,
        engine_cache=cfg.engine_cache)


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


def build_dataset(cfg: ExtractConfig, ids: np.ndarray, images: Any, ecfg: Any, gpus: int,
                  on_device: bool, yolo_size: tuple[int, int]):
    """The Ray Data pipeline: items -> (bytes | decoded crops) -> features on the actor pool."""
    import pyarrow as pa
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False                 # our own Progress lines, CI-log friendly
    ctx.enable_operator_progress_bars = False
    table = pa.table({"item_id": pa.array(ids, pa.int64()), "image": pa.array(images).cast(pa.string())})
    # Blocks of up to BLOCK_BATCHES batches, but at least ~4 blocks per actor so every actor (and the
    # decode tasks) has work from the start. Not one block per batch: each block and its task cost
    # the driver a few KB of Ray Data bookkeeping (~4.6 KB per item at 16 per block, measured:
    # 4.5 GB at 10^6 items, issue 9) and the store a commit per result block.
    actors = max(gpus or cfg.cpu_actors, 1)
    per_block = cfg.batch_size * max(1, min(BLOCK_BATCHES, len(ids) // (4 * actors * cfg.batch_size)))
    ds = ray.data.from_arrow([table.slice(i, per_block) for i in range(0, len(ids), per_block)])
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
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
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


def _extract(cfg: ExtractConfig, store: Any, producers: dict, ids: np.ndarray, images: Any,
             ecfg: Any, gpus: int, on_device: bool, yolo_size: tuple[int, int], backend: str):
    """Create the views, skip committed ids, run the pipeline, commit each batch as it arrives."""
    from jobs._progress import Progress

    store.create_view(IC_VIEW, IC_DIM, "float16", producer=producers["vgg16"])
    store.create_view(OD_VIEW, OD_DIM, "float16", producer=producers["yolo"])
    failed: Counter[str] = Counter()
    ok = 0
    with store.writer(IC_VIEW) as w_ic, store.writer(OD_VIEW) as w_od:
        done = w_ic.existing(ids) & w_od.existing(ids)
        todo = np.flatnonzero(~done)
        if cfg.limit:
            todo = todo[:cfg.limit]
        log.info("extract: %d distinct images, %d already committed, %d to do (backend %s, %s actors, decode %s)",
                 len(ids), int(done.sum()), len(todo), backend, gpus or cfg.cpu_actors,
                 "gpu" if on_device else "cpu")
        progress = Progress("extract", total=len(todo), unit="img")
        if len(todo):
            ds = build_dataset(cfg, ids[todo], images.take(todo), ecfg, gpus, on_device, yolo_size)
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
    from models.vision.extractor import check_weights, plan_producers

    _check(cfg)
    weights = check_weights(_extractor_config(cfg, "cpu", 0))   # bad/unsafe weights: refused before Ray
    ids, images = unique_items(cfg.posts_path())
    init_ray(cfg.ray_address, cfg.num_cpus)
    gpus, backend, on_device = _placement(cfg)
    threads = cfg.threads or max(1, _node_cpus() // cfg.cpu_actors)
    ecfg = _extractor_config(cfg, backend, threads if not gpus else 0)
    producers = plan_producers(ecfg, backend, weights)

    with Store.open(cfg.store_path(), create=True) as store:
        rate, ok, failed, done, todo = _extract(cfg, store, producers, ids, images, ecfg, gpus, on_device,
                                                weights.yolo_size, backend)
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
