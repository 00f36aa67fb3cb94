"""The data contract as data_prep and the TFX module code name it.

The names live in btmri/spec.py (TF-free, one home); this module re-exports the
ones the data side uses, unchanged.
"""

from btmri.spec import (
    CLASS_NAMES,
    CLASS_TO_ID,
    COLLECTION_KEY,
    EVAL_SPLIT,
    GROUP_PREFIX,
    HEIGHT_KEY,
    IMAGE_EXTENSIONS,
    IMAGE_KEY,
    KAGGLE_TESTING_DIR,
    KAGGLE_TRAINING_DIR,
    LABEL_KEY,
    LESION_BOX_KEY,
    NO_BOX,
    NOTUMOR_ID,
    NUM_CLASSES,
    PATIENT_KEY,
    PATIENT_PREFIX,
    SOURCE_KEY,
    SPLIT_UNITS,
    SPLITS,
    TEST_SPLIT,
    TFRECORD_SUFFIX,
    TRAIN_SPLIT,
    UNKNOWN_COLLECTION,
    WIDTH_KEY,
    class_id,
)
