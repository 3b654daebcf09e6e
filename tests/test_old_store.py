"""Stores written by earlier versions still load: a grid logged by commit 3417d69 (before the plan/schema
redesign) reports with today's code, with the same numbers the old report printed.

``fixtures/store_3417d69.tar.gz`` is that store (sqlite + artifacts; ``run-grid --grid chapter --profile smoke
--cells baseline,tta,mixup --seeds 0`` with the old code), ``fixtures/store_3417d69_report.md`` its old report.
A store moved to another folder needs its artifact locations rewritten: ``move_store`` is the recipe (also in the
README).
"""

from __future__ import annotations

import re
import sqlite3
import tarfile
from pathlib import Path

from sota_ablate.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
OLD_ROOT = "file:///tmp/oldfix/store"


def move_store(db: Path, old_root: str, new_root: str) -> None:
    """Point a moved sqlite store's artifact locations at their new folder."""
    with sqlite3.connect(db) as con:
        con.execute("update experiments set artifact_location = replace(artifact_location, ?, ?)", (old_root, new_root))
        con.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?)", (old_root, new_root))


def _rows(text: str) -> dict[str, list[str]]:
    """Summary table rows by cell: the cells of the table under ``## Summary``."""
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in summary.splitlines():
        match = re.match(r"\| \**`([^`]+)`\** \|", line)
        if match:
            rows[match.group(1)] = [c.strip().strip("*") for c in line.strip("|").split("|")]
    return rows


def test_a_store_of_the_old_code_reports_the_same_numbers(tmp_path: Path) -> None:
    with tarfile.open(FIXTURES / "store_3417d69.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    move_store(tmp_path / "mlflow.db", OLD_ROOT, tmp_path.as_uri())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "reports"), "--no-log"]) == 0
    new = _rows((tmp_path / "reports" / "chapter" / "README.md").read_text())
    old = _rows((FIXTURES / "store_3417d69_report.md").read_text())
    assert set(new) == set(old) == {"baseline", "tta", "mixup"}
    for cell, cells in old.items():
        accuracy = cells[3]  # "0.6667 (n=1)": the mean accuracy column, in both versions
        assert accuracy in new[cell], (cell, new[cell])
    assert "0.6667" in " ".join(new["tta"][4:6])  # the TTA accuracy column
