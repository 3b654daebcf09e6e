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
from sota_ablate.data.noise import check_label_noise
from sota_ablate.executors.base import CellTask, Executor, GridJob
from sota_ablate.executors.local import LocalExecutor
from sota_ablate.grid import Grid
from sota_ablate.lease import claim_tags, grid_filter, heartbeat, winner
from sota_ablate.plan import CellPlan, RunOptions, equalise_compute, grid_identity, make_plans
from sota_ablate.precision import PROCEDURE, check_target, extra_runs, plan_comparisons, plan_record
from sota_ablate.progress import format_time
from sota_ablate.resume import cell_runs, find_grid_run
from sota_ablate.run_datasets import data_specs
from sota_ablate.run_notes import grid_note
from sota_ablate.tracking import (
    DiskFullError,
    Run,
    Tracker,
    TrackingError,
    default_checkpoint_dir,
    git_commit,
    mask_uri,
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
    """Train every cell x seed of ``grid`` under one grid run; returns the outcomes in grid order.

    Raises:
        TrackingError: the store stopped answering, or a disk filled up (``DiskFullError``): the grid stopped in a
            state the same call continues.
    """
    try:
        return _run_grid(grid, opts, tracker, seeds, executor)
    except TrackingError:
        raise
    except Exception as err:  # e.g. a full disk while the grid run itself is written
        stop = tracker.stopped(err)
        if stop is None:
            raise
        raise stop from None


def _run_grid(
    grid: Grid, opts: RunOptions, tracker: Tracker, seeds: Sequence[int] | None, executor: Executor | None
) -> GridOutcome:
    executor = executor or LocalExecutor()
    out = opts.out or sys.stdout
    seeds = list(seeds or grid.seeds)
    if opts.precision is not None:
        check_target(opts.precision, len(seeds))
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
    check_label_noise(data.noisy, [p.train.label_noise for p in plans])  # a CSV that cannot serve them: before any run
    plans = equalise_compute([p.bind(data.info) for p in plans])  # budget_unit = "flops": needs n_train
    ghash = grid_identity(grid, opts, seeds, data.info)
    parent = open_grid_run(tracker, grid, opts, seeds, ghash, data.info, out)
    with heartbeat(parent):
        done, busy = cell_runs(tracker, parent, checkpoints)
        if done or busy:
            print(f"grid run {parent.run_id}: {len(done)} cell runs already finished, {len(busy)} being trained by "
                  "another process (--force starts a new grid run)", file=out)  # fmt: skip
        tasks = [CellTask(p, done.get((p.cell, p.seed))) for p in plans if (p.cell, p.seed) not in busy]
        job = GridJob(grid, opts, tracker, parent, data)
        outcomes = _run_tasks(executor, tasks, job, parent, out)
        outcomes += [CellOutcome(p.cell, p.seed, "ELSEWHERE", busy[(p.cell, p.seed)]) for p in plans
                     if (p.cell, p.seed) in busy]  # fmt: skip
        extra = precision_plans(grid, opts, tracker, parent, plans, seeds, data.info, out) if opts.precision else []
        if extra:  # the seeds --precision asks for beyond the pilot: cell runs of this grid run like the others
            done, busy = cell_runs(tracker, parent, checkpoints)
            tasks = [CellTask(p, done.get((p.cell, p.seed))) for p in extra if (p.cell, p.seed) not in busy]
            outcomes += _run_tasks(executor, tasks, job, parent, out)
            outcomes += [CellOutcome(p.cell, p.seed, "ELSEWHERE", busy[(p.cell, p.seed)]) for p in extra
                         if (p.cell, p.seed) in busy]  # fmt: skip
            plans += extra
        wall = time.perf_counter() - t0
        outcomes.sort(key=lambda o: next(p.index for p in plans if (p.cell, p.seed) == (o.cell, o.seed)))
        finish_grid_run(tracker, parent, plans, wall, out, grid)
    print(summary_table(outcomes), file=out)
    print(f"grid {grid.name}: {len(plans)} cell runs in {format_time(wall)}; parent run {parent.run_id}", file=out)
    return GridOutcome(parent.run_id, outcomes, wall)


def precision_plans(
    grid: Grid,
    opts: RunOptions,
    tracker: Tracker,
    parent: Run,
    pilot: Sequence[CellPlan],
    seeds: Sequence[int],
    data_info: dict,
    out,
) -> list[CellPlan]:
    """The extra cell runs ``--precision`` asks for (``precision.py``), planned from the pilot's results in the
    store and logged on the grid run (planned seeds per comparison, ``precision.json``); none until every pilot
    cell run finished (a rerun plans them then)."""
    target = opts.precision
    assert target is not None
    done, _ = cell_runs(tracker, parent, end_stale=False)
    if any((p.cell, p.seed) not in done for p in pilot):
        print("precision: the pilot did not finish on every cell and seed; the extra seeds are planned when a rerun "
              "has finished it", file=out)  # fmt: skip
        return []
    cells = [(c.name, frozenset(c.techniques)) for c in grid.cells]
    values = pilot_values(tracker, parent, [c.name for c in grid.cells], seeds)
    sweep = {c.name: (c.sweep.arm, c.sweep.value_text, c.sweep.reference) for c in grid.cells if c.sweep}
    comparisons = plan_comparisons(cells, values, seeds, target, sweep)
    parent.log_metrics({schema.precision_planned_n(c.label): c.plan.planned for c in comparisons
                        if c.plan is not None}, step=0)  # fmt: skip
    parent.log_dict(plan_record(comparisons, target, seeds), schema.PRECISION_JSON)
    for c in comparisons:
        if c.plan is None:
            print(f"precision: {c.label}: {c.reason}", file=out)
            continue
        capped = f", capped at {c.plan.max_seeds} (needs {c.plan.needed})" if c.plan.capped else ""
        print(f"precision: {c.label} ({c.metric}): pilot {c.plan.n0} seeds, s0 {c.plan.s0:.2f} points -> "
              f"{c.plan.planned} seeds{capped}, half-width {c.plan.half_width(c.plan.planned):.2f} points "
              f"(target {target.half_width:g}; {PROCEDURE})", file=out)  # fmt: skip
    runs = extra_runs(comparisons, seeds)
    if not runs:
        return []
    all_seeds = sorted({*seeds, *(s for extra in runs.values() for s in extra)})
    wanted = {(cell, s) for cell, extra in runs.items() for s in extra}
    chosen = [p.bind(data_info) for p in make_plans(grid, all_seeds, opts, git_commit()) if (p.cell, p.seed) in wanted]
    total = len(pilot) + len(chosen)
    spans = [f"{c} seed {v[0]}" if len(v) == 1 else f"{c} seeds {v[0]}-{v[-1]}" for c, v in runs.items()]
    print(f"precision: {len(chosen)} extra cell runs ({', '.join(spans)})", file=out)
    return [dataclasses.replace(p, index=len(pilot) + i, total=total) for i, p in enumerate(chosen, 1)]


def pilot_values(
    tracker: Tracker, parent: Run, cells: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, dict[int, float]]]:
    """cell -> summary metric -> seed -> value over the finished cell runs of ``parent`` for the pilot ``seeds``."""
    df = tracker.search_runs(f"tags.`{schema.PARENT}` = '{parent.run_id}'")
    values: dict[str, dict[str, dict[int, float]]] = {c: {} for c in cells}
    for _, row in df.iterrows():
        cell, seed = row.get(f"tags.{schema.CELL}"), int(row.get(f"tags.{schema.SEED}", -1))
        if cell not in values or seed not in seeds or row.get(f"tags.{schema.COMPLETE}") != "true":
            continue
        if row["status"] != "FINISHED":
            continue
        for column, value in row.items():
            if str(column).startswith("metrics.") and value == value and value is not None:
                values[cell].setdefault(str(column)[len("metrics.") :], {})[seed] = float(value)
    return values


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


def finish_grid_run(
    tracker: Tracker, parent: Run, plans: Sequence[CellPlan], wall: float, out, grid: Grid | None = None
) -> None:
    """End the grid run unless another process still trains some of its cells: FINISHED (and complete) when
    every cell x seed has a complete run, else FAILED. The counts come from the store, not this process, and so
    does the summary table of the grid run's description (``grid``'s, when given)."""
    done, busy = cell_runs(tracker, parent, end_stale=False)
    missing = [p for p in plans if (p.cell, p.seed) not in done]
    parent.log_metrics({schema.WALL_TIME: wall, schema.CELLS_FAILED: len(missing) - len(busy),
                        schema.CELLS_FINISHED: len(done)}, step=0)  # fmt: skip
    if busy:
        print(f"grid run {parent.run_id} stays RUNNING: another process is still training {len(busy)} of its "
              "cells and ends it when done", file=out)  # fmt: skip
        return
    if grid is not None:
        children = tracker.search_runs(f"tags.`{schema.PARENT}` = '{parent.run_id}'")
        judged = sorted({t.judged_by for p in plans for t in p.techniques if t.judged_by})
        parent.set_description(_grid_note(grid, plans, children, judged))
    if not missing:
        parent.set_tags({schema.COMPLETE: "true"})
    parent.end("FAILED" if missing else "FINISHED")


def _grid_note(grid: Grid, plans: Sequence[CellPlan], children=None, judged: Sequence[str] = ()) -> str:
    seeds = sorted({p.seed for p in plans})
    profile = plans[0].profile if plans else ""
    return grid_note(grid.name, grid.description, [c.name for c in grid.cells], seeds, profile, children, judged)


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
            **sweep_tags(grid),
            schema.NOTE: grid_note(grid.name, grid.description, [c.name for c in grid.cells], seeds, opts.profile.name),
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
            **({schema.CELLS_LEFT_OUT: list(grid.left_out)} if grid.left_out else {}),
            schema.EPOCHS_SCALE: opts.epochs_scale,
            schema.DEVICE: str(opts.device),
            schema.DESCRIPTION: grid.description,
            schema.CELL_TECHNIQUES: {c.name: list(c.techniques) for c in grid.cells},
            schema.CHECKPOINT_DIR: str(opts.checkpoint_dir),
            **{schema.data_param(k): v for k, v in data_info.items()},
            **(
                {
                    schema.PRECISION_HALF_WIDTH: opts.precision.half_width,
                    schema.PRECISION_MAX_SEEDS: opts.precision.max_seeds,
                    schema.PRECISION_PROCEDURE: PROCEDURE,
                }
                if opts.precision is not None
                else {}
            ),
        }
    )
    parent.log_datasets(data_specs(opts.data, data_info))
    parent.log_dict({c.name: list(c.techniques) for c in grid.cells}, schema.CELL_TECHNIQUES_JSON)
    if grid.source and not grid.source.startswith("<"):
        with contextlib.suppress(OSError):
            parent.log_file(grid.source, schema.GRID_FOLDER)
    return parent


def sweep_tags(grid: Grid) -> dict[str, str]:
    """A sweep grid run's ``sweep_key``, ``sweep_reference`` and (budget grids) ``budget_unit``."""
    if grid.sweep is None:
        return {}
    tags = {schema.SWEEP_KEY: grid.sweep.key, schema.SWEEP_REFERENCE: grid.sweep.reference}
    if grid.sweep.unit is not None:
        tags[schema.BUDGET_UNIT] = grid.sweep.unit
    return tags


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
    except DiskFullError:
        with contextlib.suppress(Exception):  # resumable; a sqlite store on the full disk refuses at once
            parent.end("KILLED")
        raise
    except TrackingError:
        raise  # the store is gone: trying to mark the grid run would only wait through the retries again
    except Exception as err:
        stop = job.tracker.stopped(err)
        if isinstance(stop, DiskFullError):
            with contextlib.suppress(Exception):
                parent.end("KILLED")
        if stop is not None:
            raise stop from None
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
