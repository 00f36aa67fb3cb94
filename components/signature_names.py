"""Signature, input and output names of the exported model: re-exported from
btmri/spec.py (their one home) for the TFX module code."""

from btmri.spec import (
    CLASS_ID,
    CLASS_NAME,
    EXAMPLES_INPUT,
    GRADCAM,
    HEATMAP,
    IMAGE_BYTES_INPUT,
    PREDICT_IMAGES,
    PROBABILITIES,
    SERVING_DEFAULT,
)
