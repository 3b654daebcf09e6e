"""``--executor ray``: every cell x seed of a grid is one Ray task, on one machine or a cluster.

Driver (this process): connects to Ray (by default the cluster ``ray start`` runs on this machine, else a new
local instance; ``auto`` for the cluster this node belongs to; ``ray://host:port``), checks that every worker can reach the tracking store, submits one task per pending cell
x seed with its resources (``num_gpus`` per cell when the cluster has GPUs, ``num_cpus`` otherwise) and a
bounded ``max_retries``, then gathers results as they finish (``ray.wait``) with a live count of done /
running / failed. It logs the per-cell accuracies on the parent run, which ``grid_run.run_grid`` created or
resumed (the resume rules are the local ones: same grid hash, finished cells skipped).

Worker (a Ray task; ``executors/worker.py``, shared with ``--cells-per-gpu``): loads the data itself through its
node's decode cache and places it within its memory like the local executor (and refuses data whose identity
differs from the driver's), ends as FAILED any RUNNING child run of the same cell and seed (left by an earlier attempt
whose worker died), and runs ``cell_run.run_cell`` on the plan the driver made, attached to the parent run id. MLflow is only reached through the tracking URI: with a
tracking server (``mlflow server --artifacts-destination ...``), params and metrics go to the server's database
and artifacts through the server, so workers need no shared disk.

Faults: a worker process that dies mid-cell (OOM killer, SIGKILL, lost node) makes Ray run the task again, up
to ``max_retries`` times; the retry marks the dead attempt's run FAILED before it starts anew, so every cell
ends with exactly one FINISHED run. A task that runs out of retries is a FAILED cell; the driver ends any run it
left RUNNING. For drills and tests, ``SOTA_ABLATE_FAULT_KILL=<cell>:<seed>`` in the driver's environment makes
the worker of that cell SIGKILL itself after its first logged epoch, on the first attempt only.

Ray is imported when this executor is used, never at import time (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from sota_ablate.cell_run import CellOutcome, run_cell
from sota_ablate.executors.base import CellTask, Executor, ExecutorError, GridJob, announce, skipped
from sota_ablate.executors.worker import WorkerSpec, unbound, worker_data, worker_spec
from sota_ablate.tracking import Run, Tracker, mask_uri
from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.record import EpochRecord, LoopObserver

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[ray]' in the sota_ablate checkout (or pip install 'ray>=2.9')"
FAULT_ENV = "SOTA_ABLATE_FAULT_KILL"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})


def import_ray() -> ModuleType:
    """The ``ray`` module, or ExecutorError saying how to install it."""
    # Cells print alike epoch-table lines: Ray must not fold them into "[repeated Nx across cluster]" (read
    # when ray is first imported).
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(
            f"--executor ray needs Ray, which is not installed here ({err}). Install it with {INSTALL_HINT}, "
            "or use --executor local."
        ) from None
    return ray


def unshareable_store(uri: str) -> str | None:
    """Why workers on other machines could not use tracking store ``uri`` (None when they can)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme.startswith("sqlite"):
        return "is a sqlite file on this machine"
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return "is a folder on this machine"
    if scheme in ("http", "https") and (parsed.hostname or "").lower() in LOOPBACK_HOSTS:
        return "is a server on this machine's loopback address, which on every other node is that node itself"
    return None


def unshareable_artifacts(location: str) -> bool:
    """True when an experiment's artifact location is a path on one machine (not proxied, not object storage)."""
    scheme = urlparse(location).scheme.lower()
    return scheme in ("", "file") or len(scheme) == 1


@dataclass(frozen=True)
class RaySettings:
    """How cells are placed on the cluster.

    Attributes:
        address: None joins ``$RAY_ADDRESS`` or the cluster ``ray start`` runs on this machine, else starts a
            local Ray instance; ``auto`` joins the cluster this node belongs to (an error when there is none);
            ``ray://host:port`` connects through Ray Client (``pip install 'ray[client]'``).
        cpus_per_cell: CPUs reserved per cell (also its torch threads); default 1.
        gpus_per_cell: GPUs reserved per cell; default 1 when the cluster has GPUs and cells run on CUDA, else 0.
        max_retries: how often Ray reruns a cell whose worker process died.
        poll_s: how often the live count is refreshed while no cell finishes.
    """

    address: str | None = None
    cpus_per_cell: float | None = None
    gpus_per_cell: float | None = None
    max_retries: int = 2
    poll_s: float = 2.0

    def validate(self) -> None:
        for key in ("cpus_per_cell", "gpus_per_cell"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ExecutorError(f"--{key.replace('_', '-')} {value}: use a number >= 0")
        if self.max_retries < 0:
            raise ExecutorError(f"--max-retries {self.max_retries}: use an integer >= 0")


class Progress:
    """A Ray actor that counts task starts: a task that starts again was retried after its worker died."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}

    def started(self, index: int) -> None:
        self.attempts[index] = self.attempts.get(index, 0) + 1

    def snapshot(self) -> dict[int, int]:
        return dict(self.attempts)


class KillAfterFirstEpoch(LoopObserver):
    """Fault injection: SIGKILL this worker process once the first epoch is logged (a worker dying mid-cell)."""

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        print(f"{FAULT_ENV}: killing this worker (pid {os.getpid()}) after epoch {record.epoch}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def run_cell_task(spec: WorkerSpec, task: CellTask, progress: Any) -> CellOutcome:
    """The Ray task: one cell x seed on a worker, logged to the shared store under the parent run."""
    import ray

    spec.enter()
    with contextlib.suppress(Exception):  # the live count is a nicety
        progress.started.remote(task.index)
    opts = spec.run_options()
    tracker = Tracker(spec.tracking_uri, spec.experiment)
    plan = task.plan
    orphans = tracker.fail_running_children(
        spec.parent_run_id,
        reason="its Ray worker died mid-cell; the task was retried",
        cell=plan.cell,
        seed=plan.seed,
    )
    node = ray.util.get_node_ip_address()
    where = f" [node {node}, pid {os.getpid()}"
    where += f"; retry: run {', '.join(orphans)} of the dead attempt marked FAILED]" if orphans else "]"
    announce(task, sys.stdout, suffix=where)
    data = worker_data(spec, plan, opts, f"on node {node}")
    fault = spec.fault_kill == f"{plan.cell}:{plan.seed}" and not orphans
    parent = Run(tracker, spec.parent_run_id)
    observer = KillAfterFirstEpoch() if fault else None
    return run_cell(plan.bind(data.info), data, opts, tracker, parent, observer=observer)


class RayExecutor(Executor):
    """Each cell x seed a Ray task (``--executor ray``); see the module docstring."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.settings = settings or RaySettings()
        self.settings.validate()
        self._ray: Any = None
        self._owns_ray = False
        self._nodes: list[dict[str, Any]] = []

    # Connecting and checking.

    def connect(self) -> ModuleType:
        """Join (or start) Ray once; returns the ray module."""
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            address = self.settings.address
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": True, "logging_level": logging.WARNING}
            if address is None:
                kwargs["include_dashboard"] = False
            sigterm = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(**kwargs)
            except Exception as err:
                raise ExecutorError(
                    f"cannot connect to Ray at {address or 'a new local instance'}: {type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}. Start a cluster with `ray start --head` "
                    "(and `ray start --address HEAD:6379` on the other nodes), then pass --ray-address auto."
                ) from None
            finally:
                # ray.init turns SIGTERM into sys.exit in the driver; keep ours (the CLI's: end the runs as KILLED)
                if threading.current_thread() is threading.main_thread() and sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
            self._owns_ray = True
        self._ray = ray
        self._nodes = [n for n in ray.nodes() if n.get("Alive")]
        return ray

    def _total(self, resource: str) -> float:
        return sum(float(n.get("Resources", {}).get(resource, 0.0)) for n in self._nodes)

    def device(self, requested: str) -> torch.device:
        """The device cells train on, from ``--device`` and the cluster (not this machine): auto is cuda when
        the cluster has GPUs (and --gpus-per-cell is not 0), else cpu."""
        self.connect()
        gpus = self.settings.gpus_per_cell
        if requested == "auto":
            use_cuda = self._total("GPU") > 0 and gpus != 0
        elif requested == "cpu":
            use_cuda = False
        elif requested in ("cuda", "cuda:0"):
            if self._total("GPU") == 0:
                raise ExecutorError("--device cuda: the Ray cluster has no GPUs; use --device cpu or auto")
            if gpus == 0:
                raise ExecutorError("--device cuda with --gpus-per-cell 0: give each cell a GPU (e.g. 1)")
            use_cuda = True
        else:
            raise ExecutorError(
                f"--device {requested}: with --executor ray use auto, cpu or cuda (Ray gives each cell its own GPU)"
            )
        return torch.device("cuda" if use_cuda else "cpu")

    def check(self, tracker: Tracker) -> None:
        """Print the cluster; on several nodes, refuse a store or artifact location that only one machine has
        (before the store is touched, so a refused sqlite file is not even created)."""
        ray = self.connect()
        n = len(self._nodes)
        address = getattr(ray.get_runtime_context(), "gcs_address", None) or "?"
        print(
            f"ray: {n} node{'s' if n != 1 else ''}, {self._total('CPU'):g} CPUs, {self._total('GPU'):g} GPUs "
            f"(cluster {address})",
            file=sys.stdout,
            flush=True,
        )
        if n <= 1:
            return  # one machine: a sqlite file or loopback server is shared by every worker
        why = unshareable_store(tracker.uri)
        if why:
            raise ExecutorError(
                f"the tracking store {mask_uri(tracker.uri)} {why}, but this Ray cluster has {n} nodes: workers "
                "elsewhere would log to their own copies (or fail), splitting the grid. Start a tracking server on a "
                "host every node reaches (mlflow server --backend-store-uri sqlite:///mlflow.db "
                "--artifacts-destination ./mlartifacts --host 0.0.0.0 --port 5000) and pass --tracking-uri "
                "http://HOST:5000."
            )
        tracker.check()  # reachable, with short timeouts, before asking it where artifacts go
        location = tracker.artifact_location()
        if unshareable_artifacts(location):
            raise ExecutorError(
                f"experiment {tracker.experiment_name!r} stores artifacts at {location}, a path on one machine, "
                f"but this Ray cluster has {n} nodes: start the server with --artifacts-destination (artifacts "
                "then go through it) and use a new --experiment."
            )

    def data_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu")  # the driver only fingerprints the data; workers load their own

    def close(self) -> None:
        if self._owns_ray and self._ray is not None:
            self._ray.shutdown()
        self._ray = None
        self._owns_ray = False

    # Running.

    def _resources(self, device: torch.device) -> tuple[float, float]:
        cpus = self.settings.cpus_per_cell if self.settings.cpus_per_cell is not None else 1.0
        gpus = self.settings.gpus_per_cell
        if gpus is None:
            gpus = 1.0 if device.type == "cuda" else 0.0
        if device.type == "cuda" and gpus == 0:
            raise ExecutorError("cells run on CUDA but --gpus-per-cell is 0: give each cell a GPU (e.g. 1)")
        fits = [
            n
            for n in self._nodes
            if float(n.get("Resources", {}).get("CPU", 0.0)) >= cpus
            and float(n.get("Resources", {}).get("GPU", 0.0)) >= gpus
        ]
        if not fits:
            raise ExecutorError(
                f"no node of the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs for one cell: lower "
                "--cpus-per-cell / --gpus-per-cell"
            )
        return cpus, gpus

    def _spec(self, job: GridJob, cpus: float, gpus: float) -> WorkerSpec:
        return worker_spec(
            job,
            job.opts.device.type,
            threads=max(1, int(cpus)),
            # a fraction of a GPU (--gpus-per-cell 0.5): the worker's memory limit, and its data placement within it
            gpu_share=gpus if 0 < gpus < 1 else None,
            cwd=os.getcwd(),
            env={k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")},
            fault_kill=os.environ.get(FAULT_ENV) or None,
        )

    def run(self, tasks: Sequence[CellTask], job: GridJob) -> Generator[CellOutcome, None, None]:
        ray = self.connect()
        out = job.out
        cpus, gpus = self._resources(job.opts.device)
        spec_ref = ray.put(self._spec(job, cpus, gpus))
        remote = ray.remote(run_cell_task)
        progress = ray.remote(num_cpus=0)(Progress).remote()
        pending: dict[Any, CellTask] = {}
        for task in tasks:
            if task.done_run_id is not None:
                yield skipped(task, out)
                continue
            options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": self.settings.max_retries}
            ref = remote.options(name=f"sota_ablate:{task.name}", retry_exceptions=False, **options).remote(
                spec_ref, unbound(task), progress
            )
            pending[ref] = task
        print(
            f"ray: {len(pending)} cell runs submitted ({cpus:g} CPU, {gpus:g} GPU each; a cell whose worker dies "
            f"is retried up to {self.settings.max_retries} times)",
            file=out,
            flush=True,
        )
        count = _Count(total=len(pending))
        complete = False
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.settings.poll_s)
                count.update(self._attempts(ray, progress), {t.index: t for t in pending.values()}, out)
                for ref in ready:
                    task = pending.pop(ref)
                    outcome = self._result(ray, ref, task, job)
                    count.finished(task, outcome, out)
                    yield outcome
            complete = True
        finally:
            if complete:
                self._end_orphans(job, "FAILED", "left RUNNING by a Ray worker that died")
            else:  # Ctrl-C or the consumer stopped: stop the cells still running, end their runs
                for ref in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                self._end_orphans(job, "KILLED", "grid interrupted: its Ray task was cancelled")
            with contextlib.suppress(Exception):
                ray.kill(progress)

    def _attempts(self, ray: ModuleType, progress: Any) -> dict[int, int]:
        try:
            return dict(ray.get(progress.snapshot.remote(), timeout=10))
        except Exception as err:  # the live count is a nicety
            log.debug("progress actor: %s", err)
            return {}

    def _result(self, ray: ModuleType, ref: Any, task: CellTask, job: GridJob) -> CellOutcome:
        """The task's outcome; a task that raised or ran out of retries is a FAILED cell (its run ended)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, BaseException):
                reason = f"{type(cause).__name__}: {cause}"
            else:
                text = str(err).strip().splitlines()
                reason = f"{type(err).__name__}: {text[0] if text else ''}"
            reason = reason[:2000]
            ids = job.tracker.fail_running_children(
                job.parent.run_id, f"Ray: {reason}", cell=task.plan.cell, seed=task.plan.seed
            )
            print(f"!! {task.name} FAILED on Ray: {reason}\n", file=job.out, flush=True)
            return CellOutcome(task.plan.cell, task.plan.seed, "FAILED", ids[-1] if ids else "", error=reason)

    def _end_orphans(self, job: GridJob, status: str, reason: str) -> None:
        try:
            ids = job.tracker.fail_running_children(job.parent.run_id, reason, status=status)
        except Exception as err:  # never hide the original error behind a bookkeeping one
            log.warning("could not end runs left RUNNING under %s: %s", job.parent.run_id, err)
            return
        if ids:
            print(f"ray: ended {len(ids)} run(s) left RUNNING as {status}: {', '.join(ids)}", file=job.out)


@dataclass
class _Count:
    """The live count printed by the driver: done / running / failed / queued, and retries."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    retries: dict[int, int] = field(default_factory=dict)  # task index -> restarts seen
    last: tuple[int, ...] = ()

    def update(self, attempts: dict[int, int], pending: dict[int, CellTask], out: Any) -> None:
        """Refresh from the Progress actor's start counts (``pending``: the unfinished tasks by index)."""
        self.running = sum(1 for i in pending if attempts.get(i, 0) > 0)
        for index, task in pending.items():
            if attempts.get(index, 0) > 1 + self.retries.get(index, 0):
                self.retries[index] = attempts[index] - 1
                print(
                    f"ray: {task.name}: its worker died, Ray started it again (attempt {attempts[index]})",
                    file=out,
                    flush=True,
                )
        self._print_if_changed(out)

    def finished(self, task: CellTask, outcome: CellOutcome, out: Any) -> None:
        if outcome.status == "FAILED":
            self.failed += 1
        else:
            self.done += 1
        self.running = max(0, self.running - 1)
        acc = f" (accuracy {outcome.accuracy:.4f})" if outcome.accuracy is not None else ""
        self._print_if_changed(out, f"{task.name} {outcome.status}{acc}; ", force=True)

    def _print_if_changed(self, out: Any, prefix: str = "", force: bool = False) -> None:
        retried = sum(self.retries.values())
        state = (self.done, self.running, self.failed, retried)
        if state == self.last and not force:
            return
        self.last = state
        queued = self.total - self.done - self.failed - self.running
        retries = f", {retried} retried" if retried else ""
        print(
            f"ray: {prefix}{self.done} done, {self.running} running, {self.failed} failed, {queued} queued "
            f"of {self.total}{retries}",
            file=out,
            flush=True,
        )
