"""How often `btmri monitor` alarms on healthy and on shifted traffic, per window size.

Synthetic, so it runs anywhere: phantoms (data_prep/synth.py) make a baseline and a
held-out pool of healthy requests; the pool's images gamma-shifted, darker, or mixed
with non-brain pictures (noise, ramps, blanks) make shifted traffic. Features come from
the request log's own function (data_prep/request_features.py); with --model the served
model's answers (predict_images) add the answer features, without it only the image
features are compared (a log written without answers looks the same to the monitor).

For each window size, as consecutive monitor reports do: every window is checked for
skew against the baseline and for drift against the window before it (healthy, other
images of the pool), with thresholds
calibrated for that size (pipeline/drift_calibration.py) and, for comparison, with the
schema's fixed ones. Printed: the share of healthy windows that raised any alarm (the
false-alarm rate, promised at most --false-alarm-rate) and the share of shifted windows
that did (detection), then the calibrated thresholds per feature. Statistics are TFDV's
(in memory; `btmri monitor` runs the same generators on Beam).

    python benchmarks/drift_calibration.py [--sizes 100 300] [--windows 100] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from btmri import spec  # noqa: E402
from data_prep.request_features import request_features  # noqa: E402
from data_prep.synth import render_phantom  # noqa: E402
from pipeline.drift_calibration import CalibrationOptions, calibrate, columns_of, comparators, with_thresholds  # noqa: E402

SHIFTS = ("gamma 1.3", "10 % darker", "20 % non-brain")


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def _non_brain(rng: np.random.Generator) -> np.ndarray:
    """A picture that is no brain slice: noise, a ramp or a blank, of a phantom's size."""
    h, w = (int(n) for n in rng.integers(200, 513, 2))
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == 1:
        return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)
    return np.full((h, w), int(rng.integers(0, 256)), np.uint8)


def _phantoms(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_phantom(spec.CLASS_NAMES[i % spec.NUM_CLASSES], rng)[0] for i in range(n)]


def _rows(images: list[bytes], model) -> list[dict]:
    if model is None:
        return request_features(images, {})
    import tensorflow as tf

    rows = []
    for i in range(0, len(images), 16):
        part = images[i : i + 16]
        outputs = model(**{spec.IMAGE_BYTES_INPUT: tf.constant(part)})
        rows += request_features(part, {k: np.asarray(v) for k, v in outputs.items()})
    return rows


def _statistics(rows: list[dict], schema):
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory

    from components.baseline.statistics import to_record_batch

    return generate_statistics_in_memory(to_record_batch(rows), tfdv.StatsOptions(schema=schema))


def _alarms(pairs, schema, baseline) -> float:
    """Share of (window, previous window) pairs with any anomaly: skew against the
    baseline, drift against the previous window."""
    import tensorflow_data_validation as tfdv

    found = [
        tfdv.validate_statistics(w, schema, previous_statistics=p, serving_statistics=baseline).anomaly_info
        for w, p in pairs
    ]
    return float(np.mean([bool(f) for f in found]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=int, default=600, help="baseline phantoms")
    p.add_argument(
        "--pool",
        type=int,
        default=600,
        help="held-out phantoms windows are drawn from (at least twice a window)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300], help="window sizes (rows)")
    p.add_argument("--windows", type=int, default=100, help="healthy windows per size")
    p.add_argument("--shifted", type=int, default=40, help="shifted windows per size and shift")
    p.add_argument("--false-alarm-rate", type=float, default=CalibrationOptions().false_alarm_rate)
    p.add_argument("--model", default=None, help="a SavedModel version folder: its answers are features too")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.pool < 2 * max(args.sizes):
        p.error("--pool must hold two windows of the largest size (a window and the one before it)")

    from components.baseline.statistics import load_schema
    from pipeline.monitor import validation_schema

    started = time.time()
    model = None
    if args.model:
        import tensorflow as tf

        model = tf.saved_model.load(args.model).signatures[spec.PREDICT_IMAGES]
    rng = np.random.default_rng(args.seed)
    baseline_rows = _rows([_png(p) for p in _phantoms(args.baseline, args.seed + 1)], model)
    pool = _phantoms(args.pool, args.seed + 2)
    gamma = (255 * (np.arange(256) / 255) ** 1.3 + 0.5).astype(np.uint8)
    pools = {
        "healthy": _rows([_png(p) for p in pool], model),
        SHIFTS[0]: _rows([_png(cv2.LUT(p, gamma)) for p in pool], model),
        SHIFTS[1]: _rows([_png((p * 0.9 + 0.5).astype(np.uint8)) for p in pool], model),
        "non-brain": _rows([_png(_non_brain(rng)) for _ in range(args.pool)], model),
    }
    schema = load_schema()
    baseline = _statistics(baseline_rows, schema)
    print(
        f"drift calibration: {args.baseline} baseline phantoms, a held-out pool of {args.pool}, "
        f"{'image and answer' if model else 'image'} features; rendering took {time.time() - started:.0f} s"
    )

    def pair(n: int, shift: str | None = None) -> tuple[list[dict], list[dict]]:
        """(a window, the window before it): 2n different pool images, the first n shifted."""
        drawn = rng.choice(args.pool, 2 * n, replace=False)
        current = [pools[shift if shift in pools else "healthy"][i] for i in drawn[:n]]
        if shift == SHIFTS[2]:
            k = n // 5
            current[:k] = [pools["non-brain"][i] for i in rng.choice(args.pool, k, replace=False)]
        return current, [pools["healthy"][i] for i in drawn[n:]]

    header = f"{'window':>6}  {'thresholds':<10}  {'false alarms':>12}  " + "  ".join(
        f"{s:>14}" for s in SHIFTS
    )
    print(f"\nshare of windows that raised any alarm (skew and drift; promised: {args.false_alarm_rate:g})")
    print(header)
    thresholds = {}
    for n in args.sizes:
        checks = {
            shift: [tuple(_statistics(rows, schema) for rows in pair(n, shift)) for _ in range(count)]
            for shift, count in ((None, args.windows), *((s, args.shifted) for s in SHIFTS))
        }
        compared, _ = validation_schema(schema, checks[None][0][0])
        kinds = comparators(compared)
        calibration = calibrate(
            columns_of(baseline_rows, kinds),
            kinds,
            n,
            len(baseline_rows),
            n,
            CalibrationOptions(false_alarm_rate=args.false_alarm_rate),
        )
        thresholds[n] = calibration
        for name, checked in (("calibrated", with_thresholds(compared, calibration)), ("fixed", compared)):
            rates = [_alarms(checks[shift], checked, baseline) for shift in (None, *SHIFTS)]
            print(f"{n:>6}  {name:<10}  " + "  ".join(f"{r:>14.2f}" for r in rates), flush=True)

    print("\ncalibrated thresholds (skew / drift) per feature")
    print(f"{'feature':<16}" + "".join(f"{f'window {n}':>18}" for n in args.sizes))
    for name in sorted(next(iter(thresholds.values())).skew):
        cells = "".join(f"{f'{c.skew[name]:.3f} / {c.drift[name]:.3f}':>18}" for c in thresholds.values())
        print(f"{name:<16}{cells}")
    print(f"\n{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
