"""The run's console: the Trainer's phases are shown as they finish, and the summary
lists where the time went."""

from __future__ import annotations

import io
import logging

from absl import logging as absl_logging

from btmri.console import Terminal
from btmri.spec import TRAINER_PHASE_LOG
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
        for phase, took in (("training", 123.4), ("calibration", 0.8), ("export", 12.0)):
            absl_logging.info(TRAINER_PHASE_LOG, phase, took)
        absl_logging.info("Trainer phase of a different shape %s", "x")  # not a phase line
    finally:
        logger.removeHandler(handler)
        absl_logging.set_verbosity(old)
    assert handler.trainer_phases == {"training": 123.4, "calibration": 0.8, "export": 12.0}
    assert "      Trainer: calibration done in 0.8 s" in out.getvalue().splitlines()

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
