"""Terminal progress: an epoch table in fastai's format and a progress bar with ETA (tqdm)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

from tqdm.auto import tqdm

from sota_ablate.train.evaluate import EvalResult
from sota_ablate.train.record import EpochRecord, LoopObserver
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


def _header(with_stage: bool, extra: Sequence[str]) -> list[str]:
    return list(HEADER) + (["stage", "size"] if with_stage else []) + list(extra)


def epoch_table(records: Sequence[EpochRecord], with_stage: bool = False) -> str:
    """The whole epoch table as text (the ``epochs.txt`` artifact); techniques' per-epoch metrics at the end."""
    extra = sorted({k for r in records for k in r.extra})
    header = _header(with_stage, extra)
    rows = [header] + [_row(r, with_stage, extra) for r in records]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(table_row(row, widths) for row in rows)


def _row(r: EpochRecord, with_stage: bool, extra: Sequence[str] = ()) -> list[str]:
    row = [
        str(r.epoch),
        f"{r.train_loss:.6f}",
        f"{r.valid_loss:.6f}",
        f"{r.accuracy:.6f}",
        format_time(r.epoch_time_s),
    ]
    if with_stage:
        row += [r.stage, str(r.size)]
    return row + [f"{r.extra[k]:.6f}" if k in r.extra else "-" for k in extra]


class ConsoleProgress(LoopObserver):
    """Prints the epoch table row by row under a per-cell progress bar (steps, rate, ETA)."""

    WIDTHS = (5, 10, 10, 8, 5, 17, 4)

    def __init__(self, title: str, stream: IO[str] | None = None, bar: bool = True, extra: Sequence[str] = ()) -> None:
        """``extra``: the per-epoch metrics the cell's techniques add (``Technique.epoch_metric_keys``)."""
        self.title = title
        self.stream = stream or sys.stdout
        self.use_bar = bar
        self.extra = list(extra)
        self._bar: Any = None
        self._with_stage = False

    def _widths(self) -> list[int]:
        return list(self.WIDTHS[: len(HEADER) + (2 if self._with_stage else 0)]) + [max(8, len(k)) for k in self.extra]

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, s: TrainState, total_steps: int, stages: Sequence[Stage]) -> None:
        self._with_stage = len(stages) > 1
        header = _header(self._with_stage, self.extra)
        if self.use_bar:
            self._bar = tqdm(
                total=total_steps,
                desc=self.title,
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
            )
        self._write(table_row(header, self._widths()))

    def batch(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def epoch(self, record: EpochRecord, result: EvalResult) -> None:
        row = _row(record, self._with_stage, self.extra)
        self._write(table_row(row, self._widths()))

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
