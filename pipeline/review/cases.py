"""The cases a reviewer sees: rows of the request log, abstentions first.

A case is one image of one logged call (a call may carry several). Its record id,
`<log file>#<record>/<row>`, names it for good: closed log files keep their names
until the size budget deletes them, and records are only ever appended.

Which cases: every abstention (newest first, at most `max_abstained`), then a sample
of `answered` answered rows. The sample keeps the rows of lowest hash of record id and
seed, so it is the same at every start, and a new row enters it only by ranking lower
than a row already in it.

The log is read twice: once for every answer, keeping only the chosen cases; once for
the images and logged heatmaps of those, so memory follows the cases, not the log.
Everything read from a log (model names, reasons, sources) is untrusted text:
the page escapes it (server.py).
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from btmri import spec
from data_prep.request_features import image_format

# Response outputs read for every row; the heatmap is read for chosen cases only.
_ANSWER_OUTPUTS = (spec.PROBABILITIES, spec.CLASS_ID, spec.CLASS_NAME, *spec.ABSTENTION_OUTPUTS)


class CaseError(Exception):
    """No cases to show; str(err) says why and what to do."""


@dataclass
class Case:
    record_id: str
    file: str  # the log file's name
    record: int  # the record's position in it
    row: int  # the image's position in the call
    timestamp: int  # seconds since the epoch (log_metadata.timestamp_secs)
    model_name: str
    model_version: int | None
    signature: str
    payload: str  # what the log kept of the request: spec.LOG_PAYLOADS
    probabilities: dict[str, float] | None  # None: not logged (or not readable)
    top_class: str  # the model's most probable class, also when it abstained; "" if unknown
    abstain: bool
    abstain_reason: str
    ood_score: float | None
    source: str = ""  # a serving_default call's tf.Example `source`, when it has one
    image: bytes | None = None  # the encoded image, for chosen cases of an images log
    heatmap: np.ndarray | None = field(default=None, repr=False)  # a gradcam call's logged heatmap

    @property
    def answer(self) -> str:
        """What the model said, as `btmri predict` says it."""
        if self.probabilities is None or self.top_class not in spec.CLASS_TO_ID:
            if self.abstain:
                return f"abstained: {self.abstain_reason or 'no reason given'}"
            return self.top_class or "no answer logged"
        from serving.client import ImagePrediction

        return ImagePrediction(
            self.top_class,
            spec.CLASS_TO_ID[self.top_class],
            self.probabilities,
            self.model_version,
            self.ood_score,
            self.abstain,
            self.abstain_reason,
        ).answer

    @property
    def time_text(self) -> str:
        return datetime.fromtimestamp(self.timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    @property
    def image_format(self) -> str:
        return image_format(self.image) if self.image else ""


@dataclass
class CaseList:
    cases: list[Case]
    abstained_total: int  # abstentions in the log (cases holds at most max_abstained)
    answered_total: int  # answered rows in the log
    unreadable: int  # records that could not be read (damaged, not a PredictionLog)
    files: int  # closed log files read
    open_files: int  # files a server is still writing: not read

    @property
    def abstained(self) -> int:
        return sum(c.abstain for c in self.cases)

    @property
    def answered(self) -> int:
        return len(self.cases) - self.abstained


def _records(path: Path):
    """(position, serialized record) of one log file; a file cut short ends at its last
    whole record, one deleted meanwhile (the size budget) at its last read record."""
    import tensorflow as tf

    try:
        for position, record in enumerate(tf.data.TFRecordDataset(str(path))):
            yield position, record.numpy()
    except (tf.errors.DataLossError, tf.errors.NotFoundError):
        return


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _payload(inputs) -> str:
    if spec.IMAGE_BYTES_INPUT in inputs or spec.EXAMPLES_INPUT in inputs:
        return spec.LOG_PAYLOAD_IMAGES
    return spec.LOG_PAYLOAD_FEATURES if set(inputs) & set(spec.IMAGE_FEATURES) else spec.LOG_PAYLOAD_NONE


def _top_class(outputs: dict, row: int, probabilities) -> str:
    if spec.CLASS_ID in outputs:
        k = int(outputs[spec.CLASS_ID].reshape(-1)[row])
        if 0 <= k < spec.NUM_CLASSES:
            return spec.CLASS_NAMES[k]
    if spec.CLASS_NAME in outputs:
        return _text(outputs[spec.CLASS_NAME].reshape(-1)[row])
    if probabilities is not None:
        return max(probabilities, key=probabilities.get)
    return ""


def _row(outputs: dict, name: str, row: int):
    values = outputs.get(name)
    return None if values is None else values.reshape(-1)[row]


def cases_of_record(serialized: bytes, file: str, position: int) -> list[Case]:
    """The cases of one serialized PredictionLog, without images."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog.FromString(serialized)
    meta = record.log_metadata.model_spec
    response = record.predict_log.response
    outputs = {
        alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items() if alias in _ANSWER_OUTPUTS
    }
    outputs = {alias: value for alias, value in outputs.items() if value.ndim >= 1}  # a row per image
    probs = outputs.get(spec.PROBABILITIES)
    if probs is not None and (probs.ndim != 2 or probs.shape[1] != spec.NUM_CLASSES):
        probs = None  # not this project's four classes: shown as not logged
    # Outputs of unequal length make a damaged record: only the rows every output has.
    rows = min((len(v) for v in outputs.values()), default=0)
    payload = _payload(record.predict_log.request.inputs)
    cases = []
    for row in range(rows):
        probabilities = (
            None if probs is None else {name: float(p) for name, p in zip(spec.CLASS_NAMES, probs[row])}
        )
        abstain = _row(outputs, spec.ABSTAIN, row)
        ood = _row(outputs, spec.OOD_SCORE, row)
        reason = _row(outputs, spec.ABSTAIN_REASON, row)
        cases.append(
            Case(
                record_id=f"{file}#{position}/{row}",
                file=file,
                record=position,
                row=row,
                timestamp=int(record.log_metadata.timestamp_secs),
                model_name=meta.name,
                model_version=int(meta.version.value) if meta.HasField("version") else None,
                signature=meta.signature_name,
                payload=payload,
                probabilities=probabilities,
                top_class=_top_class(outputs, row, probabilities),
                abstain=bool(abstain) if abstain is not None else False,
                abstain_reason="" if reason is None else _text(reason),
                ood_score=None if ood is None else float(ood),
            )
        )
    return cases


def _sources(inputs: dict) -> list[str]:
    """The `source` feature of each tf.Example of a serving_default call ("" if none)."""
    from tensorflow.core.example import example_pb2

    if spec.EXAMPLES_INPUT not in inputs:
        return []
    sources = []
    for serialized in np.asarray(inputs[spec.EXAMPLES_INPUT]).reshape(-1):
        feature = example_pb2.Example.FromString(bytes(serialized)).features.feature
        values = feature[spec.SOURCE_KEY].bytes_list.value if spec.SOURCE_KEY in feature else []
        sources.append(_text(values[0]) if values else "")
    return sources


def _attach_images(folder: Path, chosen: list[Case]) -> None:
    """Sets image, source and logged heatmap of the chosen cases (second read)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import images_of_inputs

    wanted: dict[str, dict[int, list[Case]]] = defaultdict(lambda: defaultdict(list))
    for case in chosen:
        if case.payload == spec.LOG_PAYLOAD_IMAGES:
            wanted[case.file][case.record].append(case)
    for file, records in wanted.items():
        for position, serialized in _records(folder / file):
            if position not in records:
                continue
            try:
                record = prediction_log_pb2.PredictionLog.FromString(serialized)
                inputs = {
                    alias: tf.make_ndarray(proto)
                    for alias, proto in record.predict_log.request.inputs.items()
                    if alias in (spec.IMAGE_BYTES_INPUT, spec.EXAMPLES_INPUT)
                }
                images = images_of_inputs(inputs) or []
                sources = _sources(inputs)
                outputs = record.predict_log.response.outputs
                heatmaps = tf.make_ndarray(outputs[spec.HEATMAP]) if spec.HEATMAP in outputs else None
            except Exception:  # damaged record: its cases show "image not readable"
                continue
            for case in records[position]:
                if case.row < len(images) and images[case.row]:
                    case.image = images[case.row]
                if case.row < len(sources):
                    case.source = sources[case.row]
                if heatmaps is not None and heatmaps.ndim == 3 and case.row < len(heatmaps):
                    case.heatmap = heatmaps[case.row].astype(np.float32)


def _newest(case: Case) -> tuple:
    return (case.timestamp, case.file, case.record, case.row)  # unique: no two cases tie


def _sample_rank(seed: int, record_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{record_id}".encode()).digest()[:8], "big")


class _Keep:
    """The `size` cases of largest key seen so far (a min-heap): memory follows the
    cases kept, not the log."""

    def __init__(self, size: int, key):
        self.size, self.key, self.seen = size, key, 0
        self._heap: list[tuple] = []

    def offer(self, case: Case) -> None:
        self.seen += 1
        item = (self.key(case), _newest(case), case)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif self.size and item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def newest_first(self) -> list[Case]:
        return [case for *_, case in sorted(self._heap, key=lambda item: item[1], reverse=True)]


def open_log_files(folder: str | os.PathLike) -> int:
    """Log files a server is still writing (a leading dot): not read until closed."""
    from serving.request_log import is_log_file

    try:
        return sum(1 for n in os.listdir(folder) if n.startswith(".") and is_log_file(n[1:]))
    except FileNotFoundError:
        return 0


def load_cases(folder: str | os.PathLike, max_abstained: int, answered: int, seed: int = 0) -> CaseList:
    """Every abstention (newest first, at most `max_abstained`), then `answered`
    answered rows sampled as the module docstring says; CaseError when there is none."""
    from serving.request_log import log_files

    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(
            f"no request log folder {folder}: give the folder `btmri serve --request-log DIR` writes"
        )
    files = log_files(folder)
    still_open = open_log_files(folder)
    if not files:
        raise CaseError(
            f"no request logs in {folder} (closed files named requests-*.tfrecord"
            + (
                f"; {still_open} still being written: a server closes one every --log-rotate-seconds"
                if still_open
                else ""
            )
            + ")"
        )
    abstained = _Keep(max_abstained, _newest)
    # The sample: the answered rows of smallest hash rank (kept as the largest negated rank).
    sample = _Keep(answered, lambda case: -_sample_rank(seed, case.record_id))
    unreadable = 0
    for path in files:
        for position, serialized in _records(path):
            try:
                cases = cases_of_record(serialized, path.name, position)
            except Exception:  # a damaged or foreign record is counted, never fatal
                unreadable += 1
                continue
            for case in cases:
                (abstained if case.abstain else sample).offer(case)
    chosen = abstained.newest_first() + sample.newest_first()
    if not chosen:
        damaged = f" ({unreadable} unreadable records)" if unreadable else ""
        raise CaseError(f"no logged answers in the {len(files)} request log files of {folder}{damaged}")
    _attach_images(folder, chosen)
    return CaseList(chosen, abstained.seen, sample.seen, unreadable, len(files), still_open)
