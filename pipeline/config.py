"""One object holds every path and knob of a pipeline run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import components
from btmri.documents import TRAINER_DEFAULTS, TRAINING_SETTINGS, TrainingSettings, VertexOptions, option
from btmri.layout import metadata_path
from btmri.spec import (
    COMPUTE_DTYPES,
    DISTRIBUTIONS,
    INPUT_SHARDING,
    MIN_ACCEPTANCE,
    SCHEDULES,
    base_phase_size_error,
)

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
# PipelineConfig's blessing gates, flags of `btmri run` and `btmri compile` (their option() fields).
GATE_OPTIONS = (
    "accuracy_lower_bound",
    "abstention_min_acceptance",
    "audit_min_pointing",
    "audit_min_removed_changed",
)


def local_beam_args(workers: int | None = None) -> list[str]:
    """DirectRunner inside this process (the default), or with `workers` worker processes.

    In memory is the default because on one machine it is the faster: the worker
    processes each start Python and import TensorFlow, and on two cores they bought
    nothing back (docs/experiments.md). It also keeps ImportExampleGen's output in one
    order, so one seed gives one model (docs/training.md)."""
    if workers is None:
        return ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return [
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={workers}",
    ]


# `btmri run --beam-workers SPEC` (docs/scale.md).
IN_MEMORY = "in_memory"
EXTERNAL_PREFIX = "external:"
EMBEDDED_JOB_SERVICE = "embed"  # PortableRunner's own in-process job service
# PortableRunner puts its job-service request timeout (Beam's default: 60 s) on the job's
# state and message streams too, so a job running longer fails with DEADLINE_EXCEEDED
# although the job service is fine (Beam 2.60). One day instead.
JOB_SERVER_TIMEOUT_SECONDS = 24 * 3600


def beam_args(workers: str | None = None, job_endpoint: str | None = None) -> list[str]:
    """Beam pipeline options for a `--beam-workers` SPEC:

    - None or `in_memory`: DirectRunner inside the driver process (the default);
    - `N`: DirectRunner, multi-processing, N worker processes;
    - `external:HOST:PORT`: Beam's portability layer, as Flink, Spark and Dataflow drive
      it: PortableRunner, a job service (`job_endpoint` HOST:PORT of
      `python -m apache_beam.runners.portability.local_job_service_main`; default: one
      inside this process) and SDK workers started by the worker pool at HOST:PORT
      (`python -m apache_beam.runners.worker.worker_pool_main --service_port PORT`,
      environment EXTERNAL). The pool's workers import this project's code: start it
      where the project is installed or on PYTHONPATH.
    """
    if workers is None or workers == "":
        if job_endpoint:
            raise ValueError("--beam-job-endpoint needs --beam-workers external:HOST:PORT")
        return local_beam_args()
    if workers.startswith(EXTERNAL_PREFIX):
        address = workers[len(EXTERNAL_PREFIX) :]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--beam-workers {workers!r}: expected external:HOST:PORT")
        return [
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint or EMBEDDED_JOB_SERVICE}",
            f"--job_server_timeout={JOB_SERVER_TIMEOUT_SECONDS}",
            "--environment_type=EXTERNAL",
            f"--environment_config={address}",
        ]
    if job_endpoint:
        raise ValueError("--beam-job-endpoint needs --beam-workers external:HOST:PORT")
    if workers == IN_MEMORY:
        return local_beam_args()
    if workers.isdigit() and int(workers) > 0:
        return local_beam_args(int(workers))
    raise ValueError(
        f"--beam-workers {workers!r}: expected a number of worker processes, "
        f"{IN_MEMORY} or external:HOST:PORT"
    )


def runs_beyond_this_process(beam: list[str]) -> bool:
    """True when Beam options send work to SDK workers that do not install the module
    files TFX stages (PortableRunner with external workers, Flink, Spark, Dataflow):
    the pipeline must then name its functions by import path (use_module_files=False)."""
    runners = [a.split("=", 1)[1] for a in beam if a.startswith("--runner=")]
    return bool(runners) and runners[-1] not in ("DirectRunner", "direct", "BundleBasedDirectRunner")


def component_beam_args(pairs: list[str]) -> dict[str, list[str]]:
    """`--component-beam-arg ID=ARG` values → {component id: [ARG, ...]}, in order."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        node, sep, arg = pair.partition("=")
        if not sep or not node or not arg.startswith("--"):
            raise ValueError(f"--component-beam-arg {pair!r}: expected COMPONENT=--option[=value]")
        out.setdefault(node, []).append(arg)
    return out


@dataclass
class PipelineConfig(TrainingSettings):
    """One run of the pipeline: where it reads and writes, how it gates, how it scales,
    and (inherited, keyword-only) its TrainingSettings, passed on to the Trainer."""

    pipeline_root: str  # artifacts and ML Metadata live here
    data_root: str  # output of `btmri prepare` (train/ eval/ [test/])
    serving_dir: str  # TF Serving base path: <serving_dir>/<version>/
    pipeline_name: str = DEFAULT_PIPELINE_NAME
    metadata_path: str | None = None  # sqlite; default <pipeline_root>/metadata.sqlite
    schema_file: str = str(SCHEMA_FILE)
    request_schema_file: str = str(REQUEST_SCHEMA_FILE)
    box_dir: str | None = None  # tumour boxes: the lesion audit's slices
    audit_min_pointing: float = option(
        -1.0,
        "refuse to bless a model whose lesion-audit pointing game is below SHARE (negative: off)",
        metavar="SHARE",
    )
    audit_min_removed_changed: float = option(
        -1.0,
        "refuse to bless a model whose answer changes on fewer than SHARE of the audit's slices "
        "once the lesion is removed (negative: off)",
        metavar="SHARE",
    )
    accuracy_lower_bound: float = option(
        DEFAULT_ACCURACY_LOWER_BOUND, "absolute lower bound on accuracy for blessing", flag="accuracy_bound"
    )
    abstention_min_acceptance: float = option(
        MIN_ACCEPTANCE,
        "refuse to bless a model that abstains on more than 1 - SHARE of the evaluated split (negative: off)",
        flag="min_acceptance",
        metavar="SHARE",
    )
    max_accuracy_regression: float = 0.0  # vs the last blessed model
    beam_pipeline_args: list[str] = field(default_factory=local_beam_args)
    # Beam options of one component, after (so overriding) the pipeline's: {component id: [args]}.
    component_beam_args: dict[str, list[str]] = field(default_factory=dict)
    # Compile target vertex: the Trainer runs as a Vertex AI training job (and, with an
    # endpoint name, the Pusher pushes to Vertex AI); None: the portable components.
    vertex: VertexOptions | None = None
    enable_cache: bool = option(True, "re-run every component (no TFX cache)", flag="cache")
    materialize: bool = False  # True: Transform writes transformed examples
    # False: reference functions by import path (compiled specs, non-direct Beam runners:
    # their SDK workers import the project; TFX's cache then does not see code changes).
    use_module_files: bool = True
    test_split: bool | None = None  # evaluate on test/; None: if data_root has one

    def __post_init__(self):
        if self.metadata_path is None:  # "" = no local store (Kubeflow/Vertex bring their own)
            self.metadata_path = metadata_path(self.pipeline_root)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}")
        if not 0.0 <= self.accuracy_lower_bound:
            raise ValueError("accuracy lower bound must be >= 0")
        if not 0.0 < self.abstention_accept <= 1.0:
            raise ValueError("abstention accept share must be in (0, 1]")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.epochs < 1 or self.patience < 1:
            raise ValueError(f"epochs and patience must be >= 1, got {self.epochs} and {self.patience}")
        if (problem := base_phase_size_error(self.base_phase_size)) is not None:
            raise ValueError(problem)
        if not 0.0 < self.full_size_share <= 1.0:
            raise ValueError(f"full-size share must be in (0, 1], got {self.full_size_share}")
        for name in ("lesion_removal_rate", "decoy_removal_rate", "lesion_paste_rate", "sequence_remap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name.replace('_', ' ')} must be a share in [0, 1], got {getattr(self, name)}"
                )
        if self.input_sharding not in INPUT_SHARDING:
            raise ValueError(f"input sharding must be one of {', '.join(INPUT_SHARDING)}")
        if self.vertex is not None:
            self.vertex.check(self.distribution)

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
        """The Trainer's custom_config: this run's TrainingSettings and whether the
        examples are materialised. distribution and input_sharding are passed only when
        not the default, so the component's cache key does not change for local runs."""
        config = {name: getattr(self, name) for name in TRAINING_SETTINGS}
        for name in ("distribution", "input_sharding"):
            if config[name] == getattr(TRAINER_DEFAULTS, name):
                del config[name]
        config["materialized"] = self.materialize
        return config


def missing_store_message(config: PipelineConfig) -> str | None:
    """Why the run's ML Metadata store cannot be read (for the caller's own error), or
    None. Here, not in pipeline.metadata, so commands can say it before importing TFX."""
    if os.path.isfile(config.metadata_path):
        return None
    return f"no ML Metadata store at {config.metadata_path}: run `btmri run` first, or pass the run's --work-dir (or --pipeline-root)"
