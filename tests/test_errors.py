"""Bad input gives one clear paragraph (``error: ...``, exit code 2, no traceback unless --debug), before any
training, and never shows a password."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from sota_ablate.cli import main
from sota_ablate.data import DataConfig, DataError, load_data
from sota_ablate.grid import GridError
from sota_ablate.tracking import Tracker, mask_uri
from tests.conftest import WNIDS, make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = str(ROOT / "ablations" / "chapter.toml")
CELL = "[[cells]]\nname = 'a'\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a sqlite store shared by the tests that get as far as the tracking check."""
    return tmp_path_factory.mktemp("errors")


def _run_grid(tmp: Path, *extra: str, grid: str = CHAPTER, data: str | None = None) -> list[str]:
    return [
        "run-grid", "--profile", "smoke", "--device", "cpu", "--grid", grid,
        "--data", data or str(tmp / "no_such_folder"), "--cache-dir", str(tmp / "cache"),
        "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--experiment", "errors", *extra,
    ]  # fmt: skip


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect exit code 2 and one ``error:`` paragraph; return it."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err  # one paragraph
    return err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------------------
# Grid files: each error names the file and the problem (and the closest known name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = 'g'\n[[cells]]\nname = 'a'\ntechniques = ['mixpu']\n", ["unknown technique 'mixpu'", "'mixup'"]),
        ("name = 'g'\nseedz = [1]\n" + CELL, ["unknown key 'seedz'", "Did you mean 'seeds'"]),
        ("name = 'g'\n" + CELL + "lrr = 1e-3\n", ["unknown setting 'lrr'", "Did you mean 'lr'"]),
        (
            "name = 'g'\n" + CELL + "techniques = ['mixup']\nmixup = { alpah = 0.2 }\n",
            ["unknown setting 'alpah'", "Did you mean 'alpha'"],
        ),
        ("name = 'g'\n" + CELL + "epochs = 'five'\n", ["epochs = 'five'", "wrong type"]),
        ("name = 'g'\n" + CELL + "lr = -1.0\n", ["lr = -1.0 is out of range", "positive"]),
        ("name = 'g'\n" + CELL + "eps = 1.5\n", ["eps = 1.5 is out of range"]),
        (
            "name = 'g'\n" + CELL + "techniques = ['label_smoothing']\nlabel_smoothing = { eps = 1.0 }\n",
            ["label_smoothing.eps = 1.0 is out of range", "[0, 1)"],
        ),
        ("name = 'g'\n" + CELL + "size = 0\n", ["size = 0 is out of range"]),
        ("name = 'g'\n" + CELL + "lr = inf\n", ["lr = inf is not a finite number"]),
        (
            "name = 'g'\n" + CELL + "techniques = ['mixup']\nmixup = { alpha = nan }\n",
            ["mixup.alpha = nan is not a finite number"],
        ),
        ("name = 'g'\nseeds = [1, 1]\n" + CELL, ["seeds must be a non-empty list of distinct integers"]),
        ("name = 'g'\n\n[[cells]\nname = 'a'\n", ["TOML syntax error", "line 3"]),
        ("name = '../../etc'\n" + CELL, ["grid name '../../etc' is not allowed"]),
        ("name = 'g'\n[[cells]]\nname = 'a/../../b'\n", ["cell name 'a/../../b' is not allowed"]),
    ],
)
def test_bad_grid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]) -> None:
    grid = tmp_path / "bad.toml"
    grid.write_text(text)
    err = _error(_run_grid(tmp_path, grid=str(grid)), capsys)
    assert "bad.toml" in err
    for fragment in expected:
        assert fragment in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before the tracking store is touched


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    grid = tmp_path / "bad.toml"
    grid.write_text("name = 'g'\nseedz = [1]\n" + CELL)
    with pytest.raises(GridError, match="seedz"):
        main([*_run_grid(tmp_path, grid=str(grid)), "--debug"])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--cells", "mixpu"], ["unknown cell 'mixpu'", "Did you mean 'mixup'"]),
        (["--set", "lr=-1"], ["lr = -1.0 (from --set) is out of range"]),
        (["--set", "lr=fast"], ["lr = 'fast'", "wrong type"]),
        (["--set", "lrr=1e-3"], ["unknown setting 'lrr'", "Did you mean 'lr'"]),
        (["--set", "lr"], ["use KEY=VALUE"]),
        (["--set", "size=0"], ["size = 0 (from --set) is out of range"]),
        (["--seeds", "one"], ["--seeds 'one'"]),
        (["--epochs-scale", "0"], ["--epochs-scale 0.0"]),
        (["--epochs-scale", "inf"], ["--epochs-scale inf"]),
        (["--set", "lr=inf"], ["lr = inf (from --set) is not a finite number"]),
        (["--set", "wd=nan"], ["wd = nan (from --set) is not a finite number"]),
        (["--seeds", "0,0"], ["--seeds '0,0'", "distinct"]),
        (["--cells", ","], ["--cells ','", "names no cell"]),
    ],
)
def test_bad_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected) -> None:
    err = _error(_run_grid(tmp_path, *extra), capsys)
    for fragment in expected:
        assert fragment in err
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_cell_for_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _run_grid(tmp_path)
    argv[0:1] = ["run", "--cell", "labelsmoothing"]
    assert "Did you mean 'label_smoothing'" in _error(argv, capsys)


# ---------------------------------------------------------------------------------------------------------------
# Data


def test_missing_or_malformed_data_folder(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(_run_grid(store, data=str(tmp_path / "nowhere")), capsys)
    assert "nowhere does not exist" in err and "--data PATH" in err
    (tmp_path / "no_val" / "train" / "n01").mkdir(parents=True)
    err = _error(_run_grid(store, data=str(tmp_path / "no_val")), capsys)
    assert "has no val/ folder" in err
    folder = make_image_folder(tmp_path / "images", n_train=2, n_valid=1)
    empty = folder / "val" / WNIDS[1]
    for f in empty.iterdir():
        f.unlink()
    (empty / "notes.txt").write_text("not an image")
    err = _error(_run_grid(store, data=str(folder)), capsys)
    assert f"class folder {empty} has no images" in err


def test_too_many_unreadable_images_name_the_file(store: Path, tmp_path: Path, capsys) -> None:
    folder = make_image_folder(tmp_path / "images", n_train=4, n_valid=2)  # smoke keeps all 4 + 2 per class
    bad = folder / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    err = _error(_run_grid(store, data=str(folder)), capsys)  # 1 of 18 > 5 %
    assert "cannot decode 1 of 18 image(s)" in err and str(bad) in err and "Remove or replace" in err


def test_a_few_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", n_train=10, n_valid=4)  # 42 images
    zero = folder / "train" / WNIDS[0] / f"{WNIDS[0]}_3.JPEG"
    zero.write_bytes(b"")
    truncated = folder / "val" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:300])  # a valid header, then nothing
    (folder / "train" / WNIDS[0] / "README.txt").write_text("ignored: not an image")
    (folder / "train" / WNIDS[1] / ".DS_Store").write_bytes(b"\0\0")
    cfg = DataConfig(source="folder", path=str(folder), presize=32, cache_dir=str(tmp_path / "cache"), workers=1)
    for attempt in ("built", "cache hit"):
        data = load_data(cfg, "cpu")
        assert data.info["bad_images"] == 2, attempt
        assert (data.info["n_train"], data.info["n_valid"]) == (29, 11), attempt
        assert f"train/{WNIDS[0]}/{WNIDS[0]}_3.JPEG" not in data.train.paths
        assert f"val/{WNIDS[1]}/{WNIDS[1]}_2.JPEG" not in data.valid.paths
        assert not any("README" in p or "DS_Store" in p for p in data.train.paths)
    strict = DataConfig(**{**cfg.__dict__, "max_bad_fraction": 0.04})  # 2 of 42 = 4.8 %: now too many
    with pytest.raises(DataError, match=r"cannot decode 2 of 42"):
        load_data(strict, "cpu")


# ---------------------------------------------------------------------------------------------------------------
# Tracking store, artifact location, checkpoints, reports


def test_unreachable_server_fails_fast_before_any_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = _closed_port()
    argv = _run_grid(tmp_path, data=str(tmp_path / "no_data_either"))
    argv[argv.index("--tracking-uri") + 1] = f"http://alice:s3cr3t@127.0.0.1:{port}"
    start = time.perf_counter()
    err = _error(argv, capsys)
    assert time.perf_counter() - start < 20
    assert f"cannot use the MLflow tracking store http://alice:***@127.0.0.1:{port}" in err
    assert "s3cr3t" not in err and "no_data_either" not in err  # masked; checked before the data


def test_a_full_disk_under_the_store_is_refused_before_training(store: Path, tmp_path: Path, monkeypatch, capsys):
    from collections import namedtuple

    from sota_ablate import tracking

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(tracking.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 2**20, 5 * 2**20))
    err = _error(_run_grid(tmp_path, data=str(tmp_path / "data_not_reached")), capsys)
    assert "only 5 MiB free for the artifact location" in err and "needs at least 256 MiB" in err
    assert "data_not_reached" not in err  # refused before the data is looked at


def test_unusable_local_store_checkpoint_and_artifact_folders(store: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = _run_grid(store)
    argv[argv.index("--tracking-uri") + 1] = f"sqlite:///{blocker}/sub/mlflow.db"
    assert "cannot create the folder" in _error(argv, capsys)

    err = _error([*_run_grid(store), "--checkpoint-dir", str(blocker / "checkpoints")], capsys)
    assert f"cannot write checkpoints to {blocker / 'checkpoints'}" in err and "--checkpoint-dir" in err

    Tracker(f"sqlite:///{store}/mlflow.db", "x").client.create_experiment(
        "unwritable", artifact_location=(blocker / "artifacts").as_uri()
    )
    argv = _run_grid(store)
    argv[argv.index("--experiment") + 1] = "unwritable"
    err = _error(argv, capsys)
    assert "the artifact location" in err and "not writable" in err and "no_such_folder" not in err


def test_sqlite_store_keeps_artifacts_next_to_the_database(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{store}/mlflow.db", "artifacts_here")
    tracker.check()
    location = tracker.client.get_experiment(tracker.experiment_id()).artifact_location
    assert location == (store / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()


def test_unwritable_report_folder(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tracker(f"sqlite:///{store}/mlflow.db", "report_errors")
    tracker.check()
    parent = tracker.start_run("g", tags={"sota_ablate.role": "grid", "grid": "g"})
    parent.log_params({"cells": ["a"], "seeds": [0]})
    parent.end("FINISHED")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["report", "--tracking-uri", tracker.uri, "--experiment", "report_errors", "--out", str(blocker)]
    err = _error(argv, capsys)
    assert f"cannot write the report to {blocker / 'g'}" in err and "--out" in err


# ---------------------------------------------------------------------------------------------------------------
# Secrets and network exposure


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://bob:pw@host:5000/x", "http://bob:***@host:5000/x"),
        ("postgresql://bob:p@ss:w0rd@db/mlflow", "postgresql://bob:***@db/mlflow"),
        ("error talking to https://u:t0k@h.io/api: refused", "error talking to https://u:***@h.io/api: refused"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://host:5000", "http://host:5000"),
    ],
)
def test_mask_uri(text: str, masked: str) -> None:
    assert mask_uri(text) == masked


def test_no_password_reaches_params_or_tags(store: Path) -> None:
    tracker = Tracker(f"sqlite:///{store}/mlflow.db", "secrets")
    tracker.check()
    run = tracker.start_run("r", tags={"source": "http://carol:hunter2@10.0.0.1:5000"})
    run.log_params({"store": "https://carol:hunter2@example.org/mlflow", "nested": {"uri": "http://c:hunter2@h"}})
    run.end("FINISHED")
    data = tracker.client.get_run(run.run_id).data
    assert "hunter2" not in repr(data.params) + repr(data.tags)
    assert data.params["store"] == "https://carol:***@example.org/mlflow"


def test_servers_bind_to_loopback_by_default() -> None:
    import inspect

    from sota_ablate import server

    for fn in (server.server_command, server.start_server):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1"
    assert "--host" not in " ".join(a.option_strings[0] for a in _ui_parser()._actions if a.option_strings)


def _ui_parser():  # type: ignore[no-untyped-def]
    from sota_ablate.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices["ui"]
