"""`ShortcutControl`: a TFX component beside the training, after ExampleGen.

Input: the Examples artifact ImportExampleGen wrote (raw tf.Examples, Split-<name>/
record files). Parameter: the split to score, the one the Evaluator scores (test, else
eval). It fits the shortcut control (components/shortcut/control.py: gradient-boosted
trees on image statistics, no pixels) on the train split and scores it on that split.

Output: a `ShortcutControl` artifact holding shortcut_control.json (accuracy, per-class
recall with 95 % intervals, the confusion matrix, permutation importances, the time it
took), with accuracy, chance and seconds as custom properties. The ModelReport shows it
beside the CNN's figures.

It needs no model: on orchestrators that run steps in parallel it runs beside
Transform and the Trainer. It waits for the ExampleValidator (as Transform does), so
anomalous data stops the run with the validator's message, not here.
"""

from __future__ import annotations

import time

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from btmri import spec
from components.audit.component import split_files
from components.shortcut import control


class ShortcutControlResult(types.Artifact):
    """The shortcut control's figures (shortcut_control.json)."""

    TYPE_NAME = "btmri.ShortcutControl"  # a namespace: the Kubeflow v2 compiler requires one


class ShortcutControlSpec(types.ComponentSpec):
    PARAMETERS = {"split": ExecutionParameter(type=str)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {"control": ChannelParameter(type=ShortcutControlResult)}


def split_records(files: list[str]):
    """(encoded image, label) of each tf.Example in record files; records without an
    image or a label are passed over (the ExampleValidator refuses such data anyway)."""
    import tensorflow as tf

    for path in files:
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            feats = tf.train.Example.FromString(record.numpy()).features.feature
            image = feats[spec.IMAGE_KEY].bytes_list.value if spec.IMAGE_KEY in feats else []
            label = feats[spec.LABEL_KEY].int64_list.value if spec.LABEL_KEY in feats else []
            if image and label:
                yield image[0], label[0]


def run_shortcut_control(examples_uri: str, split: str, out_dir: str) -> dict:
    """The control as the component runs it; returns the document written."""
    started = time.perf_counter()
    document = control.run_control(
        split_records(split_files(examples_uri, spec.TRAIN_SPLIT)),
        split_records(split_files(examples_uri, split)),
        evaluated_split=split,
    )
    document["seconds"]["component"] = time.perf_counter() - started
    control.write(document, out_dir)
    return document


class ShortcutControlExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        result = artifact_utils.get_single_instance(output_dict["control"])
        document = run_shortcut_control(examples.uri, exec_properties["split"], result.uri)
        result.set_string_custom_property("split", document["evaluated_split"])
        result.set_float_custom_property("accuracy", float(document["accuracy"]["value"]))
        result.set_float_custom_property("chance_accuracy", float(document["chance"]["accuracy"]["value"]))
        result.set_int_custom_property("examples", document["evaluated_examples"])
        result.set_float_custom_property("seconds", float(document["seconds"]["component"]))


class ShortcutControl(base_component.BaseComponent):
    SPEC_CLASS = ShortcutControlSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ShortcutControlExecutor)

    def __init__(self, examples, split: str):
        component_spec = ShortcutControlSpec(
            examples=examples, split=split, control=types.Channel(type=ShortcutControlResult)
        )
        super().__init__(spec=component_spec)
