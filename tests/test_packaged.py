"""What a user who installed the package gets, from any folder: the built-in grids, and a technique added as one
file (CutMix) showing up in the grid, MLflow and the report without edits elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
from conftest import make_image_folder
from mlflow.tracking import MlflowClient


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store: here
    return subprocess.run(
        [sys.executable, "-m", "sota_ablate", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_builtin_grids_from_an_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "anywhere"
    empty.mkdir()
    listed = _cli(empty, "list-grids")
    assert listed.returncode == 0, listed.stderr
    for name in ("chapter", "fair", "leave_one_out", "factorial"):
        assert f"{name}\n" in listed.stdout
    folder = make_image_folder(tmp_path / "images")
    # no --grid: the built-in chapter grid, found in the package, not in the working directory
    done = _cli(empty, "run-grid", "--profile", "smoke", "--cells", "baseline,tta", "--data", str(folder),
                "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    mlflow.set_tracking_uri(f"sqlite:///{empty}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    parent = runs[runs["tags.sota_ablate.role"] == "grid"].iloc[0]
    assert parent["tags.grid"] == "chapter" and parent["params.grid_file"].endswith("grids/chapter.toml")
    assert sorted(runs["tags.cell"].dropna()) == ["baseline", "tta"]


CUTMIX_GRID = """
name = "cutmix_smoke"
description = "baseline, mixup and cutmix"
[[cells]]
name = "baseline"
techniques = []
[[cells]]
name = "mixup"
techniques = ["mixup"]
[[cells]]
name = "cutmix"
techniques = ["cutmix"]
"""


def test_cutmix_trains_and_reaches_mlflow_and_the_report(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "cutmix.toml"
    grid.write_text(CUTMIX_GRID)
    listed = _cli(tmp_path, "list-techniques")
    assert "cutmix\n" in listed.stdout
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _cli(tmp_path, "run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder),
                "--tracking-uri", uri, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cutmix_lambda" in done.stdout  # the technique's own per-epoch metric in the epoch table
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sota_ablate"])
    cutmix = runs[runs["tags.cell"] == "cutmix"].iloc[0]
    assert cutmix["tags.technique.cutmix"] == "true" and cutmix["tags.techniques"] == "cutmix"
    assert cutmix["params.tech.cutmix.alpha"] == "1.0"
    history = MlflowClient(uri).get_metric_history(cutmix["run_id"], "cutmix_lambda")
    assert len(history) == 1 and 0 < history[0].value <= 1
    assert "cutmix_lambda" in cutmix["params.epoch_metric_keys"]
    report = _cli(tmp_path, "report", "--tracking-uri", uri, "--out", str(tmp_path / "reports"), "--data", str(folder))
    assert report.returncode == 0, report.stdout + report.stderr
    text = (tmp_path / "reports" / "cutmix_smoke" / "README.md").read_text()
    assert "## CutMix" in text and "cutmix_example.png" in text
    assert (tmp_path / "reports" / "cutmix_smoke" / "cutmix_example.png").is_file()
    assert "cutmix_lambda" in text  # the per-epoch metric in the cell's epoch table


def test_mixup_and_cutmix_in_one_cell_are_refused(tmp_path: Path) -> None:
    grid = tmp_path / "both.toml"
    grid.write_text('name = "both"\n[[cells]]\nname = "x"\ntechniques = ["mixup", "cutmix"]\n')
    done = _cli(tmp_path, "run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(tmp_path))
    assert done.returncode == 2
    assert "cannot be combined" in done.stderr and "'mixup'" in done.stderr and "'cutmix'" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()
