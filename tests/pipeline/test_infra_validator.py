"""The InfraValidator and the Pusher's infra_blessing, on tiny SavedModels built here
(the three contract signatures, constant answers): the component's executor really
starts `btmri serve`, talks gRPC and REST to it and writes its artifacts; the Pusher's
executor then pushes, or not. The whole pipeline's validation of its trained model is
checked in test_pipeline.py (tiny_run)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from btmri import spec
from btmri.documents import InfraValidation
from btmri.layout import DIGEST_FILE, INFRA_BLESSED_FILE, INFRA_NOT_BLESSED_FILE, WARMUP_PATH
from components.executors import IdempotentAtomicPusher, model_digest
from pipeline.infra_validator import (
    VALIDATED_MODEL_KEY,
    InfraValidatorExecutor,
    answer_problems,
    contract_problems,
)

LATENCY_REQUESTS = 5


def save_tiny_model(path: Path, broken_predict_images: bool = False) -> Path:
    """A SavedModel with the contract's signatures: uniform probabilities, class 0,
    blank heatmaps. `broken_predict_images`: that signature fails on every call."""

    def answers(n):
        return {
            spec.PROBABILITIES: tf.fill([n, spec.NUM_CLASSES], 1.0 / spec.NUM_CLASSES),
            spec.CLASS_ID: tf.zeros([n], tf.int64),
            spec.CLASS_NAME: tf.fill([n], spec.CLASS_NAMES[0]),
        }

    module = tf.Module()
    module.scale = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=spec.EXAMPLES_INPUT)])
    def serving_default(examples):
        return answers(tf.shape(examples)[0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=spec.IMAGE_BYTES_INPUT)])
    def predict_images(image_bytes):
        n = tf.shape(image_bytes)[0]
        if broken_predict_images:
            tf.debugging.assert_less(n, 0, message="predict_images is broken")
        return answers(n)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=spec.IMAGE_BYTES_INPUT)])
    def gradcam(image_bytes):
        n = tf.shape(image_bytes)[0]
        return {**answers(n), spec.HEATMAP: tf.zeros([n, spec.IMAGE_SIZE, spec.IMAGE_SIZE]) * module.scale}

    tf.saved_model.save(
        module,
        str(path),
        signatures={
            spec.SERVING_DEFAULT: serving_default,
            spec.PREDICT_IMAGES: predict_images,
            spec.GRADCAM: gradcam,
        },
    )
    return path


def _png(value: int) -> bytes:
    image = np.full((40, 48, 1), value, np.uint8)
    image[10:30, 12:36] = 255 - value
    return tf.io.encode_png(image).numpy()


def _examples(root: Path, split: str = "eval", n: int = 5):
    folder = root / f"Split-{split}"
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data.gz"), options="GZIP") as writer:
        for i in range(n):
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            spec.IMAGE_KEY: tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[_png(30 * i)])
                            ),
                            spec.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 4])),
                        }
                    )
                ).SerializeToString()
            )
    artifact = standard_artifacts.Examples()
    artifact.uri = str(root)
    artifact.split_names = json.dumps([split])
    return artifact


def _artifact(kind, uri: Path):
    artifact = kind()
    artifact.uri = str(uri)
    return artifact


def validate_and_push(tmp_path: Path, broken: bool):
    """InfraValidator's executor, then the Pusher's, as the pipeline wires them."""
    model = _artifact(standard_artifacts.Model, tmp_path / "trainer_model")
    save_tiny_model(tmp_path / "trainer_model" / "Format-Serving", broken)
    blessing = _artifact(standard_artifacts.InfraBlessing, tmp_path / "infra_blessing")
    validated = _artifact(standard_artifacts.Model, tmp_path / "validated_model")
    InfraValidatorExecutor().Do(
        {"model": [model], "examples": [_examples(tmp_path / "examples")]},
        {"blessing": [blessing], VALIDATED_MODEL_KEY: [validated]},
        {"evaluated_split": "eval", "latency_requests": LATENCY_REQUESTS},
    )

    model_blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / "model_blessing")
    model_blessing.set_int_custom_property("blessed", 1)  # the Evaluator blessed it
    pushed = _artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(tmp_path / "serving"))
    )
    IdempotentAtomicPusher().Do(
        {"model": [validated], "model_blessing": [model_blessing], "infra_blessing": [blessing]},
        {"pushed_model": [pushed]},
        {"push_destination": proto_utils.proto_to_json(destination)},
    )
    return blessing, validated, pushed, model


def test_a_model_whose_predict_images_is_broken_is_not_pushed(tmp_path):
    blessing, _, pushed, _ = validate_and_push(tmp_path, broken=True)
    assert blessing.get_int_custom_property("blessed") == 0
    reason = blessing.get_string_custom_property("reason")
    assert reason.startswith("server start: version 1 of brain_tumor failed to load")
    assert "predict_images is broken" in reason
    document = InfraValidation.read_if_present(blessing.uri)
    assert document.validated and not document.blessed and document.reason == reason
    assert (Path(blessing.uri) / INFRA_NOT_BLESSED_FILE).exists()
    assert not (Path(blessing.uri) / INFRA_BLESSED_FILE).exists()
    assert pushed.get_int_custom_property("pushed") == 0
    assert not [p for p in (tmp_path / "serving").glob("*") if p.name.isdigit()]


def test_a_serving_model_is_blessed_and_pushed_with_its_warmup_file(tmp_path):
    blessing, validated, pushed, model = validate_and_push(tmp_path, broken=False)
    document = InfraValidation.read_if_present(blessing.uri)
    assert blessing.get_int_custom_property("blessed") == 1, document.reason
    assert document.blessed and document.reason == ""
    assert [c["name"] for c in document.checks] == [
        "warm-up file",
        "server start",
        "signature contract (gRPC metadata)",
        "REST metadata",
        *(f"{s} over {p}" for s in spec.SIGNATURE_CONTRACT for p in ("gRPC", "REST")),
        f"{spec.PREDICT_IMAGES}, 8 concurrent clients (batched)",
        "latency",
    ]
    assert all(c["passed"] for c in document.checks)
    # The candidate is served with batching, as in production: concurrent one-image
    # requests were merged into model calls of more than one image.
    batched = next(c["detail"] for c in document.checks if "concurrent" in c["name"])
    assert float(re.search(r"([0-9.]+) images per model call", batched).group(1)) > 1.0
    assert document.warmup_replayed == document.warmup_records == 3 * len(spec.WARMUP_BATCH_SIZES)
    assert 0 < document.grpc_p50_ms <= document.grpc_p99_ms
    assert 0 < document.rest_p50_ms <= document.rest_p99_ms
    assert blessing.get_float_custom_property("grpc_p50_ms") == pytest.approx(document.grpc_p50_ms)

    # The pushed version is the validated copy: the warm-up file, TF Serving's format.
    version = pushed.get_string_custom_property("pushed_version")
    folder = tmp_path / "serving" / version
    assert pushed.get_int_custom_property("pushed") == 1 and folder.is_dir()
    records = list(tf.data.TFRecordDataset(str(folder / WARMUP_PATH)).as_numpy_iterator())
    assert 0 < len(records) <= spec.MAX_WARMUP_RECORDS
    seen = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        (alias,) = request.inputs
        assert alias == spec.SIGNATURE_CONTRACT[request.model_spec.signature_name][0]
        assert request.model_spec.name == spec.MODEL_NAME
        seen.append((request.model_spec.signature_name, request.inputs[alias].tensor_shape.dim[0].size))
    assert sorted(seen) == sorted((s, b) for s in spec.SIGNATURE_CONTRACT for b in spec.WARMUP_BATCH_SIZES)
    if spec.EXAMPLES_INPUT in {spec.SIGNATURE_CONTRACT[s][0] for s, _ in seen}:
        # serving_default's examples carry the image only: no label, no source
        log = next(
            prediction_log_pb2.PredictionLog.FromString(r)
            for r in records
            if prediction_log_pb2.PredictionLog.FromString(r).predict_log.request.model_spec.signature_name
            == spec.SERVING_DEFAULT
        )
        example = tf.train.Example.FromString(
            tf.make_ndarray(log.predict_log.request.inputs[spec.EXAMPLES_INPUT])[0]
        )
        assert set(example.features.feature) == {spec.IMAGE_KEY}
    # The digest is the trained model's: the warm-up file does not change its identity.
    assert (folder / DIGEST_FILE).read_text().strip() == model_digest(
        os.path.join(model.uri, "Format-Serving")
    )


def test_contract_and_answer_checks_name_what_is_wrong():
    from tensorflow.core.protobuf import meta_graph_pb2

    def signature(inputs: dict, outputs: list) -> meta_graph_pb2.SignatureDef:
        sig = meta_graph_pb2.SignatureDef()
        for name, dtype in inputs.items():
            sig.inputs[name].dtype = dtype
        for name in outputs:
            sig.outputs[name].dtype = 1
        return sig

    good = {
        name: signature({alias: 7}, [*outputs, *spec.ABSTENTION_OUTPUTS])  # 7: DT_STRING
        for name, (alias, _, outputs) in spec.SIGNATURE_CONTRACT.items()
    }
    assert contract_problems(good, abstention=True) == []
    bad = dict(good)
    del bad[spec.GRADCAM]
    bad[spec.PREDICT_IMAGES] = signature({spec.IMAGE_BYTES_INPUT: 1}, [spec.PROBABILITIES])
    problems = contract_problems(bad, abstention=True)
    assert "signature gradcam is not served" in problems
    assert "predict_images input image_bytes is DT_FLOAT, the contract says DT_STRING" in problems
    assert any(p.startswith("predict_images lacks outputs ['class_id', 'class_name'") for p in problems)

    want = {
        spec.PROBABILITIES: np.array([[0.5, 0.5]], np.float32),
        spec.CLASS_NAME: np.array([b"glioma"], object),
    }
    assert (
        answer_problems("x", {spec.PROBABILITIES: [[0.50001, 0.49999]], spec.CLASS_NAME: ["glioma"]}, want)
        == []
    )
    problems = answer_problems("x", {spec.PROBABILITIES: [[0.6, 0.4]], spec.CLASS_NAME: [b"notumor"]}, want)
    assert problems[0].startswith("probabilities differs from the in-process answer by up to 0.1")
    assert problems[1].startswith("class_name differs from the in-process answer (x)")


def test_warmup_batch_sizes_match_the_batching_config():
    from serving.batching import BatchingParameters
    from serving.server import DEFAULT_BATCHING_FILE

    params = BatchingParameters.from_file(str(DEFAULT_BATCHING_FILE))
    assert max(spec.WARMUP_BATCH_SIZES) == params.max_batch_size and min(spec.WARMUP_BATCH_SIZES) == 1
