"""Pipeline fixtures: the tiny run's pushed model, loaded."""

from __future__ import annotations

import pytest
import tensorflow as tf


@pytest.fixture(scope="session")
def pushed_model(pushed_version):
    """The one version the tiny run pushed, as a loaded SavedModel."""
    return tf.saved_model.load(str(pushed_version))
