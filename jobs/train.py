"""Train the recommenders on the split: `python -m jobs.train`.

    python -m jobs.train --out runs/demo --model PITF-IC-OD --num-workers 2
    python -m jobs.train --out runs/demo --all --tune

Pipeline: read split (train/val) → vocabularies → features from the store (only for models
that need them; a missing view is an error before work) → [--tune: grid of lr × reg, best
validation F1@5] → epochs (loss, validation F1@5 logged each) with a checkpoint after each
→ `<out>/models/<MODEL>/{weights.safetensors, model.json}`.

Every model trains the same way: its registry entry (`models.recsys.model_entry`) names its
trainer (`models.recsys.trainer.Trainer`: BPR for the factorization models, SGD with momentum
for the multi-label nets), which settings class the flags fill, and which size flag
(`--dim`, `--hidden`) builds it. The trainer runs in this process (`--num-workers 0`) or on
N Ray actors (`jobs._train_ray`): posts are partitioned by user, so each user's factors live
on one worker, and each step sums what the workers share in one torch.distributed
all-reduce (gloo on CPU, NCCL on CUDA), so N workers follow one worker's schedule. A dead
worker makes the driver restart all workers from the last epoch's state (`--max-restarts`);
a killed job re-run with the same arguments resumes from `<out>/checkpoints/<MODEL>/`
(weights and, for the multi-label nets, the momentum buffers), equal to an uninterrupted run.

The multi-label nets' epochs are `--ml-epochs` (default `--epochs`), raised on small archives
to at least `--ml-min-steps` SGD steps; they keep the paper's settings under `--tune`.

A factorization model may train as `--replicas` N runs from seeds --seed .. --seed+N-1, each
with its own early stopping and checkpoints (`checkpoints/<MODEL>/replica-<r>` for r > 0),
saved as their mean: one model of dimension N × --dim (`models.recsys.factorization.average`).
By default 3 where the per-sample kernel trains (PITF and FM on CPU) and the mean stays
under `AUTO_REPLICAS_BYTES`, once elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for
from jobs._progress import Progress
from jobs._train_data import SplitData, attach_features, load_split
from jobs._tune import search
from jobs.errors import JobError
from jobs.features import MissingViewError
from models.errors import ModelError, NumericalError
from models.recsys import ModelEntry, get_model, list_models, model_entry
from models.recsys import io as recsys_io
from models.recsys.bpr import KERNELS, LR_GRID, REG_GRID, BPRConfig, sgd_for
from models.recsys.bpr_step import MAX_ROW_SAMPLES
from models.recsys.checkpoints import Checkpoints
from models.recsys.early_stopping import EarlyStopping
from models.recsys.evaluate import calibrate, evaluate
from models.recsys.factorization import average, parse_name
from models.recsys.multilabel import TAG_REDUCTIONS, MultiLabelConfig
from models.recsys.trainer import train_epochs

log = logging.getLogger("jobs")


@dataclass
class TrainConfig(ArchiveArgs, RayArgs):
    """Flags of `python -m jobs.train`."""

    model: str = arg("PITF-IC-OD", "model to train (see --all); one of models.recsys.list_models()")
    all: bool = arg(False, "train every model; those needing a view the store lacks are skipped, those "
                           "that diverge are recorded as failed (summary 'failed'), both reported; exits 0 "
                           "when at least one model trained")
    split: str = arg("", "folder of {train,val}.parquet; empty: <out>/split")
    epochs: int = arg(500, "the most training epochs (BPR: passes over the (post, tag) pairs); with --patience "
                           "training stops sooner, once validation F1@5 stops improving")
    patience: int = arg(10, "early stopping: stop after this many epochs without a better validation F1@5 "
                            "(or --patience-frac times the best epoch, when more) and keep the best epoch's "
                            "weights (0: off, train exactly --epochs)")
    patience_frac: float = arg(1.0, "early stopping: wait at least this fraction of the best epoch without "
                                    "improvement (late improvements are slow; 0: a fixed --patience)")
    dim: int = arg(128, "factor dimension k of the factorization models")
    lr: float = arg(0.05, "BPR learning rate α (ignored with --tune)")
    reg: float = arg(1e-4, "BPR L2 strength λ (ignored with --tune)")
    batch_size: int = arg(1024, "BPR samples per step over all workers")
    max_row_samples: int = arg(MAX_ROW_SAMPLES, "BPR step rule: a parameter row touched by more samples "
                                                "in one step moves their mean gradient times this (keeps "
                                                "the step of projections and tag rows bounded whatever "
                                                "the batch size)")
    bpr_kernel: str = arg("auto", "BPR kernel: auto (per-sample numba SGD for PITF and FM on CPU with "
                                  "--num-workers <= 1, the batched torch step for the others), sgd, torch",
                          choices=list(KERNELS))
    sgd_threads: int = arg(1, "per-sample SGD kernel: Hogwild threads (1: deterministic, bit-reproducible)")
    sgd_negatives: int = arg(4, "both BPR kernels: each negative tag is the one the model scores highest "
                                "among this many uniform draws (hard negatives keep BPR's gradient alive, so "
                                "training converges in fewer epochs; 1: uniform, the paper's Algorithm 1)")
    replicas: int = arg(0, "train each factorization model this many times from seeds --seed, --seed+1, ... "
                           "(each with early stopping) and save their mean as one model of dimension "
                           "replicas × --dim: averaging damps the seed-to-seed noise of SGD (+0.01 F1@5 at 3 "
                           "on the folksonomy benchmark) for replicas × the training time. 0: 3 where the "
                           "per-sample SGD kernel trains (PITF and FM on CPU in one process, where training "
                           "is cheapest) and the mean's factor tables stay under 1 GiB, 1 elsewhere; the "
                           "multi-label nets always train once")
    tune: bool = arg(False, "choose lr and reg from --lr-grid × --reg-grid by validation F1@5, each point "
                            "trained with early stopping; a best point on the grid's edge widens the grid "
                            "(logged, and in model.json)")
    tune_epochs: int = arg(0, "the most epochs per grid point with --tune (0: --epochs)")
    lr_grid: list[float] = arg(list(LR_GRID), "learning rates tried by --tune")
    reg_grid: list[float] = arg(list(REG_GRID), "L2 strengths tried by --tune")
    num_workers: int = arg(0, "Ray workers (0: train in this process, no Ray); BPR and the multi-label nets")
    device: str = arg("cpu", "cpu, cuda or auto (cuda when present)", choices=["cpu", "cuda", "auto"])
    resume: bool = arg(True, "resume from <out>/checkpoints/<MODEL> when it was written with the same settings")
    max_restarts: int = arg(2, "times a run restarts its workers from the last epoch after a worker dies")
    hidden: int = arg(512, "hidden units per branch of the multi-label networks")
    ml_lr: float = arg(0.01, "multi-label networks: SGD learning rate (paper: 0.01, momentum 0.9)")
    ml_batch_size: int = arg(450, "multi-label networks: batch size over all workers (paper: 450)")
    ml_momentum: float = arg(0.9, "multi-label networks: SGD momentum (paper: 0.9)")
    ml_epochs: int = arg(0, "multi-label networks: the most epochs (0: --epochs); --patience applies")
    ml_min_steps: int = arg(60, "multi-label networks: at least this many SGD steps in all; with few batches "
                                "per epoch (small archives) the epochs are raised to reach it (0: off)")
    ml_tag_reduction: str = arg("sum", "multi-label networks: BCE summed over tags per post ('sum', the "
                                       "paper's lr works at any tag count) or averaged ('mean', torch's "
                                       "default: the gradient shrinks by 1/tags)", choices=list(TAG_REDUCTIONS))
    calibrate: bool = arg(True, "fit each model's score -> probability map on the validation split and save "
                                "it in model.json (jobs.score --min-precision and jobs.evaluate read it)")
    torch_threads: int = arg(0, "torch CPU threads in this process (0: torch's default; 1 is fastest for small dims)")
    fail_at: str = arg("", "fault injection for tests: 'EPOCH:RANK' makes that Ray worker exit once in that epoch")


# --------------------------------------------------------------------------- settings


def bpr_config(cfg: TrainConfig) -> BPRConfig:
    """The BPR settings of the flags (`--tune` replaces lr and reg)."""
    kernel = cfg.bpr_kernel if cfg.num_workers <= 1 or cfg.bpr_kernel != "auto" else "torch"
    return BPRConfig(cfg.lr, cfg.reg, cfg.batch_size, cfg.epochs, cfg.seed, cfg.max_row_samples, kernel,
                     cfg.sgd_threads, cfg.sgd_negatives)


AUTO_REPLICAS = 3  # --replicas 0 on the per-sample kernel: benchmarks/results/train.md (replicas)
# --replicas 0 averages only while the mean's factor tables (rows × AUTO_REPLICAS × dim float32)
# stay under this: averaging pays most on small archives, where validation and seeds are
# noisy, and the mean is AUTO_REPLICAS × wider to hold and to score.
AUTO_REPLICAS_BYTES = 1 << 30


def replicas(name: str, cfg: TrainConfig, bpr: BPRConfig, device: str, rows: int = 0) -> int:
    """How many replicas of `name` train: --replicas; 0: `AUTO_REPLICAS` where the per-sample SGD
    kernel trains it and the mean of its `rows` factor rows (users + items + tag tables) fits
    `AUTO_REPLICAS_BYTES`, else 1. The multi-label nets train once."""
    if model_entry(name).config is not BPRConfig:
        return 1
    if cfg.replicas:
        return cfg.replicas
    if not sgd_for(parse_name(name), device, bpr, max(1, cfg.num_workers)):
        return 1
    if rows * AUTO_REPLICAS * cfg.dim * 4 > AUTO_REPLICAS_BYTES:
        log.info("train %s: one run, not the mean of %d replicas: %d factor rows × %d × dim %d would hold "
                 "%.1f GiB (--replicas N to ask for it)", name, AUTO_REPLICAS, rows, AUTO_REPLICAS, cfg.dim,
                 rows * AUTO_REPLICAS * cfg.dim * 4 / 2**30)
        return 1
    return AUTO_REPLICAS


def ml_config(cfg: TrainConfig, n_posts: int, epochs: int) -> MultiLabelConfig:
    """The multi-label SGD settings (the paper's by default), `epochs` raised so that an archive
    with few batches per epoch still gets `--ml-min-steps` steps."""
    steps_per_epoch = max(1, math.ceil(n_posts / cfg.ml_batch_size))
    return MultiLabelConfig(lr=cfg.ml_lr, momentum=cfg.ml_momentum, batch_size=cfg.ml_batch_size,
                            epochs=max(epochs, math.ceil(cfg.ml_min_steps / steps_per_epoch)), seed=cfg.seed,
                            tag_reduction=cfg.ml_tag_reduction)


# The job's flags -> each trainer's settings and what model.json's "training" adds about them,
# keyed by the settings class the model's registry entry names.
SETTINGS = {
    BPRConfig: lambda cfg, data, bpr: (bpr, {}),
    MultiLabelConfig: lambda cfg, data, bpr: (ml_config(cfg, len(data.train), cfg.ml_epochs or bpr.epochs),
                                              {"min_steps": cfg.ml_min_steps}),
}


def train_opts(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig) -> Any:
    """The settings of `name`'s trainer: `bpr` for BPR; `ml_config` (epochs: --ml-epochs or
    bpr's) for the multi-label nets."""
    return SETTINGS[model_entry(name).config](cfg, data, bpr)[0]


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- training


def _device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise JobError("--device cuda: no CUDA device here; use --device cpu or auto")
    return cfg.device


def build(name: str, data: SplitData, cfg: TrainConfig, sn_dim: int, device: str) -> Any:
    """A fresh model sized to the split's vocabularies and to its size flags (`--dim`, `--hidden`)."""
    size = {k: getattr(cfg, k) for k in model_entry(name).size}
    return get_model(name, n_users=len(data.user_ids), n_items=len(data.item_ids), n_tags=len(data.tags),
                     sn_dim=sn_dim, seed=cfg.seed, device=device, **size)


def _engine(entry: ModelEntry, model: Any, data: SplitData, opts: Any, cfg: TrainConfig, marker: Path,
            device: str, optimizer: dict[str, Any]) -> Any:
    """What runs the epochs: the model's trainer in this process, or N Ray workers' trainers."""
    if cfg.num_workers > 0:
        from jobs._train_ray import RayEngine

        return RayEngine(model, data.train, entry.trainer, opts, cfg.num_workers, cfg.ray_address, cfg.num_cpus,
                         cfg.max_restarts, cfg.fail_at, marker, device, optimizer)
    trainer = entry.trainer.for_partition(model, data.train, opts)
    if optimizer:
        trainer.load_optimizer_state(optimizer)
    return trainer


def _stopper(cfg: TrainConfig, epochs: int, history: list[dict]) -> EarlyStopping | None:
    """Early stopping over at most `epochs`, replayed from a resumed run's history; None with --patience 0."""
    if cfg.patience <= 0:
        return None
    es = EarlyStopping(patience=cfg.patience, max_epochs=epochs, patience_frac=cfg.patience_frac)
    for h in history:
        es.update(h["epoch"], h["val_f1@5"])
    return es


def fit(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig, sn_dim: int, device: str,
        ckpt: Checkpoints | None, nodes: list[str] | None = None) -> tuple[Any, list[dict], EarlyStopping | None]:
    """Train one model (BPR: bpr.epochs epochs at most; multi-label: `train_opts`), resuming from
    ckpt (weights, optimizer state, the best epoch's weights); with --patience it stops once
    validation F1@5 stops improving and ends with the best epoch's weights.
    (model, per-epoch history, the early stopping state or None). `nodes` gets the Ray node of
    each worker (with --num-workers)."""
    entry = model_entry(name)
    # With Ray workers the driver only mirrors the model (checkpoints, validation): CPU is enough.
    model = build(name, data, cfg, sn_dim, "cpu" if cfg.num_workers > 0 else device)
    entry.trainer.prepare(model, data.train)  # from all training posts, before workers copy the state
    opts = train_opts(name, data, cfg, bpr)
    start, history, optimizer = ckpt.restore(model) if (ckpt and cfg.resume) else (0, [], {})
    es = _stopper(cfg, opts.epochs, history)
    best = (ckpt.restore_best() if ckpt and start else None) or None
    marker = (ckpt.dir if ckpt else Path(cfg.out)) / "fault-fired"
    engine = _engine(entry, model, data, opts, cfg, marker, device, optimizer)
    unit = entry.trainer.unit
    progress = Progress(f"train {name}", total=(opts.epochs - start) * entry.trainer.work_units(data.train), unit=unit)

    def end_epoch(epoch: int, loss: float, n: int, seconds: float) -> None:
        nonlocal best
        progress.update(n)  # ETA line at most every 5 s; the epoch line below always
        f1 = evaluate(model, data.val, ks=(5,))["f1@5"]
        rate = n / seconds
        history.append({"epoch": epoch + 1, "loss": round(loss, 6), "val_f1@5": round(f1, 6),
                        "samples_per_s": round(rate, 1)})
        log.info("train %s: epoch %d/%d loss %.4f val F1@5 %.4f (%s %s/s)", model.name, epoch + 1,
                 opts.epochs, loss, f1, f"{rate:,.0f}", unit)
        if es is not None and es.update(epoch + 1, round(f1, 6)):
            best = {k: v.clone() for k, v in model.state_dict().items()}
            if ckpt is not None:
                ckpt.save_best(model)
        if ckpt is not None:
            ckpt.save(model, epoch + 1, history, engine.optimizer_state())

    try:
        if es is None or not es.should_stop():
            train_epochs(engine, model, opts.epochs, start, entry.trainer.describe(model, opts),
                         entry.trainer.advice, end_epoch, stop=es.should_stop if es else None)
    finally:
        if nodes is not None:
            nodes[:] = getattr(engine, "nodes", [])
        engine.close()
    if es is not None and best is not None:
        log.info("train %s: %s", name, es.reason)
        if es.capped:
            log.warning("train %s: stopped at the epoch cap (%d) %d epochs after its best epoch, before early "
                        "stopping's wait of %d ran out: validation F1@5 may still rise; a larger cap (--epochs, "
                        "--tune-epochs or --ml-epochs) lets early stopping decide", name, es.max_epochs,
                        es.last_epoch - es.best_epoch, es.wait)
        model.load_state_dict(best)
    return model, history, es


def tune(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig, sn_dim: int,
         device: str) -> tuple[BPRConfig, dict[str, Any], Any, list[dict], EarlyStopping | None]:
    """The best (lr, reg) by validation F1@5, each grid point trained with early stopping (at most
    --tune-epochs), the grid widened where its best point sits on an edge (`jobs._tune.search`).
    Returns the settings, the search's record, and the best point's model, history and stopper."""
    kept: dict[str, Any] = {}

    def score(lr: float, reg: float) -> float:
        try:
            model, hist, es = fit(name, data, cfg, dataclasses.replace(bpr, lr=lr, reg=reg,
                                                                       epochs=cfg.tune_epochs or bpr.epochs),
                                  sn_dim, device, ckpt=None)
        except ModelError as e:  # a diverging grid point is a result, not a failure
            log.info("train %s: lr=%g reg=%g diverged (%s)", name, lr, reg, str(e).split(";")[0])
            return float("nan")
        f1 = es.best if es is not None else (hist[-1]["val_f1@5"] if hist else 0.0)
        log.info("train %s: tune lr=%g reg=%g -> val F1@5 %.4f (%d epochs)", name, lr, reg, f1, len(hist))
        if f1 > kept.get("f1", -1.0):
            kept.update(f1=f1, model=model, history=hist, es=es)
        return f1

    res = search(score, cfg.lr_grid, cfg.reg_grid)
    record = {"points": res.points, "widened": res.widened, "still_on_edge": res.edge,
              "best": {"lr": res.lr, "reg": res.reg, "val_f1@5": res.f1}}
    return dataclasses.replace(bpr, lr=res.lr, reg=res.reg), record, kept["model"], kept["history"], kept["es"]


def _fit_replica(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig, sn_dim: int, device: str,
                 r: int, nodes: list[str]) -> tuple[Any, list[dict], EarlyStopping | None]:
    """Replica r of `name` (seed --seed + r), checkpointed in checkpoints/<name> (r = 0, the
    single run's place) or checkpoints/<name>/replica-<r>, so a killed job resumes each one."""
    seed = cfg.seed + r
    cfg, bpr = dataclasses.replace(cfg, seed=seed), dataclasses.replace(bpr, seed=seed)
    entry = model_entry(name)
    opts = train_opts(name, data, cfg, bpr)
    # What a resumed run must share with the checkpoint (not the number of epochs).
    same = {**{k: v for k, v in dataclasses.asdict(opts).items() if k != "epochs"},
            **{k: getattr(cfg, k) for k in entry.size}, "patience": [cfg.patience, cfg.patience_frac]}
    fp = _fingerprint(name, same, cfg.seed, sn_dim, len(data.train), len(data.tags), data.tags[:50].tolist())
    where = Path(cfg.out) / "checkpoints" / name
    ckpt = Checkpoints(where / f"replica-{r}" if r else where, fp, data.tags.tolist())
    return fit(name, data, cfg, bpr, sn_dim, device, ckpt, nodes)


def _replica_record(seed: int, history: list[dict], es: EarlyStopping | None) -> dict[str, Any]:
    return {"seed": seed, "epochs_run": len(history), "best_epoch": es.best_epoch if es else len(history),
            "val_f1@5": es.best if es else (history[-1]["val_f1@5"] if history else None)}


def train_one(name: str, data: SplitData, cfg: TrainConfig, cache: dict) -> dict[str, Any]:
    """Features, optional tuning, training with checkpoints and early stopping, calibration, the
    saved model; its summary."""
    entry = model_entry(name)
    views = attach_features(data, cfg.store_path(), entry.features, cache) if entry.features else {}
    sn_dim = int(views["sn"]["dim"]) if "sn" in views else 0
    device = _device(cfg)
    bpr, grid = bpr_config(cfg), dict[str, Any]()
    t0 = time.perf_counter()
    nodes: list[str] = []
    if cfg.tune and entry.tunable:
        bpr, grid, model, history, es = tune(name, data, cfg, bpr, sn_dim, device)
    opts, extra = SETTINGS[entry.config](cfg, data, bpr)
    runs = [(model, history, es)] if grid else []  # (model, history, stopper) per replica
    n_replicas = replicas(name, cfg, bpr, device, len(data.user_ids) + len(data.item_ids) + 2 * len(data.tags))
    for r in range(len(runs), n_replicas):
        runs.append(_fit_replica(name, data, cfg, bpr, sn_dim, device, r, nodes))
    model, history, es = runs[0]
    if n_replicas > 1:
        model = average([m for m, _, _ in runs])
    val = evaluate(model, data.val, ks=tuple(range(1, 11)))
    if n_replicas > 1:
        log.info("train %s: the mean of %d replicas (seeds %d..%d): validation F1@5 %.4f (each: %s)", name,
                 n_replicas, cfg.seed, cfg.seed + n_replicas - 1, val["f1@5"],
                 ", ".join(f"{s.best:.4f}" if s else "-" for _, _, s in runs))
    metrics = {"val": val, "history": history, "train_loss": history[-1]["loss"] if history else None}
    stopping = ({"patience": cfg.patience, "patience_frac": cfg.patience_frac, "epochs_run": len(history),
                 "best_epoch": es.best_epoch, "capped": es.capped,
                 "reason": es.reason} if es is not None else {"patience": 0, "epochs_run": len(history)})
    training = {**dataclasses.asdict(opts), "num_workers": cfg.num_workers, "device": device, "tuning": grid,
                "early_stopping": stopping, "trainer": entry.trainer.describe(model, opts), **extra,
                "replicas": [_replica_record(cfg.seed + r, h, s) for r, (_, h, s) in enumerate(runs)]}
    meta = {"tags": data.tags.tolist(), "user_ids": data.user_ids, "item_ids": data.item_ids, "views": views,
            "metrics": metrics, "training": training, "split": {"dir": str(_split_dir(cfg)), **data.dropped}}
    if cfg.calibrate and len(data.val):
        meta["calibration"] = calibrate(model, data.val).to_json()
    out_dir = Path(cfg.out) / "models" / name
    recsys_io.save(model, out_dir, meta)
    summary = {"dir": str(out_dir), "val_f1@5": round(val["f1@5"], 6), "epochs": len(history),
               "best_epoch": es.best_epoch if es is not None else len(history), "lr": opts.lr,
               "reg": getattr(opts, "reg", 0.0), "replicas": n_replicas, "seconds": round(time.perf_counter() - t0, 2)}
    if nodes:   # Ray workers: which node trained which rank; the driver saved the model
        from jobs._ray import placement

        pl = placement(workers={n: nodes.count(n) for n in set(nodes)})
        summary["placement"] = {**pl, "node_of_rank": nodes}
    return summary


def _check_ml_flags(cfg: TrainConfig) -> None:
    """JobError naming the first bad multi-label flag."""
    checks = ((cfg.ml_lr > 0, f"--ml-lr must be > 0, got {cfg.ml_lr}"),
              (0 <= cfg.ml_momentum < 1, f"--ml-momentum must be in [0, 1), got {cfg.ml_momentum}"),
              (cfg.ml_batch_size >= 1, f"--ml-batch-size must be >= 1, got {cfg.ml_batch_size}"),
              (cfg.ml_epochs >= 0, f"--ml-epochs must be >= 0 (0: --epochs), got {cfg.ml_epochs}"),
              (cfg.ml_min_steps >= 0, f"--ml-min-steps must be >= 0 (0: off), got {cfg.ml_min_steps}"),
              (cfg.hidden >= 1, f"--hidden must be >= 1, got {cfg.hidden}"))
    for ok, msg in checks:
        if not ok:
            raise JobError(msg)


def _split_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.split) if cfg.split else Path(cfg.out) / "split"


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train --model (or --all); returns per-model summaries and the models skipped with why."""
    names = list_models() if cfg.all else [cfg.model]
    if not cfg.all and cfg.model not in list_models():
        raise ModelError(f"unknown model {cfg.model!r}; valid: {', '.join(list_models())}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.dim < 1:
        raise JobError(f"--epochs ({cfg.epochs}), --batch-size ({cfg.batch_size}) and --dim ({cfg.dim}) must be >= 1")
    if cfg.num_workers < 0 or cfg.replicas < 0:
        raise JobError(f"--num-workers ({cfg.num_workers}) and --replicas ({cfg.replicas}) must be >= 0")
    if cfg.max_row_samples < 1:
        raise JobError(f"--max-row-samples must be >= 1, got {cfg.max_row_samples}")
    if cfg.patience < 0 or cfg.patience_frac < 0 or cfg.sgd_threads < 1 or cfg.tune_epochs < 0 \
            or cfg.sgd_negatives < 1:
        raise JobError(f"--patience ({cfg.patience}), --patience-frac ({cfg.patience_frac}) and --tune-epochs "
                       f"({cfg.tune_epochs}) must be >= 0, --sgd-threads ({cfg.sgd_threads}) and "
                       f"--sgd-negatives ({cfg.sgd_negatives}) >= 1")
    _check_ml_flags(cfg)
    if cfg.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    data = load_split(_split_dir(cfg))
    if cfg.patience > 0 and len(data.val) == 0:
        raise JobError(f"early stopping (--patience {cfg.patience}) needs validation posts and "
                       f"{_split_dir(cfg)}/val.parquet has none; run jobs.prepare with --val-per-user 1, "
                       "or train a fixed number of epochs with --patience 0 --epochs N")
    log.info("train: %d train posts, %d val posts, %d users, %d tags", len(data.train), len(data.val),
             len(data.user_ids), len(data.tags))
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    cache: dict[str, Any] = {}
    for name in names:
        try:
            models[name] = train_one(name, data, cfg, cache)
        except MissingViewError as e:
            if not cfg.all:
                raise
            skipped[name] = str(e)
            log.warning("train: skipping %s: %s", name, e)
        except NumericalError as e:  # --all: one diverging model must not cost the others
            if not cfg.all:
                raise
            failed[name] = str(e)
            stale = Path(cfg.out) / "models" / name
            log.error("train: FAILED %s: %s; no model saved for it%s; continuing with the others", name, e,
                      f" ({stale} holds an earlier run's model, left as it was)" if stale.exists() else "")
    if failed:
        log.error("train: %d model(s) FAILED (diverged): %s", len(failed), ", ".join(failed))
        if not models:
            raise NumericalError(f"every model failed ({len(failed)}); first: {next(iter(failed.values()))}")
    return {"models": models, "skipped": skipped, "failed": failed, "dropped": data.dropped}


def main() -> None:
    main_for("train", TrainConfig, run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
