"""Typed JSON documents passed between packages (docs/architecture.md, Contracts).

Each document is a dataclass with `to_json`/`from_json` (and `read`/`write` for the
file it lives in). Their field defaults are the project's defaults: the CLI, the
pipeline configuration and the Trainer read them from here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from btmri import layout, spec

D = TypeVar("D", bound="_Document")


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to `path` through a temporary file in the same folder and a rename,
    so a reader (a server polling the folder, a concurrent report) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from a server's user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Document:
    """to_dict/from_dict (unknown keys ignored, missing keys take the defaults) + JSON."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[D], data: dict) -> D:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls: type[D], text: str) -> D:
        return cls.from_dict(json.loads(text))


# ── Data: the manifest `btmri prepare` writes beside the TFRecords ────────────────
@dataclass
class ExactDuplicates(_Document):
    """Byte-identical images (same MD5)."""

    groups: int = 0
    extra_copies: int = 0
    extra_copies_within_split: dict = field(default_factory=dict)  # split → copies beyond the first
    images_with_copy_in_other_split: dict = field(default_factory=dict)  # "eval-train" → images
    conflicting_labels: list = field(default_factory=list)  # groups: [[source, label], ...]
    groups_listed: list = field(default_factory=list)  # the first groups' sources

    @property
    def across_splits(self) -> int:
        return sum(self.images_with_copy_in_other_split.values())


@dataclass
class NearDuplicates(_Document):
    """Pairs within the perceptual-hash threshold that are not byte-identical."""

    pairs: int = 0
    pairs_within_split: dict = field(default_factory=dict)  # split → pairs
    pairs_across_splits: dict = field(default_factory=dict)  # "eval-train" → pairs
    pairs_listed: list = field(default_factory=list)

    @property
    def across_splits(self) -> int:
        return sum(self.pairs_across_splits.values())


@dataclass
class DuplicateReport(_Document):
    """What data_prep.duplicates found while preparing (the manifest's `duplicates`)."""

    near_threshold_bits: int = 0
    exact: ExactDuplicates = field(default_factory=ExactDuplicates)
    near: NearDuplicates = field(default_factory=NearDuplicates)

    @classmethod
    def from_dict(cls, data: dict) -> DuplicateReport:
        return cls(
            near_threshold_bits=int(data.get("near_threshold_bits", 0)),
            exact=ExactDuplicates.from_dict(data.get("exact") or {}),
            near=NearDuplicates.from_dict(data.get("near") or {}),
        )


@dataclass
class Manifest(_Document):
    """What a prepared-data folder holds and how it was made (manifest.json)."""

    data_dir: str = ""
    input_fingerprint: str = ""
    arguments: dict = field(default_factory=dict)  # PrepareOptions, without progress
    classes: list = field(default_factory=lambda: list(spec.CLASS_NAMES))
    counts: dict = field(default_factory=dict)  # split → class → images written
    total_written: int = 0
    reencoded_to_png: int = 0
    shards: dict = field(default_factory=dict)  # split → shard file names
    skipped: list = field(default_factory=list)  # {"source", "reason"}
    dropped_cross_split_duplicates: list = field(default_factory=list)
    duplicates: DuplicateReport | None = None
    lesion_boxes: dict | None = None  # data_prep.lesion_boxes report
    # What the eval split was drawn by ("patient": whole patients / near-duplicate
    # groups; "image": by file) and, per split, how many images from how many units.
    split_unit: str = "image"
    units: dict = field(default_factory=dict)  # split → {"images", "units", "patients", "groups"}
    held_out_collection: dict | None = None  # leave one source out: collection, dir, images, units
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        manifest = super().from_dict(data)
        if isinstance(manifest.duplicates, dict):
            manifest.duplicates = DuplicateReport.from_dict(manifest.duplicates)
        return manifest

    @property
    def splits(self) -> list[str]:
        return [s for s in spec.SPLITS if s in self.counts]

    def write(self, folder: str | os.PathLike) -> Path:
        return write_atomic(Path(folder) / layout.MANIFEST_FILE, self.to_json(indent=2))

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Manifest:
        return cls.from_json((Path(folder) / layout.MANIFEST_FILE).read_text())

    @classmethod
    def read_if_present(cls, folder: str | os.PathLike) -> Manifest | None:
        path = Path(folder) / layout.MANIFEST_FILE
        return cls.from_json(path.read_text()) if path.is_file() else None


# ── Training: the Trainer's configuration and what it writes back ──────────────────
@dataclass(kw_only=True)
class TrainingSettings:
    """What a run chooses about training: the fields the pipeline's configuration
    (pipeline/config.py) and the Trainer's custom_config share, with the project's
    training defaults. Keyword-only, so a subclass may lead with required fields."""

    model: str = spec.DEFAULT_MODEL
    weights: str | None = None  # 'imagenet' for resnet50/efficientnetb0 (internet)
    # At most: the `converge` schedule stops once the eval loss has been flat for
    # `patience` epochs and a short anneal has run (components/training/schedule.py).
    epochs: int = 80
    schedule: str = spec.SCHEDULE_CONVERGE  # converge | cosine (spec.SCHEDULES)
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.05  # AdamW, decoupled; 0: plain Adam
    label_smoothing: float = 0.1
    # Epochs without a 2 % better (median-of-3) eval loss before the anneal starts.
    # Replayed on the 80-epoch cosine runs' eval losses it fires at epoch 19 on the
    # phantoms and 30 on the real set (docs/experiments.md, training cost).
    patience: int = 8
    augment: bool = True
    # Acquisition-style augmentation (components/training/augment.py AcquisitionConfig,
    # docs/augmentation.md): bias field, resolution, noise, intensity curves, JPEG, more
    # zoom-out, for every class alike, so a collection's look stops predicting the class
    # (issue 22). strength in [0, 1] scales every magnitude; 0 or off: none. Off by
    # default: with lesion pasting, it lowered accuracy on a held-out source from 0.81
    # to 0.76 (leave one source out, docs/experiments.md).
    acquisition_augment: bool = False
    acquisition_strength: float = 0.5
    seed: int = 0
    compute_dtype: str = "auto"  # float32 | bfloat16 | auto (bf16 if the CPU has it)
    # Lesion guidance, for training images with a known tumour box.
    evidence_weight: float = 1.0  # weight of the lesion-evidence loss; 0: off
    # Half each: on real data, lesion removed -> answer changes 0.69 at 0.25 / 0.25,
    # 0.79 at 0.5 / 0.5, 0.81 with the rim fill added (components/training/counterfactual.py;
    # decoys keep the fill itself uninformative; docs/lesion-audit.md).
    lesion_removal_rate: float = 0.5  # boxed tumour images shown with the lesion removed
    decoy_removal_rate: float = 0.5  # images shown with a lesion-free box removed
    # notumor images shown with a batch-mate's lesion, as its class (a third of them with
    # the lesion's contrast turned over), meant to take away the sequence cue of the
    # Kaggle merge (its tumour images are all T1 post-contrast). Off: with acquisition-
    # style augmentation it made tumours of a held-out source called notumor more often
    # (0.098 -> 0.128; docs/experiments.md, leave one source out).
    lesion_paste_rate: float = 0.0
    # Abstention (components/training/abstention.py), fitted on the eval split after
    # calibration: ood_score, abstain and abstain_reason in every exported signature.
    abstention: bool = True
    abstention_accept: float = 0.95  # share of eval images the fitted thresholds answer
    # Scale-out (docs/scale.md). batch_size is the global batch: replicas
    # split it, gradients are averaged over all of it, so learning_rate keeps its
    # meaning and is not rescaled; a larger global batch is chosen with batch_size
    # (and, by the linear rule, learning_rate scaled by the same factor) by hand.
    distribution: str = spec.DISTRIBUTION_NONE  # none | mirrored | multi_worker
    input_sharding: str = spec.INPUT_SHARDING_FILE  # multi_worker: file | data (spec.INPUT_SHARDING)


TRAINING_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


@dataclass(kw_only=True)
class TrainerConfig(TrainingSettings, _Document):
    """The Trainer's custom_config: a run's TrainingSettings plus what only the Trainer
    reads; the defaults are the project's training defaults."""

    materialized: bool = False  # examples are Transform's output, not raw Examples
    calibrate: bool = True  # temperature scaling fitted on the eval split
    cache: bool = True  # keep decoded images in memory across epochs
    abstention_ood_share: float = 0.6  # of the rejection budget (1 - accept) spent on the distance
    # A notumor answer needs P(notumor) at least the floor that refuses this share of the
    # eval split's right notumor answers (0: no separate floor). Replayed on a model that
    # never saw a held-out collection's tumours, 0.02 cut its tumours answered notumor
    # from 0.099 to 0.014 (docs/experiments.md).
    abstention_notumor_refuse: float = 0.02
    abstention_outliers_per_kind: int = 24  # generated outliers per kind (outliers.py)


TRAINER_DEFAULTS = TrainerConfig()


# ── Cloud: `btmri compile --target vertex` ────────────────────────────────────────
@dataclass
class VertexOptions(_Document):
    """The Vertex AI training job (TFX's Vertex Trainer extension) and, with an endpoint
    name, the push to a Vertex AI endpoint (TFX's Vertex Pusher: upload to the Model
    Registry, then deploy). Compiled into the spec; nothing is contacted at compile time."""

    project: str = ""  # GCP project of the training job and the endpoint (required)
    image: str = ""  # the project's container image every training replica runs (compile --image)
    region: str = "us-central1"
    machine_type: str = "n1-standard-8"  # every training replica
    accelerator_type: str | None = None  # e.g. NVIDIA_TESLA_T4; None: CPU only
    accelerator_count: int = 0  # per replica
    replicas: int = 1  # training machines: 1 chief + (replicas - 1) workers
    endpoint_name: str | None = None  # None: the project's filesystem Pusher (--serving-dir)
    serving_image: str | None = None  # Vertex prebuilt TF prediction image; required with an endpoint
    serving_machine_type: str = "n1-standard-4"

    def check(self, distribution: str) -> None:
        if not self.project:
            raise ValueError("--vertex-project is required for --target vertex")
        if self.replicas < 1 or self.accelerator_count < 0:
            raise ValueError(
                "--vertex-replicas must be at least 1 and --vertex-accelerator-count not negative"
            )
        if self.replicas > 1 and distribution != spec.DISTRIBUTION_MULTI_WORKER:
            raise ValueError(
                f"{self.replicas} training replicas need --distribution "
                f"{spec.DISTRIBUTION_MULTI_WORKER} (got {distribution})"
            )
        if distribution == spec.DISTRIBUTION_MULTI_WORKER and self.replicas < 2:
            raise ValueError("--distribution multi_worker on Vertex needs --vertex-replicas 2 or more")
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ValueError("give --vertex-accelerator-type and --vertex-accelerator-count together")
        if self.endpoint_name and not self.serving_image:
            raise ValueError(
                "--vertex-endpoint needs --vertex-serving-image (a Vertex AI prebuilt "
                "TensorFlow prediction image matching TF 2.16)"
            )


VERTEX_DEFAULTS = VertexOptions()


@dataclass
class TrainingHistory(_Document):
    """history.json in the Trainer's model_run folder."""

    config: dict = field(default_factory=dict)
    compute_dtype_policy: str | None = None  # the Keras policy the Trainer used
    history: dict = field(default_factory=dict)  # Keras metric name → one value per epoch
    distribution: dict | None = None  # with a strategy: its name, replicas_in_sync, the task

    @property
    def epochs_run(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    @classmethod
    def read_if_present(cls, folder: str | None) -> TrainingHistory | None:
        if not folder:
            return None
        path = Path(folder) / layout.HISTORY_FILE
        return cls.from_json(path.read_text()) if path.is_file() else None


# ── Serving validation: what the InfraValidator found (infra_validation.json) ──────
@dataclass
class InfraValidation(_Document):
    """The result of serving the candidate with `btmri serve` before the push, in the
    InfraBlessing artifact (layout.INFRA_VALIDATION_FILE); the report and card show it."""

    blessed: bool = False
    validated: bool = False  # False: not tried (the model was not blessed)
    reason: str = ""  # why not blessed; "" when blessed
    checks: list = field(default_factory=list)  # {"name", "passed", "detail"} in the order run
    signatures: list = field(default_factory=list)  # served signature keys
    images: int = 0  # evaluated-split images per signature and protocol
    warmup_records: int = 0  # PredictionLogs written to the warm-up file
    warmup_replayed: int = 0  # as the server's log reports them
    startup_seconds: float = 0.0  # server start until the version was AVAILABLE (warm-up included)
    latency_requests: int = 0  # one-image predict_images requests timed per protocol
    grpc_p50_ms: float | None = None
    grpc_p99_ms: float | None = None
    rest_p50_ms: float | None = None
    rest_p99_ms: float | None = None
    seconds: float = 0.0  # the whole validation

    def write(self, folder: str | os.PathLike) -> Path:
        return write_atomic(Path(folder) / layout.INFRA_VALIDATION_FILE, self.to_json())

    @classmethod
    def read_if_present(cls, folder: str | None) -> InfraValidation | None:
        path = Path(folder or "", layout.INFRA_VALIDATION_FILE)
        return cls.from_json(path.read_text()) if folder and path.is_file() else None


# ── Serving: the local model server's options ──────────────────────────────────────
GRPC_PORT = 8500
REST_PORT = 8501
DEFAULT_HOST = "127.0.0.1"
MAX_MESSAGE_MB = 64.0
MAX_RESPONSE_MB = 16.0
MAX_ROWS = 64
REQUEST_TIMEOUT_SECONDS = 30.0
DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"


@dataclass
class ServerOptions(_Document):
    """Everything `btmri serve` / `python -m serving` can be told."""

    model_base_path: str = ""
    model_name: str = spec.MODEL_NAME
    # TF Serving's ModelServerConfig text file: several models, version policies and
    # labels (serving/model_config.py); instead of model_base_path/model_name.
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0  # > 0: reread the config file this often
    allow_version_labels_for_unavailable_models: bool = False
    host: str = DEFAULT_HOST
    port: int = GRPC_PORT
    rest_port: int = REST_PORT  # 0: no REST listener
    poll_seconds: float = 1.0
    enable_batching: bool = False
    batching_parameters_file: str | None = None  # None: serving/config/batching.config
    max_message_mb: float = MAX_MESSAGE_MB
    grpc_workers: int = 16  # worker threads, shared by gRPC and REST
    monitoring_path: str | None = DEFAULT_MONITORING_PATH
    max_rows: int = MAX_ROWS
    max_response_mb: float = MAX_RESPONSE_MB
    max_json_values: int = 1_000_000
    client_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
    max_connections: int = 256  # REST connections; gRPC calls in progress
    max_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    canary: bool = True
    # Request logging (serving/request_log.py): off unless request_log_dir is set.
    request_log_dir: str | None = None
    log_sampling_rate: float = 1.0  # share of successful Predict calls logged
    log_payload: str = spec.LOG_PAYLOAD_FEATURES  # spec.LOG_PAYLOADS
    log_max_mb: float = 256.0  # the folder's budget: oldest files are deleted beyond it
    log_file_mb: float = 16.0  # a file is closed at this size (or a quarter of the budget)
    log_rotate_seconds: float = 60.0  # ... or this long after its first record
    log_queue_records: int = 1024  # records waiting for the writer; more are dropped
    log_queue_mb: float = 64.0  # bytes they may hold (images, with --log-payload features/images)

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1024 * 1024)

    def check(self) -> None:
        if bool(self.model_base_path) == bool(self.model_config_file):
            raise ValueError("give either --model-base-path or --model-config-file")
        for name in ("max_rows", "max_connections", "grpc_workers", "max_json_values"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_message_mb", "max_response_mb", "client_timeout_seconds", "poll_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.max_load_retries < 0 or self.load_retry_interval_seconds < 0:
            raise ValueError("--max-load-retries and --load-retry-interval-seconds must not be negative")
        if self.request_log_dir is not None:
            if not 0.0 < self.log_sampling_rate <= 1.0:
                raise ValueError("--log-sampling-rate must be in (0, 1]")
            if self.log_payload not in spec.LOG_PAYLOADS:
                raise ValueError(f"--log-payload must be one of {', '.join(spec.LOG_PAYLOADS)}")
            for name in ("log_max_mb", "log_file_mb", "log_rotate_seconds", "log_queue_mb"):
                if not getattr(self, name) > 0:
                    raise ValueError(f"--{name.replace('_', '-')} must be positive")
            if self.log_queue_records < 1:
                raise ValueError("--log-queue-records must be at least 1")


SERVER_DEFAULTS = ServerOptions()


def json_default(value: Any):
    """json.dumps default= for NumPy scalars and paths in documents."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
