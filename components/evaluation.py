"""The TFMA EvalConfig: what the Evaluator measures and what blesses a model.

Overall and per class: precision/recall named by class with the top-1 (argmax)
decision, so an uncertain model's figures are not NaN at a 0.5 cut-off; AUC
binarized one-vs-rest. Sliced overall and by label.
Blessing: accuracy above an absolute bound and no regression against the last
blessed model.
"""
from __future__ import annotations

import json

import tensorflow_model_analysis as tfma

from btmri import spec

ACCURACY = "sparse_categorical_accuracy"


def eval_config(accuracy_lower_bound: float, max_regression: float = 0.0) -> tfma.EvalConfig:
    """`max_regression`: how much accuracy may drop against the baseline (0 = none)."""
    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -max_regression - 1e-10}))
    class_ids = list(range(spec.NUM_CLASSES))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=spec.SERVING_DEFAULT,
                                    label_key=spec.LABEL_KEY,
                                    prediction_key=spec.PROBABILITIES)],
        slicing_specs=[tfma.SlicingSpec(),
                       tfma.SlicingSpec(feature_keys=[spec.LABEL_KEY])],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                # The bound gates overall accuracy; per-class slices are reported, not gated.
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                                  per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                                      slicing_specs=[tfma.SlicingSpec()],
                                      threshold=accuracy_threshold)]),
                tfma.MetricConfig(class_name="SparseCategoricalCrossentropy"),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
            # Per class, by name: one-vs-rest with the top-1 (argmax) decision.
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name=metric, config=json.dumps(
                    {"class_id": class_id, "top_k": 1, "name": f"{metric.lower()}_{name}"}))
                for class_id, name in enumerate(spec.CLASS_NAMES)
                for metric in ("Precision", "Recall")]),
            tfma.MetricsSpec(binarize=tfma.BinarizationOptions(class_ids={"values": class_ids}),
                             metrics=[tfma.MetricConfig(class_name="AUC")]),
        ])
