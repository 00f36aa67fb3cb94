"""The request log (serving/request_log.py) and the derived request features
(data_prep/request_features.py), without a model: records per payload, rotation,
the size budget, dropping when full, and never failing a request."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from btmri import spec
from btmri.documents import ServerOptions
from data_prep.request_features import image_features, request_features
from serving.prometheus_metrics import ServingMetrics
from serving.request_log import RequestLog, build_record, log_files, record_rows
from tests.imaging import textured_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(seed: int, h: int = 120, w: int = 100) -> bytes:
    return cv2.imencode(".png", textured_image(seed, h, w))[1].tobytes()


def _outputs(n: int, with_heatmap: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(spec.NUM_CLASSES), n).astype(np.float32)
    out = {
        spec.PROBABILITIES: probs,
        spec.CLASS_ID: probs.argmax(1).astype(np.int64),
        spec.CLASS_NAME: np.array([spec.CLASS_NAMES[k].encode() for k in probs.argmax(1)], object),
        spec.OOD_SCORE: rng.uniform(0, 2, n).astype(np.float32),
        spec.ABSTAIN: np.zeros(n, bool),
        spec.ABSTAIN_REASON: np.array([b""] * n, object),
    }
    if with_heatmap:
        out[spec.HEATMAP] = rng.uniform(0, 1, (n, 224, 224)).astype(np.float32)
    return out


def _options(folder: Path, **kw) -> ServerOptions:
    return ServerOptions(model_base_path="unused", request_log_dir=str(folder), **kw)


def _read(path: Path) -> list:
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))
    ]


def test_image_features_are_computed_from_the_pixels():
    pixels = np.full((30, 50), 100, np.uint8)
    pixels[:, 25:] = 200
    png = cv2.imencode(".png", pixels)[1].tobytes()
    f = image_features(png)
    assert (f[spec.FEATURE_IMAGE_WIDTH], f[spec.FEATURE_IMAGE_HEIGHT]) == (50, 30)
    assert f[spec.FEATURE_IMAGE_FORMAT] == "png"
    assert f[spec.FEATURE_INTENSITY_MEAN] == pytest.approx(150.0)
    assert f[spec.FEATURE_INTENSITY_STD] == pytest.approx(50.0)
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    assert image_features(jpeg)[spec.FEATURE_IMAGE_FORMAT] == "jpeg"
    broken = image_features(b"GIF89a not really")
    assert broken[spec.FEATURE_IMAGE_FORMAT] == "other" and broken[spec.FEATURE_IMAGE_WIDTH] is None


@pytest.mark.parametrize("payload", spec.LOG_PAYLOADS)
def test_each_payload_keeps_what_it_says(payload):
    images = [_png(1), _png(2, 200, 64)]
    outputs = _outputs(2, with_heatmap=True)
    record = build_record(
        payload,
        "brain_tumor",
        7,
        "gradcam",
        {spec.IMAGE_BYTES_INPUT: np.array(images, object)},
        outputs,
        1_700_000_000.5,
        0.25,
    )
    meta = record.log_metadata
    assert (meta.model_spec.name, meta.model_spec.version.value) == ("brain_tumor", 7)
    assert meta.model_spec.signature_name == "gradcam"
    assert meta.sampling_config.sampling_rate == 0.25 and list(meta.saved_model_tags) == ["serve"]
    assert meta.timestamp_secs == 1_700_000_000
    serialized = record.SerializeToString()
    inputs = set(record.predict_log.request.inputs)
    outputs_logged = set(record.predict_log.response.outputs)
    expected = request_features(images, outputs)
    if payload == spec.LOG_PAYLOAD_IMAGES:
        assert inputs == {spec.IMAGE_BYTES_INPUT} and PNG_MAGIC in serialized
        assert spec.HEATMAP in outputs_logged
    else:  # no image byte, no image-shaped heatmap leaves the request
        assert PNG_MAGIC not in serialized and spec.HEATMAP not in outputs_logged
        assert inputs == (set(spec.IMAGE_FEATURES) if payload == spec.LOG_PAYLOAD_FEATURES else set())
    assert outputs_logged >= {spec.PROBABILITIES, spec.CLASS_NAME, spec.OOD_SCORE}
    rows = record_rows(prediction_log_pb2.PredictionLog.FromString(serialized))
    if payload == spec.LOG_PAYLOAD_NONE:
        expected = [dict(row, **dict.fromkeys(spec.IMAGE_FEATURES)) for row in expected]
    assert len(rows) == 2
    for row, want in zip(rows, expected):
        _same(row, want)


def _same(row: dict, want: dict) -> None:
    assert row.keys() == want.keys()
    for name, value in want.items():
        assert row[name] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), name


def test_serving_default_examples_are_logged_by_their_image_feature():
    image = _png(3)
    example = tf.train.Example(
        features=tf.train.Features(
            feature={spec.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
        )
    )
    record = build_record(
        spec.LOG_PAYLOAD_FEATURES,
        "brain_tumor",
        1,
        "serving_default",
        {spec.EXAMPLES_INPUT: np.array([example.SerializeToString()], object)},
        _outputs(1),
        time.time(),
        1.0,
    )
    (row,) = record_rows(record)
    _same(row, request_features([image], _outputs(1))[0])
    assert row[spec.FEATURE_IMAGE_WIDTH] == 100
    assert PNG_MAGIC not in record.SerializeToString()


def test_files_rotate_and_the_folder_stays_within_its_budget(tmp_path):
    folder = tmp_path / "log"
    metrics = ServingMetrics("brain_tumor")
    logger = RequestLog(
        _options(folder, log_payload=spec.LOG_PAYLOAD_IMAGES, log_max_mb=0.4, log_file_mb=0.05), metrics
    )
    image = _png(4, 160, 160)  # ~25 KB as PNG noise-like texture
    budget = int(0.4 * 1024 * 1024)
    sizes = []
    for i in range(120):
        logger.offer(
            "brain_tumor",
            "predict_images",
            {spec.IMAGE_BYTES_INPUT: np.array([image], object)},
            3,
            _outputs(1),
        )
        time.sleep(0.002)
        if i % 20 == 19:
            sizes.append(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()))
    logger.close()
    files = log_files(folder)
    assert len(files) >= 3, "files rotate"
    assert max(sizes + [sum(p.stat().st_size for p in files)]) <= budget
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "the open file was closed"
    records = [r for f in files for r in _read(f)]
    assert 0 < len(records) < logger.written == 120, "the oldest files were deleted"
    assert all(r.log_metadata.model_spec.version.value == 3 for r in records)
    assert metrics.request_log_written.value() == 120


def test_time_rotation_closes_an_idle_file(tmp_path):
    logger = RequestLog(_options(tmp_path, log_rotate_seconds=0.3))
    logger.offer(
        "brain_tumor", "predict_images", {spec.IMAGE_BYTES_INPUT: np.array([_png(5)], object)}, 1, _outputs(1)
    )
    deadline = time.monotonic() + 10
    while not log_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(log_files(tmp_path)) == 1, "closed without new traffic and without a shutdown"
    logger.close()


def test_a_full_queue_drops_counts_and_never_waits(tmp_path):
    metrics = ServingMetrics("brain_tumor")
    # 2 KB of queue: each call below holds more, so every one is dropped.
    logger = RequestLog(
        _options(tmp_path, log_payload=spec.LOG_PAYLOAD_IMAGES, log_queue_mb=2 / 1024), metrics
    )
    inputs = {spec.IMAGE_BYTES_INPUT: np.array([_png(6, 200, 200)], object)}
    start = time.perf_counter()
    for _ in range(200):
        logger.offer("brain_tumor", "predict_images", inputs, 1, _outputs(1))
    per_call = (time.perf_counter() - start) / 200
    logger.close()
    assert logger.dropped == {"queue_full": 200} and logger.written == 0
    assert metrics.request_log_dropped.value("queue_full") == 200
    assert 'btmri_serving_request_log_dropped_total{reason="queue_full"} 200' in metrics.render()
    assert per_call < 0.005, f"offer took {per_call * 1e3:.2f} ms"


def test_a_record_that_cannot_be_built_is_dropped_not_raised(tmp_path):
    metrics = ServingMetrics("brain_tumor")
    logger = RequestLog(_options(tmp_path), metrics)
    logger.offer("brain_tumor", "predict_images", {spec.IMAGE_BYTES_INPUT: object()}, 1, {"weird": object()})
    logger.close()
    assert logger.written == 0 and sum(logger.dropped.values()) == 1
    assert "btmri_serving_request_log_written_total 0" in metrics.render()


def test_sampling_rate_logs_about_that_share(tmp_path):
    logger = RequestLog(_options(tmp_path, log_sampling_rate=0.25, log_payload=spec.LOG_PAYLOAD_NONE), seed=1)
    for _ in range(800):
        logger.offer("brain_tumor", "predict_images", {}, 1, _outputs(1))
    logger.close()
    assert 150 <= logger.written <= 250
    (record,) = _read(log_files(tmp_path)[0])[:1]
    assert record.log_metadata.sampling_config.sampling_rate == 0.25
