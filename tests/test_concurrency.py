"""Two ``run-grid`` of the same grid on one store, at the same time: every cell FINISHED exactly once.

Real processes (``python -m sota_ablate``), one of them paused for a while (SIGSTOP) in the middle of a cell, as a
slow or suspended machine would be: neither marks the other's live runs FAILED, neither trains a cell the other
holds, and the grid run ends FINISHED once, by whichever process finishes last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import make_image_folder

from sota_ablate.tracking import Tracker

GRID = """
name = "shared"
seeds = [0, 1]
generate = "one_at_a_time"
techniques = ["mixup", "label_smoothing"]
"""


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SOTA_ABLATE_HEARTBEAT_S": "1", "SOTA_ABLATE_LEASE_S": "30"}
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "sota_ablate", *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_two_concurrent_grid_runs_share_the_cells(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "shared.toml"
    grid.write_text(GRID)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(uri, "sota_ablate").check()  # the store exists before both start (see mlflow-notes: schema races)
    args = ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--tracking-uri", uri]
    args += ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    # the decode cache once, so that both processes start training at about the same time
    assert subprocess.run([sys.executable, "-m", "sota_ablate", *args, "--cells", "baseline", "--experiment", "warm"],
                          capture_output=True).returncode == 0  # fmt: skip
    first = _start(args, tmp_path / "first.log")
    second = _start(args, tmp_path / "second.log")
    deadline = time.monotonic() + 120
    while "[1/6]" not in (tmp_path / "second.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    second.send_signal(signal.SIGSTOP)  # a slow machine: the second stalls inside its first cell
    time.sleep(6)
    second.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    parents = runs[runs["tags.sota_ablate.role"] == "grid"]
    children = runs[runs["tags.sota_ablate.role"] != "grid"]
    assert len(parents) == 1, parents[["run_id", "status"]]
    assert parents.iloc[0]["status"] == "FINISHED" and parents.iloc[0]["tags.sota_ablate.complete"] == "true"
    finished = children[children["status"] == "FINISHED"]
    keys = sorted(zip(finished["tags.cell"], finished["tags.seed"], strict=True))
    expected = sorted((c, s) for c in ("baseline", "mixup", "label_smoothing", "all") for s in ("0", "1"))
    assert keys == expected, keys  # every cell x seed exactly once
    assert (finished["tags.sota_ablate.complete"] == "true").all()
    failure = finished.get("tags.sota_ablate.failure")
    assert failure is None or failure.isna().all(), failure  # no finished run carries a failure tag
    assert len(children) == len(finished), children[["tags.cell", "tags.seed", "status"]]  # none FAILED
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    assert "another process is training it" in logs or "being trained by another process" in logs


def test_the_claim_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process computes the same winner: a complete run, else the earliest alive one; stale or orphaned runs
    (heartbeat too old, or an owner process of this machine that is gone) hold nothing."""
    from sota_ablate import schema
    from sota_ablate.lease import cell_filter, claim_tags, winner

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "claims")
    parent = tracker.start_run("grid")
    tags = {schema.CELL: "a", schema.SEED: 0}
    first = tracker.start_run("a", tags={**tags, **claim_tags()}, parent=parent)
    time.sleep(0.05)
    second = tracker.start_run("a", tags={**tags, **claim_tags()}, parent=parent)
    where = cell_filter(parent.run_id, "a", 0)
    assert winner(tracker, where, first.run_id) == (first.run_id, False)
    assert winner(tracker, where, second.run_id) == (first.run_id, False)  # both agree: the earlier one
    second.set_tags({schema.HEARTBEAT: f"{time.time() - 3600:.3f}"})  # a run whose heartbeat stopped long ago
    first.set_tags({schema.OWNER: "elsewhere:1"})
    assert winner(tracker, where, first.run_id) == (first.run_id, False)
    first.set_tags({schema.OWNER: f"{__import__('socket').gethostname()}:999999999"})  # its owner is gone
    assert winner(tracker, where, second.run_id) == (second.run_id, False)  # only mine is left
    second.set_tags({schema.COMPLETE: "true"})
    second.end("FINISHED")
    third = tracker.start_run("a", tags={**tags, **claim_tags()}, parent=parent)
    assert winner(tracker, where, third.run_id) == (second.run_id, True)  # finished meanwhile: nothing to do


def test_writers_racing_to_insert_the_same_rows_both_succeed(tmp_path: Path) -> None:
    """MLflow checks for a dataset (and an experiment) and inserts it in separate steps: two ``run-grid`` logging the
    same dataset at the same moment made the slower one fail with ``UNIQUE constraint failed`` (CI, d2b6489 + 1).
    Eight threads, each its own client, start together on one sqlite store: every one creates or finds the
    experiment and logs the same two datasets to its own run; one dataset row each, eight runs that use them."""
    import threading

    from sota_ablate import schema
    from sota_ablate.tracking import DatasetSpec

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(uri, "warm").check()  # the schema once (mlflow-notes: migrations race); the experiment is left to race
    specs = [
        DatasetSpec(f"images/{context}", "d" * 32, str(tmp_path), context, {"images": 12})
        for context in (schema.DATASET_TRAINING, schema.DATASET_VALIDATION)
    ]
    barrier = threading.Barrier(8, timeout=60)  # a thread that failed breaks it: the others stop, no hang
    errors: list[BaseException] = []

    def write() -> None:
        try:
            tracker = Tracker(uri, "raced")
            barrier.wait()
            run = tracker.start_run("cell")
            barrier.wait()  # all eight runs exist: now the datasets, at once
            run.log_datasets(specs)
            run.end()
        except Exception as err:
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=write, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, [e for e in errors if not isinstance(e, threading.BrokenBarrierError)] or errors
    client = mlflow.tracking.MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == "raced"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 8 and all(len(r.inputs.dataset_inputs) == 2 for r in runs)
