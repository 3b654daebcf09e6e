"""Refactors change no number: the quick profile's baseline cell trains bit for bit as recorded.

``tests/golden/quick_baseline.json`` was recorded by ``tests/golden/record_baseline.py`` with the code of commit
3417d69 (before the plan/schema redesign) on this project's CPU machines. CPU kernels differ between instruction
sets (oneDNN picks AVX2 or AVX-512 code), so the comparison is exact only where the recording was made: on a CPU of
another capability, or another torch release, the test is skipped and says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from record_baseline import record  # noqa: E402


def test_quick_baseline_metrics_are_bit_identical(tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / "quick_baseline.json").read_text())
    here = (torch.backends.cpu.get_cpu_capability(), torch.__version__)
    if here != (expected["cpu_capability"], expected["torch"]):
        pytest.skip(f"recorded on {expected['cpu_capability']} with torch {expected['torch']}, this is {here}")
    got = record(tmp_path)
    for key, points in expected["metrics"].items():
        assert [list(p) for p in got["metrics"][key]] == [list(p) for p in points], key
