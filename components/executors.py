"""Custom executors for three standard components.

ImportExampleGenWithManifest: TFX's ImportExampleGen copies the TFRecords into its
Examples artifact; this one copies the prepare manifest (manifest.json beside them)
too, so a run keeps the description of its own data: a later prepare into the same
folder can never change what an earlier run's report says. With the site's reviewed
images (`btmri run --feedback`), their provenance becomes custom properties of the
Examples artifact (feedback_*).

StrictExampleValidator: TFX's ExampleValidator records anomalies but lets the
pipeline go on; this one fails the run, naming each anomaly, so bad data never
reaches Transform or the Trainer.

IdempotentAtomicPusher: TFX's Pusher writes a new timestamped version for every
blessed run, even of a model it already pushed, and copies files straight into
the version folder TF Serving watches. This one pushes a model only once
(identified by the digest of its files), writes to a hidden temporary folder
and renames it into place, so a server never sees a half-copied version. Given a
`model_report` input (pipeline/pusher.py), the model card goes into that folder too,
before the rename.
"""

from __future__ import annotations

import hashlib
import os
import time

from absl import logging
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.example_validator import executor as validator_executor
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils
from tfx.proto import pusher_pb2
from tfx.utils import proto_utils

from btmri.layout import CARD_VERSION_PLACEHOLDER, DIGEST_FILE, MANIFEST_FILE, MODEL_CARD_FILE, WARMUP_DIR

MODEL_REPORT_KEY = "model_report"  # the Pusher's optional ModelReport input (pipeline/pusher.py)

_NOT_MODEL_FILES = {DIGEST_FILE, MODEL_CARD_FILE}


class AnomaliesFound(RuntimeError):
    """The data does not match the curated schema."""


class ImportExampleGenWithManifest(import_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        result = super().Do(input_dict, output_dict, exec_properties)
        source = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], MANIFEST_FILE)
        if fileio.exists(source):
            properties = _feedback_properties(source)
            for examples in output_dict[standard_component_specs.EXAMPLES_KEY]:
                fileio.copy(source, os.path.join(examples.uri, MANIFEST_FILE), overwrite=True)
                for name, value in properties.items():
                    if isinstance(value, int):
                        examples.set_int_custom_property(name, value)
                    else:
                        examples.set_string_custom_property(name, value)
        else:
            logging.warning(
                "no %s in %s: the run's report will not describe the data",
                MANIFEST_FILE,
                exec_properties[standard_component_specs.INPUT_BASE_KEY],
            )
        return result


def _feedback_properties(manifest_path: str) -> dict:
    """The provenance of the site's reviewed images (data_prep/feedback.py) as custom
    properties of the Examples artifact: ML Metadata then says which reviews and which
    model versions stand behind a model's data, without the manifest file."""
    import json

    from data_prep.feedback import mlmd_properties

    with fileio.open(manifest_path) as f:
        return mlmd_properties(json.loads(f.read()).get("feedback"))


class StrictExampleValidator(validator_executor.Executor):
    def _Validate(self, inputs, outputs):
        anomalies = super()._Validate(inputs, outputs)
        for name, info in anomalies.anomaly_info.items():
            self._found.append(f"feature '{name}': {info.short_description}: {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            self._found.append(f"dataset: {info.short_description}: {info.description}")
        return anomalies

    def Do(self, input_dict, output_dict, exec_properties):
        self._found: list[str] = []
        result = super().Do(input_dict, output_dict, exec_properties)
        if self._found:
            raise AnomaliesFound(
                "data anomalies found, pipeline stopped before Transform/Trainer:\n  "
                + "\n  ".join(self._found)
            )
        return result


def model_digest(model_dir: str) -> str:
    """sha256 over the relative names and contents of every file of a SavedModel, but
    the digest and card files and assets.extra/ (TF Serving's warm-up requests, which
    the InfraValidator adds): the trained model's identity, the same before and after
    validation."""
    digest = hashlib.sha256()
    files = []
    for root, _, names in fileio.walk(model_dir):
        files.extend(os.path.join(root, n) for n in names)
    for path in sorted(files):
        rel = os.path.relpath(path, model_dir)
        if rel in _NOT_MODEL_FILES or rel.split(os.sep, 1)[0] == WARMUP_DIR:
            continue
        digest.update(rel.encode() + b"\0")
        with fileio.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _model_card(input_dict) -> str | None:
    """MODEL_CARD.md of the `model_report` input (a ModelReport artifact), if any."""
    reports = input_dict.get(MODEL_REPORT_KEY) or []
    if not reports:
        return None
    path = os.path.join(artifact_utils.get_single_instance(reports).uri, MODEL_CARD_FILE)
    return path if fileio.exists(path) else None


def pushed_versions(serving_dir: str) -> dict[int, str]:
    """Integer version folders of a TF Serving base path → their recorded digest ('' if none)."""
    versions = {}
    if not fileio.exists(serving_dir):
        return versions
    for name in fileio.listdir(serving_dir):
        name = name.rstrip("/")
        if name.isdigit():
            marker = os.path.join(serving_dir, name, DIGEST_FILE)
            versions[int(name)] = fileio.open(marker).read().strip() if fileio.exists(marker) else ""
    return versions


class IdempotentAtomicPusher(pusher_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY]
        )
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        serving_dir = destination.filesystem.base_directory
        digest = model_digest(model_path)
        existing = pushed_versions(serving_dir)
        for version, known in existing.items():
            if known == digest:
                logging.info("Model already pushed as version %d; nothing new pushed.", version)
                model_push.set_int_custom_property("already_pushed", 1)
                self._MarkPushed(model_push, os.path.join(serving_dir, str(version)), str(version))
                return
        # Unix time, as TF Serving users expect, but always above what is there.
        version = max([int(time.time())] + [v + 1 for v in existing])
        final = os.path.join(serving_dir, str(version))
        staging = os.path.join(serving_dir, f".staging-{version}-{os.getpid()}")
        fileio.makedirs(serving_dir)
        io_utils.copy_dir(model_path, staging)
        with fileio.open(os.path.join(staging, DIGEST_FILE), "w") as f:
            f.write(digest + "\n")
        card = _model_card(input_dict)
        if card is not None:
            with fileio.open(card) as f:
                text = f.read()
            with fileio.open(os.path.join(staging, MODEL_CARD_FILE), "w") as f:
                f.write(text.replace(CARD_VERSION_PLACEHOLDER, str(version)))
        fileio.rename(staging, final)
        logging.info("Model pushed to %s.", final)
        model_push.set_int_custom_property("already_pushed", 0)
        self._MarkPushed(model_push, final, str(version))
