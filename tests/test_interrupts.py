"""Ctrl-C / SIGTERM wait for the tracking-store call in progress (sota_ablate.interrupts)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sota_ablate import interrupts
from sota_ablate.tracking import Tracker


@pytest.fixture
def handlers():
    restore = interrupts.install()
    yield
    restore()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_protected_block_waits_for_its_end(handlers, sig: signal.Signals) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.protected():
        os.kill(os.getpid(), sig)  # delivered here, in the main thread, before the next bytecode
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]


def test_nested_blocks_raise_once_at_the_outermost_end(handlers) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.protected():
        with interrupts.protected():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("inner")
        steps.append("outer")  # the inner end does not raise yet
    assert steps == ["inner", "outer"]
    with interrupts.protected():  # nothing left pending
        pass


def test_a_second_interrupt_is_raised_at_once(handlers) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.protected():
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("first noted")
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("never reached")
    assert steps == ["first noted"]


def test_outside_a_protected_block_the_interrupt_is_immediate(handlers) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("not interrupted")


def test_install_restores_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    restore = interrupts.install()
    assert signal.getsignal(signal.SIGTERM) is not before[0]
    restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_mlflow_calls_are_protected(handlers, tmp_path: Path) -> None:
    """A signal arriving during an MLflow write lets it commit; the run can then be marked KILLED."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "interrupts")
    run = tracker.start_run("cell")
    real_log_batch = tracker.client._target.log_batch

    def log_batch_hit_by_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as if SIGTERM landed between a statement and its commit
        return real_log_batch(*args, **kwargs)

    tracker.client._target.log_batch = log_batch_hit_by_a_signal
    with pytest.raises(KeyboardInterrupt):
        run.log_metrics({"accuracy": 0.5}, step=0)
    tracker.client._target.log_batch = real_log_batch
    run.end("KILLED")
    assert [m.value for m in tracker.client.get_metric_history(run.run_id, "accuracy")] == [0.5]  # committed
    assert tracker.client.get_run(run.run_id).info.status == "KILLED"


def test_an_interrupt_dropped_by_a_finalizer_is_raised_after_the_next_batch() -> None:
    """Python drops an exception raised while a ``__del__`` runs; the training loop's check raises it again."""
    import gc
    import signal

    from sota_ablate import interrupts

    class Finalised:
        def __del__(self) -> None:
            interrupts._handler(signal.SIGTERM, None)  # the signal lands while a finalizer runs: dropped

    restore = interrupts.install()
    try:
        Finalised()  # collected at once: "Exception ignored in ..." and the KeyboardInterrupt is gone
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_requested()
        interrupts.raise_if_requested()  # raised once only
    finally:
        restore()
