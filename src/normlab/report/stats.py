"""Welch intervals for linear contrasts of independent group means. Pure math, no records."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Contrast:
    """A linear contrast of group means and its confidence interval.

    ``low``, ``high`` and ``df`` are None when some group has fewer than two
    values (no variance estimate, so no interval). When every group's values
    are all equal the standard error is 0, the interval is the point and
    ``df`` is infinite.
    """

    estimate: float
    se: float | None
    df: float | None
    low: float | None
    high: float | None
    level: float

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def contrast(
    groups: Sequence[Sequence[float]], weights: Sequence[float], level: float = 0.95
) -> Contrast:
    """Σ wᵢ·meanᵢ over independent groups, with a Welch–Satterthwaite t interval.

    se² = Σ wᵢ² sᵢ²/nᵢ (sᵢ the sample standard deviation, ddof=1) and
    df = se⁴ / Σ (wᵢ² sᵢ²/nᵢ)² / (nᵢ − 1); the interval is
    estimate ± t_{df, (1+level)/2} · se. Weights [1, −1] give Welch's
    difference of two means; [1, −1, −1, 1] a difference of differences.

    Raises:
        ValueError: weights and groups differ in length, a group is empty, or
            level is not in (0, 1).
    """
    if len(groups) != len(weights):
        raise ValueError(
            f"contrast needs one weight per group; got {len(groups)} groups and "
            f"{len(weights)} weights."
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a confidence level in (0, 1), such as 0.95; got {level}.")
    sizes = [len(group) for group in groups]
    if min(sizes, default=0) == 0:
        raise ValueError(
            f"contrast needs at least one value in every group; got group sizes {sizes}."
        )
    estimate = math.fsum(
        w * statistics.fmean(group) for w, group in zip(weights, groups, strict=True)
    )
    if min(sizes) < 2:
        return Contrast(estimate, se=None, df=None, low=None, high=None, level=level)
    # statistics.variance is exact for equal values, so all-equal groups give se == 0.
    terms = [
        w * w * statistics.variance(group) / len(group)
        for w, group in zip(weights, groups, strict=True)
    ]
    variance = math.fsum(terms)
    if variance == 0.0:
        return Contrast(estimate, se=0.0, df=math.inf, low=estimate, high=estimate, level=level)
    se = math.sqrt(variance)
    # df is scale-free; dividing by the largest term keeps tiny variances from underflowing.
    ratios = [term / max(terms) for term in terms]
    df = math.fsum(ratios) ** 2 / math.fsum(
        ratio**2 / (n - 1) for ratio, n in zip(ratios, sizes, strict=True)
    )
    half_width = float(scipy_stats.t.ppf((1.0 + level) / 2.0, df)) * se
    return Contrast(
        estimate, se=se, df=df, low=estimate - half_width, high=estimate + half_width, level=level
    )


def paired_contrast(per_unit: Sequence[float], level: float = 0.95) -> Contrast:
    """The mean of a contrast computed within each unit (a seed shared by every group:
    the same initialization and data order), with a one-sample t interval.

    ``per_unit`` holds Σ wᵢ·xᵢ for each unit; se = s / √n and df = n − 1. Pairing removes
    the between-seed variation that every group shares, which Welch's interval counts.

    Raises:
        ValueError: no values, or level is not in (0, 1).
    """
    if not per_unit:
        raise ValueError("a paired contrast needs at least one unit; got none.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is a confidence level in (0, 1), such as 0.95; got {level}.")
    estimate = statistics.fmean(per_unit)
    n = len(per_unit)
    if n < 2:
        return Contrast(estimate, se=None, df=None, low=None, high=None, level=level)
    variance = statistics.variance(per_unit)
    if variance == 0.0:
        return Contrast(estimate, se=0.0, df=math.inf, low=estimate, high=estimate, level=level)
    se = math.sqrt(variance / n)
    half_width = float(scipy_stats.t.ppf((1.0 + level) / 2.0, n - 1)) * se
    return Contrast(
        estimate,
        se=se,
        df=n - 1,
        low=estimate - half_width,
        high=estimate + half_width,
        level=level,
    )


def minimum_detectable_effect(
    result: Contrast, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The smallest |contrast| a two-sided t test at ``alpha`` detects with probability
    ``power``, given this contrast's standard error and degrees of freedom:
    (t_{1−α/2, df} + t_{power, df}) · se. None without a standard error."""
    if result.se is None or result.df is None:
        return None
    if result.se == 0.0:
        return 0.0
    quantiles = scipy_stats.t.ppf(1.0 - alpha / 2.0, result.df) + scipy_stats.t.ppf(
        power, result.df
    )
    return float(quantiles) * result.se


def p_value(result: Contrast, null: float = 0.0) -> float | None:
    """Two-sided p-value of the Welch t test of H0: contrast == ``null``.

    None without an interval (a group of one); 0 or 1 when the standard error is 0
    (the estimate differs from ``null`` or equals it).
    """
    if result.se is None or result.df is None:
        return None
    if result.se == 0.0:
        return 1.0 if result.estimate == null else 0.0
    t = abs(result.estimate - null) / result.se
    return float(2.0 * scipy_stats.t.sf(t, result.df))


def equivalence_p_value(result: Contrast, margin: float) -> float | None:
    """p-value of the two one-sided tests (TOST) of H0: |contrast| >= ``margin``.

    The larger of the one-sided p-values of contrast > −margin and contrast < margin.
    It is below α exactly when the (1 − 2α) interval (90% for α = 0.05) lies within
    ±margin. None without an interval.
    """
    if result.se is None or result.df is None:
        return None
    if result.se == 0.0:
        return 0.0 if abs(result.estimate) < margin else 1.0
    lower = float(scipy_stats.t.sf((result.estimate + margin) / result.se, result.df))
    upper = float(scipy_stats.t.cdf((result.estimate - margin) / result.se, result.df))
    return max(lower, upper)


def outside_margin_p_value(result: Contrast, margin: float) -> float | None:
    """Two-sided p-value of H0: the contrast lies within ±``margin``, against it lying
    outside: below α exactly when the (1 − α) interval lies wholly above +margin or wholly
    below −margin. None without an interval; 0 or 1 when the standard error is 0."""
    if result.se is None or result.df is None:
        return None
    if result.se == 0.0:
        return 0.0 if abs(result.estimate) > margin else 1.0
    t = (abs(result.estimate) - margin) / result.se
    return float(min(1.0, 2.0 * scipy_stats.t.sf(t, result.df)))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given.

    With the m available p-values sorted ascending, p₍ᵢ₎ becomes
    max over j ≤ i of min(1, (m − j + 1) · p₍ⱼ₎): rejecting every hypothesis whose
    adjusted p-value is below α keeps the family-wise error rate at α. None (no test)
    stays None and does not count in m.
    """
    present = sorted((value, index) for index, value in enumerate(p_values) if value is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (value, index) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * value))
        adjusted[index] = running
    return adjusted
