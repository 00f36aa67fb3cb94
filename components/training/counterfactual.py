"""Counterfactual training images from tumour boxes: make the lesion the reason.

On the Kaggle set every class comes from its own collections, so a network can
name the class from framing, intensity or scanner cues and never look at the
tumour. For training images whose tumour box is known (data_prep/lesion_boxes.py):

* lesion removed: the box is filled and the label becomes `notumor`: the same scan
  without the tumour is not a tumour;
* lesion pasted: a notumor image receives the lesion (its box, feathered, brought to
  the recipient's local intensity) of a boxed tumour image of the same batch, and
  that image's class and box: the tumour is the reason wherever the rest of the
  slice comes from, so the collection a slice looks like stops deciding the class;
* decoy removed: a box of similar size elsewhere in the head is filled the same way
  and the label stays: the fill itself says nothing (otherwise "a smooth patch" would
  become the notumor cue). Decoys also go to `notumor` images and to tumour images
  with a known box, never to tumour images without one (the fill could hit their
  unknown lesion).

Three fills, a third of the edited images each, so that no one texture means "removed":
* smooth: a normalised convolution at 1/8 resolution (the mean of the nearby pixels
  outside the box, spread inwards in a few passes), with a random amount of noise;
* rim: the hole's own rim carried straight inwards at full resolution (each pixel
  the inverse-distance mean of the rim pixels level with it on all four sides),
  so whatever borders the hole, a bright rim included, streaks into it, as
  boundary-driven inpainting does;
* transplant: tissue from elsewhere in the same slice (its mirror image across the
  vertical midline, or a shifted copy) whose source region does not touch the
  lesion, brought to the mean intensity of the ring around the hole.
A model trained on the smooth fill alone learnt it: it called 0.68 of held-out
tumour slices notumor with that fill but 0.24 with Telea inpainting. With smooth
and transplant fills it still answered notumor for 0.89 of slices with a ring-mean
fill but 0.67 with Telea: a rim left outside a tight box comes back into it, and
no smooth fill shows that. All fills are blended in with a feathered edge. The
lesion audit removes lesions with OpenCV's Telea inpainting at the slice's own
resolution, which training never runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from components.training import random_draws as draws
from btmri.documents import TRAINER_DEFAULTS
from components.training.augment import warp
from btmri import spec


RING_WIDTH = 0.05  # (normalised) of the band around a box that gives its local intensity


@dataclass(frozen=True)
class CounterfactualConfig:
    # The rates' defaults are the Trainer's (btmri.documents.TrainerConfig).
    lesion_rate: float = TRAINER_DEFAULTS.lesion_removal_rate  # boxed tumour images whose lesion is removed
    decoy_rate: float = TRAINER_DEFAULTS.decoy_removal_rate  # eligible images that lose a decoy box
    paste_rate: float = TRAINER_DEFAULTS.lesion_paste_rate  # notumor images given a batch-mate's lesion
    paste_invert_share: float = 1 / 3  # pasted lesions shown darker than their ring, not brighter
    transplant_share: float = 1 / 3  # edited images filled with tissue from elsewhere
    rim_share: float = 1 / 3  # edited images filled by carrying the rim inwards
    margin: float = 0.03  # boxes grow by this (normalised) before filling
    max_noise: float = 0.04  # std of the noise added inside the fill, at most

    def __post_init__(self):
        shares = (self.transplant_share, self.rim_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(f"fill shares must be >= 0 and sum to <= 1, got {shares}")


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
    inside_y = tf.cast(
        (ys[None] >= boxes[:, 0:1] - margin) & (ys[None] <= boxes[:, 2:3] + margin), tf.float32
    )
    inside_x = tf.cast(
        (xs[None] >= boxes[:, 1:2] - margin) & (xs[None] <= boxes[:, 3:4] + margin), tf.float32
    )
    return (inside_y[:, :, None] * inside_x[:, None, :] * valid)[..., None]


def _ring_masks(boxes: tf.Tensor, masks: tf.Tensor, margin: float) -> tf.Tensor:
    """The band RING_WIDTH wide around the boxes' masks (grown by `margin`): the local
    tissue whose mean an edit is brought to."""
    return box_masks(boxes, masks.shape[1], masks.shape[2], margin=margin + RING_WIDTH) - masks


def _box_blur(x: tf.Tensor, size: int) -> tf.Tensor:
    """Separable box filter (two 1-D passes: 2*size instead of size**2 per pixel)."""
    x = tf.nn.avg_pool2d(x, [1, size], 1, "SAME")
    return tf.nn.avg_pool2d(x, [size, 1], 1, "SAME")


def _blend(images: tf.Tensor, fill: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """`fill` inside the masks, with a feathered edge; clipped to [0, 1]."""
    soft = _box_blur(masks, 5)
    return tf.clip_by_value(images * (1.0 - soft) + fill * soft, 0.0, 1.0)


def _masked_mean(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """[B, H, W, 1] x [B, H, W, 1] → [B]: the mean of each image inside its mask."""
    return tf.math.divide_no_nan(
        tf.reduce_sum(images * masks, axis=[1, 2, 3]), tf.reduce_sum(masks, axis=[1, 2, 3])
    )


def smooth_fill(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """[B, H, W, 1]: inside each mask, the mean of the nearby pixels outside it.

    Computed at 1/8 resolution (it is a smooth blob anyway): the mean of the known
    pixels, spread inwards pass by pass until the hole is covered."""
    keep = 1.0 - masks
    small = tf.nn.avg_pool2d(images * keep, 8, 8, "VALID")
    weight = tf.nn.avg_pool2d(keep, 8, 8, "VALID")
    for _ in range(4):  # each pass reaches 3 cells (24 px) further into the hole
        num = _box_blur(small, 7)
        den = _box_blur(weight, 7)
        known = tf.cast(weight > 1e-3, tf.float32)
        small = small * known + num * (1.0 - known)
        weight = weight * known + den * (1.0 - known)
    return tf.image.resize(tf.math.divide_no_nan(small, weight), tf.shape(images)[1:3], "bilinear")


def _first_index(flags: tf.Tensor) -> tf.Tensor:
    """[B, N] of 0/1 → int32 [B]: the first index holding a 1 (0 when none does)."""
    return tf.argmax(flags, axis=1, output_type=tf.int32)


def rim_fill(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """[B, H, W, 1]: inside each (rectangular) mask, the rim carried straight inwards.

    A pixel gets the inverse-distance-weighted mean of the four rim pixels level
    with it just outside the hole (left, right, above, below; the rim lightly
    blurred), so whatever borders the hole, a bright rim included, streaks into it
    as boundary-driven inpainting does. Closed form: no passes, cheap per batch.
    Outside the mask: the image."""
    height, width = images.shape[1], images.shape[2]
    rows = tf.reduce_max(masks[..., 0], axis=2)  # [B, H]: the hole's rows
    cols = tf.reduce_max(masks[..., 0], axis=1)  # [B, W]
    top = _first_index(rows) - 1
    bottom = height - _first_index(tf.reverse(rows, [1]))
    left = _first_index(cols) - 1
    right = width - _first_index(tf.reverse(cols, [1]))
    rim = _box_blur(images, 3)[..., 0]
    clip_h = lambda i: tf.clip_by_value(i, 0, height - 1)  # noqa: E731
    clip_w = lambda i: tf.clip_by_value(i, 0, width - 1)  # noqa: E731
    above = tf.gather(rim, clip_h(top), axis=1, batch_dims=1)  # [B, W]
    below = tf.gather(rim, clip_h(bottom), axis=1, batch_dims=1)
    columns = tf.transpose(rim, [0, 2, 1])  # [B, W, H]
    beside_l = tf.gather(columns, clip_w(left), axis=1, batch_dims=1)  # [B, H]
    beside_r = tf.gather(columns, clip_w(right), axis=1, batch_dims=1)
    ys = tf.range(height, dtype=tf.float32)[None, :, None]
    xs = tf.range(width, dtype=tf.float32)[None, None, :]

    def weight(distance):
        return 1.0 / tf.maximum(distance, 1.0)

    w_t = weight(ys - tf.cast(top, tf.float32)[:, None, None])
    w_b = weight(tf.cast(bottom, tf.float32)[:, None, None] - ys)
    w_l = weight(xs - tf.cast(left, tf.float32)[:, None, None])
    w_r = weight(tf.cast(right, tf.float32)[:, None, None] - xs)
    total = (
        w_t * above[:, None, :]
        + w_b * below[:, None, :]
        + w_l * beside_l[:, :, None]
        + w_r * beside_r[:, :, None]
    )
    return tf.where(masks > 0, (total / (w_t + w_b + w_l + w_r))[..., None], images)


def fill_noise(shape, max_std: float, seed: draws.Seed = None) -> tf.Tensor:
    """Per image a random std in [0, max_std], per pixel uniform noise of that std.
    Uniform, not Gaussian: the same std at a fraction of the cost on a CPU (Gaussian
    draws were the counterfactuals' most expensive step)."""
    std = draws.uniform(shape[:1], 0.0, max_std, seed=seed)
    half_width = std * 3.0**0.5  # uniform on [-a, a] has std a / sqrt(3)
    unit = draws.uniform(shape, -1.0, 1.0, seed=draws.offset(seed, 1))
    return unit * half_width[:, None, None, None]


def fill_from_surroundings(
    images: tf.Tensor, masks: tf.Tensor, noise_std: tf.Tensor, seed: draws.Seed = None
) -> tf.Tensor:
    """images [B, H, W, 1] with the mask's pixels replaced by the smooth fill plus noise."""
    noise = draws.normal(tf.shape(images), seed=seed) * noise_std[:, None, None, None]
    return _blend(images, smooth_fill(images, masks) + noise, masks)


def _overlaps(a: tf.Tensor, b: tf.Tensor, pad: float = 0.0) -> tf.Tensor:
    """Boxes [..., 4] (broadcast) touch each other, within `pad`. NO_BOX touches nothing."""
    apart = (
        (a[..., 2] < b[..., 0] - pad)
        | (a[..., 0] > b[..., 2] + pad)
        | (a[..., 3] < b[..., 1] - pad)
        | (a[..., 1] > b[..., 3] + pad)
    )
    return ~apart


def transplant_sources(
    holes: tf.Tensor, lesions: tf.Tensor, width: int, height: int, seed: draws.Seed = None, tries: int = 4
):
    """Where each hole's tissue is taken from: the mirror image across the vertical
    midline if that region touches neither the hole nor the lesion, else the first
    of `tries` random shifts that does, inside the central 80 % of the slice.

    holes, lesions [B, 4] (NO_BOX: no lesion). Returns (output→input maps [B, 8] for
    `augment.warp`, found bool [B])."""
    batch = tf.shape(holes)[0]
    mirrored = tf.stack([holes[:, 0], 1.0 - holes[:, 3], holes[:, 2], 1.0 - holes[:, 1]], axis=1)
    shifts = draws.uniform([batch, tries, 2], -0.35, 0.35, seed=seed)
    shifted = holes[:, None, :] + tf.concat([shifts, shifts], axis=-1)
    sources = tf.concat([mirrored[:, None, :], shifted], axis=1)  # [B, 1 + tries, 4]
    inside = tf.reduce_all((sources >= 0.1) & (sources <= 0.9), axis=-1)
    ok = inside & ~_overlaps(sources, lesions[:, None, :], pad=0.02) & ~_overlaps(sources, holes[:, None, :])
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    shift = tf.gather(tf.concat([tf.zeros([batch, 1, 2]), shifts], axis=1), first, batch_dims=1)
    is_mirror = tf.equal(first, 0)
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    # Read input x at (W - 1 - x) for the mirror, (x + dx) for a shift.
    transforms = tf.stack(
        [
            tf.where(is_mirror, -ones, ones),
            zeros,
            tf.where(is_mirror, (width - 1.0) * ones, shift[:, 1] * width),
            zeros,
            ones,
            shift[:, 0] * height,
            zeros,
            zeros,
        ],
        axis=1,
    )
    return transforms, tf.reduce_any(ok, axis=1)


def paste_lesions(
    images: tf.Tensor,
    labels: tf.Tensor,
    boxes: tf.Tensor,
    rate: float,
    margin: float,
    seed: draws.Seed = None,
    invert_share: float = 0.0,
):
    """Notumor images (a share `rate` of them) receive the lesion of a random boxed
    tumour image of the same batch, at the same place, feathered and shifted to the
    recipient's intensity around it, with the donor's class and box. A share
    `invert_share` of the pasted lesions have their contrast against the ring turned
    over (dark where the donor is bright): the boxed tumours are all post-contrast,
    bright; on T1 without contrast a tumour is often darker than its surroundings, and
    the class must follow the mass, not its polarity. Sites that fall on the
    recipient's background are skipped. Returns images, labels, boxes and the bool [B]
    of recipients."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    donors = has_box(boxes) & ~tf.equal(labels, spec.NOTUMOR_ID)
    logits = tf.where(donors, 0.0, -1e9)
    donor = draws.categorical(tf.tile(logits[None], [batch, 1]), 1, seed=seed, dtype=tf.int32)[:, 0]
    donor_boxes = tf.gather(boxes, donor)
    masks = box_masks(donor_boxes, height, width, margin=margin)
    ring = _ring_masks(donor_boxes, masks, margin)
    donor_images = tf.gather(images, donor)
    site = _masked_mean(images, ring)
    recipients = (
        tf.equal(labels, spec.NOTUMOR_ID)
        & tf.reduce_any(donors)
        & (site > 0.08)  # tissue around the site, not background
        & (draws.uniform([batch], seed=draws.offset(seed, 1)) < rate)
    )
    lesion = donor_images - _masked_mean(donor_images, ring)[:, None, None, None]
    inverted = draws.uniform([batch], seed=draws.offset(seed, 2)) < invert_share
    lesion = tf.where(inverted[:, None, None, None], -lesion, lesion)
    fill = tf.clip_by_value(site[:, None, None, None] + lesion, 0.0, 1.0)
    pasted = _blend(images, fill, masks)
    images = tf.where(recipients[:, None, None, None], pasted, images)
    labels = tf.where(recipients, tf.gather(labels, donor), labels)
    boxes = tf.where(recipients[:, None], donor_boxes, boxes)
    return images, labels, boxes, recipients


def _decoy_boxes(boxes: tf.Tensor, seed: draws.Seed, tries: int = 4) -> tf.Tensor:
    """Per image a random box (sides 0.08-0.3, inside the central 70 %) that does
    not touch its lesion box; NO_BOX where none of `tries` candidates fits."""
    batch = tf.shape(boxes)[0]
    size = draws.uniform([batch, tries, 2], 0.08, 0.3, seed=seed)
    lo = draws.uniform([batch, tries, 2], 0.0, 1.0, seed=draws.offset(seed, 1))
    lo = 0.15 + lo * (0.7 - size)
    cand = tf.concat([lo, lo + size], axis=-1)  # [B, T, 4]
    apart = ~_overlaps(cand, boxes[:, None, :], pad=0.02) | ~has_box(boxes)[:, None]
    first = tf.argmax(tf.cast(apart, tf.int32), axis=1, output_type=tf.int32)
    chosen = tf.gather(cand, first, batch_dims=1)
    found = tf.reduce_any(apart, axis=1)
    return tf.where(found[:, None], chosen, tf.constant(spec.NO_BOX, tf.float32)[None])


def _grow(boxes: tf.Tensor, margin: float) -> tf.Tensor:
    return tf.clip_by_value(boxes + tf.constant([-margin, -margin, margin, margin]), 0.0, 1.0)


def _removals(labels, boxes, pasted, cfg: CounterfactualConfig, seeded):
    """(remove_lesion [B] bool, the box each image has cut out [B, 4]: its lesion, a
    decoy, or NO_BOX)."""
    batch = tf.shape(labels)[0]
    boxed = has_box(boxes)
    is_notumor = tf.equal(labels, spec.NOTUMOR_ID)
    draw = draws.uniform([batch], seed=seeded(10))
    remove_lesion = boxed & ~pasted & (draw < cfg.lesion_rate)
    remove_decoy = (
        (boxed | is_notumor) & ~remove_lesion & (draws.uniform([batch], seed=seeded(11)) < cfg.decoy_rate)
    )
    decoys = _decoy_boxes(boxes, seeded(12))
    fill_boxes = tf.where(
        remove_lesion[:, None],
        boxes,
        tf.where(remove_decoy[:, None], decoys, tf.constant(spec.NO_BOX, tf.float32)[None]),
    )
    return remove_lesion, fill_boxes


def _filled(originals, masks, holes, lesion_boxes, cfg: CounterfactualConfig, seeded, height, width):
    """The edited images: each hole filled smooth, by its rim, or by a transplant from
    elsewhere in the same head (where a source region was found; else smooth)."""
    changed = tf.shape(holes)[0]
    # 0 smooth, 1 rim, 2 transplant. Each fill is computed only for its own images.
    choice = draws.uniform([changed], seed=seeded(16))
    kind = tf.zeros([changed], tf.int32)
    if cfg.rim_share > 0:
        kind = tf.where(choice >= 1.0 - cfg.rim_share, 1, kind)
    if cfg.transplant_share > 0:
        transforms, found = transplant_sources(
            _grow(holes, cfg.margin), _grow(lesion_boxes, cfg.margin), width, height, seed=seeded(15)
        )
        kind = tf.where(found & (choice < cfg.transplant_share), 2, kind)

    def transplanted(picked, picked_masks, idx):
        source = warp(picked, tf.gather(transforms, idx))
        # Brought to the intensity of the tissue around the hole.
        ring = _ring_masks(tf.gather(holes, idx), picked_masks, cfg.margin)
        offset = _masked_mean(picked, ring) - _masked_mean(source, picked_masks)
        return source + offset[:, None, None, None]

    def noisy(make):
        def fill_of(picked, picked_masks, idx):
            noise = fill_noise(tf.shape(picked), cfg.max_noise, seed=seeded(13))
            return make(picked, picked_masks) + noise

        return fill_of

    fills = [(0, noisy(smooth_fill))]
    if cfg.rim_share > 0:
        fills.append((1, noisy(rim_fill)))
    if cfg.transplant_share > 0:
        fills.append((2, transplanted))
    fill = originals
    for k, make in fills:
        idx = tf.where(tf.equal(kind, k))[:, 0]
        made = make(tf.gather(originals, idx), tf.gather(masks, idx), idx)
        fill = tf.tensor_scatter_nd_update(fill, idx[:, None], made)
    return _blend(originals, fill, masks)


def counterfactual_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    boxes: tf.Tensor,
    cfg: CounterfactualConfig = CounterfactualConfig(),
    seed: draws.Seed = None,
):
    """(images, labels, boxes) → the same with some lesions pasted, removed or decoys removed.

    Returns boxes with NO_BOX where the lesion was removed (there is nothing left to
    point at), so the lesion-evidence loss skips those images."""

    def seeded(k):
        return draws.offset(seed, k)

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    boxes = tf.cast(tf.reshape(boxes, [-1, 4]), tf.float32)
    pasted = tf.zeros([batch], tf.bool)
    if cfg.paste_rate > 0:
        images, labels, boxes, pasted = paste_lesions(
            images,
            labels,
            boxes,
            cfg.paste_rate,
            cfg.margin,
            seed=seeded(20),
            invert_share=cfg.paste_invert_share,
        )
    remove_lesion, fill_boxes = _removals(labels, boxes, pasted, cfg, seeded)
    # Only the images that change are edited (a third of a batch at the defaults).
    changed = tf.where(has_box(fill_boxes))[:, 0]
    holes = tf.gather(fill_boxes, changed)
    originals = tf.gather(images, changed)
    masks = box_masks(holes, height, width, margin=cfg.margin)
    edited = _filled(originals, masks, holes, tf.gather(boxes, changed), cfg, seeded, height, width)
    images = tf.tensor_scatter_nd_update(images, changed[:, None], edited)
    labels = tf.where(remove_lesion, tf.constant(spec.NOTUMOR_ID, tf.int64), labels)
    boxes = tf.where(remove_lesion[:, None], tf.constant(spec.NO_BOX, tf.float32)[None], boxes)
    return images, labels, boxes
