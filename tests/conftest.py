"""Fixtures every area shares: the real-data paths, the tiny pipeline run and its pushed
version; test logs without TF noise. Each area's folder (prepare, model, pipeline,
serving, report) has its own conftest.py for what only it uses."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

from btmri import spec

# TF prints a screenful of CUDA/oneDNN notes on import; keep test logs readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("BTMRI_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "brain-tumor-mri"))


REAL_BOXES = Path(os.environ.get("BTMRI_REAL_BOXES", REPO_ROOT.parent / "shared" / "data" / "figshare-boxes"))


@pytest.fixture
def real_boxes() -> Path:
    if not REAL_BOXES.is_dir():
        pytest.skip(f"real tumour boxes not present at {REAL_BOXES}")
    return REAL_BOXES


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / spec.KAGGLE_TRAINING_DIR).is_dir():
        pytest.skip(f"real dataset not present at {REAL_DATA}")
    return REAL_DATA


# The README's quick run (pipeline/cli.py QUICK_PRESET): 12 phantoms per class, 1
# epoch, gates a 1-epoch model passes. The gates themselves are tested with bounds no
# model reaches (test_pipeline.py).
TINY_RUN_ARGS = ["--quick"]


def btmri_run(work: Path, *extra: str) -> int:
    """`btmri run` on tiny synthetic data with everything under `work`."""
    from pipeline.cli import main

    return main(
        [
            "run",
            "--work-dir",
            str(work),
            "--pipeline-root",
            str(work / "pipeline"),
            "--serving-dir",
            str(work / "serving"),
            *TINY_RUN_ARGS,
            *extra,
        ]
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One blessed, pushed pipeline run on tiny synthetic data (about 2 minutes),
    shared READ-ONLY by every test module: pipeline, serving, report. Tests that
    run the pipeline again make a run of their own.
    Layout: <work>/data/{synthetic,prepared}, <work>/pipeline (root, metadata.sqlite),
    <work>/serving/<version>/ (the pushed SavedModel)."""
    work = tmp_path_factory.mktemp("tiny_run")
    printed = io.StringIO()
    with (
        contextlib.redirect_stdout(_Tee(sys.stdout, printed)),
        contextlib.redirect_stderr(_Tee(sys.stderr, printed)),
    ):
        status = btmri_run(work)
    # Every test that shares this run repeats the assertion: its message, not only the
    # first test's captured output, says which gate or component refused.
    tail = "\n".join(printed.getvalue().splitlines()[-30:])
    assert status == 0, f"the tiny run exited {status}; the end of what it printed:\n{tail}"
    return work


class _Tee(io.TextIOBase):
    """Writes to every stream given (the captured stdout and a copy)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def fileno(self) -> int:  # for children started with this stream: the real one's
        return self.streams[0].fileno()


def only_version(serving_dir: Path) -> Path:
    """The one version folder a run pushed under `serving_dir`."""
    (folder,) = [p for p in serving_dir.iterdir() if p.name.isdigit()]
    return folder


@pytest.fixture(scope="session")
def pushed_version(tiny_run) -> Path:
    """The version folder the tiny run pushed (read-only: copy it to change it)."""
    return only_version(tiny_run / "serving")
