"""The whole grid through the CLI into a real (temporary) sqlite MLflow store, read back with search_runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sota_ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["baseline", "fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing", "all"]


def _args(image_folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run-grid", "--profile", "smoke", "--grid", str(ROOT / "ablations" / "chapter.toml"),
        "--data", str(image_folder), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        "--cache-dir", str(tmp_path / "cache"), "--experiment", "e2e", "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("e2e")
    folder = make_image_folder(tmp / "images")
    assert main(_args(folder, tmp)) == 0
    return tmp, folder


def _runs(tmp: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    return mlflow.search_runs(experiment_names=["e2e"])


def test_grid_lands_in_mlflow(grid_store):
    tmp, _ = grid_store
    df = _runs(tmp)
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    children = df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 8
    parent_id = parents.iloc[0]["run_id"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert sorted(children["tags.mlflow.runName"]) == sorted(CELLS)
    assert set(children["status"]) == {"FINISHED"} and parents.iloc[0]["status"] == "FINISHED"
    assert set(children["tags.cell"]) == set(CELLS)
    for col in ["tags.config_hash", "tags.git_commit", "tags.techniques", "tags.seed", "tags.grid"]:
        assert children[col].notna().all(), col
    assert (children["tags.sota_ablate.complete"] == "true").all()
    for col in [
        "params.train.lr",
        "params.train.epochs",
        "params.train.model",
        "params.dtype",
        "params.train_flops",
        "params.train_images",
        "params.optimizer_steps",
        "params.data.content_sha256",
        "params.data.split",
        "params.data.n_train",
        "params.device",
        "params.profile",
    ]:
        assert children[col].notna().all(), col
    row = children[children["tags.cell"] == "fp16"].iloc[0]
    assert row["params.dtype"] == "bfloat16"
    assert children[children["tags.cell"] == "baseline"].iloc[0]["params.dtype"] == "float32"
    assert children[children["tags.cell"] == "baseline"].iloc[0]["tags.techniques"] == "none"


def test_per_epoch_metrics_and_artifacts(grid_store):
    tmp, _ = grid_store
    df = _runs(tmp)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    children = df[df["tags.mlflow.parentRunId"].notna()]
    for _, row in children.iterrows():
        run_id = row["run_id"]
        for key in ["train_loss", "valid_loss", "accuracy", "epoch_time_s", "images_per_s", "lr"]:
            hist = client.get_metric_history(run_id, key)
            assert hist, (row["tags.cell"], key)
            assert [m.step for m in hist] == list(range(len(hist)))
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.json", "epochs.csv", "learning_curve.png", "confusion_matrix.png"} <= artifacts
    progressive = children[children["tags.cell"] == "progressive"].iloc[0]
    sizes = [m.value for m in client.get_metric_history(progressive["run_id"], "image_size")]
    assert sizes == [24.0, 32.0, 32.0]  # small stage, fine_tune frozen epoch, fine_tune
    for cell in ("tta", "all"):
        row = children[children["tags.cell"] == cell].iloc[0]
        assert 0 <= row["metrics.tta_accuracy"] <= 1
    assert children[children["tags.cell"] == "baseline"].iloc[0].get("metrics.tta_accuracy") != pytest.approx(0.5)


def test_rerun_skips_finished_cells(grid_store, capsys):
    tmp, folder = grid_store
    assert main(_args(folder, tmp, "--cells", "baseline,mixup")) == 0  # a different grid selection: new parent
    df = _runs(tmp)
    before = len(df)
    capsys.readouterr()
    assert main(_args(folder, tmp)) == 0  # the full grid again: everything already finished
    out = capsys.readouterr().out
    assert out.count("already finished (run") == 8
    assert len(_runs(tmp)) == before


def test_unknown_cell_is_a_clear_error(grid_store, capsys):
    tmp, folder = grid_store
    assert main(_args(folder, tmp, "--cells", "mixpu")) == 2
    err = capsys.readouterr().err
    assert "unknown cell 'mixpu'" in err and "Did you mean 'mixup'" in err and "Traceback" not in err


def test_list_techniques(capsys):
    assert main(["list-techniques"]) == 0
    out = capsys.readouterr().out
    for name in ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"]:
        assert f"\n{name}\n" in f"\n{out}"
    assert "alpha=0.4" in out and "eps=0.1" in out and "arXiv:1710.09412" in out


def test_per_image_predictions_artifact(grid_store):
    """Every finished cell run stores its per-image evidence; it agrees with the logged accuracies."""
    import numpy as np

    tmp, _ = grid_store
    df = _runs(tmp)
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    for cell in ("baseline", "tta"):
        row = df[df["tags.cell"] == cell].iloc[0]
        path = client.download_artifacts(row["run_id"], "predictions.npz", str(tmp / f"pred-{cell}"))
        with np.load(path) as z:
            labels, plain = z["labels"], z["plain"].astype(np.float32)
            assert plain.shape == (len(labels), len(z["classes"])) and len(z["paths"]) == len(labels)
            assert np.allclose(plain.sum(axis=1), 1, atol=1e-2)
            assert (plain.argmax(axis=1) == labels).mean() == pytest.approx(row["metrics.final_accuracy"], abs=1e-6)
            if cell == "tta":
                tta = z["tta"].astype(np.float32)
                assert (tta.argmax(axis=1) == labels).mean() == pytest.approx(row["metrics.tta_accuracy"], abs=1e-6)
            else:
                assert "tta" not in z.files
