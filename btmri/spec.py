"""The contract every package shares: one home per name (docs/architecture.md, Contracts).

Imports nothing heavy, so data tools, clients and the CLI's help stay light.
Other modules import these names as they are: no renaming on import.
"""

from __future__ import annotations

# ── Classes ────────────────────────────────────────────────────────────────────────
# Label ids are the positions in this tuple. Never reorder.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
NUM_CLASSES = len(CLASS_NAMES)
CLASS_TO_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
NOTUMOR_ID = 2  # CLASS_NAMES.index("notumor"): the label of a slice with its lesion removed
assert CLASS_NAMES[NOTUMOR_ID] == "notumor"


def class_id(name: str) -> int:
    """Label id of a class folder name (any letter case); ValueError if unknown."""
    key = name.strip().lower()
    if key not in CLASS_TO_ID:
        raise ValueError(f"unknown class folder {name!r}: expected one of {', '.join(CLASS_NAMES)}")
    return CLASS_TO_ID[key]


# ── tf.Example written by data_prep (one Example per image) ────────────────────────
IMAGE_KEY = "image"  # bytes: encoded JPEG/PNG
LABEL_KEY = "label"  # int64: index into CLASS_NAMES
HEIGHT_KEY = "height"  # int64: source image height in pixels
WIDTH_KEY = "width"  # int64: source image width in pixels
SOURCE_KEY = "source"  # bytes: path relative to the data dir
# float [4]: the tumour's box (ymin, xmin, ymax, xmax in [0, 1]) where a box folder
# knows this slice, else NO_BOX. Training-only: it guides what the model looks at.
LESION_BOX_KEY = "lesion_box"
NO_BOX: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)
# bytes: the patient of the image ("patient:<id>" where a box folder's patients.csv
# knows it), else its group ("group:<md5>": the image with its near-duplicate cluster).
# Splits, held-out audits and intervals are drawn over these units, never over images.
PATIENT_KEY = "patient"
PATIENT_PREFIX = "patient:"
GROUP_PREFIX = "group:"
# bytes: the collection an image comes from where it can be told ("figshare" for
# copies of a box folder's slices, "synthetic" for phantoms: data_prep.lesion_boxes.collection_name), else "unknown".
COLLECTION_KEY = "collection"
SPLIT_UNITS = ("patient", "image")  # what `prepare` draws the eval split by; the first is the default
UNKNOWN_COLLECTION = "unknown"
# The collection of the site's reviewed images (`btmri run --feedback`, data_prep/feedback.py):
# TFMA slices them apart from the dataset they join.
FEEDBACK_COLLECTION = "feedback"

# ── Splits (directory names under a prepared-data folder) ─────────────────────────
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
TEST_SPLIT = "test"
SPLITS: tuple[str, ...] = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Top-level folders of the Kaggle layout and the splits they feed.
KAGGLE_TRAINING_DIR = "Training"
KAGGLE_TESTING_DIR = "Testing"

# Extensions data_prep reads (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
TFRECORD_SUFFIX = ".tfrecord"  # uncompressed: JPEG/PNG bytes do not shrink

# ── The model's input ─────────────────────────────────────────────────────────────
IMAGE_SIZE = 224  # square side the Transform graph resizes every image to
CHANNELS = 1  # grayscale: MRI slices carry no colour

# ── Models the Trainer can build (components/training/models.py builds them) ───────
MODEL_NAMES = ("mri_resnet_evidence", "mri_resnet", "seed_cnn", "resnet50", "efficientnetb0")
# The default decides from local evidence maps: on real tumour slices its evidence lies
# in the tumour box (docs/lesion-audit.md); mri_resnet pools the whole map.
DEFAULT_MODEL = "mri_resnet_evidence"
PRETRAINABLE = ("resnet50", "efficientnetb0")  # accept --weights imagenet
# Fully convolutional models of this project: they can train on smaller images during the
# base-rate phase (components/training/trainer.py, docs/training.md). Sides are multiples
# of their total stride, so the evidence head's two grids (side/16, side/32) still align.
SMALL_INPUT_MODELS = ("mri_resnet_evidence", "mri_resnet")
MODEL_STRIDE = 32
BASE_PHASE_SIZE = 128  # the default side of the base-rate phase's images (docs/experiments.md)


def base_phase_size_error(side: int) -> str | None:
    """Why `side` cannot be the base-rate phase's image side, or None."""
    if side % MODEL_STRIDE or not 2 * MODEL_STRIDE <= side <= IMAGE_SIZE:
        return (
            f"the base-phase image size must be a multiple of {MODEL_STRIDE} from {2 * MODEL_STRIDE} "
            f"to {IMAGE_SIZE} ({IMAGE_SIZE}: train at full size throughout), got {side}"
        )
    return None


# ── Exported SavedModel signatures, their inputs and outputs ──────────────────────
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
GRADCAM = "gradcam"

EXAMPLES_INPUT = "examples"  # serving_default: serialized tf.Example
IMAGE_BYTES_INPUT = "image_bytes"  # predict_images, gradcam: encoded JPEG/PNG

PROBABILITIES = "probabilities"
CLASS_ID = "class_id"
CLASS_NAME = "class_name"
HEATMAP = "heatmap"

# Abstention (components/training/abstention.py): every signature also returns these.
OOD_SCORE = "ood_score"  # float32 [N]: > 1 is out of distribution
ABSTAIN = "abstain"  # bool [N]
ABSTAIN_REASON = "abstain_reason"  # string [N]: "" or one of the REASON_* below
REASON_OUT_OF_DISTRIBUTION = "out_of_distribution"
REASON_LOW_CONFIDENCE = "low_confidence"
# A notumor answer below its own, higher floor, or on an image less familiar than its own,
# lower distance bound: calling a tumour healthy is the error that hurts most, so "no
# tumour" needs more confidence and a more familiar image than a tumour class (abstention.py).
REASON_UNCERTAIN_NO_TUMOUR = "uncertain_no_tumour"
ABSTAIN_REASONS: tuple[str, ...] = (
    REASON_OUT_OF_DISTRIBUTION,
    REASON_LOW_CONFIDENCE,
    REASON_UNCERTAIN_NO_TUMOUR,
)
ABSTENTION_OUTPUTS: tuple[str, ...] = (OOD_SCORE, ABSTAIN, ABSTAIN_REASON)

# The model's name in TF Serving (and the folder under the serving root).
MODEL_NAME = "brain_tumor"

# The serving contract the InfraValidator checks on the served metadata: every signature,
# its one input (name, dtype) and the outputs it must have (ABSTENTION_OUTPUTS too when
# the model was exported with abstention).
SIGNATURE_CONTRACT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    SERVING_DEFAULT: (EXAMPLES_INPUT, "DT_STRING", (PROBABILITIES, CLASS_ID, CLASS_NAME)),
    PREDICT_IMAGES: (IMAGE_BYTES_INPUT, "DT_STRING", (PROBABILITIES, CLASS_ID, CLASS_NAME)),
    GRADCAM: (IMAGE_BYTES_INPUT, "DT_STRING", (HEATMAP, CLASS_ID, PROBABILITIES)),
}

# ── Serving warm-up and validation (the InfraValidator, TF Serving's warm-up file) ──
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many warm-up records
# Batch sizes the warm-up file holds one request of, per signature: what clients send
# (one image) and the largest batch server-side batching forms (max_batch_size in
# serving/config/batching.config; a test checks they agree).
WARMUP_BATCH_SIZES: tuple[int, ...] = (1, 16)
VALIDATION_IMAGES = 4  # images of the evaluated split sent per signature and protocol
LATENCY_REQUESTS = 40  # one-image predict_images requests timed per protocol (p50/p99)
VALIDATION_TIMEOUT_SECONDS = 300.0  # the served model must be AVAILABLE within this
ANSWER_TOLERANCE = 1e-4  # served float outputs may differ from in-process ones by this (abs. and rel.)

# ── Evaluation ─────────────────────────────────────────────────────────────────────
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
CONFIDENCE = 0.95  # every interval the project prints is a 95 % interval
# Blessing needs the candidate to answer (not abstain on) at least this share of the
# evaluated split; the Trainer fits its thresholds to answer TrainerConfig.abstention_accept
# (0.90) of eval's new patients (cross-fitted by patient; in sample it answers more:
# components/training/abstention.py). The gate sits below that by the sampling spread of
# a few hundred new images (about 3 points either way), so a model answering what it was
# fitted to answer is not refused by chance on a test split of new patients.
MIN_ACCEPTANCE = 0.85

# ── Request features (monitoring: docs/architecture.md, Monitoring) ────────────────
# Derived from a request's image and the model's answer by one function
# (data_prep/request_features.py): the server's request log records them, the
# pipeline's RequestBaseline computes them over a split, `btmri monitor` compares the two.
FEATURE_IMAGE_WIDTH = "image_width"  # int64: pixels of the image as sent
FEATURE_IMAGE_HEIGHT = "image_height"  # int64
FEATURE_IMAGE_FORMAT = "image_format"  # string: FORMAT_JPEG, FORMAT_PNG or FORMAT_OTHER
FEATURE_INTENSITY_MEAN = "intensity_mean"  # float: mean 8-bit gray level (0..255)
FEATURE_INTENSITY_STD = "intensity_std"  # float: its standard deviation
FEATURE_PREDICTED_CLASS = "predicted_class"  # string: the model's top class (also when abstaining)
FEATURE_TOP_PROBABILITY = "top_probability"  # float: that class's probability
FEATURE_OOD_SCORE = OOD_SCORE  # float: the model's own out-of-distribution score
IMAGE_FEATURES: tuple[str, ...] = (
    FEATURE_IMAGE_WIDTH,
    FEATURE_IMAGE_HEIGHT,
    FEATURE_IMAGE_FORMAT,
    FEATURE_INTENSITY_MEAN,
    FEATURE_INTENSITY_STD,
)
ANSWER_FEATURES: tuple[str, ...] = (FEATURE_PREDICTED_CLASS, FEATURE_TOP_PROBABILITY, FEATURE_OOD_SCORE)
REQUEST_FEATURES: tuple[str, ...] = IMAGE_FEATURES + ANSWER_FEATURES
FORMAT_JPEG, FORMAT_PNG, FORMAT_OTHER = "jpeg", "png", "other"

# What a request log keeps of a request (`btmri serve --log-payload`): nothing but the
# answer, the derived features instead of the image (default), or the whole request.
LOG_PAYLOAD_NONE, LOG_PAYLOAD_FEATURES, LOG_PAYLOAD_IMAGES = "none", "features", "images"
LOG_PAYLOADS: tuple[str, ...] = (LOG_PAYLOAD_NONE, LOG_PAYLOAD_FEATURES, LOG_PAYLOAD_IMAGES)

# The pipeline's monitoring baseline (RequestBaseline) is computed on the split the
# Evaluator scores (test when the data has one, else eval): the one split nothing was
# fitted on. The model's answers (class mix, top probability, ood_score) are flattered
# on train (the weights) and on eval (temperature, abstention thresholds and the OOD
# statistics are fitted there), so a baseline on either would report skew for every
# healthy stream of new images.
# ── Training schedule (components/training/schedule.py) ─────────────────────────
# converge = the base rate until the eval loss stalls, a short anneal, stop;
# cosine = one cosine decay over every epoch asked for.
SCHEDULE_CONVERGE = "converge"
SCHEDULE_COSINE = "cosine"
SCHEDULES: tuple[str, ...] = (SCHEDULE_CONVERGE, SCHEDULE_COSINE)
# Printed by the Trainer when the converge schedule starts its anneal; the run's
# progress line (btmri/console.py) then knows the last epoch.
# Training arithmetic (components/training/compute_dtype.py): auto = bfloat16 where the CPU has it.
COMPUTE_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
SCHEDULE_ANNEAL_LINE = "Training schedule: annealing over epochs {first}-{last}, then stopping ({reason})"
# ── Scale-out (docs/scale.md) ──────────────────────────────────────────────────────
# tf.distribute strategy the Trainer builds its model under (TrainerConfig.distribution):
# none = the default single-device path; mirrored = every local GPU (or every logical
# CPU device when there is no GPU) of one host; multi_worker = the hosts TF_CONFIG names.
DISTRIBUTION_NONE = "none"
DISTRIBUTION_MIRRORED = "mirrored"
DISTRIBUTION_MULTI_WORKER = "multi_worker"
DISTRIBUTIONS: tuple[str, ...] = (DISTRIBUTION_NONE, DISTRIBUTION_MIRRORED, DISTRIBUTION_MULTI_WORKER)
# How a multi-worker input pipeline is split between workers (tf.data auto-shard):
# file = each worker reads its own TFRecord files; data = every worker reads every
# file and keeps its share of the examples (for fewer files than workers).
INPUT_SHARDING_FILE = "file"
INPUT_SHARDING_DATA = "data"
INPUT_SHARDING: tuple[str, ...] = (INPUT_SHARDING_FILE, INPUT_SHARDING_DATA)
# Where `btmri compile` targets: Kubeflow Pipelines v2, or Vertex AI Pipelines with
# the Trainer as a Vertex AI training job and the Pusher to a Vertex AI endpoint.
COMPILE_TARGETS: tuple[str, ...] = ("kubeflow", "vertex")

# ── Run console ────────────────────────────────────────────────────────────────────
# The Trainer logs each of its phases (training, calibration, abstention fitting,
# export) with this format; the local runner turns the lines into console lines and
# the run summary's time table.
TRAINER_PHASE_LOG = "Trainer phase %s done in %.1f s"
# And the kernels it trains with: the console shows them and the run record keeps them,
# since an epoch's time depends on them (oneDNN against Eigen: 1.45x on AVX2).
TRAINER_KERNELS_LOG = "Training compute dtype: %s; oneDNN kernels %s"
# Logged by the Trainer where the image size changes (base-rate phase, then full size);
# the console shows it.
TRAINING_SIZE_LOG = "Training from epoch %d on %dx%d images"
