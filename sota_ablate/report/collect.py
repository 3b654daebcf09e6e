"""Read a grid back from MLflow: the parent run(s), one tidy row per (cell, seed), per-epoch metric histories.

Everything comes through ``Tracker.search_runs`` (``mlflow.search_runs``) and ``Tracker.metric_history``; no local
side files. Params come back from MLflow as strings and are cast here (``cast_param``): JSON numbers, booleans
and lists become Python values, everything else stays a string.

A cell run is **complete** only with the tag ``sota_ablate.complete = "true"`` and status FINISHED (run status
alone is not trustworthy, see the shared mlflow notes). Every (cell, seed) the grid asked for (the parent's
``cells`` and ``seeds`` params) gets a row; those without a child run are ``missing``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sota_ablate import schema
from sota_ablate.grid import parse_grid
from sota_ablate.report import stats
from sota_ablate.report.keys import param, tag
from sota_ablate.report.predictions import Predictions, read_predictions
from sota_ablate.techniques import TECHNIQUES


class ReportError(RuntimeError):
    """No grid to report on; the message says what was looked for and how to fix it."""


def cast_param(value: Any) -> Any:
    """An MLflow param string as a Python value: ``"3"`` -> 3, ``"1e-3"`` -> 0.001, ``"[0, 1]"`` -> [0, 1],
    ``"true"`` -> True, ``"official"`` -> ``"official"``; None and NaN stay None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def run_state(status: str | None, complete_tag: Any) -> str:
    """complete | running | failed | killed | incomplete (FINISHED without the completion tag)."""
    if complete_tag == "true" and status == "FINISHED":
        return "complete"
    return {"RUNNING": "running", "SCHEDULED": "running", "FAILED": "failed", "KILLED": "killed"}.get(
        status or "", "incomplete"
    )


def tidy_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """``search_runs`` output as a tidy frame: params cast, metrics as floats, convenience columns first.

    Columns: ``run_id, parent_id, run_name, cell, seed, techniques, state, failure, start_time, end_time``,
    then every ``params.*`` (cast), ``metrics.*`` and ``tags.*`` column of the input.
    """
    if raw.empty:
        return pd.DataFrame(columns=["run_id", "parent_id", "run_name", "cell", "seed", "techniques", "state"])
    out = pd.DataFrame(index=raw.index)

    def column(name: str) -> pd.Series:
        return raw[name] if name in raw.columns else pd.Series([None] * len(raw), index=raw.index)

    out["run_id"] = raw["run_id"]
    out["parent_id"] = column(tag(schema.PARENT))
    out["run_name"] = column(tag(schema.RUN_NAME))
    out["cell"] = column(tag(schema.CELL))
    out["seed"] = [int(s) if _is_set(s) else None for s in column(tag(schema.SEED))]
    out["techniques"] = [t if _is_set(t) else "none" for t in column(tag(schema.TECHNIQUES))]
    out["state"] = [run_state(s, c) for s, c in zip(raw["status"], column(tag(schema.COMPLETE)), strict=True)]
    out["failure"] = [f if _is_set(f) else "" for f in column(tag(schema.FAILURE))]
    out["start_time"] = raw.get("start_time")
    out["end_time"] = raw.get("end_time")
    extra: dict[str, Any] = {}
    for col in raw.columns:
        if col.startswith("params."):
            extra[col] = [cast_param(v) for v in raw[col]]
        elif col.startswith("metrics."):
            extra[col] = pd.to_numeric(raw[col], errors="coerce")
        elif col.startswith("tags."):
            extra[col] = raw[col]
    return pd.concat([out, pd.DataFrame(extra, index=raw.index)], axis=1).reset_index(drop=True)


@dataclass
class GridData:
    """One grid (or several parents of it, ``--all-seeds``), read back from MLflow.

    Attributes:
        grid: the grid's name.
        parents: tidy rows of the parent run(s), newest first; ``parents.iloc[0]`` is the primary one.
        runs: one row per expected (cell, seed): the chosen child run (complete preferred, then newest), or a
            ``missing`` placeholder; also children of cells the parents did not list.
        cells: the cells in grid order.
        seeds: the seeds asked for, sorted.
        histories: run id -> per-epoch frame (index: 0-based global epoch; columns: every run's per-epoch keys,
            ``schema.base_epoch_metric_keys()``, and those its techniques added, its ``epoch_metric_keys`` param).
        notes: remarks from collecting (parents left out of an aggregation, duplicate runs, ...).
        planned: cell -> techniques from the grid file logged with the grid run (for cells without runs).
        description: the grid file's description.
        predictions: run id -> its per-image predictions (``predictions.Predictions``; runs without the artifact
            are absent).
        system_cpu: run id -> mean of its ``system/cpu_utilization_percentage`` history (runs without it absent).
    """

    grid: str
    parents: pd.DataFrame
    runs: pd.DataFrame
    cells: list[str]
    seeds: list[int]
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    planned: dict[str, frozenset[str]] = field(default_factory=dict)
    description: str = ""
    predictions: dict[str, Predictions] = field(default_factory=dict)
    system_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def parent(self) -> pd.Series:
        return self.parents.iloc[0]

    @property
    def parent_id(self) -> str:
        return str(self.parent["run_id"])

    def parent_param(self, key: str, default: Any = None) -> Any:
        value = self.parent.get(param(key))
        return value if _is_set(value) else default

    def cell_rows(self, cell: str, state: str | None = "complete") -> pd.DataFrame:
        """The rows of one cell (only those in ``state`` unless None), sorted by seed."""
        rows = self.runs[self.runs["cell"] == cell]
        if state is not None:
            rows = rows[rows["state"] == state]
        return rows.sort_values("seed")

    def values(self, cell: str, column: str) -> dict[int, float]:
        """seed -> value of ``column`` (e.g. ``metrics.final_accuracy``) over the complete runs of ``cell``."""
        rows = self.cell_rows(cell)
        if column not in rows.columns:
            return {}
        return {int(r["seed"]): float(r[column]) for _, r in rows.iterrows() if _is_set(r[column])}

    def first(self, cell: str, column: str, default: Any = None) -> Any:
        """``column`` of the cell's first complete run (params are the same for every seed)."""
        rows = self.cell_rows(cell)
        if rows.empty:
            rows = self.cell_rows(cell, state=None)
            rows = rows[rows["run_id"].notna()]
        if rows.empty or column not in rows.columns:
            return default
        value = rows.iloc[0][column]
        return value if _is_set(value) else default

    def technique_set(self, cell: str) -> frozenset[str]:
        """The cell's techniques: from its runs' ``techniques`` tag, else from the grid file."""
        if self.first(cell, "run_id") is None:
            return self.planned.get(cell, frozenset())
        label = self.first(cell, "techniques", "none")
        return frozenset() if label in (None, "none", "") else frozenset(label.split(","))

    def techniques_used(self) -> frozenset[str]:
        """Every technique of any cell of the grid."""
        return frozenset().union(*(self.technique_set(c) for c in self.cells))

    def full_recipe(self) -> frozenset[str] | None:
        """All techniques combined: every technique of the grid, when those include
        every step of the chapter (each registered technique whose report section has a ``chapter_step``); None
        for grids that do not cover the chapter (a factorial over three techniques)."""
        everything = self.techniques_used()
        entries = TECHNIQUES.entries()
        steps = {n for n, t in entries.items() if t.report is not None and t.report.chapter_step is not None}
        return everything if len(everything) > 1 and steps <= everything else None

    def cell_predictions(self, cell: str) -> dict[int, Predictions]:
        """seed -> per-image predictions of the cell's complete runs that have them."""
        out = {}
        for _, row in self.cell_rows(cell).iterrows():
            pred = self.predictions.get(row["run_id"])
            if pred is not None:
                out[int(row["seed"])] = pred
        return out

    def history(self, run_id: str | None) -> pd.DataFrame | None:
        return self.histories.get(run_id) if run_id else None


def _parents(tracker: Any) -> pd.DataFrame:
    raw = tracker.search_runs(f"tags.`{schema.ROLE}` = '{schema.ROLE_GRID}'")
    if raw.empty:
        return tidy_runs(raw)
    return tidy_runs(raw.sort_values("start_time", ascending=False))


def latest_grid_runs(tracker: Any) -> list[tuple[str, str]]:
    """(grid name, run id of its newest grid run) for every grid in the experiment, newest first."""
    if tracker.find_experiment_id() is None:
        return []
    out: list[tuple[str, str]] = []
    for _, row in _parents(tracker).iterrows():
        grid = row.get(tag(schema.GRID)) or row.get("run_name") or "grid"
        if _is_set(grid) and str(grid) not in {g for g, _ in out}:
            out.append((str(grid), str(row["run_id"])))
    return out


def select_parents(tracker: Any, run_id: str | None = None, all_seeds: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The parent run(s) to report on, newest first, and notes about the choice.

    Args:
        tracker: a ``Tracker`` (its experiment must exist).
        run_id: a parent run id; default the newest parent run of the experiment.
        all_seeds: also take every other parent of the same grid, profile and epoch scale.

    Raises:
        ReportError: no parent run, or ``run_id`` is not one.
    """
    where = f"experiment {tracker.experiment_name!r} of {tracker.uri}"
    if tracker.find_experiment_id() is None:
        raise ReportError(f"no experiment {tracker.experiment_name!r} in {tracker.uri}: run a grid first (run-grid)")
    parents = _parents(tracker)
    if parents.empty:
        raise ReportError(f"no grid run in {where}: run `python -m sota_ablate run-grid` first")
    if run_id:
        chosen = parents[parents["run_id"] == run_id]
        if chosen.empty:
            hint = ""
            child = tracker.search_runs(f"attributes.run_id = '{run_id}'")
            if not child.empty and tag(schema.PARENT) in child.columns:
                parent_id = child.iloc[0][tag(schema.PARENT)]
                if _is_set(parent_id):
                    hint = f"; it is a cell run, its grid run is {parent_id}"
            raise ReportError(f"run {run_id} is not a grid run in {where}{hint}")
        primary = chosen.iloc[0]
    else:
        primary = parents.iloc[0]
    notes: list[str] = []
    if not all_seeds:
        return parents[parents["run_id"] == primary["run_id"]].reset_index(drop=True), notes

    def key(row: pd.Series) -> tuple[Any, ...]:
        return (row.get(tag(schema.GRID)), row.get(tag(schema.PROFILE)), row.get(param(schema.EPOCHS_SCALE)))

    same = parents[[key(r) == key(primary) for _, r in parents.iterrows()]]
    other_same_grid = parents[
        (parents[tag(schema.GRID)] == primary.get(tag(schema.GRID))) & ~parents["run_id"].isin(same["run_id"])
    ]
    if not other_same_grid.empty:
        notes.append(
            f"{len(other_same_grid)} other run(s) of grid {primary.get(tag(schema.GRID))!r} left out of the "
            "aggregation: "
            "different profile or epoch scale."
        )
    data_prefix = param(schema.DATA_PREFIX)
    data_cols = [c for c in same.columns if c.startswith(data_prefix) and not c.endswith(("cache_hit", "seconds"))]
    data_cols = [c for c in data_cols if not c.endswith("cache_folder")]
    for col in data_cols:
        if len({json.dumps(v, sort_keys=True, default=str) for v in same[col]}) > 1:
            notes.append(
                f"the aggregated grid runs differ in `{col[len(param('')) :]}`: their seeds saw different data."
            )
    # the primary first, then the others newest first
    same = pd.concat([same[same["run_id"] == primary["run_id"]], same[same["run_id"] != primary["run_id"]]])
    return same.reset_index(drop=True), notes


def _children(tracker: Any, parent_ids: list[str]) -> pd.DataFrame:
    frames = [tracker.search_runs(f"tags.`{schema.PARENT}` = '{pid}'") for pid in parent_ids]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return tidy_runs(pd.DataFrame())
    return tidy_runs(pd.concat(frames, ignore_index=True))


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def choose_runs(
    children: pd.DataFrame, cells: list[str], seeds: list[int], extra: Mapping[str, Iterable[int]] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """One row per (cell, seed): complete runs first, then the newest; ``missing`` rows for the rest: the grid's
    ``seeds`` of every cell and the ``extra`` seeds ``--precision`` planned for a cell (cell -> seeds)."""
    notes: list[str] = []
    rank = {"complete": 0, "running": 1, "incomplete": 2, "failed": 3, "killed": 4}
    rows: list[pd.Series] = []
    seen: set[tuple[str, int]] = set()
    if not children.empty:
        ordered = children.assign(
            _rank=[rank.get(s, 9) for s in children["state"]],
            _start=pd.to_datetime(children["start_time"], errors="coerce"),
        ).sort_values(["_rank", "_start"], ascending=[True, False])
        for _, row in ordered.iterrows():
            key = (row["cell"], row["seed"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(row.drop(labels=["_rank", "_start"]))
        duplicates = len(children) - len(rows)
        if duplicates:
            notes.append(f"{duplicates} older or superseded cell run(s) of the same cell and seed are not shown.")
    for cell in cells:
        for seed in sorted({*seeds, *(extra or {}).get(cell, ())}):
            if (cell, seed) not in seen:
                rows.append(pd.Series({"run_id": None, "cell": cell, "seed": seed, "state": "missing"}))
    frame = pd.DataFrame(rows).reset_index(drop=True)
    order = {c: i for i, c in enumerate(cells)}
    frame["_order"] = [order.get(c, len(order)) for c in frame["cell"]]
    frame = frame.sort_values(["_order", "cell", "seed"]).drop(columns="_order").reset_index(drop=True)
    return frame, notes


def history_keys(logged: Any = None) -> list[str]:
    """The per-epoch keys to read for a run whose ``epoch_metric_keys`` param is ``logged`` (None for runs older
    than that param): every run's keys, then those the run's techniques added."""
    if isinstance(logged, str):
        logged = [k.strip() for k in logged.split(",") if k.strip()]
    return schema.epoch_metric_keys(str(k) for k in logged) if isinstance(logged, list) else schema.epoch_metric_keys()


def histories(tracker: Any, runs: Iterable[tuple[str, Any]]) -> dict[str, pd.DataFrame]:
    """run id -> frame of per-epoch metrics (index: step = global epoch), for (run id, its ``epoch_metric_keys``
    param) pairs."""
    out: dict[str, pd.DataFrame] = {}
    for run_id, logged in runs:
        series = {}
        for key in history_keys(logged):
            points = tracker.metric_history(run_id, key)
            if points:
                series[key] = pd.Series({step: value for step, value in points}, dtype=float)
        frame = pd.DataFrame(series).sort_index()
        frame.index.name = "epoch"
        out[run_id] = frame
    return out


def precision_extra_runs(tracker: Any, parent: pd.Series) -> dict[str, list[int]]:
    """cell -> the extra seeds ``run-grid --precision`` planned for it (``precision.json``); {} without a plan."""
    if not _is_set(parent.get(param(schema.PRECISION_HALF_WIDTH))):
        return {}
    text = tracker.read_artifact_text(str(parent["run_id"]), schema.PRECISION_JSON)
    try:
        planned = json.loads(text).get("extra_runs", {}) if text else {}
        return {str(cell): [int(s) for s in seeds] for cell, seeds in planned.items()}
    except (ValueError, TypeError, AttributeError):  # a damaged plan: the seeds that ran are still shown
        return {}


def grid_plan(tracker: Any, parent: pd.Series) -> tuple[dict[str, frozenset[str]], str]:
    """(cell -> techniques, description) from the grid file the grid run logged (``grid/<file>``), if readable."""
    grid_file = parent.get(param(schema.GRID_FILE))
    if not isinstance(grid_file, str) or grid_file.startswith("<"):
        return {}, ""
    text = tracker.read_artifact_text(
        str(parent["run_id"]), f"{schema.GRID_FOLDER}/{grid_file.replace(chr(92), '/').split('/')[-1]}"
    )
    if not text:
        return {}, ""
    try:
        grid = parse_grid(tomllib.loads(text), source=grid_file)
    except Exception as err:  # an old or hand-edited grid file: the report works without it
        return {}, f"(grid file not readable: {err})"
    return {c.name: frozenset(c.techniques) for c in grid.cells}, grid.description


def config_signature(row: pd.Series) -> dict[str, Any]:
    """What must be equal for two cell runs to be seeds of one recipe: every resolved hyperparameter (the seed
    aside), the techniques and the data's identity (how it was loaded aside)."""
    out = {}
    for column, value in row.items():
        key = str(column)
        if key == param(schema.train_param("seed")) or not _is_set(value):
            continue
        recipe = key.startswith((param(schema.TRAIN_PREFIX), param(schema.TECH_PREFIX)))
        data = key.startswith(param(schema.DATA_PREFIX)) and not key.startswith(param(schema.data_param("cache_")))
        if recipe or data:
            out[key] = value
    out[tag(schema.TECHNIQUES)] = row.get(tag(schema.TECHNIQUES))
    return out


def same_configs(parents: pd.DataFrame, children: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Keep only the grid runs whose cells are configured exactly like the primary's (``parents.iloc[0]``), the
    seed aside; the notes say which grid runs were left out and in what they differ."""
    primary = str(parents.iloc[0]["run_id"])
    reference: dict[str, dict[str, Any]] = {}
    for _, row in children[children["parent_id"] == primary].iterrows():
        reference.setdefault(str(row["cell"]), config_signature(row))
    dropped: dict[str, str] = {}
    for _, row in children[children["parent_id"] != primary].iterrows():
        parent, cell = str(row["parent_id"]), str(row["cell"])
        if parent in dropped or cell not in reference:
            continue
        ours, theirs = reference[cell], config_signature(row)
        differ = sorted(k for k in set(ours) | set(theirs) if json.dumps(ours.get(k), default=str) != json.dumps(
            theirs.get(k), default=str))  # fmt: skip
        if differ:
            key = differ[0]
            names = [k.split(".", 1)[1] for k in differ[:3]]
            dropped[parent] = (
                f"grid run `{parent[:8]}` left out of the aggregation: its cell `{cell}` differs from grid run "
                f"`{primary[:8]}` in {', '.join(f'`{n}`' for n in names)}{' and more' if len(differ) > 3 else ''} "
                f"({names[0]} {theirs.get(key)!r} vs {ours.get(key)!r}): only runs that differ in the seed alone "
                "are averaged."
            )
    keep_parents = parents[~parents["run_id"].isin(list(dropped))].reset_index(drop=True)
    keep_children = children[~children["parent_id"].isin(list(dropped))].reset_index(drop=True)
    return keep_parents, keep_children, list(dropped.values())


def collect_grid(tracker: Any, run_id: str | None = None, all_seeds: bool = False) -> GridData:
    """Everything the report needs about one grid, from MLflow.

    Args:
        tracker: a ``Tracker``.
        run_id: the grid (parent) run; default the newest one in the experiment.
        all_seeds: aggregate every parent run of the same grid (same profile and epoch scale).

    Raises:
        ReportError: nothing to report on.
    """
    parents, notes = select_parents(tracker, run_id, all_seeds)
    primary = parents.iloc[0]
    grid = primary.get(tag(schema.GRID)) or primary.get(param(schema.GRID)) or primary.get("run_name") or "grid"
    cells: list[str] = []
    seeds: set[int] = set()
    # grid order: the longest cell list first (a --cells selection is a subset of the grid's order)
    for cell_list in sorted(
        (_as_list(p.get(param(schema.CELLS))) for _, p in parents.iterrows()), key=len, reverse=True
    ):
        cells += [c for c in cell_list if c not in cells]
    for _, p in parents.iterrows():
        seeds |= {int(s) for s in _as_list(p.get(param(schema.SEEDS)))}
    children = _children(tracker, list(parents["run_id"]))
    if len(parents) > 1 and not children.empty:
        parents, children, left_out = same_configs(parents, children)
        notes += left_out
        seeds = set()
        for _, p in parents.iterrows():
            seeds |= {int(s) for s in _as_list(p.get(param(schema.SEEDS)))}
    extra: dict[str, set[int]] = {}  # --precision's extra seeds: expected of the cells it planned them for only
    for _, p in parents.iterrows():
        for cell, planned in precision_extra_runs(tracker, p).items():
            extra.setdefault(cell, set()).update(planned)
    if not children.empty:
        cells += [c for c in children["cell"].dropna().unique() if c not in cells]
        for cell, seed in zip(children["cell"], children["seed"], strict=True):
            if _is_set(cell) and _is_set(seed) and int(seed) not in seeds:
                extra.setdefault(str(cell), set()).add(int(seed))
    runs, more = choose_runs(children, cells, sorted(seeds), extra)
    seeds |= set().union(*extra.values()) if extra else set()
    notes += more
    keys_column = param(schema.EPOCH_METRIC_KEYS)
    logged = runs[keys_column] if keys_column in runs.columns else pd.Series([None] * len(runs), index=runs.index)
    run_keys = [(r, k) for r, k in zip(runs["run_id"], logged, strict=True) if _is_set(r)]
    planned, description = grid_plan(tracker, primary)
    complete = [r for r, state in zip(runs["run_id"], runs["state"], strict=True) if _is_set(r) and state == "complete"]
    predictions = {r: p for r in complete if (p := read_predictions(tracker, r)) is not None}
    system_cpu = {}
    for run_id in complete:
        points = tracker.metric_history(run_id, schema.SYSTEM_CPU)
        if points:
            system_cpu[run_id] = stats.mean([v for _, v in points])
    return GridData(
        grid=str(grid),
        parents=parents,
        runs=runs,
        cells=cells,
        seeds=sorted(seeds),
        histories=histories(tracker, run_keys),
        notes=notes,
        planned=planned,
        description=description,
        predictions=predictions,
        system_cpu=system_cpu,
    )
