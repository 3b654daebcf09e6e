"""What an executor is given and must do: run the pending cell x seed tasks of one grid run, yield outcomes.

The driver (``runner.run_grid``) resolves and validates every cell, checks the tracking store, creates or
resumes the parent run and decides which tasks are already finished (``CellTask.done_run_id``); an executor
only runs the rest and yields one ``CellOutcome`` per task (skipped ones included), in any order.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sota_ablate.data import ImageData
    from sota_ablate.grid import Cell, Grid
    from sota_ablate.runner import CellOutcome, RunOptions
    from sota_ablate.tracking import Run, Tracker


class ExecutorError(RuntimeError):
    """An executor cannot run here (missing package, unreachable cluster, unsuitable store); says how to fix it."""


@dataclass(frozen=True)
class CellTask:
    """One cell and seed of a grid run.

    Attributes:
        index: 1-based position in the grid's order (seed-major, then the grid's cell order).
        total: number of cell x seed tasks in the grid run.
        cell: the cell.
        seed: the seed.
        name: the child run's name (the cell's name, ``-seed<N>`` appended when the grid has several seeds).
        done_run_id: the finished child run of an earlier invocation of the same grid, or None to train it.
    """

    index: int
    total: int
    cell: Cell
    seed: int
    name: str
    done_run_id: str | None = None


@dataclass
class GridJob:
    """What every task of one grid run shares."""

    grid: Grid
    opts: RunOptions
    tracker: Tracker
    parent: Run
    data: ImageData  # the driver's copy: trained on in-process; a remote executor's workers load their own


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
