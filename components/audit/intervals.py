"""95 % intervals for the figures the project reports (NumPy only)."""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) for n = 0. Unlike the normal
    approximation it stays inside [0, 1] and is honest at 0 or n successes."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean; (nan, nan) for no values."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def proportion(successes: int, n: int) -> dict:
    """{"value", "successes", "n", "ci95"}: one proportion as every report shows it."""
    return {"value": successes / n if n else float("nan"), "successes": int(successes),
            "n": int(n), "ci95": list(wilson(successes, n))}


def mean(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"value": float(values.mean()) if len(values) else float("nan"), "n": int(len(values)),
            "ci95": list(bootstrap_mean(values))}
