"""The decode processes of the cache build: a pool that cannot hang, and that leaves no process behind.

``multiprocessing.Pool`` replaces a worker that dies (a SIGBUS when the disk under a memory-mapped file is full,
the OOM killer) but drops its tasks, so the parent waits forever, and its ``terminate()`` can deadlock on an
interrupt. ``concurrent.futures.ProcessPoolExecutor`` instead fails every pending task with
``BrokenProcessPool``, which ``Workers`` turns into a ``WorkerDied`` naming how the worker ended. On any exit
(an error, ``KeyboardInterrupt``, a SIGTERM the caller turns into an exception) the workers are killed and
reaped at once, never waited for. On Linux each worker also asks the kernel to kill it when the parent dies
(``PR_SET_PDEATHSIG``), so a parent killed outright (SIGKILL, an unhandled SIGTERM) leaves no decoder running.
Workers ignore SIGINT: Ctrl-C reaches the whole process group, and the parent alone decides what happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_PR_SET_PDEATHSIG = 1
_REAP_SECONDS = 5.0


class WorkerDied(RuntimeError):
    """A worker process ended while it had work (``exits``: how each dead worker ended, e.g. ``"SIGBUS"``)."""

    def __init__(self, exits: list[str]) -> None:
        super().__init__(f"a decode worker process died ({', '.join(exits) or 'unknown exit'})")
        self.exits = exits


def _init_worker() -> None:
    faulthandler.disable()  # a worker's crash is reported by the parent (WorkerDied), not as a stack dump
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: the parent's cleanup still kills them
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Workers:
    """A process pool (fork where available: nothing pickled but paths and row indices) or the parent itself.

    Use it as a context manager; ``map`` and ``map_unordered`` raise ``WorkerDied`` when a worker dies.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.pool: ProcessPoolExecutor | None = None
        self._started: list[Any] = []  # the worker processes (all forked at the first submit)

    def __enter__(self) -> Workers:
        if self.processes > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_init_worker)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.shutdown(wait=True)  # every task is done: the workers exit at once
        else:
            self.kill()

    def kill(self) -> None:
        """Kill and reap every worker now (never waits for a task to finish)."""
        if self.pool is None:
            return
        processes = self._processes()
        pool, self.pool = self.pool, None
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(_REAP_SECONDS)

    def map(self, fn: Callable[[Any], Any], args: Sequence[Any], chunksize: int) -> list[Any]:
        """``[fn(a) for a in args]``, in order."""
        if self.pool is None:
            return [fn(a) for a in args]
        return [result for chunk in self._run(_apply, fn, args, chunksize, ordered=True) for result in chunk]

    def map_unordered(self, fn: Callable[[Any], Any], args: Sequence[Any], chunksize: int) -> Iterator[Any]:
        """``fn(a)`` for each ``a``, as the results arrive."""
        if self.pool is None:
            yield from map(fn, args)
            return
        for chunk in self._run(_apply, fn, args, chunksize, ordered=False):
            yield from chunk

    def _run(
        self,
        apply: Callable[..., list[Any]],
        fn: Callable[[Any], Any],
        args: Sequence[Any],
        chunksize: int,
        ordered: bool,
    ) -> Iterator[list[Any]]:
        assert self.pool is not None
        futures: list[Future[list[Any]]] = [
            self.pool.submit(apply, fn, list(args[i : i + chunksize])) for i in range(0, len(args), chunksize)
        ]
        self._processes()
        try:
            if ordered:
                for future in futures:
                    yield future.result()
                return
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    yield future.result()
        except BrokenProcessPool as error:
            raise WorkerDied(self._exits()) from error

    def _processes(self) -> list[Any]:
        """The pool's processes, remembered (the executor forgets them once it breaks); a private attribute."""
        current = getattr(self.pool, "_processes", None) or {}
        known = {id(process) for process in self._started}
        self._started += [process for process in list(current.values()) if id(process) not in known]
        return self._started

    def _exits(self) -> list[str]:
        """How the dead workers ended, the cause first (the executor then terminates the others: SIGTERM)."""
        codes = []
        for process in self._started:
            process.join(_REAP_SECONDS)
            if process.exitcode:
                codes.append(process.exitcode)
        codes.sort(key=lambda code: code == -signal.SIGTERM)
        return list(dict.fromkeys(_describe(code) for code in codes))


def _apply(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(a) for a in chunk]


def _describe(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"
