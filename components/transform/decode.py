"""Decoding untrusted image bytes inside the model graph, within a pixel budget.

This code runs in the Transform graph, which is attached to the exported SavedModel:
every image a served model (`btmri serve` or the official TF Serving) receives goes
through it, so it treats its input as hostile.

* **Formats**: JPEG and PNG, recognised by their magic bytes (not by a name). Anything
  else (BMP, GIF, TIFF, DICOM, WebP, text) is refused with INVALID_ARGUMENT naming the
  accepted formats; clients convert other formats first (`btmri predict` and `btmri
  gradcam` do, with data_prep's own code).
* **Pixel budget before decoding**: the size is read from the header only
  (`tf.image.extract_jpeg_shape` for JPEG, the IHDR chunk for PNG) and an image above
  `max_pixels` (default `data_prep.image_io.DEFAULT_MAX_PIXELS`, the figure `btmri
  prepare` uses) is refused with INVALID_ARGUMENT "image too large: WxH ..." before any
  pixel is decoded. A 160-byte JPEG declaring 16384x16384 or a 260 KB PNG of 16384^2
  zeros costs a header read, not 1.3 GB.
* **Large JPEGs are decoded downscaled** in the DCT domain (`ratio` 2, 4 or 8), as
  far as the decoded short side keeps >= 4 pixels per output pixel (>= 896 for 224):
  only JPEGs whose short side is >= 1792 px are affected, and their 224x224 result
  differs from the full decode's by at most 2.4/255 on MRI-like images (mean 0.5/255;
  benchmarks/jpeg_ratio_decode.py). Smaller images, every real MRI slice we have
  among them, give the full decode's output bit for bit.
* **PNGs are read the way `btmri prepare` reads them** (data_prep/image_io.py), so a
  served image gives the same model input as the same file prepared for training:
  - 8-bit gray / RGB: TF's own decoder, unchanged (libpng's RGB->gray; a tRNS
    colour key is ignored, by both);
  - 16-bit: stretched from the image's own min..max to 0..255 (12-bit scans in
    16-bit files would otherwise keep only their high byte, values 0..15);
  - an alpha channel (gray+alpha, RGBA, palette with transparency): composited over
    black, i.e. colour x alpha/255 (transparent background = no signal);
  then to one gray channel with libpng's own integer RGB->gray (0.299/0.587/0.114,
  truncated), exactly what TF's decoder does to the 8-bit PNG prepare would store.
  Chosen over refusing: these PNGs are common exports of medical viewers, and the
  official TF Serving has no client of ours in front of it to convert them.
"""

from __future__ import annotations

import tensorflow as tf

from data_prep.image_io import DEFAULT_MAX_PIXELS, JPEG_MAGIC, PNG_MAGIC

# A JPEG is decoded at 1/r scale (r = 2, 4, 8) when its decoded short side still has at
# least this many pixels per output pixel (4 x 224 = 896): the 224x224 result then
# differs from the full decode's by at most 2.4/255 on MRI-like images, 4.7/255 on
# pure pixel noise (benchmarks/jpeg_ratio_decode.py). At 2 per output pixel it was
# 7/255 and 17/255, at 1 (decoded short side >= 224) 19/255 and 52/255.
JPEG_MIN_DECODED_PER_OUTPUT_PIXEL = 4
_JPEG_RATIOS = (1, 2, 4, 8)

# libpng's RGB->gray coefficients as TF sets them (png_set_rgb_to_gray(0.299, 0.587)),
# in 1/32768: red 9797, green 19234, blue the rest; the sum is truncated (>> 15).
_PNG_GRAY_RED, _PNG_GRAY_GREEN, _PNG_GRAY_BLUE = 9797, 19234, 32768 - 9797 - 19234

UNSUPPORTED_FORMAT = (
    "unsupported image format: the model reads JPEG and PNG (convert BMP, "
    "TIFF, DICOM and other formats to PNG first; btmri predict and btmri "
    "gradcam do)"
)


def _after(check: tf.Operation, value: tf.Tensor) -> tf.Tensor:
    """`value`, available only once `check` has passed: every op fed from the result
    runs after the assertion, so a refused image is never decoded."""
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _check_budget(data: tf.Tensor, width: tf.Tensor, height: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`data` gated on width x height (int64, from the header) being within budget."""
    ok = tf.logical_and(tf.logical_and(width > 0, height > 0), width * height <= max_pixels)
    message = tf.strings.format(
        "image too large: {}x{} pixels, over the budget of {} pixels (refused before decoding)",
        [width, height, tf.constant(max_pixels, tf.int64)],
    )
    return _after(tf.debugging.Assert(ok, [message]), data)


def _resize(gray: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [H, W, 1] -> float32 [size, size, 1] in [0, 1] (the model's input).
    The resize reads uint8 directly (the same values as from a float32 copy, bit for
    bit, without the 4-bytes-per-pixel copy)."""
    pixels = tf.image.resize(gray, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(pixels / 255.0, 0.0, 1.0)


def _jpeg_ratio_index(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Index into _JPEG_RATIOS of the largest ratio keeping the decoded short side
    (libjpeg rounds up) >= JPEG_MIN_DECODED_PER_OUTPUT_PIXEL x size; 0 (full size)
    otherwise."""
    min_side = JPEG_MIN_DECODED_PER_OUTPUT_PIXEL * size
    short = tf.minimum(height, width)
    index = tf.constant(0, tf.int32)
    for i, ratio in enumerate(_JPEG_RATIOS[1:], start=1):
        decoded_short = (short + ratio - 1) // ratio
        index = tf.where(decoded_short >= min_side, tf.constant(i, tf.int32), index)
    return index


def _decode_jpeg(data: tf.Tensor, size: int, max_pixels: int) -> tf.Tensor:
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)  # header only
    height, width = shape[0], shape[1]
    data = _check_budget(data, width, height, max_pixels)
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=1, ratio=r) for r in _JPEG_RATIOS]
    gray = tf.switch_case(_jpeg_ratio_index(height, width, size), branches)
    return _resize(gray, size)


def _padded_head(data: tf.Tensor, n: int) -> tf.Tensor:
    """The first n bytes, zero-padded when the input is shorter (so that the fixed
    offsets below never fail on a short input; its length is checked separately)."""
    return tf.strings.substr(tf.strings.substr(data, 0, n) + tf.constant(b"\0" * n), 0, n)


def _png_gray_from_rgb(rgb: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] -> uint8 [H, W, 1], bit-identical to libpng's rgb_to_gray as TF
    configures it (a pixel whose three channels are equal keeps its value)."""
    r, g, b = tf.unstack(tf.cast(rgb, tf.int32), num=3, axis=-1)
    mixed = (_PNG_GRAY_RED * r + _PNG_GRAY_GREEN * g + _PNG_GRAY_BLUE * b) // 32768
    gray = tf.where(tf.logical_and(tf.equal(r, g), tf.equal(r, b)), r, mixed)
    return tf.cast(gray, tf.uint8)[..., None]


# The 16-bit / alpha PNG conversion runs over strips of about this many pixels, so
# its float32 and int32 temporaries stay small next to the decoded image.
_STRIP_PIXELS = 1 << 20


def _png_native(data: tf.Tensor, deep: tf.Tensor) -> tf.Tensor:
    """16-bit and/or alpha PNG -> uint8 [H, W, 1] as prepare would store and TF then
    read it: colour stretched over its own range (16-bit only), alpha composited over
    black, then libpng's RGB->gray."""
    pixels = tf.io.decode_png(data, channels=0, dtype=tf.uint16)  # 8-bit samples come as v*257
    shape = tf.shape(pixels)
    height, width, channels = shape[0], shape[1], shape[2]
    has_alpha = tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4))
    n_colour = channels - tf.cast(has_alpha, tf.int32)
    # data_prep.image_io._to_uint8's range: min..max over the colour channels (per-channel
    # reductions first: no copy of the image)
    lo = tf.cast(tf.reduce_min(tf.reduce_min(pixels, axis=[0, 1])[:n_colour]), tf.float32)
    hi = tf.cast(tf.reduce_max(tf.reduce_max(pixels, axis=[0, 1])[:n_colour]), tf.float32)
    scale = tf.math.divide_no_nan(255.0, hi - lo)

    def to_gray(strip):  # uint16 [s, W, C] -> uint8 [s, W, 1]
        colour = tf.cast(strip[..., :n_colour], tf.float32)
        colour8 = tf.cond(
            deep,
            lambda: tf.round((colour - lo) * scale),  # stretched, rounded
            lambda: tf.round(colour / 257.0),  # 8-bit: exact
        )

        def if_alpha():  # data_prep's _composite_over_black, in float32
            return tf.round(colour8 * (tf.round(tf.cast(strip[..., n_colour:], tf.float32) / 257.0) / 255.0))

        colour8 = tf.cast(tf.cond(has_alpha, if_alpha, lambda: colour8), tf.uint8)
        return tf.cond(tf.equal(n_colour, 3), lambda: _png_gray_from_rgb(colour8), lambda: colour8[..., :1])

    rows = tf.maximum(1, _STRIP_PIXELS // tf.maximum(width, 1))
    n_strips = (height + rows - 1) // rows
    strips = tf.TensorArray(
        tf.uint8, size=n_strips, infer_shape=False, element_shape=tf.TensorShape([None, None, 1])
    )
    _, strips = tf.while_loop(
        lambda i, _: i < n_strips,
        lambda i, acc: (i + 1, acc.write(i, to_gray(pixels[i * rows : (i + 1) * rows]))),
        (tf.constant(0), strips),
        parallel_iterations=1,
    )
    return strips.concat()


def _decode_png(data: tf.Tensor, size: int, max_pixels: int) -> tf.Tensor:
    head = _padded_head(data, 33)  # signature, IHDR length and type, IHDR fields
    header_ok = tf.logical_and(
        tf.strings.length(data) >= 33, tf.equal(tf.strings.substr(head, 12, 4), b"IHDR")
    )
    data = _after(tf.debugging.Assert(header_ok, ["PNG header is damaged (no IHDR chunk)"]), data)
    # Width and height: big-endian uint32 at bytes 16..23 (read as int32, made unsigned).
    dims = tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.int32, little_endian=False)
    dims = tf.cast(dims, tf.int64) & 0xFFFFFFFF
    width, height = dims[0], dims[1]
    depth_and_type = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 24, 2), tf.uint8), tf.int64)
    depth, color_type = depth_and_type[0], depth_and_type[1]
    data = _check_budget(data, width, height, max_pixels)
    # Plain 8-bit (or less) gray/RGB: TF's decoder as before, bit for bit. Palette
    # images may carry transparency, which only a decode shows: the native path.
    native = tf.logical_or(
        tf.equal(depth, 16), tf.reduce_any(tf.equal(color_type, tf.constant([3, 4, 6], tf.int64)))
    )
    gray = tf.cond(
        native, lambda: _png_native(data, tf.equal(depth, 16)), lambda: tf.io.decode_png(data, channels=1)
    )
    return _resize(gray, size)


def decode_gray_resized(data: tf.Tensor, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """One encoded image (scalar string) -> float32 [size, size, 1] in [0, 1].

    Raises InvalidArgumentError (at run time) for an unsupported format, a damaged
    header, or more than `max_pixels` pixels; none of them is decoded.
    """
    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC)
    data = _after(tf.debugging.Assert(tf.logical_or(is_jpeg, is_png), [UNSUPPORTED_FORMAT]), data)
    return tf.cond(
        is_jpeg, lambda: _decode_jpeg(data, size, max_pixels), lambda: _decode_png(data, size, max_pixels)
    )
