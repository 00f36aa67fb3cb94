"""One object holds every path and knob of a pipeline run."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import components
from btmri.documents import TRAINER_DEFAULTS
from btmri.layout import metadata_path
from btmri.spec import MIN_ACCEPTANCE
from components.training.precision import CHOICES as TRAINING_PRECISIONS

COMPONENTS_DIR = Path(components.__file__).resolve().parent
SCHEMA_FILE = COMPONENTS_DIR / "schema" / "schema.pbtxt"
# The derived request features' schema: drift/skew comparators and thresholds (RequestBaseline).
REQUEST_SCHEMA_FILE = COMPONENTS_DIR / "schema" / "request_features.pbtxt"
TRANSFORM_MODULE = COMPONENTS_DIR / "transform" / "preprocessing.py"
TRAINER_MODULE = COMPONENTS_DIR / "training" / "trainer.py"
# Import paths of the same functions, for runners that bake the code into the image.
PREPROCESSING_FN = "components.transform.preprocessing.preprocessing_fn"
RUN_FN = "components.training.trainer.run_fn"

DEFAULT_PIPELINE_NAME = "brain-tumor-mri"  # Kubeflow/Vertex names: [a-z0-9][a-z0-9-]*
DEFAULT_ACCURACY_LOWER_BOUND = 0.80


def local_beam_args() -> list[str]:
    """DirectRunner, one worker process per core (the embedded default)."""
    return ["--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}"]


@dataclass
class PipelineConfig:
    pipeline_root: str                       # artifacts and ML Metadata live here
    data_root: str                           # output of `btmri prepare` (train/ eval/ [test/])
    serving_dir: str                         # TF Serving base path: <serving_dir>/<version>/
    pipeline_name: str = DEFAULT_PIPELINE_NAME
    metadata_path: str | None = None         # sqlite; default <pipeline_root>/metadata.sqlite
    schema_file: str = str(SCHEMA_FILE)
    request_schema_file: str = str(REQUEST_SCHEMA_FILE)
    # Training: the defaults (and what each knob means) are btmri.documents.TrainerConfig's.
    model: str = TRAINER_DEFAULTS.model
    weights: str | None = TRAINER_DEFAULTS.weights
    epochs: int = TRAINER_DEFAULTS.epochs
    batch_size: int = TRAINER_DEFAULTS.batch_size
    learning_rate: float = TRAINER_DEFAULTS.learning_rate
    weight_decay: float = TRAINER_DEFAULTS.weight_decay
    label_smoothing: float = TRAINER_DEFAULTS.label_smoothing
    patience: int = TRAINER_DEFAULTS.patience
    precision: str = TRAINER_DEFAULTS.precision
    augment: bool = TRAINER_DEFAULTS.augment
    seed: int = TRAINER_DEFAULTS.seed
    evidence_weight: float = TRAINER_DEFAULTS.evidence_weight
    lesion_removal_rate: float = TRAINER_DEFAULTS.lesion_removal_rate
    decoy_removal_rate: float = TRAINER_DEFAULTS.decoy_removal_rate
    lesion_paste_rate: float = TRAINER_DEFAULTS.lesion_paste_rate
    box_dir: str | None = None               # tumour boxes: the lesion audit's slices
    audit_min_pointing: float = -1.0         # gate on the audit's pointing game; < 0: off
    audit_min_removed_changed: float = -1.0  # gate on "lesion removed → class changed"; < 0: off
    accuracy_lower_bound: float = DEFAULT_ACCURACY_LOWER_BOUND
    abstention: bool = TRAINER_DEFAULTS.abstention  # fit ood_score/abstain into the exported model
    abstention_accept: float = TRAINER_DEFAULTS.abstention_accept
    abstention_min_acceptance: float = MIN_ACCEPTANCE  # blessing: share of the evaluated split answered; < 0: off
    max_accuracy_regression: float = 0.0     # vs the last blessed model
    beam_pipeline_args: list[str] = field(default_factory=local_beam_args)
    enable_cache: bool = True
    materialize: bool = False                # True: Transform writes transformed examples
    use_module_files: bool = True            # False: reference functions by import path
    test_split: bool | None = None           # evaluate on test/; None: if data_root has one

    def __post_init__(self):
        if self.metadata_path is None:  # "" = no local store (Kubeflow/Vertex bring their own)
            self.metadata_path = metadata_path(self.pipeline_root)
        if self.precision not in TRAINING_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}")
        if not 0.0 <= self.accuracy_lower_bound:
            raise ValueError("accuracy lower bound must be >= 0")
        if not 0.0 < self.abstention_accept <= 1.0:
            raise ValueError("abstention accept share must be in (0, 1]")

    @property
    def min_acceptance(self) -> float | None:
        """The acceptance floor the Evaluator gates on (None: not gated)."""
        if not self.abstention or self.abstention_min_acceptance < 0:
            return None
        return self.abstention_min_acceptance

    @property
    def has_test_split(self) -> bool:
        if self.test_split is not None:
            return self.test_split
        test_dir = Path(self.data_root, "test")
        return test_dir.is_dir() and any(test_dir.iterdir())

    def trainer_config(self) -> dict:
        """The Trainer's custom_config: the TrainerConfig fields this configuration sets
        (calibrate and cache keep the Trainer's defaults, so they are not passed and the
        component's cache key is unchanged)."""
        return {"model": self.model, "weights": self.weights, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "label_smoothing": self.label_smoothing,
                "patience": self.patience, "augment": self.augment, "seed": self.seed,
                "materialized": self.materialize, "precision": self.precision,
                "evidence_weight": self.evidence_weight,
                "lesion_removal_rate": self.lesion_removal_rate,
                "decoy_removal_rate": self.decoy_removal_rate,
                "lesion_paste_rate": self.lesion_paste_rate,
                "abstention": self.abstention, "abstention_accept": self.abstention_accept}
