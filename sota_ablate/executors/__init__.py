"""Where the cells of a grid run: ``local`` (in this process, one after another) or ``ray`` (one Ray task per
cell x seed on a cluster). Importing this package imports neither the runner nor Ray: ``executors.local`` and
``executors.ray`` are imported when used.
"""

from __future__ import annotations

from sota_ablate.executors.base import CellTask, Executor, ExecutorError, GridJob

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "CellTask", "Executor", "ExecutorError", "GridJob"]
