"""Serving pieces that need no model server: configs, version source, batching,
REST JSON formats, metrics text, Grad-CAM drawing."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from serving import rest_json
from serving.batching import BatchingParameters, BatchScheduler
from serving.errors import Code, ServingError
from serving.heatmap_overlay import render, unique_stems
from serving.prometheus_metrics import ServingMetrics
from btmri.documents import DEFAULT_MONITORING_PATH
from serving.server import DEFAULT_BATCHING_FILE
from serving.source import aspired_version, list_versions

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "serving" / "config"


# ---- shipped TF Serving configuration --------------------------------------------


def test_model_config_is_a_valid_model_server_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (CONFIG / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == "brain_tumor"
    assert model.base_path == "/models/brain_tumor"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_file_is_read_by_the_local_server():
    params = BatchingParameters.from_file(str(DEFAULT_BATCHING_FILE))
    assert params.max_batch_size == 16 and params.num_batch_threads == 2


def test_batching_file_errors_are_clear(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size: lots\n")
    with pytest.raises(ValueError, match="cannot read batching parameters"):
        BatchingParameters.from_file(str(bad))


def test_monitoring_config_path_matches_the_local_server():
    text = (CONFIG / "monitoring.config").read_text()
    assert re.search(r'path:\s*"' + re.escape(DEFAULT_MONITORING_PATH) + '"', text)
    assert re.search(r"enable:\s*true", text)


def test_serving_image_matches_the_pinned_tensorflow():
    dockerfile = (REPO / "serving" / "Dockerfile").read_text()
    image = re.search(r"^FROM tensorflow/serving:(\d+)\.(\d+)\.\d+\s*$", dockerfile, re.M)
    pinned = re.search(
        r"^tensorflow==(\d+)\.(\d+)\.\d+", (REPO / "requirements" / "constraints.txt").read_text(), re.M
    )
    assert image and pinned and image.groups() == pinned.groups()
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert name in dockerfile


# ---- version source --------------------------------------------------------------


def test_only_positive_integer_folders_are_versions(tmp_path):
    for name in ("3", "12", ".staging-99", "0", "latest", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "40").write_text("a file, not a version folder")
    assert [v.version for v in list_versions(str(tmp_path))] == [3, 12]
    assert aspired_version(str(tmp_path)).version == 12
    assert aspired_version(str(tmp_path), exclude={12}).version == 3
    assert list_versions(str(tmp_path / "missing")) == []


# ---- batching ----------------------------------------------------------------------


def _double(inputs):
    x = inputs["x"]
    if np.any(x < 0):
        raise ServingError(Code.INVALID_ARGUMENT, "negative input")
    return {"y": x * 2, "n": np.full(len(x), len(x))}


def _run_together(client, n: int) -> None:
    """Calls client(0..n-1) on n threads released at the same moment, and waits for them."""
    barrier = threading.Barrier(n)

    def released(i):
        barrier.wait()
        client(i)

    threads = [threading.Thread(target=released, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_batching_merges_concurrent_requests_and_splits_answers():
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    )
    results = {}

    def client(i):
        results[i] = scheduler.run("key", {"x": np.array([i, 100 + i])}, 2, _double)

    _run_together(client, 6)
    scheduler.stop()
    for i in range(6):
        assert results[i]["y"].tolist() == [2 * i, 2 * (100 + i)]
    # With a 200 ms window, six simultaneous 2-row requests cannot all run alone.
    assert max(int(r["n"][0]) for r in results.values()) > 2
    assert all(int(r["n"][0]) <= 8 for r in results.values())


def test_a_bad_request_in_a_batch_fails_alone():
    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    )
    outcome = {}

    def client(i):
        try:
            outcome[i] = scheduler.run("key", {"x": np.array([-1 if i == 2 else i])}, 1, _double)
        except ServingError as err:
            outcome[i] = err

    _run_together(client, 4)
    scheduler.stop()
    assert isinstance(outcome[2], ServingError) and outcome[2].message == "negative input"
    for i in (0, 1, 3):
        assert outcome[i]["y"].tolist() == [2 * i]


# ---- REST JSON ---------------------------------------------------------------------


def _dtypes(tf_string_names=("image_bytes",)):
    import tensorflow as tf

    return lambda signature: {name: tf.string for name in tf_string_names}


def test_rest_row_and_columnar_requests_decode_b64():
    row = b'{"signature_name": "s", "instances": [{"b64": "aGVsbG8="}, "plain"]}'
    signature, inputs, fmt = rest_json.parse_predict_request(row, _dtypes())
    assert (signature, fmt) == ("s", rest_json.ROW)
    assert inputs["image_bytes"].tolist() == [b"hello", b"plain"]
    signature, inputs, fmt = rest_json.parse_predict_request(
        b'{"inputs": {"image_bytes": [{"b64": "aGVsbG8="}]}}', _dtypes()
    )
    assert (signature, fmt) == ("", rest_json.COLUMNAR)
    assert inputs["image_bytes"].tolist() == [b"hello"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"[1]", "Is not object"),
        (b'{"instances": [1]}', "is not of expected type: string"),
        (b'{"instances": [{"b64": "%%%"}]}', "Unable to base64 decode"),
        (b'{"instances": []}', "No values in 'instances' array"),
        (b'{"instances": ["a"], "inputs": ["a"]}', "expecting only one of 'inputs' or 'instances'"),
        (b'{"instances": [{"other": "a"}]}', "does not have named input: other"),
        (b'{"inputs": [["a"], "b"]}', "found at incorrect level"),
        (b'{"signature_name": 3, "inputs": ["a"]}', "'signature_name' key must be a string value"),
        (b'{"examples": []}', "Missing 'inputs' or 'instances' key"),
    ],
)
def test_rest_request_errors_use_tf_serving_texts(body, message):
    with pytest.raises(ServingError) as err:
        rest_json.parse_predict_request(body, _dtypes())
    assert err.value.code.name == "INVALID_ARGUMENT" and message in err.value.message


def test_rest_response_formats():
    outputs = {
        "probabilities": np.array([[0.25, 0.75]], np.float32),
        "class_name": np.array([b"glioma"], object),
        "thumb_bytes": np.array([b"\x00\x01"], object),
    }
    row = rest_json.format_predict_response(outputs, rest_json.ROW)
    assert row == {
        "predictions": [
            {"class_name": "glioma", "probabilities": [0.25, 0.75], "thumb_bytes": {"b64": "AAE="}}
        ]
    }
    columnar = rest_json.format_predict_response({"class_name": outputs["class_name"]}, rest_json.COLUMNAR)
    assert columnar == {"outputs": ["glioma"]}


# ---- metrics -----------------------------------------------------------------------


def test_metrics_text_format():
    metrics = ServingMetrics("brain_tumor")
    metrics.record("brain_tumor", "Predict", "GRPC", "OK", 0.002)
    metrics.record("made-up-name-1", "Predict", "GRPC", "NOT_FOUND", 0.001)
    metrics.record("brain_tumor", "Predict", "GRPC", "INVALID_ARGUMENT", 0.001)
    metrics.loaded_version.set("brain_tumor", value=1795709845)
    text = metrics.render()
    assert ':tensorflow:serving:request_count{model_name="brain_tumor",status="OK"} 1' in text
    assert ':tensorflow:serving:request_count{model_name="brain_tumor",status="INVALID_ARGUMENT"} 1' in text
    assert 'btmri_serving_loaded_version{model_name="brain_tumor"} 1795709845' in text
    assert "made-up-name" not in text and 'model_name="_unknown_model_",status="NOT_FOUND"} 1' in text
    buckets = re.findall(
        r'request_latency_bucket\{model_name="brain_tumor",API="Predict",'
        r'entrypoint="GRPC",le="([^"]+)"\} (\d+)',
        text,
    )
    counts = [int(c) for _, c in buckets]
    assert buckets[-1] == ("+Inf", "2") and counts == sorted(counts)
    # 2000 µs falls between the 1983.59 and 3570.47 µs bounds of TF Serving's buckets.
    assert dict(buckets)["1983.59"] == "1" and dict(buckets)["3570.47"] == "2"


def test_http_status_mapping_follows_tf_serving():
    assert ServingError(Code.NOT_FOUND, "").http_status == 404
    assert ServingError(Code.FAILED_PRECONDITION, "").http_status == 400
    assert ServingError(Code.RESOURCE_EXHAUSTED, "").http_status == 429
    assert ServingError(Code.UNAVAILABLE, "").http_status == 503


# ---- Grad-CAM drawing --------------------------------------------------------------


def test_overlay_is_drawn_at_the_original_size():
    original = np.full((300, 200, 3), 128, np.uint8)
    heatmap = np.zeros((224, 224), np.float32)
    heatmap[:112] = 1.0  # hot top half
    images = render(original, heatmap, strength=0.5)
    assert images.heatmap.shape == images.overlay.shape == (300, 200, 3)
    # JET: 1.0 is dark red (BGR: red channel high), 0.0 dark blue.
    assert images.heatmap[10, 100, 2] > 100 and images.heatmap[10, 100, 0] < 50
    assert images.heatmap[290, 100, 0] > 100 and images.heatmap[290, 100, 2] < 50
    assert not np.array_equal(images.overlay, original)


def test_output_names_never_collide():
    assert unique_stems(["a.png", "x/a.png", "a_2.jpg", "y/a.png"]) == ["a", "a_2", "a_2_2", "a_3"]
