"""The run summary `btmri run` prints: TFMA's figures with 95 % Wilson intervals over
images, then the ModelReport's accuracy with its interval by unit (a bootstrap over
patients / groups where the split knows them, btmri.intervals)."""

from __future__ import annotations

import math
import os

from btmri import spec
from btmri.intervals import WILSON, format_proportion, format_with_interval, statement
from btmri.layout import MODEL_CARD_FILE, REPORT_FILE
from pipeline.report import read_summary


def summary_lines(summary, accuracy_bound: float, min_acceptance: float | None = None) -> list[str]:
    """Lines for a pipeline.local_runner.RunSummary; `min_acceptance`: the Evaluator's
    abstention gate (None: not gated)."""
    lines = [f"finished in {summary.seconds / 60:.1f} min; log: {summary.log_path}"]
    result = summary.evaluation
    if result is not None:
        lines += _figures(result, accuracy_bound)
    lines += _by_unit(summary.report_dir)
    if result is not None:
        lines += _acceptance(result, min_acceptance)
    if summary.lesion_audit:
        from components.audit.report_text import audit_lines

        lines += [""] + audit_lines(summary.lesion_audit)
    if getattr(summary, "serving_validation", None) is not None:
        from pipeline.report.cli import serving_line

        lines.append(serving_line(summary.serving_validation.to_dict()))
    lines.append(
        f"blessed: {'yes' if summary.blessed else 'no'}"
        + (f" ({summary.blessing_message})" if summary.blessing_message and not summary.blessed else "")
    )
    if summary.pushed and summary.already_pushed:
        lines.append(f"model already pushed at {summary.pushed_to}: nothing new pushed")
    elif summary.pushed:
        lines.append(f"pushed to {summary.pushed_to}")
        card = os.path.join(summary.pushed_to, MODEL_CARD_FILE)
        if os.path.isfile(card):
            lines.append(f"model card: {card}")
    else:
        lines.append("not pushed")
    if summary.report_dir:
        lines.append(f"report: {os.path.join(summary.report_dir, REPORT_FILE)}")
    lines += time_lines(summary)
    return lines


def time_lines(summary) -> list[str]:
    """Where the run's time went: each step that ran (cached steps do not appear),
    longest first, the Trainer's own phases under it."""
    seconds = getattr(summary, "component_seconds", None) or {}
    if not seconds:
        return []
    lines = ["time per step:"]
    for node, took in sorted(seconds.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {node:<28}{_duration(took)}")
        if node == "Trainer":
            for phase, phase_took in (getattr(summary, "trainer_phase_seconds", None) or {}).items():
                lines.append(f"    {phase:<26}{_duration(phase_took)}")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds / 60:6.1f} min" if seconds >= 90 else f"{seconds:6.1f} s"


def _figures(result, accuracy_bound: float) -> list[str]:
    from components.evaluation import ACCURACY

    cm = result.confusion
    if cm is None:  # no confusion matrix plot: the figures without intervals
        n = result.named("example_count")
        lines = [
            f"accuracy {format_with_interval(result.named(ACCURACY), (math.nan, math.nan))} "
            f"on {0 if math.isnan(n) else int(n)} examples (lower bound {accuracy_bound})"
        ]
        for name in spec.CLASS_NAMES:
            lines.append(
                f"  {name:11s} precision {result.named('precision_' + name):.3f}  "
                f"recall {result.named('recall_' + name):.3f}"
            )
        return lines
    total = int(cm.sum())
    lines = [
        f"accuracy {format_proportion(int(cm.trace()), total)} "
        f"(95 % Wilson interval; lower bound {accuracy_bound})"
    ]
    for k, name in enumerate(spec.CLASS_NAMES):
        tp = int(cm[k, k])
        lines.append(
            f"  {name:11s} precision {format_proportion(tp, int(cm[:, k].sum()))}  "
            f"recall {format_proportion(tp, int(cm[k].sum()))}"
        )
    return lines


def _by_unit(report_dir: str | None) -> list[str]:
    """The report's accuracy with its interval over patients / groups (images of one
    patient are near copies, so Wilson over images is too narrow); nothing when the
    report did not run or each image is its own unit."""
    report = read_summary(report_dir) if report_dir else None
    if report is None:
        return []
    method = report.get("interval_method", WILSON)
    if method == WILSON or "accuracy_ci95" not in report:
        return []
    return [
        f"accuracy by patient {format_with_interval(report['accuracy'], report['accuracy_ci95'])} "
        f"({statement(report['n'], report.get('units', report['n']), method)}; "
        "per class by patient: the report)"
    ]


def _acceptance(result, min_acceptance: float | None) -> list[str]:
    """The share of the evaluated split the model answered (did not abstain on), for a
    model exported with abstention; nothing for one without."""
    from components.evaluation import ACCEPTANCE

    share = result.named(ACCEPTANCE)
    if math.isnan(share):
        return []
    n = int(result.confusion.sum()) if result.confusion is not None else result.named("example_count")
    floor = f"floor {min_acceptance}" if min_acceptance is not None else "not gated"
    if isinstance(n, float) and math.isnan(n):
        return [f"answered (not abstained) {share:.3f} of the evaluated split ({floor})"]
    return [
        f"answered (not abstained) {format_proportion(round(share * int(n)), int(n))} "
        f"of the evaluated split ({floor})"
    ]
