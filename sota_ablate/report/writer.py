"""Saves the report's figures into its folder, remembering what it wrote (so stale PNGs can be removed); a figure
that fails becomes a note instead of costing the whole report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sota_ablate.report.canvas import save
from sota_ablate.report.markdown import FigureRef

log = logging.getLogger(__name__)


class FigureWriter:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: set[str] = set()
        self.notes: list[str] = []

    def save(self, name: str, build: Callable[[], Any], alt: str, caption: str = "") -> FigureRef | None:
        """Build the figure, write it as ``<folder>/<name>`` and return its reference (None when it failed)."""
        try:
            fig = build()
        except Exception as err:  # one broken figure must not cost the whole report
            log.warning("figure %s not made: %s", name, err, exc_info=log.isEnabledFor(logging.DEBUG))
            self.notes.append(f"figure `{name}` could not be made: {type(err).__name__}: {err}")
            return None
        save(fig, self.folder / name)
        self.written.add(name)
        return FigureRef(name, alt, caption)
