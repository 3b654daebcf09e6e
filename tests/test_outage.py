"""A tracking server that goes down for good in the middle of a grid: a bounded wait, one ``error:`` line with the
command that continues, and, once the server is back, that command finishes every cell exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from conftest import make_image_folder

from sota_ablate.server import free_port, start_server, stop_server
from sota_ablate.tracking import Tracker

GRID = """
name = "outage"
[defaults]
epochs = 300                   # x 0.01 (smoke profile) = 3 epochs per cell
[[cells]]
name = "a"
techniques = []
[[cells]]
name = "b"
techniques = ["label_smoothing"]
"""

QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # the server's request log


def test_server_outage_is_bounded_and_the_rerun_repairs_it(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "outage.toml"
    grid.write_text(GRID)
    port = free_port()
    backend = f"sqlite:///{tmp_path}/mlflow.db"
    server = start_server(backend, port, artifacts_destination=str(tmp_path / "artifacts"), **QUIET)
    uri = f"http://127.0.0.1:{port}"
    Tracker(uri, "sota_ablate").check()
    args = [sys.executable, "-m", "sota_ablate", "run-grid", "--profile", "smoke", "--grid", str(grid), "--data",
            str(folder), "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # fmt: skip
    log = tmp_path / "first.log"
    with log.open("w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("0 ") for line in log.read_text().splitlines()) and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        stop_server(server)  # gone for good, mid-cell
        down = time.monotonic()
        rc = proc.wait(timeout=240)
        waited = time.monotonic() - down
    finally:
        proc.kill()
        stop_server(server)
    text = log.read_text()
    assert rc == 2, text
    assert waited < 90, waited  # bounded by the retry budget, not MLflow's default minutes
    assert "error: the MLflow tracking store" in text and "stopped answering" in text, text
    assert "to continue, run:" in text and "python -m sota_ablate run-grid" in text
    assert "Traceback" not in text

    server = start_server(backend, port, artifacts_destination=str(tmp_path / "artifacts"), **QUIET)
    try:
        again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    finally:
        stop_server(server)
    assert again.returncode == 0, again.stdout + again.stderr
    mlflow.set_tracking_uri(backend)
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    cells = runs[runs["tags.sota_ablate.role"] != "grid"]
    finished = cells[cells["status"] == "FINISHED"]
    assert sorted(finished["tags.cell"]) == ["a", "b"], cells[["tags.cell", "status"]]
    assert (finished["tags.sota_ablate.complete"] == "true").all()
    assert set(cells["status"]) <= {"FINISHED", "FAILED"}  # nothing left RUNNING
    parents = runs[runs["tags.sota_ablate.role"] == "grid"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
