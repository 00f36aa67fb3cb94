"""The local model server, end to end: `btmri serve` in a subprocess on the model the
pipeline pushed (`tiny_run`), driven through TF Serving's official gRPC stubs and its
REST API, plus the `btmri predict` / `btmri gradcam` clients."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
import time

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from btmri import spec
from data_prep.tfrecords import request_example
from serving.client import (
    ABSTAINED_LOW_CONFIDENCE,
    ABSTAINED_OUT_OF_DISTRIBUTION,
    ABSTAINED_UNCERTAIN_NO_TUMOUR,
    PredictionClient,
    RestClient,
)
from serving.process import ServerProcess, free_ports
from serving.requests import predict_request

MAX_MESSAGE_MB = 1  # small, so the size-limit test sends a small request


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess(
        tiny_run / "serving", "--max-message-mb", str(MAX_MESSAGE_MB), log_path=log
    ) as process:
        yield process


@pytest.fixture(scope="module")
def version(tiny_run) -> int:
    (only,) = [int(p.name) for p in (tiny_run / "serving").iterdir() if p.name.isdigit()]
    return only


@pytest.fixture(scope="module")
def images(tiny_run) -> list[bytes]:
    """Two synthetic test images per class."""
    root = tiny_run / "data" / "synthetic" / spec.KAGGLE_TESTING_DIR
    return [p.read_bytes() for name in spec.CLASS_NAMES for p in sorted((root / name).glob("*.png"))[:2]]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=60)
    return err.value


# ---- gRPC: PredictionService ----------------------------------------------------------


def test_predict_images_signature(predict_stub, images, version):
    response = predict_stub.Predict(
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images}), timeout=60
    )
    assert response.model_spec.name == "brain_tumor"
    assert response.model_spec.version.value == version
    assert response.model_spec.signature_name == "predict_images"
    probs = tf.make_ndarray(response.outputs[spec.PROBABILITIES])
    class_id = tf.make_ndarray(response.outputs[spec.CLASS_ID])
    class_name = tf.make_ndarray(response.outputs[spec.CLASS_NAME])
    assert probs.shape == (len(images), spec.NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert class_id.tolist() == probs.argmax(axis=1).tolist()
    assert [n.decode() for n in class_name] == [spec.CLASS_NAMES[i] for i in class_id]


def _probe_images() -> list[bytes]:
    """A blank, a ramp and noise: what the abstention outputs exist for."""
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 255, 200).astype(np.uint8), (120, 1))
    return [
        cv2.imencode(".png", a)[1].tobytes()
        for a in (np.zeros((64, 64), np.uint8), ramp, rng.integers(0, 256, (96, 96), dtype=np.uint8))
    ]


def test_abstention_outputs_pass_through_grpc_and_rest_on_every_signature(server, predict_stub, images):
    batch = images[:2] + _probe_images()
    answers = {}
    for name in ("predict_images", "gradcam"):
        response = predict_stub.Predict(predict_request(name, {spec.IMAGE_BYTES_INPUT: batch}), timeout=60)
        answers[name] = {k: tf.make_ndarray(response.outputs[k]) for k in spec.ABSTENTION_OUTPUTS}
    examples = [request_example(image) for image in batch]
    response = predict_stub.Predict(
        predict_request(spec.SERVING_DEFAULT, {spec.EXAMPLES_INPUT: examples}), timeout=60
    )
    answers["serving_default"] = {k: tf.make_ndarray(response.outputs[k]) for k in spec.ABSTENTION_OUTPUTS}
    reference = answers["predict_images"]
    assert reference[spec.OOD_SCORE].dtype == np.float32 and reference[spec.OOD_SCORE].shape == (len(batch),)
    assert reference[spec.ABSTAIN].dtype == np.bool_
    reasons = [r.decode() for r in reference[spec.ABSTAIN_REASON]]
    assert set(reasons) <= {"", *spec.ABSTAIN_REASONS}
    assert [r != "" for r in reasons] == reference[spec.ABSTAIN].tolist()
    for other in answers.values():
        np.testing.assert_allclose(other[spec.OOD_SCORE], reference[spec.OOD_SCORE], rtol=1e-5)
        np.testing.assert_array_equal(other[spec.ABSTAIN_REASON], reference[spec.ABSTAIN_REASON])
    # output_filter can ask for them alone.
    only = predict_stub.Predict(
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: batch}, output_filter=[spec.ABSTAIN]),
        timeout=60,
    )
    assert set(only.outputs) == {spec.ABSTAIN}
    # REST: JSON booleans, numbers and strings, the same values.
    code, body = rest(
        server,
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "predict_images", "instances": [b64(i) for i in batch]},
    )
    assert code == 200, body
    rows = body["predictions"]
    assert [r[spec.ABSTAIN] for r in rows] == reference[spec.ABSTAIN].tolist()
    assert all(isinstance(r[spec.ABSTAIN], bool) for r in rows)
    assert [r[spec.ABSTAIN_REASON] for r in rows] == reasons
    np.testing.assert_allclose([r[spec.OOD_SCORE] for r in rows], reference[spec.OOD_SCORE], rtol=1e-5)


def test_default_signature_takes_serialized_examples(predict_stub, images):
    examples = [request_example(image) for image in images]
    by_example = predict_stub.Predict(predict_request("", {spec.EXAMPLES_INPUT: examples}), timeout=60)
    by_bytes = predict_stub.Predict(
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images}), timeout=60
    )
    assert by_example.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(
        tf.make_ndarray(by_example.outputs[spec.PROBABILITIES]),
        tf.make_ndarray(by_bytes.outputs[spec.PROBABILITIES]),
        atol=1e-6,
    )


def test_output_filter_and_explicit_version(predict_stub, images, version):
    response = predict_stub.Predict(
        predict_request(
            spec.PREDICT_IMAGES,
            {spec.IMAGE_BYTES_INPUT: images[:1]},
            version=version,
            output_filter=[spec.CLASS_NAME],
        ),
        timeout=60,
    )
    assert set(response.outputs) == {spec.CLASS_NAME}
    assert response.model_spec.version.value == version


def test_gradcam_signature_over_grpc(predict_stub, images):
    response = predict_stub.Predict(
        predict_request(spec.GRADCAM, {spec.IMAGE_BYTES_INPUT: images[:2]}), timeout=60
    )
    heatmap = tf.make_ndarray(response.outputs[spec.HEATMAP])
    assert heatmap.shape == (2, 224, 224) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_get_model_metadata(predict_stub, version):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "brain_tumor"
    response = predict_stub.GetModelMetadata(request, timeout=60)
    assert response.model_spec.version.value == version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    defs = signature_map.signature_def
    assert {"serving_default", "predict_images", "gradcam"} <= set(defs)
    assert set(defs["predict_images"].inputs) == {spec.IMAGE_BYTES_INPUT}
    assert defs["predict_images"].inputs[spec.IMAGE_BYTES_INPUT].dtype == tf.string.as_datatype_enum
    assert set(defs["gradcam"].outputs) == {
        spec.HEATMAP,
        spec.CLASS_ID,
        spec.PROBABILITIES,
        *spec.ABSTENTION_OUTPUTS,
    }
    for name in ("serving_default", "predict_images", "gradcam"):
        outputs = defs[name].outputs
        assert outputs[spec.ABSTAIN].dtype == tf.bool.as_datatype_enum
        assert outputs[spec.OOD_SCORE].dtype == tf.float32.as_datatype_enum
        assert outputs[spec.ABSTAIN_REASON].dtype == tf.string.as_datatype_enum
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"


# ---- gRPC: ModelService and health -------------------------------------------------


def test_get_model_status(model_stub, version):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "brain_tumor"
    (status,) = model_stub.GetModelStatus(request, timeout=60).model_version_status
    assert status.version == version
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0 and status.status.error_message == ""
    request.model_spec.version.value = version
    (status,) = model_stub.GetModelStatus(request, timeout=60).model_version_status
    assert status.version == version


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "brain_tumor"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=60)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


# ---- gRPC errors: TF Serving's codes and texts --------------------------------------

PREDICT_ERRORS = [
    (
        "unknown model",
        dict(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
        r"^Servable not found for request: Latest\(nope\)$",
    ),
    (
        "unknown version",
        dict(version=1),
        grpc.StatusCode.NOT_FOUND,
        r"^Servable not found for request: Specific\(brain_tumor, 1\)$",
    ),
    (
        "unknown signature",
        dict(signature_name="nope"),
        grpc.StatusCode.FAILED_PRECONDITION,
        r'^Serving signature key "nope" not found\.$',
    ),
    (
        "missing input",
        dict(inputs={}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^input size does not match signature: 0!=1 len\(\{\}\) != len\(\{image_bytes\}\)\. "
        r"Sent extra: \{\}\. Missing but required: \{image_bytes\}\.$",
    ),
    (
        "extra input",
        dict(inputs={"image_bytes": [b"x"], "extra": [b"x"]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^input size does not match signature: 2!=1 .*Sent extra: \{extra\}\. Missing but required: \{\}\.$",
    ),
    (
        "misnamed input",
        dict(inputs={"images": [b"x"]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^input tensor alias not found in signature: images\. Inputs expected to be in the set "
        r"\{image_bytes\}\.$",
    ),
    (
        "wrong dtype",
        dict(inputs={"image_bytes": np.zeros(2, np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"expected a string tensor but got float32",
    ),
    (
        "wrong rank",
        dict(inputs={"image_bytes": [[b"x"]]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"shape \[1, 1\] is not compatible",
    ),
    (
        "undecodable image",
        dict(inputs={"image_bytes": [b"not an image"]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^unsupported image format: the model reads JPEG and PNG",
    ),
    (
        "unknown output",
        dict(output_filter=["logits"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^output tensor alias not found in signature: logits Outputs expected to be in the set "
        r"\{abstain,abstain_reason,class_id,class_name,ood_score,probabilities\}\.$",
    ),
    (
        "duplicate output",
        dict(output_filter=["class_id", "class_id"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^duplicate output tensor alias: class_id$",
    ),
    (
        "no model name",
        dict(model_name=""),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"^ModelSpec has no name specified\.$",
    ),
]


@pytest.mark.parametrize("case, fields, code, message", PREDICT_ERRORS, ids=[c[0] for c in PREDICT_ERRORS])
def test_predict_errors(predict_stub, images, case, fields, code, message):
    fields = {"signature_name": spec.PREDICT_IMAGES, "inputs": {spec.IMAGE_BYTES_INPUT: images[:1]}, **fields}
    err = rpc_error(predict_stub.Predict, predict_request(**fields))
    assert err.code() == code, err.details()
    assert re.search(message, err.details()), err.details()


def test_a_tensor_declaring_a_huge_shape_is_refused(predict_stub):
    request = predict_request(spec.PREDICT_IMAGES, {})  # its tensor filled by hand: no builder makes it
    tensor = request.inputs[spec.IMAGE_BYTES_INPUT]
    tensor.dtype = tf.string.as_datatype_enum
    tensor.tensor_shape.dim.add().size = 10**12  # a few bytes on the wire, terabytes if filled
    tensor.string_val.append(b"x")
    err = rpc_error(predict_stub.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("tensor parsing error: image_bytes")


def test_a_label_the_server_was_not_given_is_unrecognized(predict_stub, images):
    """--model-base-path assigns no labels: TF Serving's INVALID_ARGUMENT for any label
    (labels from a model config file: test_serving_labels.py)."""
    request = predict_request(
        spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images[:1]}, version_label="stable"
    )
    err = rpc_error(predict_stub.Predict, request)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    )


def test_metadata_and_status_errors(predict_stub, model_stub):
    def metadata(name="brain_tumor", fields=("signature_def",)):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
        request.model_spec.name = name
        return rpc_error(predict_stub.GetModelMetadata, request)

    err = metadata(fields=())
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    err = metadata(fields=("other",))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Metadata field other is not supported",
    )
    err = metadata(name="nope")
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    err = rpc_error(model_stub.GetModelStatus, request)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )
    request.model_spec.name = "brain_tumor"
    request.model_spec.version.value = 1
    err = rpc_error(model_stub.GetModelStatus, request)
    assert (err.code(), err.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find version 1 of model brain_tumor",
    )


def test_a_request_above_the_size_limit_is_refused(predict_stub, images):
    too_big = bytes(int(1.5 * MAX_MESSAGE_MB * 1024 * 1024))
    err = rpc_error(
        predict_stub.Predict, predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: [too_big]})
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    # ... and the server carries on.
    response = predict_stub.Predict(
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images[:1]}), timeout=60
    )
    assert response.outputs[spec.CLASS_ID].int64_val


# ---- REST -----------------------------------------------------------------------------


def rest(server, method, path, document=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if document is None else json.dumps(document).encode())
    request = urllib.request.Request(server.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_rest_status_and_metadata(server, version):
    code, body = rest(server, "GET", "/v1/models/brain_tumor")
    assert code == 200
    assert body == {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    code, body = rest(server, "GET", f"/v1/models/brain_tumor/versions/{version}")
    assert code == 200 and body["model_version_status"][0]["version"] == str(version)
    code, body = rest(server, "GET", "/v1/models/brain_tumor/metadata")
    assert code == 200 and body["model_spec"]["version"] == str(version)
    inputs = body["metadata"]["signature_def"]["signature_def"]["predict_images"]["inputs"]
    assert inputs[spec.IMAGE_BYTES_INPUT]["dtype"] == "DT_STRING"


def test_rest_row_format_matches_grpc(server, predict_stub, images):
    code, body = rest(
        server,
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "predict_images", "instances": [b64(i) for i in images]},
    )
    assert code == 200, body
    rows = body["predictions"]
    assert len(rows) == len(images)
    assert set(rows[0]) == {spec.PROBABILITIES, spec.CLASS_ID, spec.CLASS_NAME, *spec.ABSTENTION_OUTPUTS}
    grpc_probs = tf.make_ndarray(
        predict_stub.Predict(
            predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images}), timeout=60
        ).outputs[spec.PROBABILITIES]
    )
    np.testing.assert_allclose([r[spec.PROBABILITIES] for r in rows], grpc_probs, atol=1e-6)
    assert all(r[spec.CLASS_NAME] == spec.CLASS_NAMES[r[spec.CLASS_ID]] for r in rows)


def test_rest_columnar_format_and_version_path(server, images, version):
    code, body = rest(
        server,
        "POST",
        f"/v1/models/brain_tumor/versions/{version}:predict",
        {
            "signature_name": "predict_images",
            "inputs": {spec.IMAGE_BYTES_INPUT: [b64(i) for i in images[:3]]},
        },
    )
    assert code == 200, body
    outputs = body["outputs"]
    assert set(outputs) == {spec.PROBABILITIES, spec.CLASS_ID, spec.CLASS_NAME, *spec.ABSTENTION_OUTPUTS}
    assert len(outputs[spec.CLASS_ID]) == 3 and len(outputs[spec.PROBABILITIES][0]) == spec.NUM_CLASSES


REST_ERRORS = [
    (
        "unknown model",
        "POST",
        "/v1/models/nope:predict",
        {"instances": ["x"]},
        404,
        "Servable not found for request: Latest(nope)",
    ),
    (
        "unknown version",
        "POST",
        "/v1/models/brain_tumor/versions/1:predict",
        {"instances": ["x"]},
        404,
        "Servable not found for request: Specific(brain_tumor, 1)",
    ),
    (
        "unknown signature",
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "nope", "instances": ["x"]},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    (
        "undecodable image",
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "predict_images", "instances": [b64(b"not an image")]},
        400,
        "unsupported image format: the model reads JPEG and PNG",
    ),
    (
        "bad base64",
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "predict_images", "instances": [{"b64": "@@@"}]},
        400,
        "Unable to base64 decode",
    ),
    (
        "no instances",
        "POST",
        "/v1/models/brain_tumor:predict",
        {"signature_name": "predict_images"},
        400,
        "Missing 'inputs' or 'instances' key",
    ),
    ("unknown status", "GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("malformed path", "GET", "/v1/modelz", None, 400, "Malformed request: GET /v1/modelz"),
]


@pytest.mark.parametrize(
    "case, method, path, document, http, message", REST_ERRORS, ids=[c[0] for c in REST_ERRORS]
)
def test_rest_errors(server, case, method, path, document, http, message):
    code, body = rest(server, method, path, document)
    assert code == http and message in body["error"], body


def test_rest_malformed_json_and_size_limit(server):
    code, body = rest(server, "POST", "/v1/models/brain_tumor:predict", raw=b'{"instances": [')
    assert code == 400 and body["error"].startswith("JSON Parse error")
    code, body = rest(
        server, "POST", "/v1/models/brain_tumor:predict", raw=b" " * int(1.5 * MAX_MESSAGE_MB * 1024 * 1024)
    )
    assert code == 429 and "larger than max" in body["error"]


def test_prometheus_metrics(server, predict_stub, images, version):
    predict_stub.Predict(
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images[:1]}), timeout=60
    )
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=60) as r:
        text = r.read().decode()
    ok = re.search(
        r'^:tensorflow:serving:request_count\{model_name="brain_tumor",status="OK"\} (\d+)$', text, re.M
    )
    assert ok and int(ok.group(1)) >= 1
    assert re.search(
        r'^:tensorflow:serving:request_latency_bucket\{model_name="brain_tumor",API="Predict",'
        r'entrypoint="GRPC",le="\+Inf"\} \d+$',
        text,
        re.M,
    )
    assert f'btmri_serving_loaded_version{{model_name="brain_tumor"}} {version}' in text


# ---- clients ------------------------------------------------------------------------


def test_grpc_and_rest_clients_agree(server, images, version):
    with PredictionClient(server.grpc_target) as grpc_client, RestClient(server.rest_url) as rest_client:
        for image in images[:3]:
            a, b = grpc_client.classify_image(image), rest_client.classify_image(image)
            assert a.class_name == b.class_name and a.model_version == b.model_version == version
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_btmri_predict_prints_one_json_line_per_image(server, tiny_run, capsys, version):
    from pipeline.cli import main

    files = sorted((tiny_run / "data" / "synthetic" / "Testing").glob("*/*.png"))[:3]
    for transport in (["--server", server.grpc_target], ["--rest", server.rest_url]):
        assert main(["predict", *transport, *map(str, files)]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["file"] for line in lines] == list(map(str, files))
        for line in lines:
            assert line["model_version"] == version
            assert set(line["probabilities"]) == set(spec.CLASS_NAMES)
            assert isinstance(line[spec.ABSTAIN], bool) and isinstance(line[spec.OOD_SCORE], float)
            if line[spec.ABSTAIN]:
                assert line["class"] is None and line["answer"].startswith("abstained: ")
            else:
                assert line["class"] in spec.CLASS_NAMES and line["answer"] == line["class"]
                assert line[spec.ABSTAIN_REASON] == ""


def test_btmri_predict_reports_bad_files_and_a_down_server(server, tmp_path, capsys):
    from pipeline.cli import main

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert main(["predict", "--server", server.grpc_target, str(junk)]) == 2  # bad input
    printed = capsys.readouterr()
    line = json.loads(printed.out)
    assert line["file"] == str(junk) and line["error"].startswith("INVALID_ARGUMENT")
    assert "btmri predict: error: 1 of 1 images failed" in printed.err

    (port,) = free_ports(1)  # nothing listens here
    assert main(["predict", "--server", f"127.0.0.1:{port}", "--timeout", "4", str(junk)]) == 3
    err = capsys.readouterr().err
    assert f"btmri predict: error: the model server at 127.0.0.1:{port} is unavailable" in err
    # Retries (0.25, 0.5, 1, 2 s apart) until the timeout: a server still starting is waited for.
    assert "5 attempts" in err and "Traceback" not in err
    # --timeout bounds the retries too: the backoffs (0.25 + 0.5 + 1 s ...) stop at it.
    for flag in ("--server", "--rest"):
        started = time.monotonic()
        assert main(["predict", flag, f"127.0.0.1:{port}", "--timeout", "1", str(junk)]) == 3
        assert time.monotonic() - started < 2.0
        assert "unavailable (3 attempts over" in capsys.readouterr().err


def test_btmri_gradcam_writes_original_heatmap_and_overlay(server, tiny_run, tmp_path, capsys):
    from pipeline.cli import main

    files = sorted((tiny_run / "data" / "synthetic" / "Testing" / "glioma").glob("*.png"))[:2]
    out = tmp_path / "cams"
    assert main(["gradcam", "--server", server.grpc_target, *map(str, files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    answered = r": \w+ \(p=0\.\d{3}, model version \d+\) -> "
    why = "|".join(
        (
            re.escape(ABSTAINED_OUT_OF_DISTRIBUTION) + r" \(ood_score \d+\.\d\d, over 1 is unlike them\)",
            re.escape(ABSTAINED_LOW_CONFIDENCE) + r" \(p=0\.\d{3}\)",
            re.escape(ABSTAINED_UNCERTAIN_NO_TUMOUR) + r" \(p\(notumor\)=0\.\d{3}\)",
        )
    )
    abstained = (
        rf": abstained: ({why}) "
        r"\(model's top class \w+, p=0\.\d{3}, model version \d+; heatmap marked ABSTAINED\) -> "
    )
    assert len(printed) == 2 and all(re.search(answered, p) or re.search(abstained, p) for p in printed)
    for f in files:
        original = cv2.imread(str(f), cv2.IMREAD_COLOR)
        written = {
            kind: cv2.imread(str(out / f"{f.stem}_{kind}.png"), cv2.IMREAD_COLOR)
            for kind in ("original", "heatmap", "overlay")
        }
        for image in written.values():
            assert image is not None and image.shape == original.shape
        np.testing.assert_array_equal(written["original"], original)
        assert not np.array_equal(written["overlay"], original)


# ---- the server survived everything above, and stops cleanly -------------------------


def test_no_internal_errors_and_clean_shutdown_on_sigterm(server):
    # Every bad request above was a user error: none may have become INTERNAL.
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=60) as r:
        text = r.read().decode()
    assert 'status="INTERNAL"' not in text and 'status="UNKNOWN"' not in text
    assert server.stop() == 0
    log = server.log_text()
    assert "Traceback" not in log
    assert re.search(r"loaded brain_tumor version \d+ from ", log)
    assert re.search(r"unloaded brain_tumor version \d+", log) and "server stopped" in log
