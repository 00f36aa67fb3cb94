"""Version management of the local model server under load, with batching on:
a new version swaps in without a single failed request, a version that fails to
load never replaces the working one, and non-version entries are ignored."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from btmri import spec
from serving.process import ServerProcess
from serving.requests import predict_request

CLIENTS = 8
MIN_REQUESTS = 200
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def wait_until(condition, what: str, limit: float = 300.0) -> None:
    """Bounds a wait (this is no speed assertion: `limit` is only a safety net)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {limit:.0f} s")
        time.sleep(0.05)


def push(source: Path, base: Path, version: int) -> None:
    """Like the pipeline's pusher: copy to a hidden name, then rename into place."""
    staging = base / f".incoming-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


@pytest.fixture(scope="module")
def base(model, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hotswap") / "brain_tumor"
    base.mkdir()
    shutil.copytree(model, base / model.name)
    # Entries the version source must ignore: a hidden staging copy, a file, a non-integer folder.
    shutil.copytree(model, base / ".staging-99999999999")
    (base / "README").write_text("not a version\n")
    shutil.copytree(model, base / "v2")
    return base


@pytest.fixture(scope="module")
def server(base):
    with ServerProcess(
        base, "--enable-batching", "--poll-seconds", "0.2", log_path=base.parent / "server.log"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def images(tiny_run) -> list[bytes]:
    root = tiny_run / "data" / "synthetic" / spec.KAGGLE_TESTING_DIR
    return [p.read_bytes() for p in sorted(root.glob("*/*.png"))]


def statuses(server) -> dict[int, tuple[int, int]]:
    """version → (state, error code)"""
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "brain_tumor"
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=60)
    return {s.version: (s.state, s.status.error_code) for s in response.model_version_status}


def predict_version(server, image: bytes) -> int:
    request = predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: [image]})
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return stub.Predict(request, timeout=60).model_spec.version.value


def test_serves_the_only_integer_version(server, model):
    assert statuses(server) == {int(model.name): (AVAILABLE, 0)}


def test_hot_swap_under_load_drops_nothing(server, base, model, images):
    old = int(model.name)
    new = old + 1
    answers: list[list] = [[] for _ in range(CLIENTS)]  # per client: version or the error
    stop = threading.Event()

    def client(i: int) -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            k = i
            while not stop.is_set():
                request = predict_request(
                    spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: [images[k % len(images)]]}
                )
                k += 1
                try:
                    answers[i].append(stub.Predict(request, timeout=120).model_spec.version.value)
                except grpc.RpcError as err:
                    answers[i].append(err)

    def total() -> int:
        return sum(map(len, answers))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: total() >= 40, "the first answers")
        push(model, base, new)
        wait_until(
            lambda: total() >= MIN_REQUESTS and all(a.count(new) >= 5 for a in answers),
            f"{MIN_REQUESTS} answers with every client on version {new}",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(180)

    everything = [x for a in answers for x in a]
    failures = [x for x in everything if not isinstance(x, int)]
    assert not failures, f"{len(failures)} of {len(everything)} requests failed: {failures[:3]}"
    assert len(everything) >= MIN_REQUESTS
    assert set(everything) == {old, new}
    for sequence in answers:  # each client moves to the new version once and never back
        assert sequence == sorted(sequence) and sequence[-1] == new

    wait_until(lambda: statuses(server).get(old, (None,))[0] == END, f"version {old} to unload")
    assert statuses(server) == {old: (END, 0), new: (AVAILABLE, 0)}
    log = server.log_text()
    assert f"loaded brain_tumor version {new} from" in log
    assert f"unloaded brain_tumor version {old}" in log

    # Batching was on: concurrent single-image requests shared model calls.
    with urllib.request.urlopen(server.rest_url + "/monitoring/prometheus/metrics", timeout=60) as r:
        metrics = r.read().decode()
    calls = int(re.search(r"^btmri_serving_batch_size_count (\d+)$", metrics, re.M).group(1))
    rows = int(re.search(r"^btmri_serving_batch_size_sum (\d+)$", metrics, re.M).group(1))
    assert rows >= len(everything) and calls < rows


def test_a_version_that_fails_to_load_never_replaces_the_working_one(server, base, model, images):
    working = max(statuses(server))
    broken = working + 1
    staging = base / ".incoming-broken"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    staging.rename(base / str(broken))

    wait_until(lambda: statuses(server).get(broken, (None,))[0] == END, f"version {broken} to fail")
    state, error = statuses(server)[broken]
    assert error != 0  # END with an error, not a clean unload
    assert statuses(server)[working] == (AVAILABLE, 0)
    assert predict_version(server, images[0]) == working
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="brain_tumor"), timeout=60
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert re.search(
        rf"failed to load brain_tumor version {broken} from .*still serving {working}", server.log_text()
    )

    # Replacing the broken folder with a good model gives the version another chance.
    shutil.rmtree(base / str(broken))
    push(model, base, broken)
    wait_until(lambda: statuses(server).get(broken, (None,))[0] == AVAILABLE, f"version {broken} to load")
    assert predict_version(server, images[0]) == broken
