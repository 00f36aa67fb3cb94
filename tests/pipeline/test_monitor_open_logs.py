"""`btmri monitor` tells what it cannot see yet: log files a server is still writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main


def _write_records(path, n: int) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(n):
            writer.write(f"record {i}".encode())


def test_records_in_open_files_are_counted_and_named_when_nothing_is_closed(tmp_path, capsys):
    from pipeline.monitor import MonitorError, choose_window, open_log_records

    name = "requests-20261206T120000.000000Z-42-1.tfrecord"
    _write_records(tmp_path / f".{name}", 3)  # the open file: a leading dot
    (tmp_path / ".unrelated").write_text("not a log")
    assert open_log_records(str(tmp_path)) == (1, 3)
    with pytest.raises(MonitorError, match=r"3 logged calls in 1 file\(s\) still being written"):
        choose_window(str(tmp_path), tmp_path / "monitor", all_files=False)
    # The same through the command: exit 2 and the note, no traceback.
    assert main(["monitor", "--request-log", str(tmp_path), "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "still being written" in err and "--log-rotate-seconds" in err and "Traceback" not in err
    # Once closed (renamed without the dot), it is the window's and nothing is open.
    (tmp_path / f".{name}").rename(tmp_path / name)
    assert open_log_records(str(tmp_path)) == (0, 0)
    files, previous = choose_window(str(tmp_path), tmp_path / "monitor", all_files=False)
    assert [f.name for f in files] == [name] and previous is None


# ---- --include-open: reading them, and not twice -------------------------------------

CALL_ROWS = 4


def _calls(rng, n: int) -> list[tuple[list[bytes], dict]]:
    """n predict_images calls of CALL_ROWS small gray images and made-up answers."""
    import cv2
    import numpy as np

    from btmri import spec

    calls = []
    for _ in range(n):
        images = [
            cv2.imencode(".png", rng.integers(40, 200, (24, 24), dtype=np.uint8))[1].tobytes()
            for _ in range(CALL_ROWS)
        ]
        probabilities = rng.dirichlet(np.ones(spec.NUM_CLASSES), CALL_ROWS).astype(np.float32)
        outputs = {
            spec.PROBABILITIES: probabilities,
            spec.CLASS_NAME: np.array(
                [spec.CLASS_NAMES[i].encode() for i in probabilities.argmax(1)], object
            ),
            spec.OOD_SCORE: rng.lognormal(-0.7, 0.4, CALL_ROWS).astype(np.float32),
        }
        calls.append((images, outputs))
    return calls


def _write_log(path, calls) -> None:
    """A log file as the server's writer fills it (features payload)."""
    import time

    import numpy as np
    import tensorflow as tf

    from btmri import spec
    from serving.request_log import build_record

    with tf.io.TFRecordWriter(str(path)) as writer:
        for images, outputs in calls:
            record = build_record(
                spec.LOG_PAYLOAD_FEATURES,
                spec.MODEL_NAME,
                1,
                spec.PREDICT_IMAGES,
                {spec.IMAGE_BYTES_INPUT: np.array(images, object)},
                outputs,
                time.time(),
                1.0,
            )
            writer.write(record.SerializeToString())


@pytest.fixture
def baseline(tmp_path):
    """A calibrated baseline of 200 rows like the logged ones (rows stored beside it)."""
    import numpy as np
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory

    from components.baseline.statistics import load_schema, rows_to_json, to_record_batch
    from data_prep.request_features import request_features
    from pipeline.monitor import Baseline

    schema = load_schema()
    rows = [
        row
        for images, outputs in _calls(np.random.default_rng(1), 50)
        for row in request_features(images, outputs)
    ]
    statistics = generate_statistics_in_memory(to_record_batch(rows), tfdv.StatsOptions(schema=schema))
    (tmp_path / "baseline").mkdir()
    rows_path = tmp_path / "baseline" / "request_rows.json"
    rows_path.write_text(rows_to_json(rows))
    return Baseline(statistics, schema, "FeatureStats.pb", "schema.pbtxt", rows_uri=str(rows_path))


def test_include_open_reads_open_files_once_and_says_when_they_close(tmp_path, baseline):
    import time

    import numpy as np

    from pipeline.monitor import MonitorError, monitor

    logs = tmp_path / "logs"
    logs.mkdir()
    rng = np.random.default_rng(2)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + ".000000Z"
    closed, still_open = (f"requests-{stamp}-42-{n:06d}.tfrecord" for n in (1, 2))
    _write_log(logs / closed, _calls(rng, 3))
    open_calls = _calls(rng, 3)
    _write_log(logs / f".{still_open}", open_calls[:2])

    first = monitor(str(logs), "", baseline=baseline)
    assert first.window["files"] == [closed] and first.window["open_files"] == {}
    assert first.window["rows"] == 3 * CALL_ROWS
    (note,) = [n for n in first.notes if "still being written" in n]
    due = time.strftime("%H:%M:%S UTC", time.gmtime(int(now) + 60))
    assert note.startswith("2 logged calls in 1 file(s) still being written") and f"by {due}" in note
    assert "--include-open reads them" in note

    second = monitor(str(logs), "", baseline=baseline, include_open=True)
    assert second.window["files"] == [] and second.window["open_files"] == {still_open: 2}
    assert second.window["rows"] == 2 * CALL_ROWS and second.window["records"] == 2
    assert any("read 2 logged calls from 1 file(s) still being written" in n for n in second.notes)
    assert (logs / f".{still_open}").is_file(), "the server's file is left alone"

    # The server writes one more call, then closes the file: only that call is new.
    _write_log(logs / f".{still_open}", open_calls)
    (logs / f".{still_open}").rename(logs / still_open)
    third = monitor(str(logs), "", baseline=baseline, include_open=True)
    assert third.window["files"] == [still_open] and third.window["records"] == 1
    assert third.window["rows"] == CALL_ROWS
    with pytest.raises(MonitorError, match="no new request logs"):
        monitor(str(logs), "", baseline=baseline, include_open=True)

    # Every report states its calibration: window size, thresholds, rate.
    for result in (first, second, third):
        calibration = result.window["calibration"]
        assert calibration["window_rows"] == result.window["rows"] and calibration["false_alarm_rate"] == 0.05
        assert set(result.window["measurements"]) >= {"intensity_mean", "ood_score"}
        page = (Path(result.out_dir) / "monitor.html").read_text()
        assert 'id="calibration"' in page and f"a window of {result.window['rows']} rows" in page
    assert third.calibration.drift and not first.calibration.drift  # drift: against a previous window
