"""TensorProto ⇄ numpy for the gRPC API, refusing what would be expensive to build.

A TensorProto may declare a shape far larger than the values it carries:
TensorFlow (and `tf.make_ndarray`) repeats the last value to fill it, so 67 bytes
on the wire could become 1,024 decoded images. Here the carried values must
match the declared shape exactly, and rows are capped, before anything is built.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.errors import invalid_argument
from serving.limits import MAX_TENSOR_DIMS, RequestLimits, response_too_large

# dtype → (TensorProto field with the values, proto values per element)
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


def tensor_to_array(alias: str, proto, limits: RequestLimits) -> np.ndarray:
    """TensorProto → array, or INVALID_ARGUMENT (TF Serving's "tensor parsing error")."""
    parsing_error = f"tensor parsing error: {alias}"
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"{parsing_error}: the shape has an unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument(f"{parsing_error}: negative dimension in shape {dims}")
    if len(dims) > MAX_TENSOR_DIMS:
        raise invalid_argument(f"{parsing_error}: {len(dims)} dimensions, more than {MAX_TENSOR_DIMS}")
    elements = math.prod(dims)
    if proto.dtype not in _VALUE_FIELDS:
        raise invalid_argument(f"{parsing_error}: unsupported dtype {proto.dtype}")
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING:
            raise invalid_argument(f"{parsing_error}: string tensors cannot use tensor_content")
        itemsize = tf.dtypes.as_dtype(proto.dtype).size
        if len(proto.tensor_content) != elements * itemsize:
            raise invalid_argument(
                f"{parsing_error}: shape {dims} needs {elements * itemsize} bytes of "
                f"tensor_content, got {len(proto.tensor_content)}"
            )
    else:
        field, per_element = _VALUE_FIELDS[proto.dtype]
        carried = len(getattr(proto, field))
        if carried != elements * per_element:
            raise invalid_argument(
                f"{parsing_error}: shape {dims} declares {elements} values but the tensor "
                f"carries {carried // per_element}"
            )
    if dims:
        limits.check_rows(alias, dims[0])
    try:
        return tf.make_ndarray(proto)
    except Exception:  # anything else malformed in the proto
        raise invalid_argument(parsing_error)


def response_bytes(outputs: dict[str, np.ndarray]) -> int:
    """About what the outputs take in a PredictResponse (values, not framing)."""
    total = 0
    for array in outputs.values():
        if array.dtype.kind in "OSU":
            total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in array.flat)
            total += 2 * array.size
        else:
            total += array.nbytes
    return total


def outputs_to_protos(outputs: dict[str, np.ndarray], limits: RequestLimits) -> dict:
    size = response_bytes(outputs)
    if size > limits.max_response_bytes:
        raise response_too_large(size, limits.max_response_bytes)
    return {alias: tf.make_tensor_proto(value) for alias, value in outputs.items()}
