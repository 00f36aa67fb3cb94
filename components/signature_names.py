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

# Abstention (components/training/abstention.py): every signature also returns these.
OOD_SCORE = "ood_score"              # float32 [N]: > 1 is out of distribution
ABSTAIN = "abstain"                  # bool [N]
ABSTAIN_REASON = "abstain_reason"    # string [N]: "", REASON_OUT_OF_DISTRIBUTION, REASON_LOW_CONFIDENCE
REASON_OUT_OF_DISTRIBUTION = "out_of_distribution"
REASON_LOW_CONFIDENCE = "low_confidence"
ABSTENTION_OUTPUTS = (OOD_SCORE, ABSTAIN, ABSTAIN_REASON)
ABSTENTION_FILE = "abstention.json"  # beside saved_model.pb: the fitted thresholds
