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

from data_prep import contract

IMAGE_SIZE = 224
CHANNELS = 1

# Keys of the transformed features (what the Keras model consumes).
IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"


def decode_and_resize(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG strings [N] → float32 [N, IMAGE_SIZE, IMAGE_SIZE, CHANNELS] in [0, 1]."""
    def _one(data):
        # channels=1 turns RGB into luma the way TF's decoders do for JPEG and PNG alike.
        pixels = tf.io.decode_image(data, channels=CHANNELS, expand_animations=False)
        pixels = tf.image.resize(tf.cast(pixels, tf.float32), [IMAGE_SIZE, IMAGE_SIZE],
                                 method="bilinear", antialias=True)
        return tf.clip_by_value(pixels / 255.0, 0.0, 1.0)

    return tf.map_fn(_one, image_bytes, fn_output_signature=tf.TensorSpec(
        [IMAGE_SIZE, IMAGE_SIZE, CHANNELS], tf.float32))


def preprocessing_fn(inputs: dict) -> dict:
    """tf.Transform entry point: raw Example features → model features.

    `label` is optional so the same graph serves unlabeled requests.
    """
    image = tf.reshape(inputs[contract.IMAGE_KEY], [-1])  # [N, 1] from the schema → [N]
    outputs = {IMAGE_XF: decode_and_resize(image)}
    if contract.LABEL_KEY in inputs:
        outputs[LABEL_XF] = tf.reshape(inputs[contract.LABEL_KEY], [-1])
    return outputs
