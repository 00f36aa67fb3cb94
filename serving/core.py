"""Request handling shared by the gRPC and REST front ends (TF Serving's ServerCore).

Front ends turn wire formats into numpy arrays and call these methods; every
failure is a `ServingError` with TF Serving's code and text. Rows are capped
(`RequestLimits.max_rows`; the front ends check it before building arrays, this
is the backstop), a response that would exceed the response cap is refused
before the model runs when the output shapes tell, and a request cancelled or
past its deadline stops before the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf

from serving.batching import BatchScheduler
from serving.errors import ServingError, invalid_argument
from serving.limits import NO_CONTEXT, RequestContext, RequestLimits, response_too_large
from serving.loader import DEFAULT_SIGNATURE, Signature, dtype_of
from serving.manager import VersionStatus
from serving.models import ModelSet

PROTO, JSON = "proto", "json"
# Fewest bytes one element takes in a JSON response, separator included ("0.0, ").
_MIN_JSON_BYTES = {"f": 5, "c": 5, "i": 3, "u": 3, "b": 6}


@dataclass
class ModelRef:
    """The fields of a ModelSpec that select a servable."""

    name: str
    version: int | None = None
    version_label: str = ""

    def check(self) -> None:
        if not self.name:
            raise invalid_argument("ModelSpec has no name specified.")


@dataclass
class PredictResult:
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


class ServerCore:
    def __init__(
        self,
        models: ModelSet,
        batcher: BatchScheduler | None = None,
        limits: RequestLimits = RequestLimits(),
        request_log=None,
    ):
        self.models = models
        self.batcher = batcher
        self.limits = limits
        self.request_log = request_log  # serving.request_log.RequestLog: offer() never blocks

    def predict(
        self,
        model: ModelRef,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter=(),
        context: RequestContext = NO_CONTEXT,
        encoding: str = PROTO,
    ) -> PredictResult:
        model.check()
        for alias, array in inputs.items():
            if array.ndim:
                self.limits.check_rows(alias, array.shape[0])
        signature_name = signature_name or DEFAULT_SIGNATURE
        with self.models.servable(model.name, model.version, model.version_label) as servable:
            signature = servable.signature(signature_name)
            aliases = signature.check_request(inputs, list(output_filter))
            self._check_response_size(signature, aliases, inputs, encoding)
            outputs = self._run(servable, signature, inputs, context)
            result = PredictResult(
                servable.version, signature_name, {alias: outputs[alias] for alias in aliases}
            )
        if self.request_log is not None:  # successful calls only, as TF Serving logs them
            self.request_log.offer(model.name, signature_name, inputs, result.version, result.outputs)
        return result

    def _check_response_size(self, signature: Signature, aliases, inputs, encoding: str) -> None:
        """Refuses before running when the outputs' known shapes already exceed the cap."""
        rows = max((array.shape[0] for array in inputs.values() if array.ndim), default=1)
        least = 0
        for alias in aliases:
            per_row = signature.per_row_elements(alias)
            spec = (signature.output_specs or {}).get(alias)
            if per_row is None or spec is None:
                continue
            kind = np.dtype(spec.dtype.as_numpy_dtype).kind if spec.dtype != tf.string else "S"
            if encoding == JSON:
                least += rows * per_row * _MIN_JSON_BYTES.get(kind, 4)
            elif kind != "S":
                least += rows * per_row * spec.dtype.size
        if least > self.limits.max_response_bytes:
            raise response_too_large(least, self.limits.max_response_bytes, exact=False)

    def _run(self, servable, signature: Signature, inputs: dict[str, np.ndarray], context: RequestContext):
        if self.batcher is None or not signature.batchable:
            return self._run_in_slices(signature, inputs, context)
        rows = {array.shape[0] for array in inputs.values()}
        if len(rows) != 1:
            return signature.run(inputs, context)  # inconsistent batch sizes: the model says why
        # Only requests with the same layout can be concatenated.
        layout = tuple(
            sorted((name, array.shape[1:], dtype_of(array).name) for name, array in inputs.items())
        )
        key = (servable.version, signature.name, layout)
        return self.batcher.run(key, inputs, rows.pop(), signature.run, context)

    def _run_in_slices(
        self, signature: Signature, inputs: dict[str, np.ndarray], context: RequestContext
    ) -> dict[str, np.ndarray]:
        """Runs a large request `rows_per_call` rows at a time: the model's working memory
        (e.g. Grad-CAM's activations and gradients) grows with the rows of one call."""
        rows = {array.shape[0] if array.ndim else None for array in inputs.values()}
        step = self.limits.rows_per_call
        if not signature.batchable or len(rows) != 1 or None in rows or (total := rows.pop()) <= step:
            return signature.run(inputs, context)
        parts = [
            signature.run({name: array[i : i + step] for name, array in inputs.items()}, context)
            for i in range(0, total, step)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def input_dtypes(self, model: ModelRef, signature_name: str) -> dict[str, tf.TensorSpec]:
        """Input aliases and specs (dtype, shape) of a signature: what REST needs to read
        JSON values.

        The REST API's own text for an unknown signature differs from Predict's
        (http_rest_api_handler.cc, GetInfoMap); kept for fidelity.
        """
        model.check()
        key = signature_name or DEFAULT_SIGNATURE
        with self.models.servable(model.name, model.version, model.version_label) as servable:
            if key not in servable.signatures:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            return dict(servable.signatures[key].inputs)

    def metadata(self, model: ModelRef, fields) -> tuple[int, dict]:
        """(version, SignatureDefs by key) for GetModelMetadata."""
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        model.check()
        with self.models.servable(model.name, model.version, model.version_label) as servable:
            return servable.version, servable.signature_defs

    def status(self, model: ModelRef) -> list[tuple[int, VersionStatus]]:
        """Version states for GetModelStatus, highest version first (as TF Serving lists them)."""
        if not model.name:
            raise invalid_argument("ModelSpec has no name specified.")
        statuses = self.models.statuses(model.name)
        version = self.models.resolve(model.name, model.version, model.version_label)
        if version is not None:
            if version not in statuses:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {model.name}"
                )
            return [(version, statuses[version])]
        if not statuses:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {model.name}"
            )
        return sorted(statuses.items(), reverse=True)
