"""Training-only augmentation in one resampling pass per image.

Each image gets a random left-right flip, rotation, zoom and shift composed into
a single affine map and resampled once (bilinear, zero fill), then a random
contrast change. Keras' Random* layers resample once per layer; on 2 CPU cores
that halved training throughput (benchmarks/training_throughput.py).

Axial slices are roughly left-right symmetric and tumours occur on either side,
so a horizontal flip makes a new plausible image; vertical flips do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 15.0
    max_zoom: float = 0.10  # scale in [1 - z, 1 + z]
    max_shift: float = 0.06  # fraction of the image side
    max_contrast: float = 0.20  # factor in [1 - c, 1 + c] around the image mean
    flip: bool = True


def inverse_affine(theta, scale, tx, ty, flip, height, width) -> tf.Tensor:
    """[batch, 8] output→input maps for ImageProjectiveTransformV3 from per-image
    rotation θ (radians; θ > 0 turns the image counter-clockwise as displayed), zoom
    `scale` (> 1 enlarges), shift (tx, ty) in pixels (x right, y down) and `flip`
    (-1 mirrors left-right, 1 keeps).

    The op wants, for every output pixel, where to read in the input:
    in = c + L·(out − c − t) about the image centre c, with L = F·R/s, where
    R = [[cos θ, −sin θ], [sin θ, cos θ]] in (x, y-down) pixel coordinates.
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    l00, l01 = flip * cos / scale, -flip * sin / scale
    l10, l11 = sin / scale, cos / scale
    ox, oy = cx + tx, cy + ty
    a2 = cx - (l00 * ox + l01 * oy)
    b2 = cy - (l10 * ox + l11 * oy)
    zeros = tf.zeros_like(theta)
    return tf.stack([l00, l01, a2, l10, l11, b2, zeros, zeros], axis=1)


def _random_transforms(batch, height, width, cfg: AugmentConfig, seed: int | None) -> tf.Tensor:
    def uniform(low, high, offset):
        return tf.random.uniform([batch], low, high, seed=None if seed is None else seed + offset)

    theta = uniform(-1.0, 1.0, 0) * (cfg.max_rotation_deg * math.pi / 180.0)
    scale = uniform(1.0 - cfg.max_zoom, 1.0 + cfg.max_zoom, 1)
    tx = uniform(-cfg.max_shift, cfg.max_shift, 2) * width
    ty = uniform(-cfg.max_shift, cfg.max_shift, 3) * height
    flip = tf.where(uniform(0.0, 1.0, 4) < 0.5, -1.0, 1.0) if cfg.flip else tf.ones([batch])
    return inverse_affine(theta, scale, tx, ty, flip, height, width)


def warp(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """Resamples each image once through its output→input map (bilinear, zero fill)."""
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.ensure_shape(warped, images.shape)  # keep static shapes for the model's graph


def transform_boxes(boxes: tf.Tensor, transforms: tf.Tensor, height, width) -> tf.Tensor:
    """Normalised (ymin, xmin, ymax, xmax) boxes [B, 4] → the axis-aligned boxes around
    their corners after the warp (`transforms`: output→input maps, as `warp` takes them).
    Boxes with no area (NO_BOX) stay as they are."""
    l00, l01, a2, l10, l11, b2 = (transforms[:, i] for i in range(6))
    det = l00 * l11 - l01 * l10
    ys = tf.stack([boxes[:, 0], boxes[:, 0], boxes[:, 2], boxes[:, 2]], axis=1) * height
    xs = tf.stack([boxes[:, 1], boxes[:, 3], boxes[:, 1], boxes[:, 3]], axis=1) * width
    dx, dy = xs - a2[:, None], ys - b2[:, None]
    out_x = (l11[:, None] * dx - l01[:, None] * dy) / det[:, None]  # inverse of the 2x2 map
    out_y = (-l10[:, None] * dx + l00[:, None] * dy) / det[:, None]
    moved = tf.clip_by_value(
        tf.stack(
            [
                tf.reduce_min(out_y, 1) / height,
                tf.reduce_min(out_x, 1) / width,
                tf.reduce_max(out_y, 1) / height,
                tf.reduce_max(out_x, 1) / width,
            ],
            axis=1,
        ),
        0.0,
        1.0,
    )
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return tf.where(real[:, None], moved, boxes)


def augment_batch(
    images: tf.Tensor,
    cfg: AugmentConfig = AugmentConfig(),
    seed: int | None = None,
    boxes: tf.Tensor | None = None,
):
    """images float32 [B, H, W, C] in [0, 1] → augmented, same shape, clipped to [0, 1].

    `boxes` [B, 4] (normalised lesion boxes) follow the same geometry (as the box
    around the moved corners); then (images, boxes) is returned."""
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    transforms = _random_transforms(batch, height, width, cfg, seed)
    warped = warp(images, transforms)
    if boxes is not None:
        boxes = transform_boxes(tf.cast(boxes, tf.float32), transforms, height, width)
    factor = tf.random.uniform(
        [batch, 1, 1, 1],
        1.0 - cfg.max_contrast,
        1.0 + cfg.max_contrast,
        seed=None if seed is None else seed + 5,
    )
    mean = tf.reduce_mean(warped, axis=[1, 2, 3], keepdims=True)
    out = tf.clip_by_value((warped - mean) * factor + mean, 0.0, 1.0)
    return out if boxes is None else (out, boxes)
