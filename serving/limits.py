"""Request limits and a request's deadline/cancellation, shared by both front ends.

Every limit is checked before the work it protects: rows and value counts before
a tensor is built, JSON size and depth before it is parsed, response size before
(when the output shapes tell) and while it is encoded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from btmri.documents import SERVER_DEFAULTS
from serving.errors import ServingError, invalid_argument

MAX_TENSOR_DIMS = 32  # numpy's limit; TensorFlow's is 254, no model here needs more


@dataclass(frozen=True)
class RequestLimits:
    max_rows: int = SERVER_DEFAULTS.max_rows  # rows (dimension 0) per input
    max_request_bytes: int = SERVER_DEFAULTS.max_message_bytes  # gRPC message / REST body
    max_response_bytes: int = SERVER_DEFAULTS.max_response_bytes  # serialized response
    max_json_values: int = SERVER_DEFAULTS.max_json_values  # values in one REST body
    max_json_depth: int = MAX_TENSOR_DIMS + 4  # object, inputs/instances, row object, b64 object
    rows_per_call: int = 16  # larger requests run the model in slices of this many

    def check_rows(self, alias: str, rows: int) -> None:
        if rows > self.max_rows:
            raise invalid_argument(
                f"input {alias} has {rows} rows; this server takes at most {self.max_rows} "
                f"rows per request: send them in several requests"
            )


def response_too_large(size: int, limit: int, exact: bool = True) -> ServingError:
    what = f"{size} bytes" if exact else f"at least {size} bytes"
    return ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"Response larger than max ({what} vs. {limit}): ask for fewer rows per request",
    )


class RequestContext:
    """A request's deadline and cancellation, checked before the model runs."""

    def __init__(self, timeout: float | None = None):
        self.deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raises CANCELLED or DEADLINE_EXCEEDED when the answer is no longer wanted."""
        if self._cancelled.is_set():
            raise ServingError(grpc.StatusCode.CANCELLED, "Request was cancelled")
        if self.expired():
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


NO_CONTEXT = RequestContext()
