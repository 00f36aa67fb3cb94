"""TFX module code: preprocessing, models, training and exported signatures."""
import data_prep  # noqa: F401  (selects Keras 2 before TensorFlow loads)
