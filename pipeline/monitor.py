"""`btmri monitor`: drift and skew of served traffic, with TFDV (docs/monitoring.md).

1. The window: the closed request log files (serving/request_log.py) that no earlier
   monitor report of the same output folder covered (`all_files`: every retained one);
   with `include_open` also the files servers are still writing, read from a snapshot,
   whose records the next report then skips. Its baseline is that of the run that
   pushed the model version the window's requests were answered by (so a newer run that
   was not blessed, or whose push is not served yet, does not move it); the latest
   run's if no run here pushed it.
2. A Beam pipeline reads them (a file cut short by a crash yields the records before
   the cut), turns every logged row into the derived request features (logged
   features as they are, logged images through data_prep/request_features.py) and
   computes TFDV statistics, as the pipeline's RequestBaseline did for its split.
3. The thresholds are calibrated for this window's size on the baseline's stored rows
   (pipeline/drift_calibration.py), so that healthy traffic raises an alarm in at most
   `false_alarm_rate` of windows; a baseline without stored rows (a run older than
   calibration) keeps the schema's fixed thresholds, and the report says so.
4. TFDV validates the statistics against the run's request-feature schema with those
   thresholds: skew against the baseline statistics (`serving_statistics`: both
   comparators are symmetric, so the served statistics are the ones also checked
   against the schema), drift against the previous report's window when there is one
   (`previous_statistics`).
5. Live performance (pipeline/live_performance.py): with a review database, the
   window's reviewed requests give accuracy and per-class recall, checked against the
   pushed model's own evaluation with alarms calibrated like the thresholds.
6. The report folder <out>/<UTC time>/ gets statistics.pb, anomalies.pbtxt, monitor.html
   (histograms served vs baseline, the measurements against their thresholds, the
   anomalies, live performance) and window.json.

Exit codes (pipeline/monitor_cli.py): 0 nothing anomalous, 1 anomalies (drift, skew or
schema) or a live-performance alarm, 2 nothing to monitor, no baseline or an unusable
review database.
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import apache_beam as beam

from btmri import spec
from btmri.documents import write_atomic
from btmri.layout import (
    BASELINE_ROWS_FILE,
    MONITOR_ANOMALIES_FILE,
    MONITOR_CALIBRATION_DIR,
    MONITOR_DIR,
    MONITOR_REPORT_FILE,
    MONITOR_STATISTICS_FILE,
    MONITOR_WINDOW_FILE,
    SCHEMA_FILE,
    STATISTICS_FILE,
)
from pipeline.drift_calibration import (
    Calibration,
    CalibrationOptions,
    cached_calibration,
    comparators,
    with_thresholds,
)
from pipeline.live_performance import Expected, LivePerformance

# Below this many rows a window's histograms are noisy: calibrated thresholds are wide
# there (only large shifts stand out), fixed ones raise false alarms. The report says so.
SMALL_WINDOW_ROWS = 100


class MonitorError(RuntimeError):
    """Nothing to monitor (no logs, no new logs) or nothing to compare with (no baseline)."""


@dataclass
class Baseline:
    statistics: object  # DatasetFeatureStatisticsList
    schema: object  # tensorflow_metadata Schema
    statistics_uri: str
    schema_uri: str
    version: int | None = None  # the served version whose pushing run made it; None: the latest run's
    note: str = ""  # why it is not the served version's own baseline
    rows_uri: str | None = None  # its stored feature rows; None: a run older than calibration

    @property
    def rows(self) -> int:
        """Rows the baseline statistics count."""
        return int(self.statistics.datasets[0].num_examples) if self.statistics.datasets else 0


@dataclass(frozen=True)
class WindowFile:
    """One log file of a window: `name` as closed, read from `path` (a snapshot while a
    server still writes it), without its first `skip` records (earlier reports read them
    while it was open)."""

    name: str
    path: Path
    skip: int = 0
    open: bool = False


@dataclass
class MonitorResult:
    out_dir: str
    files: list[str]
    window: dict  # window.json
    anomalies: object  # tensorflow_metadata Anomalies
    drift_against: str | None  # the previous report folder compared with
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None  # None: the schema's fixed thresholds
    live: LivePerformance | None = None  # the window's reviewed requests against the evaluation

    def measurements(self) -> dict[str, dict[str, tuple[float, float]]]:
        """feature → {"skew"/"drift": (TFDV's measurement, its threshold)}."""
        return measurements(self.anomalies)

    @property
    def anomalous(self) -> bool:
        """TFDV found drift, skew or schema anomalies."""
        return bool(self.anomalies.anomaly_info) or bool(self.anomalies.dataset_anomaly_info.reason)

    @property
    def alarmed(self) -> bool:
        """Anomalies, or a live-performance figure below its calibrated bound."""
        return self.anomalous or bool(self.live and self.live.alarms)

    def lines(self) -> list[str]:
        """One line per anomalous feature: its reasons' short descriptions and descriptions."""
        out = []
        for name, info in sorted(self.anomalies.anomaly_info.items()):
            for reason in info.reason:
                out.append(f"{name}: {reason.short_description}: {reason.description}")
        for reason in self.anomalies.dataset_anomaly_info.reason:
            out.append(f"(dataset): {reason.short_description}: {reason.description}")
        return out


# ---- the baseline --------------------------------------------------------------------


def find_baseline(pipeline_root: str, version: int | None = None) -> Baseline:
    """The RequestBaseline statistics and schema of the run that pushed serving version
    `version` (the statistics of the split that model was evaluated on); the latest
    run's when `version` is None or no run of this pipeline pushed it (with a note)."""
    import tensorflow_data_validation as tfdv

    from pipeline.config import PipelineConfig
    from pipeline.config import missing_store_message
    from pipeline.metadata import served_outputs

    config = PipelineConfig(pipeline_root=pipeline_root, data_root="", serving_dir="")
    if missing := missing_store_message(config):
        raise MonitorError(missing)
    found, matched, note = served_outputs(
        config,
        version,
        "RequestBaseline",
        ("statistics", "schema"),
        "compared with the latest run's baseline",
    )
    if found is None:
        raise MonitorError(
            f"no RequestBaseline in {pipeline_root}: the run predates monitoring; run `btmri run` again"
        )
    statistics, schema = found["statistics"], found["schema"]
    files = sorted(Path(statistics.uri).glob(f"Split-*/{STATISTICS_FILE}"))
    if not files:
        raise MonitorError(f"no statistics in {statistics.uri}")
    schema_path = os.path.join(schema.uri, SCHEMA_FILE)
    rows = files[0].parent / BASELINE_ROWS_FILE
    return Baseline(
        tfdv.load_stats_binary(str(files[0])),
        tfdv.load_schema_text(schema_path),
        str(files[0]),
        schema_path,
        version=matched,
        note=note,
        rows_uri=str(rows) if rows.is_file() else None,
    )


def served_version(files: list[WindowFile]) -> int | None:
    """The model version that answered the window: the most common one among the
    first records of its files (a file is one server's few seconds or minutes; reading
    one record each keeps this cheap). None when no file holds a record."""
    from collections import Counter

    from tensorflow_serving.apis import prediction_log_pb2

    versions = Counter()
    for file in files:
        first = next(iter(read_log_file(str(file.path))), None)
        if first is not None:
            record = prediction_log_pb2.PredictionLog.FromString(first)
            versions[int(record.log_metadata.model_spec.version.value)] += 1
    return versions.most_common(1)[0][0] if versions else None


# ---- the window ----------------------------------------------------------------------


def _reports(out_root: Path) -> list[Path]:
    if not out_root.is_dir():
        return []
    return sorted(
        p
        for p in out_root.iterdir()
        if (p / MONITOR_WINDOW_FILE).is_file() and (p / MONITOR_STATISTICS_FILE).is_file()
    )


def _open_names(log_dir: str) -> list[str]:
    """Names of the log files servers are still writing (a leading dot), oldest first."""
    from serving.request_log import is_log_file

    try:
        return sorted(n for n in os.listdir(log_dir) if n.startswith(".") and is_log_file(n[1:]))
    except FileNotFoundError:
        return []


def open_log_records(log_dir: str) -> tuple[int, int]:
    """(files, whole records) the servers are still writing: the window cannot see them
    until each is closed (its name loses the leading dot), unless --include-open."""
    import tensorflow as tf

    names = _open_names(log_dir)
    records = 0
    for name in names:
        try:
            records += sum(1 for _ in read_log_file(os.path.join(log_dir, name)))
        except (OSError, tf.errors.OpError):  # closed (renamed) meanwhile
            pass
    return len(names), records


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(seconds))


def _closing(name: str) -> str:
    """When open log file `name` (as it will be named when closed) is due to close, from
    the UTC time in its name (the writer opens a file for its first record;
    serving/request_log.py)."""
    from btmri.documents import SERVER_DEFAULTS
    from serving.request_log import _CLOSED_NAME  # the name's format has one home, there

    match = _CLOSED_NAME.fullmatch(name)
    opened = calendar.timegm(time.strptime(match.group(1).split(".")[0], "%Y%m%dT%H%M%S"))
    due = opened + SERVER_DEFAULTS.log_rotate_seconds
    rule = (
        "a server closes its file --log-rotate-seconds after the file's first record (default "
        f"{SERVER_DEFAULTS.log_rotate_seconds:g} s), at --log-file-mb, or when it stops"
    )
    if due >= time.time():
        return f"{rule}: the oldest, opened {_clock(opened)}, closes by {_clock(due)} with the default"
    return (
        f"{rule}: the oldest, opened {_clock(opened)}, would have closed by {_clock(due)} with the "
        "default, so its server rotates less often or has stopped (the next server that logs "
        "into the folder closes a stopped one's file)"
    )


def _open_note(log_dir: str) -> str:
    files, records = open_log_records(log_dir)
    if not files:
        return ""
    return (
        f"{records} logged calls in {files} file(s) still being written are not in this window "
        f"(--include-open reads them): {_closing(_open_names(log_dir)[0][1:])}; run again after that"
    )


def _covered(reports: list[Path]) -> tuple[set[str], dict[str, int]]:
    """(files earlier reports read whole, {file: records they read while it was open})."""
    whole, partly = set(), {}
    for report in reports:
        window = json.loads((report / MONITOR_WINDOW_FILE).read_text())
        whole.update(window.get("files", []))
        for name, records in window.get("open_files", {}).items():
            partly[name] = max(partly.get(name, 0), records)
    return whole, partly


def choose_window(
    log_dir: str, out_root: Path, all_files: bool, include_open: bool = False
) -> tuple[list[WindowFile], Path | None]:
    """(log files of this window, the previous report or None). Open files are listed
    by the path being written: monitor() reads a snapshot of them."""
    from serving.request_log import log_files

    closed = log_files(log_dir)
    still_open = [Path(log_dir, n) for n in _open_names(log_dir)] if include_open else []
    if not closed and not still_open:
        note = _open_note(log_dir)
        raise MonitorError(
            f"no request logs in {log_dir} (closed files named "
            f"requests-*.tfrecord; a server writes them with --request-log "
            f"and closes one every --log-rotate-seconds)" + (f"; {note}" if note else "")
        )
    reports = _reports(out_root)
    previous = reports[-1] if reports else None
    whole, partly = _covered([] if all_files else reports)
    files = [WindowFile(p.name, p, partly.get(p.name, 0)) for p in closed if p.name not in whole]
    files += [WindowFile(p.name[1:], p, partly.get(p.name[1:], 0), open=True) for p in still_open]
    if not files:
        raise MonitorError(
            f"no new request logs in {log_dir} since the last report "
            f"({previous}); --all checks every retained file again"
            + ("" if include_open else ", --include-open also the files still being written")
        )
    return files, previous


def _snapshot(files: list[WindowFile], folder: Path) -> tuple[list[WindowFile], dict[str, int]]:
    """Open files copied into `folder` (a server keeps appending to them); the records a
    copy holds whole are what the next report skips. → (files to read, {name: records})."""
    out, counts = [], {}
    for file in files:
        if not file.open:
            out.append(file)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / file.name
        try:
            shutil.copyfile(file.path, copy)
        except FileNotFoundError:  # closed meanwhile: read whole, under its closed name
            out.append(WindowFile(file.name, file.path.with_name(file.name), file.skip))
            continue
        counts[file.name] = sum(1 for _ in read_log_file(str(copy)))
        out.append(WindowFile(file.name, copy, file.skip, open=True))
    return out, counts


def read_log_file(path: str):
    """The serialized records of one log file; a file cut short ends at its last whole record."""
    import tensorflow as tf

    try:
        for record in tf.data.TFRecordDataset(path):
            yield record.numpy()
    except tf.errors.DataLossError:
        return


def _read_part(item: tuple[str, int]):
    """The records of one window file (path, records to skip)."""
    path, skip = item
    yield from itertools.islice(read_log_file(path), skip, None)


def _rows_of(serialized: bytes):
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import record_rows

    record = prediction_log_pb2.PredictionLog.FromString(serialized)
    yield from record_rows(record)


def _summary_of(serialized: bytes) -> dict:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog.FromString(serialized)
    outputs = record.predict_log.response.outputs
    # Rows the model abstained on: what live performance weighs the reviews with.
    abstained = int(tf.make_ndarray(outputs[spec.ABSTAIN]).sum()) if spec.ABSTAIN in outputs else 0
    meta = record.log_metadata
    inputs = set(record.predict_log.request.inputs)
    payload = (
        spec.LOG_PAYLOAD_FEATURES
        if inputs & set(spec.IMAGE_FEATURES)
        else spec.LOG_PAYLOAD_IMAGES
        if inputs
        else spec.LOG_PAYLOAD_NONE
    )
    return {
        "records": 1,
        "abstained": abstained,
        "versions": {str(meta.model_spec.version.value): 1},
        "payloads": {payload: 1},
        "first": meta.timestamp_secs,
        "last": meta.timestamp_secs,
    }


class _MergeSummaries(beam.CombineFn):
    def create_accumulator(self):
        return {"records": 0, "abstained": 0, "versions": {}, "payloads": {}, "first": None, "last": None}

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            out["records"] += acc["records"]
            out["abstained"] += acc["abstained"]
            for key in ("versions", "payloads"):
                for k, v in acc[key].items():
                    out[key][k] = out[key].get(k, 0) + v
            for key, pick in (("first", min), ("last", max)):
                if acc[key] is not None:
                    out[key] = acc[key] if out[key] is None else pick(out[key], acc[key])
        return out

    def extract_output(self, acc):
        return acc


def served_statistics(files: list[WindowFile], schema, out_dir: Path, beam_args: list[str] | None = None):
    """TFDV statistics of the window's rows (written to out_dir) and the window's summary."""
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.baseline.statistics import RowsToStatistics

    stats_path = out_dir / MONITOR_STATISTICS_FILE
    summary_path = out_dir / "summary.tmp.json"
    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
        records = (
            pipeline
            | "Files" >> beam.Create([(str(f.path), f.skip) for f in files])
            | "Read" >> beam.FlatMap(_read_part)
            | "Reshuffle" >> beam.Reshuffle()
        )
        _ = (
            records
            | "Rows" >> beam.FlatMap(_rows_of)
            | "Statistics" >> RowsToStatistics(schema)
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(str(stats_path))
        )
        _ = (
            records
            | "Summaries" >> beam.Map(_summary_of)
            | "Merge" >> beam.CombineGlobally(_MergeSummaries())
            | "WriteSummary" >> beam.Map(lambda s: summary_path.write_text(json.dumps(s)))
        )
    summary = json.loads(summary_path.read_text())
    summary_path.unlink()
    return tfdv.load_stats_binary(str(stats_path)), summary


# ---- validation ----------------------------------------------------------------------


def _present(statistics) -> set[str]:
    """Features with at least one value in a statistics proto."""
    present = set()
    for feature in statistics.datasets[0].features if statistics.datasets else []:
        stats = feature.num_stats if feature.HasField("num_stats") else feature.string_stats
        if stats.common_stats.num_non_missing:
            present.add(feature.path.step[0])
    return present


def validation_schema(schema, served):
    """The schema without comparators for the features the window has no values of (a
    log written with --log-payload none has no image features): they cannot be compared."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    present = _present(served)
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    skipped = []
    for feature in out.feature:
        if feature.name not in present:
            feature.ClearField("drift_comparator")
            feature.ClearField("skew_comparator")
            skipped.append(feature.name)
    return out, sorted(skipped)


def validate(served, schema, baseline_statistics, previous_statistics=None):
    import tensorflow_data_validation as tfdv

    return tfdv.validate_statistics(
        served, schema, previous_statistics=previous_statistics, serving_statistics=baseline_statistics
    )


def measurements(anomalies) -> dict[str, dict[str, tuple[float, float]]]:
    """feature → {"skew"/"drift": (TFDV's measurement, its threshold)}: every compared
    feature, anomalous or not."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for info in anomalies.drift_skew_info:
        name = info.path.step[0] if info.path.step else ""
        for kind, found in (("skew", info.skew_measurements), ("drift", info.drift_measurements)):
            for m in found:
                out.setdefault(name, {})[kind] = (float(m.value), float(m.threshold))
    return out


def calibrated_schema(
    schema, baseline: Baseline, window_rows: int, previous_rows: int | None, cache_dir: Path | None, options
) -> tuple[object, Calibration | None, list[str]]:
    """(the schema with thresholds calibrated for this window, the calibration, notes);
    the schema as it is when the baseline has no stored rows."""
    if baseline.rows_uri is None:
        return (
            schema,
            None,
            [
                "this baseline has no stored rows (its run predates calibration): the schema's "
                "fixed thresholds apply and their false-alarm rate is unknown; `btmri run` again "
                "for calibrated ones"
            ],
        )
    kinds = comparators(schema)
    if not kinds:
        return schema, None, []
    from components.baseline.statistics import rows_from_json

    text = Path(baseline.rows_uri).read_text()
    if not rows_from_json(text):
        return (
            schema,
            None,
            ["the baseline stored no rows to calibrate on: the schema's fixed thresholds apply"],
        )
    calibration, _ = cached_calibration(
        cache_dir, text, kinds, window_rows, baseline.rows, previous_rows, options
    )
    return with_thresholds(schema, calibration), calibration, []


def _previous_rows(previous: Path | None, statistics) -> int | None:
    if previous is None:
        return None
    window = json.loads((previous / MONITOR_WINDOW_FILE).read_text())
    rows = window.get("rows")
    if rows is None and statistics is not None and statistics.datasets:
        rows = int(statistics.datasets[0].num_examples)
    return int(rows) if rows else None


# ---- the whole run -------------------------------------------------------------------


def monitor(
    log_dir: str,
    pipeline_root: str,
    out: str | None = None,
    all_files: bool = False,
    beam_args: list[str] | None = None,
    baseline: Baseline | None = None,
    include_open: bool = False,
    calibration_options: CalibrationOptions | None = None,
    reviews: str | None = None,
    expected: Expected | None = None,
) -> MonitorResult:
    """`reviews`: the review database (a SQLite file or a postgresql:// URL) for live
    performance, None for none; `baseline` and `expected` (the figures live performance
    is checked against) are looked up in the pipeline root when not given."""
    from pipeline.review.store import StoreError, open_store

    out_root = Path(out) if out else Path(log_dir) / MONITOR_DIR
    files, previous = choose_window(log_dir, out_root, all_files, include_open)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = out_root / stamp
    n = 1
    while out_dir.exists():
        n += 1
        out_dir = out_root / f"{stamp}-{n}"
    staging = out_root / f".{out_dir.name}"
    staging.mkdir(parents=True)
    store = None
    try:
        try:
            store = open_store(reviews) if reviews else None
        except StoreError as err:
            raise MonitorError(err) from None
        return _monitor(
            log_dir,
            pipeline_root,
            files,
            previous,
            out_dir,
            staging,
            beam_args,
            baseline,
            calibration_options or CalibrationOptions(),
            store,
            expected,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if store is not None:
            store.close()


def _monitor(
    log_dir, pipeline_root, files, previous, out_dir, staging, beam_args, baseline, options, store, expected
):
    import tensorflow_data_validation as tfdv

    snapshots = staging / "open"
    to_read, open_records = _snapshot(files, snapshots)
    looked_up = baseline is None or (store is not None and expected is None)
    version = served_version(to_read) if looked_up else None
    baseline = baseline or find_baseline(pipeline_root, version)
    served, summary = served_statistics(to_read, baseline.schema, staging, beam_args)
    shutil.rmtree(snapshots, ignore_errors=True)
    rows = int(served.datasets[0].num_examples) if served.datasets else 0
    if not rows:
        raise MonitorError(
            f"no new logged calls in {log_dir} since the last report ({previous}): earlier "
            "reports read every record of these files"
        )
    previous_statistics = (
        tfdv.load_stats_binary(str(previous / MONITOR_STATISTICS_FILE)) if previous else None
    )
    schema, skipped = validation_schema(baseline.schema, served)
    schema, calibration, notes = calibrated_schema(
        schema,
        baseline,
        rows,
        _previous_rows(previous, previous_statistics),
        out_dir.parent / MONITOR_CALIBRATION_DIR,
        options,
    )
    anomalies = validate(served, schema, baseline.statistics, previous_statistics)
    notes = ([baseline.note] if baseline.note else []) + notes
    if open_records:
        notes.append(
            f"read {_open_calls(to_read, open_records)} logged calls from {len(open_records)} "
            f"file(s) still being written (--include-open); {_closing(min(open_records))}; "
            "the next report reads only the calls they gain after this one"
        )
    elif still_open := _open_note(log_dir):
        notes.append(still_open)
    versions = summary.get("versions", {})
    if len(versions) > 1:
        notes.append(
            f"the window mixes model versions {', '.join(sorted(versions))}: "
            f"compared with the baseline of {baseline.version or 'the latest run'}"
        )
    if skipped:
        notes.append(f"not compared (no values in this window): {', '.join(skipped)}")
    if rows < SMALL_WINDOW_ROWS:
        notes.append(
            f"small window: {rows} rows: "
            + (
                "its calibrated thresholds are wide, only large shifts stand out"
                if calibration
                else "the fixed thresholds suit a few hundred; expect noise"
            )
        )
    live = _live_performance(store, to_read, rows, summary, pipeline_root, version, expected, options)
    window = dict(
        summary,
        files=[f.name for f in to_read if not f.open],
        open_files=open_records,
        rows=rows,
        baseline_statistics=baseline.statistics_uri,
        baseline_version=baseline.version,
        baseline_rows=baseline.rows,
        schema=baseline.schema_uri,
        previous_report=str(previous) if previous else None,
        not_compared=skipped,
        anomalous_features=sorted(anomalies.anomaly_info),
        calibration=asdict(calibration) if calibration else None,
        measurements={k: {c: list(v) for c, v in m.items()} for k, m in measurements(anomalies).items()},
        live_performance=live.to_dict(),
    )
    tfdv.write_anomalies_text(anomalies, str(staging / MONITOR_ANOMALIES_FILE))
    result = MonitorResult(
        str(out_dir),
        [str(f.path) for f in files],
        window,
        anomalies,
        str(previous) if previous else None,
        notes,
        calibration,
        live,
    )
    from pipeline.monitor_page import render

    write_atomic(
        staging / MONITOR_REPORT_FILE, render(result, served, baseline.statistics, previous_statistics)
    )
    write_atomic(staging / MONITOR_WINDOW_FILE, json.dumps(window, indent=1))
    staging.rename(out_dir)
    return result


def _live_performance(
    store, files, rows, summary, pipeline_root, version, expected, options
) -> LivePerformance:
    """The window's reviewed requests against the pushed model's evaluation
    (pipeline/live_performance.py); says why not without a review database."""
    from pipeline.live_performance import find_expected, live_performance

    if store is None:
        return LivePerformance(
            unavailable="no review database: --reviews names one (default "
            "WORK_DIR/review/reviews.sqlite, which `btmri review` writes)"
        )
    # Open files are not in it: the review page lists closed files only.
    closed = [(f.name, f.path, f.skip) for f in files if not f.open]
    return live_performance(
        store.where,
        store.current(),
        closed,
        rows,
        int(summary.get("abstained", 0)),
        (lambda: (expected, "")) if expected is not None else (lambda: find_expected(pipeline_root, version)),
        options,
    )


def _open_calls(files: list[WindowFile], open_records: dict[str, int]) -> int:
    """Calls read from the open files of a window (their records beyond `skip`)."""
    return sum(max(0, open_records[f.name] - f.skip) for f in files if f.open)
