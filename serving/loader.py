"""Loading one version of a SavedModel and running its signatures.

`load_servable` turns a version folder into a `Servable`: the SignatureDefs as
TF Serving reports them (read from saved_model.pb, so GetModelMetadata returns
the same protos as the official server) and the callable signature functions.
Request checks follow TF Serving's predict_util.cc, with its message texts.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import (
    ServingError,
    client_text,
    code_from_number,
    invalid_argument,
    redact_paths,
    signature_not_found,
)
from serving.limits import NO_CONTEXT, RequestContext

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = "serving_default"  # tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
SERVE_TAG = "serve"

# Eager execution wraps a graph error in a preamble and an op suffix that TF
# Serving's session-based errors do not have; clients get the core message.
_TF_PREAMBLE = re.compile(r"^Graph execution error:.*?<stack traces unavailable>\n", re.S)
_TF_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")
# Graph node references (`[[{{node decode_image/DecodeImage}}]]`) are graph internals.
_TF_NODE_REF = re.compile(r"\s*\[\[\{\{(?:function_)?node [^\]]*\]\]")


# tf.debugging.Assert's wrapper around the model's own message: `assertion failed: [text]`.
_TF_ASSERT = re.compile(r"^assertion failed: \[(.*)\]$", re.S)


def clean_tf_message(message: str) -> str:
    """A TensorFlow error as a client should see it: the core message, without the
    eager preamble, op and node references, assertion wrapper, or server paths;
    bounded in length."""
    text = _TF_NODE_REF.sub("", _TF_OP_SUFFIX.sub("", _TF_PREAMBLE.sub("", message))).strip()
    assertion = _TF_ASSERT.match(text)
    if assertion and "] [" not in assertion.group(1):
        text = assertion.group(1)
    return client_text(redact_paths(text))


def dtype_of(array: np.ndarray) -> tf.DType:
    """The TensorFlow dtype of a request array; strings travel as object arrays of bytes."""
    if array.dtype.kind in "OSU":
        return tf.string
    return tf.as_dtype(array.dtype)


@dataclass
class Signature:
    """One callable signature with its input specs and output names."""

    name: str
    function: object  # a ConcreteFunction taking keyword tensors
    inputs: dict[str, tf.TensorSpec]
    outputs: tuple[str, ...]
    batchable: bool  # every input and output has a leading batch dim
    output_specs: dict = None  # alias → tf.TensorSpec

    def check_request(self, inputs: dict[str, np.ndarray], output_filter) -> list[str]:
        """Validates a request as TF Serving does; returns the output aliases to answer."""
        names, expected = set(inputs), set(self.inputs)
        if len(names) != len(expected):
            raise invalid_argument(
                f"input size does not match signature: {len(names)}!={len(expected)} "
                f"len({{{','.join(sorted(names))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(names - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - names))}}}."
            )
        for alias in sorted(names):
            if alias not in self.inputs:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
                )
            spec, array = self.inputs[alias], inputs[alias]
            if dtype_of(array) != spec.dtype:
                raise invalid_argument(
                    f"input {alias}: expected a {spec.dtype.name} tensor but got {dtype_of(array).name}"
                )
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid_argument(
                    f"input {alias}: shape {list(array.shape)} is not compatible with the "
                    f"signature's shape {spec.shape.as_list() if spec.shape.rank is not None else '<unknown>'}"
                )
        aliases, seen = [], set()
        for alias in output_filter:
            if alias not in self.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(sorted(self.outputs))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
            aliases.append(alias)
        return aliases or sorted(self.outputs)

    def run(
        self, inputs: dict[str, np.ndarray], context: RequestContext = NO_CONTEXT
    ) -> dict[str, np.ndarray]:
        """Runs the signature on checked inputs; TF errors become the matching status.
        A cancelled or expired request stops here, before the model runs."""
        context.check()
        tensors = {
            alias: tf.constant(array, dtype=self.inputs[alias].dtype) for alias, array in inputs.items()
        }
        try:
            outputs = self.function(**tensors)
        except tf.errors.OpError as err:
            raise ServingError(code_from_number(err.error_code), clean_tf_message(err.message))
        except (ValueError, TypeError) as err:  # a call the function's own checks reject
            raise invalid_argument(clean_tf_message(str(err)))
        return {name: value.numpy() for name, value in outputs.items()}

    def per_row_elements(self, alias: str) -> int | None:
        """Elements per row of an output when its shape is known beyond the batch dim."""
        spec = (self.output_specs or {}).get(alias)
        if spec is None or spec.shape.rank is None or spec.shape.rank < 1:
            return None
        dims = spec.shape.as_list()[1:]
        if any(d is None for d in dims):
            return None
        return int(np.prod(dims, dtype=np.int64)) if dims else 1


class Servable:
    """A loaded model version: what the manager hands to requests."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        signatures: dict[str, Signature],
        signature_defs: dict[str, meta_graph_pb2.SignatureDef],
        keep_alive: object,
    ):
        self.name = name
        self.version = version
        self.path = path
        self.signatures = signatures
        self.signature_defs = signature_defs
        self._keep_alive = keep_alive  # the loaded object owns the variables the functions use

    def signature(self, key: str) -> Signature:
        key = key or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise signature_not_found(key)
        return self.signatures[key]

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version})"


def _batchable(inputs: dict[str, tf.TensorSpec], outputs: dict[str, tf.TensorSpec]) -> bool:
    def leading_none(spec) -> bool:
        return spec.shape.rank is not None and spec.shape.rank >= 1 and spec.shape[0] is None

    return all(map(leading_none, inputs.values())) and all(map(leading_none, outputs.values()))


def read_signature_defs(path: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the 'serve' MetaGraph, as TF Serving loads them."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path}: no MetaGraph tagged '{SERVE_TAG}'")


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads a version folder; raises on anything that would make it unservable."""
    start = time.monotonic()
    signature_defs = read_signature_defs(path)
    loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
    signatures = {}
    for key, function in loaded.signatures.items():
        inputs = dict(function.structured_input_signature[1])
        outputs = dict(function.structured_outputs)
        signatures[key] = Signature(
            key, function, inputs, tuple(outputs), _batchable(inputs, outputs), output_specs=outputs
        )
    if not signatures:
        raise ValueError(f"{path}: the SavedModel has no serving signatures")
    log.debug("read %s version %d in %.1f s", name, version, time.monotonic() - start)
    return Servable(name, version, path, signatures, signature_defs, keep_alive=loaded)
