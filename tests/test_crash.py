"""Crashes and failures of a real ``run-grid`` process: SIGTERM, SIGKILL mid-cell, a rerun of the same command;
failures inside a cell (diverging loss, out of memory, an exception in a technique) recorded and skipped past."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from sota_ablate.cli import main
from sota_ablate.report.collect import collect_grid
from sota_ablate.tracking import Tracker
from tests.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name = "crash"
seeds = [0]

[defaults]
epochs = 200                   # x 0.01 (smoke profile) = 2 epochs per cell

[[cells]]
name = "c1"
techniques = []
epochs = 100                   # 1 epoch

[[cells]]
name = "c2"
techniques = ["label_smoothing"]

[[cells]]
name = "c3"
techniques = ["normalize"]
"""


def _args(tmp: Path, grid: Path, folder: Path, experiment: str = "crash") -> list[str]:
    return [
        "run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder),
        "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--cache-dir", str(tmp / "cache"),
        "--experiment", experiment, "--device", "cpu",
    ]  # fmt: skip


class Process:
    """``python -m sota_ablate ...`` with its stdout read line by line on a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sota_ablate", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_first_epoch(self, cell: str, timeout_s: float = 240.0) -> None:
        """Block until the epoch table of ``cell`` shows its epoch 0 (checkpointed by then)."""
        deadline = time.monotonic() + timeout_s
        in_cell = False
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended before {cell} trained an epoch:\n{''.join(self.out)}")
            self.out.append(line)
            if re.match(rf"\[\d+/\d+\] {cell}:", line):
                in_cell = True
            elif in_cell and re.match(r"0\s+\d", line):
                return
        raise AssertionError(f"no epoch of {cell} within {timeout_s} s:\n{''.join(self.out)}")

    def stop(self, sig: signal.Signals) -> tuple[int, str]:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=120)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()


def _children(tmp: Path, experiment: str = "crash") -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    df = mlflow.search_runs(experiment_names=[experiment])
    return df[df["tags.mlflow.parentRunId"].notna()]


def _runs(tmp: Path, experiment: str = "crash") -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def test_sigterm_sigkill_and_rerun(tmp_path: Path, capsys) -> None:
    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "crash.toml"
    grid.write_text(GRID)
    args = _args(tmp_path, grid, folder)
    checkpoints = tmp_path / "checkpoints"

    # 1. SIGTERM while c2 trains its second epoch: c2 and the grid run end KILLED, c2's checkpoint stays, and the
    #    message gives the exact command to continue.
    first = Process(args, cwd=tmp_path)
    first.wait_for_first_epoch("c2")
    rc, err = first.stop(signal.SIGTERM)
    assert rc == 130, err
    assert "to continue from the last finished epoch, run:\n  python -m sota_ablate run-grid --profile smoke" in err
    assert f"--tracking-uri sqlite:///{tmp_path}/mlflow.db" in err and "Traceback" not in err
    runs = _runs(tmp_path)
    by_cell = {r["tags.cell"]: r for _, r in runs[runs["tags.mlflow.parentRunId"].notna()].iterrows()}
    assert set(by_cell) == {"c1", "c2"}
    assert by_cell["c1"]["status"] == "FINISHED" and by_cell["c2"]["status"] == "KILLED"
    assert by_cell["c2"]["tags.sota_ablate.failure"].startswith("interrupted")
    grid_run = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert grid_run["status"] == "KILLED"
    assert [p.name for p in checkpoints.glob("*.pt")] == [
        f"{grid_run['run_id']}-{by_cell['c2']['tags.config_hash']}.pt"
    ]
    c2_run = by_cell["c2"]["run_id"]

    # 2. The same command continues c2 in the same run; SIGKILL (no handler runs) while c3 trains its second epoch.
    second = Process(args, cwd=tmp_path)
    second.wait_for_first_epoch("c3")
    rc, _ = second.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert any(f"resuming run {c2_run} (KILLED) after epoch" in line for line in second.out), second.out
    children = _children(tmp_path)
    states = {r["tags.cell"]: (r["run_id"], r["status"]) for _, r in children.iterrows()}
    assert states["c2"] == (c2_run, "FINISHED") and states["c3"][1] == "RUNNING" and len(children) == 3
    killed_c3 = states["c3"][0]
    # A kill before c3's first checkpoint (or on a worker that lost its disk): no checkpoint to continue from.
    for p in checkpoints.glob("*.pt"):
        p.unlink()

    # 3. The same command again: c3's orphan RUNNING run becomes FAILED and c3 trains anew; nothing else reruns.
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("already finished (run") == 2
    runs = _runs(tmp_path)
    assert "RUNNING" not in set(runs["status"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    complete = children[(children["status"] == "FINISHED") & (children["tags.sota_ablate.complete"] == "true")]
    assert sorted(complete["tags.cell"]) == ["c1", "c2", "c3"]  # every cell finished exactly once
    assert len(runs[runs["tags.mlflow.parentRunId"].isna()]) == 1  # one grid run throughout
    killed = children[children["run_id"] == killed_c3].iloc[0]
    assert killed["status"] == "FAILED" and killed["tags.sota_ablate.failure"].startswith(
        "left RUNNING by a killed process"
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for _, row in complete.iterrows():  # no epoch logged twice, none missing
        steps = [m.step for m in client.get_metric_history(row["run_id"], "accuracy")]
        assert steps == ([0] if row["tags.cell"] == "c1" else [0, 1]), row["tags.cell"]
    assert not list(checkpoints.glob("*.pt"))

    # The report reads the finished runs and leaves the killed one out.
    data = collect_grid(Tracker(f"sqlite:///{tmp_path}/mlflow.db", "crash"))
    assert list(data.runs["state"]) == ["complete"] * 3
    assert killed_c3 not in set(data.runs["run_id"])
    assert any("superseded" in note for note in data.notes)


# ---------------------------------------------------------------------------------------------------------------
# Failures inside a cell

FAILING_GRID = """
name = "failing"
seeds = [0]

[defaults]
epochs = 100                   # 1 epoch

[[cells]]
name = "diverges"
techniques = []
lr = 1e9

[[cells]]
name = "oom"
techniques = ["mixup"]
epochs = 200

[[cells]]
name = "ok"
techniques = []
"""


def test_failures_are_recorded_and_the_grid_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from sota_ablate.techniques import mixup

    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "failing.toml"
    grid.write_text(FAILING_GRID)
    args = _args(tmp_path, grid, folder, experiment="failing")
    real_mix = mixup.mix_batch
    calls = {"n": 0}

    def mix_then_oom(x: torch.Tensor, y: torch.Tensor, alpha: float):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 1:  # the second epoch (one batch per epoch): after a checkpoint
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_mix(x, y, alpha)

    monkeypatch.setattr(mixup, "mix_batch", mix_then_oom)
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "2 cell run(s) failed" in captured.err and "Traceback" not in captured.err
    assert re.search(r"diverges\s+0\s+FAILED", captured.out) and re.search(r"ok\s+0\s+FINISHED", captured.out)
    runs = _runs(tmp_path, "failing")
    children = {r["tags.cell"]: r for _, r in runs[runs["tags.mlflow.parentRunId"].notna()].iterrows()}
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["status"] == "FAILED"
    assert children["ok"]["status"] == "FINISHED"
    diverged = children["diverges"]
    assert diverged["status"] == "FAILED" and diverged["tags.sota_ablate.failure_type"] == "NonFiniteLossError"
    assert diverged["tags.sota_ablate.failure"].startswith("non-finite loss:")
    oom = children["oom"]
    assert oom["status"] == "FAILED" and oom["tags.sota_ablate.failure_type"] == "OutOfMemoryError"
    assert "lower the batch size" in oom["tags.sota_ablate.failure"]
    assert "(in technique 'mixup')" in oom["tags.sota_ablate.failure"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trace = Path(client.download_artifacts(oom["run_id"], "traceback.txt", str(tmp_path))).read_text()
    assert "OutOfMemoryError" in trace and "mixup.py" in trace
    # Per-cell accuracies on the grid run: only for the cell that finished.
    assert "metrics.accuracy.ok" in parent and not pd.isna(parent["metrics.accuracy.ok"])
    assert all(pd.isna(parent.get(f"metrics.accuracy.{c}")) for c in ("diverges", "oom"))
    # The OOM cell failed after its first epoch: its checkpoint is kept.
    assert (tmp_path / "checkpoints" / f"{parent['run_id']}-{oom['tags.config_hash']}.pt").is_file()

    # With the cause gone, a rerun continues the failed cell in its own run from that epoch; the diverging cell
    # fails again (a new run), the finished one is skipped.
    monkeypatch.setattr(mixup, "mix_batch", real_mix)
    assert main(args) == 1
    assert f"resuming run {oom['run_id']} (FAILED) after epoch 0" in capsys.readouterr().out
    after = _children(tmp_path, "failing")
    resumed = after[after["run_id"] == oom["run_id"]].iloc[0]
    assert resumed["status"] == "FINISHED" and resumed["tags.sota_ablate.complete"] == "true"
    assert not isinstance(resumed.get("tags.sota_ablate.failure"), str)  # the old reason is gone
    assert len(after[after["tags.cell"] == "oom"]) == 1 and len(after[after["tags.cell"] == "diverges"]) == 2
