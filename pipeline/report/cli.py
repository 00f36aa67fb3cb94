"""`btmri report`: argument parsing and the printed summary; the work happens in
pipeline.report.build (and, during a run, pipeline/report/component.py)."""

from __future__ import annotations

import argparse

from btmri.cli_conventions import EXIT_OK, add_output_flags, add_work_dir, error
from btmri.intervals import WILSON, format_with_interval, statement
from btmri.layout import REPORT_FILE, RunLayout
from pipeline.report import DEFAULT_GALLERY_PER_KIND


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.config import PipelineConfig, missing_store_message

    pipeline_root = args.pipeline_root or RunLayout(args.work_dir).pipeline_root
    config = PipelineConfig(pipeline_root=pipeline_root, data_root=args.data_root or "", serving_dir="")
    if missing := missing_store_message(config):  # before TFX and TFMA take seconds to import
        return error("report", missing)

    from pipeline.report.artifacts import ReportError
    from pipeline.report.build import build_report, report_of_run
    from pipeline.report.component import summary_of

    try:
        summary = None
        if (
            args.data_root is None
            and args.gallery == DEFAULT_GALLERY_PER_KIND
            and not args.render
            and not args.abstention_benchmark
        ):
            summary = report_of_run(config, args.out)
        if summary is None:
            summary = summary_of(
                build_report(
                    config,
                    args.out,
                    data_root=args.data_root,
                    gallery_per_kind=args.gallery,
                    abstention_benchmark=args.abstention_benchmark,
                )
            )
    except ReportError as err:
        return error("report", err)
    print("\n".join(summary_text(args.out, summary)))
    return EXIT_OK


def summary_text(out: str, summary: dict) -> list[str]:
    verdict = "blessed" if summary["blessed"] else "not blessed"
    # Summaries written before units were recorded: each image its own unit, Wilson.
    method = summary.get("interval_method", WILSON)
    units = summary.get("units", summary["n"])
    lines = [
        f"wrote {out}: {summary['evaluated_split']} accuracy "
        f"{format_with_interval(summary['accuracy'], summary['accuracy_ci95'])} "
        f"({summary['n']} images; "
        f"{format_with_interval(summary['deduplicated_accuracy'], summary['deduplicated_accuracy_ci95'])}"
        f" without the {summary['duplicates_of_training_images']} duplicates of training "
        f"images), {verdict}",
        f"  {summary['evaluated_split']}: {statement(summary['n'], units, method)}",
    ]
    abstention = summary.get("abstention")
    if abstention:
        lines.append(
            f"  answered {abstention['acceptance']:.4f} of {summary['evaluated_split']} "
            f"({abstention['out_of_distribution']} out of distribution, "
            f"{abstention['low_confidence']} low confidence, "
            f"{abstention.get('uncertain_no_tumour', 0)} uncertain no tumour); accuracy "
            f"{abstention['accuracy_answered']:.4f} on those, "
            f"{abstention['accuracy_all']:.4f} on all"
        )
    served = summary.get("serving_validation")
    if served:
        lines.append("  " + serving_line(served))
    baseline = summary.get("request_baseline")
    if baseline:
        lines.append(
            f"  monitoring baseline recorded: request-feature statistics of "
            f"{baseline['examples']} {baseline['split']} images (btmri monitor)"
        )
    shortcut = summary.get("shortcut_control")
    if shortcut:
        lines.append("  " + shortcut_line(shortcut, summary))
    for check in summary["checks"]:
        if check["status"] != "ok":
            lines.append(f"  {check['status']}: {check['name']}: {check['detail']}")
    return lines


def shortcut_line(control: dict, summary: dict) -> str:
    """The shortcut control in one line (summary.json's `shortcut_control`), beside the CNN."""
    return (
        f"shortcut control (trees on {control['features']} image statistics, no pixels): "
        f"{control['split']} accuracy {format_with_interval(control['accuracy'], control['accuracy_ci95'])} "
        f"against the CNN's {summary['accuracy']:.3f}; chance "
        f"{format_with_interval(control['chance_accuracy'], control['chance_accuracy_ci95'])} "
        f"({control['seconds']:.1f} s)"
    )


def serving_line(validation: dict) -> str:
    """The serving validation in one line (summary.json's `serving_validation`)."""
    if not validation.get("validated"):
        return f"serving validation: not run ({validation.get('reason', '')})"
    if not validation.get("blessed"):
        return f"serving validation: FAILED, not pushed: {validation.get('reason', '')}"
    return (
        f"serving validation: passed ({validation['warmup_records']} warm-up requests; "
        f"predict_images p50/p99 gRPC {validation['grpc_p50_ms']:.1f}/{validation['grpc_p99_ms']:.1f} ms, "
        f"REST {validation['rest_p50_ms']:.1f}/{validation['rest_p99_ms']:.1f} ms)"
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="self-contained HTML evaluation report and model card of the latest run"
    )
    add_work_dir(p, "the latest run of its pipeline root")
    p.add_argument(
        "--pipeline-root",
        default=None,
        help="pipeline root holding metadata.sqlite (default: WORK_DIR/pipeline)",
    )
    p.add_argument("--out", default=REPORT_FILE, help="HTML file to write (default %(default)s)")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder with the manifest.json to describe the data by (default: the "
        "run's own copy, beside its examples)",
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=DEFAULT_GALLERY_PER_KIND,
        metavar="N",
        help="Grad-CAM gallery: N correct and N wrong test images (default %(default)s)",
    )
    p.add_argument(
        "--render",
        action="store_true",
        help="render the report anew from the run's artifacts instead of copying the "
        "one the pipeline's ModelReport component wrote",
    )
    p.add_argument(
        "--abstention-benchmark",
        default=None,
        metavar="FILE",
        help="JSON written by benchmarks/abstention_probes.py --out: abstention per probe "
        "family in the report and model card",
    )
    add_output_flags(p)
    p.set_defaults(func=_cmd_report)
