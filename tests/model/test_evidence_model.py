"""mri_resnet_evidence: class scores from the strongest local evidence, and the
lesion-evidence loss on its maps."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components.training.lesion_guidance import class_map_evidence_loss, evidence_loss
from components.training.models import (
    CLASS_EVIDENCE_LAYER,
    EVIDENCE_TOP_K,
    GRADCAM_LAYER,
    LOGITS_LAYER,
    PENULTIMATE_LAYER,
    TopKMeanPooling,
    build_model,
)


def test_top_k_pooling_is_the_mean_of_the_k_highest_cells_and_only_they_get_gradient():
    maps = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    pool = TopKMeanPooling(3)
    x = tf.Variable(maps)
    with tf.GradientTape() as tape:
        scores = pool(x)
        total = tf.reduce_sum(scores)
    expected = np.sort(maps.reshape(2, 25, 3), axis=1)[:, -3:, :].mean(axis=1)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    grads = tape.gradient(total, x).numpy()
    # Exactly the k cells that make each score get gradient 1/k; the rest none.
    assert ((grads > 0).reshape(2, 25, 3).sum(axis=1) == 3).all()
    np.testing.assert_allclose(grads[grads > 0], 1 / 3, rtol=1e-5)


def test_evidence_model_decides_from_its_tagged_maps():
    model = build_model("mri_resnet_evidence")
    images = np.random.default_rng(1).uniform(0, 1, (2, 224, 224, 1)).astype(np.float32)
    maps_model = keras.Model(
        model.inputs,
        [model.get_layer(CLASS_EVIDENCE_LAYER).output, model.get_layer(LOGITS_LAYER).output, model.output],
    )
    maps, logits, probs = (t.numpy() for t in maps_model(images, training=False))
    assert maps.shape == (2, 14, 14, 4)
    top = np.sort(maps.reshape(2, -1, 4), axis=1)[:, -EVIDENCE_TOP_K:, :].mean(axis=1)
    np.testing.assert_allclose(logits, top, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), rtol=1e-4, atol=1e-6)
    # Grad-CAM explains the evidence maps; abstention reads the last stage, pooled.
    assert model.get_layer(GRADCAM_LAYER).output.shape[1:] == (14, 14, 4)
    assert model.get_layer(PENULTIMATE_LAYER).output.shape[1:] == (7, 7, 256)


def test_evidence_model_survives_save_and_load(tmp_path):
    model = build_model("mri_resnet_evidence")
    images = np.random.default_rng(2).uniform(0, 1, (2, 224, 224, 1)).astype(np.float32)
    model.save(tmp_path / "m", save_format="tf")
    loaded = keras.models.load_model(tmp_path / "m", compile=False)
    np.testing.assert_allclose(
        loaded(images, training=False).numpy(), model(images, training=False).numpy(), atol=1e-6
    )


def test_class_map_evidence_loss_is_the_spatial_softmax_outside_the_box_and_shift_free():
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(2, 7, 7, 4)).astype(np.float32)
    maps[0, 2, 3, 1] = 30.0  # image 0: class 1's evidence all in (2, 3)
    maps[1, 6, 6, 1] = 30.0  # image 1: all outside
    cells = np.zeros((2, 14, 14, 1), np.float32)
    cells[:, 4, 6] = 1.0  # one fine cell inside coarse cell (2, 3)
    labels = tf.constant([1, 1])
    assert class_map_evidence_loss(maps, labels, cells).numpy() == pytest.approx(0.5, abs=1e-4)
    # Only the true class's map counts; no box, no loss.
    assert class_map_evidence_loss(maps, tf.constant([2, 2]), cells).numpy() < 1.0
    assert class_map_evidence_loss(maps, labels, np.zeros_like(cells)).numpy() == 0.0
    # A shift common to every map (which changes no prediction) changes nothing: the
    # positive-share loss of a linear head would drop to 0 for maps pushed below zero.
    low = maps - 100.0
    assert class_map_evidence_loss(low, labels, cells).numpy() == pytest.approx(0.5, abs=1e-4)
    assert evidence_loss(low, np.eye(4, dtype=np.float32), labels, cells).numpy() == 0.0


def test_evidence_heatmap_peaks_where_the_class_evidence_is_highest_at_any_level():
    from components.training.gradcam import evidence_map

    maps = np.full((1, 14, 14, 4), -50.0, np.float32)
    maps[0, 3, 9, 2] = -40.0  # every cell negative; the highest is (3, 9)
    heat = evidence_map(maps, tf.constant([2])).numpy()[0, ..., 0]
    assert heat.max() == pytest.approx(1.0) and np.unravel_index(heat.argmax(), heat.shape) == (3, 9)
    assert heat[0, 0] < 1e-3


def test_abstention_reads_the_evidence_models_feature_maps_not_its_class_maps():
    """Its Grad-CAM layer is 4 class maps; the out-of-distribution score needs the 14x14
    stage's 128 channels (with the class maps, photographs were answered twice as often)."""
    from components.training import abstention

    tensors = abstention.feature_tensors(build_model("mri_resnet_evidence"))
    assert tensors[abstention.COARSE_MEAN].shape[-1] == 128
    assert tensors[abstention.SPATIAL].shape[-1] == 4 * 128
    assert tensors[abstention.PENULTIMATE].shape[-1] == 256
