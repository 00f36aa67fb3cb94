"""TF Serving's warm-up file for the candidate (assets.extra/tf_serving_warmup_requests):
one PredictionLog per contract signature and batch size in btmri.spec.WARMUP_BATCH_SIZES,
built from images of the evaluated split. The server replays it before a version is
AVAILABLE, so the first real request finds every batch size's graph traced."""

from __future__ import annotations

import os

from tfx.dsl.io import fileio

from btmri import spec
from btmri.layout import WARMUP_DIR, WARMUP_PATH
from pipeline.infra_validator.inputs import signature_inputs


class WarmupFailed(Exception):
    """The warm-up file cannot be built; the message is the reason."""


def warmup_logs(
    images: list[bytes], model_name: str = spec.MODEL_NAME, batch_sizes=spec.WARMUP_BATCH_SIZES
) -> list:
    """PredictionLogs: one Predict request per signature and batch size (images repeated
    when the split has fewer)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.requests import predict_request

    if not images:
        raise WarmupFailed("the evaluated split has no images to build requests from")
    logs = []
    for signature in spec.SIGNATURE_CONTRACT:
        for size in batch_sizes:
            batch = [images[i % len(images)] for i in range(size)]
            log = prediction_log_pb2.PredictionLog()
            predict_request(
                signature,
                signature_inputs(signature, batch),
                model_name=model_name,
                into=log.predict_log.request,
            )
            logs.append(log)
    if len(logs) > spec.MAX_WARMUP_RECORDS:
        raise WarmupFailed(f"{len(logs)} warm-up records: TF Serving reads at most {spec.MAX_WARMUP_RECORDS}")
    return logs


def write_warmup(model_dir: str, logs) -> str:
    """Writes the TFRecord of PredictionLogs into `model_dir`/assets.extra/."""
    import tensorflow as tf

    fileio.makedirs(os.path.join(model_dir, WARMUP_DIR))
    path = os.path.join(model_dir, WARMUP_PATH)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path
