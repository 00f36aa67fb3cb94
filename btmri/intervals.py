"""95 % intervals for every figure the project reports (NumPy only): the one place.

Proportions (accuracy, per-class recall/precision, shares of the lesion audit) get a
Wilson score interval; statistics that are not a count over a count (ROC AUC, the
expected calibration error, a mean) get a percentile bootstrap interval over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from btmri.spec import CONFIDENCE

Z95 = 1.959963984540054  # two-sided normal quantile for CONFIDENCE
RESAMPLES = 2000  # bootstrap resamples: the percentiles move by < 0.002 beyond this
assert CONFIDENCE == 0.95

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (float("nan"), float("nan"))


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of a proportion; (nan, nan) for n = 0. Unlike the normal
    approximation it stays inside [0, 1] and is honest at 0 or n successes."""
    if n <= 0:
        return NAN_INTERVAL
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a mean; (nan, nan) for no values."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap(
    statistic: Callable[..., float], arrays: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of `statistic(*arrays)`, resampling rows (images)
    together across `arrays`. Resamples where the statistic is undefined (NaN, e.g.
    an AUC with one class missing) are left out; (nan, nan) if all are."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        values.append(statistic(*(a[rows] for a in arrays)))
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if not values.size:
        return NAN_INTERVAL
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def proportion(successes: int, n: int) -> dict:
    """{"value", "successes", "n", "ci95"}: one proportion as every report shows it."""
    return {
        "value": successes / n if n else float("nan"),
        "successes": int(successes),
        "n": int(n),
        "ci95": list(wilson(successes, n)),
    }


def mean(values) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "value": float(values.mean()) if len(values) else float("nan"),
        "n": int(len(values)),
        "ci95": list(bootstrap_mean(values)),
    }


def format_interval(interval: Sequence[float], digits: int = 3) -> str:
    """'[0.970, 0.989]'; '' when undefined."""
    lo, hi = interval
    if math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def format_with_interval(value: float, interval: Sequence[float], digits: int = 3) -> str:
    """'0.981 [0.970, 0.989]', 'n/a' for an undefined value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = format_interval(interval, digits)
    return f"{value:.{digits}f}" + (f" {text}" if text else "")


def format_proportion(successes: int, n: int, digits: int = 3) -> str:
    """'0.981 [0.970, 0.989] (558/569)'; 'n/a (0/0)' without images."""
    value = successes / n if n else float("nan")
    return f"{format_with_interval(value, wilson(successes, n), digits)} ({successes}/{n})"
