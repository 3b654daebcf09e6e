"""Run a grid: plans first, then the store, the data, one MLflow grid run, and one cell run per plan.

A rerun of the same grid continues its grid run (``resume.py``); the executor (``executors/``) decides where the
pending cells train: in this process one after another (default) or as Ray tasks. Several ``run-grid`` of the same
grid at once share one grid run and its cells (``lease.py``); the last one to finish ends the grid run, FINISHED
when every cell x seed has a complete run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sota_ablate import schema
from sota_ablate.cell_run import CellOutcome
from sota_ablate.data import load_data
from sota_ablate.executors.base import CellTask, Executor, GridJob
from sota_ablate.executors.local import LocalExecutor
from sota_ablate.grid import Grid
from sota_ablate.lease import claim_tags, grid_filter, heartbeat, winner
from sota_ablate.plan import CellPlan, RunOptions, grid_identity, make_plans
from sota_ablate.progress import format_time
from sota_ablate.resume import cell_runs, find_grid_run
from sota_ablate.tracking import (
    Run,
    Tracker,
    TrackingError,
    default_checkpoint_dir,
    git_commit,
    is_store_error,
    mask_uri,
    outage,
)
from sota_ablate.train.checkpoint import ensure_writable
from sota_ablate.train.memory import placement_request


@dataclass
class GridOutcome:
    parent_run_id: str
    outcomes: list[CellOutcome]
    wall_time_s: float

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]


def run_grid(
    grid: Grid,
    opts: RunOptions,
    tracker: Tracker,
    seeds: Sequence[int] | None = None,
    executor: Executor | None = None,
) -> GridOutcome:
    """Train every cell x seed of ``grid`` under one grid run; returns the outcomes in grid order."""
    executor = executor or LocalExecutor()
    out = opts.out or sys.stdout
    seeds = list(seeds or grid.seeds)
    plans = make_plans(grid, seeds, opts, git_commit())  # bad settings fail before the store or the data
    executor.check(tracker)  # e.g. Ray: a store every node can reach, before anything is created in it
    tracker.check()
    print(f"MLflow store: {mask_uri(tracker.uri)}  experiment: {tracker.experiment_name}", file=out)
    checkpoints = ensure_writable(opts.checkpoint_dir or default_checkpoint_dir(tracker.uri))
    opts = dataclasses.replace(opts, checkpoint_dir=str(checkpoints))
    t0 = time.perf_counter()
    data_device = executor.data_device(opts.device)
    request = None  # the driver's copy of a remote executor's data only fingerprints it: no placement to plan
    if data_device == opts.device:
        request = placement_request([(p.train, p.techniques) for p in plans], data_device, opts.data_on)
    data = load_data(opts.data, data_device, placement=request)
    if data.placement is not None:
        print(f"data placement: {data.placement.data_on} ({data.placement.reason})", file=out)
    bad = f"; {data.info['bad_images']} unreadable image(s) skipped" if data.info.get("bad_images") else ""
    print(f"data: {data.info.get('n_train')} train / {data.info.get('n_valid')} valid images, {len(data.classes)} "
          f"classes, split {data.info.get('split')}, loaded in {time.perf_counter() - t0:.1f}s{bad}", file=out)  # fmt: skip
    plans = [p.bind(data.info) for p in plans]
    ghash = grid_identity(grid, opts, seeds, data.info)
    parent = open_grid_run(tracker, grid, opts, seeds, ghash, data.info, out)
    with heartbeat(parent):
        done, busy = cell_runs(tracker, parent, checkpoints)
        if done or busy:
            print(f"grid run {parent.run_id}: {len(done)} cell runs already finished, {len(busy)} being trained by "
                  "another process (--force starts a new grid run)", file=out)  # fmt: skip
        tasks = [CellTask(p, done.get((p.cell, p.seed))) for p in plans if (p.cell, p.seed) not in busy]
        outcomes = _run_tasks(executor, tasks, GridJob(grid, opts, tracker, parent, data), parent, out)
        outcomes += [CellOutcome(p.cell, p.seed, "ELSEWHERE", busy[(p.cell, p.seed)]) for p in plans
                     if (p.cell, p.seed) in busy]  # fmt: skip
        wall = time.perf_counter() - t0
        outcomes.sort(key=lambda o: next(p.index for p in plans if (p.cell, p.seed) == (o.cell, o.seed)))
        finish_grid_run(tracker, parent, plans, wall, out)
    print(summary_table(outcomes), file=out)
    print(f"grid {grid.name}: {len(plans)} cell runs in {format_time(wall)}; parent run {parent.run_id}", file=out)
    return GridOutcome(parent.run_id, outcomes, wall)


def open_grid_run(
    tracker: Tracker, grid: Grid, opts: RunOptions, seeds: Sequence[int], ghash: str, data_info: dict, out
) -> Run:
    """The grid run to log under: the last one of this grid (resumed) unless ``--force``, else a new one; a new
    one started at the same moment as another process's of the same grid yields to the earlier."""
    previous = None if opts.force else find_grid_run(tracker, ghash)
    if previous is not None:
        parent = Run(tracker, previous)
        tracker.mark_running(parent.run_id)
        parent.set_tags(claim_tags())
        print(f"resuming grid run {parent.run_id}", file=out)
        return parent
    parent = start_grid_run(tracker, grid, opts, seeds, ghash, data_info)
    holder = parent.run_id
    for wait in (0.0, 2.0):  # twice: a rival's grid run written a moment after ours started is seen the second time
        time.sleep(wait)
        if not opts.force and holder == parent.run_id:
            holder = winner(tracker, f"{grid_filter(ghash)} and attributes.status = 'RUNNING'", parent.run_id)[0]
    if holder != parent.run_id:
        parent.discard()
        print(f"another run-grid of this grid started grid run {holder} at the same time: joining it", file=out)
        return Run(tracker, holder)
    return parent


def finish_grid_run(tracker: Tracker, parent: Run, plans: Sequence[CellPlan], wall: float, out) -> None:
    """End the grid run unless another process still trains some of its cells: FINISHED (and complete) when
    every cell x seed has a complete run, else FAILED. The counts come from the store, not this process."""
    done, busy = cell_runs(tracker, parent, end_stale=False)
    missing = [p for p in plans if (p.cell, p.seed) not in done]
    parent.log_metrics({schema.WALL_TIME: wall, schema.CELLS_FAILED: len(missing) - len(busy),
                        schema.CELLS_FINISHED: len(done)}, step=0)  # fmt: skip
    if busy:
        print(f"grid run {parent.run_id} stays RUNNING: another process is still training {len(busy)} of its "
              "cells and ends it when done", file=out)  # fmt: skip
        return
    if not missing:
        parent.set_tags({schema.COMPLETE: "true"})
    parent.end("FAILED" if missing else "FINISHED")


def start_grid_run(
    tracker: Tracker, grid: Grid, opts: RunOptions, seeds: Sequence[int], ghash: str, data_info: dict
) -> Run:
    """A new grid run with the grid's description, cells, seeds and data as params and the grid file attached."""
    parent = tracker.start_run(
        grid.name,
        tags={
            **claim_tags(),
            schema.GRID: grid.name,
            schema.GRID_HASH: ghash,
            schema.PROFILE: opts.profile.name,
            schema.ROLE: schema.ROLE_GRID,
            schema.GIT_COMMIT: git_commit(),
            schema.DEVICE: opts.device.type,
        },
    )
    parent.log_params(
        {
            schema.GRID: grid.name,
            schema.GRID_FILE: grid.source,
            schema.PROFILE: opts.profile.name,
            schema.PROFILE_DESCRIPTION: opts.profile.description,
            schema.SEEDS: list(seeds),
            schema.CELLS: [c.name for c in grid.cells],
            schema.EPOCHS_SCALE: opts.epochs_scale,
            schema.DEVICE: str(opts.device),
            schema.DESCRIPTION: grid.description,
            schema.CELL_TECHNIQUES: {c.name: list(c.techniques) for c in grid.cells},
            schema.CHECKPOINT_DIR: str(opts.checkpoint_dir),
            **{schema.data_param(k): v for k, v in data_info.items()},
        }
    )
    parent.log_dict({c.name: list(c.techniques) for c in grid.cells}, schema.CELL_TECHNIQUES_JSON)
    if grid.source and not grid.source.startswith("<"):
        with contextlib.suppress(OSError):
            parent.log_file(grid.source, schema.GRID_FOLDER)
    return parent


def _run_tasks(executor: Executor, tasks: list[CellTask], job: GridJob, parent: Run, out) -> list[CellOutcome]:
    """Every task's outcome in grid order; the grid run ends KILLED on Ctrl-C and FAILED on an error outside the
    cells (the store went away), never left RUNNING."""
    outcomes: list[CellOutcome] = []
    by_key = {(t.plan.cell, t.plan.seed): t for t in tasks}
    try:
        with contextlib.closing(executor.run(tasks, job)) as results:
            for outcome in results:
                outcomes.append(outcome)
                if outcome.status == "FINISHED":
                    name = by_key[(outcome.cell, outcome.seed)].plan.run_name
                    parent.log_metrics({schema.cell_accuracy(name): outcome.accuracy or 0.0}, step=0)
    except KeyboardInterrupt:
        parent.end("KILLED")
        print(f"\ninterrupted: finished cells are kept in MLflow ({mask_uri(job.tracker.uri)}), the interrupted "
              f"cell's last finished epoch in {job.opts.checkpoint_dir}; the same command continues from there.",
              file=out)  # fmt: skip
        raise
    except TrackingError:
        raise  # the store is gone: trying to mark the grid run would only wait through the retries again
    except Exception as err:
        if is_store_error(err):
            raise outage(err, job.tracker.uri) from None
        with contextlib.suppress(Exception):
            parent.set_tags({schema.FAILURE: mask_uri(f"{type(err).__name__}: {err}")[:5000]})
            parent.end("FAILED")
        raise
    return outcomes


def summary_table(outcomes: Sequence[CellOutcome]) -> str:
    """The table printed when a grid run ends: one row per cell run, the techniques' judged metrics as columns."""
    judged = sorted({k for o in outcomes for k in o.judged})
    rows = [("cell", "seed", "status", "accuracy", *judged, "time")]
    for o in outcomes:
        acc = f"{o.accuracy:.4f}" if o.accuracy is not None else "-"
        extra = [f"{o.judged[k]:.4f}" if k in o.judged else "-" for k in judged]
        rows.append((o.cell, str(o.seed), o.status, acc, *extra, format_time(o.wall_time_s)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
