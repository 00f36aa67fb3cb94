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
    # Reviewed images from the site (data_prep/feedback.py): counts, units, the reviews
    # behind them and the model versions that answered; None without --feedback.
    feedback: dict | None = None
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
def option(
    default,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
):
    """A dataclass field that is also a command-line flag: its help, flag name (default:
    the field's name with dashes; a bool that defaults to True becomes --no-NAME),
    choices and metavar live here, beside the default, and btmri.cli_conventions
    .add_options turns them into argparse arguments. `cli=False`: a setting without a flag."""
    metadata = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "metavar": metavar,
        "aliases": aliases,
        "cli": cli,
    }
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class TrainingSettings:
    """What a run chooses about training: the fields the pipeline's configuration
    (pipeline/config.py) and the Trainer's custom_config share, with the project's
    training defaults and their flags (`btmri run` and `btmri compile`). Keyword-only,
    so a subclass may lead with required fields."""

    model: str = option(spec.DEFAULT_MODEL, "the network architecture to train", choices=spec.MODEL_NAMES)
    weights: str | None = option(
        None, "'imagenet' for resnet50/efficientnetb0 (downloads the weights; needs internet)"
    )
    epochs: int = option(
        50,
        "at most this many epochs: the converge schedule stops earlier (components/training/schedule.py); "
        "the limit keeps the real-data run within its time budget",
    )
    schedule: str = option(
        spec.SCHEDULE_CONVERGE,
        "converge: the base learning rate until the eval loss is flat for PATIENCE epochs, then a "
        "cosine anneal over half as many epochs again, then stop (never beyond --epochs); "
        "cosine: one decay over all --epochs",
        choices=spec.SCHEDULES,
    )
    batch_size: int = option(32, "the global batch (replicas split it under a distribution)")
    learning_rate: float = option(1e-3, "the base rate of the schedule (not rescaled with the batch)")
    weight_decay: float = option(0.05, "AdamW decoupled weight decay (0: plain Adam)")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy")
    patience: int = option(
        8, "converge schedule: epochs without a 2%% lower eval loss (median of 3) before the anneal"
    )
    base_phase_size: int = option(
        spec.BASE_PHASE_SIZE,
        "side in pixels the training images are shrunk to while the learning rate is at its base "
        "(and in the anneal's first part with --full-size-share below 1); the anneal, calibration "
        f"and export run at {spec.IMAGE_SIZE}, which turns it off. Models with a fixed-size head "
        "(seed_cnn, resnet50, efficientnetb0) always train at full size",
        metavar="PX",
    )
    # 1 by default: the phantoms lost a point of test accuracy with less (docs/experiments.md).
    full_size_share: float = option(
        1.0,
        "with a smaller --base-phase-size: the last SHARE of the anneal (of the last third of "
        "the epochs under --schedule cosine) trains on full-size images, where the model settles "
        "at the size it serves at; 1: the whole anneal",
        metavar="SHARE",
    )
    augment: bool = option(True, "geometric augmentation of training images", cli=False)
    # Off by default: docs/experiments.md (leave one source out).
    acquisition_augment: bool = option(
        False,
        "train with the acquisition-style augmentation (bias field, resolution, noise, intensity "
        "curves, JPEG; docs/augmentation.md)",
    )
    acquisition_strength: float = option(
        0.5, "with --acquisition-augment: every magnitude scaled by S in [0, 1] (0: off)", metavar="S"
    )
    # Off by default: docs/experiments.md (the sequence look).
    sequence_remap: float = option(
        0.0,
        "share of training images shown with a random, possibly inverted tissue-contrast curve "
        "(another sequence's look; docs/augmentation.md); 0: off",
        metavar="SHARE",
    )
    seed: int = option(0, "the training seed", cli=False)
    deterministic: bool = option(
        True,
        "repeatable training: TensorFlow's deterministic kernels and input order, so the same seed "
        "and examples in the same order give the same weights on one machine (a whole run: with "
        "the default in-process Beam runner); --no-deterministic: TensorFlow's fastest kernels, "
        "whatever their order (docs/training.md)",
    )
    compute_dtype: str = option(
        "auto",
        "training arithmetic; auto: bfloat16 where the CPU has it (AVX512-BF16/AMX), else float32. "
        "Exported models are float32 (--precision is the old name)",
        choices=spec.COMPUTE_DTYPES,
        aliases=("--precision",),
    )
    # Lesion guidance, for training images with a known tumour box (docs/lesion-audit.md).
    evidence_weight: float = option(
        1.0, "weight of the loss that keeps the class evidence inside known tumour boxes (0: off)"
    )
    lesion_removal_rate: float = option(
        0.5, "share of boxed tumour training images shown with the lesion removed, labelled notumor"
    )
    decoy_removal_rate: float = option(
        0.5, "share of training images shown with a lesion-free box removed, label kept"
    )
    # Off by default: docs/experiments.md (leave one source out).
    lesion_paste_rate: float = option(
        0.0,
        "share of notumor training images shown with the lesion of a boxed tumour image pasted "
        "in, labelled with its class",
    )
    # Abstention (components/training/abstention.py), fitted on the eval split after
    # calibration: ood_score, abstain and abstain_reason in every exported signature.
    abstention: bool = option(
        True,
        "export with ood_score/abstain/abstain_reason (--no-abstention: without, and no acceptance gate)",
    )
    abstention_accept: float = option(
        0.90,
        "the abstention thresholds are fitted to answer SHARE of the eval split's images, "
        "cross-fitted by patient (the estimate for new patients)",
        metavar="SHARE",
    )
    distribution: str = option(
        spec.DISTRIBUTION_NONE,
        "tf.distribute strategy of the Trainer: none; mirrored (all local GPUs of one host); "
        "multi_worker (the hosts TF_CONFIG names). --batch-size is the global batch",
        choices=spec.DISTRIBUTIONS,
    )
    input_sharding: str = option(
        spec.INPUT_SHARDING_FILE,
        "multi_worker: workers split the training TFRecords by file (needs at least one file per "
        "worker) or by example",
        choices=spec.INPUT_SHARDING,
    )


TRAINING_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


@dataclass(kw_only=True)
class TrainerConfig(TrainingSettings, _Document):
    """The Trainer's custom_config: a run's TrainingSettings plus what only the Trainer
    reads; the defaults are the project's training defaults."""

    materialized: bool = False  # examples are Transform's output, not raw Examples
    calibrate: bool = True  # temperature scaling fitted on the eval split
    cache: bool = True  # keep decoded images in memory across epochs
    # Of the rejection budget (1 - accept) spent on the distance rules; the rest on the
    # probability floors (why 0.8: docs/experiments.md, 2026-12-07 night).
    abstention_ood_share: float = 0.8
    # A notumor answer needs P(notumor) at least the floor that refuses this share of the
    # eval split's right notumor answers (0: no separate floor; why 0.02: docs/experiments.md).
    abstention_notumor_refuse: float = 0.02
    # And an ood_score at most the bound that refuses this share of them, cross-fitted: on
    # another site's tumour slices the wrong notumor answers sit just under the distance
    # threshold (0: no bound). Cross-fitted by patient, 0.1 asked for a bound beyond the
    # threshold, that is none; 0.2 to 0.5 gave the same bound (docs/experiments.md).
    abstention_notumor_ood_refuse: float = 0.3
    abstention_outliers_per_kind: int = 24  # generated outliers per kind (outliers.py)


TRAINER_DEFAULTS = TrainerConfig()


TFX_PLATFORM_KEY_PREFIX = "ai_platform_"


def parse_trainer_config(custom_config: dict | None) -> TrainerConfig:
    """The Trainer's custom_config (JSON through TFX) as a TrainerConfig: None values
    take the defaults, each value is cast to its field's type, and an unknown key is
    an error (a misspelt setting must not be ignored). TFX's own platform keys (the
    Vertex Trainer's ai_platform_*) are not settings of this Trainer and are skipped."""
    custom = {
        k: v
        for k, v in (custom_config or {}).items()
        if v is not None and not k.startswith(TFX_PLATFORM_KEY_PREFIX)
    }
    fields = {f.name: f for f in dataclasses.fields(TrainerConfig)}
    unknown = sorted(set(custom) - set(fields))
    if unknown:
        raise ValueError(f"unknown Trainer settings: {', '.join(unknown)}")
    typed = {}
    for name, value in custom.items():
        default = getattr(TRAINER_DEFAULTS, name)
        kind = type(default) if default is not None else None
        typed[name] = kind(value) if kind in (bool, int, float, str) else value
    return TrainerConfig(**typed)


# ── Cloud: `btmri compile --target vertex` ────────────────────────────────────────
@dataclass
class VertexOptions(_Document):
    """The Vertex AI training job (TFX's Vertex Trainer extension) and, with an endpoint
    name, the push to a Vertex AI endpoint (TFX's Vertex Pusher: upload to the Model
    Registry, then deploy). Compiled into the spec; nothing is contacted at compile time."""

    project: str = option("", "--target vertex: GCP project (required)", flag="vertex_project")
    image: str = option("", "the project's container image every training replica runs", cli=False)
    region: str = option("us-central1", "Vertex AI region", flag="vertex_region")
    machine_type: str = option("n1-standard-8", "every training replica", flag="vertex_machine_type")
    accelerator_type: str | None = option(
        None, "e.g. NVIDIA_TESLA_T4 (default: none, CPU only)", flag="vertex_accelerator_type"
    )
    accelerator_count: int = option(0, "accelerators per replica", flag="vertex_accelerator_count")
    replicas: int = option(
        1,
        "training machines: one chief + N-1 workers (N > 1 needs --distribution multi_worker)",
        flag="vertex_replicas",
    )
    endpoint_name: str | None = option(
        None,
        "push the blessed model to this Vertex AI endpoint (Model Registry upload + deploy) "
        "instead of --serving-dir",
        flag="vertex_endpoint",
        metavar="NAME",
    )
    serving_image: str | None = option(
        None,
        "with --vertex-endpoint: a Vertex AI prebuilt TensorFlow prediction image",
        flag="vertex_serving_image",
    )
    serving_machine_type: str = option(
        "n1-standard-4", "with --vertex-endpoint: the serving machine", flag="vertex_serving_machine_type"
    )

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

    model_base_path: str = option(
        "",
        "TF Serving base path (<dir>/<version>/saved_model.pb); or --model-config-file; default: "
        "the work folder's pushed model, WORK_DIR/serving/brain_tumor",
    )
    model_name: str = option(spec.MODEL_NAME, "served model name")
    model_config_file: str | None = option(
        None,
        "TF Serving ModelServerConfig text file: several models, version policies (latest N, all, "
        "specific) and version labels (e.g. serving/config/canary.config); instead of "
        "--model-base-path/--model-name",
        metavar="FILE",
    )
    model_config_file_poll_wait_seconds: float = option(
        0.0,
        "reread --model-config-file this often and apply changes (models, policies, labels); 0: read once",
    )
    allow_version_labels_for_unavailable_models: bool = option(
        False,
        "a label not assigned yet may point at a version that is not loaded (TF Serving's flag of that name)",
    )
    host: str = option(DEFAULT_HOST, "address to bind (0.0.0.0 exposes the server)")
    port: int = option(GRPC_PORT, "gRPC port")
    rest_port: int = option(REST_PORT, "REST and metrics port, 0 for none")
    poll_seconds: float = option(1.0, "how often to look for new versions")
    enable_batching: bool = option(
        False, "merge concurrent requests into batches (serving/config/batching.config)"
    )
    batching_parameters_file: str | None = option(
        None, "TF Serving batching parameters file (default: serving/config/batching.config)"
    )
    max_message_mb: float = option(
        MAX_MESSAGE_MB, "largest request in MiB; larger ones get RESOURCE_EXHAUSTED"
    )
    grpc_workers: int = option(16, "threads that run requests, gRPC and REST")
    monitoring_path: str | None = option(DEFAULT_MONITORING_PATH, "Prometheus metrics path", cli=False)
    max_rows: int = option(MAX_ROWS, "most rows (images) per request; more get INVALID_ARGUMENT / HTTP 400")
    max_response_mb: float = option(
        MAX_RESPONSE_MB,
        "largest response in MiB (JSON for REST); larger ones get RESOURCE_EXHAUSTED / HTTP 429",
    )
    max_json_values: int = option(
        1_000_000, "most values in one REST body, counted before parsing; more get HTTP 400"
    )
    client_timeout_seconds: float = option(
        REQUEST_TIMEOUT_SECONDS,
        "a client must send its request (REST head, then body; gRPC message) and take its response "
        "within this; idle REST connections close after it",
    )
    max_connections: int = option(
        256, "open REST connections and gRPC calls in progress, each; more are refused"
    )
    max_load_retries: int = option(
        5,
        "tries again for a version that failed to load while its files stay unchanged (changed "
        "files always get a new try)",
    )
    load_retry_interval_seconds: float = option(60.0, "wait between those tries")
    canary: bool = option(True, "serve version labels (the canary workflow)", cli=False)
    # Request logging (serving/request_log.py): off unless request_log_dir is set.
    request_log_dir: str | None = option(
        None,
        "log sampled successful Predict calls into DIR (default: no logging)",
        flag="request_log",
        metavar="DIR",
    )
    log_sampling_rate: float = option(1.0, "share of calls logged, in (0, 1]", metavar="R")
    log_payload: str = option(
        spec.LOG_PAYLOAD_FEATURES,
        "what of the request is kept: none (response and metadata only), features (derived image "
        "features instead of the image) or images (the whole request)",
        choices=spec.LOG_PAYLOADS,
    )
    log_max_mb: float = option(
        256.0, "size budget of DIR in MiB; the oldest files are deleted beyond it", metavar="N"
    )
    log_file_mb: float = option(16.0, "a log file is closed at this size, at most a quarter of the budget")
    log_rotate_seconds: float = option(60.0, "... or this long after its first record")
    log_queue_records: int = option(1024, "records waiting for the log writer; more are dropped and counted")
    log_queue_mb: float = option(64.0, "MiB those records may hold")

    # The request-logging options, a group of their own in `btmri serve --help`.
    LOGGING = (
        "request_log_dir",
        "log_sampling_rate",
        "log_payload",
        "log_max_mb",
        "log_file_mb",
        "log_rotate_seconds",
        "log_queue_records",
        "log_queue_mb",
    )

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
