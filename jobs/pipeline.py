"""The whole system end to end: `python -m jobs.pipeline` (the demo default).

    synth (when no --posts) → prepare → extract → embed_users → train → score
    → evaluate → social_influence

Each stage is the same `run(cfg)` that `python -m jobs.<stage>` runs, given the
pipeline's values for the flags it shares (same names); each skips what is already
done in the store and the output folder, so a re-run resumes. With no arguments: a
small synthetic archive, a local Ray, CPU, seeded random CNN weights (no weights can
be downloaded), ending with the evaluation table and where the outputs are.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import time
import typing
from pathlib import Path
from typing import Any

from jobs._cli import ArchiveArgs, RayArgs, SplitArgs, arg, execute, main_for

log = logging.getLogger("jobs.pipeline")

STAGES = ("synth", "prepare", "extract", "embed_users", "train", "score", "evaluate", "social_influence")
RAY_STAGES = {"extract", "embed_users", "train", "score"}


@dataclasses.dataclass
class PipelineConfig(ArchiveArgs, SplitArgs, RayArgs):
    """Pipeline flags; every flag also reaches each stage that has a flag of the same name."""

    stages: list[str] = arg(list(STAGES), "stages to run, in this order (comma-separated)")
    skip: list[str] = arg([], "stages to leave out (comma-separated)")
    vgg_weights: str = arg("", "VGG16 torchvision state_dict file (.pth/.safetensors)")
    yolo_weights: str = arg("", "built-in YOLOv2 state_dict file")
    yolo_onnx: str = arg("", "YOLOv5/YOLOv8 ONNX detector file (instead of --yolo-weights)")
    random_weights: bool = arg(False, "use seeded random CNN weights (the store records it); "
                                      "on by default for the synthetic demo")
    backend: str = arg("auto", "inference backend: auto, cpu, cuda, tensorrt")
    vgg_size: int = arg(224, "VGG16 input size (224: what torchvision's weights expect)")
    yolo_size: int = arg(448, "built-in YOLOv2 input size")
    train_workers: int = arg(0, "Ray workers for training, BPR models and multi-label nets (0: train in the driver process)")
    all: bool = arg(True, "train every registered model (else only --model); evaluate compares all trained")
    model: str = arg("PITF-IC-OD", "the model whose top-k tags `score` writes (and the one trained with --no-all)")
    train_epochs: int = arg(0, "training epochs of the recommenders (0: the train stage's default)")
    num_users: int = arg(60, "synthetic archive: users")
    num_posts: int = arg(400, "synthetic archive: posts")
    k: int = arg(10, "tags per post in the scored output")
    sg_workers: int = arg(0, "embed_users: skip-gram threads (0: all cores; 1: bit-reproducible user vectors)")
    topk_out: str = arg("", "score: where the top-k Parquet parts go, a folder or a URI (s3://bucket/prefix); "
                            "empty: <out>/topk")
    results: str = arg("", "evaluate: where evaluation.{json,md} and f1_at_k.png go, a folder or a URI; "
                           "empty: <out>")


def _stage_module(stage: str) -> Any | None:
    try:
        return importlib.import_module(f"jobs.{stage}")
    except ModuleNotFoundError as e:
        if e.name == f"jobs.{stage}":
            return None
        raise


def _config_class(mod: Any) -> type:
    hints = typing.get_type_hints(mod.run)
    return next(v for k, v in hints.items() if k != "return")


def stage_config(stage_cls: type, cfg: PipelineConfig, overrides: dict[str, Any]) -> Any:
    """The stage's defaults, with the pipeline's values for every field the two share."""
    names = {f.name for f in dataclasses.fields(stage_cls)}
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    shared.update({k: v for k, v in overrides.items() if k in names})
    return stage_cls(**shared)


def _overrides(stage: str, cfg: PipelineConfig, synthetic: bool) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if synthetic and not (cfg.vgg_weights or cfg.yolo_weights or cfg.yolo_onnx):
        o["random_weights"] = True
    if stage == "train":
        if cfg.train_epochs:
            o["epochs"] = cfg.train_epochs
        o["num_workers"] = cfg.train_workers
    return o


def run(cfg: PipelineConfig) -> dict[str, Any]:
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        from jobs.errors import JobError

        raise JobError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    synthetic = not cfg.posts
    if synthetic and "synth" in cfg.stages and "synth" not in cfg.skip:
        print(f"pipeline: no --posts given: running the demo on a synthetic archive in {cfg.out}/archive",
              file=sys.stderr)
    if synthetic and not (cfg.vgg_weights or cfg.yolo_weights or cfg.yolo_onnx):
        print("pipeline: WARNING: no CNN weights given and none can be downloaded: VGG16 and YOLO run with "
              "SEEDED RANDOM WEIGHTS (recorded in the store's metadata). Pass --vgg-weights and "
              "--yolo-weights/--yolo-onnx for real features.", file=sys.stderr)
    done, missing, summaries = [], [], {}
    ray_started = False
    for stage in cfg.stages:
        if stage in cfg.skip or (stage == "synth" and not synthetic):
            continue
        if stage == "synth" and cfg.posts_path().exists():
            log.info("synth: %s exists; not regenerating (delete it to start over)", cfg.posts_path())
            continue
        mod = _stage_module(stage)
        if mod is None:
            missing.append(stage)
            print(f"pipeline: stage '{stage}' is not there yet; skipping it", file=sys.stderr)
            continue
        if stage in RAY_STAGES and not ray_started:
            from jobs._ray import init_ray

            init_ray(cfg.ray_address, cfg.num_cpus)
            ray_started = True
        stage_cfg = stage_config(_config_class(mod), cfg, _overrides(stage, cfg, synthetic))
        print(f"pipeline: ── {stage} ──", file=sys.stderr)
        t0 = time.time()
        summaries[stage] = execute(stage, stage_cfg, mod.run)
        done.append((stage, round(time.time() - t0, 1)))
    out = Path(cfg.out).resolve()
    print("\npipeline: stages run: " + ", ".join(f"{s} ({t}s)" for s, t in done), file=sys.stderr)
    if missing:
        print(f"pipeline: stages not there yet: {', '.join(missing)}", file=sys.stderr)
    print(f"pipeline: outputs in {out}: store {cfg.store_path()}, models {out / 'models'}, "
          f"evaluation {out / 'evaluation.md'}, reports {out / 'reports'}", file=sys.stderr)
    return {"stages_run": [s for s, _ in done], "stage_seconds": dict(done), "stages_missing": missing,
            "random_weights": synthetic and not (cfg.vgg_weights or cfg.yolo_weights or cfg.yolo_onnx),
            "out": str(out)}


def main() -> None:
    main_for("pipeline", PipelineConfig, run, __doc__)


if __name__ == "__main__":
    main()
