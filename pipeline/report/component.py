"""`ModelReport`: the evaluation report and the model card as pipeline artifacts.

Runs after the Evaluator (and the LesionAudit, when there is one) and the
InfraValidator, and reads only its inputs, the run's own artifacts: the examples
(with the prepare manifest that travels with them), the model, TFMA's evaluation, the
blessing, statistics, anomalies, the Trainer's model_run folder, the lesion audit and
the serving validation (InfraBlessing). Nothing outside the run can change
what it writes, and Kubeflow/Vertex runs get it the same way as local ones.

Output: a `ModelReport` artifact holding report.html, MODEL_CARD.md (with a version
placeholder the Pusher fills in: components/executors.py copies the card into its
staging folder before the rename) and summary.json (the headline figures
`btmri report` prints).
"""

from __future__ import annotations

import json
import os

from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from btmri.documents import write_atomic
from btmri.layout import CARD_VERSION_PLACEHOLDER, MODEL_CARD_FILE, REPORT_FILE, SUMMARY_FILE
from components.audit.component import LesionAuditResult
from components.shortcut.component import ShortcutControlResult
from pipeline.report import DEFAULT_GALLERY_PER_KIND


class ModelReportResult(types.Artifact):
    """report.html, MODEL_CARD.md and summary.json of one evaluated model."""

    TYPE_NAME = "btmri.ModelReport"  # namespace.Name: Kubeflow V2 schema titles need both


class ModelReportSpec(types.ComponentSpec):
    PARAMETERS = {
        "evaluated_split": ExecutionParameter(type=str),
        "gallery_per_kind": ExecutionParameter(type=int),
        "pipeline_name": ExecutionParameter(type=str),
        "pipeline_root": ExecutionParameter(type=str),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics, optional=True),
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies, optional=True),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
        "lesion_audit": ChannelParameter(type=LesionAuditResult, optional=True),
        "infra_blessing": ChannelParameter(type=standard_artifacts.InfraBlessing, optional=True),
        "request_baseline": ChannelParameter(type=standard_artifacts.ExampleStatistics, optional=True),
        "shortcut_control": ChannelParameter(type=ShortcutControlResult, optional=True),
    }
    OUTPUTS = {
        "report": ChannelParameter(type=ModelReportResult),
    }


def _single(input_dict: dict, key: str):
    artifacts = input_dict.get(key) or []
    return artifact_utils.get_single_instance(artifacts) if artifacts else None


def run_from_artifacts(input_dict: dict, exec_properties: dict):
    """The report's view of a run (RunArtifacts), from a component's input artifacts."""
    from btmri.documents import TrainingHistory
    from btmri.layout import MANIFEST_FILE
    from pipeline.config import PipelineConfig
    from pipeline.report.artifacts import RunArtifacts, evaluated_models

    examples = _single(input_dict, "examples")
    evaluation = _single(input_dict, "evaluation")
    blessing = _single(input_dict, "blessing")
    model_run = _single(input_dict, "model_run")
    audit = _single(input_dict, "lesion_audit")
    infra = _single(input_dict, "infra_blessing")
    statistics = _single(input_dict, "statistics")
    anomalies = _single(input_dict, "anomalies")
    request_baseline = _single(input_dict, "request_baseline")
    shortcut = _single(input_dict, "shortcut_control")
    model_dir, baseline_dir = evaluated_models(evaluation.uri)
    history = TrainingHistory.read_if_present(model_run.uri if model_run else None)
    config = PipelineConfig(
        pipeline_root=exec_properties["pipeline_root"],
        data_root="",
        serving_dir="",
        pipeline_name=exec_properties["pipeline_name"],
        metadata_path="",
    )
    has_manifest = os.path.isfile(os.path.join(examples.uri, MANIFEST_FILE))
    return RunArtifacts(
        config=config,
        examples_uri=examples.uri,
        splits=artifact_utils.decode_split_names(examples.split_names),
        evaluation_uri=evaluation.uri,
        evaluated_split=exec_properties["evaluated_split"],
        model_dir=model_dir,
        baseline_model_dir=baseline_dir,
        blessed=bool(blessing.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY))
        if blessing
        else None,
        data_root=examples.uri if has_manifest else None,
        statistics_uri=statistics.uri if statistics else None,
        anomalies_uri=anomalies.uri if anomalies else None,
        model_run_dir=model_run.uri if model_run else None,
        trainer_config=history.config if history else {},
        evaluated_at=evaluation.mlmd_artifact.create_time_since_epoch,
        lesion_audit_uri=audit.uri if audit else None,
        infra_validation_uri=infra.uri if infra else None,
        request_baseline_uri=request_baseline.uri if request_baseline else None,
        shortcut_control_uri=shortcut.uri if shortcut else None,
        before_push=True,
    )


def summary_of(data) -> dict:
    """The headline figures of a report (summary.json)."""
    return {
        "evaluated_split": data.run.evaluated_split,
        "accuracy": data.as_is.accuracy,
        "n": data.as_is.n,
        "accuracy_ci95": list(data.as_is.accuracy_ci),
        "deduplicated_accuracy": data.deduplicated.accuracy,
        "deduplicated_n": data.deduplicated.n,
        "deduplicated_accuracy_ci95": list(data.deduplicated.accuracy_ci),
        # The unit the intervals resampled and how (btmri.intervals).
        "units": data.as_is.units,
        "interval_method": data.as_is.interval_method,
        "deduplicated_units": data.deduplicated.units,
        "deduplicated_interval_method": data.deduplicated.interval_method,
        "duplicates_of_training_images": len(data.duplicates),
        "blessed": data.run.blessed,
        "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in data.checks],
        "abstention": None
        if getattr(data, "abstention", None) is None
        else {
            "acceptance": data.abstention.acceptance,
            "out_of_distribution": data.abstention.out_of_distribution,
            "low_confidence": data.abstention.low_confidence,
            "uncertain_no_tumour": data.abstention.uncertain_no_tumour,
            "accuracy_answered": data.abstention.accuracy_answered,
            "accuracy_all": data.abstention.accuracy_all,
            # The fit's estimate for new images, and what its folds held out (abstention.json).
            "acceptance_cross_fitted": (data.abstention.fitted or {}).get("accepted_share_cross_fitted"),
            "cross_fitted_by": (data.abstention.fitted or {}).get("cross_fitted_by", "example"),
        },
        "serving_validation": None
        if getattr(data, "infra_validation", None) is None
        else data.infra_validation.to_dict(),
        "request_baseline": None
        if getattr(data, "request_baseline", None) is None
        else {"split": data.request_baseline.split, "examples": data.request_baseline.examples},
        "shortcut_control": shortcut_summary(getattr(data, "shortcut_control", None)),
    }


def shortcut_summary(document: dict | None) -> dict | None:
    """The shortcut control's headline figures (summary.json), or None without one."""
    if document is None:
        return None
    return {
        "split": document["evaluated_split"],
        "examples": document["evaluated_examples"],
        "features": len(document["features"]),
        "accuracy": document["accuracy"]["value"],
        "accuracy_ci95": document["accuracy"]["ci95"],
        "chance_accuracy": document["chance"]["accuracy"]["value"],
        "chance_accuracy_ci95": document["chance"]["accuracy"]["ci95"],
        "recall": {c["name"]: c["recall"]["value"] for c in document["per_class"]},
        "seconds": document["seconds"]["total"],
    }


def write_report(data, out_dir: str) -> None:
    """report.html, MODEL_CARD.md (version placeholder) and summary.json into `out_dir`."""
    from pipeline.report.html_report import render
    from pipeline.report.model_card import render_markdown

    write_atomic(os.path.join(out_dir, REPORT_FILE), render(data))
    write_atomic(os.path.join(out_dir, MODEL_CARD_FILE), render_markdown(data, CARD_VERSION_PLACEHOLDER))
    write_atomic(os.path.join(out_dir, SUMMARY_FILE), json.dumps(summary_of(data), indent=1))


class ModelReportExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        from pipeline.report.collect import collect_run

        report = artifact_utils.get_single_instance(output_dict["report"])
        data = collect_run(
            run_from_artifacts(input_dict, exec_properties), int(exec_properties["gallery_per_kind"])
        )
        write_report(data, report.uri)
        report.set_float_custom_property("accuracy", float(data.as_is.accuracy))
        report.set_float_custom_property("deduplicated_accuracy", float(data.deduplicated.accuracy))
        report.set_string_custom_property("model_digest", data.model_digest)


class ModelReport(base_component.BaseComponent):
    SPEC_CLASS = ModelReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ModelReportExecutor)

    def __init__(
        self,
        examples,
        model,
        evaluation,
        blessing,
        evaluated_split: str,
        pipeline_name: str,
        pipeline_root: str,
        statistics=None,
        anomalies=None,
        model_run=None,
        lesion_audit=None,
        infra_blessing=None,
        request_baseline=None,
        shortcut_control=None,
        gallery_per_kind: int = DEFAULT_GALLERY_PER_KIND,
    ):
        component_spec = ModelReportSpec(
            examples=examples,
            model=model,
            evaluation=evaluation,
            blessing=blessing,
            statistics=statistics,
            anomalies=anomalies,
            model_run=model_run,
            lesion_audit=lesion_audit,
            infra_blessing=infra_blessing,
            request_baseline=request_baseline,
            shortcut_control=shortcut_control,
            evaluated_split=evaluated_split,
            gallery_per_kind=int(gallery_per_kind),
            pipeline_name=pipeline_name,
            pipeline_root=pipeline_root,
            report=types.Channel(type=ModelReportResult),
        )
        super().__init__(spec=component_spec)
