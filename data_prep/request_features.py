"""The derived features of one request: what monitoring compares (docs/architecture.md,
Monitoring).

One function computes them from an image's bytes and the model's answer to it, for
every caller: the model server's request log (serving/request_log.py), the pipeline's
monitoring baseline (components/baseline/) and `btmri monitor` reading a log that
kept whole images. Names are `btmri.spec`'s:

  image_width, image_height  pixels of the image as sent (decoded by OpenCV)
  image_format               "jpeg", "png" or "other", from the magic bytes
  intensity_mean / _std      mean and standard deviation of its 8-bit gray levels
                             (OpenCV's grayscale decode: 16-bit PNGs keep their high byte)
  predicted_class            the model's top class name, also when it abstains
  top_probability            that class's probability
  ood_score                  the model's out-of-distribution score (absent without abstention)

A feature that cannot be computed (an image OpenCV cannot decode, an output the
client filtered away) is None: the statistics count it as missing.
NumPy and OpenCV only, so the server's logger thread stays light.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from btmri import spec
from data_prep.image_io import JPEG_MAGIC, PNG_MAGIC

# Python type of each feature's values (the statistics' column types come from it).
FEATURE_TYPES: dict[str, type] = {
    spec.FEATURE_IMAGE_WIDTH: int,
    spec.FEATURE_IMAGE_HEIGHT: int,
    spec.FEATURE_IMAGE_FORMAT: str,
    spec.FEATURE_INTENSITY_MEAN: float,
    spec.FEATURE_INTENSITY_STD: float,
    spec.FEATURE_PREDICTED_CLASS: str,
    spec.FEATURE_TOP_PROBABILITY: float,
    spec.FEATURE_OOD_SCORE: float,
}
assert tuple(FEATURE_TYPES) == spec.REQUEST_FEATURES


def image_format(data: bytes) -> str:
    if data.startswith(JPEG_MAGIC):
        return spec.FORMAT_JPEG
    if data.startswith(PNG_MAGIC):
        return spec.FORMAT_PNG
    return spec.FORMAT_OTHER


def image_features(data: bytes) -> dict:
    """The IMAGE_FEATURES of one encoded image."""
    features = dict.fromkeys(spec.IMAGE_FEATURES)
    features[spec.FEATURE_IMAGE_FORMAT] = image_format(data)
    try:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        gray = None
    if gray is not None and gray.size:
        mean, std = cv2.meanStdDev(gray)
        features.update(
            {
                spec.FEATURE_IMAGE_HEIGHT: int(gray.shape[0]),
                spec.FEATURE_IMAGE_WIDTH: int(gray.shape[1]),
                spec.FEATURE_INTENSITY_MEAN: float(mean[0, 0]),
                spec.FEATURE_INTENSITY_STD: float(std[0, 0]),
            }
        )
    return features


def answer_features(outputs: Mapping[str, np.ndarray], row: int) -> dict:
    """The ANSWER_FEATURES of row `row` of a signature's outputs (any subset of them)."""
    features = dict.fromkeys(spec.ANSWER_FEATURES)
    probabilities = outputs.get(spec.PROBABILITIES)
    if spec.CLASS_NAME in outputs:
        name = outputs[spec.CLASS_NAME][row]
        features[spec.FEATURE_PREDICTED_CLASS] = name.decode() if isinstance(name, bytes) else str(name)
    elif spec.CLASS_ID in outputs:
        features[spec.FEATURE_PREDICTED_CLASS] = _class_name(int(outputs[spec.CLASS_ID][row]))
    elif probabilities is not None:
        features[spec.FEATURE_PREDICTED_CLASS] = _class_name(int(np.argmax(probabilities[row])))
    if probabilities is not None:
        features[spec.FEATURE_TOP_PROBABILITY] = float(np.max(probabilities[row]))
    if spec.OOD_SCORE in outputs:
        features[spec.FEATURE_OOD_SCORE] = float(outputs[spec.OOD_SCORE][row])
    return features


def _class_name(k: int) -> str:
    return spec.CLASS_NAMES[k] if 0 <= k < spec.NUM_CLASSES else str(k)


def rows_of_outputs(outputs: Mapping[str, np.ndarray]) -> int:
    """Rows of a batch of outputs (0 when none has a batch dimension)."""
    return max((np.shape(v)[0] for v in outputs.values() if np.ndim(v)), default=0)


def request_features(images: list[bytes] | None, outputs: Mapping[str, np.ndarray]) -> list[dict]:
    """One feature dict per row: image features from `images` (None: not available,
    e.g. a log without them), answer features from `outputs`."""
    rows = len(images) if images is not None else rows_of_outputs(outputs)
    result = []
    for row in range(rows):
        features = image_features(images[row]) if images is not None else dict.fromkeys(spec.IMAGE_FEATURES)
        features.update(
            answer_features(outputs, row)
            if row < rows_of_outputs(outputs)
            else dict.fromkeys(spec.ANSWER_FEATURES)
        )
        result.append(features)
    return result
