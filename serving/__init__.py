"""TF Serving configuration, the local model server and the clients."""
import data_prep  # noqa: F401  (selects Keras 2 before TensorFlow loads)
