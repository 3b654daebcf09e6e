"""The report generator: a grid's MLflow runs -> a markdown report in fastbook chapter 7's order.

``generate_report(tracker, ...)`` (``generate.py``) reads the runs (``collect.py``), computes the statistics
(``stats.py``), the tables (``tables.py``) and the figures (``plots.py``, ``figures.py``), and writes the markdown
(``markdown.py``). ``python -m sota_ablate report`` is its command line.
"""

from __future__ import annotations

from sota_ablate.report.collect import GridData, ReportError, collect_grid
from sota_ablate.report.generate import generate_report

__all__ = ["GridData", "ReportError", "collect_grid", "generate_report"]
