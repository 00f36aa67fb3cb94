"""The run's console: the Trainer's phases are shown as they finish, and the summary
lists where the time went."""

from __future__ import annotations

import io
import logging

from absl import logging as absl_logging

from btmri.console import Terminal
from btmri.spec import TRAINER_KERNELS_LOG, TRAINER_PHASE_LOG
from pipeline.local_runner import RunSummary, _ProgressHandler
from pipeline.summary import summary_lines


def test_trainer_phases_reach_the_console_and_the_summary():
    out = io.StringIO()
    handler = _ProgressHandler(Terminal(out), ("ImportExampleGen", "Trainer"))
    logger = logging.getLogger("absl")
    logger.addHandler(handler)
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        absl_logging.info(TRAINER_KERNELS_LOG, "float32", "off")
        for phase, took in (("training", 123.4), ("calibration", 0.8), ("export", 12.0)):
            absl_logging.info(TRAINER_PHASE_LOG, phase, took)
        absl_logging.info("Trainer phase of a different shape %s", "x")  # not a phase line
    finally:
        logger.removeHandler(handler)
        absl_logging.set_verbosity(old)
    assert handler.trainer_phases == {"training": 123.4, "calibration": 0.8, "export": 12.0}
    assert "      Trainer: calibration done in 0.8 s" in out.getvalue().splitlines()
    # The kernels it trained with: an epoch's time depends on them.
    assert handler.trainer_kernels == {"compute_dtype": "float32", "onednn": False}
    assert "      Trainer: computing in float32, oneDNN kernels off" in out.getvalue().splitlines()

    summary = RunSummary(
        seconds=200.0,
        component_seconds={"ImportExampleGen": 30.0, "Trainer": 150.0, "Evaluator": 95.0},
        trainer_phase_seconds=handler.trainer_phases,
    )
    lines = summary_lines(summary, accuracy_bound=0.5)
    timing = lines[lines.index("time per step:") + 1 :]
    # longest first, minutes from 90 s on, the Trainer's phases under it
    assert [line.split()[0] for line in timing] == [
        "Trainer",
        "training",
        "calibration",
        "export",
        "Evaluator",
        "ImportExampleGen",
    ]
    assert timing[0].endswith("2.5 min") and timing[-1].endswith("30.0 s")
    assert summary_lines(RunSummary(), accuracy_bound=0.5)[-1] == "not pushed"  # nothing ran: no table


def test_the_summary_gives_accuracy_by_patient_when_the_report_has_it(tmp_path):
    import json

    from btmri.intervals import PATIENT_BOOTSTRAP, WILSON
    from btmri.layout import SUMMARY_FILE

    figures = {"accuracy": 0.979, "accuracy_ci95": [0.967, 0.989], "n": 821, "units": 476}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({**figures, "interval_method": PATIENT_BOOTSTRAP}))
    lines = summary_lines(RunSummary(report_dir=str(tmp_path)), accuracy_bound=0.5)
    by_patient = [line for line in lines if line.startswith("accuracy by patient")]
    assert by_patient == [
        "accuracy by patient 0.979 [0.967, 0.989] (821 images from 476 patients / groups; "
        "95 % intervals: bootstrap over patients; per class by patient: the report)"
    ]
    # Each image its own unit: the Wilson line above says it all.
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({**figures, "units": 821, "interval_method": WILSON}))
    assert not [
        line for line in summary_lines(RunSummary(report_dir=str(tmp_path)), 0.5) if "by patient" in line
    ]
