"""Where things are: artifact file names and the layout of a run's work folder.

A local `btmri run --work-dir runs` keeps everything under one folder:

    runs/
      data/synthetic/       the synthetic phantom dataset (when no --data-dir)
      data/prepared/<key>/  TFRecords + manifest.json, one folder per dataset and prepare
                            arguments (key: their fingerprint), so two never share one
      data/prepared/current -> <key>   the one the last run used
      pipeline/             TFX artifacts, metadata.sqlite, logs/
      serving/brain_tumor/  TF Serving's model base path: <version>/saved_model.pb
      gradcam/              `btmri gradcam`'s pictures (its default --out)

`btmri report`, `monitor`, `audit`, `evaluate` and `serve` take the same --work-dir
and find the run's pipeline root or pushed model in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from btmri.spec import MODEL_NAME

# ── File names (one home each) ─────────────────────────────────────────────────────
MANIFEST_FILE = "manifest.json"  # beside prepared TFRecords: counts, skips, duplicates
SYNTH_MARKER_FILE = "synth.json"  # in a synthetic dataset: the generator's arguments
HISTORY_FILE = "history.json"  # Trainer's model_run dir: configuration + per-epoch figures
HISTORY_CSV_FILE = "history.csv"  # the same, as Keras' CSVLogger writes it
CALIBRATION_FILE = "calibration.json"  # Trainer's model_run dir: temperature scaling figures
TENSORBOARD_DIR = "tensorboard"  # Trainer's model_run dir
LESION_AUDIT_FILE = "lesion_audit.json"  # LesionAudit artifact
SHORTCUT_CONTROL_FILE = "shortcut_control.json"  # ShortcutControl artifact: the control's figures
ABSTENTION_FILE = "abstention.json"  # beside saved_model.pb and in model_run: fitted thresholds
DIGEST_FILE = "MODEL_DIGEST"  # beside saved_model.pb; TF Serving ignores it
MODEL_CARD_FILE = "MODEL_CARD.md"  # beside saved_model.pb in a pushed version
METADATA_FILE = "metadata.sqlite"  # local ML Metadata store, in the pipeline root
LOGS_DIR = "logs"  # run logs, in the pipeline root
REPORT_FILE = "report.html"  # `btmri report`'s default output name; in a ModelReport artifact
RUN_RECORD_FILE = "run_record.json"  # in a pipeline root: the last `btmri run` (pipeline/run_record.py)
SUMMARY_FILE = "summary.json"  # in a ModelReport artifact: the headline figures
# In a ModelReport artifact's MODEL_CARD.md: the Pusher puts the version folder's name here.
CARD_VERSION_PLACEHOLDER = "{pushed version}"
CURRENT_LINK = "current"  # in data/prepared/: the folder the last run used
# TF Serving's warm-up requests inside a SavedModel version folder (a TFRecord file of
# PredictionLog protos), replayed before a version takes traffic; the InfraValidator writes it.
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_PATH = f"{WARMUP_DIR}/{WARMUP_FILE}"  # relative to the version folder
# In an InfraBlessing artifact: the serving validation's result (InfraValidation document)
# and TFX's own marker files (what the standard InfraValidator writes).
INFRA_VALIDATION_FILE = "infra_validation.json"
INFRA_BLESSED_FILE = "INFRA_BLESSED"
INFRA_NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"
# Request logs (`btmri serve --request-log DIR`): closed files are
# requests-<UTC start>-<pid>-<n>.tfrecord; the one being written has a leading dot.
REQUEST_LOG_PREFIX = "requests-"
REQUEST_LOG_SUFFIX = ".tfrecord"
# `btmri monitor`: one folder per run under <request log>/MONITOR_DIR (or --out), holding
# the served statistics, TFDV's anomalies, an HTML page and the window's files.
MONITOR_DIR = "monitor"
MONITOR_STATISTICS_FILE = "statistics.pb"  # DatasetFeatureStatisticsList, binary
MONITOR_ANOMALIES_FILE = "anomalies.pbtxt"  # tensorflow_metadata Anomalies, text format
MONITOR_REPORT_FILE = "monitor.html"
MONITOR_WINDOW_FILE = "window.json"  # the log files and record counts of the window
MONITOR_CALIBRATION_DIR = ".calibration"  # calibrated thresholds, cached per baseline and window size
# RequestBaseline artifacts: TFDV's names, as StatisticsGen and SchemaGen write them.
STATISTICS_FILE = "FeatureStats.pb"  # in <ExampleStatistics uri>/Split-<split>/
# Beside it in a RequestBaseline's statistics: a sample of the feature rows themselves
# (JSON, one list per feature), what `btmri monitor` calibrates its thresholds on.
BASELINE_ROWS_FILE = "request_rows.json"
SCHEMA_FILE = "schema.pbtxt"  # in a Schema artifact

# ── The work folder of local runs ─────────────────────────────────────────────────
DEFAULT_WORK_DIR = "runs"


@dataclass(frozen=True)
class RunLayout:
    """Folders of one local work dir (see the module docstring)."""

    work_dir: str = DEFAULT_WORK_DIR

    @property
    def synthetic_data(self) -> str:
        return str(Path(self.work_dir, "data", "synthetic"))

    @property
    def prepared_root(self) -> str:
        return str(Path(self.work_dir, "data", "prepared"))

    def prepared_data(self, key: str) -> str:
        return str(Path(self.prepared_root, key))

    @property
    def current_prepared_data(self) -> str:
        """The link to the prepared data of the last run (CURRENT_LINK)."""
        return str(Path(self.prepared_root, CURRENT_LINK))

    def held_out_data(self, collection: str) -> str:
        """Where `run --hold-out-collection` puts the collection's images."""
        return str(Path(self.work_dir, "data", "held-out", collection))

    @property
    def pipeline_root(self) -> str:
        return str(Path(self.work_dir, "pipeline"))

    @property
    def serving_dir(self) -> str:
        return str(Path(self.work_dir, "serving", MODEL_NAME))

    @property
    def gradcam_dir(self) -> str:
        """Where `btmri gradcam` writes its pictures unless told otherwise."""
        return str(Path(self.work_dir, "gradcam"))

    @property
    def review_db(self) -> str:
        """The embedded review store of `btmri review` (SQLite)."""
        return str(Path(self.work_dir, "review", "reviews.sqlite"))

    @property
    def feedback_data(self) -> str:
        """Where `run --feedback DB` exports the database's reviews before preparing them."""
        return str(Path(self.work_dir, "data", "feedback"))


DEFAULT_LAYOUT = RunLayout()


def notebook_layout() -> RunLayout:
    """The work folder the notebooks read: $BTMRI_WORK_DIR, else `runs` in the current
    folder when there is one, else `runs` at the repository root (a kernel starts in
    notebooks/, the main job writes runs/ beside it)."""
    import os

    if os.environ.get("BTMRI_WORK_DIR"):
        return RunLayout(os.environ["BTMRI_WORK_DIR"])
    if Path(DEFAULT_WORK_DIR).is_dir():
        return DEFAULT_LAYOUT
    return RunLayout(str(Path(__file__).resolve().parents[1] / DEFAULT_WORK_DIR))


def metadata_path(pipeline_root: str) -> str:
    return str(Path(pipeline_root, METADATA_FILE))


def logs_dir(pipeline_root: str) -> str:
    return str(Path(pipeline_root, LOGS_DIR))
