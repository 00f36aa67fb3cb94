"""Serving fixtures: the tiny run's pushed version, which the server tests copy into a
base path of their own (it is shared read-only)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import only_version


@pytest.fixture(scope="session")
def model(tiny_run) -> Path:
    """The version folder the tiny pipeline run pushed."""
    return only_version(tiny_run / "serving")
