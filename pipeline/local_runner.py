"""Runs the pipeline on this machine: LocalDagRunner, sqlite ML Metadata, Beam DirectRunner.

Console (btmri.console.CapturedRun): one line per component start/finish (with
elapsed time) and one per training epoch; everything written to stdout/stderr
meanwhile (TFX, Beam workers, TensorFlow's C++ logging, pip, Keras) goes to
<pipeline_root>/logs/run-<time>.log, and to the terminal too when `verbose`.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from absl import logging as absl_logging
from tfx import v1 as tfx

from btmri.console import CapturedRun, Terminal
from btmri.spec import TRAINER_KERNELS_LOG, TRAINER_PHASE_LOG, TRAINING_SIZE_LOG
from btmri.layout import logs_dir
from pipeline.config import PipelineConfig
from pipeline.factory import component_ids, create_pipeline

if TYPE_CHECKING:
    from pipeline.report.tfma_results import TfmaResult


class _ProgressHandler(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished.' into progress lines."""

    def __init__(self, terminal: Terminal, ids: tuple[str, ...]):
        super().__init__(logging.INFO)
        self.terminal = terminal
        self.ids = ids
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # wall time per component, in finish order
        self.trainer_phases: dict[str, float] = {}  # the Trainer's own phases (trainer.PHASE_LOG)
        self.trainer_kernels: dict = {}  # the Trainer's compute dtype and oneDNN (TRAINER_KERNELS_LOG)

    def emit(self, record):
        if record.msg == TRAINER_KERNELS_LOG and len(record.args or ()) == 2:
            dtype, onednn = (str(a) for a in record.args)
            self.trainer_kernels = {"compute_dtype": dtype, "onednn": onednn == "on"}
            self.terminal.line(f"      Trainer: computing in {dtype}, oneDNN kernels {onednn}")
            return
        if record.msg == TRAINING_SIZE_LOG and len(record.args or ()) == 3:
            epoch, side, _ = record.args
            self.terminal.line(f"      Trainer: from epoch {epoch} on {side}x{side} images")
            return
        if record.msg == TRAINER_PHASE_LOG and len(record.args or ()) == 2:
            name, took = record.args
            self.trainer_phases[str(name)] = float(took)
            self.terminal.line(f"      Trainer: {name} done in {float(took):.1f} s")
            return
        if not isinstance(record.msg, str) or not record.msg.startswith("Component %s is "):
            return
        node = record.args[0] if record.args else "?"
        step = f"[{self.ids.index(node) + 1}/{len(self.ids)}]" if node in self.ids else "[?]"
        if record.msg.endswith("running."):
            self.started[node] = time.time()
            self.terminal.line(f"{step} {node} ...")
        elif record.msg.endswith("finished."):
            took = time.time() - self.started.get(node, time.time())
            self.seconds[node] = took
            self.terminal.line(f"{step} {node} done in {took:.1f} s")


@contextmanager
def _logging_to(log_path: str, progress: _ProgressHandler, terminal: Terminal | None = None):
    """absl (TFX's logger) at INFO into the log file and the progress handler only
    (and the terminal, when given: `btmri run -v`).

    absl records must not propagate: handlers that libraries add to the root
    logger mid-run (Beam calls basicConfig) would print the whole INFO flood.
    Verbosity goes through absl, not logger.setLevel: TensorFlow's saving code
    sets absl's verbosity to FATAL and back to whatever absl's flag says.
    """
    absl_logger = logging.getLogger("absl")
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers = [file_handler, progress]
    if terminal is not None:
        echo = logging.StreamHandler(terminal.stream)
        echo.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(echo)
    old_verbosity, old_propagate = absl_logging.get_verbosity(), absl_logger.propagate
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logger.propagate = False
    for handler in handlers:
        absl_logger.addHandler(handler)
    # Beam's job service relays every worker's start-up warnings; keep errors only.
    beam_logger = logging.getLogger("apache_beam")
    old_beam_level = beam_logger.level
    beam_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        beam_logger.setLevel(old_beam_level)
        for handler in handlers:
            absl_logger.removeHandler(handler)
        file_handler.close()
        absl_logger.propagate = old_propagate
        absl_logging.set_verbosity(old_verbosity)


@dataclass
class RunSummary:
    blessed: bool | None = None
    pushed: bool = False
    already_pushed: bool = False
    pushed_to: str | None = None
    evaluation: TfmaResult | None = None  # the candidate's TFMA figures
    log_path: str | None = None
    seconds: float = 0.0
    component_seconds: dict = field(default_factory=dict)
    trainer_phase_seconds: dict = field(default_factory=dict)  # training, calibration, ...
    trainer_kernels: dict = field(default_factory=dict)  # compute_dtype, onednn
    blessing_message: str | None = None
    lesion_audit: dict | None = None  # lesion_audit.json, without rows
    report_dir: str | None = None  # ModelReport artifact: report.html, card
    serving_validation: object = None  # btmri.documents.InfraValidation

    @property
    def metrics(self) -> dict[str, float]:
        """Overall metrics of the candidate (keys: tfma_results.metric_key)."""
        return self.evaluation.metrics if self.evaluation else {}


def run_pipeline(config: PipelineConfig, verbose: bool = False, quiet: bool = False) -> RunSummary:
    """Runs every component (cached ones are skipped by TFX) and summarises the result;
    `quiet`: no progress lines on the terminal (the log is written all the same)."""
    logs = logs_dir(config.pipeline_root)
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, time.strftime("run-%Y%m%d-%H%M%S.log"))
    started = time.time()
    with CapturedRun(log_path, verbose=verbose, quiet=quiet) as console:
        progress = _ProgressHandler(console.terminal, component_ids(config))
        with _logging_to(log_path, progress, console.terminal if verbose else None):
            tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    summary = read_outcome(config)
    summary.log_path = log_path
    summary.seconds = time.time() - started
    summary.component_seconds = progress.seconds
    summary.trainer_phase_seconds = progress.trainer_phases
    summary.trainer_kernels = progress.trainer_kernels
    return summary


def read_outcome(config: PipelineConfig) -> RunSummary:
    """The latest run's outcome from ML Metadata: blessing, TFMA figures, push, audit."""
    from pipeline.metadata import latest_output
    from pipeline.report import tfma_results

    summary = RunSummary()
    blessing = latest_output(config, "Evaluator", "blessing")
    if config.box_dir:
        from components.audit.lesion_audit import read_audit

        audit = latest_output(config, "LesionAudit", "audit")
        blessing = latest_output(config, "LesionAudit", "blessing")
        if audit is not None:
            summary.lesion_audit = read_audit(audit.uri, rows=False)
        if blessing is not None:
            summary.blessing_message = blessing.get_string_custom_property("blessing_message")
    evaluation = latest_output(config, "Evaluator", "evaluation")
    pushed = latest_output(config, "Pusher", "pushed_model")
    infra = latest_output(config, "InfraValidator", "blessing")
    if infra is not None:
        from btmri.documents import InfraValidation

        summary.serving_validation = InfraValidation.read_if_present(infra.uri)
    report = latest_output(config, "ModelReport", "report")
    if report is not None:
        summary.report_dir = report.uri
    if blessing is not None:
        summary.blessed = bool(blessing.get_int_custom_property("blessed"))
    if evaluation is not None:
        summary.evaluation = tfma_results.load(evaluation.uri)
    if pushed is not None and pushed.get_int_custom_property("pushed"):
        summary.pushed = True
        summary.pushed_to = pushed.get_string_custom_property("pushed_destination")
        summary.already_pushed = bool(pushed.get_int_custom_property("already_pushed"))
    return summary
