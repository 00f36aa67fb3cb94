"""The report's "Monitoring baseline" section: what the run's RequestBaseline recorded."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from btmri import spec
from btmri.layout import STATISTICS_FILE
from pipeline.report.markup import Cell, Paragraph, Table, count


@dataclass
class BaselineSummary:
    uri: str
    split: str
    examples: int
    features: list[tuple[str, str, str]] = field(default_factory=list)  # name, missing, summary


def _describe(feature) -> tuple[str, str]:
    """(missing share, one-line summary) of one FeatureNameStatistics."""
    if feature.HasField("num_stats"):
        s = feature.num_stats
        common = s.common_stats
        total = common.num_non_missing + common.num_missing
        return (
            f"{common.num_missing / total:.3f}" if total else "n/a",
            f"mean {s.mean:.4g}, sd {s.std_dev:.4g}, min {s.min:.4g}, max {s.max:.4g}",
        )
    s = feature.string_stats
    common = s.common_stats
    total = common.num_non_missing + common.num_missing
    shares = ", ".join(
        f"{v.value} {v.frequency / max(1, common.num_non_missing):.3f}" for v in s.top_values[:6]
    )
    return (f"{common.num_missing / total:.3f}" if total else "n/a", f"{s.unique} values: {shares}")


def summarize(uri: str | None) -> BaselineSummary | None:
    """The RequestBaseline statistics artifact at `uri`, or None when the run has none."""
    if not uri:
        return None
    files = sorted(glob.glob(os.path.join(uri, "Split-*", STATISTICS_FILE)))
    if not files:
        return None
    import tensorflow_data_validation as tfdv

    statistics = tfdv.load_stats_binary(files[0])
    dataset = statistics.datasets[0]
    split = os.path.basename(os.path.dirname(files[0]))[len("Split-") :]
    by_name = {f.path.step[0]: f for f in dataset.features if f.path.step}
    rows = [(name, *_describe(by_name[name])) for name in spec.REQUEST_FEATURES if name in by_name]
    return BaselineSummary(uri, split, int(dataset.num_examples), rows)


def blocks(summary: BaselineSummary | None) -> list:
    if summary is None:
        return [
            Paragraph(
                "This run recorded no monitoring baseline (no RequestBaseline step): "
                "`btmri monitor` has nothing to measure served traffic against."
            )
        ]
    return [
        Paragraph(
            f"The run recorded the monitoring baseline: TFDV statistics of the request "
            f"features of the {count(summary.examples)} images of the {summary.split} split "
            f"as this model answers them (the features the server's request log keeps; "
            f"`btmri monitor` measures skew against them, with the thresholds of the "
            f"schema stored beside them)."
        ),
        Table(
            ["feature", "missing", "baseline"],
            [[Cell(name), Cell(missing, "num"), Cell(text)] for name, missing, text in summary.features],
            id="request-baseline",
            caption=f"request features, {summary.split} split",
        ),
    ]
