"""Head framing in the Transform graph: the crop finds the head, ignores text, survives
blank input, and boxes and heatmaps move between the whole image and the crop."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from components.transform.head_framing import boxes_into_crop, frame_heads, head_boxes, maps_to_image
from components.transform.preprocessing import (
    HEAD_BOX_XF,
    IMAGE_SIZE,
    IMAGE_XF,
    LESION_BOX_XF,
    preprocessing_fn,
)
from btmri import spec
from data_prep.lesion_boxes import box_mask, mask_to_box


def _slice(brightness: float = 1.0) -> np.ndarray:
    """A 'head' (textured ellipse) in the left half of a 400x400 black frame, and a
    line of white text in the bottom-right corner."""
    rng = np.random.default_rng(0)
    image = np.zeros((400, 400), np.float32)
    head = np.zeros_like(image)
    cv2.ellipse(head, (120, 180), (80, 100), 0, 0, 360, 1.0, -1)  # x 40..200, y 80..280
    image = head * rng.uniform(0.3, 0.8, image.shape).astype(np.float32)
    cv2.putText(image, "L 12mm", (300, 390), cv2.FONT_HERSHEY_PLAIN, 0.8, 1.0, 1)
    return np.clip(image * brightness, 0, 1)


def test_the_crop_is_a_square_around_the_head_and_ignores_text():
    box = head_boxes(tf.constant(_slice()[None, :, :, None])).numpy()[0]
    ymin, xmin, ymax, xmax = box
    assert ymax - ymin == pytest.approx(xmax - xmin, abs=1e-5)  # square
    assert ymin < 80 / 400 < 280 / 400 < ymax and xmin < 40 / 400 < 200 / 400 < xmax
    assert ymax - ymin < 0.6  # not stretched to the text
    assert xmax < 300 / 400


def test_framing_standardises_intensity_and_fills_the_input_with_the_head():
    bright, _ = frame_heads(tf.constant(_slice()[None, :, :, None]), IMAGE_SIZE)
    dim, _ = frame_heads(tf.constant(_slice(0.4)[None, :, :, None]), IMAGE_SIZE)
    bright, dim = bright.numpy()[0, ..., 0], dim.numpy()[0, ..., 0]
    assert np.abs(bright - dim).mean() < 0.01  # exposure no longer shows
    # The ellipse covers 0.16 of the whole frame and pi/4 x 0.8 / 1.08**2 = 0.54 of its square crop.
    assert (bright > 0.05).mean() > 0.5


def test_a_grey_noisy_background_still_gives_a_head_box():
    """Some scanners (and the synthetic phantoms) have a grey, noisy background: the
    foreground is measured from that level, not from black."""
    rng = np.random.default_rng(1)
    image = _slice() * 0.8 + 0.15 + rng.normal(0, 0.02, (400, 400)).astype(np.float32)
    box = head_boxes(tf.constant(np.clip(image, 0, 1)[None, :, :, None], tf.float32)).numpy()[0]
    assert box[0] < 80 / 400 < 280 / 400 < box[2] and box[1] < 40 / 400 < 200 / 400 < box[3]
    assert box[2] - box[0] < 0.6  # not the whole frame


def test_the_crop_never_reaches_past_the_image():
    """A head at the edge, or filling the frame, is cropped without a black margin: the
    margin's edge would be a feature the network can learn and Grad-CAM points at."""
    edge = np.zeros((300, 300), np.float32)
    cv2.circle(edge, (20, 150), 90, 1.0, -1)  # cut by the left edge
    full = np.full((300, 300), 0.6, np.float32)
    boxes = head_boxes(tf.constant(np.stack([edge, full])[..., None])).numpy()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    np.testing.assert_allclose(boxes[1], [0, 0, 1, 1], atol=1e-6)
    assert boxes[0, 1] == 0 and boxes[0, 2] - boxes[0, 0] == pytest.approx(boxes[0, 3] - boxes[0, 1])
    framed, _ = frame_heads(tf.constant(np.stack([edge, full])[..., None]), IMAGE_SIZE)
    assert framed.numpy()[1].min() > 0.5  # no black border


def test_blank_and_uniform_images_keep_the_whole_frame():
    images = tf.constant(np.stack([np.zeros((64, 64)), np.ones((64, 64))])[..., None], tf.float32)
    framed, boxes = frame_heads(images, IMAGE_SIZE)
    assert np.isfinite(framed.numpy()).all()
    np.testing.assert_allclose(boxes.numpy(), [[0, 0, 1, 1]] * 2, atol=1e-6)


def test_boxes_and_heatmaps_move_between_whole_image_and_crop():
    crops = tf.constant([[0.1, 0.2, 0.7, 0.8], [-0.05, -0.05, 1.05, 1.05]])
    lesion = (0.3, 0.4, 0.5, 0.6)
    inside = boxes_into_crop(tf.constant([lesion, spec.NO_BOX], tf.float32), crops).numpy()
    np.testing.assert_allclose(
        inside[0], [(0.3 - 0.1) / 0.6, (0.4 - 0.2) / 0.6, (0.5 - 0.1) / 0.6, (0.6 - 0.2) / 0.6], atol=1e-6
    )
    np.testing.assert_array_equal(inside[1], spec.NO_BOX)
    # A heatmap drawn on the lesion in the crop's frame lands on the lesion in the whole image.
    heat = box_mask(tuple(inside[0]), IMAGE_SIZE, IMAGE_SIZE).astype(np.float32)
    whole = maps_to_image(tf.constant(np.stack([heat, heat])), crops, IMAGE_SIZE).numpy()[0]
    found = mask_to_box(whole > 0.5)
    np.testing.assert_allclose(found, lesion, atol=2 / IMAGE_SIZE)


def test_preprocessing_fn_returns_the_crop_and_moves_the_lesion_box():
    ok, png = cv2.imencode(".png", (_slice() * 255).astype(np.uint8))
    assert ok
    lesion = (0.4, 0.2, 0.5, 0.3)
    out = preprocessing_fn(
        {
            spec.IMAGE_KEY: tf.constant([[png.tobytes()]]),
            spec.LESION_BOX_KEY: tf.constant([lesion], tf.float32),
        }
    )
    assert out[IMAGE_XF].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 1)
    crop = out[HEAD_BOX_XF].numpy()[0]
    moved = out[LESION_BOX_XF].numpy()[0]
    side = crop[2] - crop[0]
    np.testing.assert_allclose(moved[:2], (np.array(lesion[:2]) - crop[:2]) / side, atol=1e-5)


def test_percentile_ranks_like_a_full_sort():
    from components.transform.head_framing import _percentile

    for m in (1, 7, 12544):
        values = np.random.default_rng(m).random((3, m)).astype(np.float32)
        expected = np.sort(values, axis=1)[:, int(round(0.99 * (m - 1)))]
        np.testing.assert_array_equal(_percentile(tf.constant(values), 0.99).numpy(), expected)
