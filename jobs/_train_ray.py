"""The Ray engine of `jobs.train`: one model trained by N Ray actors, posts split by user.

Each `TrainWorker` actor holds one partition of the training posts (`partition_by_user`, so
a user's factor row lives on one worker) and the model's trainer over it (the registry's
`Trainer`); the trainers sum what they share with one torch.distributed all-reduce per step
(gloo on CPU, NCCL on CUDA). After each epoch the driver pulls every worker's
`owned_state()` into its own copy of the model (`Trainer.merge_states`), which the job
validates and checkpoints. A dead worker makes the driver restart all workers from that
copy, the last completed epoch (`max_restarts` times).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from jobs.errors import JobError
from models.errors import ModelError
from models.recsys import get_model
from models.recsys.data import PostData
from models.recsys.distributed import partition_by_user
from models.recsys.trainer import Partition, Trainer

log = logging.getLogger("jobs")


class TrainWorker:
    """One Ray actor: a partition of the posts (by user) and the model's trainer over it."""

    def __init__(self, rank: int, world: int, name: str, hp: dict, state: dict, data: PostData,
                 trainer: type[Trainer], opts: Any, total: int, shared: Any, device: str,
                 fail_at: str = "", fail_marker: str = "", keys: np.ndarray | None = None,
                 optimizer: dict | None = None) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor; the actors are the parallelism
        self.rank, self.world, self.device = rank, world, device
        self.model = get_model(name, device=device, **hp)
        self.model.load_state_dict(state)
        self.args = (data, trainer, opts, total, shared, keys, optimizer or {})
        self.fail_at, self.fail_marker = fail_at, fail_marker
        self.trainer: Trainer | None = None

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
        from models.recsys.distributed import TorchDistSync

        sync = None
        if self.world > 1:
            sync = TorchDistSync(init_method, self.rank, self.world, "nccl" if self.device == "cuda" else "gloo")
        data, trainer, opts, total, shared, keys, optimizer = self.args
        self.trainer = trainer.for_partition(self.model, data, opts,
                                             Partition(self.rank, self.world, sync, total, keys, shared))
        if optimizer:
            self.trainer.load_optimizer_state(optimizer)
        return True

    def run_epoch(self, epoch: int) -> tuple[float, int]:
        # Fault injection for tests (--fail-at EPOCH:RANK): a hard crash, as a lost node would look.
        if self.fail_at == f"{epoch}:{self.rank}" and not os.path.exists(self.fail_marker):
            Path(self.fail_marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.fail_marker).write_text("fired\n")
            os._exit(1)
        return self.trainer.run_epoch(epoch)  # type: ignore[union-attr]

    def owned_state(self) -> dict[str, Any]:
        return self.trainer.owned_state()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()


class RayEngine:
    """Drives N TrainWorker actors for one model; the driver's model mirrors theirs after each epoch.

    opts: the trainer's settings; optimizer: the optimizer state to start from (a resumed
    run), afterwards the latest one pulled from the workers.
    """

    def __init__(self, model: Any, data: PostData, trainer: type[Trainer], opts: Any, num_workers: int,
                 ray_address: str = "", num_cpus: int = 0, max_restarts: int = 2, fail_at: str = "",
                 marker: Path | None = None, device: str = "cpu", optimizer: dict | None = None) -> None:
        from jobs._ray import init_ray

        init_ray(ray_address, num_cpus)
        import ray

        have = ray.cluster_resources().get("GPU" if device == "cuda" else "CPU", 0)
        if num_workers > have:  # the actors would wait for resources forever
            raise JobError(f"--num-workers {num_workers} needs {num_workers} "
                           f"{'GPUs' if device == 'cuda' else 'CPUs'} but the Ray cluster has {have:g}; "
                           "lower --num-workers or add nodes")
        self.model, self.trainer, self.opts = model, trainer, opts
        self.max_restarts, self.fail_at, self.marker = max_restarts, fail_at, marker
        self.world, self.device = num_workers, device  # the workers' device; the driver's model stays on CPU
        part = partition_by_user(data, self.world, opts.seed)
        self.keys = [np.flatnonzero(part == r) for r in range(self.world)]  # rows of the whole training set
        self.parts = [data.subset(k) for k in self.keys]
        self.total = trainer.work_units(data)
        self.shared = trainer.shared_state(model, self.parts)
        self.optimizer = dict(optimizer or {})
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
        # each node's CPUs/GPU serve one worker, and a lost node costs fewer workers.
        bundle = {"CPU": 1.0, **({"GPU": 1.0} if device == "cuda" else {})}
        self.group = placement_group([bundle] * self.world, strategy="SPREAD")
        ray.get(self.group.ready())
        actor = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0, max_restarts=0)(TrainWorker)
        state = self.model.state_dict()
        hp = self.model.hyperparameters
        self.workers = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, r)).remote(
                            r, self.world, self.model.name, hp, state, ray.put(self.parts[r]), self.trainer,
                            self.opts, self.total, self.shared, device, self.fail_at, str(self.marker),
                            self.keys[r], self.optimizer)
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
        """Summed loss and work units over workers; restarts from the last epoch if a worker dies."""
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
                self.optimizer = self.trainer.merge_states(
                    self.model, ray.get([w.owned_state.remote() for w in self.workers]))
                return sum(o[0] for o in out), sum(o[1] for o in out)
            except (RayActorError, RayTaskError) as e:
                if isinstance(e, RayTaskError) and isinstance(e.cause, (ModelError, JobError)):
                    raise e.cause from None
                # A dead actor, or a peer's collective failing because of it.
                self._stop()
                if self.restarts >= self.max_restarts:
                    raise
                self.restarts += 1
                log.warning("train: a worker died in epoch %d; restarting %d workers from the last epoch "
                            "(restart %d of %d)", epoch, self.world, self.restarts, self.max_restarts)
                self._start()  # the driver's model (and self.optimizer) hold the last completed epoch

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer state after the last completed epoch (empty for plain SGD)."""
        return self.optimizer

    def close(self) -> None:
        import ray

        try:
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        except Exception:  # a dying worker must not hide the training result
            pass
        self._stop()
