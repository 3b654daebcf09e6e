"""fastai's fit_one_cycle schedule (fastai-semantics §2, §3): chapter numbers and exact formula values."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from sota_ablate.train.schedule import OneCycle, one_cycle, sched_cos


def cos_anneal(start: float, end: float, p: float) -> float:
    """The spec's ``sched_cos``, written out again: ``start + (1 + cos(π(1 − p)))·(end − start)/2``."""
    return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2


def test_sched_cos_endpoints() -> None:
    assert sched_cos(1.0, 3.0, 0.0) == pytest.approx(1.0)
    assert sched_cos(1.0, 3.0, 0.5) == pytest.approx(2.0)
    assert sched_cos(1.0, 3.0, 1.0) == pytest.approx(3.0)


def test_chapter_fit_one_cycle_3e3() -> None:
    lr, mom = one_cycle(0.0, 3e-3)
    assert lr == pytest.approx(1.2e-4, rel=1e-12) and mom == pytest.approx(0.95)
    lr, mom = one_cycle(0.25, 3e-3)  # pct_start is the first point of phase 2: the peak
    assert lr == pytest.approx(3e-3, rel=1e-12) and mom == pytest.approx(0.85)
    lr, mom = one_cycle(1.0, 3e-3)
    assert lr == pytest.approx(3e-8, rel=1e-9) and mom == pytest.approx(0.95)
    # midpoints of each phase: cos(π/2) = 0, so exactly halfway
    assert one_cycle(0.125, 3e-3) == pytest.approx(((1.2e-4 + 3e-3) / 2, 0.90))
    assert one_cycle(0.625, 3e-3) == pytest.approx(((3e-3 + 3e-8) / 2, 0.90))


def test_chapter_steps_835() -> None:
    """Chapter split, bs 64: 167 batches × 5 epochs; batch k uses pos = k / 835."""
    sched = OneCycle(total_steps=835, lr_max=3e-3)
    lrs, moms = sched.lrs(), sched.momentums()
    assert len(lrs) == len(moms) == 835
    assert lrs[0] == pytest.approx(1.2e-4) and moms[0] == pytest.approx(0.95)
    peak = max(range(835), key=lrs.__getitem__)
    assert peak == 209  # the first k with k / 835 >= 0.25 (208.75)
    assert lrs[peak] == pytest.approx(3e-3, rel=1e-4) and lrs[peak] <= 3e-3
    assert min(range(835), key=moms.__getitem__) == 209
    assert 3e-8 < lrs[-1] < 1e-7  # pos = 834/835 never reaches 1
    assert moms[-1] == pytest.approx(0.95, abs=1e-5)
    assert all(a < b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(lrs[peak:]))
    assert all(a > b for a, b in itertools.pairwise(moms[: peak + 1]))
    assert sched(209) == one_cycle(209 / 835, 3e-3)


@pytest.mark.parametrize("pos", [0.03, 0.1, 0.2, 0.3, 0.5, 0.77, 0.99])
def test_exact_formula_values(pos: float) -> None:
    lr_max, div, div_final, pct = 3e-3, 25.0, 1e5, 0.25
    if pos < pct:
        p = pos / pct
        want = (cos_anneal(lr_max / div, lr_max, p), cos_anneal(0.95, 0.85, p))
    else:
        p = (pos - pct) / (1 - pct)
        want = (cos_anneal(lr_max, lr_max / div_final, p), cos_anneal(0.85, 0.95, p))
    got = one_cycle(pos, lr_max)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    assert got[1] == pytest.approx(want[1], rel=1e-12)


def test_known_value_pos_0_1() -> None:
    # p = 0.4: (1 + cos(0.6π)) / 2 = 0.3454915..., so lr = 1.2e-4 + 0.3454915 · 2.88e-3
    lr, mom = one_cycle(0.1, 3e-3)
    assert lr == pytest.approx(1.2e-4 + 0.34549150281252633 * 2.88e-3, rel=1e-12)
    assert mom == pytest.approx(0.95 - 0.34549150281252633 * 0.1, rel=1e-12)


def test_fine_tune_frozen_phase() -> None:
    """fine_tune(5, 1e-3), step 2: fit_one_cycle(1, slice(1e-3), pct_start=0.99), div stays 25."""
    sched = OneCycle(total_steps=167, lr_max=1e-3, pct_start=0.99)
    assert sched(0)[0] == pytest.approx(4e-5)
    assert one_cycle(0.99, 1e-3, pct_start=0.99) == pytest.approx((1e-3, 0.85))
    assert one_cycle(1.0, 1e-3, pct_start=0.99)[0] == pytest.approx(1e-8)
    lrs = sched.lrs()
    assert max(range(167), key=lrs.__getitem__) == 165  # 165/167 < 0.99 <= 166/167
    p = (166 / 167 - 0.99) / 0.01  # the last batch is already 40 % into the (steep) decay
    assert lrs[-1] == pytest.approx(cos_anneal(1e-3, 1e-8, p), rel=1e-12)
    assert 5e-4 < lrs[-1] < 1e-3


def test_fine_tune_unfrozen_phase() -> None:
    """fine_tune step 5: fit_one_cycle(5, slice(5e-6, 5e-4), pct_start=0.3, div=5) → lr_max 5e-4."""
    sched = OneCycle(total_steps=5 * 167, lr_max=1e-3 / 2, div=5.0, pct_start=0.3)
    lr0, mom0 = sched(0)
    assert lr0 == pytest.approx(1e-4) and mom0 == pytest.approx(0.95)
    assert one_cycle(0.3, 5e-4, div=5.0, pct_start=0.3) == pytest.approx((5e-4, 0.85))
    assert one_cycle(1.0, 5e-4, div=5.0, pct_start=0.3)[0] == pytest.approx(5e-9)
    assert one_cycle(0.15, 5e-4, div=5.0, pct_start=0.3)[0] == pytest.approx((1e-4 + 5e-4) / 2)
    assert max(sched.lrs()) <= 5e-4


def test_custom_moms_and_div_final() -> None:
    assert one_cycle(0.0, 1.0, moms=(0.9, 0.8, 0.7)) == pytest.approx((0.04, 0.9))
    assert one_cycle(0.25, 1.0, moms=(0.9, 0.8, 0.7)) == pytest.approx((1.0, 0.8))
    assert one_cycle(1.0, 1.0, div_final=10.0, moms=(0.9, 0.8, 0.7)) == pytest.approx((0.1, 0.7))


def test_edge_pct_start() -> None:
    assert one_cycle(0.0, 1.0, pct_start=0.0) == pytest.approx((1.0, 0.85))  # no warm-up
    assert one_cycle(0.5, 1.0, pct_start=1.0)[0] == pytest.approx(cos_anneal(0.04, 1.0, 0.5))
    assert one_cycle(1.0, 1.0, pct_start=1.0) == pytest.approx((1e-5, 0.95))
    with pytest.raises(ValueError):
        one_cycle(0.5, 1.0, pct_start=1.5)
    with pytest.raises(ValueError):
        one_cycle(-0.1, 1.0)


def test_onecycle_dataclass() -> None:
    sched = OneCycle(total_steps=10, lr_max=1e-2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.lr_max = 1.0  # type: ignore[misc]
    assert sched.moms == (0.95, 0.85, 0.95)
    assert [sched(k) for k in range(10)] == list(zip(sched.lrs(), sched.momentums(), strict=True))
    with pytest.raises(ValueError):
        OneCycle(total_steps=0, lr_max=1e-2)
