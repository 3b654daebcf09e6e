"""``python -m sota_ablate ui`` over a store holding a smoke grid, looked at in headless Chromium.

The MLflow UI is a React app: Chromium runs its JavaScript (``--virtual-time-budget``) before dumping the DOM and
taking a screenshot (kept in the test's tmp folder). Sorted by run name the experiment page lists nested runs
flat, so the grid's parent run and its children are all rows of the table.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from sota_ablate import schema
from sota_ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs Debian's)")
CELLS = ["baseline", "mixup"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store with one smoke grid run (the chapter grid's baseline and mixup cells)."""
    from tests.conftest import make_image_folder

    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = [
        "run-grid", "--profile", "smoke", "--grid", str(ROOT / "ablations" / "chapter.toml"),
        "--data", str(make_image_folder(tmp / "images")), "--cache-dir", str(tmp / "cache"),
        "--checkpoint-dir", str(tmp / "checkpoints"), "--tracking-uri", uri, "--experiment", "ui",
        "--device", "cpu", "--cells", ",".join(CELLS),
    ]  # fmt: skip
    assert main(args) == 0
    mlflow.set_tracking_uri(uri)
    return uri, tmp, mlflow.get_experiment_by_name("ui").experiment_id


def _wait_for_url(log: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("MLflow UI for ") and "http://127.0.0.1:" in line:
                return line.split(": ", 1)[1].split()[0]
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.2)
    raise AssertionError(f"no URL printed within {timeout_s} s:\n{log.read_text(errors='replace')}")


def _chromium(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=20000", *action, url,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_chromium
def test_ui_shows_the_grid_runs_in_chromium(store):
    uri, tmp, experiment_id = store
    log = tmp / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sota_ablate", "ui", "--port", "0", "--tracking-uri", uri],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    try:
        base = _wait_for_url(log, proc)
        assert base.startswith("http://127.0.0.1:")
        url = (
            f"{base}/#/experiments/{experiment_id}/runs?orderByKey=attributes.run_name&orderByAsc=true"
            "&workflowType=machine_learning"  # the UI's "Model training" view (tracking.UI_TRAINING_VIEW)
        )
        # the parent run is named after the grid; the dataset column shows the training set
        names = [">chapter<", *(f">{c}<" for c in CELLS), "images/train ("]
        for attempt in range(3):  # a loaded machine may need longer than one time budget for the app
            dom = _chromium(url, tmp / f"chromium-{attempt}", "--dump-dom").stdout
            if all(n in dom for n in names):
                break
        assert all(n in dom for n in names), [n for n in names if n not in dom]
        assert ">Evaluation runs<" not in dom  # the training layout, not GenAI's
        parent = mlflow.search_runs([experiment_id], filter_string=f"tags.`{schema.ROLE}` = 'grid'").iloc[0]
        page = f"{base}/#/experiments/{experiment_id}/runs/{parent.run_id}?workflowType=machine_learning"
        run_dom = _chromium(page, tmp / "chromium-run", "--dump-dom").stdout
        assert "The chapter" in run_dom and "final accuracy" in run_dom, "the grid run's description is missing"
        shot = tmp / "ui_experiment_page.png"
        _chromium(url, tmp / "chromium-shot", f"--screenshot={shot}")
        assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot"
        print(f"screenshot: {shot}")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0 and "MLflow UI stopped" in log.read_text(errors="replace")
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # the server is gone too
        urllib.request.urlopen(f"{base}/health", timeout=5)


def test_ui_for_a_tracking_server_just_points_at_it(capsys):
    assert main(["ui", "--tracking-uri", "http://mlflow.example:5000"]) == 0
    assert "is a tracking server" in capsys.readouterr().out


def test_ui_without_a_store_says_where_it_looked(tmp_path, capsys):
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and "Traceback" not in err


def test_ui_on_a_busy_port_is_a_clear_error(tmp_path, capsys):
    import socket

    (tmp_path / "m.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_ui_port_out_of_range(capsys):
    assert main(["ui", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
