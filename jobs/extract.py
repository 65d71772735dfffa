"""Stage: image features for every distinct image of the archive: `python -m jobs.extract`.

    posts.parquet -> unique items (item_id, image) -> skip ids committed in the store
      -> Ray Data: read bytes + decode + preprocess (CPU tasks)   [--decode cpu]
                   read bytes (CPU tasks), decode in the actor     [--decode gpu: nvJPEG]
         (images are read on the workers, from local paths or URIs: s3://, gs://; never
         through the driver, which sends only (item_id, image) blocks)
      -> VGG16-GAP + YOLO in one callable class on an actor pool (num_gpus=1 each on GPU)
      -> the driver (the store's single writer): image/vgg16@1 (512) and image/yolo@1 (80),
         float16 by item_id; failed images -> the views' error records with a reason.

Resumable: each batch is committed as it arrives; a re-run skips ids present in both views,
and (batches being padded to one static size) recomputes the rest to the same bytes. An image
that cannot be read (missing, denied, a transient error that outlasted the retries:
`jobs._image_io`) is a bad image with its reason, like an undecodable one, and is retried by the
next run.

At archive scale the driver streams the manifest (validation, item ids, image paths)
in record batches and keeps 16 bytes per distinct item (id and first row); image paths are read
back a window of items at a time and the (item_id, image) blocks go to the object store as they
are cut. The driver never imports torch (weight files are checked in a short-lived child
process): the models live in the actors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs._extract_actor import block_rows, build_dataset, node_cpus
from jobs._extract_items import item_blocks, item_index
from jobs._extract_plan import check_flags, extractor_config, placement, start_model_plan
from jobs.errors import InputError
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
    actor_resources: dict = arg({}, "Ray custom resources each model actor needs, as JSON, e.g. "
                                    "'{\"pool\": 1}' to keep the actors on the nodes that advertise it "
                                    "(GPU actors already go where the GPUs are)")


def committed(w_ic: Any, w_od: Any, ids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Bool mask: ids with a value in both views. Looked up a chunk at a time, since the store's
    `existing` makes a bytes key per id (Python objects per row; benchmarks/results/design-measurements.md)."""
    done = np.zeros(len(ids), dtype=bool)
    for i in range(0, len(ids), chunk):
        part = ids[i:i + chunk]
        have = w_ic.existing(part)
        if have.any():
            have[have] &= w_od.existing(part[have])
        done[i:i + chunk] = have
    return done


def _extract(cfg: ExtractConfig, store: Any, producers: dict, posts: str, ids: np.ndarray, rows: np.ndarray,
             ecfg: Any, gpus: int, on_device: bool, yolo_size: tuple[int, int], backend: str,
             nodes: Counter[str]):
    """Create the views, skip committed ids, run the pipeline, commit each batch as it arrives;
    `nodes` counts the images each Ray node's model actors processed."""
    from jobs._progress import Progress

    store.create_view(IC_VIEW, IC_DIM, "float16", producer=producers["vgg16"])
    store.create_view(OD_VIEW, OD_DIM, "float16", producer=producers["yolo"])
    failed: Counter[str] = Counter()
    ok = 0
    with store.writer(IC_VIEW) as w_ic, store.writer(OD_VIEW) as w_od:
        done = committed(w_ic, w_od, ids)
        todo = np.flatnonzero(~done)
        if cfg.limit:
            todo = todo[:cfg.limit]                   # the lowest item ids
        log.info("extract: %d distinct images, %d already committed, %d to do (backend %s, %s actors, decode %s)",
                 len(ids), int(done.sum()), len(todo), backend, gpus or cfg.cpu_actors,
                 "gpu" if on_device else "cpu")
        progress = Progress("extract", total=len(todo), unit="img")
        if len(todo):
            blocks = item_blocks(posts, ids[todo], rows[todo], block_rows(cfg, len(todo), gpus))
            ds = build_dataset(cfg, blocks, ecfg, gpus, on_device, yolo_size)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                nodes.update(batch["node"].tolist())
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

    check_flags(cfg)
    plan_result = start_model_plan(cfg)         # bad/unsafe weights: refused before Ray
    posts = cfg.posts_uri()
    try:
        ids, rows = item_index(posts)
    except InputError:
        plan_result()                           # a weights error is still the one reported first
        raise
    plan = plan_result()
    init_ray(cfg.ray_address, cfg.num_cpus)
    gpus, backend, on_device = placement(cfg)
    threads = cfg.threads or max(1, node_cpus() // cfg.cpu_actors)
    ecfg = extractor_config(cfg, backend, threads if not gpus else 0)
    producers = plan["producers"][backend]
    if isinstance(producers, Exception):        # e.g. a --precision this backend lacks
        raise producers

    nodes: Counter[str] = Counter()
    with Store.open(cfg.store_path(), create=True) as store:
        rate, ok, failed, done, todo = _extract(cfg, store, producers, posts, ids, rows, ecfg, gpus, on_device,
                                                plan["yolo_size"], backend, nodes)
    summary = {"images": int(len(ids)), "skipped_committed": int(done.sum()), "processed": int(len(todo)),
               "ok": ok, "failed": int(sum(failed.values())), "failed_by_reason": dict(sorted(failed.items())),
               "images_per_s": round(rate, 3), "backend": backend, "precision": producers["vgg16"]["precision"],
               "gpu_actors": gpus, "decode": "gpu" if on_device else "cpu", "views": [IC_VIEW, OD_VIEW],
               "weights": {"vgg16": producers["vgg16"]["weights"], "yolo": producers["yolo"]["weights"]}}
    if nodes:   # the model actors' nodes; the driver (the store's node) wrote every batch
        from jobs._ray import node_id
        from jobs._ray import placement as where

        summary["placement"] = where(model_actors=nodes, store_writes={node_id(): int(len(todo))})
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
