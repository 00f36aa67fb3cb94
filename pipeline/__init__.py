"""The TFX pipeline factory, its runners and the btmri command line."""

import btmri  # noqa: F401  (selects Keras 2 before TensorFlow loads)
