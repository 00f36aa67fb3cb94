"""Drift and skew monitoring (pipeline/monitor.py, `btmri monitor`) with real TFDV.

Library tests: request logs are written by the server's own logger (RequestLog) from
synthetic phantoms and the answers of the pipeline's model (`tiny_run`), through the
feature function the server uses; the baseline is computed the way RequestBaseline
computes it, on the first half of each class's training phantoms, and the traffic
is the other half (held out, like the eval split), and the thresholds are calibrated
on the baseline's stored rows for each window's size, as `btmri monitor` does. Traffic
like the baseline raises nothing; the same traffic 30 % darker, resized to 64x64, or
of one class raises the matching anomaly, as skew and, against the previous window,
as drift.

The 1-epoch test model answers one class for every image, so a change of the class
mix cannot show in its answers; the class test answers each image with its label
instead (an oracle standing in for a model that tells the classes apart).

End to end: `btmri serve --request-log` on the pushed model, real gRPC and REST
calls, then `btmri monitor` against the run's own RequestBaseline.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2, prediction_service_pb2_grpc

from btmri import spec
from btmri.documents import ServerOptions
from btmri.layout import (
    BASELINE_ROWS_FILE,
    MONITOR_ANOMALIES_FILE,
    MONITOR_DIR,
    MONITOR_REPORT_FILE,
    MONITOR_STATISTICS_FILE,
    MONITOR_WINDOW_FILE,
)
from components.baseline.statistics import load_schema, rows_to_json, statistics_of_rows
from data_prep.request_features import request_features
from data_prep.synth import generate_dataset
from pipeline.monitor import Baseline, MonitorError, monitor
from serving.process import ServerProcess
from serving.request_log import RequestLog, log_files
from serving.requests import predict_request

PER_CLASS = 40  # 20 per class in the baseline, 20 in each window of traffic
BATCH = 8  # images per logged call


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, list[tuple[bytes, str]]]:
    """{"baseline": [(png, class)], "traffic": [...]}: halves of each class."""
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(str(root), per_class=PER_CLASS, test_per_class=1, seed=11, progress=False)
    halves = {"baseline": [], "traffic": []}
    for name in spec.CLASS_NAMES:
        files = sorted((root / spec.KAGGLE_TRAINING_DIR / name).glob("*.png"))
        for i, path in enumerate(files):
            halves["baseline" if i % 2 == 0 else "traffic"].append((path.read_bytes(), name))
    return halves


@pytest.fixture(scope="module")
def model(tiny_run):
    (version,) = [p for p in (tiny_run / "serving").iterdir() if p.name.isdigit()]
    return int(version.name), tf.saved_model.load(str(version)).signatures[spec.PREDICT_IMAGES]


def _answers(model, images: list[bytes]) -> dict[str, np.ndarray]:
    outputs = {}
    for i in range(0, len(images), BATCH):
        part = model[1](**{spec.IMAGE_BYTES_INPUT: tf.constant(images[i : i + BATCH])})
        for key, value in part.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}


def _oracle(outputs: dict[str, np.ndarray], labels: list[str]) -> dict[str, np.ndarray]:
    """The answers with each image's label as its class: the class mix is the traffic's."""
    return dict(outputs, **{spec.CLASS_NAME: np.array([label.encode() for label in labels], object)})


def _darker(png: bytes) -> bytes:
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.imencode(".png", (pixels * 0.7).astype(np.uint8))[1].tobytes()


def _resized(png: bytes) -> bytes:
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.imencode(".png", cv2.resize(pixels, (64, 64), interpolation=cv2.INTER_AREA))[1].tobytes()


@pytest.fixture(scope="module")
def served(model, phantoms) -> dict[str, tuple[list[bytes], dict, list[str]]]:
    """name → (images, the model's answers, labels): the baseline half, the traffic half,
    and the traffic 30 % darker and resized to 64x64."""
    base_images, base_labels = map(list, zip(*phantoms["baseline"]))
    images, labels = map(list, zip(*phantoms["traffic"]))
    sets = {
        "baseline": (base_images, base_labels),
        "traffic": (images, labels),
        "darker": ([_darker(p) for p in images], labels),
        "resized": ([_resized(p) for p in images], labels),
    }
    return {name: (imgs, _answers(model, imgs), lbls) for name, (imgs, lbls) in sets.items()}


def _baseline(images: list[bytes], outputs: dict, folder: Path) -> Baseline:
    """Statistics and stored rows, as RequestBaseline writes them."""
    schema = load_schema()
    folder.mkdir(parents=True, exist_ok=True)
    rows = request_features(images, outputs)
    stats = statistics_of_rows(rows, schema, folder / "FeatureStats.pb")
    (folder / BASELINE_ROWS_FILE).write_text(rows_to_json(rows))
    return Baseline(
        stats,
        schema,
        str(folder / "FeatureStats.pb"),
        "request_features.pbtxt",
        rows_uri=str(folder / BASELINE_ROWS_FILE),
    )


def _log(
    version: int, log_dir: Path, images: list[bytes], outputs: dict, payload: str = spec.LOG_PAYLOAD_FEATURES
) -> None:
    """The traffic as the server's logger writes it, BATCH images per call."""
    logger = RequestLog(ServerOptions(model_base_path="-", request_log_dir=str(log_dir), log_payload=payload))
    for i in range(0, len(images), BATCH):
        logger.offer(
            spec.MODEL_NAME,
            spec.PREDICT_IMAGES,
            {spec.IMAGE_BYTES_INPUT: np.array(images[i : i + BATCH], object)},
            version,
            {k: v[i : i + BATCH] for k, v in outputs.items()},
        )
    logger.close()
    assert logger.written == -(-len(images) // BATCH) and not logger.dropped


@pytest.fixture(scope="module")
def baseline(served, tmp_path_factory) -> Baseline:
    images, outputs, _ = served["baseline"]
    return _baseline(images, outputs, tmp_path_factory.mktemp("baseline"))


def _kinds(result, feature: str) -> set[str]:
    """'skew' and/or 'drift' for the anomalies TFDV reported on `feature`."""
    info = result.anomalies.anomaly_info.get(feature)
    kinds = set()
    for reason in info.reason if info else []:
        if "training and serving" in reason.short_description:
            kinds.add("skew")
        if "current and previous" in reason.short_description:
            kinds.add("drift")
    return kinds


def test_traffic_like_the_baseline_raises_nothing_then_darker_images_drift(model, served, baseline, tmp_path):
    images, outputs, _ = served["traffic"]
    _log(model[0], tmp_path, images, outputs)
    first = monitor(str(tmp_path), "", baseline=baseline)
    assert not first.anomalous, first.lines()
    assert first.drift_against is None and first.window["rows"] == len(images)
    assert first.calibration.window_rows == len(images) and not first.calibration.drift
    assert first.window["records"] == len(images) // BATCH
    assert first.window["versions"] == {str(model[0]): len(images) // BATCH}
    out = Path(first.out_dir)
    assert out.parent == tmp_path / MONITOR_DIR
    for name in (MONITOR_STATISTICS_FILE, MONITOR_ANOMALIES_FILE, MONITOR_REPORT_FILE, MONITOR_WINDOW_FILE):
        assert (out / name).is_file(), name
    assert "No anomaly" in (out / MONITOR_REPORT_FILE).read_text()
    with pytest.raises(MonitorError, match="no new request logs"):
        monitor(str(tmp_path), "", baseline=baseline)

    _log(model[0], tmp_path, *served["darker"][:2])
    second = monitor(str(tmp_path), "", baseline=baseline)
    assert second.drift_against == first.out_dir
    assert second.window["files"] and not set(second.window["files"]) & set(first.window["files"])
    assert _kinds(second, spec.FEATURE_INTENSITY_MEAN) == {"skew", "drift"}, second.lines()
    for unaffected in (
        spec.FEATURE_IMAGE_WIDTH,
        spec.FEATURE_IMAGE_HEIGHT,
        spec.FEATURE_IMAGE_FORMAT,
        spec.FEATURE_PREDICTED_CLASS,
    ):
        assert not _kinds(second, unaffected), second.lines()
    page = (Path(second.out_dir) / MONITOR_REPORT_FILE).read_text()
    assert "Anomalies" in page and "intensity_mean" in page and page.count("<img") >= 8


def test_images_resized_to_64x64_raise_size_skew(model, served, baseline, tmp_path):
    _log(model[0], tmp_path, *served["resized"][:2])
    result = monitor(str(tmp_path), "", baseline=baseline)
    for feature in (spec.FEATURE_IMAGE_WIDTH, spec.FEATURE_IMAGE_HEIGHT):
        assert _kinds(result, feature) == {"skew"}, result.lines()
    assert not _kinds(result, spec.FEATURE_PREDICTED_CLASS)


def test_traffic_of_one_class_raises_class_skew(model, served, tmp_path):
    images, outputs, labels = served["baseline"]
    baseline = _baseline(images, _oracle(outputs, labels), tmp_path / "baseline")
    images, outputs, labels = served["traffic"]
    _log(model[0], tmp_path / "balanced", images, _oracle(outputs, labels))
    assert not monitor(str(tmp_path / "balanced"), "", baseline=baseline).anomalous
    glioma = [i for i, label in enumerate(labels) if label == "glioma"] * 4  # as many rows
    _log(
        model[0],
        tmp_path / "glioma",
        [images[i] for i in glioma],
        _oracle({k: v[glioma] for k, v in outputs.items()}, [labels[i] for i in glioma]),
    )
    result = monitor(str(tmp_path / "glioma"), "", baseline=baseline)
    assert _kinds(result, spec.FEATURE_PREDICTED_CLASS) == {"skew"}, result.lines()
    assert "glioma" in result.anomalies.anomaly_info[spec.FEATURE_PREDICTED_CLASS].reason[0].description


def test_a_log_without_image_features_compares_the_answers_only(model, served, baseline, tmp_path):
    _log(model[0], tmp_path, *served["darker"][:2], payload=spec.LOG_PAYLOAD_NONE)
    result = monitor(str(tmp_path), "", baseline=baseline)
    assert set(result.window["not_compared"]) == set(spec.IMAGE_FEATURES)
    # darker, but no image feature was logged, so none is flagged; the answers may move
    # with the images (a model whose ood_score shifted with darkness failed a stricter check)
    assert not set(result.anomalies.anomaly_info) & set(spec.IMAGE_FEATURES), result.lines()
    assert result.window["payloads"] == {spec.LOG_PAYLOAD_NONE: len(served["darker"][0]) // BATCH}


def test_no_logs_is_a_clear_error(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["monitor", "--request-log", str(tmp_path), "--pipeline-root", str(tmp_path)]) == 2
    assert "no request logs in" in capsys.readouterr().err


# ---- end to end: the real server, its log, `btmri monitor`, `btmri report` --------------


def _predict(channel, images: list[bytes]) -> None:
    request = predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: images})
    prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)


def test_served_requests_are_logged_and_monitored_against_the_run_baseline(tiny_run, model, tmp_path, capsys):
    import base64

    from pipeline.cli import main

    log_dir = tmp_path / "requests"
    images = [
        p.read_bytes()
        for p in sorted((tiny_run / "data" / "synthetic" / spec.KAGGLE_TESTING_DIR).glob("*/*.png"))
    ]
    with ServerProcess(
        tiny_run / "serving",
        "--request-log",
        str(log_dir),
        "--log-rotate-seconds",
        "1",
        log_path=tmp_path / "server.log",
    ) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            for i in range(0, len(images), 4):
                _predict(channel, images[i : i + 4])
        body = json.dumps(
            {
                "signature_name": spec.PREDICT_IMAGES,
                "instances": [{"b64": base64.b64encode(images[0]).decode()}],
            }
        ).encode()
        urllib.request.urlopen(
            urllib.request.Request(f"{server.rest_url}/v1/models/{spec.MODEL_NAME}:predict", body),
            timeout=120,
        ).read()
        metrics = (
            urllib.request.urlopen(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=60)
            .read()
            .decode()
        )
    calls = -(-len(images) // 4) + 1
    assert "btmri_serving_request_log_written_total" in metrics
    files = log_files(log_dir)
    assert files and not [p for p in log_dir.iterdir() if p.name.startswith(".")]
    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for f in files
        for r in tf.data.TFRecordDataset(str(f))
    ]
    assert len(records) == calls
    for record in records:
        assert record.log_metadata.model_spec.name == spec.MODEL_NAME
        assert record.log_metadata.model_spec.version.value == model[0]
        assert record.log_metadata.timestamp_secs > 1_700_000_000
        assert set(record.predict_log.request.inputs) == set(spec.IMAGE_FEATURES)
        assert spec.PROBABILITIES in record.predict_log.response.outputs
    assert not any(b"\x89PNG" in f.read_bytes() for f in files), "no image byte in the log"

    capsys.readouterr()
    code = main(["monitor", "--request-log", str(log_dir), "--pipeline-root", str(tiny_run / "pipeline")])
    out = capsys.readouterr().out
    assert f"window: {len(images) + 1} images in {calls} logged calls" in out
    assert code == (1 if "ANOMALY" in out else 0), out
    assert "thresholds calibrated for windows of" in out and "expected false-alarm rate 0.05" in out
    (report,) = [p for p in (log_dir / MONITOR_DIR).iterdir() if not p.name.startswith(".")]
    window = json.loads((report / MONITOR_WINDOW_FILE).read_text())
    assert "RequestBaseline" in window["baseline_statistics"]
    # The run's RequestBaseline stored its rows: the thresholds were calibrated on them.
    assert window["calibration"]["stored_rows"] == window["baseline_rows"] > 0
    assert set(window["calibration"]["skew"]) == set(window["measurements"])
    assert window["baseline_version"] == model[0]  # the pushing run's, found from the served version
    assert (
        main(["monitor", "--request-log", str(log_dir), "--pipeline-root", str(tiny_run / "pipeline")]) == 2
    )


def test_a_version_no_run_pushed_falls_back_to_the_latest_baseline_and_says_so(tiny_run, model):
    from pipeline.monitor import find_baseline

    matched = find_baseline(str(tiny_run / "pipeline"), model[0])
    assert (matched.version, matched.note) == (model[0], "")
    stranger = find_baseline(str(tiny_run / "pipeline"), model[0] + 1)
    assert stranger.version is None and f"served version {model[0] + 1} was not pushed" in stranger.note
    assert stranger.statistics_uri == matched.statistics_uri  # one run here: the same statistics


def test_the_report_shows_the_monitoring_baseline(tiny_run, tmp_path, capsys):
    from pipeline.cli import main

    capsys.readouterr()
    assert (
        main(
            ["report", "--pipeline-root", str(tiny_run / "pipeline"), "--out", str(tmp_path / "report.html")]
        )
        == 0
    )
    assert "monitoring baseline recorded: request-feature statistics of" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    assert 'id="monitoring"' in page and 'id="request-baseline"' in page
    assert spec.FEATURE_INTENSITY_MEAN in page
