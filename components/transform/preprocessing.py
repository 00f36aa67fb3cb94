"""The one copy of preprocessing: Transform's `preprocessing_fn`.

Decode whatever data_prep stored (8-bit JPEG or PNG, gray or colour), convert
to one grayscale channel, scale to [0, 1], crop to the head and standardise its
intensity (head_framing.py), resize to IMAGE_SIZE x IMAGE_SIZE.
The Transform graph is attached to the exported model, so serving runs exactly
this code; no client preprocesses anything.

Grayscale: MRI slices carry no colour (the Kaggle JPEGs are RGB copies of gray
images), and one channel cuts the first convolution's work by 3x.
"""

from __future__ import annotations

import tensorflow as tf

from btmri.spec import CHANNELS, IMAGE_SIZE  # noqa: F401  (re-exported for the model code)
from components.transform.decode import decode_gray_resized
from components.transform.head_framing import boxes_into_crop, frame_heads
from btmri import spec
from data_prep.image_io import DEFAULT_MAX_PIXELS

# Whole images are decoded at this size before the head is cut out of them.
DECODE_SIZE = 2 * IMAGE_SIZE
# Images above this many pixels are refused before decoding: the figure `btmri prepare`
# uses (one home: data_prep.image_io).
MAX_PIXELS = DEFAULT_MAX_PIXELS

# Keys of the transformed features (what the Keras model consumes).
IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"
LESION_BOX_XF = "lesion_box_xf"
HEAD_BOX_XF = "head_box_xf"  # the crop, normalised to the whole image (head_framing.py)


def decode_and_resize(
    image_bytes: tf.Tensor, max_pixels: int = MAX_PIXELS, size: int = IMAGE_SIZE
) -> tf.Tensor:
    """Encoded JPEG/PNG strings [N] → float32 [N, size, size, CHANNELS] in [0, 1], whole images.

    Untrusted input is safe here (components/transform/decode.py): only JPEG and PNG,
    the size read from the header and refused above `max_pixels` before decoding
    (InvalidArgumentError "image too large: WxH ..."), large JPEGs decoded downscaled,
    16-bit and alpha PNGs read the way `btmri prepare` reads them.
    """
    return tf.map_fn(
        lambda data: decode_gray_resized(data, size, max_pixels),
        image_bytes,
        fn_output_signature=tf.TensorSpec([size, size, CHANNELS], tf.float32),
    )


def preprocessing_fn(inputs: dict) -> dict:
    """tf.Transform entry point: raw Example features → model features.

    `label` and `lesion_box` (training-only, normalised to the whole image; moved into
    the crop's frame here) are optional so the same graph serves requests.
    """
    image = tf.reshape(inputs[spec.IMAGE_KEY], [-1])  # [N, 1] from the schema → [N]
    framed, crops = frame_heads(decode_and_resize(image, size=DECODE_SIZE), IMAGE_SIZE)
    outputs = {IMAGE_XF: framed, HEAD_BOX_XF: crops}
    if spec.LABEL_KEY in inputs:
        outputs[LABEL_XF] = tf.reshape(inputs[spec.LABEL_KEY], [-1])
    if spec.LESION_BOX_KEY in inputs:
        boxes = tf.reshape(tf.cast(inputs[spec.LESION_BOX_KEY], tf.float32), [-1, 4])
        outputs[LESION_BOX_XF] = boxes_into_crop(boxes, crops)
    return outputs
