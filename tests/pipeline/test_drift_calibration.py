"""Calibrated drift and skew thresholds (pipeline/drift_calibration.py) with real TFDV.

Fast and synthetic: request-feature rows are drawn from fixed distributions shaped like
the phantoms' (sizes 200–512 px, skewed intensity spread, a class mix) and a real
model's answers (an ood_score with a long right tail: a few far-out images stretch a
window's range, which is what moves TFDV's approximate divergence most), TFDV computes statistics in memory and validates them with the calibrated
thresholds, as `btmri monitor` does. Healthy windows are fresh draws from the
distribution the baseline was drawn from, not resamples of the baseline's rows, so the
rate they alarm at tests the calibration's assumption too.
"""

from __future__ import annotations

import numpy as np
import pytest

from btmri import spec
from components.baseline.statistics import load_schema, rows_from_json, rows_to_json, to_record_batch
from pipeline.drift_calibration import (
    JSD,
    L_INFINITY,
    MIN_THRESHOLD,
    CalibrationOptions,
    cached_calibration,
    calibrate,
    calibration_size,
    columns_of,
    comparators,
    measure,
    with_thresholds,
)

BASELINE_ROWS = 1000
WINDOW_ROWS = 300


def synthetic_rows(rng: np.random.Generator, n: int, brightness: float = 0.0) -> list[dict]:
    """Request-feature rows; `brightness` moves intensity_mean by that many gray levels."""
    classes = rng.choice(spec.CLASS_NAMES, n, p=[0.3, 0.3, 0.25, 0.15])
    return [
        {
            spec.FEATURE_IMAGE_WIDTH: int(rng.integers(200, 513)),
            spec.FEATURE_IMAGE_HEIGHT: int(rng.integers(200, 513)),
            spec.FEATURE_IMAGE_FORMAT: spec.FORMAT_PNG,
            spec.FEATURE_INTENSITY_MEAN: float(rng.normal(60, 12) + brightness),
            spec.FEATURE_INTENSITY_STD: float(rng.gamma(9, 6)),
            spec.FEATURE_PREDICTED_CLASS: str(classes[i]),
            spec.FEATURE_TOP_PROBABILITY: float(1 - rng.beta(1, 12)),
            spec.FEATURE_OOD_SCORE: float(rng.lognormal(-0.7, 1.2)),
        }
        for i in range(n)
    ]


def statistics(rows: list[dict], schema):
    """TFDV statistics of rows, in memory (the monitor's Beam path computes the same)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory

    return generate_statistics_in_memory(to_record_batch(rows), tfdv.StatsOptions(schema=schema))


def validate(window, schema, baseline, previous=None):
    import tensorflow_data_validation as tfdv

    return tfdv.validate_statistics(window, schema, previous_statistics=previous, serving_statistics=baseline)


@pytest.fixture(scope="module")
def schema():
    return load_schema()


@pytest.fixture(scope="module")
def kinds(schema):
    return comparators(schema)


@pytest.fixture(scope="module")
def baseline(schema, kinds):
    """(rows, their columns, their statistics)."""
    rows = synthetic_rows(np.random.default_rng(7), BASELINE_ROWS)
    return rows, columns_of(rows, kinds), statistics(rows, schema)


def _measured(anomalies, kind: str) -> dict[str, float]:
    field = "skew_measurements" if kind == "skew" else "drift_measurements"
    return {
        i.path.step[0]: getattr(i, field)[0].value for i in anomalies.drift_skew_info if getattr(i, field)
    }


def test_the_simulated_measures_are_tfdvs(schema, kinds, baseline):
    """measure() on values gives what TFDV measures on their statistics: the calibration
    simulates the statistic the check uses. Includes a feature constant on one side
    (TFDV's point bucket) and a window with a value the baseline never had."""
    rows, columns, stats = baseline
    rng = np.random.default_rng(3)
    for n in (40, 300):
        window = synthetic_rows(rng, n)
        window[0][spec.FEATURE_IMAGE_FORMAT] = spec.FORMAT_JPEG
        for row in window:
            row[spec.FEATURE_IMAGE_HEIGHT] = 512  # a point histogram against a spread one
        tfdv_values = _measured(validate(statistics(window, schema), schema, stats), "skew")
        labels = {
            name: sorted({r[name] for r in rows + window}) for name, k in kinds.items() if k == L_INFINITY
        }
        for name, kind in kinds.items():
            if kind == JSD:
                a = np.array([[r[name] for r in window]], float)
                b = np.array([[r[name] for r in rows]], float)
                mine = measure(JSD, a, b)[0]
            else:
                code = {label: i for i, label in enumerate(labels[name])}
                a = np.array([[code[r[name]] for r in window]])
                b = np.array([[code[r[name]] for r in rows]])
                mine = measure(L_INFINITY, a, b, len(code))[0]
            assert mine == pytest.approx(tfdv_values[name], rel=0.06, abs=2e-3), (name, n)
    assert tfdv_values[spec.FEATURE_IMAGE_HEIGHT] > 0.5  # the point bucket is its own


def test_healthy_windows_alarm_at_about_the_promised_rate(schema, kinds, baseline):
    """100 fresh healthy windows of 300 rows, each checked for skew against the baseline
    and for drift against the window before it, as consecutive reports are: at the
    default rate (0.05) at most 10 alarm (P(more) = 0.01 for a true rate of 0.05); at
    0.3 the alarms are that frequent too (the thresholds are not just wide)."""
    _, columns, base_stats = baseline
    rng = np.random.default_rng(11)
    windows = [statistics(synthetic_rows(rng, WINDOW_ROWS), schema) for _ in range(101)]
    for rate, low, high in ((0.05, 0, 10), (0.3, 15, 45)):
        calibration = calibrate(
            columns, kinds, WINDOW_ROWS, BASELINE_ROWS, WINDOW_ROWS, CalibrationOptions(false_alarm_rate=rate)
        )
        calibrated = with_thresholds(schema, calibration)
        alarms = sum(
            bool(validate(windows[i], calibrated, base_stats, windows[i - 1]).anomaly_info)
            for i in range(1, len(windows))
        )
        assert low <= alarms <= high, (rate, alarms)


def test_the_fixed_thresholds_alarm_on_healthy_small_windows(schema, baseline):
    """Why calibrate: the schema's fixed 0.15 flags the long-tailed ood_score of healthy
    windows of 50 rows often (7 of these 20)."""
    _, _, base_stats = baseline
    rng = np.random.default_rng(5)
    found = [
        validate(statistics(synthetic_rows(rng, 50), schema), schema, base_stats).anomaly_info
        for _ in range(20)
    ]
    assert sum(spec.FEATURE_OOD_SCORE in f for f in found) >= 4, [sorted(f) for f in found]


def test_a_shifted_window_alarms_on_the_shifted_feature(schema, kinds, baseline):
    _, columns, base_stats = baseline
    calibrated = with_thresholds(schema, calibrate(columns, kinds, WINDOW_ROWS, BASELINE_ROWS))
    rng = np.random.default_rng(13)
    # a quarter of the gray levels' spread brighter: below the fixed threshold (0.15)
    shifted = statistics(synthetic_rows(rng, WINDOW_ROWS, brightness=6.0), schema)
    found = validate(shifted, calibrated, base_stats)
    assert set(found.anomaly_info) == {spec.FEATURE_INTENSITY_MEAN}, dict(found.anomaly_info)
    assert _measured(found, "skew")[spec.FEATURE_INTENSITY_MEAN] < 0.15
    assert not validate(shifted, schema, base_stats).anomaly_info  # the fixed schema misses it


def test_thresholds_shrink_as_the_window_grows(kinds, baseline):
    _, columns, _ = baseline
    by_size = [calibrate(columns, kinds, n, BASELINE_ROWS).skew for n in (50, 200, 800)]
    for name in kinds:
        values = [thresholds[name] for thresholds in by_size]
        if name == spec.FEATURE_IMAGE_FORMAT:  # one value in every row: the floor throughout
            assert values == [MIN_THRESHOLD] * 3
            continue
        assert values[0] > values[1] > values[2], (name, values)


def test_the_family_shares_one_rate_and_drift_is_calibrated_with_skew(kinds, baseline):
    _, columns, _ = baseline
    skew_only = calibrate(columns, kinds, WINDOW_ROWS, BASELINE_ROWS)
    both = calibrate(columns, kinds, WINDOW_ROWS, BASELINE_ROWS, WINDOW_ROWS)
    assert set(skew_only.skew) == set(kinds) and not skew_only.drift
    assert set(both.drift) == set(kinds)
    for c in (skew_only, both):
        assert 0.03 <= c.in_sample_rate <= c.false_alarm_rate == 0.05
    # Twice the checks at one family-wise rate: each skew threshold rises.
    for name in kinds:
        assert both.skew[name] >= skew_only.skew[name], name
    # Two windows of 300 differ more than a window from a baseline of 1000.
    assert both.drift[spec.FEATURE_INTENSITY_MEAN] > both.skew[spec.FEATURE_INTENSITY_MEAN]


def test_calibrations_are_cached_per_rounded_window_size(kinds, baseline, tmp_path):
    rows, _, _ = baseline
    text = rows_to_json(rows)
    assert rows_from_json(text) == rows
    assert [calibration_size(n) for n in (7, 99, 287, 1234, 5000)] == [7, 99, 280, 1200, 5000]
    first, cached = cached_calibration(tmp_path, text, kinds, 287, BASELINE_ROWS)
    assert not cached and first.window_rows == 280
    again, cached = cached_calibration(tmp_path, text, kinds, 281, BASELINE_ROWS)
    assert cached and again == first
    other, cached = cached_calibration(tmp_path, text, kinds, 400, BASELINE_ROWS)
    assert not cached and other.window_rows == 400 and len(list(tmp_path.iterdir())) == 2
    stricter, cached = cached_calibration(
        tmp_path, text, kinds, 287, BASELINE_ROWS, options=CalibrationOptions(false_alarm_rate=0.01)
    )
    assert not cached and stricter.skew[spec.FEATURE_OOD_SCORE] > first.skew[spec.FEATURE_OOD_SCORE]


def test_a_false_alarm_rate_outside_0_1_is_a_usage_error(tmp_path, capsys):
    from pipeline.cli import main

    code = main(["monitor", "--request-log", str(tmp_path), "--false-alarm-rate", "1.5"])
    assert code == 2 and "--false-alarm-rate must be in (0, 1)" in capsys.readouterr().err
