"""`btmri monitor`: drift and skew of served traffic, with TFDV (docs/monitoring.md).

1. The window: the closed request log files (serving/request_log.py) that no earlier
   monitor report of the same output folder covered (`all_files`: every retained one).
   Its baseline is that of the run that pushed the model version the window's
   requests were answered by (so a newer run that was not blessed, or whose push is
   not served yet, does not move it); the latest run's if no run here pushed it.
2. A Beam pipeline reads them (a file cut short by a crash yields the records before
   the cut), turns every logged row into the derived request features (logged
   features as they are, logged images through data_prep/request_features.py) and
   computes TFDV statistics, as the pipeline's RequestBaseline did for its split.
3. TFDV validates them against the run's request-feature schema: skew against the
   baseline statistics (`serving_statistics`: both comparators are symmetric, so the
   served statistics are the ones also checked against the schema), drift against
   the previous report's window when there is one (`previous_statistics`).
4. The report folder <out>/<UTC time>/ gets statistics.pb, anomalies.pbtxt, monitor.html
   (histograms served vs baseline, the measurements, the anomalies) and window.json.

Exit codes (pipeline/monitor_cli.py): 0 nothing anomalous, 1 anomalies (drift, skew or
schema), 2 nothing to monitor or no baseline.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam

from btmri import spec
from btmri.documents import write_atomic
from btmri.layout import (
    MONITOR_ANOMALIES_FILE,
    MONITOR_DIR,
    MONITOR_REPORT_FILE,
    MONITOR_STATISTICS_FILE,
    MONITOR_WINDOW_FILE,
    SCHEMA_FILE,
    STATISTICS_FILE,
)

# Below this many rows a window's histograms are noisy against the schema's thresholds
# (chosen for windows of a few hundred requests): the report says so.
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


@dataclass
class MonitorResult:
    out_dir: str
    files: list[str]
    window: dict  # window.json
    anomalies: object  # tensorflow_metadata Anomalies
    drift_against: str | None  # the previous report folder compared with
    notes: list[str] = field(default_factory=list)

    @property
    def anomalous(self) -> bool:
        return bool(self.anomalies.anomaly_info) or bool(self.anomalies.dataset_anomaly_info.reason)

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
    from pipeline.metadata import latest_output, outputs_of_pushing_run

    config = PipelineConfig(pipeline_root=pipeline_root, data_root="", serving_dir="")
    if missing := missing_store_message(config):
        raise MonitorError(missing)
    note, matched = "", None
    if version is not None:
        found = outputs_of_pushing_run(config, version, "RequestBaseline", ("statistics", "schema"))
        if found is not None:
            statistics, schema, matched = found["statistics"], found["schema"], version
        else:
            note = (
                f"served version {version} was not pushed by a run of {pipeline_root}: "
                "compared with the latest run's baseline"
            )
    if matched is None:
        statistics = latest_output(config, "RequestBaseline", "statistics")
        schema = latest_output(config, "RequestBaseline", "schema")
    if statistics is None or schema is None:
        raise MonitorError(
            f"no RequestBaseline in {pipeline_root}: the run predates monitoring; run `btmri run` again"
        )
    files = sorted(Path(statistics.uri).glob(f"Split-*/{STATISTICS_FILE}"))
    if not files:
        raise MonitorError(f"no statistics in {statistics.uri}")
    schema_path = os.path.join(schema.uri, SCHEMA_FILE)
    return Baseline(
        tfdv.load_stats_binary(str(files[0])),
        tfdv.load_schema_text(schema_path),
        str(files[0]),
        schema_path,
        version=matched,
        note=note,
    )


def served_version(files: list[Path]) -> int | None:
    """The model version that answered the window: the most common one among the
    first records of its files (a file is one server's few seconds or minutes; reading
    one record each keeps this cheap). None when no file holds a record."""
    from collections import Counter

    from tensorflow_serving.apis import prediction_log_pb2

    versions = Counter()
    for path in files:
        first = next(iter(read_log_file(str(path))), None)
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


def open_log_records(log_dir: str) -> tuple[int, int]:
    """(files, whole records) the servers are still writing: the window cannot see them
    until each is closed (its name loses the leading dot)."""
    from serving.request_log import is_log_file

    try:
        names = [n for n in os.listdir(log_dir) if n.startswith(".") and is_log_file(n[1:])]
    except FileNotFoundError:
        return 0, 0
    import tensorflow as tf

    records = 0
    for name in names:
        try:
            records += sum(1 for _ in read_log_file(os.path.join(log_dir, name)))
        except (OSError, tf.errors.OpError):  # closed (renamed) meanwhile
            pass
    return len(names), records


def _open_note(log_dir: str) -> str:
    files, records = open_log_records(log_dir)
    if not files:
        return ""
    return (
        f"{records} logged calls in {files} file(s) still being written are not in this window: "
        "a server closes its file --log-rotate-seconds after the file's first record (default "
        "60 s), at --log-file-mb, or when it stops; run again after that"
    )


def choose_window(log_dir: str, out_root: Path, all_files: bool) -> tuple[list[Path], Path | None]:
    """(log files of this window, the previous report or None)."""
    from serving.request_log import log_files

    files = log_files(log_dir)
    if not files:
        still_open = _open_note(log_dir)
        raise MonitorError(
            f"no request logs in {log_dir} (closed files named "
            f"requests-*.tfrecord; a server writes them with --request-log "
            f"and closes one every --log-rotate-seconds)" + (f"; {still_open}" if still_open else "")
        )
    reports = _reports(out_root)
    previous = reports[-1] if reports else None
    if all_files:
        return files, previous
    seen = set()
    for report in reports:
        seen.update(json.loads((report / MONITOR_WINDOW_FILE).read_text()).get("files", []))
    new = [f for f in files if f.name not in seen]
    if not new:
        raise MonitorError(
            f"no new request logs in {log_dir} since the last report "
            f"({previous}); --all checks every retained file again"
        )
    return new, previous


def read_log_file(path: str):
    """The serialized records of one log file; a file cut short ends at its last whole record."""
    import tensorflow as tf

    try:
        for record in tf.data.TFRecordDataset(path):
            yield record.numpy()
    except tf.errors.DataLossError:
        return


def _rows_of(serialized: bytes):
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.request_log import record_rows

    record = prediction_log_pb2.PredictionLog.FromString(serialized)
    yield from record_rows(record)


def _summary_of(serialized: bytes) -> dict:
    from tensorflow_serving.apis import prediction_log_pb2

    record = prediction_log_pb2.PredictionLog.FromString(serialized)
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
        "versions": {str(meta.model_spec.version.value): 1},
        "payloads": {payload: 1},
        "first": meta.timestamp_secs,
        "last": meta.timestamp_secs,
    }


class _MergeSummaries(beam.CombineFn):
    def create_accumulator(self):
        return {"records": 0, "versions": {}, "payloads": {}, "first": None, "last": None}

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            out["records"] += acc["records"]
            for key in ("versions", "payloads"):
                for k, v in acc[key].items():
                    out[key][k] = out[key].get(k, 0) + v
            for key, pick in (("first", min), ("last", max)):
                if acc[key] is not None:
                    out[key] = acc[key] if out[key] is None else pick(out[key], acc[key])
        return out

    def extract_output(self, acc):
        return acc


def served_statistics(files: list[Path], schema, out_dir: Path, beam_args: list[str] | None = None):
    """TFDV statistics of the window's rows (written to out_dir) and the window's summary."""
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.baseline.statistics import RowsToStatistics

    stats_path = out_dir / MONITOR_STATISTICS_FILE
    summary_path = out_dir / "summary.tmp.json"
    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
        records = (
            pipeline
            | "Files" >> beam.Create([str(f) for f in files])
            | "Read" >> beam.FlatMap(read_log_file)
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


# ---- the whole run -------------------------------------------------------------------


def monitor(
    log_dir: str,
    pipeline_root: str,
    out: str | None = None,
    all_files: bool = False,
    beam_args: list[str] | None = None,
    baseline: Baseline | None = None,
) -> MonitorResult:
    import tensorflow_data_validation as tfdv

    out_root = Path(out) if out else Path(log_dir) / MONITOR_DIR
    files, previous = choose_window(log_dir, out_root, all_files)
    baseline = baseline or find_baseline(pipeline_root, served_version(files))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = out_root / stamp
    n = 1
    while out_dir.exists():
        n += 1
        out_dir = out_root / f"{stamp}-{n}"
    staging = out_root / f".{out_dir.name}"
    staging.mkdir(parents=True)
    served, summary = served_statistics(files, baseline.schema, staging, beam_args)
    rows = int(served.datasets[0].num_examples) if served.datasets else 0
    previous_statistics = (
        tfdv.load_stats_binary(str(previous / MONITOR_STATISTICS_FILE)) if previous else None
    )
    schema, skipped = validation_schema(baseline.schema, served)
    anomalies = validate(served, schema, baseline.statistics, previous_statistics)
    notes = [baseline.note] if baseline.note else []
    if still_open := _open_note(log_dir):
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
        notes.append(f"small window: {rows} rows (the thresholds suit a few hundred; expect noise)")
    window = dict(
        summary,
        files=[f.name for f in files],
        rows=rows,
        baseline_statistics=baseline.statistics_uri,
        baseline_version=baseline.version,
        schema=baseline.schema_uri,
        previous_report=str(previous) if previous else None,
        not_compared=skipped,
        anomalous_features=sorted(anomalies.anomaly_info),
    )
    tfdv.write_anomalies_text(anomalies, str(staging / MONITOR_ANOMALIES_FILE))
    result = MonitorResult(
        str(out_dir), [str(f) for f in files], window, anomalies, str(previous) if previous else None, notes
    )
    from pipeline.monitor_page import render

    write_atomic(
        staging / MONITOR_REPORT_FILE, render(result, served, baseline.statistics, previous_statistics)
    )
    write_atomic(staging / MONITOR_WINDOW_FILE, json.dumps(window, indent=1))
    staging.rename(out_dir)
    return result
