"""Train the recommenders on the split: BPR on Ray workers, checkpoints, saved models (issue 6).

    python -m jobs.train --out runs/demo --model PITF-IC-OD --num-workers 2
    python -m jobs.train --out runs/demo --all --tune

Pipeline: read split (train/val) → vocabularies → features from the store (only for models
that need them; a missing view is an error before work) → [--tune: grid of lr × reg, best
validation F1@5] → epochs (loss, validation F1@5 logged each) with a checkpoint after each
→ `<out>/models/<MODEL>/{weights.safetensors, model.json}`.

Distribution (`--num-workers N`, N ≥ 1): posts are partitioned by user over N Ray actors,
so each user's factors live on one worker; each step sums the gradients of the tag tables,
bias, projections and of items posted on several partitions with one torch.distributed
all-reduce (gloo on CPU, NCCL on CUDA). Every worker takes the same number of steps with
batch B·(its share), so N workers follow one worker's schedule. A dead worker makes the
driver restart all workers from the last epoch's state (`--max-restarts`); a killed job
re-run with the same arguments resumes from `<out>/checkpoints/<MODEL>/`.

The multi-label networks (`social-multilabel`, `visual-multilabel`) run on the same workers
and process group, data-parallel: posts sharded by user, each step's gradients and post
counts summed in one all-reduce and averaged, SGD with momentum; their momentum buffers are
checkpointed with the weights (`optimizer.safetensors`), so a resumed run equals an
uninterrupted one. Their epochs are `--ml-epochs` (default `--epochs`), raised on small
archives to at least `--ml-min-steps` SGD steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jobs._cli import ArchiveArgs, RayArgs, arg, main_for, write_json
from jobs._progress import Progress
from jobs._spill import spill_dir
from jobs.errors import JobError
from jobs.features import MissingViewError
from jobs.posts import post_data, tag_vocabulary
from models.errors import ModelError, NumericalError
from models.recsys import get_model, list_models, required_features
from models.recsys import io as recsys_io
from models.recsys.bpr import (
    LR_GRID,
    MAX_ROW_SAMPLES,
    REG_GRID,
    BPRConfig,
    BPRTrainer,
    check_finite,
)
from models.recsys.data import IdIndex, PostData
from models.recsys.evaluate import evaluate
from models.recsys.multilabel import TAG_REDUCTIONS, MultiLabelConfig, MultiLabelTrainer

log = logging.getLogger("jobs")


@dataclass
class TrainConfig(ArchiveArgs, RayArgs):
    """Flags of `python -m jobs.train`."""

    model: str = arg("PITF-IC-OD", "model to train (see --all); one of models.recsys.list_models()")
    all: bool = arg(False, "train every model; those needing a view the store lacks are skipped, those "
                           "that diverge are recorded as failed (summary 'failed'), both reported; exits 0 "
                           "when at least one model trained")
    split: str = arg("", "folder of {train,val}.parquet; empty: <out>/split")
    epochs: int = arg(30, "training epochs (BPR: passes over the (post, tag) pairs)")
    dim: int = arg(128, "factor dimension k of the factorization models")
    lr: float = arg(0.05, "BPR learning rate α (ignored with --tune)")
    reg: float = arg(1e-4, "BPR L2 strength λ (ignored with --tune)")
    batch_size: int = arg(1024, "BPR samples per step over all workers")
    max_row_samples: int = arg(MAX_ROW_SAMPLES, "BPR step rule: a parameter row touched by more samples "
                                                "in one step moves their mean gradient times this (keeps "
                                                "the step of projections and tag rows bounded whatever "
                                                "the batch size)")
    tune: bool = arg(False, "choose lr and reg from --lr-grid × --reg-grid by validation F1@5")
    tune_epochs: int = arg(10, "epochs per grid point with --tune")
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
    ml_epochs: int = arg(0, "multi-label networks: epochs (0: --epochs)")
    ml_min_steps: int = arg(60, "multi-label networks: at least this many SGD steps in all; with few batches "
                                "per epoch (small archives) the epochs are raised to reach it (0: off)")
    ml_tag_reduction: str = arg("sum", "multi-label networks: BCE summed over tags per post ('sum', the "
                                       "paper's lr works at any tag count) or averaged ('mean', torch's "
                                       "default: the gradient shrinks by 1/tags)", choices=list(TAG_REDUCTIONS))
    torch_threads: int = arg(0, "torch CPU threads in this process (0: torch's default; 1 is fastest for small dims)")
    fail_at: str = arg("", "fault injection for tests: 'EPOCH:RANK' makes that Ray worker exit once in that epoch")


# --------------------------------------------------------------------------- data


@dataclass
class SplitData:
    """Training vocabularies and the train/val posts as index arrays."""

    user_ids: np.ndarray  # (U,) int64, sorted: row r of the user table
    item_ids: np.ndarray  # (I,) int64, sorted
    tags: np.ndarray  # (T,) str, sorted: row t of the tag matrix
    train: PostData
    val: PostData
    train_keys: tuple[np.ndarray, np.ndarray]  # (user_id, item_id) per train post, for features
    val_keys: tuple[np.ndarray, np.ndarray]
    dropped: dict[str, int]


def _read(split_dir: Path, name: str) -> pa.Table:
    path = split_dir / f"{name}.parquet"
    if not path.is_file():
        raise JobError(f"{path} does not exist; run `python -m jobs.prepare` first (or pass --split)")
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    missing = [c for c in ("user_id", "item_id", "tags") if c not in t.column_names]
    if missing:
        raise JobError(f"{path} lacks column(s) {missing}; expected post_id, user_id, item_id, tags")
    return t


def load_split(split_dir: Path) -> SplitData:
    """Vocabularies from train; val posts mapped onto them (unseen users/items -> -1)."""
    train, val = _read(split_dir, "train"), _read(split_dir, "val")
    if train.num_rows == 0:
        raise JobError(f"{split_dir}/train.parquet has no posts; check jobs.prepare's p-core settings")
    tags = tag_vocabulary(train["tags"])
    user_ids = np.unique(train["user_id"].to_numpy().astype(np.int64))
    item_ids = np.unique(train["item_id"].to_numpy().astype(np.int64))
    users, items = IdIndex(user_ids), IdIndex(item_ids)
    tr, _ = post_data(train, users, items, tags)
    va, dropped = post_data(val, users, items, tags)
    if dropped:
        log.info("train: dropped %d validation tags never seen in training", dropped)
    keys = lambda t: (t["user_id"].to_numpy().astype(np.int64), t["item_id"].to_numpy().astype(np.int64))  # noqa: E731
    return SplitData(user_ids, item_ids, tags, tr, va, keys(train), keys(val),
                     {"val_tags_unseen_in_train": dropped,
                      "val_posts_unseen_user": int((va.user_index < 0).sum())})


SPILL_PREFIX = ".train-features-"  # + "<pid>-<random>": a killed job's files are removed by the next


def _spill_dir(parent: Path) -> Any:
    """A TemporaryDirectory for this run's feature files beside the store (jobs/_spill.py)."""
    return spill_dir(parent, SPILL_PREFIX, "train")


def attach_features(data: SplitData, store: Path, features: tuple[str, ...], cache: dict) -> dict[str, dict]:
    """Gather the features a model needs into data.train/val (cached across models).

    Training features are spilled to memory-mapped files in a temporary directory beside the
    store (deleted when `cache` is dropped): they grow with the archive, 1.2 KB per post for
    IC + OD in float16, and in the page cache they do not count against the job's heap
    (issue 9). Validation features (one holdout post per user at most) stay in memory.
    """
    from jobs.features import FeatureReader, check_views

    info = check_views(store, features)  # errors before any work
    if features and "_spill" not in cache:
        cache["_spill"] = _spill_dir(Path(store).parent)
    for f in features:
        if f not in cache:
            reader = FeatureReader(store, [f])
            tr, tr_missing = reader.read(*data.train_keys, compact=True, spill_dir=cache["_spill"].name)
            va, va_missing = reader.read(*data.val_keys, compact=True)
            cache[f] = (tr, va, {"train_missing": tr_missing.get(f, 0), "val_missing": va_missing.get(f, 0)})
        tr, va, counts = cache[f]
        data.train.features[f], data.train.has[f] = tr[f], tr[f"has_{f}"]
        data.val.features[f], data.val.has[f] = va[f], va[f"has_{f}"]
        info[f].update(counts)
    return info


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """`<dir>/epoch-NNNN/` (a saved model, plus `optimizer.safetensors` when the optimizer has
    state) + `latest.json`, both written atomically."""

    OPTIMIZER = "optimizer.safetensors"

    def __init__(self, directory: Path, fingerprint: str, tags: list[str]) -> None:
        self.dir, self.fingerprint, self.tags = directory, fingerprint, tags

    def save(self, model: Any, epoch: int, history: list[dict], optimizer: dict[str, Any] | None = None) -> None:
        """optimizer: tensors of the optimizer's state (momentum buffers), saved beside the weights."""
        from safetensors.torch import save_file

        name = f"epoch-{epoch:04d}"
        tmp = self.dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        recsys_io.save(model, tmp, {"tags": self.tags})
        if optimizer:
            save_file({k: v.contiguous() for k, v in optimizer.items()}, str(tmp / self.OPTIMIZER))
        shutil.rmtree(self.dir / name, ignore_errors=True)
        os.replace(tmp, self.dir / name)
        write_json(self.dir / "latest.json", {"epoch": epoch, "dir": name, "fingerprint": self.fingerprint,
                                              "history": history})
        for old in self.dir.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model: Any) -> tuple[int, list[dict], dict[str, Any]]:
        """(epochs done, history, optimizer state) after loading the latest weights into model;
        (0, [], {}) if none fits."""
        from safetensors.torch import load_file

        path = self.dir / "latest.json"
        if not path.is_file():
            return 0, [], {}
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") != self.fingerprint:
            log.info("train: checkpoint in %s was written with other settings; starting over", self.dir)
            return 0, [], {}
        saved = recsys_io.load(self.dir / doc["dir"])
        model.load_state_dict(saved.state_dict())
        opt = self.dir / doc["dir"] / self.OPTIMIZER
        log.info("train: resuming %s from epoch %d", model.name, doc["epoch"])
        return int(doc["epoch"]), list(doc["history"]), (load_file(str(opt)) if opt.is_file() else {})


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- Ray workers


def make_trainer(model: Any, data: PostData, opts: BPRConfig | MultiLabelConfig, total: int, rank: int = 0,
                 world: int = 1, sync: Any = None, shared_slot: np.ndarray | None = None,
                 keys: np.ndarray | None = None) -> BPRTrainer | MultiLabelTrainer:
    """The trainer of model's kind over one partition; total: work units (BPR pairs, or posts)
    over all partitions; keys: the partition's rows in the whole training set (multi-label)."""
    if model.kind == "multilabel":
        return MultiLabelTrainer(model, data, opts, total, rank, world, sync, keys)  # type: ignore[arg-type]
    return BPRTrainer(model, data, opts, total, rank, world, sync, shared_slot)  # type: ignore[arg-type]


def work_units(model: Any, data: PostData) -> int:
    """What an epoch passes over: training pairs (BPR) or posts (multi-label)."""
    return len(data) if model.kind == "multilabel" else len(data.pairs()[0])


class TrainWorker:
    """One Ray actor: a partition of the posts (by user) and the model kind's trainer over it."""

    def __init__(self, rank: int, world: int, name: str, hp: dict, state: dict, data: PostData,
                 opts: BPRConfig | MultiLabelConfig, total: int, shared_slot: np.ndarray | None, device: str,
                 fail_at: str = "", fail_marker: str = "", keys: np.ndarray | None = None,
                 optimizer: dict | None = None) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor; the actors are the parallelism
        self.rank, self.world, self.device = rank, world, device
        self.model = get_model(name, device=device, **hp)
        self.model.load_state_dict(state)
        self.args = (data, opts, total, shared_slot, keys, optimizer or {})
        self.fail_at, self.fail_marker = fail_at, fail_marker
        self.trainer: BPRTrainer | MultiLabelTrainer | None = None

    def node(self) -> str:
        """The Ray node this worker runs on."""
        from jobs._ray import node_id

        return node_id()

    def address(self) -> str:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str) -> bool:
        from models.recsys.bpr import TorchDistSync

        sync = None
        if self.world > 1:
            sync = TorchDistSync(init_method, self.rank, self.world, "nccl" if self.device == "cuda" else "gloo")
        data, opts, total, slot, keys, optimizer = self.args
        self.trainer = make_trainer(self.model, data, opts, total, self.rank, self.world, sync, slot, keys)
        if optimizer:
            self.trainer.load_optimizer_state(optimizer)  # type: ignore[union-attr]
        return True

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        if self.fail_at == f"{epoch}:{self.rank}" and not os.path.exists(self.fail_marker):
            Path(self.fail_marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.fail_marker).write_text("fired\n")
            os._exit(1)  # a hard crash, as a lost node would look
        return self.trainer.run_epoch(epoch)  # type: ignore[union-attr]

    def owned_state(self) -> dict[str, Any]:
        """BPR: rows this worker owns (its users, its unshared items) and, on rank 0, the shared
        tensors. Multi-label (replicas are identical): rank 0's weights and optimizer state."""
        if self.model.kind == "multilabel":
            if self.rank:
                return {}
            return {"net": self.model.state_dict(), "optimizer": self.trainer.optimizer_state()}  # type: ignore[union-attr]
        data, _, _, slot, _, _ = self.args
        p = {k: v.detach().cpu() for k, v in self.model.params.items()}
        users = np.unique(data.user_index[data.user_index >= 0])
        out: dict[str, Any] = {"user": (users, p["user"][users].numpy())}
        if "item" in p:
            items = np.unique(data.item_index[data.item_index >= 0])
            if slot is not None:
                items = items[slot[items] < 0] if self.rank else np.union1d(items, np.flatnonzero(slot >= 0))
            out["item"] = (items, p["item"][items].numpy())
        if self.rank == 0:
            out.update({k: v.numpy() for k, v in p.items() if k not in ("user", "item")})
        return out

    def close(self) -> None:
        sync = getattr(self.trainer, "sync", None)
        if sync is not None:
            sync.close()


def partition_by_user(data: PostData, world: int, seed: int) -> np.ndarray:
    """Worker of each post: users in a seeded order cut into `world` runs of ~equal pair counts."""
    pairs_per_post = np.diff(data.indptr)
    n_users = int(data.user_index.max(initial=-1)) + 1
    weight = np.bincount(data.user_index, weights=pairs_per_post, minlength=n_users)
    order = np.random.default_rng(seed).permutation(n_users)
    before = np.cumsum(weight[order]) - weight[order]  # pairs placed before each user
    worker_of_user = np.empty(n_users, np.int64)
    worker_of_user[order] = np.minimum((before * world // max(weight.sum(), 1)).astype(np.int64), world - 1)
    return worker_of_user[data.user_index]


class RayEngine:
    """Drives N TrainWorker actors for one model; the driver's model mirrors theirs after each epoch.

    opts: BPRConfig (factorization models) or MultiLabelConfig; optimizer: the optimizer state
    to start from (a resumed multi-label run), afterwards the latest one pulled from rank 0.
    """

    def __init__(self, model: Any, data: PostData, opts: BPRConfig | MultiLabelConfig, cfg: TrainConfig,
                 marker: Path, device: str = "cpu", optimizer: dict | None = None) -> None:
        from jobs._ray import init_ray

        init_ray(cfg.ray_address, cfg.num_cpus)
        import ray

        have = ray.cluster_resources().get("GPU" if device == "cuda" else "CPU", 0)
        if cfg.num_workers > have:  # the actors would wait for resources forever
            raise JobError(f"--num-workers {cfg.num_workers} needs {cfg.num_workers} "
                           f"{'GPUs' if device == 'cuda' else 'CPUs'} but the Ray cluster has {have:g}; "
                           "lower --num-workers or add nodes")
        self.model, self.data, self.opts, self.cfg, self.marker = model, data, opts, cfg, marker
        self.world, self.device = cfg.num_workers, device  # the workers' device; the driver's model stays on CPU
        part = partition_by_user(data, self.world, opts.seed)
        self.keys = [np.flatnonzero(part == r) for r in range(self.world)]  # rows of the whole training set
        self.parts = [data.subset(k) for k in self.keys]
        self.total = work_units(model, data)
        self.optimizer = dict(optimizer or {})
        self.slot = None
        if "item" in getattr(model, "params", {}):  # items posted by users on several workers: synchronised rows
            n_items = model.params["item"].shape[0]
            seen = np.zeros((self.world, n_items), bool)
            for r, p in enumerate(self.parts):
                seen[r, p.item_index[p.item_index >= 0]] = True
            shared = seen.sum(0) > 1
            self.slot = np.where(shared, np.cumsum(shared) - 1, -1).astype(np.int64)
        self.restarts = 0
        self.workers: list[Any] = []
        self.group: Any = None
        self.nodes: list[str] = []     # Ray node of each rank
        self._start()

    def _start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        device = self.device
        # One bundle per worker, spread over the nodes where they fit (on one node they share it):
        # a node lost costs fewer workers' memory, and each node's CPUs/GPU serve one worker.
        bundle = {"CPU": 1.0, **({"GPU": 1.0} if device == "cuda" else {})}
        self.group = placement_group([bundle] * self.world, strategy="SPREAD")
        ray.get(self.group.ready())
        actor = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0, max_restarts=0)(TrainWorker)
        state = self.model.state_dict()
        hp = self.model.hyperparameters
        self.workers = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, r)).remote(
                            r, self.world, self.model.name, hp, state, ray.put(self.parts[r]), self.opts, self.total,
                            self.slot, device, self.cfg.fail_at, str(self.marker), self.keys[r], self.optimizer)
                        for r in range(self.world)]
        self.nodes = ray.get([w.node.remote() for w in self.workers])
        addr = ray.get(self.workers[0].address.remote())
        ray.get([w.setup.remote(addr) for w in self.workers])

    def _stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self.workers:
            ray.kill(w)
        self.workers = []
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        """Summed loss and samples over workers; restarts from the last epoch if a worker dies."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        while True:
            try:
                refs = [w.run_epoch.remote(epoch) for w in self.workers]
                pending = refs
                while pending:  # fail fast: a dead worker leaves its peers blocked in the all-reduce
                    ready, pending = ray.wait(pending, num_returns=1)
                    ray.get(ready[0])
                out = ray.get(refs)
                self._pull_state()
                return sum(o[0] for o in out), sum(o[1] for o in out)
            except (RayActorError, RayTaskError) as e:
                if isinstance(e, RayTaskError) and isinstance(e.cause, (ModelError, JobError)):
                    raise e.cause from None
                # A dead actor, or a peer's collective failing because of it.
                self._stop()
                if self.restarts >= self.cfg.max_restarts:
                    raise
                self.restarts += 1
                log.warning("train: a worker died in epoch %d; restarting %d workers from the last epoch "
                            "(restart %d of %d)", epoch, self.world, self.restarts, self.cfg.max_restarts)
                self._start()  # the driver's model (and self.optimizer) hold the last completed epoch

    def _pull_state(self) -> None:
        import ray
        import torch

        parts = ray.get([w.owned_state.remote() for w in self.workers])
        if self.model.kind == "multilabel":
            self.model.load_state_dict(parts[0]["net"])
            self.optimizer = parts[0]["optimizer"]
            return
        params = self.model.params
        for part in parts:
            for k, v in part.items():
                if isinstance(v, tuple):
                    idx, rows = v
                    params[k][torch.from_numpy(np.array(idx, dtype=np.int64))] = torch.from_numpy(np.array(rows)).to(params[k].device)
                else:
                    params[k].copy_(torch.from_numpy(np.array(v)))

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer state after the last completed epoch (empty for BPR: plain SGD)."""
        return self.optimizer

    def close(self) -> None:
        import ray

        try:
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        except Exception:  # a dying worker must not hide the training result
            pass
        self._stop()


class LocalEngine:
    """The same trainer in this process (no Ray): `--num-workers 0`."""

    def __init__(self, model: Any, data: PostData, opts: BPRConfig | MultiLabelConfig,
                 optimizer: dict | None = None) -> None:
        self.trainer = make_trainer(model, data, opts, work_units(model, data))
        if optimizer:
            self.trainer.load_optimizer_state(optimizer)  # type: ignore[union-attr]

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        return self.trainer.run_epoch(epoch)

    def optimizer_state(self) -> dict[str, Any]:
        state = getattr(self.trainer, "optimizer_state", None)
        return state() if state else {}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- training


def _device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise JobError("--device cuda: no CUDA device here; use --device cpu or auto")
    return cfg.device


def build(name: str, data: SplitData, cfg: TrainConfig, sn_dim: int, device: str) -> Any:
    """A fresh model sized to the split's vocabularies."""
    if name.endswith("multilabel"):
        return get_model(name, n_tags=len(data.tags), sn_dim=sn_dim, hidden=cfg.hidden, seed=cfg.seed,
                         n_users=len(data.user_ids), n_items=len(data.item_ids), device=device)
    return get_model(name, n_users=len(data.user_ids), n_items=len(data.item_ids), n_tags=len(data.tags),
                     dim=cfg.dim, sn_dim=sn_dim, seed=cfg.seed, device=device)


def ml_config(cfg: TrainConfig, n_posts: int, epochs: int) -> MultiLabelConfig:
    """The multi-label SGD settings (the paper's by default), `epochs` raised so that an archive
    with few batches per epoch still gets `--ml-min-steps` steps."""
    steps_per_epoch = max(1, math.ceil(n_posts / cfg.ml_batch_size))
    return MultiLabelConfig(lr=cfg.ml_lr, momentum=cfg.ml_momentum, batch_size=cfg.ml_batch_size,
                            epochs=max(epochs, math.ceil(cfg.ml_min_steps / steps_per_epoch)), seed=cfg.seed,
                            tag_reduction=cfg.ml_tag_reduction)


def train_opts(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig) -> BPRConfig | MultiLabelConfig:
    """bpr for the factorization models; `ml_config` (epochs: --ml-epochs or bpr's) for the multi-label nets."""
    if name.endswith("multilabel"):
        return ml_config(cfg, len(data.train), cfg.ml_epochs or bpr.epochs)
    return bpr


def _hp(model: Any, opts: BPRConfig | MultiLabelConfig) -> dict[str, Any]:
    """The settings a divergence message names."""
    if isinstance(opts, MultiLabelConfig):
        return {"lr": opts.lr, "momentum": opts.momentum, "batch_size": opts.batch_size,
                "tag_reduction": opts.tag_reduction, "hidden": model.hidden_dim, "dropout": model.dropout}
    return {"lr": opts.lr, "reg": opts.reg, "batch_size": opts.batch_size, "dim": getattr(model, "dim", None)}


def fit(name: str, data: SplitData, cfg: TrainConfig, bpr: BPRConfig, sn_dim: int, device: str,
        ckpt: Checkpoints | None, nodes: list[str] | None = None) -> tuple[Any, list[dict]]:
    """Train one model (BPR: bpr.epochs epochs; multi-label: `train_opts`), resuming from ckpt
    (weights and optimizer state); (model, per-epoch history). `nodes` gets the Ray node of each
    worker (with --num-workers)."""
    # With Ray workers the driver only mirrors the model (checkpoints, validation): CPU is enough.
    model = build(name, data, cfg, sn_dim, "cpu" if cfg.num_workers > 0 else device)
    if model.kind == "factorization":  # centres from all training posts, before workers copy the state
        model.fit_centre(data.train.batch())
    opts = train_opts(name, data, cfg, bpr)
    start, history, optimizer = ckpt.restore(model) if (ckpt and cfg.resume) else (0, [], {})
    marker = (ckpt.dir if ckpt else Path(cfg.out)) / "fault-fired"
    engine = (RayEngine(model, data.train, opts, cfg, marker, device, optimizer) if cfg.num_workers > 0
              else LocalEngine(model, data.train, opts, optimizer))
    unit = "posts" if model.kind == "multilabel" else "samples"
    progress = Progress(f"train {name}", total=(opts.epochs - start) * work_units(model, data.train), unit=unit)
    try:
        for epoch in range(start, opts.epochs):
            t0 = time.perf_counter()
            loss, n = engine.run_epoch(epoch)
            progress.update(n)  # ETA line at most every 5 s; the epoch line below always
            rate = n / (time.perf_counter() - t0)
            _end_epoch(model, data, opts, epoch, loss / max(n, 1), rate, history, ckpt, engine.optimizer_state())
    finally:
        if nodes is not None:
            nodes[:] = getattr(engine, "nodes", [])
        engine.close()
    return model, history


def _end_epoch(model: Any, data: SplitData, opts: BPRConfig | MultiLabelConfig, epoch: int, loss: float,
               rate: float, history: list[dict], ckpt: Checkpoints | None, optimizer: dict[str, Any]) -> None:
    try:
        check_finite(model, loss, epoch, _hp(model, opts))
    except NumericalError as e:
        if not isinstance(opts, MultiLabelConfig):
            raise
        # check_finite's advice names the BPR flags; these nets have their own.
        raise NumericalError(f"{str(e).split('; lower --lr')[0]}; lower --ml-lr") from None
    f1 = evaluate(model, data.val, ks=(5,))["f1@5"]
    history.append({"epoch": epoch + 1, "loss": round(loss, 6), "val_f1@5": round(f1, 6),
                    "samples_per_s": round(rate, 1)})
    unit = "posts" if model.kind == "multilabel" else "samples"
    log.info("train %s: epoch %d/%d loss %.4f val F1@5 %.4f (%s %s/s)", model.name, epoch + 1,
             opts.epochs, loss, f1, f"{rate:,.0f}", unit)
    if ckpt is not None:
        ckpt.save(model, epoch + 1, history, optimizer)


def tune(name: str, data: SplitData, cfg: TrainConfig, sn_dim: int, device: str) -> tuple[BPRConfig, list[dict]]:
    """Best (lr, reg) of the grids by validation F1@5 after cfg.tune_epochs epochs each."""
    results = []
    for lr in cfg.lr_grid:
        for reg in cfg.reg_grid:
            bpr = BPRConfig(lr=lr, reg=reg, batch_size=cfg.batch_size, epochs=cfg.tune_epochs, seed=cfg.seed,
                            max_row_samples=cfg.max_row_samples)
            try:
                _, hist = fit(name, data, cfg, bpr, sn_dim, device, ckpt=None)
                f1 = hist[-1]["val_f1@5"] if hist else 0.0
            except ModelError as e:  # a diverging grid point is a result, not a failure
                log.info("train %s: lr=%g reg=%g diverged (%s)", name, lr, reg, str(e).split(";")[0])
                f1 = float("nan")
            results.append({"lr": lr, "reg": reg, "val_f1@5": f1})
            log.info("train %s: tune lr=%g reg=%g -> val F1@5 %.4f", name, lr, reg, f1)
    ok = [r for r in results if r["val_f1@5"] == r["val_f1@5"]]
    if not ok:
        raise ModelError(f"{name}: every grid point diverged (lr {cfg.lr_grid}, reg {cfg.reg_grid}); lower the lr grid")
    best = max(ok, key=lambda r: r["val_f1@5"])
    return BPRConfig(lr=best["lr"], reg=best["reg"], batch_size=cfg.batch_size, epochs=cfg.epochs,
                     seed=cfg.seed, max_row_samples=cfg.max_row_samples), results


def train_one(name: str, data: SplitData, cfg: TrainConfig, cache: dict) -> dict[str, Any]:
    """Features, optional tuning, training with checkpoints, the saved model; its summary."""
    feats = required_features(name)
    views = attach_features(data, cfg.store_path(), feats, cache) if feats else {}
    sn_dim = int(views["sn"]["dim"]) if "sn" in views else 0
    device = _device(cfg)
    bpr, grid = BPRConfig(cfg.lr, cfg.reg, cfg.batch_size, cfg.epochs, cfg.seed, cfg.max_row_samples), list[dict]()
    if cfg.tune and not name.endswith("multilabel"):  # the multi-label nets keep the paper's settings
        bpr, grid = tune(name, data, cfg, sn_dim, device)
    opts = train_opts(name, data, cfg, bpr)
    hp = {"lr": bpr.lr, "reg": bpr.reg, "batch_size": bpr.batch_size, "dim": cfg.dim, "hidden": cfg.hidden,
          "max_row_samples": bpr.max_row_samples, "centred": True}
    if isinstance(opts, MultiLabelConfig):  # what a resumed multi-label run must share (not epochs)
        hp = {"hidden": cfg.hidden, **{k: v for k, v in dataclasses.asdict(opts).items() if k != "epochs"},
              "scaled_inputs": True}
    fp = _fingerprint(name, hp, cfg.seed, sn_dim, len(data.train), len(data.tags), data.tags[:50].tolist())
    ckpt = Checkpoints(Path(cfg.out) / "checkpoints" / name, fp, data.tags.tolist())
    t0 = time.perf_counter()
    nodes: list[str] = []
    model, history = fit(name, data, cfg, bpr, sn_dim, device, ckpt, nodes)
    val = evaluate(model, data.val, ks=tuple(range(1, 11)))
    metrics = {"val": val, "history": history, "train_loss": history[-1]["loss"] if history else None}
    training = {**dataclasses.asdict(opts), "num_workers": cfg.num_workers, "device": device, "tuning": grid}
    if isinstance(opts, MultiLabelConfig):
        training["min_steps"] = cfg.ml_min_steps
    out_dir = Path(cfg.out) / "models" / name
    recsys_io.save(model, out_dir, {"tags": data.tags.tolist(), "user_ids": data.user_ids, "item_ids": data.item_ids,
                                    "views": views, "metrics": metrics, "training": training,
                                    "split": {"dir": str(_split_dir(cfg)), **data.dropped}})
    summary = {"dir": str(out_dir), "val_f1@5": round(val["f1@5"], 6), "epochs": opts.epochs, "lr": opts.lr,
               "reg": getattr(opts, "reg", 0.0), "seconds": round(time.perf_counter() - t0, 2)}
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
    if cfg.num_workers < 0:
        raise JobError(f"--num-workers must be >= 0, got {cfg.num_workers}")
    if cfg.max_row_samples < 1:
        raise JobError(f"--max-row-samples must be >= 1, got {cfg.max_row_samples}")
    _check_ml_flags(cfg)
    if cfg.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    data = load_split(_split_dir(cfg))
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
