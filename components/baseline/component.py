"""`RequestBaseline`: what requests to the trained model should look like.

Runs the trained model over a held-out split (the one the Evaluator scores: test, else
eval) the way the server answers requests (`predict_images` on each example's image bytes),
derives the request features from each image and answer with the function the
server's request log uses (data_prep/request_features.py), and writes

  statistics  ExampleStatistics, Split-<split>/FeatureStats.pb: TFDV statistics of
              those features (the baseline `btmri monitor` measures skew against);
              Beside it, request_rows.json (layout.BASELINE_ROWS_FILE): a random
              sample of the feature rows themselves (up to STORED_ROWS), on which
              `btmri monitor` calibrates its thresholds per window size
              (pipeline/drift_calibration.py);
  schema      Schema, schema.pbtxt: components/schema/request_features.pbtxt, with
              its drift and skew comparators (their thresholds are the fallback for a
              baseline without stored rows), as it was for this run.

Why that split and the model's own answers (docs/architecture.md, Monitoring): the
image features are distributed alike in every split, but the answer features are
not. On `train` the model is more confident than on any new image (the weights were
fitted there); on `eval` its ood_score is flattered too (the OOD statistics, the
temperature and the abstention thresholds are fitted there, in sample). Only the
evaluated split was never fitted on, so only there do its answers look like answers
to new images of the training distribution. Labels instead of predicted classes
would mix the model's errors into the class mix.

It needs only the Trainer's model and the examples: it runs beside the Evaluator,
and the ModelReport records it (so the Pusher waits for it only as long as the
report waits anyway on orchestrators that run steps in parallel).
"""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from btmri import spec
from btmri.layout import BASELINE_ROWS_FILE, SCHEMA_FILE, STATISTICS_FILE
from data_prep.request_features import request_features

BATCH_SIZE = 16
# Rows kept for calibration: a test split of a few thousand images whole, and enough
# of a larger split to draw windows of a few thousand from; under 1 MB of JSON.
STORED_ROWS = 5000


def predict_rows(signature, images: list[bytes]) -> list[dict]:
    """Feature rows of `images` as the server would log them: `signature` is a loaded
    model's `predict_images`."""
    import tensorflow as tf

    outputs = signature(**{spec.IMAGE_BYTES_INPUT: tf.constant(images)})
    return request_features(images, {k: np.asarray(v) for k, v in outputs.items()})


class _PredictFeatures(beam.DoFn):
    """Batches of serialized tf.Examples → feature rows; loads the model once per worker."""

    def __init__(self, model_dir: str):
        super().__init__()
        self.model_dir = model_dir
        self._signature = None

    def setup(self):
        import tensorflow as tf

        self._signature = tf.saved_model.load(self.model_dir).signatures[spec.PREDICT_IMAGES]

    def process(self, batch):
        from tensorflow.core.example import example_pb2

        images = [
            example_pb2.Example.FromString(serialized).features.feature[spec.IMAGE_KEY].bytes_list.value[0]
            for serialized in batch
        ]
        yield from predict_rows(self._signature, images)


class RequestBaselineSpec(types.ComponentSpec):
    PARAMETERS = {
        "split": ExecutionParameter(type=str),
        "schema_text": ExecutionParameter(type=str),  # the schema itself: no file path to ship
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "schema": ChannelParameter(type=standard_artifacts.Schema),
    }


class RequestBaselineExecutor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        from google.protobuf import text_format
        from tensorflow_metadata.proto.v0 import schema_pb2
        import tensorflow_data_validation as tfdv

        from components.baseline.statistics import RowsToStatistics, rows_to_json, statistics_count

        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        statistics = artifact_utils.get_single_instance(output_dict["statistics"])
        schema_artifact = artifact_utils.get_single_instance(output_dict["schema"])
        split = exec_properties["split"]
        schema = text_format.Parse(exec_properties["schema_text"], schema_pb2.Schema())

        split_uri = artifact_utils.get_split_uri([examples], split)
        out = os.path.join(statistics.uri, f"Split-{split}", STATISTICS_FILE)
        rows_out = os.path.join(statistics.uri, f"Split-{split}", BASELINE_ROWS_FILE)
        with self._make_beam_pipeline() as pipeline:
            rows = (
                pipeline
                | "Read" >> beam.io.ReadFromTFRecord(os.path.join(split_uri, "*"))
                | "Batch" >> beam.BatchElements(min_batch_size=BATCH_SIZE, max_batch_size=BATCH_SIZE)
                | "Predict" >> beam.ParDo(_PredictFeatures(path_utils.serving_model_path(model.uri)))
            )
            _ = (
                rows
                | "Statistics" >> RowsToStatistics(schema)
                | "Write" >> tfdv.WriteStatisticsToBinaryFile(out)
            )
            _ = (
                rows
                | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(STORED_ROWS)
                | "RowsToJson" >> beam.Map(rows_to_json)
                | "WriteRows" >> beam.io.WriteToText(rows_out, shard_name_template="")
            )
        statistics.split_names = artifact_utils.encode_split_names([split])
        count = statistics_count(tfdv.load_stats_binary(out))
        statistics.set_int_custom_property("examples", count)
        statistics.set_string_custom_property("split", split)
        io_utils.write_string_file(
            os.path.join(schema_artifact.uri, SCHEMA_FILE), exec_properties["schema_text"]
        )


class RequestBaseline(base_beam_component.BaseBeamComponent):
    SPEC_CLASS = RequestBaselineSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(RequestBaselineExecutor)

    def __init__(self, examples, model, schema_text: str, split: str):
        component_spec = RequestBaselineSpec(
            examples=examples,
            model=model,
            split=split,
            schema_text=schema_text,
            statistics=types.Channel(type=standard_artifacts.ExampleStatistics),
            schema=types.Channel(type=standard_artifacts.Schema),
        )
        super().__init__(spec=component_spec)
