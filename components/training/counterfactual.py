"""Counterfactual training images from tumour boxes: make the lesion the reason.

On the Kaggle set every class comes from its own collections, so a network can
name the class from framing, intensity or scanner cues and never look at the
tumour. For training images whose tumour box is known (data_prep/lesion_boxes.py):

* lesion removed: the box is filled from its surroundings and the label becomes
  `notumor`: the same scan without the tumour is not a tumour;
* decoy removed: a box of similar size elsewhere in the head is filled the same way
  and the label stays: the fill itself says nothing (otherwise "a smooth patch" would
  become the notumor cue). Decoys also go to `notumor` images and to tumour images
  with a known box, never to tumour images without one (the fill could hit their
  unknown lesion).

The fill is a normalised convolution at 1/8 resolution (the mean of the nearby
pixels outside the box, spread inwards in a few passes), blended in with a feathered
edge and a random amount of noise; the audit removes lesions with OpenCV's Telea
inpainting at full resolution instead, so it does not test the training fill.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from data_prep import contract


@dataclass(frozen=True)
class CounterfactualConfig:
    lesion_rate: float = 0.25     # share of boxed tumour images whose lesion is removed
    decoy_rate: float = 0.25      # share of eligible images that lose a decoy box
    margin: float = 0.03          # boxes grow by this (normalised) before filling
    max_noise: float = 0.04       # std of the noise added inside the fill, at most


def has_box(boxes: tf.Tensor) -> tf.Tensor:
    """[B, 4] → bool [B]: a real box (NO_BOX is all -1)."""
    return tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])


def box_masks(boxes: tf.Tensor, height: int, width: int, margin: float = 0.0) -> tf.Tensor:
    """[B, 4] normalised (ymin, xmin, ymax, xmax) → float32 [B, H, W, 1], 1 inside.
    NO_BOX gives an empty mask."""
    boxes = tf.cast(boxes, tf.float32)
    ys = (tf.range(height, dtype=tf.float32) + 0.5) / height
    xs = (tf.range(width, dtype=tf.float32) + 0.5) / width
    valid = tf.cast(has_box(boxes), tf.float32)[:, None, None]
    inside_y = tf.cast((ys[None] >= boxes[:, 0:1] - margin) & (ys[None] <= boxes[:, 2:3] + margin),
                       tf.float32)
    inside_x = tf.cast((xs[None] >= boxes[:, 1:2] - margin) & (xs[None] <= boxes[:, 3:4] + margin),
                       tf.float32)
    return (inside_y[:, :, None] * inside_x[:, None, :] * valid)[..., None]


def _box_blur(x: tf.Tensor, size: int) -> tf.Tensor:
    """Separable box filter (two 1-D passes: 2*size instead of size**2 per pixel)."""
    x = tf.nn.avg_pool2d(x, [1, size], 1, "SAME")
    return tf.nn.avg_pool2d(x, [size, 1], 1, "SAME")


def fill_from_surroundings(images: tf.Tensor, masks: tf.Tensor, noise_std: tf.Tensor,
                           seed: int | None = None) -> tf.Tensor:
    """images [B, H, W, 1] with the mask's pixels replaced by their surroundings.

    The fill is computed at 1/8 resolution (it is a smooth blob anyway): the mean of
    the known pixels, spread inwards pass by pass until the hole is covered."""
    keep = 1.0 - masks
    small = tf.nn.avg_pool2d(images * keep, 8, 8, "VALID")
    weight = tf.nn.avg_pool2d(keep, 8, 8, "VALID")
    for _ in range(4):  # each pass reaches 3 cells (24 px) further into the hole
        num = _box_blur(small, 7)
        den = _box_blur(weight, 7)
        known = tf.cast(weight > 1e-3, tf.float32)
        small = small * known + num * (1.0 - known)
        weight = weight * known + den * (1.0 - known)
    fill = tf.image.resize(tf.math.divide_no_nan(small, weight), tf.shape(images)[1:3], "bilinear")
    soft = _box_blur(masks, 5)  # feathered edge
    noise = tf.random.normal(tf.shape(images), seed=seed) * noise_std[:, None, None, None]
    return tf.clip_by_value(images * (1.0 - soft) + (fill + noise) * soft, 0.0, 1.0)


def _decoy_boxes(boxes: tf.Tensor, seed: int | None, tries: int = 4) -> tf.Tensor:
    """Per image a random box (sides 0.08-0.3, inside the central 70 %) that does
    not touch its lesion box; NO_BOX where none of `tries` candidates fits."""
    batch = tf.shape(boxes)[0]
    size = tf.random.uniform([batch, tries, 2], 0.08, 0.3, seed=seed)
    lo = tf.random.uniform([batch, tries, 2], 0.0, 1.0, seed=None if seed is None else seed + 1)
    lo = 0.15 + lo * (0.7 - size)
    cand = tf.concat([lo, lo + size], axis=-1)                      # [B, T, 4]
    lesion = boxes[:, None, :]
    pad = 0.02
    apart = ((cand[..., 2] < lesion[..., 0] - pad) | (cand[..., 0] > lesion[..., 2] + pad)
             | (cand[..., 3] < lesion[..., 1] - pad) | (cand[..., 1] > lesion[..., 3] + pad)
             | ~has_box(boxes)[:, None])
    first = tf.argmax(tf.cast(apart, tf.int32), axis=1, output_type=tf.int32)
    chosen = tf.gather(cand, first, batch_dims=1)
    found = tf.reduce_any(apart, axis=1)
    return tf.where(found[:, None], chosen, tf.constant(contract.NO_BOX, tf.float32)[None])


def counterfactual_batch(images: tf.Tensor, labels: tf.Tensor, boxes: tf.Tensor,
                         cfg: CounterfactualConfig = CounterfactualConfig(),
                         seed: int | None = None):
    """(images, labels, boxes) → the same with some lesions or decoys removed.

    Returns boxes with NO_BOX where the lesion was removed (there is nothing left to
    point at), so the lesion-evidence loss skips those images."""
    def seeded(offset):
        return None if seed is None else seed + offset

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    boxes = tf.cast(tf.reshape(boxes, [-1, 4]), tf.float32)
    boxed = has_box(boxes)
    is_notumor = tf.equal(labels, contract.NOTUMOR_ID)
    draw = tf.random.uniform([batch], seed=seeded(10))
    remove_lesion = boxed & (draw < cfg.lesion_rate)
    remove_decoy = ((boxed | is_notumor) & ~remove_lesion
                    & (tf.random.uniform([batch], seed=seeded(11)) < cfg.decoy_rate))

    decoys = _decoy_boxes(boxes, seeded(12))
    fill_boxes = tf.where(remove_lesion[:, None], boxes,
                          tf.where(remove_decoy[:, None], decoys,
                                   tf.constant(contract.NO_BOX, tf.float32)[None]))
    # Only the images that change are edited (a third of a batch at the defaults).
    changed = tf.where(has_box(fill_boxes))[:, 0]
    masks = box_masks(tf.gather(fill_boxes, changed), height, width, margin=cfg.margin)
    noise_std = tf.random.uniform(tf.shape(changed), 0.0, cfg.max_noise, seed=seeded(13))
    edited = fill_from_surroundings(tf.gather(images, changed), masks, noise_std, seed=seeded(14))
    images = tf.tensor_scatter_nd_update(images, changed[:, None], edited)
    labels = tf.where(remove_lesion, tf.constant(contract.NOTUMOR_ID, tf.int64), labels)
    boxes = tf.where(remove_lesion[:, None], tf.constant(contract.NO_BOX, tf.float32)[None], boxes)
    return images, labels, boxes
