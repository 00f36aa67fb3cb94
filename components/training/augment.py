"""Training-only augmentation in one resampling pass per image.

Each image gets a random left-right flip, rotation, zoom and shift composed into
a single affine map and resampled once (bilinear, zero fill), then a random
contrast change. Keras' Random* layers resample once per layer, which costs a
resampling pass each (benchmarks/training_cost.py times the input pipeline stage by
stage).

Then, with an AcquisitionConfig, the acquisition-style transforms (bias field,
resolution, noise, intensity curve, JPEG; `acquisition_batch`), which change how an
image looks and move nothing (docs/augmentation.md; cost: benchmarks/augmentation_cost.py).

Axial slices are roughly left-right symmetric and tumours occur on either side,
so a horizontal flip makes a new plausible image; vertical flips do not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import tensorflow as tf

from components.training import random_draws as draws
from components.transform.head_framing import BRIGHT_LEVEL, BRIGHT_PERCENTILE, MAX_GAIN, _percentile


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


def _random_transforms(
    batch, height, width, cfg: AugmentConfig, seed: draws.Seed, zoom_out: float = 0.0
) -> tf.Tensor:
    """`zoom_out` lowers the zoom's lower bound by that much (AcquisitionConfig.zoom_out)."""

    def uniform(low, high, offset):
        return draws.uniform([batch], low, high, seed=draws.offset(seed, offset))

    theta = uniform(-1.0, 1.0, 0) * (cfg.max_rotation_deg * math.pi / 180.0)
    scale = uniform(1.0 - cfg.max_zoom - zoom_out, 1.0 + cfg.max_zoom, 1)
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
    seed: draws.Seed = None,
    boxes: tf.Tensor | None = None,
    acquisition: AcquisitionConfig | None = None,
):
    """images float32 [B, H, W, C] in [0, 1] → augmented, same shape, clipped to [0, 1].

    `boxes` [B, 4] (normalised lesion boxes) follow the same geometry (as the box
    around the moved corners); then (images, boxes) is returned. `acquisition`
    (single-channel images): its zoom-out joins the affine map, and its transforms
    (acquisition_batch) follow the contrast change; they move nothing."""
    shape = tf.shape(images)
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    zoom_out = acquisition.zoom_out * acquisition.strength if acquisition is not None else 0.0
    transforms = _random_transforms(batch, height, width, cfg, seed, zoom_out=zoom_out)
    warped = warp(images, transforms)
    if boxes is not None:
        boxes = transform_boxes(tf.cast(boxes, tf.float32), transforms, height, width)
    factor = draws.uniform(
        [batch, 1, 1, 1], 1.0 - cfg.max_contrast, 1.0 + cfg.max_contrast, seed=draws.offset(seed, 5)
    )
    mean = tf.reduce_mean(warped, axis=[1, 2, 3], keepdims=True)
    out = tf.clip_by_value((warped - mean) * factor + mean, 0.0, 1.0)
    if acquisition is not None:
        out = acquisition_batch(out, acquisition, seed=seed)
    return out if boxes is None else (out, boxes)


# ── Acquisition-style augmentation ─────────────────────────────────────────────────
# In the Kaggle merge every tumour image is T1 post-contrast while many notumor images
# come from other collections (other sequences, scanners, sizes, JPEG quality), so the
# look of an image predicts its class (project issue 22). These transforms change the
# look and move nothing: boxes and lesion masks stay valid. They come after the
# counterfactual fills and the geometry, so a filled hole gets the same look as the
# tissue around it (docs/augmentation.md).


@dataclass(frozen=True)
class AcquisitionConfig:
    """Acquisition-style augmentation: each transform's probability per image and its
    magnitude at strength 1; `strength` (the Trainer's acquisition_strength) scales every
    magnitude, 0 changes nothing.

    Order, as an acquisition and an export would apply them: resolution → bias field →
    noise → intensity curve (contrast and window as one affine map, clipped; gamma; a
    smooth monotone curve) → JPEG → the serving graph's standardisation
    (head_framing's bright level), so the look changes and the overall brightness is
    what serving would give. The per-pixel steps between resolution and JPEG run as one
    XLA-fused function (unfused they cost five times as much)."""

    strength: float = 0.5
    # Resolution: down (area) to a side drawn log-uniformly in [side (min_side / side)^s,
    # side], back up (bilinear): a coarser acquisition, or a small image upscaled. One
    # size per batch (tf.image.resize takes one); the images are drawn per image.
    resolution_p: float = 0.25
    min_side: int = 64
    # Multiplicative smooth bias field (coil shading): a bias_grid x bias_grid grid of
    # gains in [1 - b, 1 + b] interpolated by normalised Gaussian bumps.
    bias_p: float = 0.5
    bias: float = 0.5
    bias_grid: int = 4
    # Noise, std drawn in [0, noise] (x strength), as a magnitude image has it: |x + n|
    # (Rician-like: the background gets positive speckle). The noise comes from a fixed
    # bank of NOISE_BANK Gaussian fields, chosen, flipped and signed per image: a
    # Gaussian draw per pixel costs ten times as much.
    noise_p: float = 0.5
    noise: float = 0.08
    # Contrast about the image mean: factor in [1 / (1 + c), 1 + c].
    contrast_p: float = 0.5
    contrast: float = 1.0
    # Window: black point in [-window_low, window_low], white point in
    # [1 - window_high, 1 + window_high / 2] (x strength); values outside are clipped.
    window_p: float = 0.5
    window_low: float = 0.3
    window_high: float = 0.5
    # Gamma in [exp(-gamma), exp(gamma)] (x strength).
    gamma_p: float = 0.5
    gamma: float = 1.0
    # Smooth monotone curve: a Bernstein polynomial of degree curve_degree whose rising
    # control points have random steps (each a factor in [exp(-curve), exp(curve)]); it
    # runs 0 → 1 and keeps the order of intensities.
    curve_p: float = 0.5
    curve: float = 1.0
    curve_degree: int = 5
    # JPEG re-compression at a quality in [95 - s (95 - min_quality), 95]; about 1 ms an
    # image on one core, hence the low probability.
    jpeg_p: float = 0.1
    min_quality: int = 20
    # Extra zoom-out (smaller head, more field of view), in augment_batch's affine pass:
    # the lower scale bound goes down by zoom_out x strength.
    zoom_out: float = 0.3
    restandardise: bool = True

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"acquisition strength must be in [0, 1], got {self.strength}")
        probabilities = [getattr(self, f.name) for f in fields(self) if f.name.endswith("_p")]
        if min(probabilities) < 0 or max(probabilities) > 1:
            raise ValueError(f"probabilities must be in [0, 1], got {probabilities}")
        if not (0.0 <= self.bias < 1.0 and 0.0 <= self.window_high < 1.0 and 0.0 <= self.zoom_out < 0.5):
            raise ValueError("bias and window_high must be in [0, 1), zoom_out in [0, 0.5)")
        if (
            self.bias_grid < 2
            or self.curve_degree < 1
            or self.min_side < 8
            or not 1 <= self.min_quality <= 95
        ):
            raise ValueError("need bias_grid >= 2, curve_degree >= 1, min_side >= 8, min_quality in [1, 95]")

    @property
    def active(self) -> bool:
        return self.strength > 0.0


NOISE_BANK = 16  # Gaussian noise fields (x 4 flips x 2 signs) the noise is drawn from
_NOISE_SEED = 20240622  # the bank is a constant: the same in every run


class _Draws:
    """Random draws seeded seed + 100 + i, i counting the draws (as _random_transforms
    does with seed + i; random_draws.offset): the same for a seed, new in every batch."""

    def __init__(self, batch, seed: draws.Seed):
        self.batch, self.seed, self.count = batch, seed, 0

    def uniform(self, shape, low=0.0, high=1.0, dtype=tf.float32):
        self.count += 1
        return draws.uniform(shape, low, high, seed=draws.offset(self.seed, 100 + self.count), dtype=dtype)

    def chosen(self, p: float) -> tf.Tensor:
        """bool [B]: the images a transform of probability p applies to."""
        return self.uniform([self.batch]) < p

    def gated(self, p: float, low=-1.0, high=1.0) -> tf.Tensor:
        """[B]: uniform in [low, high] for the chosen images, 0 for the others."""
        on = self.chosen(p)
        return tf.where(on, self.uniform([self.batch], low, high), 0.0)


def _bumps(n, points: int) -> tf.Tensor:
    """[n, points]: normalised Gaussian bumps at `points` evenly spaced centres; each row
    sums to 1, so a grid of gains interpolates to a smooth field within their range."""
    pos = (tf.range(n, dtype=tf.float32) + 0.5) / tf.cast(n, tf.float32)
    centres = tf.linspace(0.0, 1.0, points)
    w = tf.exp(-0.5 * tf.square((pos[:, None] - centres[None, :]) * ((points - 1) / 0.6)))
    return w / tf.reduce_sum(w, axis=1, keepdims=True)


def bias_field(gains: tf.Tensor, height, width) -> tf.Tensor:
    """gains [B, G, G] → smooth multiplicative field [B, H, W, 1] (two small matmuls)."""
    grid = gains.shape[1]
    rows, cols = _bumps(height, grid), _bumps(width, grid)
    return tf.matmul(tf.matmul(rows, gains), cols, transpose_b=True)[..., None]


def monotone_curve(y: tf.Tensor, control: tf.Tensor) -> tf.Tensor:
    """Bernstein polynomial with control points `control` [B, n+1] at y [B, H, W, 1] in
    [0, 1] (de Casteljau): increasing where the control points increase, the identity for
    evenly spaced ones, smooth, and within [control[0], control[n]]."""
    points = [control[:, k, None, None, None] for k in range(control.shape[1])]
    while len(points) > 1:
        points = [a + y * (b - a) for a, b in zip(points[:-1], points[1:])]
    return points[0]


def curve_controls(steps: tf.Tensor) -> tf.Tensor:
    """Log-steps [B, n] → rising control points [B, n+1] from 0 to 1 (zeros: evenly spaced)."""
    rising = tf.cumsum(tf.exp(steps), axis=1)
    return tf.concat([tf.zeros_like(rising[:, :1]), rising / rising[:, -1:]], axis=1)


@tf.function(jit_compile=True)
def _look(images, gains, rows, cols, bank, pick, flips, sigma, contrast, low, high, gamma, control):
    """The per-pixel steps, fused by XLA (unfused they cost several times as much): bias
    field, magnitude noise, contrast about the mean and window (clipped), gamma, the
    monotone curve. Per-image parameters are [B]; the noise is `bank[pick]`, flipped
    left-right and up-down where `flips` [B, 2] say, times `sigma` (signed). Returns the
    images and a 1-in-16 subsample of them (for the bright level). Every argument is a
    runtime value: a compile-time constant among them would recompile per value."""

    def per_image(v):
        return v[:, None, None, None]

    field = tf.matmul(tf.matmul(rows, gains), cols, transpose_b=True)[..., None]
    noise = tf.gather(bank, pick)
    noise = tf.where(per_image(flips[:, 0]), tf.reverse(noise, axis=[2]), noise)
    noise = tf.where(per_image(flips[:, 1]), tf.reverse(noise, axis=[1]), noise)
    x = tf.abs(images * field + noise * per_image(sigma))
    mean = tf.reduce_mean(tf.minimum(x, 1.0), axis=[1, 2, 3], keepdims=True)
    scale = per_image(contrast / (high - low))
    y = tf.clip_by_value((x - mean) * scale + (mean - per_image(low)) / per_image(high - low), 0.0, 1.0)
    y = tf.where(y > 0.0, tf.exp(per_image(gamma) * tf.math.log(tf.maximum(y, 1e-12))), 0.0)
    y = monotone_curve(y, control)
    return y, y[:, 2::4, 2::4]


@functools.lru_cache(maxsize=4)
def _noise_bank_array(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(_NOISE_SEED)
    return rng.standard_normal((NOISE_BANK, height, width, 1)).astype(np.float32)


def _noise_bank(static_shape, size) -> tf.Tensor:
    """The constant bank of Gaussian fields (see AcquisitionConfig.noise); without a
    static image size, fields drawn afresh (slower, but any size)."""
    height, width = static_shape[1], static_shape[2]
    if height is None or width is None:
        return tf.random.normal(tf.concat([[NOISE_BANK], size, [1]], 0))
    return tf.constant(_noise_bank_array(height, width))


def _bright_gain(sample: tf.Tensor) -> tf.Tensor:
    """[B] gains that bring each image's bright level (BRIGHT_PERCENTILE of `sample`, its
    1-in-16 subsample) to serving's BRIGHT_LEVEL, as head_framing.standardise does."""
    bright = _percentile(tf.reshape(sample, [tf.shape(sample)[0], -1]), BRIGHT_PERCENTILE)
    return tf.minimum(BRIGHT_LEVEL / tf.maximum(bright, 1e-6), MAX_GAIN)


def lower_resolution(images: tf.Tensor, factor) -> tf.Tensor:
    """Down to `factor` of the size (area average), back up (bilinear): what a coarser
    acquisition matrix, or a small image upscaled, looks like."""
    size = tf.shape(images)[1:3]
    small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 1)
    return tf.image.resize(tf.image.resize(images, small, method="area"), size, method="bilinear")


def _some(images: tf.Tensor, chosen: tf.Tensor, fn) -> tf.Tensor:
    """images with fn applied to the chosen ones only (fn gets those and their indices)."""
    index = tf.where(chosen)[:, 0]

    def apply():
        return tf.tensor_scatter_nd_update(images, index[:, None], fn(tf.gather(images, index), index))

    return tf.ensure_shape(tf.cond(tf.size(index) > 0, apply, lambda: images), images.shape)


def acquisition_batch(
    images: tf.Tensor, cfg: AcquisitionConfig = AcquisitionConfig(), seed: draws.Seed = None
):
    """images float32 [B, H, W, 1] in [0, 1] → the same with a random acquisition look,
    in [0, 1]; nothing moves. Strength 0: the images themselves."""
    if not cfg.active:
        return images
    s = cfg.strength
    shape = tf.shape(images)
    batch, size = shape[0], shape[1:3]
    draw = _Draws(batch, seed)
    x = images

    # Resolution (outside XLA: the area resize has no XLA kernel).
    side = tf.cast(tf.minimum(size[0], size[1]), tf.float32)
    factor = tf.pow(tf.minimum(cfg.min_side / side, 1.0), draw.uniform([], 0.0, s))  # log-uniform
    x = _some(x, draw.chosen(cfg.resolution_p), lambda picked, _: lower_resolution(picked, factor))

    # Per-pixel steps: their parameters, then one fused pass.
    bias_on = draw.chosen(cfg.bias_p)
    gains = 1.0 + draw.uniform([batch, cfg.bias_grid, cfg.bias_grid], -1.0, 1.0) * (cfg.bias * s)
    gains = tf.where(bias_on[:, None, None], gains, 1.0)
    sigma = draw.gated(cfg.noise_p, 0.0, 1.0) * (cfg.noise * s) * tf.where(draw.chosen(0.5), -1.0, 1.0)
    pick = draw.uniform([batch], 0, NOISE_BANK, tf.int32)
    flips = draw.uniform([batch, 2]) < 0.5
    contrast = tf.exp(draw.gated(cfg.contrast_p) * (math.log1p(cfg.contrast) * s))
    window_on = draw.chosen(cfg.window_p)
    low = tf.where(window_on, draw.uniform([batch], -1.0, 1.0) * (cfg.window_low * s), 0.0)
    high = tf.where(window_on, 1.0 + draw.uniform([batch], -1.0, 0.5) * (cfg.window_high * s), 1.0)
    gamma = tf.exp(draw.gated(cfg.gamma_p) * (cfg.gamma * s))
    curve_on = draw.chosen(cfg.curve_p)
    steps = draw.uniform([batch, cfg.curve_degree], -1.0, 1.0) * (cfg.curve * s)
    control = curve_controls(tf.where(curve_on[:, None], steps, 0.0))
    x, sample = _look(
        x,
        gains,
        _bumps(size[0], cfg.bias_grid),
        _bumps(size[1], cfg.bias_grid),
        _noise_bank(images.shape, size),
        pick,
        flips,
        sigma,
        contrast,
        low,
        high,
        gamma,
        control,
    )

    # JPEG re-compression (8 bits, blocks, ringing), per image.
    worst = 95.0 - s * (95.0 - cfg.min_quality)
    quality = tf.cast(tf.round(draw.uniform([batch], worst, 95.0)), tf.int32)

    def jpeg(picked, index):
        return tf.map_fn(
            lambda args: tf.image.adjust_jpeg_quality(args[0], args[1]),
            (picked, tf.gather(quality, index)),
            fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32),
        )

    x = _some(x, draw.chosen(cfg.jpeg_p), jpeg)
    if cfg.restandardise:
        # As head_framing.standardise, the bright level read on a 1-in-16 subsample of
        # the curve's output (ranking every pixel costs more than the rest together).
        x = x * _bright_gain(sample)[:, None, None, None]
    return tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0), images.shape)


# ── Sequence look: tissue contrast re-ordered ───────────────────────────────────────
# The acquisition transforms keep the order of intensities, so T1 post-contrast stays
# T1 post-contrast. Other sequences re-order the tissues: on T2 and FLAIR fluid and
# oedema are bright and fat darker, on T1 without contrast enhancement is gone. In the
# Kaggle merge that order predicts the class (tumours: T1 post-contrast only), and on
# T1 and T2 slices from other sites tumours were called `notumor`. A random,
# non-monotone tissue curve shown to every class alike takes that cue away; the curve
# starts at 0, so the background stays dark as on every MRI sequence.


@dataclass(frozen=True)
class SequenceRemapConfig:
    """`rate`: share of training images given a random tissue curve. The curve is a
    Bernstein polynomial of degree `degree` with control points drawn in [floor, 1], so
    it may fall as well as rise (squared uniform draws: mostly mid-grey); `inverted`: the share of those drawn falling (dark
    tissue bright, bright tissue dark: T1's contrast turned towards T2's). It is
    multiplied by a ramp from 0 at `background` to 1 at `tissue` (intensities after
    serving's standardisation), so air and bone stay dark as on every sequence."""

    rate: float = 0.5
    degree: int = 4
    inverted: float = 0.5
    floor: float = 0.1
    background: float = 0.04
    tissue: float = 0.15

    def __post_init__(self):
        if not (0.0 <= self.rate <= 1.0 and 0.0 <= self.inverted <= 1.0 and 0.0 <= self.floor < 1.0):
            raise ValueError(f"sequence remap rate, inverted share and floor must be in [0, 1], got {self}")
        if self.degree < 2 or not 0.0 <= self.background < self.tissue < 1.0:
            raise ValueError(f"sequence remap needs degree >= 2 and 0 <= background < tissue < 1, got {self}")


def sequence_controls(
    batch, cfg: SequenceRemapConfig, seed: draws.Seed = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """([B, degree + 1] control points, [B] which images were chosen): the control points of each image's tissue curve: identity points for
    the images not chosen; for chosen ones random points in [floor, 1], sorted falling
    for the `inverted` share."""
    draw = _Draws(batch, draws.offset(seed, 50))
    n = cfg.degree + 1
    identity = tf.broadcast_to(tf.linspace(0.0, 1.0, n)[None, :], [batch, n])
    # Squared draws: most tissue mid-grey, a little of it bright, as on real slices.
    points = cfg.floor + (1.0 - cfg.floor) * tf.square(draw.uniform([batch, n]))
    falling = -tf.sort(-points, axis=1)
    points = tf.where(draw.chosen(cfg.inverted)[:, None], falling, points)
    chosen = draw.chosen(cfg.rate)
    return tf.where(chosen[:, None], points, identity), chosen


QUANTILES = 16  # tissue intensity quantiles per image for the equalisation


def tissue_knots(x: tf.Tensor, background: float) -> tf.Tensor:
    """[B, QUANTILES + 1] rising quantiles of each image's tissue pixels (above
    `background`), read on a 1-in-16 subsample."""
    batch = tf.shape(x)[0]
    sample = tf.reshape(x[:, 2::4, 2::4], [batch, -1])
    tissue = tf.sort(tf.where(sample > background, sample, 2.0), axis=1)  # background last
    last = tf.maximum(tf.reduce_sum(tf.cast(sample > background, tf.int32), axis=1) - 1, 0)
    at = tf.linspace(0.0, 1.0, QUANTILES + 1)[None, :] * tf.cast(last[:, None], tf.float32)
    knots = tf.gather(tissue, tf.cast(at, tf.int32), batch_dims=1)
    knots = tf.minimum(knots, 1.0)  # an image without tissue: no pixel ranks above 0
    return knots + tf.range(QUANTILES + 1, dtype=tf.float32)[None, :] * 1e-4  # strictly rising


@tf.function(jit_compile=True)
def _remap_pixels(x, knots, control, background, tissue):
    """The per-pixel steps, fused by XLA (a searchsorted and gathers instead cost ten
    times as much): each pixel's rank among its image's tissue (piecewise linear between
    the knots, as a sum of clipped ramps), the Bernstein curve of the rank, the
    background ramp."""
    rank = tf.zeros_like(x)
    for k in range(QUANTILES):
        lo, hi = knots[:, k, None, None, None], knots[:, k + 1, None, None, None]
        rank += tf.clip_by_value((x - lo) / (hi - lo), 0.0, 1.0)
    ramp = tf.clip_by_value((x - background) / (tissue - background), 0.0, 1.0)
    return monotone_curve(rank / QUANTILES, control) * ramp


def sequence_remap_batch(
    images: tf.Tensor, cfg: SequenceRemapConfig = SequenceRemapConfig(), seed: draws.Seed = None
) -> tf.Tensor:
    """images float32 [B, H, W, 1] in [0, 1] → the chosen ones with each pixel's rank
    among its image's tissue pixels (tissue_knots) through a random tissue curve
    (sequence_controls), times a background ramp, then the bright level back to
    serving's (head_framing.standardise): the curve acts on the tissue order, not on one
    collection's grey levels, and only the order and spacing of tissue intensities
    change. Nothing moves: boxes and lesion masks stay valid. Images not chosen come
    back as they were."""
    if cfg.rate <= 0.0:
        return images
    batch = tf.shape(images)[0]
    control, chosen = sequence_controls(batch, cfg, seed)
    x = tf.clip_by_value(images, 0.0, 1.0)
    knots = tissue_knots(x, cfg.background)
    y = _remap_pixels(x, knots, control, tf.constant(cfg.background), tf.constant(cfg.tissue))
    remapped = tf.clip_by_value(y * _bright_gain(y[:, 2::4, 2::4])[:, None, None, None], 0.0, 1.0)
    return tf.ensure_shape(tf.where(chosen[:, None, None, None], remapped, images), images.shape)
