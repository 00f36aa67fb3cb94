"""The data contract: class list, tf.Example feature keys, split names.

This module is the one place that spells the four classes and the feature keys;
every other module (data_prep, components, serving) imports them from here.
It imports no TensorFlow so that data tools and clients stay light.
"""
from __future__ import annotations

# Label ids are the positions in this tuple. Never reorder.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
NUM_CLASSES = len(CLASS_NAMES)
CLASS_TO_ID = {name: i for i, name in enumerate(CLASS_NAMES)}

# tf.Example feature keys written by data_prep (one Example per image).
IMAGE_KEY = "image"      # bytes: encoded JPEG/PNG (see DESIGN.md)
LABEL_KEY = "label"      # int64: index into CLASS_NAMES
HEIGHT_KEY = "height"    # int64: source image height in pixels
WIDTH_KEY = "width"      # int64: source image width in pixels
SOURCE_KEY = "source"    # bytes: path relative to the data dir
# float [4]: the tumour's box (ymin, xmin, ymax, xmax in [0, 1]) where a box folder
# knows this slice, else NO_BOX. Training-only: it guides what the model looks at.
LESION_BOX_KEY = "lesion_box"
NO_BOX: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)
NOTUMOR_ID = 2  # CLASS_NAMES.index("notumor"): the label of a slice with its lesion removed

# Split names of the TFRecord output (directory names under the output folder).
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
TEST_SPLIT = "test"
SPLITS: tuple[str, ...] = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Top-level folders of the Kaggle layout and the splits they feed.
KAGGLE_TRAINING_DIR = "Training"
KAGGLE_TESTING_DIR = "Testing"

# Extensions data_prep reads (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})

MANIFEST_NAME = "manifest.json"
TFRECORD_SUFFIX = ".tfrecord"  # uncompressed: JPEG/PNG bytes do not shrink


assert CLASS_NAMES[NOTUMOR_ID] == "notumor"


def class_id(name: str) -> int:
    """Label id of a class folder name (any letter case); ValueError if unknown."""
    key = name.strip().lower()
    if key not in CLASS_TO_ID:
        raise ValueError(
            f"unknown class folder {name!r}: expected one of {', '.join(CLASS_NAMES)}"
        )
    return CLASS_TO_ID[key]
