"""Every MLflow call of sota_ablate lives here.

One parent run per ``run-grid`` invocation, one nested child run per cell and seed (``mlflow.parentRunId``),
explicit run ids everywhere (no fluent active-run surprises), metrics logged per epoch in ONE ``log_batch``
call (see shared mlflow-notes: ~40x cheaper than per-value logging), system metrics sampled by MLflow's own
monitor. Default store: ``sqlite:///mlflow.db`` in the working directory, so a plain ``mlflow ui`` there
shows the runs; ``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` override it.

MLflow's own features, not imitations of them: the experiment is tagged as model training (``mlflow.experimentKind``:
the UI opens its training layout, not GenAI's), each run's description is MLflow's note (``set_description``), its
training and validation sets are MLflow datasets (``log_datasets``: metadata only, one call), and ``--log-model``
logs an MLflow model with a signature and input example (``log_pytorch_model``), registered when asked.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sota_ablate import schema
from sota_ablate.interrupts import protected

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_LENGTH = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI (password masked) and the fix."""


class DiskFullError(TrackingError):
    """A disk filled up mid-grid (the store's, its artifacts', a temporary file's): the grid stops, the rerun of the
    same command continues it once there is room."""


# How long one MLflow HTTP call may keep trying before a grid gives up (``cli.main`` sets these defaults; the
# environment overrides them): 4 retries with exponential backoff (2, 4, 8, 16 s) and 20 s per attempt, about two
# minutes in all for a server that is down, instead of MLflow's own 4 minutes (refused) to 20 minutes (hung).
# Free space a local store and its artifact folder need before a grid starts: each cell run writes ~1 MB (figures,
# predictions, the epoch table), a sqlite store grows by ~100 kB per run; this leaves room for a few hundred.
# ``SOTA_ABLATE_MIN_FREE_MB`` overrides it (a small disk, the disk-full tests).
MIN_FREE_BYTES = 256 * 2**20
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads in a message that lost its errno (sqlite, torch's serialiser, a tracking server's reply).
DISK_FULL_TEXT = ("database or disk is full", "no space left on device", "disk quota exceeded")

# The MLflow 3 UI's query parameter for its "Model training" view. MLflow 3.17's UI lays an experiment out by its
# GenAI / Model training switch (GenAI by default, seen in headless Chromium: the experimentKind tag alone did not
# change it), so links to the UI carry it; the experiment's ``mlflow.experimentKind`` tag is set as well.
UI_TRAINING_VIEW = "workflowType=machine_learning"

HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def is_store_error(err: BaseException) -> bool:
    """True for an error of the tracking store itself (MLflow, its HTTP client, the database), not of training."""
    module = type(err).__module__ or ""
    return module.split(".")[0] in ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3")


# How a store reports that two writers inserted the same row at once (sqlite, PostgreSQL, MySQL; a tracking server
# passes the database's words on): MLflow checks, then inserts, in separate steps for datasets and experiment tags.
RACE_TEXT = ("unique constraint failed", "integrityerror", "duplicate key value", "duplicate entry")


def is_insert_race(err: BaseException) -> bool:
    """True when ``err`` says another writer inserted the same row between MLflow's check and its insert."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(t in text for t in RACE_TEXT)


def retry_insert_race(call: Any, *args: Any, attempts: int = 5, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, tried again when a concurrent writer won an insert race (``is_insert_race``):
    the next attempt finds the row the other one wrote. Two ``run-grid`` on one store log the same dataset and tag
    the same experiment at about the same moment; each attempt is one transaction, rolled back when it fails."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if attempt == attempts - 1 or not is_insert_race(err):
                raise
            log.debug("store insert race (%s), trying again", err)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def outage(err: BaseException, uri: str) -> TrackingError:
    """The error for a store that stopped answering mid-grid: what happened and how to continue."""
    first = str(err).splitlines()[0][:300] if str(err) else ""
    return TrackingError(
        f"the MLflow tracking store {mask_uri(uri)} stopped answering ({type(err).__name__}: {mask_uri(first)}) "
        "after the retries MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT allow. Finished cells are kept there and "
        "the interrupted one in its checkpoint: once the store is back, run the same command again."
    )


def min_free_bytes() -> int:
    """The free space a local store and its artifact folder need: ``SOTA_ABLATE_MIN_FREE_MB`` or 256 MiB."""
    text = os.environ.get("SOTA_ABLATE_MIN_FREE_MB")
    try:
        return int(float(text) * 2**20) if text else MIN_FREE_BYTES
    except ValueError:
        raise TrackingError(f"SOTA_ABLATE_MIN_FREE_MB={text!r} is not a number of MiB, e.g. 256") from None


def disk_full_cause(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain (causes and contexts) that says a disk is full, or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        if any(t in str(e).lower() for t in DISK_FULL_TEXT):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]  # sqlalchemy keeps the DB-API error in .orig
    return None


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """``--tracking-uri`` beats ``MLFLOW_TRACKING_URI`` beats ``sqlite:///mlflow.db`` (working directory)."""
    return cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mask_uri(uri: str) -> str:
    """Hide a password in ``scheme://user:password@host`` so it never reaches logs or params.

    Works on any text (error messages, tracebacks): every ``://user:password@`` in it is masked, also when
    the password itself contains ``@`` or ``:``.
    """
    return re.sub(r"(://[^:/@\s]+:)[^/\s]*@", r"\1***@", uri)


def local_store_folder(uri: str) -> Path | None:
    """The folder of a ``sqlite:///path/to/mlflow.db`` store (relative paths: from the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().absolute().parent


def local_store_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path/to/mlflow.db`` store (None for other stores)."""
    folder = local_store_folder(uri)
    return None if folder is None else folder / Path(uri[len("sqlite:///") :].split("?", 1)[0]).name


_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file


def check_store_file(uri: str, must_exist: bool = False) -> None:
    """Refuse a local sqlite store whose path is a folder or a file that is not an SQLite database (MLflow would
    fail deep inside SQLAlchemy); with ``must_exist``, also one that does not exist (reading never creates it).

    Raises:
        TrackingError: naming the file and the fix.
    """
    path = local_store_file(uri)
    if path is None:
        return
    if path.is_dir():
        raise TrackingError(
            f"the MLflow store {path} is a folder, not a database file: pass --tracking-uri "
            f"sqlite:///{path}/mlflow.db (a file in it) or another file."
        )
    if not path.exists():
        if must_exist:
            raise TrackingError(
                f"there is no MLflow store {path}: run a grid first (run-grid --tracking-uri {mask_uri(uri)}), or "
                "pass --tracking-uri / MLFLOW_TRACKING_URI naming an existing store."
            )
        return
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except OSError as err:
        raise TrackingError(
            f"cannot read the MLflow store {path} ({err.strerror or err}): make it readable or pass another "
            "--tracking-uri."
        ) from None
    if head and head != _SQLITE_HEADER:
        raise TrackingError(
            f"{path} is not an SQLite database (it does not start with the SQLite header): pass --tracking-uri "
            "naming the right file, or move this one away so that a new store is created there."
        )


def default_checkpoint_dir(uri: str) -> Path:
    """``checkpoints/`` next to a sqlite store, else ``checkpoints/`` in the working directory."""
    return (local_store_folder(uri) or Path.cwd()) / "checkpoints"


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
    return mask_uri(text)[:MAX_PARAM_LENGTH]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a run used, as MLflow records it: metadata only (no data is copied).

    Attributes:
        name: shown in the UI's dataset column (e.g. ``imagenette-160px/train``).
        digest: the data's fingerprint (at most 36 characters: MLflow's column).
        source: where the data comes from: an ``http(s)://`` URL or a local path.
        context: ``schema.DATASET_TRAINING`` or ``schema.DATASET_VALIDATION``.
        profile: summary numbers (images, classes), shown with the dataset.
    """

    name: str
    digest: str
    source: str
    context: str
    profile: Mapping[str, Any] = field(default_factory=dict)


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the UI of tracking server ``uri`` (password masked); None for any other store."""
    if uri.split(":", 1)[0].lower() not in ("http", "https"):
        return None
    return f"{mask_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_TRAINING_VIEW}"


class _Protected:
    """An MLflow client whose every method call runs inside ``interrupts.protected()``: Ctrl-C or SIGTERM waits
    for the call to end, so no sqlite transaction is cut in half (the store would stay locked for the writes
    that mark the run KILLED)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with protected():
                return attr(*args, **kwargs)

        return call


class Run:
    """An open MLflow run, addressed by id."""

    def __init__(self, tracker: Tracker, run_id: str, system_metrics: bool = False, resumed: bool = False) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.resumed = resumed  # reopened to continue: params it already has are kept (MLflow params are immutable)
        self._monitor: Any = None
        if system_metrics:
            self._start_system_metrics(resumed)

    @property
    def client(self) -> Any:
        return self.tracker.client

    def _start_system_metrics(self, resumed: bool = False) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            interval = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10"))
            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval, tracking_uri=self.tracker.uri, resume_logging=resumed
            )
            self._monitor.start()
        except Exception as err:  # system metrics are a nicety: never fail a run for them
            log.warning("system metrics disabled: %s", err)
            self._monitor = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if self.resumed:
            present = self.client.get_run(self.run_id).data.params
            params = {k: v for k, v in params.items() if k not in present}
        items = [Param(k, _stringify(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """All values of one step in one batch call."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(schema.safe_key(k), float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, _stringify(v)) for k, v in tags.items()])

    def delete_tags(self, keys: Sequence[str]) -> None:
        """Remove tags (those the run does not have are ignored)."""
        present = self.client.get_run(self.run_id).data.tags
        for key in keys:
            if key in present:
                self.client.delete_tag(self.run_id, key)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` was logged."""
        return {step for step, _ in self.tracker.metric_history(self.run_id, key)}

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

    def set_description(self, markdown: str) -> None:
        """The run's description on its MLflow page (MLflow's note, markdown), replacing any earlier one."""
        self.client.set_tag(self.run_id, schema.NOTE, mask_uri(markdown))

    def log_datasets(self, specs: Sequence[DatasetSpec]) -> None:
        """The run's datasets as MLflow inputs (the runs table's dataset column), in one call; a resumed run
        that already has them logs nothing."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if self.resumed and self.client.get_run(self.run_id).inputs.dataset_inputs:
            return
        inputs = []
        for spec in specs:
            with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": the same one twice
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(spec.source)  # an HTTP URL or a local path
            meta = MetaDataset(source, name=spec.name, digest=spec.digest[:36]).to_dict()
            entity = Dataset(**meta, profile=json.dumps(dict(spec.profile)))
            inputs.append(DatasetInput(entity, tags=[InputTag(schema.DATASET_CONTEXT, spec.context)]))
        retry_insert_race(self.client.log_inputs, self.run_id, datasets=inputs)

    def log_pytorch_model(self, model: Any, example: Any, registered_name: str | None = None) -> None:
        """``model`` as the run's MLflow model (``schema.MODEL``; pytorch flavour, ``pt2``: torch.export), with
        the signature inferred from ``example`` (a numpy batch of at least 2 inputs: the batch size stays free)
        and its outputs, and that example; registered as a new version of ``registered_name`` when given."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        mlflow.set_tracking_uri(self.tracker.uri)
        with protected():
            mlflow.pytorch.log_model(
                model,
                name=schema.MODEL,
                signature=infer_signature(example, output),
                input_example=example,
                serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                registered_model_name=registered_name,
                run_id=self.run_id,
            )

    def discard(self) -> None:
        """Withdraw a run that lost its claim (``lease.py``): stopped and deleted, never shown as a result."""
        self.end("KILLED")
        self.client.delete_run(self.run_id)

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
        self._artifact_folder: Path | None = None  # a local artifact location, once ``check`` found it

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` of the store; every call through it is protected from Ctrl-C / SIGTERM."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = _Protected(MlflowClient(tracking_uri=self.uri))
        return self._client

    def check(self, timeout_s: float = 5.0, create: bool = True) -> None:
        """Fail fast (seconds, not minutes) if the store cannot be reached, before any training starts.

        Also checks that a local sqlite store is a database file (``check_store_file``) and that a local artifact
        location (a sqlite store's ``mlartifacts/``, any ``file:`` location) can be written. With ``create=False``
        (reading, the report) nothing is created: a missing local store is an error, a missing experiment is left
        to the caller (``find_experiment_id`` is None) and the artifact location is not written to.
        """
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, timeout_s)))
        try:
            check_store_file(self.uri, must_exist=not create)
            folder = local_store_folder(self.uri)
            if folder is not None and create:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise TrackingError(
                        f"cannot create the folder {folder} of the MLflow store {mask_uri(self.uri)} "
                        f"({err.strerror or err}): pass --tracking-uri sqlite:///<a writable folder>/mlflow.db."
                    ) from None
            if not create:
                self.find_experiment_id()
                return
            self.experiment_id()
        except TrackingError:
            raise
        except Exception as err:
            first = str(err).splitlines()[0][:300] if str(err) else ""
            raise TrackingError(
                f"cannot use the MLflow tracking store {mask_uri(self.uri)}: {type(err).__name__}: "
                f"{mask_uri(first)}. Start the server, fix --tracking-uri / "
                "MLFLOW_TRACKING_URI, or omit both to use sqlite:///mlflow.db in this folder."
            ) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self._check_artifact_location()

    def _check_artifact_location(self) -> None:
        from urllib.parse import unquote, urlparse

        location = self.client.get_experiment(self.experiment_id()).artifact_location or ""
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            return  # a server or cloud store: checked by the first artifact upload
        folder = Path(unquote(parsed.path) if parsed.scheme else location)
        self._artifact_folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as err:
            raise TrackingError(
                f"the artifact location {mask_uri(location)} of experiment {self.experiment_name!r} is not "
                f"writable ({err.strerror or err}): make it writable, or use another --experiment or --tracking-uri."
            ) from None
        for where, path in (("artifact location", folder), ("MLflow store", local_store_folder(self.uri))):
            if path is None:
                continue
            free = shutil.disk_usage(path).free
            if free < min_free_bytes():
                raise TrackingError(
                    f"only {free / 2**20:.0f} MiB free for the {where} in {path} ({mask_uri(self.uri)}): a grid "
                    f"needs at least {min_free_bytes() / 2**20:.0f} MiB there (runs, figures, predictions). Free "
                    "some space, or pass --tracking-uri sqlite:///<a folder with room>/mlflow.db."
                )

    def disk_full(self, err: BaseException) -> DiskFullError | None:
        """The error that stops a grid whose disk filled up mid-run (the store's, its artifacts', a temporary
        file's), naming the folder, the space it needs and how to continue; None when ``err`` is something else."""
        cause = disk_full_cause(err)
        if cause is None:
            return None
        need = min_free_bytes()
        store = local_store_folder(self.uri)
        filename = getattr(cause, "filename", None)
        named = Path(filename).parent if isinstance(filename, str) and filename else None
        if "database or disk is full" in str(cause).lower() and store is not None:
            named = store  # sqlite's own words: the database's disk
        folders = [named] if named is not None else [f for f in (self._artifact_folder, store) if f is not None]
        free = {f: _free_bytes(f) for f in folders}
        known = {f: b for f, b in free.items() if b is not None and (b < need or f == named)}
        first = str(cause).splitlines()[0][:200] if str(cause) else type(cause).__name__
        if not known and local_store_folder(self.uri) is None and self._artifact_folder is None:
            where = f"the disk of the tracking server {mask_uri(self.uri)} is full ({mask_uri(first)})"
            fix = "free space on the server"  # its folders are not ours to measure
        elif not known:  # none of our folders is short of space: e.g. /dev/shm, named in the message itself
            where = f"a disk is full ({type(cause).__name__}: {mask_uri(first)})"
            fix = "free space there"
        else:
            folder = min(known, key=lambda f: known[f])  # the fullest of the candidates is the one that filled up
            where = (
                f"the disk of {folder} is full ({type(cause).__name__}: {mask_uri(first)}; "
                f"{known[folder] / 2**20:.0f} MiB free, a grid needs at least {need / 2**20:.0f} MiB there)"
            )
            fix = f"free at least {need / 2**20:.0f} MiB in {folder}"
        return DiskFullError(
            f"{where}. The grid stopped: finished cells are kept in {mask_uri(self.uri)} and the interrupted one "
            f"continues from its checkpoint (if its folder had room): {fix}, then run the same command again."
        )

    def stopped(self, err: BaseException) -> TrackingError | None:
        """The error that stops the grid for ``err``: a full disk or an outage of the store; None otherwise."""
        full = self.disk_full(err)
        if full is not None:
            return full
        return outage(err, self.uri) if is_store_error(err) else None

    def experiment_id(self) -> str:
        """The experiment's id; created when missing, tagged as model training (``schema.EXPERIMENT_KIND``: the UI's
        training layout) when it is not yet."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            kind = {schema.EXPERIMENT_KIND: schema.EXPERIMENT_KIND_TRAINING}
            if exp is None:
                # A sqlite store keeps its artifacts next to the database, never in ./mlruns of the cwd.
                folder = local_store_folder(self.uri)
                location = (folder / "mlartifacts").as_uri() if folder is not None else None
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=location, tags=kind
                    )
                except Exception as err:  # another run-grid created it a moment ago: use theirs
                    exp = self.client.get_experiment_by_name(self.experiment_name)
                    if exp is None or exp.lifecycle_stage == "deleted":
                        raise err from None
                    self._experiment_id = exp.experiment_id
            else:
                if exp.lifecycle_stage == "deleted":
                    raise self._deleted(exp.experiment_id)
                if schema.EXPERIMENT_KIND not in exp.tags:  # made by an earlier version or by hand
                    retry_insert_race(self.client.set_experiment_tag, exp.experiment_id, *next(iter(kind.items())))
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def run_url(self, run_id: str) -> str | None:
        """The run's page when the store is a tracking server, else None (``run_url``)."""
        return run_url(self.uri, self.experiment_id(), run_id)

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
            all_tags[schema.PARENT] = parent.run_id
        run = self.client.create_run(self.experiment_id(), run_name=name, tags=all_tags)
        return Run(self, run.info.run_id, system_metrics=system_metrics)

    def reopen_run(self, run_id: str, system_metrics: bool = False) -> Run:
        """Set a terminated (or stale RUNNING) run back to RUNNING to continue logging to it."""
        self.client.update_run(run_id, status="RUNNING")
        return Run(self, run_id, system_metrics=system_metrics, resumed=True)

    def run_status(self, run_id: str) -> tuple[str, dict[str, str]] | None:
        """(status, tags) of a run of this experiment, or None when there is no such (live) run."""
        try:
            run = self.client.get_run(run_id)
        except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST
            return None
        if run.info.experiment_id != self.experiment_id() or run.info.lifecycle_stage == "deleted":
            return None
        return run.info.status, dict(run.data.tags)

    def search_runs(self, filter_string: str = "", max_results: int = 10000) -> Any:
        """``mlflow.search_runs`` over this experiment, as a pandas DataFrame."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        with protected():
            return mlflow.search_runs(
                experiment_ids=[self.experiment_id()], filter_string=filter_string, max_results=max_results
            )

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    # Reading back (report): never creates the experiment, artifacts addressed by run id.

    def find_experiment_id(self) -> str | None:
        """The experiment's id, or None when it does not exist (unlike ``experiment_id``, never creates it).

        Raises:
            TrackingError: the experiment is deleted (in MLflow's trash: its name cannot be reused until it is
                restored or purged), with the command that restores it.
        """
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return None
        if exp.lifecycle_stage == "deleted":
            raise self._deleted(exp.experiment_id)
        self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _deleted(self, experiment_id: str) -> TrackingError:
        return TrackingError(
            f"experiment {self.experiment_name!r} is deleted in {mask_uri(self.uri)} (MLflow keeps its name until "
            f"it is purged): restore it (mlflow experiments restore --experiment-id {experiment_id}, with "
            "MLFLOW_TRACKING_URI set to this store) or pass another --experiment."
        )

    def missing_artifact_folder(self) -> Path | None:
        """The experiment's local artifact folder when it no longer exists (moved or deleted), else None."""
        from urllib.parse import unquote, urlparse

        experiment_id = self.find_experiment_id()
        if experiment_id is None:
            return None
        location = self.client.get_experiment(experiment_id).artifact_location or ""
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            return None
        folder = Path(unquote(parsed.path) if parsed.scheme else location)
        return None if folder.exists() else folder

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

    def fail_running_children(
        self,
        parent_run_id: str,
        reason: str,
        status: str = "FAILED",
        cell: str | None = None,
        seed: int | None = None,
    ) -> list[str]:
        """End the RUNNING child runs of a grid run (only those of ``cell`` and ``seed`` when given) with
        ``status`` and a failure tag (``schema.FAILURE``): runs whose process died and so never ended them."""
        df = self.search_runs(f"tags.`{schema.PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'")
        if df.empty:
            return []
        for column, value in (
            (f"tags.{schema.CELL}", cell),
            (f"tags.{schema.SEED}", None if seed is None else str(seed)),
        ):
            if value is not None:
                df = df[df[column] == value] if column in df else df.iloc[0:0]
        ids = [str(r) for r in df["run_id"]]
        for run_id in ids:
            self.end_run(run_id, status, reason)
        return ids

    def end_run(self, run_id: str, status: str, reason: str) -> None:
        """End a run some other process left open, with ``status`` and the failure tag (``schema.FAILURE``)."""
        self.client.set_tag(run_id, schema.FAILURE, reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def mark_running(self, run_id: str) -> None:
        """Reopen a finished or killed run (a grid run being resumed)."""
        self.client.update_run(run_id, status="RUNNING")

    def artifact_location(self) -> str:
        """Where the experiment's runs put their artifacts (``mlflow-artifacts:/...`` when a server proxies them)."""
        return str(self.client.get_experiment(self.experiment_id()).artifact_location)


def _free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk of ``folder`` (or of its nearest existing parent); None when it cannot be measured."""
    for path in (folder, *folder.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return None
