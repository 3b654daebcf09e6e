"""The MLflow tracking server and UI: ``mlflow server`` as a child process of ours (``ui`` command, tests).

Started in its own process group, bound to 127.0.0.1 unless told otherwise, waited for on ``/health``, stopped
with its workers (SIGTERM to the group, SIGKILL after a timeout), and killed by the kernel when the process that
started it dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from sota_ablate.tracking import UI_TRAINING_VIEW, TrackingError, mask_uri


def is_server_uri(uri: str) -> bool:
    """True for ``http(s)://`` tracking URIs (a tracking server) rather than a database or file store."""
    return uri.split(":", 1)[0].lower() in ("http", "https")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def server_command(
    backend_uri: str,
    port: int,
    host: str = "127.0.0.1",
    artifacts_destination: str | None = None,
    workers: int = 1,
) -> list[str]:
    """``mlflow server`` serving ``backend_uri`` (and proxying artifacts to ``artifacts_destination``)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    return cmd


def server_env() -> dict[str, str]:
    """The environment for ``mlflow server``: no job-execution workers (2 processes and ~6 s to start, not ~15)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(
    backend_uri: str,
    port: int,
    host: str = "127.0.0.1",
    artifacts_destination: str | None = None,
    timeout_s: float = 120.0,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``mlflow server`` in its own process group and return once it answers ``/health``.

    Stop it with ``stop_server``. Raises TrackingError if it exits or does not answer within ``timeout_s``.
    """
    cmd = server_command(backend_uri, port, host, artifacts_destination)
    die = _die_with_parent if sys.platform == "linux" else None
    proc = subprocess.Popen(cmd, env=server_env(), start_new_session=True, preexec_fn=die, **popen)
    url = f"http://{host}:{port}/health"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise TrackingError(f"mlflow server for {mask_uri(backend_uri)} exited ({proc.returncode}) at start")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return proc
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TrackingError(f"mlflow server on {host}:{port} did not answer within {timeout_s:.0f} s")
            time.sleep(0.25)
    except BaseException:  # Ctrl-C included: never leave a server behind
        stop_server(proc)
        raise


def _die_with_parent() -> None:
    """In the server's process, before exec (Linux): SIGTERM when the process that started it dies, so a killed
    ``ui`` command or test run leaves no server behind (its own session shields it from their signals)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def serve_ui(uri: str, port: int = 5000, out: IO[str] | None = None) -> int:
    """The MLflow UI for store ``uri`` on 127.0.0.1:``port`` (0: any free port) until Ctrl-C; returns 0.

    A tracking server (``http(s)://``) already is a UI: its address is printed and nothing is started.
    """
    out = out or sys.stdout
    if is_server_uri(uri):
        print(f"{mask_uri(uri)} is a tracking server: its UI is at that address (nothing to start)", file=out)
        return 0
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():
            raise TrackingError(
                f"no MLflow store at {db.resolve()}: run the ui command in the folder where run-grid ran, or pass "
                "--tracking-uri (or set MLFLOW_TRACKING_URI)"
            )
    if port == 0:
        port = free_port()
    elif not port_is_free(port):
        raise TrackingError(f"port {port} on 127.0.0.1 is in use: pass --port N, or --port 0 for any free port")
    proc = start_server(uri, port)
    print(f"MLflow UI for {mask_uri(uri)}: http://127.0.0.1:{port}  (Ctrl-C stops it)", file=out, flush=True)
    print(f"training runs: http://127.0.0.1:{port}/#/experiments?{UI_TRAINING_VIEW}", file=out, flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        stop_server(proc)
        print("MLflow UI stopped", file=out, flush=True)
        return 0
    raise TrackingError(f"the MLflow UI server exited unexpectedly (status {proc.returncode})")
