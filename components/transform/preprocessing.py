"""The one copy of preprocessing: Transform's `preprocessing_fn`.

Decode whatever data_prep stored (8-bit JPEG or PNG, gray or colour), convert
to one grayscale channel, resize to IMAGE_SIZE x IMAGE_SIZE, scale to [0, 1].
The Transform graph is attached to the exported model, so serving runs exactly
this code; no client preprocesses anything.

Grayscale: MRI slices carry no colour (the Kaggle JPEGs are RGB copies of gray
images), and one channel cuts the first convolution's work by 3x.
"""
from __future__ import annotations

import tensorflow as tf

from btmri.spec import CHANNELS, IMAGE_SIZE  # noqa: F401  (re-exported for the model code)
from components.transform.decode import decode_gray_resized
from data_prep import contract
from data_prep.image_io import DEFAULT_MAX_PIXELS

# Images above this many pixels are refused before decoding: the figure `btmri prepare`
# uses (one home: data_prep.image_io).
MAX_PIXELS = DEFAULT_MAX_PIXELS

# Keys of the transformed features (what the Keras model consumes).
IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"
LESION_BOX_XF = "lesion_box_xf"


def decode_and_resize(image_bytes: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """Encoded JPEG/PNG strings [N] → float32 [N, IMAGE_SIZE, IMAGE_SIZE, CHANNELS] in [0, 1].

    Untrusted input is safe here (components/transform/decode.py): only JPEG and PNG,
    the size read from the header and refused above `max_pixels` before decoding
    (InvalidArgumentError "image too large: WxH ..."), large JPEGs decoded downscaled,
    16-bit and alpha PNGs read the way `btmri prepare` reads them.
    """
    return tf.map_fn(lambda data: decode_gray_resized(data, IMAGE_SIZE, max_pixels), image_bytes,
                     fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, CHANNELS], tf.float32))


def preprocessing_fn(inputs: dict) -> dict:
    """tf.Transform entry point: raw Example features → model features.

    `label` and `lesion_box` (training-only: normalised coordinates survive the
    whole-image resize unchanged) are optional so the same graph serves requests.
    """
    image = tf.reshape(inputs[contract.IMAGE_KEY], [-1])  # [N, 1] from the schema → [N]
    outputs = {IMAGE_XF: decode_and_resize(image)}
    if contract.LABEL_KEY in inputs:
        outputs[LABEL_XF] = tf.reshape(inputs[contract.LABEL_KEY], [-1])
    if contract.LESION_BOX_KEY in inputs:
        outputs[LESION_BOX_XF] = tf.reshape(inputs[contract.LESION_BOX_KEY], [-1, 4])
    return outputs
