"""`btmri monitor` tells what it cannot see yet: log files a server is still writing."""

from __future__ import annotations

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
