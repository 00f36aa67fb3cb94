"""Names of the exported model's signatures, inputs and outputs, as clients use them.

All names come from components/signature_names.py, which the Trainer exports
under (TF-free, so clients start fast).
"""
from components.signature_names import (ABSTAIN, ABSTAIN_REASON, ABSTENTION_OUTPUTS,  # noqa: F401
                                        CLASS_ID, CLASS_NAME, EXAMPLES_INPUT, HEATMAP,
                                        IMAGE_BYTES_INPUT, OOD_SCORE, PROBABILITIES,
                                        REASON_LOW_CONFIDENCE, REASON_OUT_OF_DISTRIBUTION)
from components.signature_names import GRADCAM as GRADCAM_SIGNATURE  # noqa: F401
from components.signature_names import PREDICT_IMAGES as PREDICT_IMAGES_SIGNATURE  # noqa: F401
from components.signature_names import SERVING_DEFAULT as DEFAULT_SIGNATURE  # noqa: F401
from serving import MODEL_NAME  # noqa: F401
