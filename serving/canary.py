"""A new version must answer correctly before it takes traffic.

`check_servable` runs when a version has loaded and before the manager makes it
available (the old version keeps serving meanwhile):
- the model's own warm-up requests, when it ships TF Serving's
  `assets.extra/tf_serving_warmup_requests` (a TFRecord file of PredictionLog
  protos): each Predict request is replayed and must succeed, as TF Serving
  requires; other request kinds (classify, regress, ...) are skipped;
- a canary: a tiny valid PNG through `predict_images`, whose answer must be one
  row of finite probabilities in [0, 1] summing to 1 with `class_id` their argmax.
Models without that signature skip the canary.
A failure raises ServingError; the manager reports the version as END with it.
"""

from __future__ import annotations

import functools
import logging
import os

import grpc
import numpy as np

from btmri import spec
from btmri.layout import WARMUP_PATH
from serving.errors import ServingError
from serving.limits import RequestLimits
from serving.loader import Servable

log = logging.getLogger("serving")

WARMUP_FILE = WARMUP_PATH
MAX_WARMUP_RECORDS = spec.MAX_WARMUP_RECORDS
PREDICT_IMAGES, IMAGE_BYTES = spec.PREDICT_IMAGES, spec.IMAGE_BYTES_INPUT
PROBABILITIES, CLASS_ID = spec.PROBABILITIES, spec.CLASS_ID


def _failed(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


@functools.lru_cache(maxsize=1)
def canary_png() -> bytes:
    """A 32×32 gray gradient with a bright disc, as PNG."""
    import tensorflow as tf

    y, x = np.mgrid[0:32, 0:32]
    image = (x * 4 + y * 2).astype(np.uint8)
    image[(x - 16) ** 2 + (y - 16) ** 2 < 36] = 230
    return tf.io.encode_png(image[..., None]).numpy()


def check_servable(servable: Servable, limits: RequestLimits = RequestLimits()) -> None:
    warmup = os.path.join(servable.path, WARMUP_FILE)
    if os.path.isfile(warmup):
        replay_warmup(servable, warmup, limits)
    signature = servable.signatures.get(PREDICT_IMAGES)
    if signature is None or IMAGE_BYTES not in signature.inputs or len(signature.inputs) != 1:
        log.debug(
            "%s version %d has no %s(%s) signature: no canary request",
            servable.name,
            servable.version,
            PREDICT_IMAGES,
            IMAGE_BYTES,
        )
        return
    outputs = signature.run({IMAGE_BYTES: np.array([canary_png()], dtype=object)})
    check_canary_answer(outputs)


def check_canary_answer(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise _failed(f"the canary image got non-finite {name}")
    if PROBABILITIES not in outputs:
        return
    probabilities = outputs[PROBABILITIES]
    if probabilities.ndim != 2 or probabilities.shape[0] != 1 or probabilities.shape[1] < 2:
        raise _failed(
            f"the canary image got {PROBABILITIES} of shape {list(probabilities.shape)}, "
            f"expected [1, classes]"
        )
    row = probabilities[0].astype(np.float64)
    if row.min() < 0 or row.max() > 1 or abs(row.sum() - 1.0) > 1e-3:
        raise _failed(
            f"the canary image got {PROBABILITIES} {np.round(row, 4).tolist()}: not a "
            f"probability distribution"
        )
    if CLASS_ID in outputs:
        class_id = np.asarray(outputs[CLASS_ID]).reshape(-1)
        if class_id.shape != (1,) or int(class_id[0]) != int(row.argmax()):
            raise _failed(
                f"the canary image got {CLASS_ID} {class_id.tolist()}, expected "
                f"[{int(row.argmax())}] (the most probable class)"
            )


def replay_warmup(servable: Servable, path: str, limits: RequestLimits) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.tensors import tensor_to_array

    replayed = skipped = 0
    try:
        records = list(tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1).as_numpy_iterator())
    except tf.errors.OpError as err:
        raise _failed(f"cannot read the warm-up requests ({WARMUP_FILE}): {err.message.splitlines()[0]}")
    if len(records) > MAX_WARMUP_RECORDS:
        raise _failed(f"{WARMUP_FILE} has more than {MAX_WARMUP_RECORDS} records")
    for i, record in enumerate(records):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(record)
        except Exception:
            raise _failed(f"warm-up record {i} is not a PredictionLog")
        if entry.WhichOneof("log_type") != "predict_log":
            skipped += 1
            continue
        request = entry.predict_log.request
        try:
            signature = servable.signature(request.model_spec.signature_name)
            inputs = {alias: tensor_to_array(alias, proto, limits) for alias, proto in request.inputs.items()}
            signature.check_request(inputs, list(request.output_filter))
            signature.run(inputs)
        except ServingError as err:
            raise ServingError(err.code, f"warm-up request {i} failed: {err.message}")
        replayed += 1
    log.info(
        "%s version %d: replayed %d warm-up requests%s",
        servable.name,
        servable.version,
        replayed,
        f" (skipped {skipped} that are not Predict)" if skipped else "",
    )
