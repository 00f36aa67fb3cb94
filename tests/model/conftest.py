"""Model-code fixtures: the pushed SavedModel of the tiny run (its graph holds the
Transform, the signatures, Grad-CAM and abstention)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model_dir(pushed_version) -> Path:
    return pushed_version
