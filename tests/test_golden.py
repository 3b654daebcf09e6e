"""Refactors change no number: the quick profile's baseline cell trains bit for bit as recorded.

``tests/golden/quick_baseline.<capability>.json`` were recorded by ``tests/golden/record_baseline.py`` with the code
of commit 3417d69 (before the plan/schema redesign): ``AVX2`` on a 2-core AMD EPYC, ``AVX512`` on a 2-core Intel
Xeon (3417d69 needs ``--grid`` as a path: its ``ablations/chapter.toml``, the same cells as today's built-in
``chapter``). CPU kernels differ between instruction sets (oneDNN picks AVX2 or AVX-512 code), so the comparison
is exact only against the recording of this CPU's capability: on a capability without one, or another torch
release, the test is skipped and says why.
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
    capability = torch.backends.cpu.get_cpu_capability()
    recorded = sorted(p.name.split(".")[1] for p in GOLDEN.glob("quick_baseline.*.json"))
    file = GOLDEN / f"quick_baseline.{capability}.json"
    if not file.exists():
        pytest.skip(f"no recording for CPU capability {capability} (recorded: {', '.join(recorded)})")
    expected = json.loads(file.read_text())
    assert expected["cpu_capability"] == capability, f"{file.name} holds a {expected['cpu_capability']} recording"
    if torch.__version__ != expected["torch"]:
        pytest.skip(f"{file.name} was recorded with torch {expected['torch']}, this is {torch.__version__}")
    got = record(tmp_path)
    for key, points in expected["metrics"].items():
        assert [list(p) for p in got["metrics"][key]] == [list(p) for p in points], key
