"""``run-grid --executor ray``: a local Ray instance (2 CPUs) runs smoke grids against an ``mlflow server`` on
loopback (temporary sqlite backend, artifacts proxied to a temporary folder), read back with search_runs."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sota_ablate.cli import main
from sota_ablate.executors.base import ExecutorError
from sota_ablate.executors.ray import FAULT_ENV, RayExecutor, unshareable_store
from sota_ablate.server import free_port, start_server, stop_server
from sota_ablate.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["baseline", "fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing", "all"]
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray not installed (pip install -e '.[ray]')"
)


def _args(images: Path, tmp: Path, uri: str, experiment: str, *extra: str) -> list[str]:
    return [
        "run-grid", "--profile", "smoke", "--grid", str(ROOT / "ablations" / "chapter.toml"),
        "--data", str(images), "--cache-dir", str(tmp / "cache"), "--checkpoint-dir", str(tmp / f"ckpt-{experiment}"),
        "--tracking-uri", uri, "--experiment", experiment, "--device", "cpu", "--executor", "ray", *extra,
    ]  # fmt: skip


def _runs(uri: str, experiment: str):
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment])
    return df[df["tags.mlflow.parentRunId"].isna()], df[df["tags.mlflow.parentRunId"].notna()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(tracking server URL, its tmp folder, images): an mlflow server and a local 2-CPU Ray instance."""
    import ray

    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    with open(tmp / "server.log", "wb") as log:
        server = start_server(
            f"sqlite:///{tmp}/server.db", port, artifacts_destination=str(tmp / "artifacts"), stdout=log, stderr=log
        )
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield f"http://127.0.0.1:{port}", tmp, make_image_folder(tmp / "images")
    finally:
        ray.shutdown()
        stop_server(server)


@needs_ray
def test_grid_lands_once_through_the_server(cluster, capsys):
    uri, tmp, images = cluster
    assert main(_args(images, tmp, uri, "ray")) == 0
    out = capsys.readouterr().out
    assert "ray: 8 cell runs submitted" in out and "8 done, 0 running, 0 failed, 0 queued of 8" in out
    parents, children = _runs(uri, "ray")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert set(children["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert sorted(children["tags.cell"]) == sorted(CELLS)  # every cell exactly once
    assert set(children["status"]) == {"FINISHED"} and (children["tags.sota_ablate.complete"] == "true").all()
    assert sorted(children["tags.mlflow.runName"]) == sorted(CELLS)
    # Artifacts went through the server into its --artifacts-destination: the workers wrote no local files.
    client = MlflowClient(uri)
    for _, row in children.iterrows():
        assert row["artifact_uri"].startswith("mlflow-artifacts:"), row["artifact_uri"]
        assert {"config.json", "epochs.csv", "learning_curve.png"} <= {
            a.path for a in client.list_artifacts(row.run_id)
        }
        assert (tmp / "artifacts" / row["experiment_id"] / row["run_id"] / "artifacts" / "config.json").is_file()
        assert client.get_metric_history(row.run_id, "accuracy"), row["tags.cell"]
    assert all(f"metrics.accuracy.{c}" in parents.columns for c in CELLS)  # the driver logged them on the parent


@needs_ray
def test_rerun_skips_finished_cells(cluster, capsys):
    uri, tmp, images = cluster
    before = sum(len(df) for df in _runs(uri, "ray"))
    assert main(_args(images, tmp, uri, "ray")) == 0  # the grid of the previous test, again
    assert capsys.readouterr().out.count("already finished (run") == 8
    assert sum(len(df) for df in _runs(uri, "ray")) == before


@needs_ray
def test_worker_killed_mid_cell_is_retried(cluster, monkeypatch):
    uri, tmp, images = cluster
    monkeypatch.setenv(FAULT_ENV, "baseline:0")  # the worker of baseline SIGKILLs itself after its first epoch
    assert main(_args(images, tmp, uri, "ray-fault", "--cells", "baseline,mixup")) == 0
    parents, children = _runs(uri, "ray-fault")
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert "RUNNING" not in set(children["status"])
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.cell"]) == ["baseline", "mixup"]  # every cell FINISHED exactly once
    baseline = children[children["tags.cell"] == "baseline"]
    done = baseline[baseline["status"] == "FINISHED"].iloc[0]
    if len(baseline) == 1:  # the retry marked the dead run FAILED, then continued it from its epoch checkpoint
        assert done["tags.sota_ablate.resumes"] == "1"
    else:  # the retry marked the dead run FAILED and started a new one
        dead = baseline[baseline["status"] == "FAILED"]
        assert len(dead) == 1 and "died" in dead.iloc[0]["tags.sota_ablate.failure"]


@needs_ray
def test_retries_exhausted_then_resumed_on_a_local_sqlite_store(cluster, monkeypatch, capsys):
    """One node: a sqlite store is allowed. With no retries the killed cell FAILS (the driver ends its run);
    the same command again resumes the grid run and finishes the cell."""
    _, tmp, images = cluster
    uri = f"sqlite:///{tmp}/local.db"
    monkeypatch.setenv(FAULT_ENV, "baseline:0")
    args = _args(images, tmp, uri, "ray-local", "--cells", "baseline", "--max-retries", "0")
    assert main(args) == 1
    assert "baseline FAILED on Ray: WorkerCrashedError" in capsys.readouterr().out
    parents, children = _runs(uri, "ray-local")
    assert list(parents["status"]) == ["FAILED"] and list(children["status"]) == ["FAILED"]
    assert "Ray: WorkerCrashedError" in children.iloc[0]["tags.sota_ablate.failure"]
    monkeypatch.delenv(FAULT_ENV)
    assert main(args) == 0
    parents2, children2 = _runs(uri, "ray-local")
    assert list(parents2["run_id"]) == list(parents["run_id"]) and list(parents2["status"]) == ["FINISHED"]
    assert list(children2[children2["status"] == "FINISHED"]["tags.cell"]) == ["baseline"]


def test_without_ray_the_error_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    args = _args(tmp_path / "images", tmp_path, f"sqlite:///{tmp_path}/m.db", "e")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--executor ray needs Ray" in err and "pip install -e '.[ray]'" in err and "Traceback" not in err


def test_ray_is_not_imported_with_the_package():
    code = "import sota_ablate.cli, sota_ablate.grid_run, sota_ablate.executors.ray, sys; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def _executor_on(nodes: int) -> RayExecutor:
    """A RayExecutor that believes it is connected to a cluster of ``nodes`` alive nodes (no Ray needed)."""
    executor = RayExecutor()
    executor._ray = SimpleNamespace(get_runtime_context=lambda: SimpleNamespace(gcs_address="10.0.0.1:6379"))
    executor._nodes = [{"Alive": True, "Resources": {"CPU": 2.0}} for _ in range(nodes)]
    return executor


@pytest.mark.parametrize(
    "uri",
    ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "file:///tmp/mlruns", "./mlruns", "http://127.0.0.1:5000"],
)
def test_a_store_on_one_machine_is_refused_on_a_multi_node_cluster(uri):
    assert unshareable_store(uri)
    with pytest.raises(ExecutorError, match=r"this Ray cluster has 2 nodes.*tracking server"):
        _executor_on(2).check(Tracker(uri, "e"))
    _executor_on(1).check(Tracker(uri, "e"))  # one node: every worker shares it


def test_a_server_with_unproxied_artifacts_is_refused_on_a_multi_node_cluster():
    assert unshareable_store("http://mlflow.example:5000") is None
    tracker = SimpleNamespace(
        uri="http://mlflow.example:5000", experiment_name="e", check=lambda: None, artifact_location=lambda: "/srv/a"
    )
    with pytest.raises(ExecutorError, match="--artifacts-destination"):
        _executor_on(3).check(tracker)  # type: ignore[arg-type]
    tracker.artifact_location = lambda: "mlflow-artifacts:/1"
    _executor_on(3).check(tracker)  # type: ignore[arg-type]
