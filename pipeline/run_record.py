"""What a finished `btmri run` leaves behind for the results record (pipeline/results.py):
run_record.json in its pipeline root, overwritten by each run.

It holds what only the run itself knows (its command, the code it ran, the machine,
the wall time of every component and Trainer phase) beside the headline figures of
its artifacts (the ModelReport's summary, the lesion audit, the training schedule, the
prepared data's counts), so a record can be made later without the artifacts.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from btmri.documents import Manifest, write_atomic
from btmri.layout import HISTORY_FILE, RUN_RECORD_FILE
from components.training import compute_dtype
from data_prep.feedback import summary as feedback_summary
from pipeline.report import read_summary


def machine() -> dict:
    """The cores, processor (and its widest vector instructions) and memory the run had."""
    cpu = compute_dtype.cpuinfo_field("model name") or platform.processor() or ""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "instruction_set": compute_dtype.instruction_set(),
        "memory_gib": None if memory is None else round(memory, 1),
        "python": platform.python_version(),
    }


def code_version() -> str:
    """The commit of the code that ran (with '+changes' when its tree was dirty), or
    the installed version outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    if commit is not None and commit.returncode == 0:
        return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    from importlib import metadata

    try:
        return metadata.version("brain-tumor-mri-tfx")
    except metadata.PackageNotFoundError:
        return "unknown"


def _schedule(config) -> dict | None:
    from pipeline.metadata import latest_output

    model_run = latest_output(config, "Trainer", "model_run")
    path = Path(model_run.uri, HISTORY_FILE) if model_run is not None else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("schedule")


def build(summary, config, argv: list[str], manifest: Manifest | None) -> dict:
    """The record of one run: a pipeline.local_runner.RunSummary and its configuration."""
    return {
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "btmri " + " ".join(argv),
        "code": code_version(),
        "machine": machine(),
        "data": None
        if manifest is None
        else {"counts": manifest.counts, "units": manifest.units, "split_unit": manifest.split_unit},
        # The site's reviewed images (`--feedback`): counts and the reviews behind them;
        # each image's review is in the manifest.
        "feedback": None if manifest is None else feedback_summary(manifest.feedback),
        "seconds": round(summary.seconds, 1),
        "component_seconds": {k: round(v, 1) for k, v in summary.component_seconds.items()},
        "trainer_phase_seconds": {k: round(v, 1) for k, v in summary.trainer_phase_seconds.items()},
        "trainer_kernels": dict(getattr(summary, "trainer_kernels", None) or {}),
        "schedule": _schedule(config),
        "blessed": summary.blessed,
        "pushed_to": summary.pushed_to if summary.pushed else None,
        "report": read_summary(summary.report_dir) if summary.report_dir else None,
        "lesion_audit": summary.lesion_audit or None,  # read without its per-slice rows
    }


def write(record: dict, pipeline_root: str) -> Path:
    return write_atomic(Path(pipeline_root, RUN_RECORD_FILE), json.dumps(record, indent=1, default=str))


def read(pipeline_root: str) -> dict | None:
    path = Path(pipeline_root, RUN_RECORD_FILE)
    return json.loads(path.read_text()) if path.is_file() else None
