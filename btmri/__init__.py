"""Shared names and documents of the project, free of TensorFlow (docs/architecture.md).

  spec.py       the data and model contract: classes, feature keys, splits, image size,
                signature/input/output names, model names, evaluation constants
  layout.py     file names of artifacts and the layout of a run's work folder
  documents.py  typed JSON documents passed between packages (manifest, trainer
                configuration and history, server options)
  intervals.py  95 % intervals (Wilson, bootstrap, bootstrap over patients) for every figure the project reports
  console.py    the quiet console: what the terminal shows, what only the log gets

Importing this package selects Keras 2 and oneDNN's CPU kernels for TensorFlow (the
switches below), so every package of the project imports it before TensorFlow loads.
"""

import os

# TFT's transform layer is always Keras 2 (`tf_keras`); TFMA loads models with
# `tf.keras`. Pointing `tf.keras` at Keras 2 keeps model, transform layer and
# evaluator in one Keras. It only takes effect before TensorFlow is first imported.
KERAS_SWITCH = ("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault(*KERAS_SWITCH)

# TensorFlow 2.16 turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI,
# AVX-512 BF16 or AMX; on an AVX2-only CPU it falls back to Eigen, whose convolution
# gradients trained our model at half the speed (benchmarks/training_cost.py, model
# alone: 23 → 47 images/s on 2 AVX2 cores). On wherever the user has not chosen;
# TF_ENABLE_ONEDNN_OPTS=0 still turns it off. The model server undoes the project's
# choice (leave_onednn_to_tensorflow): there oneDNN made a one-image request ten times
# slower on AVX2.
ONEDNN_SWITCH = ("TF_ENABLE_ONEDNN_OPTS", "1")
ONEDNN_SET_BY_PROJECT = "BTMRI_SET_ONEDNN"  # marks a value the project set, not the user
if ONEDNN_SWITCH[0] not in os.environ:
    os.environ.update({ONEDNN_SWITCH[0]: ONEDNN_SWITCH[1], ONEDNN_SET_BY_PROJECT: "1"})


def leave_onednn_to_tensorflow() -> None:
    """TensorFlow's own oneDNN default for this process (if TensorFlow is not loaded
    yet) and its children, unless the user chose a value: drops the project's."""
    if os.environ.pop(ONEDNN_SET_BY_PROJECT, None):
        os.environ.pop(ONEDNN_SWITCH[0], None)
