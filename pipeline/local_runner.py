"""Runs the pipeline on this machine: LocalDagRunner, sqlite ML Metadata, Beam DirectRunner.

Progress: one line per component start/finish on stdout (with elapsed time);
the full TFX/Beam log goes to <pipeline_root>/logs/run-<time>.log.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from absl import logging as absl_logging
from tfx import v1 as tfx

from pipeline.config import PipelineConfig
from pipeline.factory import component_ids, create_pipeline


class _ProgressHandler(logging.Handler):
    """Turns LocalDagRunner's 'Component X is running/finished.' into progress lines."""

    def __init__(self, stream, ids: tuple[str, ...]):
        super().__init__(logging.INFO)
        self.stream = stream
        self.ids = ids
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}   # wall time per component, in finish order

    def emit(self, record):
        if not isinstance(record.msg, str) or not record.msg.startswith("Component %s is "):
            return
        node = record.args[0] if record.args else "?"
        step = f"[{self.ids.index(node) + 1}/{len(self.ids)}]" if node in self.ids else "[?]"
        if record.msg.endswith("running."):
            self.started[node] = time.time()
            print(f"{step} {node} ...", file=self.stream, flush=True)
        elif record.msg.endswith("finished."):
            took = time.time() - self.started.get(node, time.time())
            self.seconds[node] = took
            print(f"{step} {node} done in {took:.1f} s", file=self.stream, flush=True)


@contextmanager
def _logging_to(log_path: str, progress: _ProgressHandler):
    """absl (TFX's logger) at INFO into the log file and the progress handler only.

    absl records must not propagate: handlers that libraries add to the root
    logger mid-run (Beam calls basicConfig) would print the whole INFO flood.
    Verbosity goes through absl, not logger.setLevel: TensorFlow's saving code
    sets absl's verbosity to FATAL and back to whatever absl's flag says.
    """
    absl_logger = logging.getLogger("absl")
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    warnings_handler = logging.StreamHandler(sys.stderr)
    warnings_handler.setLevel(logging.WARNING)
    warnings_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    old_verbosity, old_propagate = absl_logging.get_verbosity(), absl_logger.propagate
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logger.propagate = False
    handlers = (file_handler, warnings_handler, progress)
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
    evaluated_split: str | None = None
    metrics: dict = field(default_factory=dict)        # overall metrics of the candidate
    thresholds: list = field(default_factory=list)     # failed validations, if any
    log_path: str | None = None
    seconds: float = 0.0
    component_seconds: dict = field(default_factory=dict)
    blessing_message: str | None = None
    lesion_audit: dict | None = None                   # lesion_audit.json, without rows


def run_pipeline(config: PipelineConfig, progress_stream=sys.stdout) -> RunSummary:
    """Runs every component (cached ones are skipped by TFX) and summarises the result."""
    logs = os.path.join(config.pipeline_root, "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, time.strftime("run-%Y%m%d-%H%M%S.log"))
    started = time.time()
    progress = _ProgressHandler(progress_stream, component_ids(config))
    with _logging_to(log_path, progress):
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
    summary = summarize(config)
    summary.log_path = log_path
    summary.seconds = time.time() - started
    summary.component_seconds = progress.seconds
    return summary


def summarize(config: PipelineConfig) -> RunSummary:
    """Reads the latest Evaluator and Pusher outputs from ML Metadata."""
    import tensorflow_model_analysis as tfma

    from pipeline.metadata import latest_output

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
    if blessing is not None:
        summary.blessed = bool(blessing.get_int_custom_property("blessed"))
    if evaluation is not None:
        from pipeline.report.tfma_results import load_candidate
        for slice_key, metrics in load_candidate(evaluation.uri).slicing_metrics:
            if slice_key == ():
                summary.metrics = _flatten(metrics)
        validation = tfma.load_validation_result(evaluation.uri)
        summary.thresholds = [str(f) for f in validation.metric_validations_per_slice]
    if pushed is not None and pushed.get_int_custom_property("pushed"):
        summary.pushed = True
        summary.pushed_to = pushed.get_string_custom_property("pushed_destination")
        summary.already_pushed = bool(pushed.get_int_custom_property("already_pushed"))
    return summary


def _flatten(metrics: dict) -> dict:
    """TFMA's {output: {sub_key: {name: {'doubleValue': v}}}} → {'name[ sub_key]': v}."""
    flat = {}
    for per_sub_key in metrics.values():
        for sub_key, named in per_sub_key.items():
            for name, value in named.items():
                key = name if not sub_key else f"{name} {sub_key}"
                if isinstance(value, dict) and "doubleValue" in value:
                    flat[key] = value["doubleValue"]
    return flat
