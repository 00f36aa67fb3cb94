"""The TFMA EvalConfig: what the Evaluator measures and what blesses a model.

Overall and per class: precision/recall named by class with the top-1 (argmax)
decision, so an uncertain model's figures are not NaN at a 0.5 cut-off; AUC
binarized one-vs-rest. Sliced overall, by label and by collection: the collection
slice is by feature key, so any collection prepare writes has its slice, the site's
reviewed images (`feedback`, `btmri run --feedback`) among them.
Blessing: accuracy above an absolute bound, no regression against the last
blessed model, and (models exported with abstention) the share of the evaluated
split the model answers (`abstain` false) at least a floor: a detector that refuses
brain slices it should answer is a regression too.
"""

from __future__ import annotations

import json
import math

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from btmri import spec

ACCURACY = "sparse_categorical_accuracy"
ACCEPTANCE = "abstention_acceptance"


class AbstentionAcceptance(metric_types.Metric):
    """Share of examples the model answers: `abstain` false. NaN for a model without
    an `abstain` output (a baseline exported before abstention existed)."""

    def __init__(self, name: str = ACCEPTANCE):
        super().__init__(metric_util.merge_per_key_computations(_acceptance), name=name)


metric_types.register_metric(AbstentionAcceptance)


def _acceptance(
    name: str = ACCEPTANCE,
    eval_config=None,
    model_name: str = "",
    output_name: str = "",
    sub_key=None,
    aggregation_type=None,
    class_weights=None,
    example_weighted: bool = False,
):
    key = metric_types.MetricKey(
        name=name,
        model_name=model_name,
        output_name=output_name,
        sub_key=sub_key,
        example_weighted=example_weighted,
    )
    return [metric_types.MetricComputation(keys=[key], preprocessors=None, combiner=_AcceptanceCombiner(key))]


class _AcceptanceCombiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey):
        self._key = key

    def create_accumulator(self):
        return [0, 0]  # answered, seen (examples with an `abstain` output)

    def add_input(self, accumulator, element):
        predictions = element.get("predictions") if hasattr(element, "get") else None
        if isinstance(predictions, dict) and self._key.model_name in predictions:
            predictions = predictions[self._key.model_name]
        if isinstance(predictions, dict) and spec.ABSTAIN in predictions:
            abstain = np.asarray(predictions[spec.ABSTAIN]).astype(bool).reshape(-1)
            accumulator[0] += int((~abstain).sum())
            accumulator[1] += int(abstain.size)
        return accumulator

    def merge_accumulators(self, accumulators):
        answered = seen = 0
        for a in accumulators:
            answered, seen = answered + a[0], seen + a[1]
        return [answered, seen]

    def extract_output(self, accumulator):
        return {self._key: accumulator[0] / accumulator[1] if accumulator[1] else math.nan}


def eval_config(
    accuracy_lower_bound: float, max_regression: float = 0.0, min_acceptance: float | None = None
) -> tfma.EvalConfig:
    """`max_regression`: how much accuracy may drop against the baseline (0 = none).
    `min_acceptance`: the smallest share of the evaluated split the candidate must answer
    (not abstain on); None: the share is reported, not gated."""
    accuracy_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": accuracy_lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_regression - 1e-10}
        ),
    )
    class_ids = list(range(spec.NUM_CLASSES))
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=spec.SERVING_DEFAULT,
                label_key=spec.LABEL_KEY,
                prediction_key=spec.PROBABILITIES,
            )
        ],
        # per class, and per collection (figshare copies vs the rest: a gap between them
        # is a model that learned one collection's look; `feedback`: the site's reviewed
        # images, measured apart from the dataset they joined)
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[spec.LABEL_KEY]),
            tfma.SlicingSpec(feature_keys=[spec.COLLECTION_KEY]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    # The bound gates overall accuracy; per-class slices are reported, not gated.
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()], threshold=accuracy_threshold
                            )
                        ],
                    ),
                    tfma.MetricConfig(class_name="SparseCategoricalCrossentropy"),
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                    tfma.MetricConfig(
                        class_name=AbstentionAcceptance.__name__,
                        module=__name__,
                        per_slice_thresholds=[]
                        if min_acceptance is None
                        else [
                            tfma.PerSliceMetricThreshold(
                                slicing_specs=[tfma.SlicingSpec()],
                                threshold=tfma.MetricThreshold(
                                    value_threshold=tfma.GenericValueThreshold(
                                        lower_bound={"value": min_acceptance}
                                    )
                                ),
                            )
                        ],
                    ),
                ]
            ),
            # Per class, by name: one-vs-rest with the top-1 (argmax) decision.
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(
                        class_name=metric,
                        config=json.dumps(
                            {"class_id": class_id, "top_k": 1, "name": f"{metric.lower()}_{name}"}
                        ),
                    )
                    for class_id, name in enumerate(spec.CLASS_NAMES)
                    for metric in ("Precision", "Recall")
                ]
            ),
            tfma.MetricsSpec(
                binarize=tfma.BinarizationOptions(class_ids={"values": class_ids}),
                metrics=[tfma.MetricConfig(class_name="AUC")],
            ),
        ],
    )
