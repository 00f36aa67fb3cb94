"""The TensorFlow-free layer: documents, defaults, intervals, the run console."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from btmri import intervals, layout, spec
from btmri.console import CapturedRun, EpochProgress, Terminal
from btmri.documents import (
    SERVER_DEFAULTS,
    TRAINER_DEFAULTS,
    DuplicateReport,
    ExactDuplicates,
    Manifest,
    NearDuplicates,
    ServerOptions,
    TrainerConfig,
    TrainingHistory,
    write_atomic,
)


def test_spec_imports_no_tensorflow():
    code = (
        "import sys, btmri.spec, btmri.layout, btmri.documents, btmri.intervals, "
        "btmri.console; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_documents_round_trip_and_ignore_unknown_keys(tmp_path):
    config = TrainerConfig(epochs=3, compute_dtype="float32")
    assert TrainerConfig.from_json(config.to_json()) == config
    assert TrainerConfig.from_dict({"epochs": 5, "from_a_newer_version": 1}).epochs == 5
    options = ServerOptions(model_base_path="m", port=9000)
    assert ServerOptions.from_json(options.to_json()) == options
    manifest = Manifest(data_dir="d", counts={"train": {"glioma": 2}}, total_written=2)
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest and manifest.splits == ["train"]
    assert Manifest.read_if_present(tmp_path / "none") is None
    duplicates = DuplicateReport(
        near_threshold_bits=4,
        exact=ExactDuplicates(groups=1, extra_copies=2),
        near=NearDuplicates(pairs=3, pairs_across_splits={"eval-train": 1}),
    )
    typed = Manifest.from_json(Manifest(duplicates=duplicates).to_json())
    assert typed.duplicates == duplicates and typed.duplicates.near.across_splits == 1
    write_atomic(tmp_path / layout.HISTORY_FILE, TrainingHistory(history={"loss": [1.0, 0.5]}).to_json())
    assert TrainingHistory.read_if_present(str(tmp_path)).epochs_run == 2
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_cli_defaults_come_from_the_documents():
    from pipeline.cli import build_parser

    run = build_parser().parse_args(["run"])
    assert (run.epochs, run.batch_size, run.learning_rate, run.model) == (
        TRAINER_DEFAULTS.epochs,
        TRAINER_DEFAULTS.batch_size,
        TRAINER_DEFAULTS.learning_rate,
        TRAINER_DEFAULTS.model,
    )
    from pipeline.cli import _pipeline_config

    config = _pipeline_config(run, "d")  # the roots follow --work-dir, whose default is the layout's
    assert (config.pipeline_root, config.serving_dir) == (
        layout.DEFAULT_LAYOUT.pipeline_root,
        layout.DEFAULT_LAYOUT.serving_dir,
    )
    assert config.serving_dir.endswith(spec.MODEL_NAME)
    serve = build_parser().parse_args(["serve", "--model-base-path", "m"])
    assert (serve.port, serve.rest_port, serve.max_message_mb, serve.grpc_workers) == (
        SERVER_DEFAULTS.port,
        SERVER_DEFAULTS.rest_port,
        SERVER_DEFAULTS.max_message_mb,
        SERVER_DEFAULTS.grpc_workers,
    )
    assert serve.request_log_dir is None and (
        serve.log_payload,
        serve.log_sampling_rate,
        serve.log_max_mb,
    ) == (
        SERVER_DEFAULTS.log_payload,
        SERVER_DEFAULTS.log_sampling_rate,
        SERVER_DEFAULTS.log_max_mb,
    )
    assert SERVER_DEFAULTS.log_payload == spec.LOG_PAYLOAD_FEATURES  # privacy by default


def test_intervals_format_and_bootstrap():
    assert intervals.format_proportion(558, 569) == "0.981 [0.966, 0.989] (558/569)"
    assert intervals.format_with_interval(float("nan"), (0.0, 1.0)) == "n/a"
    values = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = intervals.bootstrap(lambda v: v.mean(), [values])
    assert lo < 0.5 < hi and (lo, hi) == intervals.bootstrap_mean(values)
    assert intervals.bootstrap(lambda v: float("nan"), [values]) == intervals.NAN_INTERVAL


def test_epoch_progress_prints_one_line_per_epoch():
    out = io.StringIO()
    progress = EpochProgress(Terminal(out))
    for line in [
        "Epoch 1/2",
        "3/3 - 2s - loss: 1.2345 - accuracy: 0.5000 - val_loss: 1.1 - "
        "val_accuracy: 0.55 - lr: 0.001 - 2s/epoch",
        "unrelated line",
        "Epoch 2/2",
        "3/3 - 2s - loss: 1.0 - accuracy: 0.6 - val_loss: 1.0 - val_accuracy: 0.6 - lr: 0.0005",
    ]:
        progress.feed(line + "\n")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "epoch 1/2" in lines[0] and "loss 1.2345" in lines[0] and "val_accuracy 0.5500" in lines[0]
    assert "epoch 2/2" in lines[1] and "lr" not in lines[1]


def test_epoch_progress_learns_the_last_epoch_when_the_schedule_anneals():
    from btmri.spec import SCHEDULE_ANNEAL_LINE

    out = io.StringIO()
    progress = EpochProgress(Terminal(out))
    figures = "3/3 - 2s - loss: 1.0 - accuracy: 0.6 - val_loss: 1.0 - val_accuracy: 0.6"
    for epoch in range(1, 4):
        progress.feed(f"Epoch {epoch}/80")
        progress.feed(figures)
        if epoch == 2:
            progress.feed(SCHEDULE_ANNEAL_LINE.format(first=3, last=3, reason="eval loss flat for 8 epochs"))
    lines = out.getvalue().splitlines()
    assert "epoch 1/80" in lines[0] and "at most" in lines[0]
    assert lines[2].strip().startswith("Training schedule: annealing over epochs 3-3")
    # The last epoch is now 3, not 80: the bar is full and nothing is left.
    assert "epoch 3/3 (stops early; limit 80)" in lines[3] and "[" + "#" * 20 + "]" in lines[3]
    assert "~0 s left" in lines[3]


@pytest.mark.parametrize("verbose", [False, True])
def test_captured_run_keeps_the_terminal_quiet_and_logs_everything(tmp_path, capfd, verbose):
    log = tmp_path / "run.log"
    with CapturedRun(str(log), verbose=verbose) as run:
        print("a python print", flush=True)
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child noise\\n')"])
        run.terminal.line("[1/1] Trainer ...")
    shown = capfd.readouterr().out
    assert "[1/1] Trainer ..." in shown
    assert ("child noise" in shown) == verbose and ("a python print" in shown) == verbose
    text = log.read_text()
    assert "a python print" in text and "child noise" in text


def test_version_and_the_synth_summary_in_words(tmp_path):
    from importlib import metadata

    version = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == f"btmri {metadata.version('brain-tumor-mri-tfx')}"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "synth", "--out", str(tmp_path / "s"), "--per-class", "2"]
        + ["--test-per-class", "1", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == [
        f"wrote 12 synthetic images and 9 lesion masks to {tmp_path / 's'} (seed 0)",
        "  Training: glioma 2, meningioma 2, notumor 2, pituitary 2",
        "  Testing: glioma 1, meningioma 1, notumor 1, pituitary 1",
    ]


def test_report_without_a_run_says_so_at_once_without_tensorflow(tmp_path):
    # The command must not import TFX or TensorFlow (seconds) to find there is no run.
    probe = (
        "import sys; from pipeline.cli import main; code = main(['report', '--pipeline-root', sys.argv[1]]); "
        "print(code, 'tensorflow' in sys.modules, 'tfx' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False", "False"]
    assert done.stderr.startswith(f"btmri report: error: no ML Metadata store at {tmp_path}")
    assert "Traceback" not in done.stderr
