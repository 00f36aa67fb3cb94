"""Request logging: sampled Predict calls as TF Serving `PredictionLog` TFRecords.

`btmri serve --request-log DIR` keeps what TF Serving's `logging_config` keeps: one
`tensorflow_serving.apis.prediction_log_pb2.PredictionLog` per logged call, with
`log_metadata` (model name, served version, signature, the sampling rate,
saved_model_tags ["serve"], the time) and `predict_log` (request and response).
What the request keeps depends on `--log-payload` (privacy):

  none      no inputs at all: metadata and the response only;
  features  (default) the image inputs are replaced by their derived features
            (data_prep/request_features.py), one tensor per feature, shape [N], named
            as btmri.spec.IMAGE_FEATURES; missing values are -1 (ints), NaN (floats),
            "" (strings). No image byte leaves the request;
  images    the whole request as the client sent it.

The response is kept as sent (after the client's output_filter), except the Grad-CAM
`heatmap`, an image-shaped picture of the input, which only `images` keeps.

Files: DIR/requests-<UTC start>-<pid>-<n>.tfrecord (uncompressed TFRecord). The file
being written has a leading dot and becomes visible by rename when it is closed:
at `log_file_mb` (at most a quarter of the budget), `log_rotate_seconds` after its
first record, and at shutdown. After each close the oldest closed files are deleted
until the folder (this logger's files, the open one included) fits `log_max_mb`.
A record larger than a file's limit is dropped.

Requests never wait: the request thread draws the sample and puts a reference to
the call's arrays on a bounded queue (`log_queue_records` records, `log_queue_mb`
bytes); features, protos and the file are the writer thread's work. When the queue
is full the record is dropped and counted (btmri_serving_request_log_dropped_total,
reason "queue_full"); a failed write drops its record (reason "error") and never
reaches the request.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btmri import spec
from btmri.documents import ServerOptions
from btmri.layout import REQUEST_LOG_PREFIX, REQUEST_LOG_SUFFIX
from data_prep.request_features import FEATURE_TYPES, request_features
from serving.requests import predict_request

log = logging.getLogger("serving")

_MB = 1024 * 1024
SAVED_MODEL_TAGS = ("serve",)
_TFRECORD_FRAMING = 16  # length (8) + its CRC (4) + the data's CRC (4)
_LOGGED_ONLY_WITH_IMAGES = frozenset({spec.HEATMAP})
_CLOSED_NAME = re.compile(
    re.escape(REQUEST_LOG_PREFIX) + r"(\d{8}T\d{6}\.\d{6}Z)-(\d+)-(\d+)" + re.escape(REQUEST_LOG_SUFFIX)
)
# Stand-ins for a feature that could not be computed, in a logged tensor.
MISSING = {int: -1, float: float("nan"), str: ""}


def is_log_file(name: str) -> bool:
    """A closed request log file's name (the open one starts with a dot)."""
    return _CLOSED_NAME.fullmatch(name) is not None


def log_files(folder: str | os.PathLike) -> list[Path]:
    """Closed request log files in `folder`, oldest first."""
    try:
        names = sorted(name for name in os.listdir(folder) if is_log_file(name))
    except FileNotFoundError:
        return []
    return [Path(folder, name) for name in names]


# ---- records -------------------------------------------------------------------------


def images_of_inputs(inputs: dict[str, np.ndarray]) -> list[bytes] | None:
    """The encoded images of a request: `image_bytes`, or the `image` feature of each
    serialized tf.Example of `examples`; None when it has neither."""
    if spec.IMAGE_BYTES_INPUT in inputs:
        return [bytes(v) for v in np.asarray(inputs[spec.IMAGE_BYTES_INPUT]).reshape(-1)]
    if spec.EXAMPLES_INPUT in inputs:
        from tensorflow.core.example import example_pb2

        images = []
        for serialized in np.asarray(inputs[spec.EXAMPLES_INPUT]).reshape(-1):
            feature = example_pb2.Example.FromString(bytes(serialized)).features.feature
            values = feature[spec.IMAGE_KEY].bytes_list.value if spec.IMAGE_KEY in feature else []
            images.append(bytes(values[0]) if values else b"")
        return images
    return None


def _feature_tensors(rows: list[dict], names) -> dict[str, np.ndarray]:
    tensors = {}
    for name in names:
        kind = FEATURE_TYPES[name]
        values = [MISSING[kind] if row[name] is None else row[name] for row in rows]
        dtype = {int: np.int64, float: np.float32, str: object}[kind]
        tensors[name] = np.array([v.encode() if kind is str else v for v in values], dtype=dtype)
    return tensors


def build_record(
    payload: str,
    model_name: str,
    version: int,
    signature_name: str,
    inputs: dict[str, np.ndarray] | None,
    outputs: dict[str, np.ndarray],
    timestamp: float,
    sampling_rate: float,
):
    """One call as a PredictionLog (see the module docstring for what each payload keeps)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog()
    meta = record.log_metadata
    meta.model_spec.name = model_name
    meta.model_spec.version.value = version
    meta.model_spec.signature_name = signature_name
    meta.sampling_config.sampling_rate = sampling_rate
    meta.saved_model_tags.extend(SAVED_MODEL_TAGS)
    meta.timestamp_secs = int(timestamp)
    response = record.predict_log.response
    response.model_spec.CopyFrom(meta.model_spec)
    if payload == spec.LOG_PAYLOAD_IMAGES:
        logged_inputs = inputs or {}
    elif payload == spec.LOG_PAYLOAD_FEATURES and inputs:
        images = images_of_inputs(inputs)
        logged_inputs = (
            {} if images is None else _feature_tensors(request_features(images, {}), spec.IMAGE_FEATURES)
        )
    else:
        logged_inputs = {}
    predict_request(
        signature_name, logged_inputs, model_name=model_name, version=version, into=record.predict_log.request
    )
    for alias, array in outputs.items():
        if payload != spec.LOG_PAYLOAD_IMAGES and alias in _LOGGED_ONLY_WITH_IMAGES:
            continue
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(array))
    return record


def _from_tensor(kind: type, value):
    if kind is str:
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text or None
    if kind is float:
        return None if math.isnan(float(value)) else float(value)
    return None if int(value) < 0 else int(value)


def record_rows(record) -> list[dict]:
    """The derived features of every row of a logged call, whatever its payload:
    logged features as they are, logged images through the same feature function,
    answer features from the response. Features a record lacks are None."""
    import tensorflow as tf

    request, response = record.predict_log.request, record.predict_log.response
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    logged = {
        alias: tf.make_ndarray(proto)
        for alias, proto in request.inputs.items()
        if alias in spec.IMAGE_FEATURES
    }
    images = (
        None
        if logged
        else images_of_inputs(
            {
                alias: tf.make_ndarray(proto)
                for alias, proto in request.inputs.items()
                if alias in (spec.IMAGE_BYTES_INPUT, spec.EXAMPLES_INPUT)
            }
        )
    )
    rows = request_features(images, outputs)
    if logged:
        n = max(len(v) for v in logged.values())
        if not rows:
            rows = [dict.fromkeys(spec.REQUEST_FEATURES) for _ in range(n)]
        for name, values in logged.items():
            for row, value in zip(rows, values):
                row[name] = _from_tensor(FEATURE_TYPES[name], value)
    return rows


# ---- the writer ----------------------------------------------------------------------


@dataclass
class _Call:
    timestamp: float
    model_name: str
    version: int
    signature_name: str
    inputs: dict | None
    outputs: dict
    size: int


def _array_bytes(arrays: dict[str, np.ndarray] | None) -> int:
    total = 0
    for array in (arrays or {}).values():
        array = np.asarray(array)
        total += (
            sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in array.flat)
            if array.dtype == object
            else array.nbytes
        )
    return total


class RequestLog:
    """Samples calls on the request threads, writes them on its own thread."""

    def __init__(self, options: ServerOptions, metrics=None, seed: int | None = None):
        self.folder = Path(options.request_log_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.payload = options.log_payload
        self.sampling_rate = options.log_sampling_rate
        self.max_bytes = int(options.log_max_mb * _MB)
        self.file_bytes = max(1, int(min(options.log_file_mb * _MB, self.max_bytes / 4)))
        self.rotate_seconds = options.log_rotate_seconds
        self.max_queue_bytes = int(options.log_queue_mb * _MB)
        self.metrics = metrics
        self._queue: queue.Queue[_Call] = queue.Queue(maxsize=options.log_queue_records)
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._writer = None  # tf.io.TFRecordWriter of the open file
        self._open_path: Path | None = None
        self._open_bytes = 0
        self._opened_at = 0.0
        self._sequence = 0
        self._errors_logged = 0
        self.written = 0
        self.dropped: dict[str, int] = {}
        if metrics is not None:
            metrics.request_log_dropped.inc("queue_full", amount=0)
            metrics.request_log_written.inc(amount=0)
        self._seal_leftovers()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()
        log.info(
            "logging %g of requests to %s (payload %s, budget %g MB)",
            self.sampling_rate,
            self.folder,
            self.payload,
            options.log_max_mb,
        )

    # -- request threads: never block, never raise --

    def offer(
        self,
        model_name: str,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        version: int,
        outputs: dict[str, np.ndarray],
    ) -> None:
        try:
            if self._stop.is_set() or self._random.random() >= self.sampling_rate:
                return
            kept_inputs = None if self.payload == spec.LOG_PAYLOAD_NONE else inputs
            size = _array_bytes(kept_inputs) + _array_bytes(outputs)
            with self._lock:
                if self._queued_bytes + size > self.max_queue_bytes:
                    self._drop("queue_full")
                    return
                self._queued_bytes += size
            try:
                self._queue.put_nowait(
                    _Call(time.time(), model_name, version, signature_name, kept_inputs, outputs, size)
                )
            except queue.Full:
                with self._lock:
                    self._queued_bytes -= size
                self._drop("queue_full")
        except Exception:  # logging must never fail a request
            self._drop("error")

    def _drop(self, reason: str) -> None:
        with self._count_lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.request_log_dropped.inc(reason)

    # -- the writer thread --

    def _run(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    break
                self._rotate_if_due()
                continue
            with self._lock:
                self._queued_bytes -= call.size
            try:
                self._write(call)
            except Exception as err:
                self._drop("error")
                if self._errors_logged < 10:
                    self._errors_logged += 1
                    log.warning("request log: record dropped: %s: %s", type(err).__name__, err)
        self._close_file()

    def _write(self, call: _Call) -> None:
        record = build_record(
            self.payload,
            call.model_name,
            call.version,
            call.signature_name,
            call.inputs,
            call.outputs,
            call.timestamp,
            self.sampling_rate,
        )
        data = record.SerializeToString()
        size = len(data) + _TFRECORD_FRAMING
        if size > self.file_bytes:
            self._drop("too_large")
            return
        if self._writer is not None and self._open_bytes + size > self.file_bytes:
            self._close_file()
        if self._writer is None:
            self._open_file()
        self._writer.write(data)
        self._open_bytes += size
        self.written += 1
        if self.metrics is not None:
            self.metrics.request_log_written.inc()
        self._rotate_if_due()

    def _rotate_if_due(self) -> None:
        if self._writer is not None and (
            self._open_bytes >= self.file_bytes or time.monotonic() - self._opened_at >= self.rotate_seconds
        ):
            self._close_file()

    def _open_file(self) -> None:
        import tensorflow as tf

        self._sequence += 1
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        name = f"{REQUEST_LOG_PREFIX}{stamp}-{os.getpid()}-{self._sequence:06d}{REQUEST_LOG_SUFFIX}"
        self.folder.mkdir(parents=True, exist_ok=True)  # it may have been removed meanwhile
        self._open_path = self.folder / ("." + name)
        self._writer = tf.io.TFRecordWriter(str(self._open_path))
        self._open_bytes = 0
        self._opened_at = time.monotonic()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        writer, path = self._writer, self._open_path
        self._writer = self._open_path = None
        try:
            writer.close()
            path.rename(path.with_name(path.name[1:]))
        except OSError as err:
            log.warning("request log: cannot close %s: %s", path.name, err)
        self._enforce_budget()

    def _enforce_budget(self) -> None:
        """Deletes the oldest closed files until they and a full open file fit the budget."""
        files = []
        for path in log_files(self.folder):
            try:
                files.append((path, path.stat().st_size))
            except OSError:
                continue
        total = sum(size for _, size in files)
        for path, size in files:
            if total + self.file_bytes <= self.max_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size

    def _seal_leftovers(self) -> None:
        """Files a killed server left open are closed (renamed) when their process is gone."""
        for name in os.listdir(self.folder):
            match = _CLOSED_NAME.fullmatch(name[1:]) if name.startswith(".") else None
            if match is None or _alive(int(match.group(2))):
                continue
            try:
                (self.folder / name).rename(self.folder / name[1:])
            except OSError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued (within `timeout`) and closes the open file."""
        self._stop.set()
        self._thread.join(timeout)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
