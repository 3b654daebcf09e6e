"""Run a grid: one MLflow parent run, one child run per cell and seed, resumable.

A cell's identity is the hash of everything that determines its numbers (resolved hyperparameters,
techniques, dataset identity, seed). A rerun of the same grid reuses the unfinished parent, skips children
that completed (tag ``sota_ablate.complete``), and marks children a killed process left RUNNING as FAILED.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from sota_ablate.config import TrainConfig, apply_overrides, config_hash, scale_epoch_count
from sota_ablate.data import DataConfig, ImageData, load_data
from sota_ablate.executors.base import CellTask, Executor, GridJob
from sota_ablate.grid import Cell, Grid, cell_params, resolve_cell
from sota_ablate.models import count_parameters
from sota_ablate.profiles import Profile
from sota_ablate.progress import ConsoleProgress, epoch_table, format_time
from sota_ablate.techniques import TECHNIQUE_ORDER, Technique
from sota_ablate.tracking import Run, Tracker, default_checkpoint_dir, git_commit, mask_uri
from sota_ablate.train.checkpoint import (
    CheckpointWriter,
    checkpoint_path,
    delete_checkpoint,
    ensure_writable,
    load_checkpoint,
    records_of,
    restore,
)
from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.loop import EpochRecord, LoopObserver, NonFiniteLossError, fit
from sota_ablate.train.state import Stage, TrainState, build_state

log = logging.getLogger(__name__)

COMPLETE_TAG = "sota_ablate.complete"
FAILURE_TAG = "sota_ablate.failure"  # why a cell run failed or was interrupted (removed when it is resumed)
FAILURE_TYPE_TAG = "sota_ablate.failure_type"  # the exception's class name
# data.info keys that describe how the data was loaded this time, not which data: not part of any identity.
VOLATILE_DATA_KEYS = frozenset({"cache_hit", "cache_seconds", "cache_folder"})


def data_identity(data: ImageData) -> dict[str, Any]:
    return {k: v for k, v in data.info.items() if k not in VOLATILE_DATA_KEYS}


IMAGENETTE_NAMES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}


@dataclass
class RunOptions:
    """Everything ``run-grid`` needs besides the grid."""

    profile: Profile
    data: DataConfig
    device: torch.device
    epochs_scale: float = 1.0
    log_model: bool = False
    force: bool = False
    progress_bar: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line recipe overrides
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    # Epoch checkpoints (``train/checkpoint.py``). run_grid fills in the default (``checkpoints/`` next to a
    # sqlite store, else in the working directory); None when calling run_cell directly: no checkpoints.
    checkpoint_dir: str | None = None


@dataclass
class CellOutcome:
    cell: str
    seed: int
    status: str  # FINISHED | FAILED | SKIPPED
    run_id: str
    accuracy: float | None = None
    tta_accuracy: float | None = None
    wall_time_s: float = 0.0
    error: str = ""


@dataclass
class GridOutcome:
    parent_run_id: str
    outcomes: list[CellOutcome]
    wall_time_s: float

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]


def base_config(profile: Profile, overrides: dict[str, Any]) -> TrainConfig:
    cfg = apply_overrides(TrainConfig(), profile.train, where=f"profile {profile.name!r}")
    return apply_overrides(cfg, overrides, where="the command line")


def resolve(cell: Cell, seed: int, opts: RunOptions) -> tuple[TrainConfig, list[Technique]]:
    """The cell's final config and techniques: profile < grid < cell < command line, epochs scaled."""
    base = base_config(opts.profile, {})
    cfg, techniques = resolve_cell(cell, base, opts.profile.techniques)
    cfg = apply_overrides(cfg, opts.overrides, where="the command line")
    scale = opts.epochs_scale * opts.profile.epochs_scale
    cfg = dataclasses.replace(cfg, epochs=scale_epoch_count(cfg.epochs, scale), seed=seed)
    techniques = [t.scale_epochs(scale) for t in techniques]
    cfg.validate(where="--set" if opts.overrides else "")  # the cell alone was valid (resolve_cell checked it)
    return cfg, techniques


def techniques_label(names: Sequence[str]) -> str:
    ordered = [n for n in TECHNIQUE_ORDER if n in names] + sorted(n for n in names if n not in TECHNIQUE_ORDER)
    return ",".join(ordered) or "none"


class TrackingObserver(LoopObserver):
    """Logs each epoch to the child run in one batch call and keeps the records for the artifacts."""

    def __init__(self, run: Run, records: Sequence[EpochRecord] = ()) -> None:
        self.run = run
        self.records: list[EpochRecord] = list(records)  # a resumed run starts with the checkpoint's records
        self.last: EvalResult | None = None

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        self.run.log_params(
            {
                "dtype": s.dtype,
                "total_steps": total_steps,
                "channels_last": s.channels_last,
                "stages": [dataclasses.asdict(st) for st in stages],
            }
        )

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        self.records.append(record)
        self.last = result
        self.log_epoch(record)

    def backfill(self, records: Sequence[EpochRecord]) -> None:
        """Log the records the run lacks (a process killed between writing the checkpoint and logging)."""
        logged = self.run.logged_steps("accuracy")
        for record in records:
            if record.epoch not in logged:
                self.log_epoch(record)

    def log_epoch(self, record: EpochRecord) -> None:
        self.run.log_metrics(
            {
                "train_loss": record.train_loss,
                "valid_loss": record.valid_loss,
                "accuracy": record.accuracy,
                "epoch_time_s": record.epoch_time_s,
                "train_time_s": record.train_time_s,
                "valid_time_s": record.epoch_time_s - record.train_time_s,
                "images_per_s": record.images_per_s,
                "lr": record.lr,
                "image_size": record.size,
            },
            step=record.epoch,
        )


class Observers(LoopObserver):
    def __init__(self, *observers: LoopObserver) -> None:
        self.observers = observers

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        for o in self.observers:
            o.start(s, total_steps, stages)

    def batch(self) -> None:
        for o in self.observers:
            o.batch()

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        for o in self.observers:
            o.epoch(record, result)

    def finish(self) -> None:
        for o in self.observers:
            o.finish()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CPU and every CUDA device


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[list[int]]:
    idx = labels.cpu().long() * n_classes + predictions.cpu().long()
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes).tolist()


def run_cell(
    cell: Cell,
    seed: int,
    data: ImageData,
    opts: RunOptions,
    tracker: Tracker,
    parent: Run,
    grid: Grid,
    run_name: str,
    observer: LoopObserver | None = None,
) -> CellOutcome:
    """Train one cell for one seed in its own child run. Failures are recorded, not raised (Ctrl-C is).

    ``observer`` also sees the training loop's events, after the run has logged them (executors use it).
    """
    from sota_ablate import plots

    cfg, techniques = resolve(cell, seed, opts)
    params = cell_params(cell, cfg, techniques)
    identity = {
        **params,
        **{f"data.{k}": v for k, v in data_identity(data).items()},
        "techniques": sorted(cell.techniques),
    }
    chash = config_hash(identity)
    label = techniques_label(cell.techniques)
    tags = {
        "grid": grid.name,
        "cell": cell.name,
        "techniques": label,
        "seed": seed,
        "config_hash": chash,
        "profile": opts.profile.name,
        "git_commit": git_commit(),
        "device": opts.device.type,
        **{f"technique.{t}": "true" for t in cell.techniques},
    }
    out = opts.out
    ckpt_file = checkpoint_path(opts.checkpoint_dir, chash) if opts.checkpoint_dir else None
    ckpt = resumable_checkpoint(ckpt_file, chash, tracker, parent) if ckpt_file is not None else None
    if ckpt is not None:
        child = tracker.reopen_run(ckpt["meta"]["run_id"], system_metrics=True)
    else:
        child = tracker.start_run(run_name, tags=tags, parent=parent, system_metrics=True)
    restored = records_of(ckpt) if ckpt is not None else []
    start = time.perf_counter() - (ckpt["elapsed_s"] if ckpt is not None else 0.0)  # wall time of all attempts
    try:
        if ckpt is not None:
            child.delete_tags([FAILURE_TAG, FAILURE_TYPE_TAG])
            child.set_tags(
                {"sota_ablate.resumed_from_epoch": ckpt["next_epoch"], "sota_ablate.resumes": ckpt["resumes"] + 1}
            )
            print(
                f"resuming run {child.run_id} ({ckpt['previous_status']}) after epoch {ckpt['next_epoch'] - 1} "
                f"from {ckpt_file}",
                file=out,
                flush=True,
            )
        child.log_params(
            {
                **params,
                **{f"data.{k}": v for k, v in data.info.items()},
                "techniques": label,
                "profile": opts.profile.name,
                "device": str(opts.device),
                "seed": seed,
                "cell": cell.name,
                "grid": grid.name,
                "checkpoint_dir": opts.checkpoint_dir or "none",
            }
        )
        seed_everything(seed)
        n_out = cfg.n_out or len(data.classes)
        if n_out < len(data.classes):
            raise ValueError(f"n_out = {n_out} is smaller than the {len(data.classes)} classes in the data")
        s = build_state(cfg, data, opts.device, n_out)
        child.log_params({"model.parameters": count_parameters(s.model), "model.n_out": n_out})
        tracking = TrackingObserver(child, records=restored)
        console = ConsoleProgress(run_name, stream=out, bar=opts.progress_bar)
        checkpointing: list[LoopObserver] = []
        if ckpt_file is not None:  # first: the checkpoint is on disk before the epoch is logged
            meta = {"run_id": child.run_id, "parent_run_id": parent.run_id, "cell": cell.name, "seed": seed}
            elapsed = time.perf_counter() - start
            checkpointing.append(CheckpointWriter(ckpt_file, chash, meta, restored, elapsed, out=out))
        start_epoch, resume = 0, None
        if ckpt is not None:
            tracking.backfill(restored)
            start_epoch, resume = ckpt["next_epoch"], _restorer(ckpt)
        records = restored + fit(
            s,
            techniques,
            Observers(*checkpointing, console, tracking, *([observer] if observer else [])),
            start_epoch=start_epoch,
            resume=resume,
        )
        wall = time.perf_counter() - start
        final = records[-1]
        summary = {
            "final_accuracy": final.accuracy,
            "final_valid_loss": final.valid_loss,
            "wall_time_s": wall,
            "train_time_total_s": sum(r.train_time_s for r in records),
            "mean_epoch_time_s": sum(r.epoch_time_s for r in records) / len(records),
            "mean_images_per_s": sum(r.images_per_s for r in records) / len(records),
            **s.final_metrics,
        }
        child.log_metrics(summary, step=final.epoch)
        # Artifacts: resolved config, epoch table (CSV and text), learning curve, confusion matrix.
        child.log_dict(
            {
                "cell": cell.name,
                "seed": seed,
                "techniques": label,
                "config_hash": chash,
                "params": {k: v if not isinstance(v, tuple) else list(v) for k, v in params.items()},
                "data": data.info,
            },
            "config.json",
        )
        child.log_text(records_csv(records), "epochs.csv")
        child.log_text(epoch_table(records, with_stage=len({r.stage for r in records}) > 1) + "\n", "epochs.txt")
        fig = plots.learning_curve(records, f"{run_name}: {label}")
        child.log_figure(fig, "learning_curve.png")
        plots.close(fig)
        predictions = tracking.last.predictions if tracking.last is not None else (ckpt or {}).get("predictions")
        if predictions is not None:
            cm = confusion_matrix(predictions, data.valid.labels, len(data.classes))
            names = [IMAGENETTE_NAMES.get(c, c) for c in data.classes]
            child.log_dict({"classes": list(data.classes), "matrix": cm}, "confusion_matrix.json")
            fig = plots.confusion_matrix_figure(cm, names, f"{run_name}: confusion matrix")
            child.log_figure(fig, "confusion_matrix.png")
            plots.close(fig)
        if opts.log_model:
            child.log_state_dict(s.model.state_dict())
        child.set_tags({COMPLETE_TAG: "true"})
        child.end("FINISHED")
        if ckpt_file is not None:
            delete_checkpoint(ckpt_file)  # a finished cell needs none
        extra = f", tta_accuracy {s.final_metrics['tta_accuracy']:.4f}" if "tta_accuracy" in s.final_metrics else ""
        print(
            f"-> {run_name}: accuracy {final.accuracy:.4f}{extra} in {format_time(wall)}\n",
            file=out,
            flush=True,
        )
        return CellOutcome(
            cell.name,
            seed,
            "FINISHED",
            child.run_id,
            final.accuracy,
            s.final_metrics.get("tta_accuracy"),
            wall,
        )
    except KeyboardInterrupt:
        child.set_tags({FAILURE_TAG: "interrupted (Ctrl-C / SIGTERM)", FAILURE_TYPE_TAG: "KeyboardInterrupt"})
        child.end("KILLED")
        if ckpt_file is not None and ckpt_file.is_file():
            print(f"\n{run_name}: run {child.run_id} KILLED; its last finished epoch is kept in {ckpt_file}", file=out)
        raise
    except Exception as err:
        reason = mask_uri(failure_reason(err, opts.device))
        log.debug("cell %s failed", run_name, exc_info=True)
        child.set_tags({FAILURE_TAG: reason[:5000], FAILURE_TYPE_TAG: type(err).__name__})
        child.log_text(mask_uri(traceback.format_exc()), "traceback.txt")
        child.end("FAILED")
        if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next cell starts with the memory this one held
        print(f"!! {run_name} FAILED: {reason}\n", file=out, flush=True)
        return CellOutcome(
            cell.name, seed, "FAILED", child.run_id, wall_time_s=time.perf_counter() - start, error=reason
        )


def resumable_checkpoint(path: Path, chash: str, tracker: Tracker, parent: Run) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it can continue its run: same config hash, and the run it was written for
    is an unfinished child of ``parent`` (KILLED, FAILED or marked so after a crash; never one that is RUNNING
    in another process). Adds ``previous_status`` and ``resumes`` (how often the run was resumed before)."""
    payload = load_checkpoint(path, chash)
    run_id = payload["meta"].get("run_id") if payload is not None else None
    found = tracker.run_status(run_id) if run_id else None
    if payload is None or found is None:
        return None
    status, tags = found
    if tags.get("mlflow.parentRunId") != parent.run_id or status == "RUNNING":
        return None
    if status == "FINISHED" and tags.get(COMPLETE_TAG) == "true":
        return None
    if any(step >= payload["next_epoch"] for step, _ in tracker.metric_history(run_id, "accuracy")):
        return None  # the run logged epochs the checkpoint lacks: continuing would log them twice
    payload["previous_status"] = status
    payload["resumes"] = int(tags.get("sota_ablate.resumes", "0") or 0)
    return payload


def _restorer(payload: dict[str, Any]) -> Any:
    def resume(s: TrainState) -> None:
        restore(s, payload)

    return resume


def failure_reason(err: BaseException, device: torch.device) -> str:
    """One line on why a cell failed: the exception, a fix for the common cases, and the technique it came from."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, torch.OutOfMemoryError):
        reason = (
            f"out of memory on {device}: lower the batch size (--set batch_size=N), the image size or the model, "
            f"or free the device ({reason[:300]})"
        )
    elif isinstance(err, NonFiniteLossError):
        reason = f"non-finite loss: {err}"
    frames = traceback.extract_tb(err.__traceback__)
    techniques = [Path(f.filename).stem for f in frames if Path(f.filename).parent.name == "techniques"]
    if techniques:
        reason += f" (in technique {techniques[-1]!r})"
    return reason


def records_csv(records: Sequence[EpochRecord]) -> str:
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    buf.write(",".join(fields) + "\n")
    for r in records:
        buf.write(",".join(str(getattr(r, f)) for f in fields) + "\n")
    return buf.getvalue()


def grid_identity(grid: Grid, opts: RunOptions, seeds: Sequence[int], data: ImageData) -> str:
    payload = {
        "grid": grid.name,
        "cells": [(c.name, sorted(c.techniques), c.overrides) for c in grid.cells],
        "seeds": list(seeds),
        "profile": opts.profile.name,
        "epochs_scale": opts.epochs_scale,
        "overrides": opts.overrides,
        "data": data_identity(data),
    }
    return config_hash(payload)


def _find_parent(tracker: Tracker, ghash: str) -> Any:
    df = tracker.search_runs(f"tags.grid_hash = '{ghash}'")
    if df.empty:
        return None
    df = df.sort_values("start_time", ascending=False)
    return df.iloc[0]


def run_grid(
    grid: Grid,
    opts: RunOptions,
    tracker: Tracker,
    seeds: Sequence[int] | None = None,
    executor: Executor | None = None,
) -> GridOutcome:
    """Train every cell x seed of ``grid`` under one parent run (in this process unless ``executor`` says
    otherwise, e.g. a Ray cluster); returns the outcomes in grid order."""
    from sota_ablate.executors.local import LocalExecutor

    executor = executor or LocalExecutor()
    out = opts.out
    seeds = list(seeds or grid.seeds)
    # Resolve every cell first: bad settings fail before any data loading or training.
    for cell in grid.cells:
        for seed in seeds:
            resolve(cell, seed, opts)
    executor.check(tracker)  # e.g. Ray: a store every node can reach, before anything is created in it
    tracker.check()
    print(f"MLflow store: {mask_uri(tracker.uri)}  experiment: {tracker.experiment_name}", file=out)
    checkpoints = ensure_writable(opts.checkpoint_dir or default_checkpoint_dir(tracker.uri))
    opts = dataclasses.replace(opts, checkpoint_dir=str(checkpoints))
    t0 = time.perf_counter()
    data = load_data(opts.data, executor.data_device(opts.device))
    print(
        f"data: {data.info.get('n_train')} train / {data.info.get('n_valid')} valid images, "
        f"{len(data.classes)} classes, split {data.info.get('split')}, loaded in {time.perf_counter() - t0:.1f}s"
        + (f"; {data.info['bad_images']} unreadable image(s) skipped" if data.info.get("bad_images") else ""),
        file=out,
    )
    ghash = grid_identity(grid, opts, seeds, data)
    done: dict[tuple[str, int], str] = {}
    previous = None if opts.force else _find_parent(tracker, ghash)
    if previous is not None:
        parent = Run(tracker, previous["run_id"])
        tracker.mark_running(parent.run_id)
        children = tracker.search_runs(f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
        for _, row in children.iterrows():
            key = (row.get("tags.cell"), int(row.get("tags.seed", -1)))
            if row.get(f"tags.{COMPLETE_TAG}") == "true" and row["status"] == "FINISHED":
                done[key] = row["run_id"]
                if isinstance(row.get("tags.config_hash"), str):  # left by a crash after the cell finished
                    delete_checkpoint(checkpoint_path(checkpoints, row["tags.config_hash"]))
            elif row["status"] == "RUNNING":
                tracker.end_run(row["run_id"], "FAILED", "left RUNNING by a killed process")
        print(
            f"resuming grid run {parent.run_id}: {len(done)} cell runs already finished "
            "(--force starts a new grid run)",
            file=out,
        )
    else:
        parent = tracker.start_run(
            grid.name,
            tags={
                "grid": grid.name,
                "grid_hash": ghash,
                "profile": opts.profile.name,
                "sota_ablate.role": "grid",
                "git_commit": git_commit(),
                "device": opts.device.type,
            },
        )
        parent.log_params(
            {
                "grid": grid.name,
                "grid_file": grid.source,
                "profile": opts.profile.name,
                "profile.description": opts.profile.description,
                "seeds": seeds,
                "cells": [c.name for c in grid.cells],
                "epochs_scale": opts.epochs_scale,
                "device": str(opts.device),
                "description": grid.description,
                "cell_techniques": {c.name: list(c.techniques) for c in grid.cells},
                "checkpoint_dir": str(checkpoints),
                **{f"data.{k}": v for k, v in data.info.items()},
            }
        )
        parent.log_dict({c.name: list(c.techniques) for c in grid.cells}, "cell_techniques.json")
        if grid.source and not grid.source.startswith("<"):
            with contextlib.suppress(OSError):
                parent.log_file(grid.source, "grid")
    outcomes: list[CellOutcome] = []
    total = len(grid.cells) * len(seeds)
    tasks: list[CellTask] = []
    for seed in seeds:
        for cell in grid.cells:
            name = cell.name if len(seeds) == 1 else f"{cell.name}-seed{seed}"
            tasks.append(CellTask(len(tasks) + 1, total, cell, seed, name, done.get((cell.name, seed))))
    by_key = {(t.cell.name, t.seed): t for t in tasks}
    try:
        with contextlib.closing(executor.run(tasks, GridJob(grid, opts, tracker, parent, data))) as results:
            for outcome in results:
                outcomes.append(outcome)
                if outcome.status == "FINISHED":
                    name = by_key[(outcome.cell, outcome.seed)].name
                    parent.log_metrics({f"accuracy.{name}": outcome.accuracy or 0.0}, step=0)
    except KeyboardInterrupt:
        parent.end("KILLED")
        print(
            f"\ninterrupted: finished cells are kept in MLflow ({mask_uri(tracker.uri)}), the interrupted cell's "
            f"last finished epoch in {checkpoints}; the same command continues from there.",
            file=out,
        )
        raise
    except Exception as err:  # an error outside any cell (e.g. the store went away): never leave the grid RUNNING
        with contextlib.suppress(Exception):
            parent.set_tags({FAILURE_TAG: mask_uri(f"{type(err).__name__}: {err}")[:5000]})
            parent.end("FAILED")
        raise
    outcomes.sort(key=lambda o: by_key[(o.cell, o.seed)].index)
    wall = time.perf_counter() - t0
    failed = [o for o in outcomes if o.status == "FAILED"]
    parent.log_metrics(
        {
            "wall_time_s": wall,
            "cells_failed": len(failed),
            "cells_finished": sum(o.status != "FAILED" for o in outcomes),
        },
        step=0,
    )
    if not failed:
        parent.set_tags({COMPLETE_TAG: "true"})
    parent.end("FAILED" if failed else "FINISHED")
    print(summary_table(outcomes), file=out)
    print(f"grid {grid.name}: {total} cell runs in {format_time(wall)}; parent run {parent.run_id}", file=out)
    return GridOutcome(parent.run_id, outcomes, wall)


def summary_table(outcomes: Sequence[CellOutcome]) -> str:
    rows = [("cell", "seed", "status", "accuracy", "tta_accuracy", "time")]
    for o in outcomes:
        rows.append(
            (
                o.cell,
                str(o.seed),
                o.status,
                f"{o.accuracy:.4f}" if o.accuracy is not None else "-",
                f"{o.tta_accuracy:.4f}" if o.tta_accuracy is not None else "-",
                format_time(o.wall_time_s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
