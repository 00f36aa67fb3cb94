"""Data preparation: image folders → validated tf.Example TFRecords.

TFT's transform layer is always Keras 2 (`tf_keras`); TFMA loads models with
`tf.keras`. Pointing `tf.keras` at Keras 2 keeps model, transform layer and
evaluator in one Keras. It only takes effect before TensorFlow is first
imported, so every package of this project imports this one first.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
