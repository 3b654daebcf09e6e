"""The resume policy: what a rerun of the same grid finds and continues.

- The grid run: a rerun continues the newest grid run with the same grid hash (``plan.grid_identity``: cells,
  seeds, profile, overrides, data) unless ``--force``.
- Finished cells (tag ``sota_ablate.complete`` and status FINISHED) are skipped; their leftover checkpoints are
  deleted. A cell run that another process is training (RUNNING with a fresh heartbeat, ``lease.py``) is left
  to it; one a killed process left RUNNING (its heartbeat stopped) is marked FAILED and the cell trains again.
- An interrupted cell continues from its checkpoint in the same MLflow run, when the checkpoint was written for
  this grid run and config (its file name says both: ``<grid run id>-<config hash>.pt``) and the run it belongs to
  is an unfinished child of this grid run that logged no epoch the checkpoint lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sota_ablate import schema
from sota_ablate.lease import is_alive
from sota_ablate.tracking import Run, Tracker
from sota_ablate.train.checkpoint import checkpoint_path, delete_checkpoint, load_checkpoint, restore
from sota_ablate.train.state import TrainState


def checkpoint_file(folder: str | Path, parent_run_id: str, config_hash: str) -> Path:
    """The checkpoint of the cell with ``config_hash`` in grid run ``parent_run_id``: no other grid run (another
    experiment, a ``--force`` run) shares it."""
    return checkpoint_path(folder, f"{parent_run_id}-{config_hash}")


def find_grid_run(tracker: Tracker, grid_hash: str) -> str | None:
    """The newest grid run with this grid hash, or None."""
    df = tracker.search_runs(f"tags.{schema.GRID_HASH} = '{grid_hash}'")
    if df.empty:
        return None
    return str(df.sort_values("start_time", ascending=False).iloc[0]["run_id"])


def cell_runs(
    tracker: Tracker, parent: Run, checkpoints: Path | None = None, end_stale: bool = True
) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str]]:
    """(finished, busy) cell runs of ``parent``, each (cell, seed) -> run id: finished ones, and those another
    process is training right now. Ends (FAILED) the runs a killed process left RUNNING, unless ``end_stale`` is
    False, and deletes leftover checkpoints of finished cells when ``checkpoints`` is given."""
    done: dict[tuple[str, int], str] = {}
    busy: dict[tuple[str, int], str] = {}
    children = tracker.search_runs(f"tags.`{schema.PARENT}` = '{parent.run_id}'")
    for _, row in children.iterrows():
        key = (row.get(f"tags.{schema.CELL}"), int(row.get(f"tags.{schema.SEED}", -1)))
        if row.get(f"tags.{schema.COMPLETE}") == "true" and row["status"] == "FINISHED":
            done[key] = row["run_id"]
            chash = row.get(f"tags.{schema.CONFIG_HASH}")
            if isinstance(chash, str) and checkpoints is not None:  # left by a crash after the cell finished
                delete_checkpoint(checkpoint_file(checkpoints, parent.run_id, chash))
        elif is_alive(row["status"], row.get(f"tags.{schema.HEARTBEAT}"), row.get(f"tags.{schema.OWNER}")):
            busy[key] = row["run_id"]
        elif row["status"] == "RUNNING" and end_stale:
            tracker.end_run(row["run_id"], "FAILED", "left RUNNING by a killed process (its heartbeat stopped)")
    return done, {k: v for k, v in busy.items() if k not in done}


def resumable_checkpoint(path: Path, config_hash: str, tracker: Tracker, parent: Run) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it can continue its run: same config hash, and the run it was written for
    is an unfinished child of ``parent`` (KILLED, FAILED or marked so after a crash; never one that is RUNNING
    in another process). Adds ``previous_status`` and ``resumes`` (how often the run was resumed before)."""
    payload = load_checkpoint(path, config_hash)
    run_id = payload["meta"].get("run_id") if payload is not None else None
    found = tracker.run_status(run_id) if run_id else None
    if payload is None or found is None:
        return None
    status, tags = found
    if tags.get(schema.PARENT) != parent.run_id or status == "RUNNING":
        return None
    if status == "FINISHED" and tags.get(schema.COMPLETE) == "true":
        return None
    accuracy = schema.epoch_key("accuracy")
    if any(step >= payload["next_epoch"] for step, _ in tracker.metric_history(str(run_id), accuracy)):
        return None  # the run logged epochs the checkpoint lacks: continuing would log them twice
    payload["previous_status"] = status
    payload["resumes"] = int(tags.get(schema.RESUMES, "0") or 0)
    return payload


def reopen(tracker: Tracker, payload: dict[str, Any], claim: dict[str, str]) -> Run:
    """Reopen the run a checkpoint belongs to, without its failure tags, counting the resume, claimed by us."""
    run = tracker.reopen_run(payload["meta"]["run_id"], system_metrics=True)
    run.delete_tags([schema.FAILURE, schema.FAILURE_TYPE])
    run.set_tags({schema.RESUMED_FROM: payload["next_epoch"], schema.RESUMES: payload["resumes"] + 1, **claim})
    return run


def restorer(payload: dict[str, Any]) -> Callable[[TrainState], None]:
    """The ``resume`` callback of ``fit``: puts the checkpoint back into the state after the techniques' setup."""

    def resume(s: TrainState) -> None:
        restore(s, payload)

    return resume
