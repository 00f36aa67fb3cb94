"""Temperature scaling: fitting, ECE, and the calibrated Keras model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
from components.training import calibration
from components.training.models import build_model


def _sample(rng, n, true_logits_scale, overconfidence):
    """Labels drawn from softmax(z); the 'model' reports z * overconfidence."""
    z = rng.normal(size=(n, 4)) * true_logits_scale
    labels = np.array([rng.choice(4, p=p) for p in softmax(z, axis=1)])
    return z * overconfidence, labels


def test_fit_temperature_recovers_the_overconfidence():
    rng = np.random.default_rng(0)
    logits, labels = _sample(rng, 20_000, 2.0, overconfidence=3.0)
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    report = calibration.calibration_report(logits, labels, t)
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < 0.02 < report["ece_before"]


def test_ece_of_calibrated_and_of_overconfident_predictions():
    rng = np.random.default_rng(1)
    logits, labels = _sample(rng, 20_000, 2.0, overconfidence=1.0)
    assert calibration.expected_calibration_error(softmax(logits, axis=1), labels) < 0.02
    always_sure = np.eye(4)[rng.integers(0, 4, 1000)]
    wrong_half = labels[:1000].copy()
    # confidence 1.0 everywhere, accuracy ~ 1/4 → ECE ~ 0.75
    assert calibration.expected_calibration_error(always_sure, wrong_half) > 0.6


def test_with_temperature_divides_the_logits():
    model = build_model("mri_resnet")
    x = np.random.default_rng(2).random((2, 224, 224, 1)).astype("float32")
    logits = calibration.keras.Model(model.inputs, model.get_layer("logits").output)(x).numpy()
    calibrated = calibration.with_temperature(model, 2.5)
    np.testing.assert_allclose(calibrated(x).numpy(), softmax(logits / 2.5, axis=1), atol=1e-5)
    np.testing.assert_array_equal(calibrated(x).numpy().argmax(1), model(x).numpy().argmax(1))
