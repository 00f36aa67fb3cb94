"""Names of the exported signatures, their inputs and outputs (DESIGN.md).

TF-free, so clients and the report import them without loading TFX; the Trainer
exports under exactly these names.
"""
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
GRADCAM = "gradcam"

EXAMPLES_INPUT = "examples"          # serving_default: serialized tf.Example
IMAGE_BYTES_INPUT = "image_bytes"    # predict_images, gradcam: encoded JPEG/PNG

PROBABILITIES = "probabilities"
CLASS_ID = "class_id"
CLASS_NAME = "class_name"
HEATMAP = "heatmap"
