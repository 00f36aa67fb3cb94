"""Request errors with TF Serving's status codes, message texts and HTTP mapping.

Both front ends (gRPC and REST) raise and report the same `ServingError`, so a
client sees the same code and text whichever protocol it speaks, and the same
as from the official `tensorflow_model_server`.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import grpc

Code = grpc.StatusCode

# TF Serving's model_servers/http_server.cc maps status codes to HTTP this way.
_HTTP_STATUS = {
    Code.OK: HTTPStatus.OK,
    Code.CANCELLED: 499,  # nginx's "client closed request", as TF Serving uses
    Code.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    Code.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    Code.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    Code.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Code.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    Code.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    Code.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    Code.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    Code.ABORTED: HTTPStatus.CONFLICT,
    Code.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    Code.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    Code.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    Code.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
    Code.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}

# tf.errors.OpError.error_code uses the same numbering as gRPC status codes.
_BY_NUMBER = {code.value[0]: code for code in Code}


class ServingError(Exception):
    """A request that cannot be answered: a status code plus a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return int(_HTTP_STATUS.get(self.code, HTTPStatus.INTERNAL_SERVER_ERROR))

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def code_from_number(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, Code.UNKNOWN)


def invalid_argument(message: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, message)


def servable_not_found(model_name: str, version: int | None) -> ServingError:
    """TF Serving's text for a model or version that is not loaded (ServableRequest::DebugString)."""
    request = f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
    return ServingError(Code.NOT_FOUND, f"Servable not found for request: {request}")


def signature_not_found(signature_name: str) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.')


# Absolute paths in texts that reach clients: a model's own errors (TensorFlow's,
# the loader's) may name server folders; clients get `<path>` instead.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/>-])/(?:[\w.@+=,~-]+/)*[\w.@+=,~-]+/?")
MAX_CLIENT_MESSAGE_CHARS = 2000


def redact_paths(text: str, roots: dict[str, str] | None = None) -> str:
    """`text` without absolute server paths: each of `roots` (path → placeholder, e.g.
    the model base path → '<model base path>') is replaced first, then any other
    absolute path by '<path>'."""
    for root, placeholder in sorted((roots or {}).items(), key=lambda item: -len(item[0])):
        if root:
            text = text.replace(root, placeholder)
    return _ABSOLUTE_PATH.sub("<path>", text)


def client_text(text: str) -> str:
    """A message bounded in length for a client (and for the one-line server log)."""
    if len(text) > MAX_CLIENT_MESSAGE_CHARS:
        return text[:MAX_CLIENT_MESSAGE_CHARS] + f"... ({len(text)} characters)"
    return text


def one_line(text: str, limit: int = 300) -> str:
    """For the server log: one line, bounded."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
