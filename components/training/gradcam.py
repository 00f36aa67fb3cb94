"""The heatmap of the exported `gradcam` signature.

Grad-CAM (Selvaraju et al. 2017) weights a feature map's channels by the mean
gradient of the predicted class's logit: class-discriminative, but only as sharp as
the map (16 px per cell at 14x14, coarser than a small pituitary lesion). Where the
model also tags an early, fine map (mri_resnet: 56x56), the coarse Grad-CAM is
multiplied by a LayerCAM of that map (Jiang et al. 2021: activations weighted by
their own positive gradients, which stays meaningful at shallow layers), the way
Guided Grad-CAM sharpens Grad-CAM with a fine-grained map. Both factors come from
the gradient of the same class score, so the product still explains that decision.
The fine factor enters compressed (FINE_EXPONENT): at full strength one bright edge
of the fine map outside the lesion outweighed the coarse map's verdict, and the peak
left the box although the coarse evidence was right.

A model that decides from explicit class evidence maps (mri_resnet_evidence) has
its coarse factor replaced by that map itself (evidence_map).

On synthetic phantoms the product puts the peak inside the drawn lesion more often
than Grad-CAM at 14x14 alone (tests/model/test_gradcam.py measures it; the figures:
docs/experiments.md).
"""

from __future__ import annotations

import tensorflow as tf

# The fine map's weight in the product: its cells are raised to this power, which keeps
# where it peaks inside a coarse cell but flattens its range. Replayed on the exported
# weights of two phantom runs (the lesion audit's 485 held-out slices each), the peak
# fell in the box 0.91 / 0.79 of the time at 1, 0.94 / 0.93 at 0.35, 0.89 / 0.89 with
# the coarse map alone (docs/experiments.md).
FINE_EXPONENT = 0.35


def grad_cam(features: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """[N, h, w, C] features and d(score)/d(features) → [N, h, w, 1], >= 0."""
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))


def layer_cam(features: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """[N, h, w, C] → [N, h, w, 1], >= 0 (features are post-ReLU)."""
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(grads) * features, axis=-1, keepdims=True))


def evidence_map(maps: tf.Tensor, class_id: tf.Tensor) -> tf.Tensor:
    """[N, h, w, K] class evidence maps (models.CLASS_EVIDENCE_LAYER), class_id [N] →
    [N, h, w, 1]: the class's map as a spatial softmax, scaled to peak 1.

    For a model whose class score is the mean of its map's highest cells the map is
    the decision itself (a CAM; Grad-CAM on it is its positive part, which is empty
    when every cell is below zero, and the level is arbitrary: softmax over classes
    ignores a shift common to all). exp(map - max) keeps the order of the cells, does
    not depend on that level, and is what lesion guidance trains to fall in the box."""
    maps = tf.cast(maps, tf.float32)
    cam = tf.gather(
        tf.transpose(maps, [0, 3, 1, 2]), tf.cast(tf.reshape(class_id, [-1]), tf.int32), batch_dims=1
    )
    return tf.exp(cam - tf.reduce_max(cam, axis=[1, 2], keepdims=True))[..., None]


def _unit_peak(cam: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))


def _upsampled(cam: tf.Tensor, size: int) -> tf.Tensor:
    return _unit_peak(tf.image.resize(cam, [size, size], method="bilinear")[..., 0])


def heatmap(
    size: int, features: list[tf.Tensor], grads: list[tf.Tensor], coarse: tf.Tensor | None = None
) -> tf.Tensor:
    """[N, size, size] in [0, 1], peak 1 (all zeros when nothing supports the class).
    `features`/`grads`: the coarse map, then optionally the fine one, with their gradients.
    `coarse` [N, h, w, 1]: the coarse map to use instead of Grad-CAM (evidence_map)."""
    cam = _upsampled(grad_cam(features[0], grads[0]) if coarse is None else coarse, size)
    if len(features) > 1:
        cam = _unit_peak(cam * _upsampled(layer_cam(features[1], grads[1]) ** FINE_EXPONENT, size))
    return cam
