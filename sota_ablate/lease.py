"""One writer per cell: runs claimed in the store with a heartbeat, so concurrent ``run-grid`` share the work.

MLflow has no compare-and-set, so a claim is optimistic: a process creates its run (RUNNING, with an owner and a
fresh heartbeat tag), then looks at every run of the same cell and seed under the same grid run: a complete one
(another process finished the cell meanwhile) wins, else the earliest (start time, then run id) alive one; a
process that did not win deletes its own run and leaves the cell to the winner. Two runs created at nearly the
same moment may each miss the other at that first look (a run's start time is taken before its row is written),
so the look is repeated before a cell run is marked complete: a run that is not the winner then is withdrawn, and
every cell ends with exactly one complete run.
Whatever the interleaving, every process sees the same winner, because each looks after its own run exists.

A run is **alive** while it is RUNNING and its heartbeat (a tag, refreshed every ``heartbeat_s`` by a background
thread) is younger than ``lease_s``, unless its owner (``host:pid``) is a process of this machine that no longer
exists; another process never marks an alive run FAILED. A run whose process died
stops beating and, after ``lease_s``, is stale: a rerun ends it FAILED (or continues it from its checkpoint).
Grid runs are claimed the same way: two ``run-grid`` of the same grid started together end up in one grid run.

``SOTA_ABLATE_HEARTBEAT_S`` (default 30) and ``SOTA_ABLATE_LEASE_S`` (default 180) set the two periods.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sota_ablate import schema
from sota_ablate.tracking import Run, Tracker

log = logging.getLogger(__name__)


def heartbeat_s() -> float:
    return float(os.environ.get("SOTA_ABLATE_HEARTBEAT_S", "30"))


def lease_s() -> float:
    return float(os.environ.get("SOTA_ABLATE_LEASE_S", "180"))


def owner() -> str:
    """Who holds a claim: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_tags() -> dict[str, str]:
    """The tags a new run starts with: its owner and a fresh heartbeat."""
    return {schema.OWNER: owner(), schema.HEARTBEAT: f"{time.time():.3f}"}


def _owner_gone(holder: Any) -> bool:
    """True when ``holder`` (``host:pid``) is a process of this machine that no longer exists."""
    if not isinstance(holder, str) or ":" not in holder:
        return False
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_alive(status: Any, heartbeat: Any, holder: Any = None, now: float | None = None) -> bool:
    """RUNNING with a heartbeat younger than the lease, and not held by a process of this machine that is gone
    (runs of versions without heartbeats are never alive)."""
    if status != "RUNNING" or not isinstance(heartbeat, str) or _owner_gone(holder):
        return False
    try:
        beat = float(heartbeat)
    except ValueError:
        return False
    return (now if now is not None else time.time()) - beat < lease_s()


def _start_ms(row: Any) -> float:
    start = row.get("start_time")
    return start.timestamp() * 1000 if hasattr(start, "timestamp") else math.inf


def winner(tracker: Tracker, filter_string: str, mine: str) -> tuple[str, bool]:
    """(the run id that holds the claim, whether it is finished) among the runs matching ``filter_string``:
    a complete run (finished meanwhile by another process) if there is one, else the earliest (start time,
    run id) of the alive runs, ``mine`` (the caller's own, just created) among them."""
    df = tracker.search_runs(filter_string)
    rivals: list[tuple[float, str]] = []
    for _, row in df.iterrows():
        if row["status"] == "FINISHED" and row.get(f"tags.{schema.COMPLETE}") == "true":
            return str(row["run_id"]), True
        heart, holder = row.get(f"tags.{schema.HEARTBEAT}"), row.get(f"tags.{schema.OWNER}")
        if row["run_id"] == mine or is_alive(row["status"], heart, holder):
            rivals.append((_start_ms(row), str(row["run_id"])))
    if all(run_id != mine for _, run_id in rivals):
        rivals.append((math.inf, mine))
    return min(rivals)[1], False


def cell_filter(parent_run_id: str, cell: str, seed: int) -> str:
    return f"tags.`{schema.PARENT}` = '{parent_run_id}' and tags.{schema.CELL} = '{cell}' and tags.{schema.SEED} = '{seed}'"


def grid_filter(grid_hash: str) -> str:
    return f"tags.{schema.GRID_HASH} = '{grid_hash}'"


@contextmanager
def heartbeat(run: Run) -> Iterator[None]:
    """Refresh ``run``'s heartbeat in a background thread while the block runs."""
    stop = threading.Event()
    period = heartbeat_s()

    def beat() -> None:
        while not stop.wait(period):
            try:
                run.tracker.client.set_tag(run.run_id, schema.HEARTBEAT, f"{time.time():.3f}")
            except Exception as err:  # an outage: the lease may lapse; the run itself reports the outage
                log.debug("heartbeat of %s failed: %s", run.run_id, err)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run.run_id[:8]}", daemon=True)
    run.tracker.client.set_tag(run.run_id, schema.HEARTBEAT, f"{time.time():.3f}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
