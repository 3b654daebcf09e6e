"""Terminal progress: an epoch table in fastai's format and a progress bar with ETA (tqdm)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.loop import EpochRecord, LoopObserver
from sota_ablate.train.state import Stage, TrainState


def format_time(seconds: float) -> str:
    """fastai's ``mm:ss`` (``h:mm:ss`` past an hour)."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


HEADER = ("epoch", "train_loss", "valid_loss", "accuracy", "time")


def table_row(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def epoch_table(records: Sequence[EpochRecord], with_stage: bool = False) -> str:
    """The whole epoch table as text (used for the terminal and for the report)."""
    header = list(HEADER) + (["stage", "size"] if with_stage else [])
    rows = [header] + [_row(r, with_stage) for r in records]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(table_row(row, widths) for row in rows)


def _row(r: EpochRecord, with_stage: bool) -> list[str]:
    row = [
        str(r.epoch),
        f"{r.train_loss:.6f}",
        f"{r.valid_loss:.6f}",
        f"{r.accuracy:.6f}",
        format_time(r.epoch_time_s),
    ]
    if with_stage:
        row += [r.stage, str(r.size)]
    return row


class ConsoleProgress(LoopObserver):
    """Prints the epoch table row by row under a per-cell progress bar (steps, rate, ETA)."""

    WIDTHS = (5, 10, 10, 8, 5, 17, 4)

    def __init__(self, title: str, stream: IO[str] | None = None, bar: bool = True) -> None:
        self.title = title
        self.stream = stream or sys.stdout
        self.use_bar = bar
        self._bar: Any = None
        self._with_stage = False

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        self._with_stage = len(stages) > 1
        header = list(HEADER) + (["stage", "size"] if self._with_stage else [])
        if self.use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                desc=self.title,
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
            )
        self._write(table_row(header, self.WIDTHS[: len(header)]))

    def batch(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        row = _row(record, self._with_stage)
        self._write(table_row(row, self.WIDTHS[: len(row)]))

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
