"""TF Serving's REST JSON tensor formats (tensorflow_serving/util/json_tensor.cc).

Request: `{"signature_name": ..., "instances": [...]}` (row format: one entry
per example, an object per example when the signature has several inputs) or
`{"inputs": ...}` (columnar: one value, or an object of named values). String
inputs may be `{"b64": "..."}`. Response: `{"predictions": [...]}` for row
requests, `{"outputs": ...}` for columnar ones; string outputs whose name ends
in `_bytes` come back as `{"b64": ...}`. Error texts follow json_tensor.cc.

Bounded cost: before parsing, the body's values (commas, brackets and braces
outside strings bound them) and nesting depth are checked against
`RequestLimits`; rows are checked before any array is built and a tensor may
have at most 32 dimensions. Responses are encoded row by row and refused
(RESOURCE_EXHAUSTED) as soon as they pass `max_response_bytes`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from serving.errors import invalid_argument
from serving.limits import MAX_TENSOR_DIMS, RequestLimits, response_too_large

ROW, COLUMNAR = "row", "columnar"


def _debug(value) -> str:
    return json.dumps(value, separators=(",", ":"))[:200]


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, (int, float)):
        return "Number"
    return {str: "String", list: "Array", dict: "Object"}.get(type(value), type(value).__name__)


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _type_error(value, dtype: tf.DType):
    return invalid_argument(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {dtype.name}"
    )


def _leaf(value, dtype: tf.DType):
    """One JSON scalar → a value of `dtype`."""
    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            if not _is_b64(value):
                raise invalid_argument(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid_argument("Unable to base64 decode")
        raise _type_error(value, dtype)
    if dtype == tf.bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype.is_integer:
        if isinstance(value, float) or not (dtype.min <= value <= dtype.max):
            raise _type_error(value, dtype)
        return value
    if dtype.is_floating:
        return value
    raise invalid_argument(f"tensor type {dtype.name} is not supported by the REST API")


def _dtype_and_rank(spec) -> tuple[tf.DType, int | None]:
    """An input's dtype and rank from what the model says (a TensorSpec, or just a dtype)."""
    if isinstance(spec, tf.TensorSpec):
        return spec.dtype, spec.shape.rank
    return spec, None


def value_to_array(value, dtype: tf.DType, rank: int | None = None, name: str = "") -> np.ndarray:
    """A (nested list) JSON value → a dense array; the shape comes from the first elements.
    With `rank`, a value of another rank is refused before any element is converted."""
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_TENSOR_DIMS:
            raise invalid_argument(f"JSON Value: {_debug(value)} has more than {MAX_TENSOR_DIMS} dimensions")
        if not probe:
            break
        probe = probe[0]
    if rank is not None and len(shape) != rank:
        raise invalid_argument(
            f"input {name}: shape {shape} is not compatible with the signature's rank {rank}"
        )
    flat = []

    def fill(v, level: int):
        if not isinstance(v, list):
            if level != len(shape):
                raise invalid_argument(
                    f"JSON Value: {_debug(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                    f"Expected at level: {len(shape)}"
                )
            flat.append(_leaf(v, dtype))
            return
        if level >= len(shape):
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(v)} at level: {level} "
                f"expected size: {shape[level]}"
            )
        for item in v:
            fill(item, level + 1)

    fill(value, 0)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    array = np.empty(len(flat), dtype=np_dtype)
    array[:] = flat
    return array.reshape(shape)


def _instances(instances: list, dtypes: dict[str, tf.DType], limits: RequestLimits) -> dict[str, np.ndarray]:
    limits.check_rows("instances", len(instances))
    first = instances[0]
    named = isinstance(first, dict) and not _is_b64(first)
    if not named and len(dtypes) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    columns: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
    for i, item in enumerate(instances):
        item_named = isinstance(item, dict) and not _is_b64(item)
        if named != item_named:
            raise invalid_argument(
                f"Expecting {'object but got list' if named else 'value/list but got object'}"
                f" at item {i} of input list"
            )
        values = item if named else {next(iter(dtypes)): item}
        for name, value in values.items():
            if name not in dtypes:
                raise invalid_argument(
                    f"Failed to process element: {i} key: {name} of 'instances' "
                    f"list. Error: JSON object: does not have named input: {name}"
                )
            try:
                dtype, rank = _dtype_and_rank(dtypes[name])
                array = value_to_array(value, dtype, rank - 1 if rank else None, name)
            except Exception as err:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. "
                    f"Error: {getattr(err, 'message', err)}"
                )
            if columns[name] and columns[name][0].shape != array.shape:
                raise invalid_argument(
                    f"Expecting shape {list(columns[name][0].shape)} but got: {list(array.shape)}"
                )
            columns[name].append(array)
        if set(values) != set(dtypes):
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{_debug(item)} keys must be equal to: {','.join(sorted(dtypes))}"
            )
    return {name: np.stack(arrays) for name, arrays in columns.items()}


def _inputs(inputs, dtypes: dict[str, tf.DType], limits: RequestLimits) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(dtypes) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        named = {next(iter(dtypes)): inputs}
    else:
        named = {}
        for name in dtypes:
            if name not in inputs:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            named[name] = inputs[name]
    for name, value in named.items():
        if isinstance(value, list):
            limits.check_rows(name, len(value))
    arrays = {}
    for name, value in named.items():
        dtype, rank = _dtype_and_rank(dtypes[name])
        arrays[name] = value_to_array(value, dtype, rank, name)
    return arrays


# A JSON string (escapes included), and every byte that is not structure.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},")


def check_json_cost(body, limits: RequestLimits) -> None:
    """Refuses, before parsing, a body with more values or deeper nesting than allowed.

    Commas plus openers bound the number of values; strings are stripped only when
    that quick bound is over a limit (commas or brackets inside strings would
    otherwise count)."""
    openers = body.count(b"[") + body.count(b"{")
    values = body.count(b",") + openers + 1
    if values <= limits.max_json_values and openers <= limits.max_json_depth:
        return
    strings = (body.count(b'"') - body.count(b'\\"')) // 2  # each string is a value
    if strings > limits.max_json_values:
        raise invalid_argument(
            f"JSON Parse error: the document has at least {strings} values, "
            f"more than the {limits.max_json_values} a request may carry"
        )
    structure = _JSON_STRING.sub(b"", body).translate(None, _NOT_STRUCTURE)
    values = structure.count(b",") + structure.count(b"[") + structure.count(b"{") + 1
    if values > limits.max_json_values:
        raise invalid_argument(
            f"JSON Parse error: the document has about {values} values, more "
            f"than the {limits.max_json_values} a request may carry"
        )
    codes = np.frombuffer(structure, np.uint8)
    steps = np.zeros(len(codes), np.int32)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    depth = int(np.cumsum(steps).max()) if len(steps) else 0
    if depth > limits.max_json_depth:
        raise invalid_argument(
            f"JSON Parse error: nesting depth {depth} is more than the "
            f"{limits.max_json_depth} levels a request may have"
        )


def parse_predict_request(
    body: bytes, input_dtypes: Callable[[str], dict[str, tf.DType]], limits: RequestLimits = RequestLimits()
) -> tuple[str, dict[str, np.ndarray], str]:
    """(signature name, input arrays, ROW|COLUMNAR). `input_dtypes(signature)` looks up the model."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    check_json_cost(body, limits)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid_argument(f"JSON Parse error: {err}")
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply")
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_debug(doc)} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid_argument(
            f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    dtypes = input_dtypes(signature)
    if "instances" in doc and "inputs" in doc:
        raise invalid_argument(
            f"JSON Value: {_debug(doc)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        return signature, _instances(instances, dtypes, limits), ROW
    if "inputs" in doc:
        return signature, _inputs(doc["inputs"], dtypes, limits), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _to_json(name: str, array: np.ndarray):
    if array.dtype.kind in "OSU":
        as_b64 = name.endswith("_bytes")

        def convert(v):
            v = v if isinstance(v, bytes) else str(v).encode()
            return (
                {"b64": base64.b64encode(v).decode("ascii")}
                if as_b64
                else v.decode("utf-8", errors="replace")
            )

        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def format_predict_response(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    values = {name: _to_json(name, array) for name, array in sorted(outputs.items())}
    if fmt == COLUMNAR:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {np.shape(array)[0] if np.ndim(array) else None for array in outputs.values()}
    if None in batch:
        raise invalid_argument("Tensor has no shape information")
    if len(batch) > 1:
        raise invalid_argument(
            "Tensors have inconsistent batch sizes: " + ", ".join(f"{n}: {len(v)}" for n, v in values.items())
        )
    rows = batch.pop()
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(rows)]}


class _Writer:
    """Collects JSON pieces; refuses as soon as they pass `limit` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > self.limit:
            raise response_too_large(self.size, self.limit, exact=False)
        self.parts.append(text)

    def array(self, name: str, array: np.ndarray) -> None:
        """As json.dumps(_to_json(name, array)) writes it, one row at a time."""
        if array.ndim == 0:
            self.write(_dump(_to_json(name, array)))
            return
        self.write("[")
        for i in range(len(array)):
            if i:
                self.write(", ")
            self.write(_dump(_to_json(name, _row(array, i))))
        self.write("]")

    def bytes(self) -> bytes:
        return "".join(self.parts).encode()


def _row(array: np.ndarray, i: int) -> np.ndarray:
    """array[i] as an array (a 0-d one for vectors, keeping bytes exactly)."""
    item = array[i]
    if isinstance(item, np.ndarray):
        return item
    row = np.empty((), dtype=array.dtype)
    row[()] = item
    return row


def _dump(value) -> str:
    return json.dumps(value, allow_nan=True)


def encode_predict_response(outputs: dict[str, np.ndarray], fmt: str, max_bytes: int) -> bytes:
    """`dumps(format_predict_response(outputs, fmt))`, built row by row within `max_bytes`."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    least = sum(2 * array.size for array in outputs.values())
    if least > max_bytes:
        raise response_too_large(least, max_bytes, exact=False)
    names = sorted(outputs)
    out = _Writer(max_bytes)
    if fmt == COLUMNAR:
        if len(names) == 1:
            out.write('{"outputs": ')
            out.array(names[0], outputs[names[0]])
        else:
            out.write('{"outputs": {')
            for i, name in enumerate(names):
                out.write((", " if i else "") + _dump(name) + ": ")
                out.array(name, outputs[name])
            out.write("}")
        out.write("}")
        return out.bytes()
    batch = {np.shape(array)[0] if np.ndim(array) else None for array in outputs.values()}
    if None in batch:
        raise invalid_argument("Tensor has no shape information")
    if len(batch) > 1:
        raise invalid_argument(
            "Tensors have inconsistent batch sizes: " + ", ".join(f"{n}: {len(outputs[n])}" for n in names)
        )
    if len(names) == 1:
        out.write('{"predictions": ')
        out.array(names[0], outputs[names[0]])
        out.write("}")
        return out.bytes()
    out.write('{"predictions": [')
    for i in range(batch.pop()):
        out.write(
            (", " if i else "") + _dump({name: _to_json(name, _row(outputs[name], i)) for name in names})
        )
    out.write("]}")
    return out.bytes()


def dumps(document: dict) -> bytes:
    """JSON as TF Serving writes it (NaN and Infinity pass through as literals)."""
    return json.dumps(document, allow_nan=True).encode()
