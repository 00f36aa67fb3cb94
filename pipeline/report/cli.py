"""`btmri report`: argument parsing only; the work happens in pipeline.report.build."""
from __future__ import annotations

import argparse
import sys

from btmri.layout import DEFAULT_LAYOUT, REPORT_FILE


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.config import PipelineConfig
    from pipeline.report.artifacts import ReportError
    from pipeline.report.build import build_report

    config = PipelineConfig(pipeline_root=args.pipeline_root, data_root=args.data_root or "",
                            serving_dir="")
    try:
        data = build_report(config, args.out, data_root=args.data_root,
                            gallery_per_kind=args.gallery,
                            abstention_benchmark=args.abstention_benchmark)
    except ReportError as err:
        print(f"btmri report: error: {err}", file=sys.stderr)
        return 2
    verdict = "blessed" if data.run.blessed else "not blessed"
    print(f"wrote {args.out}: {data.run.evaluated_split} accuracy {data.as_is.accuracy:.4f} "
          f"({data.as_is.n} images; {data.deduplicated.accuracy:.4f} without the "
          f"{len(data.duplicates)} duplicates of training images), {verdict}")
    if data.abstention is not None:
        a = data.abstention
        print(f"  answered {a.acceptance:.4f} of {data.run.evaluated_split} ({a.out_of_distribution} "
              f"out of distribution, {a.low_confidence} low confidence); accuracy "
              f"{a.accuracy_answered:.4f} on those, {a.accuracy_all:.4f} on all")
    for check in data.checks:
        if check.status != "ok":
            print(f"  {check.status}: {check.name}: {check.detail}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="self-contained HTML evaluation report and model card of the latest run")
    p.add_argument("--pipeline-root", default=DEFAULT_LAYOUT.pipeline_root,
                   help="pipeline root holding metadata.sqlite (default %(default)s)")
    p.add_argument("--out", default=REPORT_FILE, help="HTML file to write (default %(default)s)")
    p.add_argument("--data-root", default=None,
                   help="folder with the manifest.json to describe the data by (default: the "
                        "run's own copy, beside its examples)")
    p.add_argument("--gallery", type=int, default=4, metavar="N",
                   help="Grad-CAM gallery: N correct and N wrong test images (default %(default)s)")
    p.add_argument("--abstention-benchmark", default=None, metavar="FILE",
                   help="JSON written by benchmarks/abstention.py --out: abstention per probe "
                        "family in the report and model card")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="keep TensorFlow's start-up notes and library warnings")
    p.set_defaults(func=_cmd_report)
