"""Finds the latest run's artifacts in ML Metadata: what the report is built from.

The evaluated model is the one TFMA recorded in its own output (eval_config.json),
not "the latest Trainer output": the report must describe what was evaluated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from btmri.layout import MANIFEST_FILE
from pipeline.config import PipelineConfig
from pipeline.config import missing_store_message
from pipeline.metadata import latest_output, node_executions

# Names TFMA gives the two models when a baseline is present (TFX's Evaluator).
CANDIDATE = "candidate"
BASELINE = "baseline"


class ReportError(RuntimeError):
    """The pipeline root holds no run a report can be built from."""


@dataclass
class RunArtifacts:
    config: PipelineConfig
    examples_uri: str  # ImportExampleGen output: Split-<name>/ folders
    splits: list[str]
    evaluation_uri: str
    evaluated_split: str
    model_dir: str  # the candidate SavedModel TFMA evaluated
    baseline_model_dir: str | None
    blessed: bool | None
    data_root: str | None  # the folder holding manifest.json; None if unknown
    statistics_uri: str | None = None
    anomalies_uri: str | None = None
    model_run_dir: str | None = None  # history.json, TensorBoard logs
    pushed_to: str | None = None  # serving version folder, when pushed
    trainer_config: dict = field(default_factory=dict)
    evaluated_at: int = 0  # ms since epoch (ML Metadata's clock)
    lesion_audit_uri: str | None = None  # LesionAudit output (lesion_audit.json, gallery/)
    infra_validation_uri: str | None = None  # InfraValidator's InfraBlessing (infra_validation.json)
    before_push: bool = False  # read by the ModelReport step, before the Pusher ran
    request_baseline_uri: str | None = None  # RequestBaseline statistics (monitoring baseline)
    shortcut_control_uri: str | None = None  # ShortcutControl output (shortcut_control.json)

    def split_uri(self, split: str) -> str:
        return os.path.join(self.examples_uri, f"Split-{split}")


def _exec_property(config: PipelineConfig, node_id: str, key: str) -> str | None:
    """An exec property of a node's latest successful or cached execution."""
    for execution in reversed(node_executions(config, node_id)):
        if execution.last_known_state in (
            metadata_store_pb2.Execution.COMPLETE,
            metadata_store_pb2.Execution.CACHED,
        ):
            value = execution.custom_properties.get(key)
            return value.string_value if value is not None else None
    return None


def evaluated_models(evaluation_uri: str) -> tuple[str, str | None]:
    """(candidate, baseline or None) model folders as TFMA recorded them."""
    from tensorflow_model_analysis.writers.eval_config_writer import load_eval_run

    _, _, _, locations = load_eval_run(evaluation_uri)
    locations = dict(locations)
    candidate = locations.get(CANDIDATE) or locations.get("")
    if candidate is None:
        raise ReportError(f"no candidate model recorded in {evaluation_uri}/eval_config.json")
    return candidate, locations.get(BASELINE)


def _manifest_dir(config: PipelineConfig, examples_uri: str) -> str | None:
    """Where the run's manifest is: in its Examples artifact (ImportExampleGen copies
    it there), else, for runs made before that, the folder ImportExampleGen read."""
    if os.path.isfile(os.path.join(examples_uri, MANIFEST_FILE)):
        return examples_uri
    return _exec_property(config, "ImportExampleGen", "input_base")


def find_run(config: PipelineConfig, data_root: str | None = None) -> RunArtifacts:
    """Everything the report reads, from the latest successful execution of each node.

    `data_root` overrides where the prepare manifest (manifest.json) is looked for;
    by default it is the run's own copy in the Examples artifact.
    """
    if missing := missing_store_message(config):
        raise ReportError(missing)
    evaluation = latest_output(config, "Evaluator", "evaluation")
    examples = latest_output(config, "ImportExampleGen", "examples")
    if evaluation is None or examples is None:
        raise ReportError(f"no finished Evaluator run in {config.pipeline_root}")
    splits = json.loads(_exec_property(config, "Evaluator", "example_splits") or "[]")
    if len(splits) != 1:
        raise ReportError(f"expected one evaluated split, found {splits}")
    model_dir, baseline_dir = evaluated_models(evaluation.uri)

    blessing = latest_output(config, "Evaluator", "blessing")
    audit = latest_output(config, "LesionAudit", "audit")
    if audit is not None:  # with the audit, its blessing (which includes the Evaluator's) decides
        blessing = latest_output(config, "LesionAudit", "blessing") or blessing
    statistics = latest_output(config, "StatisticsGen", "statistics")
    anomalies = latest_output(config, "ExampleValidator", "anomalies")
    model_run = latest_output(config, "Trainer", "model_run")
    pushed = latest_output(config, "Pusher", "pushed_model")
    infra = latest_output(config, "InfraValidator", "blessing")
    request_baseline = latest_output(config, "RequestBaseline", "statistics")
    shortcut = latest_output(config, "ShortcutControl", "control")
    trainer_config = json.loads(_exec_property(config, "Trainer", "custom_config") or "{}")

    return RunArtifacts(
        config=config,
        examples_uri=examples.uri,
        splits=artifact_utils.decode_split_names(examples.split_names),
        evaluation_uri=evaluation.uri,
        evaluated_split=splits[0],
        model_dir=model_dir,
        baseline_model_dir=baseline_dir,
        blessed=bool(blessing.get_int_custom_property("blessed")) if blessing else None,
        data_root=data_root or _manifest_dir(config, examples.uri),
        statistics_uri=statistics.uri if statistics else None,
        anomalies_uri=anomalies.uri if anomalies else None,
        model_run_dir=model_run.uri if model_run else None,
        pushed_to=(
            pushed.get_string_custom_property("pushed_destination")
            if pushed and pushed.get_int_custom_property("pushed")
            else None
        ),
        trainer_config=trainer_config,
        evaluated_at=evaluation.mlmd_artifact.create_time_since_epoch,
        lesion_audit_uri=audit.uri if audit else None,
        infra_validation_uri=infra.uri if infra else None,
        request_baseline_uri=request_baseline.uri if request_baseline else None,
        shortcut_control_uri=shortcut.uri if shortcut else None,
    )
