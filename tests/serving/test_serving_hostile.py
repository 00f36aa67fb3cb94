"""`btmri serve` under hostile and malformed traffic, on the model the pipeline pushed
(`tiny_run`): every case gets TF Serving's status code, the server answers a valid
request afterwards, logs no traceback, and its peak RSS grows by less than 300 MB.

The cases are `benchmarks/serving_hostile.py`'s catalogue (`CASES`), run here against
a server with small limits so they are quick; the heavy ones (64 MB messages, the
decompression bomb, Grad-CAM at the default limits) are marked `hostile`
(`pytest -m hostile`). Version folders (odd names, a version copied in file by file,
a failing warm-up) and SIGTERM with connections open are tested on servers of their own.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from btmri.documents import ServerOptions
from serving.process import ServerProcess

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("serving_hostile", REPO / "benchmarks" / "serving_hostile.py")
hostile = importlib.util.module_from_spec(_spec)
sys.modules["serving_hostile"] = hostile
_spec.loader.exec_module(hostile)

RSS_BOUND_MB = hostile.RSS_GOAL_MB
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


def wait_until(condition, what: str, limit: float = 120.0) -> None:
    """Bounds a wait (no speed assertion: `limit` is only a safety net)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {limit:.0f} s")
        time.sleep(0.1)


def _target(process: ServerProcess, **limits) -> hostile.Target:
    target = hostile.Target(
        process.grpc_target, process.rest_port, process.process.pid, hostile.small_image(), **limits
    )
    assert hostile.valid_predict(target) == "OK"  # warm up before measuring
    return target


@pytest.fixture(scope="module")
def small(model, tmp_path_factory):
    """A server with small limits on a copy of the pushed model."""
    base = tmp_path_factory.mktemp("hostile") / "brain_tumor"
    base.mkdir()
    shutil.copytree(model, base / model.name)
    limits = hostile.Target("", 0, 0, b"", SMALL).args()
    with ServerProcess(base, *limits, log_path=base.parent / "server.log") as process:
        yield process, _target(process, limits=SMALL)


def _check_case(process: ServerProcess, target, case) -> dict:
    tracebacks = process.log_text().count("Traceback")
    result = hostile.run_case(case, target)
    assert result["answer"] == result["expected"], result
    assert result["alive"], f"no valid answer after {case.name}"
    assert result["rss_growth_mb"] < RSS_BOUND_MB, result
    assert process.log_text().count("Traceback") == tracebacks, process.log_text()[-3000:]
    return result


FAST = [c for c in hostile.CASES if not c.heavy]


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
    channel, stub = hostile._stub(target)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Predict(hostile.predict_request(images=[png_bomb()]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "{{node" not in details and "[Op:" not in details and "assertion failed" not in details
    assert str(REPO) not in details and "site-packages" not in details


def test_sigterm_stops_within_the_grace_period_with_connections_open(small):
    """Runs last on the small server: it stops it."""
    process, target = small
    idle_rest = socket.create_connection((hostile.HOST, target.rest_port), timeout=5)
    idle_rest.sendall(b"GET /v1/models/brain_tumor HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle_rest.recv(65536).startswith(b"HTTP/1.1 200")  # now idle, kept alive
    half_sent = socket.create_connection((hostile.HOST, target.rest_port), timeout=5)
    half_sent.sendall(b"POST /v1/models/brain_tumor:predict HTTP/1.1\r\nContent-Length: 99\r\n")
    stalled = hostile.open_stalled_grpc_streams(target, 4)
    channel = grpc.insecure_channel(target.grpc_target)  # an idle channel
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        hostile.predict_request(images=[target.image]), timeout=30
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


def statuses(process) -> dict[int, tuple[int, int, str]]:
    """version → (state, error code, error message)"""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "brain_tumor"
    with grpc.insecure_channel(process.grpc_target) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    return {
        s.version: (s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }


def served_version(target) -> int:
    channel, stub = hostile._stub(target)
    with channel:
        return stub.Predict(
            hostile.predict_request(images=[target.image]), timeout=30
        ).model_spec.version.value


def test_batching_refuses_more_rows_than_max_batch_size_as_tf_serving_does(versions):
    process, base, target = versions
    channel, stub = hostile._stub(target)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Predict(hostile.predict_request(images=[target.image] * 17), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Task size 17 is larger than maximum input batch size 16"


def test_only_int64_version_names_count_and_others_are_logged_once(versions, model):
    process, base, target = versions
    working = int(model.name)
    for name in ("99999999999999999999", "v2", "1.5", "-3", "0"):
        (base / name).mkdir()
        shutil.copy(model / "saved_model.pb", base / name / "saved_model.pb")
    time.sleep(2.0)  # about ten polls
    assert {v: s[0] for v, s in statuses(process).items()} == {working: AVAILABLE}
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
    wait_until(lambda: statuses(process).get(new, (None,))[0] == END, f"version {new} to fail")
    state, code, message = statuses(process)[new]
    assert code != 0 and str(base) not in message and "/tmp" not in message
    assert served_version(target) == old
    for item in model.iterdir():  # the rest
        if item.is_dir():
            shutil.copytree(item, base / str(new) / item.name, dirs_exist_ok=True)
        elif item.name != "saved_model.pb":
            shutil.copy(item, base / str(new) / item.name)
    wait_until(lambda: statuses(process).get(new, (None,))[0] == AVAILABLE, f"version {new} to load")
    assert served_version(target) == new
    assert re.search(
        rf"failed to load brain_tumor version {new} from .*still serving {old}", process.log_text()
    )


def _warmup_file(folder: Path, image: bytes) -> None:
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.name = "brain_tumor"
    request.model_spec.signature_name = "predict_images"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
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
    wait_until(lambda: statuses(process).get(new, (None,))[0] == END, f"version {new} to fail")
    state, code, message = statuses(process)[new]
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message.startswith("canary request failed: warm-up request 0 failed:"), message
    assert served_version(target) == old
    _warmup_file(base / str(new), target.image)  # fixed in place: tried again
    wait_until(lambda: statuses(process).get(new, (None,))[0] == AVAILABLE, f"version {new} to load")
    assert served_version(target) == new
    assert "replayed 1 warm-up requests" in process.log_text()
    assert "Traceback" not in process.log_text()


# ---- heavy cases at the default limits (pytest -m hostile) ------------------------------

HEAVY = [c for c in hostile.CASES if c.heavy] + [
    c for c in hostile.CASES if c.name.endswith("gradcam response over the cap")
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
