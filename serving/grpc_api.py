"""gRPC front end: TF Serving's PredictionService and ModelService, plus gRPC health.

The servicers implement the official `tensorflow_serving.apis` services on the
official messages, so any TF Serving client (these stubs, or another
language's) talks to this server unchanged. Request size is limited by gRPC
itself (`grpc.max_receive_message_length`): a larger request gets
RESOURCE_EXHAUSTED before it reaches Python.
"""
from __future__ import annotations

import contextlib
import logging
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving.core import ServerCore
from serving.errors import ServingError, invalid_argument
from serving.messages import metadata_response, model_ref, status_response
from serving.metrics import ServingMetrics

log = logging.getLogger("serving")


def tensor_to_array(alias: str, proto, max_elements: int) -> np.ndarray:
    """TensorProto → array. A proto may declare a shape far larger than the values it
    carries (TF fills the rest); refusing those keeps a tiny request from allocating
    gigabytes."""
    elements = 1
    for dim in proto.tensor_shape.dim:
        if dim.size < 0:
            raise invalid_argument(f"tensor parsing error: {alias}")
        elements *= dim.size
    if elements > max_elements:
        raise invalid_argument(f"tensor parsing error: {alias} declares {elements} elements, "
                               f"more than a request may carry ({max_elements})")
    try:
        return tf.make_ndarray(proto)
    except Exception:  # malformed TensorProto: wrong dtype enum, content size, ...
        raise invalid_argument(f"tensor parsing error: {alias}")


class _Calls:
    """Turns ServingErrors into gRPC statuses and records every call's metrics."""

    def __init__(self, metrics: ServingMetrics, entrypoint: str = "GRPC"):
        self.metrics = metrics
        self.entrypoint = entrypoint

    @contextlib.contextmanager
    def call(self, context, model_name: str, api: str):
        start = time.monotonic()
        failure = None
        try:
            yield
        except ServingError as err:
            failure = err
        except Exception as err:   # a bug here, not the caller's fault: say so, keep serving
            log.exception("%s failed", api)
            failure = ServingError(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        finally:
            status = failure.code.name if failure else "OK"
            self.metrics.record(model_name, api, self.entrypoint, status, time.monotonic() - start)
        if failure is not None:
            context.abort(failure.code, failure.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify/Regress/MultiInference stay UNIMPLEMENTED
    (the model exports predict signatures only)."""

    def __init__(self, core: ServerCore, calls: _Calls, max_elements: int):
        self.core = core
        self.calls = calls
        self.max_elements = max_elements

    def Predict(self, request, context):
        response = predict_pb2.PredictResponse()
        with self.calls.call(context, request.model_spec.name, "Predict"):
            inputs = {alias: tensor_to_array(alias, proto, self.max_elements)
                      for alias, proto in request.inputs.items()}
            result = self.core.predict(model_ref(request.model_spec),
                                       request.model_spec.signature_name, inputs,
                                       request.output_filter)
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = result.version
            response.model_spec.signature_name = result.signature_name
            for alias, value in result.outputs.items():
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        with self.calls.call(context, request.model_spec.name, "GetModelMetadata"):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            response = metadata_response(self.core, model_ref(request.model_spec),
                                         request.metadata_field)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (one model, from flags)."""

    def __init__(self, core: ServerCore, calls: _Calls):
        self.core = core
        self.calls = calls

    def GetModelStatus(self, request, context):
        response = get_model_status_pb2.GetModelStatusResponse()
        with self.calls.call(context, request.model_spec.name, "GetModelStatus"):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            response = status_response(self.core, model_ref(request.model_spec))
        return response


def build_grpc_server(core: ServerCore, metrics: ServingMetrics, address: str,
                      max_message_bytes: int, workers: int) -> tuple[grpc.Server, health.HealthServicer]:
    """A started-later gRPC server bound to `address`; raises OSError if it cannot bind."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes),
                 # Without this a second server could silently share the port.
                 ("grpc.so_reuseport", 0)])
    calls = _Calls(metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, calls, max_elements=max_message_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, calls), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:   # grpcio raises when the port is taken
        raise OSError(f"cannot listen for gRPC on {address}: {err}") from None
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    return server, health_servicer


def set_health(health_servicer: health.HealthServicer, model_name: str, serving: bool) -> None:
    """'' (the whole server) and the model name report SERVING once a version is available."""
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for service in ("", model_name):
        health_servicer.set(service, status)
