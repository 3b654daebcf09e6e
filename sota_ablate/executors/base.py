"""What an executor is given and must do: run the pending cell x seed tasks of one grid run, yield outcomes.

The driver (``grid_run.run_grid``) makes every cell's plan, checks the tracking store, creates or resumes the grid
run and decides which tasks are already finished (``CellTask.done_run_id``); an executor only runs the rest
(``cell_run.run_cell`` on each plan) and yields one ``CellOutcome`` per task (skipped ones included), in any order.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from sota_ablate.cell_run import CellOutcome
from sota_ablate.data import ImageData
from sota_ablate.grid import Grid
from sota_ablate.plan import CellPlan, RunOptions
from sota_ablate.tracking import Run, Tracker

if TYPE_CHECKING:
    import torch


class ExecutorError(RuntimeError):
    """An executor cannot run here (missing package, unreachable cluster, unsuitable store); says how to fix it."""


@dataclass(frozen=True)
class CellTask:
    """One cell and seed of a grid run: its plan, and the finished run of an earlier invocation (None: train it)."""

    plan: CellPlan
    done_run_id: str | None = None

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def name(self) -> str:
        return self.plan.run_name


def announce(task: CellTask, out: IO[str], suffix: str = "") -> None:
    """The ``[k/N] name: techniques ...`` line printed when a task starts."""
    print(
        f"[{task.plan.index}/{task.plan.total}] {task.name}: techniques {task.plan.label}{suffix}", file=out, flush=True
    )


def skipped(task: CellTask, out: IO[str]) -> CellOutcome:
    """Print that ``task`` finished in an earlier invocation and return its SKIPPED outcome."""
    assert task.done_run_id is not None
    print(f"[{task.plan.index}/{task.plan.total}] {task.name}: already finished (run {task.done_run_id}), skipped",
          file=out)  # fmt: skip
    return CellOutcome(task.plan.cell, task.plan.seed, "SKIPPED", task.done_run_id)


@dataclass
class GridJob:
    """What every task of one grid run shares."""

    grid: Grid
    opts: RunOptions
    tracker: Tracker
    parent: Run
    data: ImageData  # the driver's copy: trained on in-process; a remote executor's workers load their own

    @property
    def out(self) -> IO[str]:
        return self.opts.out or sys.stdout


class Executor(abc.ABC):
    """Runs the cell x seed tasks of a grid."""

    name = "executor"

    def check(self, tracker: Tracker) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Before any data loading: raise ExecutorError if this executor cannot use ``tracker``'s store."""

    def data_device(self, device: torch.device) -> torch.device:
        """Where the driver loads its copy of the data (it always needs the data's identity for the grid hash)."""
        return device

    @abc.abstractmethod
    def run(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        """Yield one outcome per task (``SKIPPED`` for tasks with ``done_run_id``), as they complete.

        Ctrl-C (KeyboardInterrupt) propagates; closing the iterator early must stop any work still running.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the executor started (a local Ray instance, ...)."""
