"""Data preparation: image folders → validated tf.Example TFRecords."""

import btmri  # noqa: F401  (selects Keras 2 before TensorFlow loads)
