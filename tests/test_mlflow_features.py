"""MLflow's own features, read back through MLflow: the experiment's kind, each run's datasets and description, the
logged and registered model, and the report's links to run pages on a tracking server."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sota_ablate import schema
from sota_ablate.cli import main
from sota_ablate.report.links import run_links
from sota_ablate.run_datasets import split_digest
from sota_ablate.tracking import Tracker, run_url

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smoke-tta"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One smoke cell (tta: judged by its own metric) with its model logged and registered."""
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("features")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = [
        "run-grid", "--profile", "smoke", "--grid", str(ROOT / "ablations" / "chapter.toml"),
        "--data", str(make_image_folder(tmp / "images")), "--cache-dir", str(tmp / "cache"),
        "--checkpoint-dir", str(tmp / "checkpoints"), "--tracking-uri", uri, "--experiment", "features",
        "--device", "cpu", "--cells", "tta", "--register-model", MODEL_NAME,
    ]  # fmt: skip
    assert main(args) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["features"])
    grid = runs[runs[f"tags.{schema.ROLE}"] == schema.ROLE_GRID].iloc[0]
    cell = runs[runs[f"tags.{schema.CELL}"] == "tta"].iloc[0]
    return uri, MlflowClient(uri), grid, cell


def test_the_experiment_opens_as_model_training(store, tmp_path):
    _, client, _, _ = store
    assert client.get_experiment_by_name("features").tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    old = f"sqlite:///{tmp_path}/old.db"  # an experiment made without the tag (an earlier version, by hand)
    exp_id = MlflowClient(old).create_experiment("old")
    assert schema.EXPERIMENT_KIND not in MlflowClient(old).get_experiment(exp_id).tags
    assert Tracker(old, "old").experiment_id() == exp_id
    assert MlflowClient(old).get_experiment(exp_id).tags[schema.EXPERIMENT_KIND] == "custom_model_development"


def test_train_and_valid_sets_are_mlflow_datasets(store):
    _, client, grid, cell = store
    params = client.get_run(cell.run_id).data.params
    info = {"content_sha256": params[schema.data_param("content_sha256")]}
    for run_id in (cell.run_id, grid.run_id):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        by_context = {t.value: d.dataset for d in inputs for t in d.tags if t.key == schema.DATASET_CONTEXT}
        assert set(by_context) == {"training", "validation"}
        train, valid = by_context["training"], by_context["validation"]
        assert (train.name, valid.name) == ("images/train", "images/valid")
        assert train.digest == split_digest(info, "train") != valid.digest == split_digest(info, "valid")
        assert f'"images": {params[schema.data_param("n_train")]},' in train.profile
        assert f'"images": {params[schema.data_param("n_valid")]},' in valid.profile
        assert train.source_type == "local" and "images" in train.source


def test_every_run_has_a_description_from_its_numbers(store):
    _, client, grid, cell = store
    note = cell[f"tags.{schema.NOTE}"]  # search_runs has it as a tag column
    assert note.startswith("**tta**: cell `tta` of grid `chapter`, profile `smoke`, seed 0")
    assert "- `tta`: test-time augmentation" in note
    assert f"Final accuracy: **{cell[f'metrics.{schema.FINAL_ACCURACY}']:.4f}**" in note
    assert f"tta_accuracy {cell['metrics.tta_accuracy']:.4f}" in note
    grid_note = client.get_run(grid.run_id).data.tags[schema.NOTE]
    assert grid_note.startswith("**Grid `chapter`**: ") and "1 cells (`tta`) x 1 seed(s) (0)" in grid_note
    row = (
        f"| tta | 0 | FINISHED | {cell[f'metrics.{schema.FINAL_ACCURACY}']:.4f} | {cell['metrics.tta_accuracy']:.4f} |"
    )
    assert "| cell | seed | status | final accuracy | tta_accuracy | time |" in grid_note and row in grid_note


def test_the_model_is_logged_with_a_signature_and_registered(store):
    _, client, _, cell = store
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == cell.run_id
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/1")
    size = int(cell[f"params.{schema.train_param('size')}"])
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, size, size)
    assert info.saved_input_example_info is not None
    model = mlflow.pytorch.load_model(f"models:/{MODEL_NAME}/1")
    import torch

    logits = model(torch.rand(3, 3, size, size))  # the batch size is free
    assert tuple(logits.shape) == (3, int(cell[f"params.{schema.MODEL_N_OUT}"]))
    assert np.isfinite(logits.detach().numpy()).all()


def test_bad_registered_model_name_is_refused_before_training(tmp_path, capsys):
    args = ["run-grid", "--profile", "smoke", "--data", str(tmp_path), "--register-model", "a/b"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --register-model 'a/b'" in err and "Traceback" not in err


def test_report_links_runs_only_on_a_tracking_server():
    assert run_url("http://user:pw@mlflow.example:5000/", "3", "abc") == (
        "http://user:***@mlflow.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert run_url("sqlite:///mlflow.db", "3", "abc") is None
    runs = pd.DataFrame({"run_id": ["r1", None], "run_name": ["baseline", None], "cell": ["baseline", "tta"]})
    assert run_links(runs, "https://mlflow.example", "3") == (
        "MLflow runs: [baseline](https://mlflow.example/#/experiments/3/runs/r1?workflowType=machine_learning)."
    )
    assert run_links(runs, "sqlite:///mlflow.db", "3") == ""
