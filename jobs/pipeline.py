"""The whole system end to end: `python -m jobs.pipeline` (the demo default).

    synth (when no --posts) → prepare → extract → embed_users → train → score
    → evaluate → social_influence

Each stage is the same `run(cfg)` that `python -m jobs.<stage>` runs. The pipeline's flags
are the stages' own (`PipelineConfig` is composed from their configs, help and allowed
values included): a flag only one stage has, or that every stage having it declares alike
(`--out`, `--seed`, `--p-core`, ...), keeps its name; a flag two stages declare differently
is prefixed with its stage (`--train-epochs`, `--embed-users-epochs`, `--extract-batch-size`).
`--model` names the model `train` trains (with `--no-all`) and `score` scores; without it,
`score` takes the trained model with the best validation F1@5 and says which. A tag-only
archive (none of its first image files exists, or `--skip extract`) skips extract; train
then trains what needs no image features and prints one line per model it skips. Each stage
skips what is already done in the store and the output folder, so a re-run resumes. With no
arguments: a small synthetic archive, a local Ray, CPU, seeded random CNN weights (no
weights can be downloaded), ending with the evaluation table and where the outputs are.
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
class PipelineArgs(ArchiveArgs, SplitArgs, RayArgs):
    """What only the pipeline has: which stages run, and the two choices it makes for them."""

    stages: list[str] = arg(list(STAGES), "stages to run, in this order (comma-separated)")
    skip: list[str] = arg([], "stages to leave out (comma-separated)")
    all: bool = arg(True, "train every registered model (else only --model); evaluate compares all trained")
    model: str = arg("", "the model whose top-k tags `score` writes (and the one trained with --no-all); empty: "
                         "the trained model with the best validation F1@5")


# A stage flag the pipeline shows under another name than the collision rule gives it.
RENAMES = {("train", "num_workers"): "train_workers"}


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


def _stage_configs() -> dict[str, type]:
    """{stage: its config class} for every stage module that is installed."""
    out = {}
    for stage in STAGES:
        mod = _stage_module(stage)
        if mod is not None:
            out[stage] = _config_class(mod)
    return out


def _declaration(cls: type, f: dataclasses.Field) -> tuple:
    """What a flag is: its type, default and help (two stages' flags of one name may differ)."""
    default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
    return typing.get_type_hints(cls)[f.name], repr(default), dict(f.metadata)


def flag_names(configs: dict[str, type]) -> dict[tuple[str, str], str]:
    """(stage, field) -> the pipeline's field name for it, for every field of every stage config."""
    own = {f.name for f in dataclasses.fields(PipelineArgs)}
    by_name: dict[str, list[tuple]] = {}
    for cls in configs.values():
        for f in dataclasses.fields(cls):
            by_name.setdefault(f.name, []).append(_declaration(cls, f))
    names = {}
    for stage, cls in configs.items():
        for f in dataclasses.fields(cls):
            alike = all(d == _declaration(cls, f) for d in by_name[f.name])
            name = f.name if f.name in own or alike else f"{stage}_{f.name}"
            names[(stage, f.name)] = RENAMES.get((stage, f.name), name)
    return names


def _compose(configs: dict[str, type]) -> type:
    """PipelineArgs plus one field per distinct stage flag, with the stage's own type, default and help."""
    own = {f.name for f in dataclasses.fields(PipelineArgs)}
    fields: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for (stage, name), flag in flag_names(configs).items():
        if flag in own or flag in fields:
            continue
        src = {f.name: f for f in dataclasses.fields(configs[stage])}[name]
        hints = typing.get_type_hints(configs[stage])
        kw: dict[str, Any] = {"metadata": src.metadata}
        if src.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = src.default_factory
        else:
            kw["default"] = src.default
        fields[flag] = (flag, hints[name], dataclasses.field(**kw))
    cls = dataclasses.make_dataclass("PipelineConfig", list(fields.values()), bases=(PipelineArgs,))
    cls.__module__ = __name__
    cls.__doc__ = "Pipeline flags: its own (PipelineArgs) and every stage's, each declared once by its stage."
    return cls


STAGE_CONFIGS = _stage_configs()
FLAG_NAMES = flag_names(STAGE_CONFIGS)
PipelineConfig: Any = _compose(STAGE_CONFIGS)


def stage_config(stage: str, cfg: Any, synthetic: bool) -> Any:
    """The stage's config: the pipeline's value of each of its flags."""
    cls = STAGE_CONFIGS[stage]
    values = {f.name: getattr(cfg, FLAG_NAMES[(stage, f.name)]) for f in dataclasses.fields(cls)}
    if "random_weights" in values and synthetic and not _has_weights(cfg):
        values["random_weights"] = True
    return cls(**values)


def _has_weights(cfg: Any) -> bool:
    return bool(cfg.vgg_weights or cfg.yolo_weights or cfg.yolo_onnx)


IMAGE_SAMPLE = 1000  # image paths checked for a tag-only archive


def _images_present(cfg: Any) -> bool:
    """Whether any of the archive's first IMAGE_SAMPLE image files exists (local paths or URIs)."""
    from featurestore import uri
    from jobs.contract import iter_posts

    for batch in iter_posts(cfg.posts_uri(), columns=("image",), batch_rows=IMAGE_SAMPLE):
        return any(uri.exists(p) for p in batch.column("image").to_pylist() if p)
    return False


def _report_train(summary: dict[str, Any]) -> None:
    """One line per model train skipped or that failed, and why."""
    for what in ("skipped", "failed"):
        for name, why in (summary.get(what) or {}).items():
            print(f"pipeline: train: {what} {name}: {why}", file=sys.stderr)


def _best_model(cfg: Any) -> str:
    """The saved model with the best validation F1@5 (model.json), said on stderr; JobError if none."""
    import json

    from jobs.errors import JobError

    scores = {}
    for meta in sorted((Path(cfg.out) / "models").glob("*/model.json")):
        doc = json.loads(meta.read_text())
        f1 = ((doc.get("metrics") or {}).get("val") or {}).get("f1@5")
        if f1 is not None:
            scores[meta.parent.name] = float(f1)
    if not scores:
        raise JobError(f"score: no trained model under {Path(cfg.out) / 'models'} to choose from; run the train "
                       "stage or pass --model")
    best = max(sorted(scores), key=lambda n: scores[n])
    print(f"pipeline: score: scoring with {best}, the trained model with the best validation F1@5 "
          f"({scores[best]:.4f}; pass --model to choose)", file=sys.stderr)
    return best


def run(cfg: Any) -> dict[str, Any]:
    from jobs.errors import JobError

    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise JobError(f"unknown stage(s) {unknown}; valid: {list(STAGES)}")
    if "train" in cfg.stages and "train" not in cfg.skip and not cfg.all and not cfg.model:
        raise JobError("--no-all trains only --model: name one (e.g. --model PITF)")
    synthetic = not cfg.posts
    if synthetic and "synth" in cfg.stages and "synth" not in cfg.skip:
        print(f"pipeline: no --posts given: running the demo on a synthetic archive in {cfg.out}/archive",
              file=sys.stderr)
    if synthetic and not _has_weights(cfg):
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
        if stage not in STAGE_CONFIGS:
            missing.append(stage)
            print(f"pipeline: stage '{stage}' is not installed; skipping it", file=sys.stderr)
            continue
        if stage == "extract" and not _images_present(cfg):
            print(f"pipeline: extract: skipped: none of the first {IMAGE_SAMPLE} image files of {cfg.posts_uri()} "
                  "exist (a tag-only archive); models that need image features will be skipped", file=sys.stderr)
            continue
        if stage in RAY_STAGES and not ray_started:
            from jobs._ray import init_ray

            init_ray(cfg.ray_address, cfg.num_cpus)
            ray_started = True
        stage_cfg = stage_config(stage, cfg, synthetic)
        if stage == "score" and not cfg.model:
            stage_cfg = dataclasses.replace(stage_cfg, model=_best_model(cfg))
        print(f"pipeline: ── {stage} ──", file=sys.stderr)
        t0 = time.time()
        summaries[stage] = execute(stage, stage_cfg, _stage_module(stage).run)  # type: ignore[union-attr]
        done.append((stage, round(time.time() - t0, 1)))
        if stage == "train":
            _report_train(summaries[stage])
    out = Path(cfg.out).resolve()
    print("\npipeline: stages run: " + ", ".join(f"{s} ({t}s)" for s, t in done), file=sys.stderr)
    if missing:
        print(f"pipeline: stages not installed: {', '.join(missing)}", file=sys.stderr)
    print(f"pipeline: outputs in {out}: store {cfg.store_path()}, models {out / 'models'}, "
          f"evaluation {out / 'evaluation.md'}, reports {out / 'reports'}", file=sys.stderr)
    return {"stages_run": [s for s, _ in done], "stage_seconds": dict(done), "stages_missing": missing,
            "random_weights": synthetic and not _has_weights(cfg), "out": str(out)}


def main() -> None:
    main_for("pipeline", PipelineConfig, run, __doc__)


if __name__ == "__main__":
    main()
