"""Shared fixtures: the real-data path; test logs without TF noise."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep import contract

# TF prints a screenful of CUDA/oneDNN notes on import; keep test logs readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get(
    "BTMRI_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "brain-tumor-mri"))


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / contract.KAGGLE_TRAINING_DIR).is_dir():
        pytest.skip(f"real dataset not present at {REAL_DATA}")
    return REAL_DATA
