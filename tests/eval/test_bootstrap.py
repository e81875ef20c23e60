"""Bootstrap intervals over users: known cases, seed stability, coverage, and the verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recgpt.eval.bootstrap import Interval, paired_difference, paired_ratio, verdict, wilson


def test_a_paired_ratio_keeps_the_pairing() -> None:
    den = np.random.default_rng(0).random(50)
    same = paired_ratio(den, den)
    assert (same.value, same.lo, same.hi, same.n) == (1.0, 1.0, 1.0, 50)
    double = paired_ratio(2 * den, den)  # every resample of the same users: exactly 2
    assert double.value == pytest.approx(2.0) and double.lo == pytest.approx(2.0) == double.hi


def test_the_interval_is_seed_stable_and_contains_the_estimate() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.binomial(1, 0.3, 300).astype(float), rng.binomial(1, 0.25, 300).astype(float)
    one, again, other = paired_ratio(a, b, seed=7), paired_ratio(a, b, seed=7), paired_ratio(a, b, seed=8)
    assert one == again and one != other
    assert one.lo < one.value < one.hi and one.n == 300


def test_users_without_ground_truth_are_left_out() -> None:
    a = np.array([1.0, np.nan, 0.0, 1.0])
    b = np.array([1.0, 1.0, np.nan, 1.0])
    assert paired_ratio(a, b).n == 2
    assert paired_difference(a, b).value == 0.0


def test_the_95_interval_covers_the_true_ratio_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    for seed in range(60):
        base = rng.binomial(1, 0.2, 400).astype(float)
        better = np.where(rng.random(400) < 0.1, 1.0, base)  # true means 0.28 and 0.2: ratio 1.4
        iv = paired_ratio(better, base, resamples=1000, seed=seed)
        covered += iv.lo <= 1.4 <= iv.hi
    assert covered >= 50  # 95% nominal; percentile intervals run a little narrow at n=400


def test_no_hit_in_the_denominator_gives_no_interval() -> None:
    iv = paired_ratio(np.ones(10), np.zeros(10))
    assert math.isnan(iv.value) and verdict(iv, 0.95) == "inconclusive"
    assert iv.to_json()["lo"] is None  # JSON-safe


def test_wilson_matches_known_values() -> None:
    iv = wilson(5, 10)
    assert (iv.lo, iv.hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(0, 10).lo == 0.0 and wilson(0, 10).hi == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson(11, 10)


def test_a_bar_is_met_only_when_the_whole_interval_clears_it() -> None:
    def iv(lo: float, hi: float) -> Interval:
        return Interval((lo + hi) / 2, lo, hi, 100)

    assert verdict(iv(0.96, 1.2), 0.95) == "met"
    assert verdict(iv(0.80, 0.94), 0.95) == "missed"
    assert verdict(iv(0.90, 1.10), 0.95) == "inconclusive"
    assert verdict(iv(1.0, 1.3), 1.0, strict=True) == "inconclusive"  # "beats": lo > 1
    assert verdict(iv(1.01, 1.3), 1.0, strict=True) == "met"
    assert verdict(iv(0.01, 0.08), 0.10, above=False) == "met"  # a share that must stay below 10%
    assert verdict(iv(0.05, 0.2), 0.10, above=False) == "inconclusive"
    assert verdict(iv(0.12, 0.2), 0.10, above=False) == "missed"
