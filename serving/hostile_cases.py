"""Hostile and malformed traffic against a model server, as cases with the answer each
should get: oversized and broadcast tensors, junk messages, stalled gRPC streams and
REST connections, deeply nested or many-dimensional JSON, absurd version paths,
HTTP/0.9, clients vanishing mid-body, responses above the cap. `run_case` runs one and
measures how much the server's peak RSS (VmHWM) grew.

`benchmarks/serving_hostile.py` runs `CASES` against `btmri serve` at its default limits
and prints a table; `tests/serving/test_hostile_serving.py` runs them at small limits
and asserts the answers. Traffic goes to 127.0.0.1 only; every loop is bounded in
count and time.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from btmri import spec
from btmri.documents import ServerOptions
from serving.process import HOST
from serving.requests import predict_request

HEATMAP_VALUES = spec.IMAGE_SIZE * spec.IMAGE_SIZE
RSS_GOAL_MB = 300  # no case may grow the server's peak RSS by this much


@dataclass
class Target:
    """A running server and the limits it was started with (`btmri serve` options)."""

    grpc_target: str
    rest_port: int
    pid: int
    image: bytes  # a small valid image
    limits: ServerOptions = field(default_factory=ServerOptions)
    batching_max: int | None = None  # max_batch_size when batching is on

    def args(self) -> list[str]:
        o = self.limits
        return [
            "--max-rows",
            str(o.max_rows),
            "--max-message-mb",
            str(o.max_message_mb),
            "--max-response-mb",
            str(o.max_response_mb),
            "--client-timeout-seconds",
            str(o.client_timeout_seconds),
            "--max-connections",
            str(o.max_connections),
            "--max-json-values",
            str(o.max_json_values),
        ]


# ---- memory -------------------------------------------------------------------------


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far, in MB."""
    return _status_mb(pid, "VmHWM")


def reset_peak_rss(pid: int) -> float:
    """Resets VmHWM to the current RSS (Linux: '5' to /proc/PID/clear_refs) so the next
    peak belongs to the next case alone; returns the RSS it starts from, in MB."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return _status_mb(pid, "VmRSS")
    except OSError:  # not allowed here: growth is then above the old peak
        return peak_rss_mb(pid)


# ---- gRPC helpers -------------------------------------------------------------------


def grpc_stub(target: Target):
    """(channel, PredictionService stub) without message size limits on this side."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(
        target.grpc_target,
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def images_request(images: list[bytes], signature: str = spec.PREDICT_IMAGES):
    """A Predict request carrying these encoded images."""
    return predict_request(signature, {spec.IMAGE_BYTES_INPUT: images})


def grpc_code(target: Target, request, timeout: float = 120.0) -> str:
    import grpc

    channel, stub = grpc_stub(target)
    with channel:
        try:
            stub.Predict(request, timeout=timeout)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def valid_predict(target: Target, timeout: float = 30.0) -> str:
    return grpc_code(target, images_request([target.image]), timeout)


def health_check(target: Target, timeout: float = 2.0) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target.grpc_target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=spec.MODEL_NAME), timeout=timeout
            )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        except grpc.RpcError as err:
            return err.code().name


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int) -> bytes:
    if value < 127:
        return bytes([value])
    out, value = [127], value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _hpack_literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name)) + name.encode() + _hpack_int(len(value)) + value.encode()


def open_stalled_grpc_streams(
    target: Target,
    count: int,
    per_connection: int = 8,
    path: str = "/tensorflow.serving.PredictionService/Predict",
):
    """Raw HTTP/2 connections whose streams send a gRPC call's headers and never its
    message. Returns the sockets (close them when done)."""
    host, port = target.grpc_target.rsplit(":", 1)
    sockets = []
    headers = b"".join(
        _hpack_literal(n, v)
        for n, v in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", target.grpc_target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    for c in range(math.ceil(count / per_connection)):
        s = socket.create_connection((host, int(port)), timeout=5)
        sockets.append(s)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0))
        deadline = time.monotonic() + 5
        buffer = b""
        acked = False
        for _ in range(20):  # the server's SETTINGS: acknowledge it
            while len(buffer) < 9 and time.monotonic() < deadline:
                buffer += s.recv(65536)
            if len(buffer) < 9:
                break
            length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
            while len(buffer) < 9 + length and time.monotonic() < deadline:
                buffer += s.recv(65536)
            buffer = buffer[9 + length :]
            if kind == 4 and not flags & 1:
                s.sendall(_h2_frame(4, 1, 0))
                acked = True
                break
        if not acked:
            raise RuntimeError("no HTTP/2 SETTINGS from the gRPC server")
        n = min(per_connection, count - c * per_connection)
        s.sendall(b"".join(_h2_frame(1, 0x4, 1 + 2 * i, headers) for i in range(n)))
    return sockets


# ---- REST helpers -------------------------------------------------------------------


def raw_http(target: Target, data: bytes, wait: float = 30.0) -> bytes:
    """Sends raw bytes to the REST port; returns what comes back until close or `wait`."""
    with socket.create_connection((HOST, target.rest_port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            reply = b"".join(chunks)
            head, sep, body = reply.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return b"".join(chunks)


def http_status(reply: bytes) -> str:
    if not reply:
        return "no response"
    line = reply.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
        return f"HTTP {parts[1]}"
    return f"no status line: {line[:40]!r}"


def post(target: Target, path: str, body: bytes, wait: float = 120.0) -> str:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return http_status(raw_http(target, head + body, wait))


def get(target: Target, path: str, wait: float = 30.0) -> str:
    return http_status(
        raw_http(target, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode(), wait)
    )


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def valid_rest(target: Target, wait: float = 30.0) -> str:
    body = json.dumps({"signature_name": spec.PREDICT_IMAGES, "instances": [b64(target.image)]})
    return post(target, PREDICT_PATH, body.encode(), wait)


PREDICT_PATH = f"/v1/models/{spec.MODEL_NAME}:predict"


# ---- the cases ------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[[Target], str]  # → the answer: a gRPC code, "HTTP nnn", or "OK"
    expect: Callable[[Target], str]  # the answer the server should give
    heavy: bool = False  # minutes or gigabytes of client work


# By hand below: tensors the request builder would never make (a shape that disagrees
# with the values carried).


def _grpc_broadcast(t: Target) -> str:
    request = predict_request(spec.PREDICT_IMAGES, {})
    tensor = request.inputs[spec.IMAGE_BYTES_INPUT]
    tensor.dtype = 7  # DT_STRING
    tensor.tensor_shape.dim.add().size = max(1024, 16 * t.limits.max_rows)
    tensor.string_val.append(t.image)  # one value, broadcast to every row
    return grpc_code(t, request)


def _grpc_huge_shape(t: Target) -> str:
    request = predict_request(spec.PREDICT_IMAGES, {})
    tensor = request.inputs[spec.IMAGE_BYTES_INPUT]
    tensor.dtype = 7
    tensor.tensor_shape.dim.add().size = 10**12
    tensor.string_val.append(b"x")
    return grpc_code(t, request)


def _grpc_many_dims(t: Target) -> str:
    request = predict_request(spec.PREDICT_IMAGES, {})
    tensor = request.inputs[spec.IMAGE_BYTES_INPUT]
    tensor.dtype = 7
    for _ in range(40):
        tensor.tensor_shape.dim.add().size = 1
    tensor.string_val.append(t.image)
    return grpc_code(t, request)


def _grpc_junk_message(t: Target) -> str:
    import grpc

    with grpc.insecure_channel(t.grpc_target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        try:
            call(b"\xff\xfe\xfd" * 50, timeout=30)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def _grpc_stalled_streams(t: Target) -> str:
    """24 streams that send headers and no message; a valid Predict and the health
    Check must still answer within 2 s each."""
    sockets = open_stalled_grpc_streams(t, 24)
    try:
        time.sleep(0.5)
        start = time.monotonic()
        predicted = valid_predict(t, timeout=2.0)
        predict_s = time.monotonic() - start
        start = time.monotonic()
        checked = health_check(t, timeout=2.0)
        health_s = time.monotonic() - start
    finally:
        for s in sockets:
            s.close()
    if predicted == "OK" and checked == "SERVING" and max(predict_s, health_s) < 2.0:
        return "OK"
    return f"Predict {predicted} in {predict_s:.1f} s, health {checked} in {health_s:.1f} s"


def _grpc_expired_deadline(t: Target) -> str:
    return grpc_code(t, images_request([t.image] * min(8, t.limits.max_rows)), timeout=0.001)


# A heatmap value in [0, 1] takes at least 5 bytes of JSON ("0.0, ": a model that puts
# no heat outside a lesion returns mostly zeros) and about 20 otherwise
# ("0.5372549295425415, "); 4 is a lower bound whatever the model.
JSON_BYTES_PER_HEATMAP_VALUE = 4


def _gradcam_rows(t: Target, bytes_per_value: int) -> int:
    return min(
        t.limits.max_rows, math.ceil((t.limits.max_response_bytes + 1) / (HEATMAP_VALUES * bytes_per_value))
    )


def _grpc_gradcam(t: Target) -> str:
    return grpc_code(t, images_request([t.image] * _gradcam_rows(t, 4), spec.GRADCAM))


def _grpc_gradcam_expect(t: Target) -> str:
    return (
        "RESOURCE_EXHAUSTED"
        if _gradcam_rows(t, 4) * HEATMAP_VALUES * 4 > t.limits.max_response_bytes
        else "OK"
    )


def _grpc_oversized(t: Target) -> str:
    return grpc_code(t, images_request([bytes(t.limits.max_message_bytes + (1 << 20))]))


def _bomb_png() -> bytes:
    """A PNG of 20,000 × 20,000 black pixels: ~400 KB on the wire, 400 MB decoded."""
    import zlib

    width = height = 20_000
    row = b"\x00" + bytes(width)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _grpc_bomb(t: Target) -> str:
    return grpc_code(t, images_request([_bomb_png()]))


def _grpc_batch_too_large(t: Target) -> str:
    return grpc_code(t, images_request([t.image] * (t.batching_max + 1)))


def _rest_rows(t: Target, rows: int) -> str:
    body = json.dumps({"signature_name": spec.PREDICT_IMAGES, "instances": [b64(t.image)] * rows})
    return post(t, PREDICT_PATH, body.encode())


def _rest_nested(t: Target) -> str:
    depth = 100_000
    return post(t, PREDICT_PATH, b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")


def _rest_dims(t: Target) -> str:
    value = json.dumps(b64(t.image))
    for _ in range(40):
        value = f"[{value}]"
    return post(t, PREDICT_PATH, f'{{"signature_name": "{spec.PREDICT_IMAGES}", "inputs": {value}}}'.encode())


def _rest_json_values(t: Target) -> str:
    count = t.limits.max_json_values + 1
    return post(t, PREDICT_PATH, b'{"inputs": [[' + b'"",' * (count - 1) + b'""]]}')


def _rest_gradcam(t: Target) -> str:
    rows = _gradcam_rows(t, JSON_BYTES_PER_HEATMAP_VALUE)
    body = json.dumps({"signature_name": spec.GRADCAM, "instances": [b64(t.image)] * rows})
    return post(t, PREDICT_PATH, body.encode())


def _rest_half_sent(t: Target) -> str:
    """40 connections that send half a request head: a valid request is answered at once
    while they wait, and each of them gets 408 within the client timeout."""
    count = min(40, t.limits.max_connections // 2)
    sockets = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, t.rest_port), timeout=5)
            s.sendall(f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: 100\r\nX-Slow: ".encode())
            sockets.append(s)
        start = time.monotonic()
        valid = valid_rest(t, wait=5.0)
        valid_s = time.monotonic() - start
        answers = []
        for s in sockets:
            s.settimeout(max(0.1, t.limits.client_timeout_seconds + 5 - (time.monotonic() - start)))
            try:
                answers.append(http_status(s.recv(4096)))
            except (TimeoutError, ConnectionError):
                answers.append("no response")
    finally:
        for s in sockets:
            s.close()
    if valid == "HTTP 200" and valid_s < 2.0 and set(answers) == {"HTTP 408"}:
        return "OK"
    return f"valid {valid} in {valid_s:.1f} s; half-sent got {sorted(set(answers))}"


def _rest_connection_cap(t: Target) -> str:
    """Idle connections beyond the cap are refused with 503; the cap frees up when they close."""
    sockets, refused = [], 0
    try:
        for _ in range(t.limits.max_connections + 10):
            s = socket.create_connection((HOST, t.rest_port), timeout=5)
            sockets.append(s)
        time.sleep(0.5)
        for s in sockets[-10:]:
            s.settimeout(2.0)
            try:
                refused += http_status(s.recv(4096)) == "HTTP 503"
            except (TimeoutError, ConnectionError):
                pass
    finally:
        for s in sockets:
            s.close()
    time.sleep(0.5)
    return "HTTP 503" if refused == 10 and valid_rest(t) == "HTTP 200" else f"{refused} refused"


def _rest_vanish(t: Target) -> str:
    """Clients that send a head and part of the body, then go away."""
    for _ in range(5):
        with socket.create_connection((HOST, t.rest_port), timeout=5) as s:
            s.sendall(
                f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: 10000\r\n\r\n".encode() + b'{"instances": ['
            )
    time.sleep(0.3)
    return "closed" if valid_rest(t) == "HTTP 200" else "server did not answer afterwards"


def _rest_big_body_expect_continue(t: Target) -> str:
    head = (
        f"POST {PREDICT_PATH} HTTP/1.1\r\nContent-Length: {t.limits.max_message_bytes + 1}\r\n"
        f"Expect: 100-continue\r\n\r\n"
    ).encode()
    return http_status(raw_http(t, head))


def _rest_big_body(t: Target) -> str:
    return post(t, PREDICT_PATH, b" " * (t.limits.max_message_bytes + (1 << 20)))


CASES = [
    Case(
        "gRPC: one value declared as 1,024+ rows (broadcast)", _grpc_broadcast, lambda t: "INVALID_ARGUMENT"
    ),
    Case("gRPC: shape of 10^12 values, one carried", _grpc_huge_shape, lambda t: "INVALID_ARGUMENT"),
    Case("gRPC: 40 dimensions", _grpc_many_dims, lambda t: "INVALID_ARGUMENT"),
    Case(
        "gRPC: max_rows + 1 real images",
        lambda t: grpc_code(t, images_request([t.image] * (t.limits.max_rows + 1))),
        lambda t: "INVALID_ARGUMENT",
    ),
    Case(
        "gRPC: 1,024 real images",
        lambda t: grpc_code(t, images_request([t.image] * 1024)),
        lambda t: "INVALID_ARGUMENT",
    ),
    Case("gRPC: junk bytes as the message", _grpc_junk_message, lambda t: "INVALID_ARGUMENT"),
    Case(
        "gRPC: undecodable image",
        lambda t: grpc_code(t, images_request([b"not an image"])),
        lambda t: "INVALID_ARGUMENT",
    ),
    Case("gRPC: 24 stalled streams, then Predict + health", _grpc_stalled_streams, lambda t: "OK"),
    Case("gRPC: deadline expired on arrival", _grpc_expired_deadline, lambda t: "DEADLINE_EXCEEDED"),
    Case("gRPC: gradcam response over the cap", _grpc_gradcam, _grpc_gradcam_expect),
    Case(
        "REST: max_rows + 1 instances", lambda t: _rest_rows(t, t.limits.max_rows + 1), lambda t: "HTTP 400"
    ),
    Case("REST: 1,024 instances", lambda t: _rest_rows(t, 1024), lambda t: "HTTP 400"),
    Case("REST: JSON nested 100,000 deep", _rest_nested, lambda t: "HTTP 400"),
    Case("REST: 40-dimensional columnar input", _rest_dims, lambda t: "HTTP 400"),
    Case("REST: more JSON values than allowed", _rest_json_values, lambda t: "HTTP 400"),
    Case(
        "REST: 4,400-digit version",
        lambda t: post(t, f"/v1/models/{spec.MODEL_NAME}/versions/{'9' * 4400}:predict", b"{}"),
        lambda t: "HTTP 400",
    ),
    Case(
        "REST: version beyond int64",
        lambda t: get(t, f"/v1/models/{spec.MODEL_NAME}/versions/99999999999999999999"),
        lambda t: "HTTP 400",
    ),
    Case(
        "REST: version 0", lambda t: get(t, f"/v1/models/{spec.MODEL_NAME}/versions/0"), lambda t: "HTTP 404"
    ),
    Case(
        "REST: HTTP/0.9 request", lambda t: http_status(raw_http(t, b"GET /\r\n", 10)), lambda t: "HTTP 400"
    ),
    Case(
        "REST: binary junk",
        lambda t: http_status(
            raw_http(t, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", 10)
        ),
        lambda t: "HTTP 400",
    ),
    Case(
        "REST: HTTP/2 preface on the REST port",
        lambda t: http_status(raw_http(t, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 10)),
        lambda t: "HTTP 505",
    ),
    Case(
        "REST: header line of 100 KB",
        lambda t: http_status(raw_http(t, b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n", 10)),
        lambda t: "HTTP 431",
    ),
    Case("REST: clients vanishing mid-body", _rest_vanish, lambda t: "closed"),
    Case(
        "REST: body over the cap, Expect: 100-continue", _rest_big_body_expect_continue, lambda t: "HTTP 429"
    ),
    Case(
        "REST: gradcam response over the cap",
        _rest_gradcam,
        lambda t: (
            "HTTP 429"
            if (
                _gradcam_rows(t, JSON_BYTES_PER_HEATMAP_VALUE) * HEATMAP_VALUES * JSON_BYTES_PER_HEATMAP_VALUE
                > t.limits.max_response_bytes
            )
            else "HTTP 200"
        ),
    ),
    Case("REST: 40 half-sent requests", _rest_half_sent, lambda t: "OK"),
    Case("REST: connections beyond the cap", _rest_connection_cap, lambda t: "HTTP 503"),
    Case("gRPC: message over the size cap", _grpc_oversized, lambda t: "RESOURCE_EXHAUSTED", heavy=True),
    Case("REST: body over the size cap, sent whole", _rest_big_body, lambda t: "HTTP 429", heavy=True),
    Case(
        "gRPC: PNG decompression bomb (20,000 x 20,000)", _grpc_bomb, lambda t: "INVALID_ARGUMENT", heavy=True
    ),
]


def small_image() -> bytes:
    """A tiny valid PNG (8 × 8 gray)."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", (np.arange(64, dtype=np.uint8) * 3).reshape(8, 8))
    return png.tobytes()


def run_case(case: Case, target: Target) -> dict:
    """Runs one case; returns its answer, the expected one, time, peak-RSS growth and
    whether a valid request is answered afterwards."""
    before = reset_peak_rss(target.pid)
    start = time.monotonic()
    try:
        answer = case.run(target)
    except Exception as err:  # a client-side failure is a result too
        answer = f"client error: {type(err).__name__}: {err}"
    seconds = time.monotonic() - start
    growth = peak_rss_mb(target.pid) - before
    alive = valid_predict(target) == "OK"
    return {
        "case": case.name,
        "answer": answer,
        "expected": case.expect(target),
        "seconds": seconds,
        "rss_growth_mb": growth,
        "alive": alive,
    }


def version_statuses(target: Target, timeout: float = 30.0) -> dict[int, tuple[int, int, str]]:
    """version → (state, error code, error message), as GetModelStatus reports them."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = spec.MODEL_NAME
    with grpc.insecure_channel(target.grpc_target) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=timeout)
    return {
        s.version: (s.state, s.status.error_code, s.status.error_message)
        for s in response.model_version_status
    }
