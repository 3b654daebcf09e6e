"""What a worker process needs to train one cell away from the driver: the one ``WorkerSpec`` of both executors
that use workers (``local`` with ``--cells-per-gpu N``: spawned processes on one GPU; ``ray``: tasks on a cluster),
and the data a worker loads for its cell.

A worker loads the data itself and places it within its own memory (``data/placement.py``: on the device when
the cell's data fits there, else staged from pinned host memory), then refuses data whose identity (content
digest, split, label noise, ...) differs from the driver's: a node with another copy of the dataset never trains
a cell of this grid run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sota_ablate.data import ImageData, load_data
from sota_ablate.data.placement import limit_gpu_memory
from sota_ablate.executors.base import CellTask, ExecutorError, GridJob
from sota_ablate.plan import CellPlan, RunOptions, data_identity
from sota_ablate.train.memory import placement_request

# RunOptions fields that stay with the driver: the worker has its own device object, console and output
DRIVER_ONLY = ("device", "progress_bar", "out")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs besides its ``CellTask``; picklable, shipped once per grid run.

    Attributes:
        options: ``RunOptions`` fields but ``DRIVER_ONLY``.
        device: the device type or name the worker trains on (``cuda``, ``cuda:0``, ``cpu``).
        tracking_uri, experiment, parent_run_id: where the worker logs its cell run (under the grid run).
        data_info: the driver's data identity: the worker's data must be the same.
        threads: torch's CPU threads in the worker.
        gpu_share: the fraction of its GPU's memory (of ``--gpu-memory-gib`` when given) the worker may use: 1/N
            with ``--cells-per-gpu N``, Ray's ``--gpus-per-cell`` below 1; None: no limit of its own.
        cwd: the driver's working directory (Ray: relative paths mean the same on every node), None: unchanged.
        env: the driver's ``MLFLOW_*`` variables (Ray: timeouts, credentials).
        fault_kill: ``<cell>:<seed>`` of a cell whose worker kills itself after its first epoch (Ray's fault test).
        debug: keep the libraries' logs (``--debug``).
    """

    options: dict[str, Any]
    device: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    data_info: Mapping[str, Any]
    threads: int
    gpu_share: float | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    fault_kill: str | None = None
    debug: bool = False

    def run_options(self) -> RunOptions:
        """The driver's ``RunOptions`` as the worker uses them: its own device, no progress bar, its stdout."""
        return RunOptions(**self.options, device=torch.device(self.device), progress_bar=False, out=sys.stdout)

    def gpu_budget(self, device: torch.device) -> int | None:
        """The bytes of ``device`` this worker may allocate (``gpu_share`` of the GPU or of ``--gpu-memory-gib``);
        None on a CPU or without a share."""
        if device.type != "cuda" or self.gpu_share is None:
            return None
        total = self.options.get("gpu_memory_bytes") or torch.cuda.get_device_properties(device).total_memory
        return int(total * self.gpu_share)

    def enter(self) -> None:
        """Set the worker process up as the driver was: environment, working directory, threads, log levels, and
        its GPU memory limit (``gpu_budget``), which its data placement then plans within."""
        os.environ.update(self.env)
        if self.cwd is not None and os.path.isdir(self.cwd):
            os.chdir(self.cwd)
        torch.set_num_threads(self.threads)
        if not self.debug:
            for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
                logging.getLogger(noisy).setLevel(logging.ERROR)
        device = torch.device(self.device)
        budget = self.gpu_budget(device)
        if budget is not None:
            limit_gpu_memory(device, budget)


def worker_spec(job: GridJob, device: str, threads: int, **extra: Any) -> WorkerSpec:
    """The spec of the workers of ``job``'s grid run (``extra``: ``WorkerSpec``'s optional fields)."""
    opts = job.opts
    return WorkerSpec(
        options={f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in DRIVER_ONLY},
        device=device,
        tracking_uri=job.tracker.uri,
        experiment=job.tracker.experiment_name,
        parent_run_id=job.parent.run_id,
        data_info=dict(job.data.info),
        threads=threads,
        **{"debug": logging.getLogger().isEnabledFor(logging.DEBUG), **extra},
    )


def unbound(task: CellTask) -> CellTask:
    """``task`` with its plan unbound from the data (a MappingProxyType does not pickle); the worker rebinds it."""
    return dataclasses.replace(task, plan=dataclasses.replace(task.plan, data_info=None))


def worker_data(spec: WorkerSpec, plan: CellPlan, opts: RunOptions, where: str) -> ImageData:
    """The data of ``plan``'s cell, loaded and placed by this worker; ``ExecutorError`` naming what differs when it
    is not the driver's data (``where``: the worker in words, e.g. ``on node 10.0.0.2``)."""
    request = placement_request([(plan.train, plan.techniques)], opts.device, opts.data_on)
    data = load_data(opts.data, opts.device, placement=request)
    theirs, ours = data_identity(spec.data_info), data_identity(data.info)
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ExecutorError(
            f"the data {where} differs from the driver's in {', '.join(differ)}: every worker needs the same "
            "dataset (same folder content, or the same Imagenette archive)."
        )
    if data.placement is not None:
        print(f"{plan.cell} seed {plan.seed}: data placement {data.placement.data_on} ({data.placement.reason})")
    return data
