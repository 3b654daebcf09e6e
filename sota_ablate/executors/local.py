"""The default executor: every cell x seed in sequence, in this process, on the driver's copy of the data.

With ``--cells-per-gpu N`` (N > 1, CUDA only: the CLI refuses it on a CPU, where one cell already uses every
core) N cells train at once on the GPU, each in its own spawned process (its own CUDA context, RNG and allocator)
with 1/N of the GPU's memory (or of ``--gpu-memory-gib``) as its limit (``set_per_process_memory_fraction``):
each loads the data itself and places it within that budget (``data/placement.py``: on the device when it fits,
else staged from pinned host memory). They all log to the same tracking store under the grid run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from sota_ablate.cell_run import CellOutcome, run_cell
from sota_ablate.executors.base import CellTask, Executor, ExecutorError, GridJob, announce, skipped
from sota_ablate.executors.worker import WorkerSpec, unbound, worker_data, worker_spec
from sota_ablate.tracking import Run, Tracker


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
        spec = worker_spec(job, str(device), threads=_threads(n), gpu_share=1 / n)
        budget = spec.gpu_budget(device) or 0
        print(
            f"local: {n} cells at once on {device}, each in its own process with {budget / 2**30:.1f} GiB",
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


def _threads(n: int) -> int:
    return max(1, (os.cpu_count() or 1) // n)


def run_in_process(spec: WorkerSpec, task: CellTask) -> CellOutcome:
    """One cell in a worker process: cap its GPU memory, load and place the data within it, train, log."""
    spec.enter()
    opts = spec.run_options()
    announce(task, sys.stdout, suffix=f" [pid {os.getpid()}]")
    data = worker_data(spec, task.plan, opts, f"of the worker of {task.name}")
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    return run_cell(task.plan.bind(data.info), data, opts, tracker, Run(tracker, spec.parent_run_id))
