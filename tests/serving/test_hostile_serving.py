"""Hostile input against the model the tiny pipeline run pushed (`tiny_run`).

The exported model and the clients: decompression bombs refused by the SavedModel
itself (so by the official TF Serving too) within bounded memory, 16-bit PNGs
answered as prepare would have stored them, and `btmri predict` / `btmri gradcam`
converting DICOM, TIFF, BMP and 16-bit PNG with prepare's code before sending them to
a running server.

`btmri serve` under hostile and malformed traffic: every case of
serving/hostile_cases.py (`CASES`, which `benchmarks/serving_hostile_cases.py` runs too)
gets TF Serving's status code, the server answers a valid request afterwards, logs no
traceback, and its peak RSS grows by less than 300 MB. The cases run against a server
with small limits so they are quick; the heavy ones (64 MB messages, the
decompression bomb, Grad-CAM at the default limits) are marked `hostile`
(`pytest -m hostile`). Version folders (odd names, a version copied in file by file,
a failing warm-up) and SIGTERM with connections open are tested on servers of their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from btmri import spec
from btmri.documents import ServerOptions
from data_prep.image_io import decode_image
from serving import hostile_cases
from serving.client import PredictionClient, RequestFailed, image_payload
from serving.process import HOST, ServerProcess
from serving.requests import predict_request
from tests.conftest import REPO_ROOT, only_version
from tests.hostile_files import jpeg_bomb_header, png_bytes
from tests.imaging import textured_image
from tests.imaging import write_dicom
from tests.serving.test_serving_hotswap import wait_until

# Peak-memory growth allowed for refusing a bomb; decoding one costs ~1.3 GB.
MAX_GROWTH_MB = 100


@pytest.fixture(scope="module")
def probe(tiny_run) -> dict:
    """tests/serving/hostile_probe.py against the pushed SavedModel, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.serving.hostile_probe", str(only_version(tiny_run / "serving"))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["jpeg_bomb", "png_bomb", "jpeg_bomb_in_example", "png_bomb_in_example"])
def test_exported_model_refuses_bombs_in_bounded_memory(probe, case):
    assert probe["sizes"]["jpeg_bomb"] < 200 and probe["sizes"]["png_bomb"] < 300_000
    result = probe[case]
    assert result["outcome"].startswith(
        "INVALID_ARGUMENT: assertion failed: [image too large: 16384x16384 pixels"
    ), result
    assert result["peak_rss_growth_mb"] < MAX_GROWTH_MB, result


def test_exported_model_names_the_formats_it_reads(probe):
    assert "unsupported image format: the model reads JPEG and PNG" in probe["bmp"]["outcome"]


def test_exported_model_answers_a_16_bit_png_as_prepare_stored_it(probe):
    np.testing.assert_allclose(probe["png16_served"], probe["png16_prepared"], atol=1e-6)


# ---- clients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile-serve") / "server.log"
    with ServerProcess(tiny_run / "serving", log_path=log) as process:
        yield process


@pytest.fixture(scope="module")
def converted_files(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """One synthetic test slice as DICOM (12-bit, windowed), 16-bit TIFF, BMP, 12-bit
    PNG and CMYK JPEG: formats the model does not read as they are."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("formats")
    source = sorted((tiny_run / "data" / "synthetic" / "Testing" / "glioma").glob("*.png"))[0]
    gray = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    files = {
        "dicom": folder / "slice.dcm",
        "tiff": folder / "slice.tif",
        "bmp": folder / "slice.bmp",
        "png16": folder / "slice16.png",
        "cmyk": folder / "slice_cmyk.jpg",
    }
    write_dicom(files["dicom"], gray.astype(np.float64) * 16, center=2040, width=4080)
    assert cv2.imwrite(str(files["tiff"]), gray.astype(np.uint16) * 256)
    assert cv2.imwrite(str(files["bmp"]), gray)
    files["png16"].write_bytes(png_bytes(gray.astype(np.uint16) * 16))
    Image.fromarray(gray).convert("CMYK").save(files["cmyk"], "JPEG")
    return files


def test_client_converts_with_prepares_code(converted_files):
    for name, path in converted_files.items():
        data = path.read_bytes()
        payload = image_payload(data, str(path))
        assert payload == decode_image(data, path.suffix).encoded, name
        assert payload.startswith(b"\x89PNG"), name
    plain = cv2.imencode(".jpg", textured_image(1))[1].tobytes()
    assert image_payload(plain, "a.jpg") is plain  # sent as it is
    assert image_payload(b"junk", "junk.png") == b"junk"  # the model refuses it
    bomb = jpeg_bomb_header()
    assert image_payload(bomb, "bomb.jpg") == bomb  # the model refuses it


def test_btmri_predict_converts_dicom_tiff_bmp_16_bit_png(server, converted_files, capsys):
    from pipeline.cli import main

    files = [str(p) for p in converted_files.values()]
    assert main(["predict", "--server", server.grpc_target, *files]) == 0
    lines = {line["file"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    with PredictionClient(server.grpc_target) as client:
        for path in files:
            data = Path(path).read_bytes()
            # the served answer is the answer for the PNG prepare would have trained on
            expected = client.classify_image(decode_image(data, Path(path).suffix).encoded)
            assert lines[path]["class"] == (None if expected.abstain else expected.class_name)
            assert lines[path]["answer"] == expected.answer
            assert lines[path]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
        # sent unconverted, only the 16-bit PNG is read by the model (the same way)
        png16 = converted_files["png16"].read_bytes()
        assert client.classify_image(png16).probabilities == pytest.approx(
            lines[str(converted_files["png16"])]["probabilities"], abs=1e-6
        )
        for name in ("dicom", "tiff", "bmp"):
            with pytest.raises(RequestFailed, match="unsupported image format"):
                client.classify_image(converted_files[name].read_bytes())


def test_btmri_predict_reports_bombs_and_special_files(server, tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "bomb.jpg").write_bytes(jpeg_bomb_header())
    (tmp_path / "broken.dcm").write_bytes(bytes(128) + b"DICM" + b"garbage" * 10)
    os.mkfifo(tmp_path / "pipe.png")
    files = [str(tmp_path / n) for n in ("bomb.jpg", "broken.dcm", "pipe.png")]
    assert main(["predict", "--server", server.grpc_target, *files]) == 2  # bad input
    errors = {line["file"]: line["error"] for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert (
        errors[files[0]].startswith("INVALID_ARGUMENT") and "image too large: 16384x16384" in errors[files[0]]
    )
    assert errors[files[1]].startswith("cannot convert .dcm to PNG: unreadable DICOM")
    assert errors[files[2]] == "cannot read: not a regular file (FIFO (named pipe))"


def test_btmri_gradcam_draws_a_dicom_as_the_model_saw_it(server, converted_files, tmp_path, capsys):
    from pipeline.cli import main

    path = converted_files["dicom"]
    assert main(["gradcam", "--server", server.grpc_target, str(path), "--out", str(tmp_path)]) == 0
    assert "slice.dcm: " in capsys.readouterr().out
    sent = cv2.imdecode(
        np.frombuffer(decode_image(path.read_bytes(), ".dcm").encoded, np.uint8), cv2.IMREAD_COLOR
    )
    original = cv2.imread(str(tmp_path / "slice_original.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(original, sent)
    assert cv2.imread(str(tmp_path / "slice_overlay.png")).shape == sent.shape


# ---- `btmri serve` under hostile traffic ---------------------------------------------

RSS_BOUND_MB = hostile_cases.RSS_GOAL_MB
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
# Small limits keep every case quick; the hostile-marked cases use the defaults.
SMALL = ServerOptions(
    max_rows=16,
    max_message_mb=2,
    max_response_mb=1.5,
    client_timeout_seconds=2.0,
    max_connections=64,
    max_json_values=20_000,
)


def _target(process: ServerProcess, **limits) -> hostile_cases.Target:
    target = hostile_cases.Target(
        process.grpc_target, process.rest_port, process.process.pid, hostile_cases.small_image(), **limits
    )
    assert hostile_cases.valid_predict(target) == "OK"  # warm up before measuring
    return target


@pytest.fixture(scope="module")
def small(model, tmp_path_factory):
    """A server with small limits on a copy of the pushed model."""
    base = tmp_path_factory.mktemp("hostile") / "brain_tumor"
    base.mkdir()
    shutil.copytree(model, base / model.name)
    limits = hostile_cases.Target("", 0, 0, b"", SMALL).args()
    with ServerProcess(base, *limits, log_path=base.parent / "server.log") as process:
        yield process, _target(process, limits=SMALL)


def _check_case(process: ServerProcess, target, case) -> dict:
    tracebacks = process.log_text().count("Traceback")
    result = hostile_cases.run_case(case, target)
    assert result["answer"] == result["expected"], result
    assert result["alive"], f"no valid answer after {case.name}"
    assert result["rss_growth_mb"] < RSS_BOUND_MB, result
    assert process.log_text().count("Traceback") == tracebacks, process.log_text()[-3000:]
    return result


FAST = [c for c in hostile_cases.CASES if not c.heavy]


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_hostile_case(small, case):
    process, target = small
    _check_case(process, target, case)


def test_client_errors_are_one_log_line_each_without_paths(small):
    process, target = small
    log = process.log_text()
    assert "Traceback" not in log
    # e.g. "REST 400 POST /v1/models/brain_tumor:predict from 127.0.0.1:...: JSON Parse error..."
    assert re.search(r"^\S+ \S+ INFO REST 400 POST \S+ from 127\.0\.0\.1:\d+: JSON Parse error", log, re.M)
    assert re.search(r"^\S+ \S+ INFO gRPC Predict INVALID_ARGUMENT from \S+: tensor parsing error", log, re.M)
    # Half-sent requests: one line each, no more.
    assert log.count("request head not received within") <= 3 * SMALL.max_connections


def test_a_decompression_bomb_is_invalid_argument_without_graph_text(small):
    from tests.hostile_files import png_bomb

    process, target = small
    channel, stub = hostile_cases.grpc_stub(target)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Predict(hostile_cases.images_request([png_bomb()]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "{{node" not in details and "[Op:" not in details and "assertion failed" not in details
    assert str(REPO_ROOT) not in details and "site-packages" not in details


def test_sigterm_stops_within_the_grace_period_with_connections_open(small):
    """Runs last on the small server: it stops it."""
    process, target = small
    idle_rest = socket.create_connection((HOST, target.rest_port), timeout=5)
    idle_rest.sendall(b"GET /v1/models/brain_tumor HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle_rest.recv(65536).startswith(b"HTTP/1.1 200")  # now idle, kept alive
    half_sent = socket.create_connection((HOST, target.rest_port), timeout=5)
    half_sent.sendall(b"POST /v1/models/brain_tumor:predict HTTP/1.1\r\nContent-Length: 99\r\n")
    stalled = hostile_cases.open_stalled_grpc_streams(target, 4)
    channel = grpc.insecure_channel(target.grpc_target)  # an idle channel
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        hostile_cases.images_request([target.image]), timeout=30
    )
    start = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    code = process.process.wait(30)
    took = time.monotonic() - start
    for s in [idle_rest, half_sent, *stalled]:
        s.close()
    channel.close()
    assert code == 0
    assert took < 5.0 + 3.0, f"stopping took {took:.1f} s"  # 5 s grace, plus slack
    assert "server stopped" in process.log_text() and "Traceback" not in process.log_text()


# ---- version folders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def versions(model, tmp_path_factory):
    """A server with batching on, fast polls and quick retries, on a base path the tests change."""
    base = tmp_path_factory.mktemp("versions") / "brain_tumor"
    base.mkdir()
    shutil.copytree(model, base / model.name)
    with ServerProcess(
        base,
        "--enable-batching",
        "--poll-seconds",
        "0.2",
        "--load-retry-interval-seconds",
        "1",
        "--max-load-retries",
        "2",
        log_path=base.parent / "server.log",
    ) as process:
        yield process, base, _target(process)


def served_version(target) -> int:
    channel, stub = hostile_cases.grpc_stub(target)
    with channel:
        return stub.Predict(hostile_cases.images_request([target.image]), timeout=30).model_spec.version.value


def test_batching_refuses_more_rows_than_max_batch_size_as_tf_serving_does(versions):
    process, base, target = versions
    channel, stub = hostile_cases.grpc_stub(target)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Predict(hostile_cases.images_request([target.image] * 17), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Task size 17 is larger than maximum input batch size 16"


def test_only_int64_version_names_count_and_others_are_logged_once(versions, model):
    process, base, target = versions
    working = int(model.name)
    for name in ("99999999999999999999", "v2", "1.5", "-3", "0"):
        (base / name).mkdir()
        shutil.copy(model / "saved_model.pb", base / name / "saved_model.pb")
    time.sleep(2.0)  # about ten polls
    assert {v: s[0] for v, s in hostile_cases.version_statuses(target).items()} == {working: AVAILABLE}
    assert served_version(target) == working
    log = process.log_text()
    for name in ("99999999999999999999", "v2", "1.5", "-3", "0"):
        assert log.count(f"ignoring '{name}' in ") == 1, name
    assert "larger than the largest version (int64)" in log and "Traceback" not in log


def test_a_version_copied_in_file_by_file_is_served_once_complete(versions, model):
    process, base, target = versions
    old = served_version(target)
    new = old + 1
    (base / str(new)).mkdir()
    shutil.copy(model / "saved_model.pb", base / str(new) / "saved_model.pb")  # half-written
    wait_until(
        lambda: hostile_cases.version_statuses(target).get(new, (None,))[0] == END, f"version {new} to fail"
    )
    state, code, message = hostile_cases.version_statuses(target)[new]
    assert code != 0 and str(base) not in message and "/tmp" not in message
    assert served_version(target) == old
    for item in model.iterdir():  # the rest
        if item.is_dir():
            shutil.copytree(item, base / str(new) / item.name, dirs_exist_ok=True)
        elif item.name != "saved_model.pb":
            shutil.copy(item, base / str(new) / item.name)
    wait_until(
        lambda: hostile_cases.version_statuses(target).get(new, (None,))[0] == AVAILABLE,
        f"version {new} to load",
    )
    assert served_version(target) == new
    assert re.search(
        rf"failed to load brain_tumor version {new} from .*still serving {old}", process.log_text()
    )


def _warmup_file(folder: Path, image: bytes) -> None:
    log = prediction_log_pb2.PredictionLog()
    predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: [image]}, into=log.predict_log.request)
    (folder / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())


def test_a_new_version_serves_only_after_its_warmup_and_canary_pass(versions, model):
    process, base, target = versions
    old = served_version(target)
    new = old + 1
    staging = base / f".incoming-{new}"
    shutil.copytree(model, staging)
    _warmup_file(staging, b"not an image")  # a warm-up request that fails
    staging.rename(base / str(new))
    wait_until(
        lambda: hostile_cases.version_statuses(target).get(new, (None,))[0] == END, f"version {new} to fail"
    )
    state, code, message = hostile_cases.version_statuses(target)[new]
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message.startswith("canary request failed: warm-up request 0 failed:"), message
    assert served_version(target) == old
    _warmup_file(base / str(new), target.image)  # fixed in place: tried again
    wait_until(
        lambda: hostile_cases.version_statuses(target).get(new, (None,))[0] == AVAILABLE,
        f"version {new} to load",
    )
    assert served_version(target) == new
    assert "replayed 1 warm-up requests" in process.log_text()
    assert "Traceback" not in process.log_text()


# ---- heavy cases at the default limits (pytest -m hostile) ------------------------------

HEAVY = [c for c in hostile_cases.CASES if c.heavy] + [
    c for c in hostile_cases.CASES if c.name.endswith("gradcam response over the cap")
]


@pytest.fixture(scope="module")
def defaults(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-defaults") / "brain_tumor"
    base.mkdir()
    shutil.copytree(model, base / model.name)
    with ServerProcess(base, log_path=base.parent / "server.log") as process:
        yield process, _target(process)


@pytest.mark.hostile
@pytest.mark.parametrize("case", HEAVY, ids=[c.name for c in HEAVY])
def test_heavy_hostile_case_at_default_limits(defaults, case):
    process, target = defaults
    _check_case(process, target, case)


# ---- without a server ---------------------------------------------------------------------


def test_requests_cancelled_or_past_their_deadline_never_reach_the_model():
    import numpy as np

    from serving.batching import BatchingParameters, BatchScheduler
    from serving.errors import ServingError
    from serving.limits import RequestContext

    calls = []

    def model(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    scheduler = BatchScheduler(
        BatchingParameters(max_batch_size=4, batch_timeout_micros=1000, num_batch_threads=1)
    )
    try:
        expired, cancelled = RequestContext(timeout=0.0), RequestContext()
        cancelled.cancel()
        for context, code in (
            (expired, grpc.StatusCode.DEADLINE_EXCEEDED),
            (cancelled, grpc.StatusCode.CANCELLED),
        ):
            with pytest.raises(ServingError) as err:
                scheduler.run("k", {"x": np.ones(2)}, 2, model, context)
            assert err.value.code == code
        with pytest.raises(ServingError) as err:
            scheduler.run("k", {"x": np.ones(5)}, 5, model)
        assert err.value.message == "Task size 5 is larger than maximum input batch size 4"
        assert calls == []
        assert scheduler.run("k", {"x": np.ones(2)}, 2, model)["y"].tolist() == [2.0, 2.0]
    finally:
        scheduler.stop()
