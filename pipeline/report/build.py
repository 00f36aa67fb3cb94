"""`build_report`: the latest run → one self-contained HTML file."""
from __future__ import annotations

import os
from pathlib import Path

from btmri.documents import write_atomic
from pipeline.config import PipelineConfig


def build_report(config: PipelineConfig, out: str | os.PathLike, data_root: str | None = None,
                 gallery_per_kind: int = 4, abstention_benchmark: str | None = None):
    """Writes the report to `out` (atomically: a half-written report never exists)
    and returns the data it shows."""
    from pipeline.report.collect import collect
    from pipeline.report.html_report import render

    data = collect(config, data_root=data_root, gallery_per_kind=gallery_per_kind,
                   abstention_benchmark=abstention_benchmark)
    text = render(data)
    write_atomic(Path(out).resolve(), text)
    return data
