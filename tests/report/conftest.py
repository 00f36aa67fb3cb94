"""Report fixtures: the version folder whose card and report the tests read."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def version_dir(pushed_version) -> Path:
    return pushed_version
