"""Why a cell failed, in one line: the exception, a fix for the common cases, and the technique it came from."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch

from sota_ablate.techniques import TECHNIQUES
from sota_ablate.train.loop import NonFiniteLossError


def technique_files() -> dict[Path, str]:
    """The source file of every registered technique -> its name."""
    out = {}
    for name, cls in TECHNIQUES.entries().items():
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None)
        if path:
            out[Path(path).resolve()] = name
    return out


def failure_reason(err: BaseException, device: torch.device | str) -> str:
    """``RuntimeError: ...`` with a fix for out-of-memory and diverged losses, and ``(in technique 'x')`` when the
    innermost frame of a technique's own file is in the traceback."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, torch.OutOfMemoryError):
        reason = (
            f"out of memory on {device}: lower the batch size (--set batch_size=N), the image size or the model, "
            f"or free the device ({reason[:300]})"
        )
    elif isinstance(err, NonFiniteLossError):
        reason = f"non-finite loss: {err}"
    files = technique_files()
    names = [
        files[p] for p in (Path(f.filename).resolve() for f in traceback.extract_tb(err.__traceback__)) if p in files
    ]
    if names:
        reason += f" (in technique {names[-1]!r})"
    return reason
