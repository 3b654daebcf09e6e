"""Links from the report to the MLflow UI: each cell run's page, when the store is a tracking server.

A sqlite store has no address a reader of the report could open (``python -m sota_ablate ui`` serves it on a port
of its own), so its report gets no links.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sota_ablate.tracking import run_url


def run_links(runs: pd.DataFrame, uri: str, experiment_id: str | None) -> str:
    """A paragraph after the summary table: ``MLflow runs: [baseline](url), ...`` for a tracking server (every
    cell run of ``runs`` that exists); empty for any other store."""
    if experiment_id is None or runs.empty or run_url(uri, experiment_id, "") is None:
        return ""
    links = []
    for _, row in runs.iterrows():
        run_id: Any = row.get("run_id")
        if not isinstance(run_id, str):
            continue
        links.append(f"[{row.get('run_name') or row.get('cell')}]({run_url(uri, experiment_id, run_id)})")
    return f"MLflow runs: {', '.join(links)}." if links else ""
