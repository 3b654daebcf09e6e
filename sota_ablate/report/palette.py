"""Every cell's colour, the same in every figure: a single-technique cell takes its technique's declared
``colour``, the baseline black, the full recipe (``GridData.full_recipe``: all techniques combined) brown, any
other combination the next colour of a fixed palette, in grid order.

The technique colours come in as an argument (``{name: Technique.colour}`` from the registry), so a technique's own
report section can use this module too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sota_ablate.report.collect import GridData

BASELINE = "#222222"
FULL_RECIPE = "#8c564b"
COMBINATIONS = ("#e377c2", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")


def cell_colours(data: GridData, technique_colours: Mapping[str, str]) -> dict[str, str]:
    """cell -> colour for every cell of the grid; ``technique_colours``: technique name -> its colour."""
    everything = data.full_recipe()
    out: dict[str, str] = {}
    extra = iter(COMBINATIONS * 4)
    for cell in data.cells:
        techniques = data.technique_set(cell)
        if not techniques:
            out[cell] = BASELINE
        elif techniques == everything:
            out[cell] = FULL_RECIPE
        elif len(techniques) == 1 and next(iter(techniques)) in technique_colours:
            out[cell] = technique_colours[next(iter(techniques))]
        else:
            out[cell] = next(extra)
    return out
