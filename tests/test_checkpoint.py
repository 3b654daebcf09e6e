"""Epoch checkpoints: atomic files keyed by config hash; a cell interrupted twice and resumed in the same MLflow run
ends with exactly the numbers of an uninterrupted run, and two uninterrupted runs agree exactly (CPU, fixed seed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from sota_ablate import artifacts, cell_run
from sota_ablate.cli import main
from sota_ablate.train import checkpoint as ck
from tests.conftest import make_image_folder

# One cell through every stage kind: progressive_small (epochs 0-1, 24 px), fine_tune_frozen (2), fine_tune (3-4),
# with mixup (random draws every batch), bf16 autocast, label smoothing and TTA (random draws after training).
GRID = """
name = "resume"
description = "one cell through every stage kind"
seeds = [0]

[defaults]
epochs = 200                   # x 0.01 (smoke profile) = 2 fine_tune epochs

[[cells]]
name = "all"
techniques = ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"]
progressive = { initial_epochs = 200 }
"""
N_EPOCHS = 5
CURVES = ("train_loss", "valid_loss", "accuracy", "lr", "image_size")


# ---------------------------------------------------------------------------------------------------------------
# The file


def test_save_is_atomic_and_load_checks_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ck.checkpoint_path(tmp_path / "ck", "abc123")
    assert path == tmp_path / "ck" / "abc123.pt"
    payload = {"format": ck.FORMAT, "config_hash": "abc123", "x": torch.arange(3)}
    ck.save_checkpoint(path, payload)
    assert torch.equal(ck.load_checkpoint(path, "abc123")["x"], torch.arange(3))
    assert ck.load_checkpoint(path, "other") is None  # another config never loads it
    assert ck.load_checkpoint(tmp_path / "none.pt", "abc123") is None

    def broken_save(obj: object, f: object) -> None:
        f.write(b"half a file")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.save_checkpoint(path, {**payload, "x": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint(path, "abc123")["x"], torch.arange(3))  # the old one is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["abc123.pt"]  # no temporary file left
    path.write_bytes(b"garbage")
    assert ck.load_checkpoint(path, "abc123") is None
    ck.delete_checkpoint(path)
    assert not path.exists()
    with pytest.raises(ValueError):
        ck.checkpoint_path(tmp_path, "../escape")


def test_rng_state_round_trip(tmp_path: Path) -> None:
    state = ck.rng_state()
    ck.save_checkpoint(tmp_path / "r.pt", {"format": ck.FORMAT, "config_hash": "r", "rng": state})
    first = (torch.rand(4), random.random(), np.random.rand(3))
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt", "r")["rng"])
    again = (torch.rand(4), random.random(), np.random.rand(3))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and np.array_equal(first[2], again[2])


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ck.CheckpointError, match="--checkpoint-dir"):
        ck.ensure_writable(blocker / "checkpoints")


# ---------------------------------------------------------------------------------------------------------------
# Resume = uninterrupted, bit for bit


def _curves(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in CURVES}


def _only_child(tmp: Path, experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    df = mlflow.search_runs(experiment_names=[experiment])
    children = df[df["tags.mlflow.parentRunId"].notna()]
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert len(children) == 1 and len(parents) == 1, (experiment, len(children), len(parents))
    return children.iloc[0], parents.iloc[0]


def test_resumed_cell_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    folder = make_image_folder(tmp_path / "images")
    grid = tmp_path / "resume.toml"
    grid.write_text(GRID)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def args(experiment: str) -> list[str]:
        return [
            "run-grid", "--profile", "smoke", "--grid", str(grid), "--data", str(folder), "--tracking-uri", uri,
            "--cache-dir", str(tmp_path / "cache"), "--experiment", experiment, "--device", "cpu",
        ]  # fmt: skip

    assert main(args("ref")) == 0
    assert main(args("ref2")) == 0  # determinism: same seed, same numbers

    # Interruption 1: Ctrl-C after epoch 1 is checkpointed but before it is logged (the console observer, which
    # runs between the two, raises). The next attempt must back-fill epoch 1 and start at a stage boundary.
    console_epoch = cell_run.ConsoleProgress.epoch

    def interrupt_after_epoch_1(self, record, result):  # type: ignore[no-untyped-def]
        console_epoch(self, record, result)
        if record.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cell_run.ConsoleProgress, "epoch", interrupt_after_epoch_1)
    capsys.readouterr()
    assert main(args("resumed")) == 130
    captured = capsys.readouterr()
    assert "KILLED; its last finished epoch is kept in" in captured.out
    assert "to continue from the last finished epoch, run:" in captured.err
    assert "python -m sota_ablate run-grid --profile smoke" in captured.err and "--experiment resumed" in captured.err
    child, parent = _only_child(tmp_path, "resumed")
    run_id = child["run_id"]
    client = MlflowClient(uri)
    assert child["status"] == "KILLED" and parent["status"] == "KILLED"
    assert [m.step for m in client.get_metric_history(run_id, "accuracy")] == [0]
    checkpoints = tmp_path / "checkpoints"  # default: next to the sqlite store
    assert [p.name for p in checkpoints.iterdir()] == [f"{parent['run_id']}-{child['tags.config_hash']}.pt"]
    monkeypatch.undo()

    # Interruption 2: Ctrl-C after epoch 3 is logged, inside the fine_tune stage (resumed mid-stage next time).
    tracking_epoch = artifacts.EpochLogger.epoch

    def interrupt_after_epoch_3(self, record, result):  # type: ignore[no-untyped-def]
        tracking_epoch(self, record, result)
        if record.epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.EpochLogger, "epoch", interrupt_after_epoch_3)
    assert main(args("resumed")) == 130
    out = capsys.readouterr().out
    assert f"resuming run {run_id} (KILLED) after epoch 1" in out
    monkeypatch.undo()

    assert main(args("resumed")) == 0
    assert f"resuming run {run_id} (KILLED) after epoch 3" in capsys.readouterr().out
    child, parent = _only_child(tmp_path, "resumed")
    assert child["run_id"] == run_id and child["status"] == "FINISHED" and parent["status"] == "FINISHED"
    assert parent["params.description"] == "one cell through every stage kind"
    assert json.loads(parent["params.cell_techniques"]) == {
        "all": ["fp16", "normalize", "progressive", "tta", "mixup", "label_smoothing"]
    }
    assert child["artifact_uri"].startswith((tmp_path / "mlartifacts").as_uri())  # next to the db, not ./mlruns
    assert child["tags.sota_ablate.complete"] == "true" and child["tags.sota_ablate.resumes"] == "2"
    assert "tags.sota_ablate.failure" not in child or not isinstance(child["tags.sota_ablate.failure"], str)
    assert child["params.seed"] == "0" and child["tags.seed"] == "0"
    assert child["params.checkpoint_dir"] == str(checkpoints)
    assert not list(checkpoints.glob("*.pt"))  # deleted once the cell finished

    ref, _ = _only_child(tmp_path, "ref")
    ref2, _ = _only_child(tmp_path, "ref2")
    resumed_curves = _curves(client, run_id)
    ref_curves = _curves(client, ref["run_id"])
    for key in CURVES:
        assert [step for step, _ in resumed_curves[key]] == list(range(N_EPOCHS)), key  # each epoch exactly once
    assert resumed_curves == ref_curves
    assert _curves(client, ref2["run_id"]) == ref_curves
    for key in ("metrics.final_accuracy", "metrics.tta_accuracy", "metrics.final_valid_loss"):
        assert child[key] == ref[key] == ref2[key], key
    assert len(client.get_metric_history(run_id, "valid_time_s")) == N_EPOCHS
    epochs_csv = client.download_artifacts(run_id, "epochs.csv", str(tmp_path))
    assert len(Path(epochs_csv).read_text().splitlines()) == 1 + N_EPOCHS
