"""TFX module code: preprocessing, models, training and exported signatures."""

import btmri  # noqa: F401  (selects Keras 2 before TensorFlow loads)
