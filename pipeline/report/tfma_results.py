"""The Evaluator's TFMA output, read through TFMA's API: metrics, the confusion
matrix plot, the thresholds and whether each one passed.

TFMA writes results as JSON-like dicts in which protobuf omits zero values
(an entry without `actualClassId` is class 0); the readers here undo that.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run

from btmri import spec
from pipeline.report.artifacts import BASELINE, CANDIDATE

OVERALL = ()  # TFMA's slice key of the whole split


@dataclass
class Threshold:
    """One blessing condition."""

    metric: str
    kind: str  # "value" (absolute bound) or "change" (against the baseline)
    condition: str  # e.g. "≥ 0.800"
    candidate: float
    baseline: float | None
    passed: bool
    message: str = ""  # TFMA's text when it failed


@dataclass
class TfmaResult:
    metrics: dict[str, float]  # candidate, overall slice: see `metric_key`
    baseline_metrics: dict[str, float] | None
    confusion: np.ndarray | None  # overall slice, counts [actual, predicted]
    unpredicted: int  # examples TFMA put in no class (-1)
    validation_ok: bool
    thresholds: list[Threshold]

    def get(self, name: str, sub_key: str = "") -> float:
        return self.metrics.get(metric_key(name, sub_key), float("nan"))

    def named(self, name: str) -> float:
        """A metric by name, whatever sub-key (class id, top-k) it carries."""
        for key, value in self.metrics.items():
            if key == name or key.startswith(name + " ["):
                return value
        return float("nan")


def metric_key(name: str, sub_key: str = "") -> str:
    """'accuracy', or 'precision_<class> [classId:0 topK:1]' for a sub-keyed metric."""
    return f"{name} [{sub_key}]" if sub_key else name


def flatten_metrics(slice_metrics: dict) -> dict[str, float]:
    flat = {}
    for per_sub_key in slice_metrics.values():  # one output: ''
        for sub_key, named in per_sub_key.items():
            for name, value in named.items():
                if isinstance(value, dict) and "doubleValue" in value:
                    flat[metric_key(name, sub_key)] = float(value["doubleValue"])
    return flat


def _overall(result) -> dict | None:
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == OVERALL:
            return metrics
    return None


def confusion_from_plots(result) -> tuple[np.ndarray | None, int]:
    """The overall slice's MultiClassConfusionMatrixPlot at its lowest threshold (0:
    every example counted for its top-1 class)."""
    for slice_key, plots in result.plots:
        if slice_key != OVERALL:
            continue
        for per_sub_key in plots.values():
            for named in per_sub_key.values():
                matrices = named.get("multiClassConfusionMatrixAtThresholds", {}).get("matrices")
                if not matrices:
                    continue
                matrix = min(matrices, key=lambda m: m.get("threshold", 0.0))
                cm = np.zeros((spec.NUM_CLASSES, spec.NUM_CLASSES), np.int64)
                unpredicted = 0
                for entry in matrix.get("entries", []):
                    actual = int(entry.get("actualClassId", 0))
                    predicted = int(entry.get("predictedClassId", 0))
                    count = int(round(entry.get("numWeightedExamples", 0.0)))
                    if predicted < 0:
                        unpredicted += count
                    else:
                        cm[actual, predicted] += count
                return cm, unpredicted
    return None, 0


def _condition(kind: str, bound) -> str:
    if kind == "value":
        parts = []
        if bound.HasField("lower_bound"):
            parts.append(f"≥ {bound.lower_bound.value:.3f}")
        if bound.HasField("upper_bound"):
            parts.append(f"≤ {bound.upper_bound.value:.3f}")
        return " and ".join(parts)
    higher = bound.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    limit = bound.absolute.value if bound.HasField("absolute") else 0.0
    # TFX gates "no regression" as change >= -1e-10: show it as the intent.
    limit = 0.0 if abs(limit) < 1e-6 else limit
    return f"change vs baseline {'≥' if higher else '≤'} {f'{limit:+.3f}' if limit else '0'}"


def _thresholds(eval_config, metrics, baseline_metrics, validation) -> list[Threshold]:
    failures = {}
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            kind = "change" if failure.metric_key.is_diff else "value"
            failures[(failure.metric_key.name, kind)] = failure.message
    rows = []
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            # A threshold for every slice, or per-slice ones of which the overall slice
            # (an empty SlicingSpec) is what the report's figures describe.
            thresholds = (
                [metric.threshold]
                if metric.HasField("threshold")
                else [
                    t.threshold
                    for t in metric.per_slice_thresholds
                    if any(s == tfma.SlicingSpec() for s in t.slicing_specs)
                ]
            )
            name = _metric_name(metric)
            for threshold, (kind, field) in itertools.product(
                thresholds, (("value", "value_threshold"), ("change", "change_threshold"))
            ):
                if not threshold.HasField(field):
                    continue
                if kind == "change" and baseline_metrics is None:
                    continue  # TFMA skips it too: nothing to compare with
                rows.append(
                    Threshold(
                        metric=name,
                        kind=kind,
                        condition=_condition(kind, getattr(threshold, field)),
                        candidate=metrics.get(name, float("nan")),
                        baseline=(baseline_metrics or {}).get(name),
                        passed=(name, kind) not in failures,
                        message=failures.get((name, kind), ""),
                    )
                )
    return rows


def _metric_name(metric_config) -> str:
    """The name a MetricConfig reports under: its config's 'name', else TFMA's
    default, the class name in snake case (SparseCategoricalAccuracy →
    sparse_categorical_accuracy)."""
    if metric_config.config:
        name = json.loads(metric_config.config).get("name")
        if name:
            return name
    return "".join(
        f"_{ch.lower()}" if ch.isupper() and i else ch.lower()
        for i, ch in enumerate(metric_config.class_name)
    )


def load_candidate(evaluation_uri: str):
    """The candidate's tfma.EvalResult. With a baseline, TFMA files metrics and plots
    under the model name 'candidate'; without one, under no name."""
    _, _, _, locations = load_eval_run(evaluation_uri)
    return tfma.load_eval_result(evaluation_uri, model_name=CANDIDATE if BASELINE in locations else None)


def load(evaluation_uri: str) -> TfmaResult:
    eval_config, _, _, locations = load_eval_run(evaluation_uri)
    has_baseline = BASELINE in locations
    candidate = load_candidate(evaluation_uri)
    metrics = flatten_metrics(_overall(candidate) or {})
    baseline_metrics = None
    if has_baseline:
        baseline = tfma.load_eval_result(evaluation_uri, model_name=BASELINE)
        baseline_metrics = flatten_metrics(_overall(baseline) or {})
    confusion, unpredicted = confusion_from_plots(candidate)
    validation = tfma.load_validation_result(evaluation_uri)
    return TfmaResult(
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        confusion=confusion,
        unpredicted=unpredicted,
        validation_ok=validation.validation_ok,
        thresholds=_thresholds(eval_config, metrics, baseline_metrics, validation),
    )
