"""REST front end: TF Serving's HTTP API and the Prometheus endpoint, on http.server.

  GET  /v1/models/{name}[/versions/{v}]            model status
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature defs
  POST /v1/models/{name}[/versions/{v}]:predict    instances / inputs JSON
  GET  {monitoring path}                           Prometheus text format
Paths, errors (`{"error": "..."}`) and HTTP codes follow TF Serving's
http_rest_api_handler.cc and http_server.cc.
"""
from __future__ import annotations

import logging
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import grpc

from serving import rest_json
from serving.core import ModelRef, ServerCore
from serving.errors import ServingError, invalid_argument
from serving.messages import (SIGNATURE_DEF_FIELD, metadata_json, metadata_response, status_json,
                              status_response)
from serving.metrics import ServingMetrics

log = logging.getLogger("serving")

# TF Serving's path patterns (http_rest_api_util.cc), case-insensitive.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_API_PREFIX = re.compile(r"/v1/", re.I)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], core: ServerCore, metrics: ServingMetrics,
                 max_body_bytes: int, monitoring_path: str | None):
        self.core = core
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.monitoring_path = monitoring_path
        super().__init__(address, RestHandler)


class RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: clients reuse one connection
    server: RestServer

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def log_message(self, fmt, *args):   # one line per request is too much at INFO
        log.debug("REST %s - %s", self.address_string(), fmt % args)

    def _handle(self, method: str) -> None:
        path = urlsplit(self.path).path
        if method == "GET" and self.server.monitoring_path and path == self.server.monitoring_path:
            self._send(HTTPStatus.OK, self.server.metrics.render().encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
            return
        if not _API_PREFIX.match(path):
            self._discard_body()
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"Not found: {method} {path}"})
            return
        start = time.monotonic()
        model_name, api, failure, bad_route = "", "", None, None
        try:
            api, ref = _route(method, path)
            model_name = ref.name
        except ServingError as err:
            bad_route = err
        try:
            body = self._read_body()   # even for a bad path: an unread body would break keep-alive
            if bad_route is not None:
                raise bad_route
            document = self._answer(api, ref, body)
        except ServingError as err:
            failure = err
        except Exception as err:   # a bug, not the caller's fault: report it, keep serving
            log.exception("REST %s %s failed", method, path)
            failure = ServingError(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        self.server.metrics.record(model_name, api, "REST",
                                   failure.code.name if failure else "OK", time.monotonic() - start)
        if failure is not None:
            self._send_json(failure.http_status, {"error": failure.message})
        else:
            self._send_json(HTTPStatus.OK, document)

    def _answer(self, api: str, ref: ModelRef, body: bytes) -> dict:
        core = self.server.core
        if api == "predict":
            signature, inputs, fmt = rest_json.parse_predict_request(
                body, lambda sig: core.input_dtypes(ref, sig))
            result = core.predict(ref, signature, inputs)
            return rest_json.format_predict_response(result.outputs, fmt)
        if api == "metadata":
            return metadata_json(metadata_response(core, ref, [SIGNATURE_DEF_FIELD]))
        return status_json(status_response(core, ref))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise invalid_argument("chunked request bodies are not supported: send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise invalid_argument("Content-Length is not a number")
        if length > self.server.max_body_bytes:
            self._skip(length)
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"Received message larger than max ({length} vs. "
                               f"{self.server.max_body_bytes})")
        return self.rfile.read(length) if length > 0 else b""

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        self._skip(length)

    def _skip(self, length: int) -> None:
        """Reads and drops a body we will not use, so the client can read our answer
        (closing on unread data resets the connection). Huge ones: just close."""
        if length < 0 or length > 4 * self.server.max_body_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _send_json(self, status: int, document: dict) -> None:
        self._send(status, rest_json.dumps(document), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(int(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


def _route(method: str, path: str) -> tuple[str, ModelRef]:
    """(api, model) of a /v1/ request: api is 'predict', 'metadata' or 'status'."""
    malformed = invalid_argument(f"Malformed request: {method} {path}")
    if method == "POST":
        match = _PREDICT_PATH.fullmatch(path)
        if not match:
            raise malformed
        ref = _model_ref(*match.groups()[:3])
        verb = match.group(4).lower()
        if verb != "predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{verb} is not available: the model exports predict signatures only")
        return "predict", ref
    if method == "GET":
        match = _STATUS_PATH.fullmatch(path)
        if not match:
            raise malformed
        if not match.group(1):
            raise invalid_argument("Missing model name in request.")
        return ("metadata" if match.group(4) else "status"), _model_ref(*match.groups()[:3])
    raise malformed


def _model_ref(name: str, version: str | None, label: str | None) -> ModelRef:
    name = unquote(name or "")
    return ModelRef(name, int(version) if version else None, unquote(label or ""))


def build_rest_server(core: ServerCore, metrics: ServingMetrics, host: str, port: int,
                      max_body_bytes: int, monitoring_path: str | None) -> RestServer:
    try:
        return RestServer((host, port), core, metrics, max_body_bytes, monitoring_path)
    except OSError as err:
        raise OSError(f"cannot listen for REST on {host}:{port}: {err.strerror or err}") from None
