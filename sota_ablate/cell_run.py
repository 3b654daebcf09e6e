"""Train one cell x seed in its own MLflow run, from its plan: ``run_cell``, read top to bottom.

The run is claimed in the store (``lease.py``): when another process claimed the same cell first, the run is
withdrawn and the outcome is ELSEWHERE. A failure inside the cell (a diverged loss, out of memory, an exception in a technique) ends the run FAILED with
the reason as a tag and the traceback as an artifact, and is returned, not raised: the grid goes on. Ctrl-C and
SIGTERM end the run KILLED, keep its checkpoint and propagate.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from sota_ablate import interrupts, schema
from sota_ablate.artifacts import EpochLogger, judged_metrics, log_results
from sota_ablate.config import LR_FIND
from sota_ablate.data import ImageData
from sota_ablate.failures import failure_reason
from sota_ablate.lease import cell_filter, claim_tags, heartbeat, winner
from sota_ablate.lr_find import resolve_lr
from sota_ablate.models import count_parameters
from sota_ablate.plan import CellPlan, RunOptions
from sota_ablate.progress import ConsoleProgress, format_time
from sota_ablate.resume import checkpoint_file, reopen, restorer, resumable_checkpoint
from sota_ablate.run_datasets import data_specs
from sota_ablate.run_notes import cell_note
from sota_ablate.tracking import DiskFullError, Run, Tracker, mask_uri
from sota_ablate.train.checkpoint import CheckpointWriter, delete_checkpoint, records_of
from sota_ablate.train.compiled import compile_forward
from sota_ablate.train.loop import fit
from sota_ablate.train.record import LoopObserver, Observers
from sota_ablate.train.state import build_state


@dataclass
class CellOutcome:
    """What became of one cell x seed: FINISHED | FAILED | SKIPPED (finished by an earlier invocation) |
    ELSEWHERE (another process is training it)."""

    cell: str
    seed: int
    status: str
    run_id: str
    accuracy: float | None = None
    judged: dict[str, float] = field(default_factory=dict)  # e.g. tta_accuracy: see Technique.judged_by
    wall_time_s: float = 0.0
    error: str = ""


def run_cell(
    plan: CellPlan,
    data: ImageData,
    opts: RunOptions,
    tracker: Tracker,
    parent: Run,
    observer: LoopObserver | None = None,
) -> CellOutcome:
    """Train ``plan`` in a child run of ``parent`` (continuing its checkpoint when there is one).

    ``observer`` also sees the training loop's events, after the run has logged them (executors use it).
    """
    out = opts.out or sys.stdout
    ckpt_file = checkpoint_file(opts.checkpoint_dir, parent.run_id, plan.config_hash) if opts.checkpoint_dir else None
    ckpt = resumable_checkpoint(ckpt_file, plan.config_hash, tracker, parent) if ckpt_file else None
    if ckpt is not None:
        run = reopen(tracker, ckpt, claim_tags())
    else:
        tags = {**plan.tags, **claim_tags(), schema.NOTE: cell_note(plan)}
        run = tracker.start_run(plan.run_name, tags=tags, parent=parent, system_metrics=True)
        holder, finished = winner(tracker, cell_filter(parent.run_id, plan.cell, plan.seed), run.run_id)
        if holder != run.run_id:
            run.discard()
            what = "finished it" if finished else "is training it"
            print(f"{plan.run_name}: another process {what} (run {holder}), left to it", file=out)
            return CellOutcome(plan.cell, plan.seed, "SKIPPED" if finished else "ELSEWHERE", holder)
    if ckpt is not None:
        print(f"resuming run {run.run_id} ({ckpt['previous_status']}) after epoch {ckpt['next_epoch'] - 1} "
              f"from {ckpt_file}", file=out, flush=True)  # fmt: skip
    with heartbeat(run):
        return _train(plan, data, opts, run, parent, ckpt_file, ckpt, observer, out)


def _train(
    plan: CellPlan,
    data: ImageData,
    opts: RunOptions,
    run: Run,
    parent: Run,
    ckpt_file: Any,
    ckpt: dict[str, Any] | None,
    observer: LoopObserver | None,
    out: Any,
) -> CellOutcome:
    """The claimed run's training, results and end state."""
    restored = records_of(ckpt) if ckpt is not None else []
    start = time.perf_counter() - (ckpt["elapsed_s"] if ckpt is not None else 0.0)  # wall time of all attempts
    try:
        params = {**plan.params, schema.CHECKPOINT_DIR: opts.checkpoint_dir or "none"}
        if plan.train.lr == LR_FIND:  # logged once found (resolve_lr): the number this run trains with
            params.pop(schema.train_param("lr"))
        run.log_params(params)
        data = _training_labels(plan, data, run, out)
        run.log_datasets(data_specs(opts.data, data.info))
        torch.manual_seed(plan.seed)  # CPU and every CUDA device
        n_out = plan.train.n_out or len(data.classes)
        if n_out < len(data.classes):
            raise ValueError(f"n_out = {n_out} is smaller than the {len(data.classes)} classes in the data")
        s = build_state(plan.train, data, opts.device, n_out)
        if opts.compile:
            s.forward = compile_forward(s.model, cache_dir=opts.data.cache_root())
        run.log_params(
            {
                schema.MODEL_PARAMETERS: count_parameters(s.model),
                schema.MODEL_N_OUT: n_out,
                schema.COMPILE: opts.compile,
                schema.CELLS_PER_GPU: opts.cells_per_gpu,
                **schema.placement_params(data.placement.fields() if data.placement is not None else {}),
            }
        )
        resolve_lr(plan, s, run, ckpt, out)  # lr = "find": the finder's valley (the checkpoint's when resuming)
        logger = EpochLogger(run, plan, records=restored)
        extra = [k for t in plan.techniques for k in t.epoch_metric_keys]
        console = ConsoleProgress(plan.run_name, stream=out, bar=opts.progress_bar, extra=extra)
        writer: list[LoopObserver] = []
        if ckpt_file is not None:  # first: the checkpoint is on disk before the epoch is logged
            meta = {"run_id": run.run_id, "parent_run_id": parent.run_id, "cell": plan.cell, "seed": plan.seed,
                    "lr": s.cfg.lr}  # fmt: skip
            elapsed = time.perf_counter() - start
            writer.append(CheckpointWriter(ckpt_file, plan.config_hash, meta, restored, elapsed, out=out))
        if ckpt is not None:
            logger.backfill(restored)
        observers = Observers(*writer, console, logger, *([observer] if observer else []), _InterruptCheck())
        start_epoch, resume = (ckpt["next_epoch"], restorer(ckpt)) if ckpt is not None else (0, None)
        records = restored + fit(s, plan.techniques, observers, start_epoch=start_epoch, resume=resume)
        wall = time.perf_counter() - start
        predictions = logger.last.predictions if logger.last is not None else (ckpt or {}).get("predictions")
        holder, finished = winner(run.tracker, cell_filter(parent.run_id, plan.cell, plan.seed), run.run_id)
        if holder != run.run_id:  # a rival's run reached the store late: it holds the claim, ours is withdrawn
            run.discard()
            print(f"{plan.run_name}: run {holder} of another process holds this cell; ours is withdrawn", file=out)
            return CellOutcome(plan.cell, plan.seed, "SKIPPED" if finished else "ELSEWHERE", holder)
        probabilities = logger.last.probabilities if logger.last is not None else None
        log_results(run, plan, records, wall, s, data, predictions, opts.log_model, probabilities, opts.register_model)
        judged = judged_metrics(plan, s.final_metrics)
        run.set_tags({schema.NOTE: cell_note(plan, records, wall, judged), schema.COMPLETE: "true"})
        run.end("FINISHED")
        if ckpt_file is not None:
            delete_checkpoint(ckpt_file)  # a finished cell needs none
        extras = "".join(f", {k} {v:.4f}" for k, v in judged.items())
        print(f"-> {plan.run_name}: accuracy {records[-1].accuracy:.4f}{extras} in {format_time(wall)}\n", file=out,
              flush=True)  # fmt: skip
        return CellOutcome(plan.cell, plan.seed, "FINISHED", run.run_id, records[-1].accuracy, judged, wall)
    except KeyboardInterrupt:
        run.set_tags({schema.FAILURE: "interrupted (Ctrl-C / SIGTERM)", schema.FAILURE_TYPE: "KeyboardInterrupt"})
        run.end("KILLED")
        if ckpt_file is not None and ckpt_file.is_file():
            print(f"\n{plan.run_name}: run {run.run_id} KILLED; its last finished epoch is kept in {ckpt_file}",
                  file=out)  # fmt: skip
        raise
    except Exception as err:
        stop = run.tracker.stopped(err)  # a full disk or a store outage is not the cell's failure: stop the grid
        if stop is not None:
            _stopped(run, stop, err)
            raise stop from None
        try:
            return _failed(plan, run, err, opts.device, time.perf_counter() - start, out)
        except Exception as store_err:
            stop = run.tracker.stopped(store_err)  # the store went away (or its disk filled) recording the failure
            if stop is not None:
                _stopped(run, stop, store_err)
                raise stop from None
            raise


class _InterruptCheck(LoopObserver):
    """Last observer: an interrupt whose KeyboardInterrupt was dropped (``interrupts.raise_if_requested``) ends the
    cell after the batch, once the observers before it have written the epoch's checkpoint and metrics."""

    def batch(self) -> None:
        interrupts.raise_if_requested()

    def epoch(self, record: Any, result: Any) -> None:
        interrupts.raise_if_requested()


def _stopped(run: Run, stop: Exception, err: Exception) -> None:
    """After a full disk, end the run KILLED (resumable) when the store still takes that write (a full artifact
    disk, sqlite fails at once); after an outage, try nothing: it would wait through the retries again. A run left
    RUNNING is ended by the rerun (its owner is gone) and continued from its checkpoint."""
    if not isinstance(stop, DiskFullError):
        return
    with contextlib.suppress(Exception):
        run.set_tags({schema.FAILURE: str(stop)[:5000], schema.FAILURE_TYPE: type(err).__name__})
        run.end("KILLED")


def _training_labels(plan: CellPlan, data: ImageData, run: Run, out: Any) -> ImageData:
    """The data with the cell's training labels (``train.label_noise``), their source and flip rate logged."""
    data, noise = data.with_label_noise(plan.train.label_noise)
    run.log_params({
        schema.LABEL_NOISE_SOURCE: noise["source"],
        schema.LABEL_NOISE_FLIPPED: noise["flipped"],
        schema.LABEL_NOISE_FLIP_FRACTION: noise["flip_fraction"],
    })  # fmt: skip
    if plan.train.label_noise:
        print(f"{plan.run_name}: label noise {plan.train.label_noise} % ({noise['source']}): {noise['flipped']} of "
              f"{len(data.train)} training labels wrong ({noise['flip_fraction']:.2%})", file=out)  # fmt: skip
    return data


def _failed(plan: CellPlan, run: Run, err: Exception, device: Any, wall: float, out: Any) -> CellOutcome:
    """End the run FAILED with the reason (tag) and the traceback (artifact)."""
    reason = mask_uri(failure_reason(err, device))
    run.set_tags({schema.FAILURE: reason[:5000], schema.FAILURE_TYPE: type(err).__name__})
    run.log_text(mask_uri(traceback.format_exc()), schema.TRACEBACK)
    run.end("FAILED")
    if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next cell starts with the memory this one held
    print(f"!! {plan.run_name} FAILED: {reason}\n", file=out, flush=True)
    return CellOutcome(plan.cell, plan.seed, "FAILED", run.run_id, wall_time_s=wall, error=reason)
