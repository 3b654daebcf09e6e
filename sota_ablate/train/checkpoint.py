"""Epoch checkpoints: everything a cell needs to continue after its last finished epoch, bit for bit.

A checkpoint is one file, ``<folder>/<key>.pt`` (the runner's key: the grid run's id and the cell's config hash,
so no other grid run, experiment or ``--force`` run can load or delete it), rewritten after every finished epoch atomically (a
temporary file in the same folder, flushed and fsynced, then ``os.replace``): a crash at any moment leaves
the previous checkpoint or the new one, never a torn file. The config hash covers every hyperparameter, the
techniques, the data identity and the seed, and is repeated inside the file, so a different config never
loads it.

Contents: the model, optimizer and GradScaler states; the loop position (the next global epoch, the global
step, the current stage's smoothed train loss and its count, see ``loop.py``); the RNG states (torch CPU,
every initialised CUDA device, python ``random``, numpy's global generator); the epoch records so far and the
last epoch's validation predictions; and ``meta`` (the MLflow run it belongs to, cell, seed). Files are read
with ``torch.load(weights_only=True)``: no pickled code runs.

This module knows nothing about MLflow or the runner: the caller passes the folder. An executor whose workers
do not share a disk gives each worker a local folder and ships the file (or passes none: no checkpoints).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.record import EpochRecord, LoopObserver
from sota_ablate.train.state import Stage, TrainState

log = logging.getLogger(__name__)

FORMAT = "sota_ablate-checkpoint-v1"
SUFFIX = ".pt"


class CheckpointError(RuntimeError):
    """The checkpoint folder cannot be used; the message names it and the fix."""


def checkpoint_path(folder: str | Path, key: str) -> Path:
    """The checkpoint file for ``key`` (letters, digits and ``-`` only: it becomes a file name)."""
    if not key or not all(c.isalnum() or c == "-" for c in key):
        raise ValueError(f"checkpoint key {key!r} is not a plain alphanumeric string")
    return Path(folder) / f"{key}{SUFFIX}"


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it; returns it as an absolute path.

    Raises:
        CheckpointError: the folder cannot be created or written.
    """
    path = Path(folder).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True):
            pass
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoints to {path} ({err.strerror or err}): pass --checkpoint-dir DIR with a "
            "writable folder."
        ) from None
    return path


# ---------------------------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> dict[str, Any]:
    """The state of every random generator training may use (torch CPU and CUDA, python, numpy)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants tuples all the way down; serialisation may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# ---------------------------------------------------------------------------------------------------------------
# Capture, save, load, restore


def capture(
    s: TrainState,
    config_hash: str,
    records: Sequence[EpochRecord],
    predictions: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    elapsed_s: float = 0.0,
) -> dict[str, Any]:
    """The checkpoint of ``s`` right after the epoch ``records[-1]`` (smoothed loss: ``s.smooth_loss``)."""
    smooth = s.smooth_loss if s.smooth_loss is not None else torch.zeros(())
    return {
        "format": FORMAT,
        "config_hash": config_hash,
        "meta": dict(meta or {}),
        "next_epoch": records[-1].epoch + 1 if records else 0,
        "step": s.step,
        "smooth_loss": smooth.detach().float().cpu(),
        "smooth_count": s.smooth_count,
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict(),
        "rng": rng_state(),
        "records": [r.to_dict() for r in records],
        "predictions": predictions.cpu() if predictions is not None else None,
        "elapsed_s": float(elapsed_s),
        "saved_at": time.time(),
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, config_hash: str, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable and belongs to ``config_hash``; else None.

    A missing file is the normal case (None, silently); an unreadable file or another config's file is
    reported as a warning and ignored (the cell then starts from scratch and overwrites it).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        log.warning("ignoring the unreadable checkpoint %s: %s", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        log.warning("ignoring %s: not a %s file", path, FORMAT)
        return None
    if payload.get("config_hash") != config_hash:
        log.warning("ignoring %s: it belongs to config %s, not %s", path, payload.get("config_hash"), config_hash)
        return None
    return payload


def restore(s: TrainState, payload: dict[str, Any]) -> None:
    """Put a checkpoint back into ``s``: call after the techniques' ``setup`` (the scaler) and before training.

    The RNG states are restored last, so nothing after this call and before the next batch draws from them
    differently than the interrupted run did.
    """
    s.model.load_state_dict(payload["model"])
    s.optimizer.load_state_dict(payload["optimizer"])
    if payload["scaler"]:
        s.scaler.load_state_dict(payload["scaler"])
    s.step = int(payload["step"])
    s.smooth_loss = payload["smooth_loss"].to(s.device)
    s.smooth_count = int(payload["smooth_count"])
    set_rng_state(payload["rng"])


def records_of(payload: dict[str, Any]) -> list[EpochRecord]:
    """The epoch records stored in a checkpoint."""
    return [EpochRecord.from_dict(r) for r in payload["records"]]


def delete_checkpoint(path: str | Path) -> None:
    """Remove a checkpoint (a finished cell needs none); a missing file is fine."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not delete the checkpoint %s: %s", path, err)


class CheckpointWriter(LoopObserver):
    """Writes the checkpoint after every finished epoch; put it FIRST among the observers.

    Written before the epoch's metrics are logged, a checkpoint always covers at least every epoch the
    tracking store has, so a resumed run never logs an epoch twice (it only back-fills what the store lacks).
    A checkpoint that cannot be written (disk full, folder gone: any exception, torch's serialiser raises
    RuntimeError for a full disk) is reported once on ``out`` and checkpointing stops for this cell; training goes
    on.
    """

    def __init__(
        self,
        path: str | Path,
        config_hash: str,
        meta: dict[str, Any] | None = None,
        records: Sequence[EpochRecord] = (),
        elapsed_s: float = 0.0,
        out: IO[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.config_hash = config_hash
        self.meta = dict(meta or {})
        self.records = list(records)
        self.out = out or sys.stderr
        self.enabled = True
        self._elapsed_before = elapsed_s
        self._t0 = time.perf_counter()
        self._s: TrainState | None = None

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        self._s = s

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        assert self._s is not None, "start() was not called"
        self.records.append(record)
        elapsed = self._elapsed_before + time.perf_counter() - self._t0
        if not self.enabled:
            return
        payload = capture(self._s, self.config_hash, self.records, result.predictions, self.meta, elapsed)
        try:
            save_checkpoint(self.path, payload)
        except Exception as err:
            self.enabled = False
            delete_checkpoint(self.path)  # an older one would resume behind the epochs already logged
            print(f"warning: no more checkpoints for this cell: cannot write {self.path} ({err})", file=self.out)
