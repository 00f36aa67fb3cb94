"""Serving fixtures: the tiny run's pushed version, which the server tests copy into a
base path of their own (it is shared read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model(pushed_version) -> Path:
    """The version folder the tiny pipeline run pushed."""
    return pushed_version
