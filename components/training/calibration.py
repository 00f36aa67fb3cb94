"""Temperature scaling (Guo et al., 2017): one scalar T divides the logits.

Fitted on held-out data by minimising the negative log-likelihood; argmax, and
so accuracy and Grad-CAM, are unchanged. The calibrated model carries T as a
layer, so served probabilities are calibrated without client code.
"""

from __future__ import annotations

import numpy as np
from absl import logging
import tf_keras as keras
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from btmri.spec import ECE_BINS
from components.training.models import LOGITS_LAYER

CALIBRATED_PROBABILITIES_LAYER = "calibrated_probabilities"


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    logp = log_softmax(logits / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


T_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T in T_BOUNDS minimising NLL (searched on log T, where the loss is smooth).

    A T at a bound means the eval split could not pin it down (too few images, or
    a model no better than chance); it is logged, not hidden.
    """
    low, high = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
    )
    temperature = float(np.exp(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 0.01:
        logging.warning(
            "temperature %.3f is at the search bound %s (%d eval examples): calibration is unreliable",
            temperature,
            T_BOUNDS,
            len(labels),
        )
    return temperature


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins,
    weighted by the share of examples in each bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    before, after = softmax(logits, axis=1), softmax(logits / temperature, axis=1)
    return {
        "temperature": temperature,
        "examples": int(len(labels)),
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
    }


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """The same layers, with probabilities = softmax(logits / T)."""
    logits = model.get_layer(LOGITS_LAYER).output
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature")(logits)
    probs = keras.layers.Activation("softmax", name=CALIBRATED_PROBABILITIES_LAYER)(scaled)
    return keras.Model(model.inputs, probs, name=f"{model.name}_calibrated")
