"""The latest run → one self-contained HTML file.

`report_of_run` copies the report the run's ModelReport component wrote (from the
run's own artifacts); `build_report` renders one anew from the run's artifacts (other
options, or runs made before the component existed).
"""

from __future__ import annotations

import os
from pathlib import Path

from btmri.documents import write_atomic
from pipeline.config import PipelineConfig
from pipeline.report import read_summary


def build_report(
    config: PipelineConfig,
    out: str | os.PathLike,
    data_root: str | None = None,
    gallery_per_kind: int = 4,
    abstention_benchmark: str | None = None,
):
    """Writes the report to `out` (atomically: a half-written report never exists)
    and returns the data it shows."""
    from pipeline.report.collect import collect
    from pipeline.report.html_report import render

    data = collect(
        config,
        data_root=data_root,
        gallery_per_kind=gallery_per_kind,
        abstention_benchmark=abstention_benchmark,
    )
    text = render(data)
    write_atomic(Path(out).resolve(), text)
    return data


def report_of_run(config: PipelineConfig, out: str | os.PathLike) -> dict | None:
    """Copies the latest ModelReport artifact's report.html to `out` and returns its
    summary.json; None when the run has no ModelReport."""
    import os.path

    from btmri.layout import REPORT_FILE
    from pipeline.config import missing_store_message
    from pipeline.metadata import latest_output
    from pipeline.report.artifacts import ReportError

    if missing := missing_store_message(config):
        raise ReportError(missing)
    report = latest_output(config, "ModelReport", "report")
    summary = None if report is None else read_summary(report.uri)
    if summary is None:
        return None
    with open(os.path.join(report.uri, REPORT_FILE), encoding="utf-8") as f:
        write_atomic(Path(out).resolve(), f.read())
    return summary
