"""Sequence-look augmentation (components/training/augment.py, SequenceRemapConfig;
docs/augmentation.md): tissue contrast re-ordered, background kept dark, nothing moved."""

from __future__ import annotations

import numpy as np
import pytest

import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from btmri.documents import TRAINER_DEFAULTS, parse_trainer_config
from components.training.augment import BRIGHT_LEVEL, SequenceRemapConfig, sequence_remap_batch
from components.training.trainer import sequence_remap_config

SIZE = 64


def _slices(n: int = 8) -> np.ndarray:
    """A dark background, a mid-grey 'brain' disc, a darker 'ventricle' and a bright ring
    (scalp fat): three tissues in a known order of intensity."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    image = np.zeros((SIZE, SIZE), np.float32)
    image[r < 28] = 0.85  # ring
    image[r < 24] = 0.5  # brain
    image[r < 8] = 0.25  # ventricle
    return np.repeat(image[None, :, :, None], n, axis=0)


def _remap(images, cfg, seed=3):
    tf.random.set_seed(11)
    return sequence_remap_batch(tf.constant(images), cfg, seed=seed).numpy()


def test_inverted_curves_turn_the_tissue_order_over_and_keep_the_background_black():
    images = _slices()
    out = _remap(images, SequenceRemapConfig(rate=1.0, inverted=1.0))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    ventricle, brain, ring = out[:, 32, 32, 0], out[:, 32, 32 + 16, 0], out[:, 32, 32 + 26, 0]
    # Falling curves: the darkest tissue becomes the brightest, as fluid on T2.
    assert np.all(ventricle >= brain) and np.all(brain >= ring)
    assert np.mean(ventricle > ring + 0.1) >= 0.75
    assert np.all(out[:, r > 30, 0] == 0.0)  # air stays black
    # The bright level is serving's again.
    assert np.allclose(np.quantile(out.reshape(len(out), -1), 0.99, axis=1), BRIGHT_LEVEL, atol=0.05)


def test_rate_chooses_that_share_of_images_and_leaves_the_others_untouched():
    images = np.concatenate([_slices(200)])
    out = _remap(images, SequenceRemapConfig(rate=0.3))
    changed = np.any(np.abs(out - images) > 1e-6, axis=(1, 2, 3))
    assert 0.2 < changed.mean() < 0.4
    np.testing.assert_array_equal(out[~changed], images[~changed])
    assert np.array_equal(_remap(images, SequenceRemapConfig(rate=0.0)), images)


def test_random_curves_give_varied_contrasts_and_are_reproducible():
    images = _slices(64)
    cfg = SequenceRemapConfig(rate=1.0, inverted=0.0)
    out = _remap(images, cfg)
    brain_minus_ring = out[:, 32, 32 + 16, 0] - out[:, 32, 32 + 26, 0]
    # Unsorted control points: some images keep the order, some reverse it.
    assert (brain_minus_ring > 0.05).any() and (brain_minus_ring < -0.05).any()
    np.testing.assert_array_equal(out, _remap(images, cfg))


def test_the_trainer_setting_turns_it_on_and_off_and_bad_shares_are_refused():
    assert TRAINER_DEFAULTS.sequence_remap == 0.0 and sequence_remap_config(TRAINER_DEFAULTS) is None
    assert sequence_remap_config(parse_trainer_config({"sequence_remap": 0.3})).rate == 0.3
    with pytest.raises(ValueError):
        SequenceRemapConfig(rate=1.5)
