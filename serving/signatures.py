"""Names of the exported model's signatures, inputs and outputs, as clients use them.

Input and output names come from the Trainer module that exports them; the
signature keys are the ones `make_signatures` registers.
"""
from components.training.trainer import (CLASS_ID, CLASS_NAME, EXAMPLES_INPUT, HEATMAP,  # noqa: F401
                                         IMAGE_BYTES_INPUT, PROBABILITIES)
from serving import MODEL_NAME  # noqa: F401

DEFAULT_SIGNATURE = "serving_default"   # serialized tf.Example → class
PREDICT_IMAGES_SIGNATURE = "predict_images"
GRADCAM_SIGNATURE = "gradcam"
