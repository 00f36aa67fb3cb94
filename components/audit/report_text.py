"""The lesion audit as plain text: the run summary and `btmri audit` print this."""

from __future__ import annotations

from btmri.intervals import WILSON, format_with_interval, statement


def _share(fig: dict) -> str:
    return format_with_interval(fig["value"], fig["ci95"], digits=2)


COLUMNS = (
    ("pointing", "peak in box"),
    ("pointing_tolerant", "peak near box"),
    ("centre_baseline", "centre in box"),
    ("mass_in_box", "heat in box"),
    ("box_area", "box area"),
    ("removed_changed", "removed: changed"),
    ("removed_notumor", "removed: notumor"),
    ("lesion_only_same_class", "lesion only: same"),
)


def intervals_text(summary: dict) -> str:
    """'412 slices from 87 patients; 95 % intervals: bootstrap over patients' from an
    audit's summary; audits written before patients were recorded: each slice its own
    unit, Wilson over slices."""
    n = summary.get("slices", summary["overall"]["slices"])
    method = summary.get("interval_method", WILSON)
    return statement(n, summary.get("units", n), method, items="slices", unit="patients")


def audit_lines(document: dict) -> list[str]:
    """A table: one row per class and overall, each figure with its 95 % interval."""
    summary = document["summary"]
    lines = [
        f"lesion audit: {document['slices_audited']} slices not used in training "
        f"(of {document['slices_in_folder']} in {document['box_dir']})",
        intervals_text(summary),
    ]
    width = 22
    lines.append("class        n     " + "".join(title.ljust(width) for _, title in COLUMNS))
    rows = [*summary["per_class"].items(), ("overall", summary["overall"])]
    for name, figures in rows:
        cells = "".join(_share(figures[key]).ljust(width) for key, _ in COLUMNS)
        lines.append(f"{name:12s} {figures['slices']:<5d} {cells}")
    if document.get("failures"):
        lines.append("audit gate failed: " + "; ".join(document["failures"]))
    return lines
