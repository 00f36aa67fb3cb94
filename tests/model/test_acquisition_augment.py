"""Acquisition-style augmentation (components/training/augment.py, AcquisitionConfig;
docs/augmentation.md): the look changes, nothing moves, and it is reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from components.training import augment
from components.training.augment import AcquisitionConfig, acquisition_batch, augment_batch
from btmri.documents import TRAINER_DEFAULTS
from components.training.trainer import acquisition_config

SIZE = 64
EVERYTHING = dict(
    resolution_p=1.0,
    bias_p=1.0,
    noise_p=1.0,
    contrast_p=1.0,
    window_p=1.0,
    gamma_p=1.0,
    curve_p=1.0,
    jpeg_p=1.0,
)
NOTHING = {name: 0.0 for name in EVERYTHING}


def _heads(n: int = 6, seed: int = 0) -> tf.Tensor:
    """Bright textured discs on black, roughly as head framing leaves a slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.4 * SIZE) ** 2)[None, :, :, None]
    return tf.constant((disc * rng.uniform(0.2, 0.9, (n, SIZE, SIZE, 1))).astype(np.float32))


def _high_frequency_share(images: np.ndarray, cutoff: int = 8) -> float:
    """Share of the spectral energy beyond `cutoff` cycles per image side (mean removed,
    Hann-windowed so the edges' mismatch does not count as high frequency)."""
    x = images[..., 0] - images[..., 0].mean(axis=(1, 2), keepdims=True)
    x = x * np.outer(np.hanning(x.shape[1]), np.hanning(x.shape[2]))[None]
    power = np.abs(np.fft.fft2(x)) ** 2
    f = np.abs(np.fft.fftfreq(x.shape[1]) * x.shape[1])
    high = (f[:, None] > cutoff) | (f[None, :] > cutoff)
    return float(power[:, high].sum() / power.sum())


def _run(images, cfg, seed=1, global_seed=7):
    tf.random.set_seed(global_seed)
    return acquisition_batch(images, cfg, seed=seed).numpy()


def test_every_transform_at_full_strength_keeps_images_finite_in_range_and_changes_them():
    images = _heads()
    out = _run(images, AcquisitionConfig(strength=1.0, **EVERYTHING))
    assert out.shape == images.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - images.numpy()).mean() > 0.02


def test_strength_zero_or_off_leaves_images_and_the_geometry_as_they_were():
    images = _heads()
    zero = AcquisitionConfig(strength=0.0, **EVERYTHING)
    assert acquisition_batch(images, zero, seed=1) is images
    boxes = tf.constant([[0.3, 0.3, 0.6, 0.7]] * 6)
    tf.random.set_seed(3)
    plain, plain_boxes = augment_batch(images, seed=2, boxes=boxes)
    tf.random.set_seed(3)
    same, same_boxes = augment_batch(images, seed=2, boxes=boxes, acquisition=zero)
    np.testing.assert_array_equal(same.numpy(), plain.numpy())
    np.testing.assert_array_equal(same_boxes.numpy(), plain_boxes.numpy())
    on = dataclasses.replace(TRAINER_DEFAULTS, acquisition_augment=True)
    assert acquisition_config(dataclasses.replace(on, acquisition_augment=False)) is None
    assert acquisition_config(dataclasses.replace(on, acquisition_strength=0.0)) is None
    assert acquisition_config(on) == AcquisitionConfig(strength=TRAINER_DEFAULTS.acquisition_strength)
    # off by default (docs/experiments.md, leave one source out), with a usable strength
    assert acquisition_config(TRAINER_DEFAULTS) is None and 0.0 < TRAINER_DEFAULTS.acquisition_strength <= 1.0


def test_the_bias_field_is_smooth_and_within_its_gains():
    rng = np.random.default_rng(0)
    gains = tf.constant(rng.uniform(0.5, 1.5, (4, 4, 4)).astype(np.float32))
    field = augment.bias_field(gains, 96, 96).numpy()
    assert field.min() >= 0.5 and field.max() <= 1.5 and field.std() > 0.05
    assert _high_frequency_share(field) < 1e-3
    assert _high_frequency_share(rng.uniform(0.5, 1.5, field.shape)) > 0.5  # the measure can fail


def test_the_intensity_curve_keeps_the_order_of_intensities():
    ramp = tf.reshape(tf.linspace(0.0, 1.0, 1001), [1, 1, -1, 1])
    steps = tf.constant([[1.0, -1.0, 0.8, -0.6, 0.3], [0.0] * 5])
    curves = augment.monotone_curve(tf.concat([ramp, ramp], 0), augment.curve_controls(steps)).numpy()
    assert (np.diff(curves[0, 0, :, 0]) > 0).all()  # strictly increasing
    assert curves[0, 0, 0, 0] == pytest.approx(0.0) and curves[0, 0, -1, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(curves[1, 0, :, 0], ramp[0, 0, :, 0], atol=1e-5)  # evenly spaced: identity
    # The whole intensity step (contrast, window, gamma, curve, bright level): within an
    # image, a brighter pixel never comes out darker.
    images = _heads()
    only_curves = {**NOTHING, "contrast_p": 1.0, "window_p": 1.0, "gamma_p": 1.0, "curve_p": 1.0}
    out = _run(images, AcquisitionConfig(strength=1.0, **only_curves))
    for before, after in zip(images.numpy().reshape(6, -1), out.reshape(6, -1)):
        order = np.argsort(before, kind="stable")
        assert np.diff(after[order]).min() >= -1e-6
    assert np.abs(out - images.numpy()).max() > 0.1  # and it did change them


def test_lower_resolution_removes_high_frequencies():
    noise = np.random.default_rng(1).uniform(0, 1, (2, 96, 96, 1)).astype(np.float32)
    # Beyond 20 cycles: above what a 0.4 x 96 = 38 pixel image can hold.
    before = _high_frequency_share(noise, cutoff=20)
    after = _high_frequency_share(augment.lower_resolution(tf.constant(noise), 0.4).numpy(), cutoff=20)
    assert after < 0.5 * before
    only_resolution = AcquisitionConfig(strength=1.0, **{**NOTHING, "resolution_p": 1.0}, restandardise=False)
    blurred = _run(tf.constant(noise), dataclasses.replace(only_resolution, min_side=16))
    assert _high_frequency_share(blurred, cutoff=20) < before


def test_the_same_seed_gives_the_same_images():
    images = _heads()
    cfg = AcquisitionConfig(strength=1.0, **{**EVERYTHING, "jpeg_p": 0.5})
    np.testing.assert_array_equal(_run(images, cfg), _run(images, cfg))
    assert np.abs(_run(images, cfg) - _run(images, cfg, seed=2)).mean() > 1e-3


def test_intensity_transforms_move_no_box_and_no_lesion():
    """A boxed batch through the geometry with and without the acquisition look: the
    boxes are the same, and the bright lesion stays where it was."""
    images = np.full((4, SIZE, SIZE, 1), 0.3, np.float32)
    images[:, 20:30, 34:44] = 0.9
    boxes = tf.constant([[20 / SIZE, 34 / SIZE, 30 / SIZE, 44 / SIZE]] * 2 + [[-1.0] * 4] * 2)
    look = AcquisitionConfig(strength=1.0, **{**EVERYTHING, "noise_p": 0.0}, zoom_out=0.0)
    tf.random.set_seed(5)
    plain, plain_boxes = augment_batch(tf.constant(images), seed=4, boxes=boxes)
    tf.random.set_seed(5)
    looked, looked_boxes = augment_batch(tf.constant(images), seed=4, boxes=boxes, acquisition=look)
    np.testing.assert_array_equal(looked_boxes.numpy(), plain_boxes.numpy())
    for before, after in zip(plain.numpy(), looked.numpy()):
        lesion = before[..., 0] > 0.75
        assert after[..., 0][lesion].mean() > after[..., 0][~lesion & (before[..., 0] > 0.1)].mean()


def test_the_zoom_out_widens_only_the_lower_scale_bound():
    cfg = augment.AugmentConfig(max_rotation_deg=0, max_shift=0, flip=False)
    tf.random.set_seed(0)
    maps = augment._random_transforms(2000, 64.0, 64.0, cfg, seed=1, zoom_out=0.15).numpy()
    scales = 1.0 / maps[:, 4]  # l11 = cos(0) / scale
    assert scales.min() == pytest.approx(0.75, abs=0.01) and scales.max() == pytest.approx(1.1, abs=0.01)


def test_a_strength_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="strength"):
        AcquisitionConfig(strength=1.5)
