"""Request handling shared by the gRPC and REST front ends (TF Serving's ServerCore).

Front ends turn wire formats into numpy arrays and call these methods; every
failure is a `ServingError` with TF Serving's code and text.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf

from serving.batching import BatchScheduler
from serving.errors import ServingError, invalid_argument
from serving.loader import DEFAULT_SIGNATURE, Signature, dtype_of
from serving.manager import ServableManager, VersionStatus


@dataclass
class ModelRef:
    """The fields of a ModelSpec that select a servable."""
    name: str
    version: int | None = None
    version_label: str = ""

    def check(self) -> None:
        if not self.name:
            raise invalid_argument("ModelSpec has no name specified.")
        if self.version_label:
            raise invalid_argument(
                "ModelSpec has 'version_label' set, but it is not currently allowed by the server.")


@dataclass
class PredictResult:
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


class ServerCore:
    def __init__(self, manager: ServableManager, batcher: BatchScheduler | None = None):
        self.manager = manager
        self.batcher = batcher

    def predict(self, model: ModelRef, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter=()) -> PredictResult:
        model.check()
        signature_name = signature_name or DEFAULT_SIGNATURE
        with self.manager.servable(model.name, model.version) as servable:
            signature = servable.signature(signature_name)
            aliases = signature.check_request(inputs, list(output_filter))
            outputs = self._run(servable, signature, inputs)
            return PredictResult(servable.version, signature_name,
                                 {alias: outputs[alias] for alias in aliases})

    def _run(self, servable, signature: Signature, inputs: dict[str, np.ndarray]):
        if self.batcher is None or not signature.batchable:
            return signature.run(inputs)
        rows = {array.shape[0] for array in inputs.values()}
        if len(rows) != 1:
            return signature.run(inputs)   # inconsistent batch sizes: let the model say why
        # Only requests with the same layout can be concatenated.
        layout = tuple(sorted((name, array.shape[1:], dtype_of(array).name)
                              for name, array in inputs.items()))
        key = (servable.version, signature.name, layout)
        return self.batcher.run(key, inputs, rows.pop(), signature.run)

    def input_dtypes(self, model: ModelRef, signature_name: str) -> dict[str, tf.DType]:
        """Input aliases and dtypes of a signature: what REST needs to read JSON values.

        The REST API's own text for an unknown signature differs from Predict's
        (http_rest_api_handler.cc, GetInfoMap); kept for fidelity.
        """
        model.check()
        key = signature_name or DEFAULT_SIGNATURE
        with self.manager.servable(model.name, model.version) as servable:
            if key not in servable.signatures:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            return {alias: spec.dtype for alias, spec in servable.signatures[key].inputs.items()}

    def metadata(self, model: ModelRef, fields) -> tuple[int, dict]:
        """(version, SignatureDefs by key) for GetModelMetadata."""
        if not fields:
            raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise invalid_argument(f"Metadata field {field} is not supported")
        model.check()
        with self.manager.servable(model.name, model.version) as servable:
            return servable.version, servable.signature_defs

    def status(self, model: ModelRef) -> list[tuple[int, VersionStatus]]:
        """Version states for GetModelStatus, highest version first (as TF Serving lists them)."""
        if not model.name:
            raise invalid_argument("ModelSpec has no name specified.")
        statuses = self.manager.statuses() if model.name == self.manager.model_name else {}
        if model.version is not None:
            if model.version not in statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {model.version} of model {model.name}")
            return [(model.version, statuses[model.version])]
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {model.name}")
        return sorted(statuses.items(), reverse=True)
