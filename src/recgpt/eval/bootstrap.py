"""Confidence intervals over users: is a difference between two rows more than the sample's noise?

A quality bar such as "fused NDCG@10 >= 0.95 x the best baseline's" is judged on a sample of users,
often a few hundred, where a per-user metric is mostly 0 with a few hits; a ratio of 1.03 on 100
users can be pure luck. `paired_ratio` resamples the *users* (the same resample for both rows, so
the pairing is kept) and reports the percentile interval of the ratio of means; `verdict` then calls
a bar met only when the whole interval clears it, missed when the whole interval falls short, and
inconclusive otherwise. `wilson` is the interval of a share (e.g. users on an LLM fallback).

Everything is vectorised numpy and seeded: the same inputs and seed give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

DEFAULT_RESAMPLES = 2000
Verdict = Literal["met", "missed", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A point estimate, its percentile interval and the number of users it rests on."""

    value: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }

    def text(self, digits: int = 3) -> str:
        """`0.912 [0.801, 1.034], n=200`."""
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}], n={self.n}"


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired arrays must have one value per user each, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)  # users without ground truth are NaN in both rows
    return a[keep], b[keep]


def _resample_means(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of a and b over the same `resamples` bootstrap samples of users (rows of one index matrix)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    out_a, out_b = np.empty(resamples), np.empty(resamples)
    step = max(1, 2_000_000 // max(n, 1))  # bounds the (resamples x n) index block in memory
    for lo in range(0, resamples, step):
        hi = min(lo + step, resamples)
        idx = rng.integers(0, n, size=(hi - lo, n))
        out_a[lo:hi], out_b[lo:hi] = a[idx].mean(axis=1), b[idx].mean(axis=1)
    return out_a, out_b


def paired_ratio(
    num: np.ndarray,
    den: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """mean(num) / mean(den) over the users both rows score, with a paired percentile bootstrap interval.

    Resamples whose denominator mean is 0 give an infinite (or undefined) ratio; they stay in the
    percentile computation as +inf (0/0 as NaN is dropped), so a row with almost no hits gets an
    honestly wide interval. With no user at all, or a zero denominator, every field is NaN.
    """
    a, b = _paired(num, den)
    n = len(a)
    if n == 0 or b.mean() == 0:
        return Interval(float("nan"), float("nan"), float("nan"), n, level)
    ma, mb = _resample_means(a, b, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = ma / mb
    ratios = ratios[~np.isnan(ratios)]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha]) if len(ratios) else (np.nan, np.nan)
    return Interval(float(a.mean() / b.mean()), float(lo), float(hi), n, level)


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """mean(a) - mean(b) over the users both rows score, with a paired percentile bootstrap interval."""
    x, y = _paired(a, b)
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    ma, mb = _resample_means(x, y, resamples, seed)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ma - mb, [alpha, 1.0 - alpha])
    return Interval(float(x.mean() - y.mean()), float(lo), float(hi), n, level)


def wilson(successes: int, n: int, level: float = 0.95) -> Interval:
    """The Wilson score interval of a share `successes / n` (exact enough at small n, unlike ±1.96·se)."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(level)
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, lo, hi, n, level)


def _z(level: float) -> float:
    """The two-sided normal quantile for `level` (0.95 -> 1.96), by bisection on erf (no scipy needed)."""
    target, lo, hi = level, 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid / math.sqrt(2)) < target else (lo, mid)
    return (lo + hi) / 2


def verdict(interval: Interval, bar: float, *, strict: bool = False, above: bool = True) -> Verdict:
    """`met` when the whole interval clears `bar` (`strict`: lo > bar, else lo >= bar), `missed` when the
    whole interval is on the wrong side, `inconclusive` otherwise (and when there is no interval).

    `above=False` is for bars that must stay *below* a limit (a fallback share under 10%).
    """
    lo, hi = interval.lo, interval.hi
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if above:
        if lo > bar or (not strict and lo >= bar):
            return "met"
        return "missed" if hi < bar else "inconclusive"
    if hi < bar or (not strict and hi <= bar):
        return "met"
    return "missed" if lo > bar else "inconclusive"


__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "Verdict",
    "paired_difference",
    "paired_ratio",
    "verdict",
    "wilson",
]
