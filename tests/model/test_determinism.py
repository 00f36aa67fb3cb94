"""Repeatable training (TrainerConfig.deterministic): the same seed and data give the
same weights. Each training runs in its own process, as two pipeline runs would, since
TensorFlow's determinism switch is process-wide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Fills, augmentation and the lesion-guided step on small random images: the parts whose
# random draws run on parallel input threads.
SCRIPT = """
import hashlib
import numpy as np
import btmri
import tensorflow as tf
import tf_keras as keras
from btmri.documents import TrainerConfig
from components.training import trainer
from components.training.counterfactual import CounterfactualConfig
from components.training.lesion_guidance import LesionGuidedModel
from components.training.models import build_model

trainer.seed_training(TrainerConfig(seed=3, deterministic=True))
rng = np.random.default_rng(0)
images = rng.uniform(0, 1, (32, 224, 224, 1)).astype(np.float32)
labels = rng.integers(0, 4, 32)
boxes = np.tile(np.float32([0.3, 0.3, 0.6, 0.6]), (32, 1))
source = (tf.data.Dataset.from_tensor_slices((images, labels, boxes)).batch(8).cache()
          .shuffle(4, seed=3, reshuffle_each_iteration=True))
data = trainer.batches(source, training=True, augment=True, seed=3,
                       counterfactuals=CounterfactualConfig(), repeat=True, size=128)
model = build_model("mri_resnet_evidence")
guided = LesionGuidedModel(model, trainer.smoothed_sparse_crossentropy(0.1), evidence_weight=1.0)
guided.compile(optimizer=keras.optimizers.Adam(1e-3))
guided.train_at(128)
guided.fit(data, steps_per_epoch=8, epochs=2, verbose=0)
print("WEIGHTS", hashlib.md5(b"".join(w.numpy().tobytes() for w in model.weights)).hexdigest())
"""


def _trained_weights_digest() -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("WEIGHTS"))


@pytest.mark.slow  # two trainings in fresh processes: about two minutes
def test_the_same_seed_and_data_train_the_same_weights():
    assert _trained_weights_digest() == _trained_weights_digest()
