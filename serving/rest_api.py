"""REST front end: TF Serving's HTTP API and the Prometheus endpoint (I/O: http_server.py).

  GET  /v1/models/{name}[/versions/{v}]            model status
  GET  /v1/models/{name}[/versions/{v}]/metadata   signature defs
  POST /v1/models/{name}[/versions/{v}]:predict    instances / inputs JSON
  GET  {monitoring path}                           Prometheus text format
Paths, errors (`{"error": "..."}`) and HTTP codes follow TF Serving's
http_rest_api_handler.cc and http_server.cc; a version that is not an int64 is
"Failed to convert version: N to numeric." (400), as there. One log line per
client error.
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import Executor
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

import grpc

from serving import rest_json
from serving.core import JSON, ModelRef, ServerCore
from serving.errors import ServingError, client_text, invalid_argument, one_line, redact_paths
from serving.http_server import HttpServer, Request, Response, json_error
from serving.limits import RequestContext
from serving.messages import (
    SIGNATURE_DEF_FIELD,
    metadata_json,
    metadata_response,
    status_json,
    status_response,
)
from serving.prometheus_metrics import ServingMetrics
from serving.source import INT64_MAX

log = logging.getLogger("serving")

# TF Serving's path patterns (http_rest_api_util.cc), case-insensitive.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I
)
_API_PREFIX = re.compile(r"/v1/", re.I)


class RestApi:
    """Answers one complete HTTP request (in a worker thread); `http_server` does the I/O."""

    def __init__(
        self,
        core: ServerCore,
        metrics: ServingMetrics,
        monitoring_path: str | None,
        request_timeout: float | None = None,
    ):
        self.core = core
        self.metrics = metrics
        self.monitoring_path = monitoring_path
        self.request_timeout = request_timeout  # TF Serving's --rest_api_timeout_in_ms

    def __call__(self, request: Request) -> Response:
        method, path = request.method, urlsplit(request.target).path
        get = method in ("GET", "HEAD")
        if get and self.monitoring_path and path == self.monitoring_path:
            return Response(
                HTTPStatus.OK, self.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if not _API_PREFIX.match(path):
            log.info("REST 404 %s %s from %s", method, one_line(path, 100), request.peer)
            return json_error(HTTPStatus.NOT_FOUND, f"Not found: {method} {path}")
        start = time.monotonic()
        model_name, api, failure, payload = "", "", None, b""
        try:
            api, ref = _route("GET" if method == "HEAD" else method, path)
            model_name = ref.name
            payload = self._answer(api, ref, request.body)
        except ServingError as err:
            failure = err
        except Exception as err:  # a bug, not the caller's fault: report it, keep serving
            log.exception("REST %s %s failed", method, path)
            failure = ServingError(
                grpc.StatusCode.INTERNAL, client_text(redact_paths(f"{type(err).__name__}: {err}"))
            )
        finally:
            request.body = b""  # the body can be large: drop it as soon as it is read
        self.metrics.record(
            model_name, api, "REST", failure.code.name if failure else "OK", time.monotonic() - start
        )
        if failure is not None:
            log.info(
                "REST %d %s %s from %s: %s",
                failure.http_status,
                method,
                one_line(path, 100),
                request.peer,
                one_line(failure.message),
            )
            return json_error(failure.http_status, failure.message)
        log.debug("REST 200 %s %s from %s", method, one_line(path, 100), request.peer)
        return Response(HTTPStatus.OK, payload)

    def _answer(self, api: str, ref: ModelRef, body) -> bytes:
        core = self.core
        if api == "predict":
            context = RequestContext(self.request_timeout)
            signature, inputs, fmt = rest_json.parse_predict_request(
                body, lambda sig: core.input_dtypes(ref, sig), core.limits
            )
            result = core.predict(ref, signature, inputs, context=context, encoding=JSON)
            return rest_json.encode_predict_response(result.outputs, fmt, core.limits.max_response_bytes)
        if api == "metadata":
            return rest_json.dumps(metadata_json(metadata_response(core, ref, [SIGNATURE_DEF_FIELD])))
        return rest_json.dumps(status_json(status_response(core, ref)))


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
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{verb} is not available: the model exports predict signatures only",
            )
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
    return ModelRef(name, _version(version) if version else None, unquote(label or ""))


def _version(text: str) -> int:
    """A version path segment as TF Serving reads it (absl::SimpleAtoi into int64)."""
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(INT64_MAX)) or int(digits) > INT64_MAX:
        shown = text if len(text) <= 40 else f"{text[:40]}...({len(text)} digits)"
        raise invalid_argument(f"Failed to convert version: {shown} to numeric.")
    return int(digits)


async def build_rest_server(
    core: ServerCore,
    metrics: ServingMetrics,
    host: str,
    port: int,
    executor: Executor,
    monitoring_path: str | None,
    timeout: float,
    max_connections: int,
) -> HttpServer:
    """A bound (not yet serving) REST server; raises OSError if it cannot listen."""
    server = HttpServer(
        RestApi(core, metrics, monitoring_path, request_timeout=timeout),
        executor,
        core.limits.max_request_bytes,
        timeout=timeout,
        max_connections=max_connections,
    )
    try:
        await server.bind(host, port)
    except OSError as err:
        raise OSError(f"cannot listen for REST on {host}:{port}: {err.strerror or err}") from None
    return server
