"""Head framing: crop every slice to the head and standardise its intensity.

The Kaggle set joins several collections, and they frame and expose their slices
differently (head size in the frame, black borders, overall brightness). A network
can name the collection, and so the class, from those alone. Inside the Transform
graph (so serving does the same) every slice is therefore

* cropped to a square around the head: the bounding box of the foreground (pixels
  brighter than the background by FOREGROUND x the head's contrast, after an
  erosion that drops thin text and ruler marks), grown by CROP_MARGIN, made square
  about its centre, then moved (and if need be shrunk) to lie inside the image.
  The crop never reaches past the image: a black margin would be an edge the
  network can learn from, and its heatmap then lands on it. The background level
  is a low quantile of the image's border ring, so scanners (and phantoms) whose
  background is grey noise rather than black still get a head box;
* standardised: scaled so that the foreground's BRIGHT_PERCENTILE maps to
  BRIGHT_LEVEL, clipped to [0, 1] (the gain is capped, so a near-black image is
  not turned into amplified noise).

The crop is cut from a decode at DECODE_SIZE (twice the model input), so a head
filling half the frame still gets full resolution. The crop box (normalised to the
whole image, always inside it) is a Transform output: tumour boxes are
moved into the crop's frame for training, and the `gradcam` signature maps its
heatmap back to the whole image, so clients and the lesion audit see heatmaps in
the frame of the image they sent.
"""

from __future__ import annotations

import tensorflow as tf

FOREGROUND = 0.1  # x (bright level - background level): above background noise
BACKGROUND_QUANTILE = 0.25  # of the border ring: background while >= a quarter of it is
MAX_BACKGROUND = 0.5  # x the bright level: a "background" brighter than this is tissue
BORDER = 6  # px of the analysis copy that make the border ring
BRIGHT_PERCENTILE = 0.99  # the "bright level" of an image (robust to a few hot pixels)
BRIGHT_LEVEL = 0.9  # where that level lands after standardisation
MAX_GAIN = 8.0  # standardisation never multiplies by more than this
MIN_LINE_SHARE = 0.03  # rows/columns with fewer foreground pixels are background
CROP_MARGIN = 0.04  # of the head box's side, on every side
_ANALYSIS_SIZE = 112  # the foreground is found on a downscaled copy


def _percentile(values: tf.Tensor, q: float) -> tf.Tensor:
    """[N, M] → [N]: the q-quantile of each row (nearest rank: the value at index
    round(q (M - 1)) of the ascending order). For q near 1 only the top few are
    ranked (top_k), not the whole row: 8x cheaper than a sort at 224x224."""
    m = tf.shape(values)[1]
    index = tf.cast(tf.round(q * tf.cast(m - 1, tf.float32)), tf.int32)
    top = tf.math.top_k(values, k=m - index, sorted=True).values
    return top[:, -1]


def head_boxes(images: tf.Tensor) -> tf.Tensor:
    """[N, H, W, 1] in [0, 1] → [N, 4] square (ymin, xmin, ymax, xmax) around each head,
    normalised to the image and inside it; the whole image where no foreground is found."""
    small = tf.image.resize(images, [_ANALYSIS_SIZE, _ANALYSIS_SIZE], method="area")
    flat = tf.reshape(small, [tf.shape(small)[0], -1])
    bright = tf.maximum(_percentile(flat, BRIGHT_PERCENTILE), 1e-3)
    background = tf.minimum(_background_level(small), MAX_BACKGROUND * bright)
    threshold = background + FOREGROUND * (bright - background)
    mask = tf.cast(small > threshold[:, None, None, None], tf.float32)
    mask = -tf.nn.max_pool2d(-mask, 3, 1, "SAME")  # erosion: thin strokes vanish
    rows = tf.reduce_mean(mask, axis=[2, 3]) >= MIN_LINE_SHARE  # [N, S]
    cols = tf.reduce_mean(mask, axis=[1, 3]) >= MIN_LINE_SHARE

    def extent(lines):
        found = tf.reduce_any(lines, axis=1)
        idx = tf.range(_ANALYSIS_SIZE, dtype=tf.float32)[None]
        first = tf.reduce_min(tf.where(lines, idx, float(_ANALYSIS_SIZE)), axis=1)
        last = tf.reduce_max(tf.where(lines, idx, -1.0), axis=1) + 1.0
        lo = tf.where(found, first / _ANALYSIS_SIZE, 0.0)
        hi = tf.where(found, last / _ANALYSIS_SIZE, 1.0)
        return lo, hi

    y0, y1 = extent(rows)
    x0, x1 = extent(cols)
    side = tf.minimum(tf.maximum(y1 - y0, x1 - x0) * (1.0 + 2.0 * CROP_MARGIN), 1.0)
    # Centre on the head, then slide the square back inside the image.
    top = tf.clip_by_value((y0 + y1 - side) / 2.0, 0.0, 1.0 - side)
    left = tf.clip_by_value((x0 + x1 - side) / 2.0, 0.0, 1.0 - side)
    return tf.stack([top, left, top + side, left + side], axis=1)


def _background_level(small: tf.Tensor) -> tf.Tensor:
    """[N, S, S, 1] → [N]: a low quantile of the border ring, the scanner's background level
    (0 for the usual black background; a frame-filling head is capped by MAX_BACKGROUND)."""
    n = tf.shape(small)[0]
    ring = tf.concat(
        [
            tf.reshape(small[:, :BORDER], [n, -1]),
            tf.reshape(small[:, -BORDER:], [n, -1]),
            tf.reshape(small[:, BORDER:-BORDER, :BORDER], [n, -1]),
            tf.reshape(small[:, BORDER:-BORDER, -BORDER:], [n, -1]),
        ],
        axis=1,
    )
    return -_percentile(-ring, 1.0 - BACKGROUND_QUANTILE)


def standardise(images: tf.Tensor) -> tf.Tensor:
    """[N, H, W, 1] → the same scaled so the foreground's bright level is BRIGHT_LEVEL."""
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    bright = _percentile(flat, BRIGHT_PERCENTILE)
    gain = tf.minimum(BRIGHT_LEVEL / tf.maximum(bright, 1e-6), MAX_GAIN)
    return tf.clip_by_value(images * gain[:, None, None, None], 0.0, 1.0)


def frame_heads(images: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """[N, H, W, 1] whole images → ([N, size, size, 1] framed and standardised, [N, 4] crop boxes)."""
    boxes = head_boxes(images)
    n = tf.shape(images)[0]
    crops = tf.image.crop_and_resize(
        images, boxes, tf.range(n), [size, size], method="bilinear", extrapolation_value=0.0
    )
    return standardise(crops), boxes


def boxes_into_crop(boxes: tf.Tensor, crops: tf.Tensor) -> tf.Tensor:
    """Normalised boxes [N, 4] of the whole image → the same boxes in the crop's frame,
    clipped to it. Boxes with no area (NO_BOX) are returned unchanged."""
    origin = tf.concat([crops[:, :2], crops[:, :2]], axis=1)
    extent = tf.concat([crops[:, 2:] - crops[:, :2]] * 2, axis=1)
    moved = tf.clip_by_value((boxes - origin) / extent, 0.0, 1.0)
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return tf.where(real[:, None], moved, boxes)


def maps_to_image(maps: tf.Tensor, crops: tf.Tensor, size: int) -> tf.Tensor:
    """[N, h, w] maps over the crop → [N, size, size] over the whole image (0 outside the crop)."""
    origin = tf.concat([crops[:, :2], crops[:, :2]], axis=1)
    extent = tf.concat([crops[:, 2:] - crops[:, :2]] * 2, axis=1)
    whole = (tf.constant([0.0, 0.0, 1.0, 1.0]) - origin) / extent  # the image, in crop coordinates
    n = tf.shape(maps)[0]
    out = tf.image.crop_and_resize(
        maps[..., None], whole, tf.range(n), [size, size], method="bilinear", extrapolation_value=0.0
    )
    return out[..., 0]
