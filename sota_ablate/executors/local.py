"""The default executor: every cell x seed in sequence, in this process, on the driver's copy of the data.

With ``--cells-per-gpu N`` (N > 1, CUDA only: the CLI refuses it on a CPU, where one cell already uses every
core) N cells train at once on the GPU, each in its own spawned process (its own CUDA context, RNG and allocator)
with 1/N of the GPU's memory (or of ``--gpu-memory-gib``) as its limit (``set_per_process_memory_fraction``):
each loads the data itself and places it within that budget (``data/placement.py``: on the device when it fits,
else staged from pinned host memory). They all log to the same tracking store under the grid run.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch

from sota_ablate.cell_run import CellOutcome, run_cell
from sota_ablate.data import load_data
from sota_ablate.data.placement import limit_gpu_memory
from sota_ablate.executors.base import CellTask, Executor, ExecutorError, GridJob, announce, skipped
from sota_ablate.plan import RunOptions, data_identity
from sota_ablate.tracking import Run, Tracker
from sota_ablate.train.memory import placement_request


class LocalExecutor(Executor):
    """Cells one after another in this process (``--executor local``, the default), or ``cells_per_gpu`` at once
    in worker processes on one GPU."""

    name = "local"

    def __init__(self, cells_per_gpu: int = 1) -> None:
        if cells_per_gpu < 1:
            raise ExecutorError(f"--cells-per-gpu {cells_per_gpu}: use 1 or more")
        self.cells_per_gpu = cells_per_gpu

    def data_device(self, device: torch.device) -> torch.device:
        # several cells at once: the workers load their own copies; the driver only fingerprints the data
        return torch.device("cpu") if self.cells_per_gpu > 1 else device

    def run(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        if self.cells_per_gpu > 1:
            yield from self._concurrent(tasks, job)
            return
        for task in tasks:
            if task.done_run_id is not None:
                yield skipped(task, job.out)
                continue
            announce(task, job.out)
            yield run_cell(task.plan, job.data, job.opts, job.tracker, job.parent)

    def _concurrent(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        device = job.opts.device
        if device.type != "cuda":
            raise ExecutorError(
                f"--cells-per-gpu {self.cells_per_gpu} needs a CUDA device; the cells train on {device}"
            )
        n = self.cells_per_gpu
        total = torch.cuda.get_device_properties(device).total_memory
        spec = worker_spec(job, budget_bytes=(job.opts.gpu_memory_bytes or total) // n, threads=_threads(n))
        print(
            f"local: {n} cells at once on {device}, each in its own process with {spec.budget_bytes / 2**30:.1f} GiB",
            file=job.out,
            flush=True,
        )
        pending: dict[Future[CellOutcome], CellTask] = {}
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                for task in tasks:
                    if task.done_run_id is not None:
                        yield skipped(task, job.out)
                        continue
                    pending[pool.submit(run_in_process, spec, unbound(task))] = task
                while pending:
                    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        yield self._outcome(future, task, job)
            finally:
                for future in pending:
                    future.cancel()

    def _outcome(self, future: Future[CellOutcome], task: CellTask, job: GridJob) -> CellOutcome:
        """The worker's outcome; a worker that raised (or died) is a FAILED cell, its run ended."""
        try:
            return future.result()
        except KeyboardInterrupt:
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"[:2000]
            ids = job.tracker.fail_running_children(
                job.parent.run_id, f"worker process: {reason}", cell=task.plan.cell, seed=task.plan.seed
            )
            print(f"!! {task.name} FAILED in its worker process: {reason}\n", file=job.out, flush=True)
            return CellOutcome(task.plan.cell, task.plan.seed, "FAILED", ids[-1] if ids else "", error=reason)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs besides its task (picklable)."""

    options: dict[str, Any]  # RunOptions fields except device, progress_bar and out
    device: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    data_info: Mapping[str, Any]  # the driver's: the worker's data must be the same
    budget_bytes: int
    threads: int


def worker_spec(job: GridJob, budget_bytes: int, threads: int) -> WorkerSpec:
    skip = ("device", "progress_bar", "out")
    opts = job.opts
    return WorkerSpec(
        options={f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in skip},
        device=str(opts.device),
        tracking_uri=job.tracker.uri,
        experiment=job.tracker.experiment_name,
        parent_run_id=job.parent.run_id,
        data_info=dict(job.data.info),
        budget_bytes=budget_bytes,
        threads=threads,
    )


def unbound(task: CellTask) -> CellTask:
    """``task`` with its plan unbound from the data (a MappingProxyType does not pickle); the worker rebinds it."""
    return dataclasses.replace(task, plan=dataclasses.replace(task.plan, data_info=None))


def _threads(n: int) -> int:
    return max(1, (os.cpu_count() or 1) // n)


def run_in_process(spec: WorkerSpec, task: CellTask) -> CellOutcome:
    """One cell in a worker process: cap its GPU memory, load and place the data within it, train, log."""
    device = torch.device(spec.device)
    if device.type == "cuda":
        limit_gpu_memory(device, spec.budget_bytes)
    torch.set_num_threads(spec.threads)
    opts = RunOptions(**spec.options, device=device, progress_bar=False, out=sys.stdout)
    announce(task, sys.stdout, suffix=f" [pid {os.getpid()}]")
    plan = task.plan
    request = placement_request([(plan.train, plan.techniques)], device, opts.data_on)
    data = load_data(opts.data, device, placement=request)
    if data_identity(data.info) != data_identity(spec.data_info):
        raise ExecutorError(f"the worker of {task.name} loaded different data than the driver's")
    if data.placement is not None:
        print(f"{task.name}: data placement {data.placement.data_on} ({data.placement.reason})", flush=True)
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    return run_cell(plan.bind(data.info), data, opts, tracker, Run(tracker, spec.parent_run_id))
