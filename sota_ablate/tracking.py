"""Every MLflow call of sota_ablate lives here.

One parent run per ``run-grid`` invocation, one nested child run per cell and seed (``mlflow.parentRunId``),
explicit run ids everywhere (no fluent active-run surprises), metrics logged per epoch in ONE ``log_batch``
call (see shared mlflow-notes: ~40x cheaper than per-value logging), system metrics sampled by MLflow's own
monitor. Default store: ``sqlite:///mlflow.db`` in the working directory, so a plain ``mlflow ui`` there
shows the runs; ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` override it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_LENGTH = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (password masked) and the fix."""


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """``--tracking-uri`` beats ``MLFLOW_TRACKING_URI`` beats ``sqlite:///mlflow.db`` (working directory)."""
    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mask_uri(uri: str) -> str:
    """Hide a password in ``scheme://user:password@host`` so it never reaches logs or params."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", uri)


def git_commit() -> str:
    """The git commit of the sota_ablate checkout (with ``-dirty``), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _stringify(value: Any) -> str:
    if isinstance(value, tuple | list):
        value = list(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_LENGTH]


class Run:
    """An open MLflow run, addressed by id."""

    def __init__(self, tracker: Tracker, run_id: str, system_metrics: bool = False) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self._monitor: Any = None
        if system_metrics:
            self._start_system_metrics()

    @property
    def client(self) -> Any:
        return self.tracker.client

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10"))
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval, tracking_uri=self.tracker.uri)
            self._monitor.start()
        except Exception as err:  # system metrics are a nicety: never fail a run for them
            log.warning("system metrics disabled: %s", err)
            self._monitor = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _stringify(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All values of one step in one batch call."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, _stringify(v)) for k, v in tags.items()])

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_dict(self, data: Mapping[str, Any], path: str) -> None:
        self.client.log_dict(self.run_id, dict(data), path)

    def log_figure(self, figure: Any, path: str) -> None:
        self.client.log_figure(self.run_id, figure, path)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_state_dict(self, state: Mapping[str, Any], path: str = "model/state_dict.pt") -> None:
        """Model weights as a plain ``torch.save`` state dict (portable, no pickle of our classes)."""
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            buf = io.BytesIO()
            torch.save(dict(state), buf)
            local.write_bytes(buf.getvalue())
            self.client.log_artifact(self.run_id, str(local), str(Path(path).parent))

    def end(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as err:
                log.warning("system metrics monitor did not stop cleanly: %s", err)
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """A tracking store and experiment."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment_name = experiment
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def check(self, timeout_s: float = 5.0) -> None:
        """Fail fast (seconds, not minutes) if the store cannot be reached, before any training starts."""
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))
        try:
            self.experiment_id()
        except Exception as err:
            raise TrackingError(
                f"cannot use the MLflow tracking store {mask_uri(self.uri)}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:300] if str(err) else ''}. Start the server, fix --tracking-uri / "
                "MLFLOW_TRACKING_URI, or omit both to use sqlite:///mlflow.db in this folder."
            ) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                self._experiment_id = self.client.create_experiment(self.experiment_name)
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {self.experiment_name!r} is deleted in {mask_uri(self.uri)}; restore it "
                        "(mlflow experiments restore) or pass another --experiment"
                    )
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def start_run(
        self,
        name: str,
        tags: Mapping[str, Any] | None = None,
        parent: Run | None = None,
        system_metrics: bool = False,
    ) -> Run:
        """Create a run (nested under ``parent`` when given)."""
        all_tags = {k: _stringify(v) for k, v in (tags or {}).items()}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=all_tags)
        return Run(self, run.info.run_id, system_metrics=system_metrics)

    @contextmanager
    def run(self, name: str, **kwargs: Any):
        """Context manager: FINISHED on success, KILLED on Ctrl-C, FAILED on an exception (re-raised)."""
        run = self.start_run(name, **kwargs)
        try:
            yield run
        except KeyboardInterrupt:
            run.end("KILLED")
            raise
        except BaseException:
            run.end("FAILED")
            raise
        else:
            run.end("FINISHED")

    def search_runs(self, filter_string: str = "", max_results: int = 10000) -> Any:
        """``mlflow.search_runs`` over this experiment, as a pandas DataFrame."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(
            experiment_ids=[self.experiment_id()], filter_string=filter_string, max_results=max_results
        )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    # Reading back (report): never creates the experiment, artifacts addressed by run id.

    def find_experiment_id(self) -> str | None:
        """The experiment's id, or None when it does not exist or is deleted (unlike ``experiment_id``)."""
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None or exp.lifecycle_stage == "deleted":
            return None
        self._experiment_id = exp.experiment_id
        return self._experiment_id

    def read_artifact_text(self, run_id: str, path: str) -> str | None:
        """The text of a run's artifact, or None when the run has no such artifact."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bar per small file
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception as err:  # missing artifact: MlflowException or OSError depending on the store
                log.debug("artifact %s of run %s not readable: %s", path, run_id, err)
                return None
            return Path(local).read_text(encoding="utf-8")

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Every file of ``local_dir`` as artifacts of a run (finished or not), under ``artifact_path``."""
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)
