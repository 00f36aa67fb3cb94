"""gRPC front end: TF Serving's PredictionService and ModelService, plus gRPC health.

The servicers implement the official `tensorflow_serving.apis` services on the
official messages, so any TF Serving client (these stubs, or another
language's) talks to this server unchanged.

The server is `grpc.aio`: gRPC's transport reads request messages on the event
loop, so a client that opens streams and never sends its message holds no
thread. Only a fully received request takes a worker thread (the shared
executor) to build tensors and run the model. Bounds:
- request size: `grpc.max_receive_message_length` (RESOURCE_EXHAUSTED before
  Python sees it); rows and values: checked before tensors are built;
- time: a request message must arrive within `client_timeout` seconds of its
  call's start (else DEADLINE_EXCEEDED); connections without calls close after
  5 minutes; the TLS/HTTP2 handshake must finish within `client_timeout`;
- concurrency: `max_calls` calls at once (more get RESOURCE_EXHAUSTED). (No
  per-connection stream limit: grpc's `max_concurrent_streams` made this server
  refuse streams (RST_STREAM REFUSED_STREAM) under plain concurrent load);
- a call cancelled by its client, or past its deadline, stops before the model runs.
Client errors are logged as one line each; no traceback unless the server is at fault.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from serving.core import PROTO, ServerCore
from serving.errors import ServingError, client_text, invalid_argument, one_line, redact_paths
from serving.limits import RequestContext, RequestLimits
from serving.messages import metadata_response, model_ref, status_response
from serving.prometheus_metrics import ServingMetrics
from serving.tensors import outputs_to_protos, tensor_to_array  # noqa: F401  (tensor_to_array: API)

log = logging.getLogger("serving")

IDLE_CONNECTION_MS = 5 * 60 * 1000
_DESERIALIZE_IN_WORKER_BYTES = 256 * 1024  # larger requests are parsed off the event loop


class _Calls:
    """Runs handlers off the event loop, turns ServingErrors into gRPC statuses, and
    records every call's metrics and (for failures) one log line."""

    def __init__(self, metrics: ServingMetrics, executor: Executor, entrypoint: str = "GRPC"):
        self.metrics = metrics
        self.executor = executor
        self.entrypoint = entrypoint

    async def run(self, context, model_name: str, api: str, work, in_worker: bool = True):
        """`work(request_context)` → response, in a worker thread (or inline when cheap)."""
        start = time.monotonic()
        request_context = RequestContext(context.time_remaining())
        context.add_done_callback(lambda _: request_context.cancel())
        failure, response = None, None
        try:
            request_context.check()
            if in_worker:
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(self.executor, work, request_context)
            else:
                response = work(request_context)
        except ServingError as err:
            failure = err
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            request_context.cancel()
            self.metrics.record(model_name, api, self.entrypoint, "CANCELLED", time.monotonic() - start)
            log.info("gRPC %s from %s: cancelled by the client", api, context.peer())
            raise
        except Exception as err:  # a bug here, not the caller's fault: say so, keep serving
            log.exception("%s failed", api)
            failure = ServingError(
                grpc.StatusCode.INTERNAL, client_text(redact_paths(f"{type(err).__name__}: {err}"))
            )
        status = failure.code.name if failure else "OK"
        self.metrics.record(model_name, api, self.entrypoint, status, time.monotonic() - start)
        if failure is not None:
            log.info(
                "gRPC %s %s from %s: %s", api, failure.code.name, context.peer(), one_line(failure.message)
            )
            await context.abort(failure.code, failure.message)
        return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify/Regress/MultiInference stay UNIMPLEMENTED
    (the model exports predict signatures only)."""

    def __init__(self, core: ServerCore, calls: _Calls, limits: RequestLimits):
        self.core = core
        self.calls = calls
        self.limits = limits

    async def Predict(self, request, context):
        return await self.calls.run(
            context, request.model_spec.name, "Predict", lambda rc: self._predict(request, rc)
        )

    def _predict(self, request, request_context: RequestContext):
        inputs = {
            alias: tensor_to_array(alias, proto, self.limits) for alias, proto in request.inputs.items()
        }
        result = self.core.predict(
            model_ref(request.model_spec),
            request.model_spec.signature_name,
            inputs,
            request.output_filter,
            request_context,
            PROTO,
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for alias, proto in outputs_to_protos(result.outputs, self.limits).items():
            response.outputs[alias].CopyFrom(proto)
        return response

    async def GetModelMetadata(self, request, context):
        def work(_):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return metadata_response(self.core, model_ref(request.model_spec), request.metadata_field)

        return await self.calls.run(
            context, request.model_spec.name, "GetModelMetadata", work, in_worker=False
        )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (one model, from flags)."""

    def __init__(self, core: ServerCore, calls: _Calls):
        self.core = core
        self.calls = calls

    async def GetModelStatus(self, request, context):
        def work(_):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            return status_response(self.core, model_ref(request.model_spec))

        return await self.calls.run(context, request.model_spec.name, "GetModelStatus", work, in_worker=False)


class _ReceiveTimeout(grpc.aio.ServerInterceptor):
    """Unary calls read their request message here, within `seconds`, and parse it
    themselves: a stalled upload ends with DEADLINE_EXCEEDED, and a message that is
    not the method's protobuf with INVALID_ARGUMENT (not a server traceback).
    On the wire a unary call is a stream of one message, so clients see no difference."""

    def __init__(self, seconds: float, executor: Executor):
        self.seconds = seconds
        self.executor = executor

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        inner, parse, method = handler.unary_unary, handler.request_deserializer, details.method
        seconds, executor = self.seconds, self.executor

        async def behaviour(request_iterator, context):
            try:
                raw = await asyncio.wait_for(request_iterator.__anext__(), seconds)
            except asyncio.TimeoutError:
                log.info(
                    "gRPC %s from %s: request message not received within %g s",
                    method,
                    context.peer(),
                    seconds,
                )
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"request message not received within {seconds:g} s"
                )
            except StopAsyncIteration:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            try:
                if parse is None:
                    request = raw
                elif len(raw) > _DESERIALIZE_IN_WORKER_BYTES:
                    request = await asyncio.get_running_loop().run_in_executor(executor, parse, raw)
                else:
                    request = parse(raw)
            except (DecodeError, ValueError, TypeError) as err:
                log.info(
                    "gRPC %s from %s: unparsable request message (%s)",
                    method,
                    context.peer(),
                    one_line(str(err), 100),
                )
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request message cannot be parsed")
            return await inner(request, context)

        return grpc.stream_unary_rpc_method_handler(
            behaviour, request_deserializer=None, response_serializer=handler.response_serializer
        )


def build_grpc_server(
    core: ServerCore,
    metrics: ServingMetrics,
    address: str,
    limits: RequestLimits,
    executor: Executor,
    client_timeout: float,
    max_calls: int,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """An aio gRPC server bound to `address` (call from the event loop; start it later);
    raises OSError if it cannot bind."""
    server = grpc.aio.server(
        interceptors=[_ReceiveTimeout(client_timeout, executor)],
        maximum_concurrent_rpcs=max_calls,
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            (
                "grpc.max_send_message_length",
                max(limits.max_request_bytes, limits.max_response_bytes + (1 << 20)),
            ),
            ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
            ("grpc.server_handshake_timeout_ms", int(client_timeout * 1000)),
            ("grpc.keepalive_time_ms", 60_000),  # ping quiet connections: find dead peers
            ("grpc.keepalive_timeout_ms", 20_000),
            # Without this a second server could silently share the port.
            ("grpc.so_reuseport", 0),
        ],
    )
    calls = _Calls(metrics, executor)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, calls, limits), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, calls), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises when the port is taken
        raise OSError(f"cannot listen for gRPC on {address}: {err}") from None
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, health_servicer


async def set_health(
    health_servicer, model_name: str, serving: bool, whole_server: bool | None = None
) -> None:
    """A model's name reports SERVING once one of its versions is available; '' (the whole
    server) once every model has one (`whole_server`; default: the same as `serving`)."""

    def status(up: bool):
        return health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING

    await health_servicer.set(model_name, status(serving))
    await health_servicer.set("", status(serving if whole_server is None else whole_server))
