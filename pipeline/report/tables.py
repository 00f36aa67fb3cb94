"""The report's tables, shared by the HTML report and the model card."""

from __future__ import annotations

import math

from btmri import intervals
from pipeline.report import metrics
from btmri.spec import ECE_BINS
from pipeline.report.markup import Cell, Table, count, rate, rate_ci
from pipeline.report.tfma_results import Threshold

PER_CLASS_HEADER = [
    "class",
    "support",
    "precision",
    "recall (sensitivity)",
    "specificity",
    "F1",
    "ROC AUC (one vs rest)",
]
INTERVALS_NOTE = (
    "Brackets: 95 % intervals, Wilson for proportions (accuracy, precision, recall, "
    "specificity), a bootstrap over images for ROC AUC and ECE; F1 has none."
)
PATIENT_INTERVALS_NOTE = (
    "Brackets: 95 % intervals from a bootstrap over patients (an image's unit is its "
    "patient where known, else the image with its near duplicates; slices of one patient "
    "are near copies, so images are not independent draws): whole units drawn with "
    "replacement, proportions (accuracy, precision, recall, specificity) as the ratio of "
    "the drawn units' sums, widened where needed to hold their Wilson interval over "
    "images; ROC AUC and ECE recomputed on the drawn units' images; F1 has none."
)


def units_caption(named: list[tuple[str, metrics.Figures]]) -> str:
    """'test, as is: 812 images from 143 patients / groups; 95 % intervals: bootstrap
    over patients. …': the unit and interval method of each set of images."""
    return " ".join(f"{name}: {f.intervals_text}." for name, f in named)


def intervals_note(figures: list[metrics.Figures]) -> str:
    """How the intervals of these sets of images were drawn (the methods they used)."""
    methods = {f.interval_method for f in figures}
    notes = [PATIENT_INTERVALS_NOTE] if intervals.PATIENT_BOOTSTRAP in methods else []
    if methods - {intervals.PATIENT_BOOTSTRAP} or not methods:
        notes.append(INTERVALS_NOTE)
    return " ".join(notes)


def _num(text: str, title: str = "") -> Cell:
    return Cell(text, "num", title)


def per_class(figures: metrics.Figures, table_id: str, caption: str = "") -> Table:
    rows = []
    for f in figures.per_class:
        rows.append(
            [
                Cell(f.name),
                _num(count(f.support)),
                _num(
                    rate_ci(f.precision, f.precision_ci),
                    f"TP {f.tp} / predicted {f.tp + f.fp}"
                    if f.tp + f.fp
                    else "no image was predicted as this class",
                ),
                _num(rate_ci(f.recall, f.recall_ci), f"TP {f.tp} / actual {f.tp + f.fn}"),
                _num(rate_ci(f.specificity, f.specificity_ci), f"TN {f.tn} / negatives {f.tn + f.fp}"),
                _num(rate(f.f1)),
                _num(rate_ci(f.auc, f.auc_ci)),
            ]
        )
    return Table(PER_CLASS_HEADER, rows, id=table_id, caption=caption, css="figures")


def overall(named: list[tuple[str, metrics.Figures]], table_id: str) -> Table:
    """One row per set of images: n, accuracy, macro F1, macro AUC, ECE."""
    rows = [
        [
            Cell(name),
            _num(count(f.n)),
            _num(rate_ci(f.accuracy, f.accuracy_ci)),
            _num(rate(f.macro_f1)),
            _num(rate_ci(f.macro_auc, f.macro_auc_ci)),
            _num(rate_ci(f.ece, f.ece_ci)),
        ]
        for name, f in named
    ]
    return Table(
        ["images", "n", "accuracy", "macro F1", "macro ROC AUC", f"ECE ({ECE_BINS} bins)"],
        rows,
        id=table_id,
        caption=units_caption(named),
        css="figures",
    )


def confusion(figures: metrics.Figures, class_names, table_id: str) -> Table:
    """Counts with the row share beside each count: 'count (share)'."""
    shares = metrics.row_normalised(figures.confusion)
    rows = []
    for i, name in enumerate(class_names):
        cells = [Cell(name)]
        for j in range(len(class_names)):
            share = shares[i, j]
            text = f"{figures.confusion[i, j]} ({'n/a' if math.isnan(share) else f'{share:.2f}'})"
            cells.append(_num(text))
        cells.append(_num(count(figures.confusion[i].sum())))
        rows.append(cells)
    header = ["actual \\ predicted", *class_names, "total"]
    return Table(header, rows, id=table_id, css="figures confusion")


def thresholds(rows: list[Threshold], has_baseline: bool) -> Table:
    out = []
    for t in rows:
        baseline = (
            rate(t.baseline, 4) if t.baseline is not None else ("no baseline" if not has_baseline else "n/a")
        )
        change = f"{t.candidate - t.baseline:+.4f}" if t.kind == "change" and t.baseline is not None else ""
        out.append(
            [
                Cell(t.metric),
                Cell(t.condition),
                _num(rate(t.candidate, 4)),
                _num(baseline),
                _num(change),
                Cell("pass" if t.passed else "FAIL", "pass" if t.passed else "fail", t.message),
            ]
        )
    return Table(
        ["metric", "condition", "candidate", "baseline", "change", "result"],
        out,
        id="thresholds",
        css="figures",
    )


def split_counts(counts: dict[str, dict[str, int]], class_names) -> Table:
    rows = [
        [Cell(split), *(_num(count(per.get(c, 0))) for c in class_names), _num(count(sum(per.values())))]
        for split, per in counts.items()
    ]
    totals = [sum(per.get(c, 0) for per in counts.values()) for c in class_names]
    rows.append([Cell("total", "total"), *(_num(count(t)) for t in totals), _num(count(sum(totals)))])
    return Table(["split", *class_names, "total"], rows, id="split-counts", css="figures")
