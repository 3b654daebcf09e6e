"""The default executor: every cell x seed in sequence, in this process, on the driver's copy of the data."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import IO

from sota_ablate.executors.base import CellTask, Executor, GridJob
from sota_ablate.runner import CellOutcome, run_cell, techniques_label


def announce(task: CellTask, out: IO[str], suffix: str = "") -> None:
    """The ``[k/N] name: techniques ...`` line printed when a task starts."""
    print(
        f"[{task.index}/{task.total}] {task.name}: techniques {techniques_label(task.cell.techniques)}{suffix}",
        file=out,
        flush=True,
    )


def skipped(task: CellTask, out: IO[str]) -> CellOutcome:
    """Print that ``task`` finished in an earlier invocation and return its SKIPPED outcome."""
    assert task.done_run_id is not None
    print(f"[{task.index}/{task.total}] {task.name}: already finished (run {task.done_run_id}), skipped", file=out)
    return CellOutcome(task.cell.name, task.seed, "SKIPPED", task.done_run_id)


class LocalExecutor(Executor):
    """Cells one after another in this process (``--executor local``, the default)."""

    name = "local"

    def run(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        out = job.opts.out
        for task in tasks:
            if task.done_run_id is not None:
                yield skipped(task, out)
                continue
            announce(task, out)
            yield run_cell(task.cell, task.seed, job.data, job.opts, job.tracker, job.parent, job.grid, task.name)
