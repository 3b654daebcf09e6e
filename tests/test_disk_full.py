"""A disk that fills up in the middle of a grid: one ``error:`` naming the folder and the space needed, within
seconds, no traceback; the runs are left so that the same command, once there is room, finishes the grid with
every cell once (the interrupted one continued from its checkpoint)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import make_image_folder

from sota_ablate import schema
from sota_ablate.cli import main
from sota_ablate.tracking import DiskFullError, Tracker

GRID = """
name = "full"
[defaults]
epochs = {epochs}              # x 0.01 (smoke profile)
[[cells]]
name = "a"
techniques = []
"""


def _args(tmp: Path, store: Path, epochs: int) -> list[str]:
    grid = tmp / "full.toml"
    grid.write_text(GRID.format(epochs=epochs))
    folder = tmp / "images" if (tmp / "images").exists() else make_image_folder(tmp / "images")
    return ["run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--tracking-uri",
            f"sqlite:///{store}/mlflow.db", "--cache-dir", str(tmp / "cache"), "--checkpoint-dir", str(tmp / "ckpt"),
            "--device", "cpu", "--no-progress"]  # fmt: skip


def _runs(store: Path) -> dict[str, str]:
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    df = mlflow.search_runs(experiment_names=["sota_ablate"])
    return {f"{r['tags.mlflow.runName']}:{r['run_id']}": r["status"] for _, r in df.iterrows()}


def test_disk_full_cause_is_found_in_any_wrapping() -> None:
    tracker = Tracker("sqlite:////nonexistent-folder/mlflow.db", "x")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/mlartifacts/1/abc/config.json")
        except OSError as inner:
            raise RuntimeError("log_artifact failed") from inner
    except RuntimeError as err:
        full = tracker.disk_full(err)
    assert isinstance(full, DiskFullError)
    assert "/data/mlartifacts/1/abc is full" in str(full) and "needs at least 256 MiB" in str(full)
    assert "run the same command again" in str(full)
    assert tracker.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert tracker.disk_full(ValueError("loss is nan")) is None
    shm = RuntimeError("unable to write to file </torch_1_2>: No space left on device")
    assert str(tracker.disk_full(shm)).startswith("a disk is full (RuntimeError: unable to write")  # not ours
    sqlite = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    assert "the disk of /nonexistent-folder is full" in str(tracker.disk_full(sqlite))  # the database's folder


def test_artifact_disk_full_mid_cell_stops_and_the_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    store = tmp_path / "store"
    argv = _args(tmp_path, store, epochs=100)  # 1 epoch

    real = LocalArtifactRepository.log_artifact

    def full(self: object, local_file: str, artifact_path: str | None = None) -> None:
        if Path(local_file).name == schema.CONFIG_ARTIFACT:  # the first artifact of a finished cell
            raise OSError(errno.ENOSPC, "No space left on device", str(store / "mlartifacts" / "config.json"))
        real(self, local_file, artifact_path)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: the disk of {store}/mlartifacts is full") and "is full" in err and "MiB free" in err
    ), err
    assert "to continue, run:" in err and "Traceback" not in err, err
    before = _runs(store)
    assert sorted(before.values()) == ["KILLED", "KILLED"], before  # the cell and the grid run: resumable
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1  # the finished epoch is kept

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", real)
    assert main(argv) == 0
    assert "resuming run" in capsys.readouterr().out
    after = _runs(store)
    assert after.keys() == before.keys() and set(after.values()) == {"FINISHED"}, after  # same runs, finished


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs (root only; CI runs as root)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("SKIPPED LOUDLY: mounting a small tmpfs needs root; the ENOSPC tests above still ran")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("SKIPPED LOUDLY: mount -t tmpfs failed here (a container without CAP_SYS_ADMIN?)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def _fill(disk: Path) -> Path:
    fill = disk / "fill"
    with fill.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return fill


def test_sqlite_store_on_a_disk_that_fills_mid_grid(small_disk: Path, tmp_path: Path, monkeypatch) -> None:
    argv = _args(tmp_path, small_disk, epochs=200)  # 2 epochs; the checkpoints on another disk
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SOTA_ABLATE_MIN_FREE_MB": "4"}
    log = tmp_path / "first.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "sota_ablate", *argv], stdout=f, stderr=subprocess.STDOUT,
                                env=env, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("0 ") for line in log.read_text().splitlines()) and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        fill = _fill(small_disk)  # the disk fills up after the first epoch
        full_at = time.monotonic()
        rc = proc.wait(timeout=120)
        took = time.monotonic() - full_at
    finally:
        proc.kill()
    text = log.read_text()
    assert rc == 2, text
    assert f"error: the disk of {small_disk} is full" in text and "a grid needs at least 4 MiB there" in text, text
    assert "Traceback" not in text and len(text.splitlines()) < 20, text
    assert took < 60, took  # the next write fails at once: no hang

    fill.unlink()
    monkeypatch.setenv("SOTA_ABLATE_MIN_FREE_MB", "4")
    assert main(argv) == 0  # a run the dead process left RUNNING is ended and its cell continued
    runs = _runs(small_disk)
    cells = [k for k in runs if k.startswith("a:")]
    assert len(cells) == 1 and runs[cells[0]] == "FINISHED", runs
