"""95 % intervals for every figure the project reports (NumPy only): the one place.

The unit of resampling is the patient. Slices of one patient are near copies, so an
interval that treats every image as an independent draw is too narrow. Where the
images' patients (or near-duplicate groups: btmri.spec.PATIENT_KEY) are known and some
unit holds more than one image, every interval is a percentile bootstrap over units
("patient bootstrap"): whole units are drawn with replacement and the figure is
recomputed, for a proportion as the ratio of the drawn units' sums of successes and
counts. Otherwise (each image its own unit: data prepared before units were recorded)
proportions (accuracy, per-class recall/precision, shares of the lesion audit) get a
Wilson score interval, and statistics that are not a count over a count (ROC AUC, the
expected calibration error, a mean) a percentile bootstrap over images.

A percentile bootstrap collapses to a point when every draw gives the same ratio (all
slices right, say), so a proportion's patient-bootstrap interval is widened to hold its
Wilson interval over images: clustering can only add uncertainty to that.
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

# Interval methods, as figures record them (the "method" field) and reports name them.
WILSON = "wilson"  # Wilson score interval over images (proportions)
BOOTSTRAP = "bootstrap"  # percentile bootstrap over images (means, AUC, ECE)
PATIENT_BOOTSTRAP = "patient bootstrap"  # percentile bootstrap over patients / groups
METHOD_TEXT = {
    WILSON: "Wilson over {items}",
    BOOTSTRAP: "bootstrap over {items}",
    PATIENT_BOOTSTRAP: "bootstrap over patients",
}
_CHUNK_CELLS = 4_000_000  # bootstrap draws held in memory at once (resamples x units)


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


def unit_codes(groups) -> tuple[np.ndarray, int]:
    """(integer unit of each item, number of units) from one unit id per item."""
    if groups is None:
        raise ValueError("no units given")
    ids = np.array([str(g) for g in groups]) if len(groups) else np.zeros(0, str)
    _, codes = np.unique(ids, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1 if codes.size else 0


def clustered(groups) -> bool:
    """Whether unit ids are given and some unit holds more than one item."""
    if groups is None or not len(groups):
        return False
    codes, units = unit_codes(groups)
    return units < codes.size


def interval_method(groups) -> str:
    """PATIENT_BOOTSTRAP when `groups` (one unit id per item) cluster the items, else WILSON."""
    return PATIENT_BOOTSTRAP if clustered(groups) else WILSON


def count_units(groups, n: int) -> int:
    """Distinct units among n items (n when the units are not known)."""
    return n if groups is None else (unit_codes(groups)[1] if len(groups) else 0)


def unit_sums(values, codes: np.ndarray, units: int, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """(sum of `values`, number of items) per unit, over the items `mask` keeps."""
    values = np.asarray(values, np.float64)
    weight = np.ones(len(values)) if mask is None else np.asarray(mask, bool).astype(np.float64)
    return (
        np.bincount(codes, weights=values * weight, minlength=units),
        np.bincount(codes, weights=weight, minlength=units),
    )


def cluster_bootstrap_ratio(successes, counts, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of sum(successes) / sum(counts), drawing whole
    clusters (patients) with replacement. `successes` and `counts` hold one sum per
    cluster (a mean: sum of values and number of values). Clusters without a count add
    nothing to either sum and are left out; (nan, nan) when no cluster has one."""
    successes = np.asarray(successes, np.float64)
    counts = np.asarray(counts, np.float64)
    if successes.shape != counts.shape:
        raise ValueError(f"successes {successes.shape} and counts {counts.shape} differ in shape")
    keep = counts > 0
    successes, counts = successes[keep], counts[keep]
    m = counts.size
    if not m:
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    step = max(1, _CHUNK_CELLS // m)
    for start in range(0, resamples, step):
        drawn = rng.integers(0, m, (min(step, resamples - start), m))
        ratios[start : start + len(drawn)] = successes[drawn].sum(axis=1) / counts[drawn].sum(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def ratio_interval(successes, counts, method: str) -> Interval:
    """95 % interval of a proportion from its per-unit successes and counts: Wilson over
    the totals, or (PATIENT_BOOTSTRAP) the cluster bootstrap widened to hold Wilson."""
    successes = np.asarray(successes, np.float64)
    counts = np.asarray(counts, np.float64)
    k, n = int(round(successes.sum())), int(round(counts.sum()))
    over_items = wilson(k, n)
    if method == WILSON or n <= 0:
        return over_items
    if method != PATIENT_BOOTSTRAP:
        raise ValueError(f"unknown interval method {method!r} for a proportion")
    lo, hi = cluster_bootstrap_ratio(successes, counts)
    return min(lo, over_items[0]), max(hi, over_items[1])


def bootstrap(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    resamples: int = RESAMPLES,
    seed: int = 0,
    groups=None,
) -> Interval:
    """Percentile bootstrap interval of `statistic(*arrays)`, resampling rows (images)
    together across `arrays`, or, with `groups` (one unit id per row), whole units with
    all their rows. Resamples where the statistic is undefined (NaN, e.g. an AUC with
    one class missing) are left out; (nan, nan) if all are."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0]) if arrays else 0
    if n == 0:
        return NAN_INTERVAL
    rng = np.random.default_rng(seed)
    draw = _unit_rows(groups, n) if groups is not None else None
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n) if draw is None else draw(rng)
        values.append(statistic(*(a[rows] for a in arrays)))
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if not values.size:
        return NAN_INTERVAL
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _unit_rows(groups, n: int) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing units with replacement and returning their rows."""
    codes, units = unit_codes(groups)
    if codes.size != n:
        raise ValueError(f"{codes.size} unit ids for {n} rows")
    order = np.argsort(codes, kind="stable")  # rows of unit 0, then unit 1, ...
    sizes = np.bincount(codes, minlength=units)
    starts = np.cumsum(sizes) - sizes

    def draw(rng: np.random.Generator) -> np.ndarray:
        chosen = rng.integers(0, units, units)
        lengths = sizes[chosen]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return order[np.repeat(starts[chosen], lengths) + within]

    return draw


def proportion(
    successes: int, n: int, method: str = WILSON, ci: Sequence[float] | None = None, units: int | None = None
) -> dict:
    """{"value", "successes", "n", "ci95", "method", "units"}: one proportion as every
    report shows it. `ci`: its interval when not Wilson's (method says which);
    `units`: the patients / groups the n items come from (n when each is its own)."""
    return {
        "value": successes / n if n else float("nan"),
        "successes": int(successes),
        "n": int(n),
        "ci95": list(wilson(successes, n) if ci is None else ci),
        "method": method,
        "units": int(n if units is None else units),
    }


def share(hits, groups=None, method: str | None = None) -> dict:
    """proportion() of per-item booleans. With `groups` (one unit id per item), the
    interval is the patient bootstrap when `method` (default interval_method(groups))
    says so, else Wilson."""
    hits = np.asarray(hits, bool)
    method = method or interval_method(groups)
    k, n = int(hits.sum()), int(hits.size)
    if method == WILSON or groups is None:
        return proportion(k, n, WILSON, units=count_units(groups, n))
    codes, units = unit_codes(groups)
    s, c = unit_sums(hits, codes, units)
    return proportion(k, n, method, ratio_interval(s, c, method), int(np.count_nonzero(c)))


def mean(values, groups=None, method: str | None = None) -> dict:
    """{"value", "n", "ci95", "method", "units"} of a mean: a bootstrap over units
    (the ratio of sums of values and counts) when the groups cluster the values (or
    `method` is PATIENT_BOOTSTRAP), else over the values."""
    values = np.asarray(values, np.float64)
    method = method or interval_method(groups)
    n = int(values.size)
    if method == PATIENT_BOOTSTRAP and groups is not None:
        codes, units = unit_codes(groups)
        sums, counts = unit_sums(values, codes, units)
        ci, units = cluster_bootstrap_ratio(sums, counts), int(np.count_nonzero(counts))
    else:
        method, ci, units = BOOTSTRAP, bootstrap_mean(values), count_units(groups, n)
    return {
        "value": float(values.mean()) if n else float("nan"),
        "n": n,
        "ci95": list(ci),
        "method": method,
        "units": units,
    }


def method_text(method: str, items: str = "images") -> str:
    """'Wilson over images', 'bootstrap over patients'."""
    return METHOD_TEXT.get(method, method).format(items=items)


def units_text(
    n: int, units: int, method: str, items: str = "images", unit: str = "patients / groups"
) -> str:
    """'812 images from 143 patients / groups'; '812 images, each its own unit' when
    the interval did not resample units."""
    if method == PATIENT_BOOTSTRAP:
        return f"{n:,} {items} from {units:,} {unit}"
    return f"{n:,} {items}, each its own unit"


def statement(n: int, units: int, method: str, items: str = "images", unit: str = "patients / groups") -> str:
    """'812 images from 143 patients / groups; 95 % intervals: bootstrap over patients'."""
    return f"{units_text(n, units, method, items, unit)}; 95 % intervals: {method_text(method, items)}"


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
