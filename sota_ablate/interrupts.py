"""Ctrl-C and SIGTERM that never cut a tracking-store write in half.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. Inside an MLflow call on a sqlite
store that can be between a statement and its commit: the interrupted connection keeps its write lock, and the
very next write (marking the run KILLED) fails with ``database is locked``, leaving the run RUNNING. So while a
:func:`protected` block runs (``tracking.py`` wraps every MLflow call in one), an interrupt is only noted and
raised as ``KeyboardInterrupt`` when the block ends. A second interrupt during the same block is raised at once:
someone who presses Ctrl-C twice wants out now.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_depth = 0  # nesting of protected blocks in the main thread
_pending = False  # an interrupt arrived inside a protected block
_main_pid: int | None = None
_requested = False  # an interrupt arrived (its KeyboardInterrupt may have been dropped: raise_if_requested)


@contextmanager
def protected() -> Iterator[None]:
    """Defer Ctrl-C / SIGTERM (when :func:`install` handles them) until the block ends.

    Only the main thread is protected (signal handlers run there); in other threads this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending:
        _pending = False
        raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if signum == signal.SIGTERM and _main_pid is not None and os.getpid() != _main_pid:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker: just die quietly
        os.kill(os.getpid(), signal.SIGTERM)
        return
    global _requested
    _requested = True
    if _depth > 0 and not _pending:
        _pending = True
        return
    _pending = False
    raise KeyboardInterrupt


def raise_if_requested() -> None:
    """Raise the interrupt that arrived but never surfaced.

    Python drops an exception raised while a finalizer (``__del__``) or a weakref callback runs ("Exception ignored
    in ..."), so a signal landing during garbage collection would be lost and the grid would train on: the training
    loop calls this after every batch (``cell_run``), so such a SIGTERM ends the cell one batch later.
    """
    global _requested
    if _requested:
        _requested = False
        raise KeyboardInterrupt


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM as a deferred ``KeyboardInterrupt`` in this (main) process.

    Returns:
        A function that puts the previous handlers back (a no-op outside the main thread).
    """
    global _main_pid, _pending
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    global _requested
    _main_pid, _pending, _requested = os.getpid(), False, False
    previous: dict[int, Any] = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
