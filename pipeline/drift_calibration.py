"""Drift and skew thresholds calibrated per feature and window size (docs/monitoring.md).

A fixed threshold means different things at different window sizes. TFDV's approximate
Jensen–Shannon divergence puts each side's values into ten equal-width buckets between
that side's own minimum and maximum and assumes the mass uniform within a bucket, so on
a long-tailed feature such as `ood_score` a few far-out requests stretch a healthy
window's buckets past a fixed 0.15, while small windows of any feature are noisy and
large ones could be held to much less.

The null hypothesis: the window, the baseline and the previous window are samples of
one distribution, which the baseline's stored rows (RequestBaseline,
layout.BASELINE_ROWS_FILE) stand for. Each draw takes, with replacement from those rows,
a window of the monitored window's size, a baseline of the baseline's size and (for
drift) a previous window of the previous window's size, and measures every compared
feature as TFDV's comparators do: the approximate Jensen–Shannon divergence of the
numeric features, the L-infinity distance of the categorical ones' value shares. The
values in the outer tails of a numeric feature come from a generalized Pareto fit
instead (see TAIL_SHARE). Every statistic (feature x skew/drift) gets as threshold its
k-th largest value over the draws, one k for all: the largest k for which at most
`false_alarm_rate` of the draws exceed any threshold. The family-wise rate is thus read
off the joint draws (the max-statistic method), so correlated features (intensity mean
and spread, top probability and ood_score) do not pay what a Bonferroni split would
charge them.

The thresholds go into the schema TFDV validates with: the measurement, the anomaly and
its description stay TFDV's. NumPy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from btmri.documents import option, write_atomic

# TFDV's StatsOptions.num_histogram_buckets (its default, which RowsToStatistics keeps).
HISTOGRAM_BUCKETS = 10
# TFDV's comparators: JSD for numeric features, L-infinity for categorical ones
# (components/schema/request_features.pbtxt).
JSD, L_INFINITY = "jensen_shannon_divergence", "infinity_norm"
SKEW, DRIFT = "skew", "drift"
# A feature that never varies in the baseline (every image 512 pixels wide) measures 0
# in every draw: without a floor one odd request would alarm. 0.01 asks for about 2 %
# of a window's rows to move (JSD) or one value's share to move by 1 point (L-infinity).
MIN_THRESHOLD = 0.01
# Calibrations are cached per window size rounded down to this many significant digits:
# hourly windows of 287, 291, 301 rows share one, and rounding down only raises the
# thresholds a little (fewer false alarms, not more).
SIZE_DIGITS = 2
# Bumped when the calibration's method changes, so cached thresholds are recomputed.
METHOD_VERSION = 1
# Draws held in memory at once: rows drawn per chunk stay below this many per feature.
_CHUNK_VALUES = 2_000_000
# The extremes of a numeric feature set TFDV's buckets (ten equal widths between a side's
# minimum and maximum), and a resample never goes beyond the baseline's own extremes: on a
# long-tailed feature (ood_score) plain resampling let healthy windows alarm several times
# as often as promised (docs/experiments.md, Monitoring). So the draws' values in each
# tail (this share of the stored values, at least MIN_TAIL_VALUES) come from a generalized
# Pareto distribution fitted to that tail instead (the semi-parametric bootstrap for
# extremes).
TAIL_SHARE = 0.05
MIN_TAIL_VALUES = 20


@dataclass
class CalibrationOptions:
    """How `btmri monitor` sets its thresholds; the option() fields are its flags."""

    false_alarm_rate: float = option(
        0.05,
        "share of healthy windows allowed to raise any alarm: every feature's skew and drift "
        "threshold is calibrated on the baseline for this window's size, and the live-performance "
        "bounds, apart, on the evaluation for its reviews",
        metavar="R",
    )
    draws: int = option(2000, "bootstrap draws per calibration", cli=False)
    seed: int = option(0, "seed of the draws", cli=False)

    def check(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError("--false-alarm-rate must be in (0, 1)")
        if self.draws < 100:
            raise ValueError("a calibration needs at least 100 draws")


@dataclass
class Calibration:
    """Thresholds for windows of `window_rows` rows against a baseline of `baseline_rows`
    (and a previous window of `previous_rows`); `skew` and `drift`: feature → threshold."""

    window_rows: int = 0  # the size calibrated for (the window's, rounded down)
    baseline_rows: int = 0
    previous_rows: int | None = None  # None: no drift check
    false_alarm_rate: float = 0.05  # the family-wise rate asked for
    in_sample_rate: float = 0.0  # share of the draws that raised an alarm with these thresholds
    draws: int = 0
    stored_rows: int = 0  # baseline rows the draws came from
    skew: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls(**json.loads(text))


def calibration_size(rows: int) -> int:
    """`rows` rounded down to SIZE_DIGITS significant digits (at least 1)."""
    if rows < 10**SIZE_DIGITS:
        return max(1, int(rows))
    unit = 10 ** (int(math.log10(rows)) + 1 - SIZE_DIGITS)
    return int(rows) // unit * unit


def comparators(schema) -> dict[str, str]:
    """feature → JSD or L_INFINITY, from a schema's skew comparators."""
    kinds = {}
    for feature in schema.feature:
        comparator = feature.skew_comparator
        if comparator.HasField(JSD):
            kinds[feature.name] = JSD
        elif comparator.HasField(L_INFINITY):
            kinds[feature.name] = L_INFINITY
    return kinds


def with_thresholds(schema, calibration: Calibration):
    """A copy of `schema` whose skew and drift thresholds are the calibration's."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    for feature in out.feature:
        for kind, comparator in ((SKEW, feature.skew_comparator), (DRIFT, feature.drift_comparator)):
            threshold = getattr(calibration, kind).get(feature.name)
            if threshold is None:
                continue
            for measure in (JSD, L_INFINITY):
                if comparator.HasField(measure):
                    getattr(comparator, measure).threshold = threshold
    return out


# ---- columns: the baseline's stored rows as arrays -------------------------------------


def columns_of(rows: list[dict], kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """Rows (dicts of request features, None missing) → one array per feature: floats
    with NaN for missing (JSD), integer codes with -1 for missing (L-infinity)."""
    columns = {}
    for name, kind in kinds.items():
        values = [row.get(name) for row in rows]
        if kind == JSD:
            columns[name] = np.array([np.nan if v is None else float(v) for v in values], np.float64)
        else:
            labels = sorted({v for v in values if v is not None})
            code = {label: i for i, label in enumerate(labels)}
            columns[name] = np.array([-1 if v is None else code[v] for v in values], np.int64)
    return columns


# ---- TFDV's measures, on many samples at once ------------------------------------------


def _histograms(values: np.ndarray):
    """Equal-width histograms of each row of `values` (NaN: missing) between the row's
    own minimum and maximum, HISTOGRAM_BUCKETS buckets closed on the right (TFDV puts a
    value on an inner edge into the lower bucket). → (low, high, counts, total)."""
    present = ~np.isnan(values)
    total = present.sum(axis=1)
    filled_low = np.where(present, values, np.inf)
    filled_high = np.where(present, values, -np.inf)
    low, high = filled_low.min(axis=1), filled_high.max(axis=1)
    empty = total == 0
    low[empty], high[empty] = 0.0, 0.0
    width = high - low
    scale = np.where(width > 0, HISTOGRAM_BUCKETS / np.where(width > 0, width, 1.0), 0.0)
    position = (np.where(present, values, low[:, None]) - low[:, None]) * scale[:, None]
    bucket = np.clip(np.ceil(position).astype(np.int64) - 1, 0, HISTOGRAM_BUCKETS - 1)
    rows = np.arange(values.shape[0])[:, None] * HISTOGRAM_BUCKETS
    counts = np.bincount((rows + bucket)[present], minlength=values.shape[0] * HISTOGRAM_BUCKETS).reshape(
        -1, HISTOGRAM_BUCKETS
    )
    return low, high, counts.astype(np.float64), total.astype(np.float64)


def _cdf(x: np.ndarray, low, high, counts) -> np.ndarray:
    """Mass of each histogram below each x (rows of x: one per histogram), the mass
    spread uniformly within a bucket; 0 for a point histogram (low == high)."""
    width = (high - low)[:, None]
    t = np.clip(
        (x - low[:, None]) / np.where(width > 0, width, 1.0) * HISTOGRAM_BUCKETS, 0, HISTOGRAM_BUCKETS
    )
    k = np.minimum(np.floor(t).astype(np.int64), HISTOGRAM_BUCKETS - 1)
    below = np.concatenate([np.zeros((len(low), 1)), np.cumsum(counts, axis=1)], axis=1)
    inside = np.take_along_axis(counts, k, axis=1)
    mass = np.take_along_axis(below, k, axis=1) + (t - k) * inside
    return np.where(width > 0, mass, 0.0)


def _jsd(a, b) -> np.ndarray:
    """TFDV's approximate Jensen–Shannon divergence (log 2, at most 1) of histogram pairs:
    both rebucketed on the union of their edges (uniform mass within a bucket); a point
    histogram (all values equal) is a bucket of its own, shared only with an equal point."""
    low_a, high_a, counts_a, total_a = a
    low_b, high_b, counts_b, total_b = b
    steps = np.arange(HISTOGRAM_BUCKETS + 1) / HISTOGRAM_BUCKETS
    edges_a = low_a[:, None] + (high_a - low_a)[:, None] * steps
    edges_b = low_b[:, None] + (high_b - low_b)[:, None] * steps
    point_a, point_b = high_a == low_a, high_b == low_b
    # A point histogram has no interval buckets: its edges add nothing to the union.
    edges_a = np.where(point_a[:, None], edges_b, edges_a)
    edges_b = np.where(point_b[:, None], edges_a, edges_b)
    union = np.sort(np.concatenate([edges_a, edges_b], axis=1), axis=1)
    mass_a = np.diff(_cdf(union, low_a, high_a, counts_a), axis=1)
    mass_b = np.diff(_cdf(union, low_b, high_b, counts_b), axis=1)
    same_point = point_a & point_b & (low_a == low_b)
    # Point buckets: a's own (b shares it when equal), then b's own when not equal.
    mass_a = np.concatenate(
        [mass_a, np.where(point_a, total_a, 0)[:, None], np.zeros((len(low_a), 1))], axis=1
    )
    mass_b = np.concatenate(
        [
            mass_b,
            np.where(same_point, total_b, 0)[:, None],
            np.where(point_b & ~same_point, total_b, 0)[:, None],
        ],
        axis=1,
    )
    p = mass_a / np.maximum(total_a, 1e-300)[:, None]
    q = mass_b / np.maximum(total_b, 1e-300)[:, None]
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    out = np.minimum((kl_p + kl_q) / 2, 1.0)
    # TFDV cannot compare an empty side: no measurement, never an alarm.
    return np.where((total_a > 0) & (total_b > 0), out, 0.0)


def _shares(codes: np.ndarray, categories: int) -> np.ndarray:
    present = codes >= 0
    rows = np.arange(codes.shape[0])[:, None] * categories
    counts = np.bincount((rows + codes)[present], minlength=codes.shape[0] * categories)
    counts = counts.reshape(-1, categories).astype(np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0), present.any(axis=1)


def _linf(a: np.ndarray, b: np.ndarray, categories: int) -> np.ndarray:
    """TFDV's L-infinity distance of the value shares of code-array pairs (row by row)."""
    shares_a, any_a = _shares(a, categories)
    shares_b, any_b = _shares(b, categories)
    return np.where(any_a & any_b, np.abs(shares_a - shares_b).max(axis=1, initial=0.0), 0.0)


def measure(kind: str, a: np.ndarray, b: np.ndarray, categories: int = 0) -> np.ndarray:
    """The comparator `kind` between samples a[i] and b[i] (2-D arrays, one sample per row;
    NaN or -1 missing), as TFDV measures it on their statistics."""
    if kind == JSD:
        return _jsd(_histograms(a), _histograms(b))
    return _linf(a, b, categories)


# ---- the tails of numeric features --------------------------------------------------------


def _fit_tails(samples: np.ndarray, sign: int):
    """One tail (sign +1: upper, -1: lower) of each row of `samples`, fitted by
    probability-weighted moments (Hosking and Wallis 1987: closed form, stable for small
    samples). → (edge, shape, scale, fitted) per row; not fitted where the tail has no
    spread (a constant or bounded feature's)."""
    x = np.sort(sign * samples, axis=1)
    k = max(MIN_TAIL_VALUES, int(TAIL_SHARE * x.shape[1]))
    edge = x[:, -k - 1]
    excess = x[:, -k:] - edge[:, None]  # ascending
    a0 = excess.mean(axis=1)
    a1 = np.mean((1 - (np.arange(1, k + 1) - 0.35) / k) * excess, axis=1)
    fitted = (a0 > 0) & (a0 - 2 * a1 > 0)
    spread = np.where(fitted, a0 - 2 * a1, 1.0)
    # Beyond 0.8 the estimate means "no finite mean": capped, so that a few draws do not
    # stretch every window to astronomic ranges.
    shape = np.clip(2 - a0 / spread, -1.0, 0.8)
    return sign * edge, shape, 2 * a0 * a1 / spread, fitted


def _redraw_tails(values: np.ndarray, tails, rng: np.random.Generator) -> np.ndarray:
    """`values` (one sample per row) with every value beyond its row's tail edge drawn
    anew from that row's tail; `tails`: [(sign, _fit_tails(...))]."""
    out = values.copy()
    for sign, (edge, shape, scale, fitted) in tails:
        beyond = (sign * (values - edge[:, None]) > 0) & fitted[:, None]
        u = rng.random(values.shape)
        xi = np.where(np.abs(shape) < 1e-9, 1e-9, shape)[:, None]
        excess = scale[:, None] / xi * ((1 - u) ** -xi - 1)
        out = np.where(beyond, edge[:, None] + sign * excess, out)
    return out


# ---- the calibration ---------------------------------------------------------------------


def _null_statistics(
    columns: dict[str, np.ndarray],
    kinds: dict[str, str],
    window_rows: int,
    baseline_rows: int,
    previous_rows: int | None,
    draws: int,
    seed: int,
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """[(skew|drift, feature)] and their values over `draws` healthy draws, shape (draws, J)."""
    stored = len(next(iter(columns.values())))
    rng = np.random.default_rng(seed)
    names = sorted(columns)
    statistics = [(SKEW, name) for name in names] + (
        [(DRIFT, name) for name in names] if previous_rows else []
    )
    per_draw = window_rows + baseline_rows + (previous_rows or 0)
    chunk = max(1, _CHUNK_VALUES // per_draw)
    present = {name: columns[name][~np.isnan(columns[name])] for name in names if kinds[name] == JSD}
    # A tail needs MIN_TAIL_VALUES values and the whole at least five times that.
    modelled = {name for name, values in present.items() if len(values) >= 5 * MIN_TAIL_VALUES}
    out = np.empty((draws, len(statistics)))
    for start in range(0, draws, chunk):
        d = min(chunk, draws - start)
        window = rng.integers(0, stored, (d, window_rows))
        baseline = rng.integers(0, stored, (d, baseline_rows))
        previous = rng.integers(0, stored, (d, previous_rows)) if previous_rows else None
        for name in names:
            column = columns[name]
            categories = int(column.max(initial=-1)) + 1
            drawn = [column[rows] for rows in (window, baseline, previous) if rows is not None]
            if name in modelled:
                # Each draw's tails are fitted to a resample of the stored values: the draws
                # carry the uncertainty of the tail's shape, not one estimate of it.
                values = present[name]
                resample = values[rng.integers(0, len(values), (d, len(values)))]
                tails = [(sign, _fit_tails(resample, sign)) for sign in (1, -1)]
                drawn = [_redraw_tails(sample, tails, rng) for sample in drawn]
            for j, others in enumerate(drawn[1:]):
                out[start : start + d, statistics.index((SKEW if j == 0 else DRIFT, name))] = measure(
                    kinds[name], drawn[0], others, categories
                )
    return statistics, out


def family_thresholds(values: np.ndarray, false_alarm_rate: float) -> tuple[np.ndarray, float]:
    """Per column, its k-th largest value, one k for all columns: the largest k for which
    at most `false_alarm_rate` of the rows have any value above its column's threshold.
    → (thresholds, the share of rows that do). The live-performance alarms use it too
    (pipeline/live_performance.py)."""
    ranked = -np.sort(-values, axis=0)  # descending per column

    def alarm_rate(k: int) -> float:
        return float((values > ranked[k - 1]).any(axis=1).mean())

    low, high = 1, len(values)  # alarm_rate(1) == 0: nothing exceeds the maximum
    while low < high:
        mid = (low + high + 1) // 2
        if alarm_rate(mid) <= false_alarm_rate:
            low = mid
        else:
            high = mid - 1
    return ranked[low - 1], alarm_rate(low)


def calibrate(
    columns: dict[str, np.ndarray],
    kinds: dict[str, str],
    window_rows: int,
    baseline_rows: int,
    previous_rows: int | None = None,
    options: CalibrationOptions | None = None,
) -> Calibration:
    """Thresholds for the features of `columns` (the baseline's stored rows, columns_of),
    for a window of `window_rows` against a baseline of `baseline_rows` and, when given,
    a previous window of `previous_rows` (sizes rounded down: calibration_size)."""
    options = options or CalibrationOptions()
    options.check()
    if not columns or not len(next(iter(columns.values()))):
        raise ValueError("no baseline rows to calibrate on")
    window_rows = calibration_size(window_rows)
    previous_rows = calibration_size(previous_rows) if previous_rows else None
    statistics, values = _null_statistics(
        columns, kinds, window_rows, baseline_rows, previous_rows, options.draws, options.seed
    )
    thresholds, rate = family_thresholds(values, options.false_alarm_rate)
    result = Calibration(
        window_rows=window_rows,
        baseline_rows=baseline_rows,
        previous_rows=previous_rows,
        false_alarm_rate=options.false_alarm_rate,
        in_sample_rate=rate,
        draws=options.draws,
        stored_rows=len(next(iter(columns.values()))),
    )
    for (check, name), threshold in zip(statistics, thresholds):
        getattr(result, check)[name] = round(max(float(threshold), MIN_THRESHOLD), 6)
    return result


def cached_calibration(
    cache_dir: str | Path | None,
    rows_text: str,
    kinds: dict[str, str],
    window_rows: int,
    baseline_rows: int,
    previous_rows: int | None = None,
    options: CalibrationOptions | None = None,
) -> tuple[Calibration, bool]:
    """calibrate() on the stored rows `rows_text` (layout.BASELINE_ROWS_FILE's text),
    read from / written to `cache_dir` when given. → (calibration, read from the cache)."""
    from components.baseline.statistics import rows_from_json

    options = options or CalibrationOptions()
    sizes = (
        calibration_size(window_rows),
        baseline_rows,
        calibration_size(previous_rows) if previous_rows else None,
    )
    key = hashlib.sha256(
        json.dumps(
            [
                METHOD_VERSION,
                hashlib.sha256(rows_text.encode()).hexdigest(),
                sorted(kinds.items()),
                sizes,
                options.false_alarm_rate,
                options.draws,
                options.seed,
            ]
        ).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir, f"{key}.json") if cache_dir else None
    if path is not None and path.is_file():
        return Calibration.from_json(path.read_text()), True
    columns = columns_of(rows_from_json(rows_text), kinds)
    result = calibrate(columns, kinds, window_rows, baseline_rows, previous_rows, options)
    if path is not None:
        write_atomic(path, result.to_json())
    return result, False


def describe(calibration: Calibration) -> str:
    """One line: what the thresholds were calibrated for."""
    previous = f" and a previous window of {calibration.previous_rows}" if calibration.previous_rows else ""
    return (
        f"thresholds calibrated for windows of {calibration.window_rows} rows against a baseline of "
        f"{calibration.baseline_rows}{previous} ({calibration.draws} draws from {calibration.stored_rows} "
        f"stored baseline rows): expected false-alarm rate {calibration.false_alarm_rate:g} "
        f"for healthy traffic, over all {len(calibration.skew) + len(calibration.drift)} checks"
    )
