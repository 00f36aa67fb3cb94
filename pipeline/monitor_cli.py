"""`btmri monitor`: argument parsing and the printed verdict; the work is pipeline/monitor.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from btmri.cli_conventions import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    add_options,
    add_output_flags,
    add_work_dir,
    error,
    options_from,
)
from btmri.layout import MONITOR_DIR, MONITOR_REPORT_FILE, RunLayout
from pipeline.drift_calibration import CalibrationOptions

EXIT_ANOMALIES, EXIT_NOTHING = EXIT_REFUSED, EXIT_USAGE


def measurement_lines(result) -> list[str]:
    """The measurements against their thresholds, one line per compared feature."""
    measured = result.measurements()
    if not measured:
        return []
    lines = [f"  {'feature':<16} {'skew':>7} {'threshold':>9}   {'drift':>7} {'threshold':>9}"]
    for name, found in sorted(measured.items()):
        cells = []
        for kind in ("skew", "drift"):
            value, threshold = found.get(kind, (None, None))
            cells.append(
                f"{'–':>7} {'':>9}"
                if value is None
                else f"{value:>7.3f} {threshold:>9.3f}{'!' if value > threshold else ' '}"
            )
        lines.append(f"  {name:<16} {cells[0]}  {cells[1]}")
    return lines


def reviews_target(reviews: str | None, work_dir: str) -> str | None:
    """The review database live performance reads: `--reviews`, else the work folder's
    when it exists (None: none). ValueError for a given file that does not exist, which
    opening would create empty."""
    from pipeline.review.store import default_db

    if reviews is None:
        default = default_db(work_dir)
        return default if Path(default).is_file() else None
    if "://" not in reviews and not Path(reviews).is_file():
        raise ValueError(f"no review database at {reviews} (`btmri review --db` writes one)")
    return reviews


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.drift_calibration import describe
    from pipeline.monitor import MonitorError, monitor

    options = CalibrationOptions(**options_from(args, CalibrationOptions))
    try:
        options.check()
        reviews = reviews_target(args.reviews, args.work_dir)
    except ValueError as err:
        return error("monitor", err, EXIT_USAGE)
    pipeline_root = args.pipeline_root or RunLayout(args.work_dir).pipeline_root
    try:
        result = monitor(
            args.request_log,
            pipeline_root,
            out=args.out,
            all_files=args.all,
            beam_args=args.beam_arg,
            include_open=args.include_open,
            calibration_options=options,
            reviews=reviews,
        )
    except MonitorError as err:
        return error("monitor", err, EXIT_NOTHING)
    w = result.window
    print(
        f"window: {w['rows']} images in {w['records']} logged calls from "
        f"{len(w['files']) + len(w['open_files'])} files (model versions "
        f"{', '.join(sorted(w['versions'])) or 'none'}); skew against the baseline "
        f"({w['baseline_rows']} rows), drift against "
        f"{result.drift_against or 'nothing (first report)'}"
    )
    print(
        describe(result.calibration)
        if result.calibration
        else "thresholds: the schema's fixed ones (false-alarm rate unknown)"
    )
    for line in measurement_lines(result):
        print(line)
    for note in result.notes:
        print(f"note: {note}")
    for line in result.lines():
        print(f"ANOMALY {line}")
    for line in result.live.lines():
        print(line)
    for note in result.live.notes:
        print(f"note: {note}")
    for line in result.live.alarm_lines():
        print(f"ALARM {line}")
    verdict = [
        "anomalies found" if result.anomalous else "no anomalies",
        *(["live-performance alarms"] if result.live.alarms else []),
    ]
    print(f"{'; '.join(verdict)}; report {result.out_dir}/{MONITOR_REPORT_FILE}")
    return EXIT_ANOMALIES if result.alarmed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="drift and skew of logged requests against the pipeline's baseline (TFDV); live "
        "performance on the reviewed ones",
        description="Computes TFDV statistics of the request features logged by `btmri serve "
        "--request-log DIR` since the last report, validates them against the "
        "request-feature schema of the run that pushed the served model (skew against its "
        "baseline, drift against the previous report) with thresholds calibrated on that "
        "baseline for the window's size, checks accuracy and per-class recall on the window's "
        "reviewed requests (`btmri review`) against the pushed model's evaluation, and writes "
        "statistics, anomalies and an HTML page. "
        f"Exit code {EXIT_OK}: no anomaly, {EXIT_ANOMALIES}: anomalies or a live-performance "
        f"alarm, {EXIT_NOTHING}: no (new) logs, no baseline or an unusable review database.",
    )
    p.add_argument("--request-log", required=True, metavar="DIR", help="the server's --request-log folder")
    add_work_dir(p, "the baseline and schema of its latest run")
    p.add_argument(
        "--pipeline-root",
        default=None,
        help="pipeline root holding metadata.sqlite (default: WORK_DIR/pipeline)",
    )
    p.add_argument(
        "--out", default=None, help=f"report folders go here, one per run (default DIR/{MONITOR_DIR})"
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="check every retained log file, not only those no earlier report covered",
    )
    p.add_argument(
        "--include-open",
        action="store_true",
        help="also read the files servers are still writing (a snapshot; the next report reads "
        "only what they gain after it)",
    )
    p.add_argument(
        "--reviews",
        default=None,
        metavar="FILE|URL",
        help="review database for live performance: a SQLite file or a postgresql:// URL "
        "(default WORK_DIR/review/reviews.sqlite when it exists)",
    )
    add_options(p, CalibrationOptions)
    p.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Beam pipeline option, repeatable (default: DirectRunner in process)",
    )
    add_output_flags(p)
    p.set_defaults(func=_cmd_monitor)
