"""Which dataset a grid ran on, from its runs: the name the report uses, and whether the book's numbers apply.

The name is the ``data.dataset`` param (``data/names.py``: Imagenette, Imagewoof, else the folder's name). Runs
older than that param were all treated as Imagenette, and still are. Only Imagenette gets the book's published
numbers and the text about the chapter's data.
"""

from __future__ import annotations

from sota_ablate import schema
from sota_ablate.data.names import IMAGENETTE
from sota_ablate.report.collect import GridData


def dataset_name(data: GridData) -> str:
    """The dataset of the grid run (``Imagenette`` for runs that did not record one)."""
    name = data.parent_param(schema.data_param("dataset"))
    return str(name) if name is not None and name == name else IMAGENETTE


def is_imagenette(data: GridData) -> bool:
    """Whether the book's published Imagenette numbers apply to the grid's data."""
    return dataset_name(data) == IMAGENETTE
