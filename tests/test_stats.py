"""The report's statistics on known values (t quantiles from tables, intervals worked by hand) and against scipy."""

from __future__ import annotations

import math

import pytest
import scipy.stats

from sota_ablate.report import stats


def test_mean_and_sample_std():
    values = [2, 4, 4, 4, 5, 5, 7, 9]
    assert stats.mean(values) == 5
    assert stats.std(values) == pytest.approx(math.sqrt(32 / 7))  # n - 1 in the denominator
    assert math.isnan(stats.std([1.0])) and math.isnan(stats.mean([]))


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281), (30, 2.0423), (100, 1.9840)],
)
def test_t_quantile_matches_tables(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)
    assert stats.t_cdf(stats.t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_summary_interval():
    s = stats.summarize([0.80, 0.82, 0.84])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(0.82), pytest.approx(0.02))
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    single = stats.summarize([0.5, float("nan")])  # NaNs ignored
    assert single.n == 1 and single.mean == 0.5 and math.isnan(single.ci_low)


def test_paired_difference_known_values():
    a, b = [0.80, 0.82, 0.85], [0.79, 0.80, 0.81]  # differences 0.01, 0.02, 0.04
    d = stats.paired_difference(a, b)
    assert d.method == "paired" and d.n == 3 and d.df == 2
    assert d.delta == pytest.approx(0.07 / 3)
    sd = math.sqrt(((0.01 - 0.07 / 3) ** 2 + (0.02 - 0.07 / 3) ** 2 + (0.04 - 0.07 / 3) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.07 / 3 - half), pytest.approx(0.07 / 3 + half))
    assert (d.ci_low, d.ci_high) == (pytest.approx(-0.0146125, abs=1e-6), pytest.approx(0.0612792, abs=1e-6))
    assert d.has_ci and not d.significant


def test_welch_difference_known_values():
    d = stats.welch_difference([0.80, 0.82, 0.85], [0.79, 0.80, 0.81])
    assert d.method == "welch"
    assert d.df == pytest.approx(2.6162, abs=1e-3)
    assert (d.ci_low, d.ci_high) == (pytest.approx(-0.0308186, abs=1e-6), pytest.approx(0.0774852, abs=1e-6))


def test_compare_pairs_by_seed_on_the_seeds_both_ran():
    a = {0: 0.80, 1: 0.82, 2: 0.85}
    assert stats.compare(a, {2: 0.81, 0: 0.79, 1: 0.80}).method == "paired"  # order of seeds does not matter
    paired = stats.compare(a, {2: 0.81, 0: 0.79, 1: 0.80})
    assert paired.delta == pytest.approx(0.07 / 3)
    assert stats.compare(a, {0: 0.79, 1: 0.80, 3: 0.81}).method == "welch"  # different seeds: not paired
    # extra seeds on one side (run-grid --precision): paired on the seeds both ran
    extra = stats.compare({**a, 3: 0.70, 4: 0.99}, {2: 0.81, 0: 0.79, 1: 0.80})
    assert extra.method == "paired" and extra.n == 3 and extra.delta == pytest.approx(0.07 / 3)
    assert stats.compare({0: 0.8, 1: 0.9, 2: 0.7}, {0: 0.7, 5: 0.6}).method == "welch"  # different seeds
    assert stats.paired_seeds({0, 1, 2, 3}, {0, 1, 2}, {0, 1, 2, 5}) == [0, 1, 2]
    assert stats.paired_seeds({0, 1}, {1, 2}) is None and stats.paired_seeds({4}, {4}) == [4]
    single = stats.compare({0: 0.9}, {0: 0.8})
    assert single.method == "none" and single.delta == pytest.approx(0.1) and not single.has_ci
    assert stats.compare({}, a).method == "none"


def test_significance_needs_an_interval_that_excludes_zero():
    d = stats.compare({0: 0.90, 1: 0.91, 2: 0.92}, {0: 0.80, 1: 0.80, 2: 0.81})
    assert d.significant and d.ci_low > 0
    constant = stats.compare({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})
    assert constant.delta == 0 and constant.ci_low == constant.ci_high == 0 and not constant.significant


def test_intervals_match_scipy():
    a, b = [0.80, 0.82, 0.85, 0.79], [0.79, 0.80, 0.81, 0.78]
    paired = stats.paired_difference(a, b)
    ref = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (paired.ci_low, paired.ci_high) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))
    welch = stats.welch_difference(a, b[:3])
    result = scipy.stats.ttest_ind(a, b[:3], equal_var=False)
    ref = result.confidence_interval(0.95)
    assert welch.df == pytest.approx(result.df)
    assert (welch.ci_low, welch.ci_high) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high, abs=1e-12))
    s = stats.summarize(a)
    low, high = scipy.stats.t.interval(0.95, len(a) - 1, loc=stats.mean(a), scale=scipy.stats.sem(a))
    assert (s.ci_low, s.ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)
