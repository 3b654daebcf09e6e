"""The default executor: every cell x seed in sequence, in this process, on the driver's copy of the data."""

from __future__ import annotations

from collections.abc import Generator, Sequence

from sota_ablate.cell_run import CellOutcome, run_cell
from sota_ablate.executors.base import CellTask, Executor, GridJob, announce, skipped


class LocalExecutor(Executor):
    """Cells one after another in this process (``--executor local``, the default)."""

    name = "local"

    def run(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        for task in tasks:
            if task.done_run_id is not None:
                yield skipped(task, job.out)
                continue
            announce(task, job.out)
            yield run_cell(task.plan, job.data, job.opts, job.tracker, job.parent)
