"""Training on smaller images while the rate is at its base (TrainerConfig.base_phase_size):
the same weights, then full size from the anneal (components/training/trainer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from btmri import spec
from btmri.documents import TrainerConfig
from components.training import trainer
from components.training.lesion_guidance import LesionGuidedModel
from components.training.models import build_model


class InMemoryData:
    """TrainerData's interface on a few random images, recording the sizes asked for."""

    def __init__(self, count: int = 8, batch: int = 4):
        rng = np.random.default_rng(0)
        self.images = rng.uniform(0, 1, (count, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 1)).astype(np.float32)
        self.labels = rng.integers(0, spec.NUM_CLASSES, count)
        self.boxes = np.tile(np.float32([0.3, 0.3, 0.6, 0.6]), (count, 1))
        self.batch, self.steps, self.sizes = batch, count // batch, []

    def _batches(self, size, repeat, training):
        source = tf.data.Dataset.from_tensor_slices((self.images, self.labels, self.boxes)).batch(self.batch)
        return trainer.batches(source, training=training, repeat=repeat, size=size)

    def train(self, size=spec.IMAGE_SIZE):
        self.sizes.append(("train", size))
        return self._batches(size, repeat=True, training=True)

    def eval(self, size=spec.IMAGE_SIZE):
        self.sizes.append(("eval", size))
        return self._batches(size, repeat=False, training=False)


def guided(model_name: str = "mri_resnet_evidence"):
    import tf_keras as keras

    model = build_model(model_name)
    wrapper = LesionGuidedModel(model, trainer.smoothed_sparse_crossentropy(0.1), evidence_weight=1.0)
    wrapper.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model, wrapper


def test_the_base_phase_trains_the_full_size_model_on_small_images_then_full_size(tmp_path):
    model, wrapper = guided()
    before = [w.numpy().copy() for w in model.trainable_weights]
    data = InMemoryData()
    config = TrainerConfig(epochs=3, schedule=spec.SCHEDULE_COSINE, base_phase_size=128)
    history, summary, _ = trainer._train(wrapper, data, config, str(tmp_path), strategy=None)

    # Cosine over 3 epochs: 2 at 128 px, the last third (1 epoch) at full size.
    assert data.sizes == [("train", 128), ("eval", 128), ("train", 224), ("eval", 224)]
    assert len(history["loss"]) == 3 and summary["base_phase_size"] == 128
    assert summary["base_phase_epochs"] == 2
    # One set of weights: the exported (full-size) classifier learnt in both phases.
    after = [w.numpy() for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after) if a.ndim == 4)
    assert model.input_shape == (None, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 1)
    # The history CSV has every epoch once, the header once.
    rows = (tmp_path / trainer.HISTORY_CSV_FILE).read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch")


def test_small_batches_carry_lesion_cells_on_the_small_models_grid():
    data = InMemoryData()
    images, (labels, cells) = next(iter(data.train(128)))
    assert images.shape[1:] == (128, 128, 1)
    assert cells.shape[1:] == (trainer.cam_grid(128), trainer.cam_grid(128), 1) == (8, 8, 1)
    # The box [0.3, 0.6] of the side covers cells 2..4 of 8 (and 4..8 of 14 at full size).
    assert cells.numpy()[0, :, :, 0].sum(axis=1).tolist() == [0, 0, 3, 3, 3, 0, 0, 0]


def test_one_epoch_runs_at_full_size_and_fixed_size_models_never_shrink(tmp_path):
    _, wrapper = guided()
    data = InMemoryData()
    trainer._train(wrapper, data, TrainerConfig(epochs=1, base_phase_size=128), str(tmp_path), strategy=None)
    assert data.sizes == [("train", 224), ("eval", 224)]
    assert trainer.base_phase_size(TrainerConfig(model="seed_cnn", base_phase_size=128)) == spec.IMAGE_SIZE
    with pytest.raises(ValueError, match="multiple of 32"):
        trainer.base_phase_size(TrainerConfig(base_phase_size=100))
