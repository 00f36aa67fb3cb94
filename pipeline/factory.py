"""`create_pipeline(config)`: the TFX pipeline, independent of where it runs."""

from __future__ import annotations

import os
from pathlib import Path

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.dsl.components.base.base_beam_component import BaseBeamComponent

from btmri import spec
from components.audit.component import LesionAudit
from components.baseline.component import RequestBaseline
from components.evaluation import eval_config
from components.executors import ImportExampleGenWithManifest, StrictExampleValidator
from components.shortcut.component import ShortcutControl
from pipeline.config import PREPROCESSING_FN, RUN_FN, TRAINER_MODULE, TRANSFORM_MODULE, PipelineConfig
from pipeline.infra_validator import VALIDATED_MODEL_KEY, InfraValidator
from pipeline.pusher import CardPusher
from pipeline.report.component import ModelReport

# Component ids, in run order (the CLI reports progress with them). LesionAudit runs
# only when a box folder is configured.
COMPONENT_IDS = (
    "ImportExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "ShortcutControl",
    "Transform",
    "Trainer",
    "LatestBlessedModelResolver",
    "Evaluator",
    "LesionAudit",
    "RequestBaseline",
    "InfraValidator",
    "ModelReport",
    "Pusher",
)


def component_ids(config: PipelineConfig) -> tuple[str, ...]:
    """The ids of the components a pipeline built from `config` has, in run order."""
    return tuple(c for c in COMPONENT_IDS if c != "LesionAudit" or config.box_dir)


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    return pipeline_of(config, pipeline_components(config))


def pipeline_of(
    config: PipelineConfig, components: list, enable_cache: bool | None = None
) -> tfx.dsl.Pipeline:
    """`components` as a Pipeline with `config`'s name, root, metadata and Beam options;
    `enable_cache` overrides the config's (parts of the pipeline run alone, uncached)."""
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=components,
        enable_cache=config.enable_cache if enable_cache is None else enable_cache,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
            if config.metadata_path
            else None
        ),
        beam_pipeline_args=config.beam_pipeline_args,
    )


def pipeline_components(config: PipelineConfig) -> list:
    """The components of `config`'s pipeline, in run order, not yet in a Pipeline (so a
    subset can make a pipeline of its own: pipeline/portable.py)."""
    splits = [spec.TRAIN_SPLIT, spec.EVAL_SPLIT]
    if config.has_test_split:
        splits.append(spec.TEST_SPLIT)
    example_gen = tfx.components.ImportExampleGen(
        input_base=config.data_root,
        input_config=tfx.proto.Input(
            splits=[tfx.proto.Input.Split(name=s, pattern=f"{s}/*{spec.TFRECORD_SUFFIX}") for s in splits]
        ),
    )
    # The manifest travels with the examples (components/executors.py).
    example_gen.executor_spec = executor_spec.BeamExecutorSpec(ImportExampleGenWithManifest)

    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_file)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id("ExampleValidator")
    example_validator.executor_spec = executor_spec.ExecutorClassSpec(StrictExampleValidator)

    code = (
        {"module_file": str(TRANSFORM_MODULE)}
        if config.use_module_files
        else {"preprocessing_fn": PREPROCESSING_FN}
    )
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        materialize=config.materialize,  # default False: the Trainer transforms on the fly
        splits_config=tfx.proto.SplitsConfig(
            analyze=[spec.TRAIN_SPLIT],
            transform=[spec.TRAIN_SPLIT, spec.EVAL_SPLIT] if config.materialize else [],
        ),
        **code,
    )
    transform.add_upstream_node(example_validator)  # no Transform on anomalous data

    evaluate_on = spec.TEST_SPLIT if config.has_test_split else spec.EVAL_SPLIT
    # The shortcut control (components/shortcut/): gradient-boosted trees on image
    # statistics (size, format, bytes, gray-level moments, texture), no pixels, fitted
    # on train and scored on the split the Evaluator scores: what the data offers
    # without anatomy. Needs no model: it runs beside Transform and the Trainer.
    shortcut = ShortcutControl(examples=example_gen.outputs["examples"], split=evaluate_on).with_id(
        "ShortcutControl"
    )
    shortcut.add_upstream_node(example_validator)  # no figures of anomalous data

    code = {"module_file": str(TRAINER_MODULE)} if config.use_module_files else {"run_fn": RUN_FN}
    trainer_class, trainer_config = tfx.components.Trainer, config.trainer_config()
    if config.vertex is not None:  # the same run_fn, as a Vertex AI training job (pipeline/vertex.py)
        from pipeline import vertex

        trainer_class = tfx.extensions.google_cloud_ai_platform.Trainer
        trainer_config = {**trainer_config, **vertex.training_config(config)}
    trainer = trainer_class(
        examples=(
            transform.outputs["transformed_examples"]
            if config.materialize
            else example_gen.outputs["examples"]
        ),
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[spec.TRAIN_SPLIT]),
        eval_args=tfx.proto.EvalArgs(splits=[spec.EVAL_SPLIT]),
        custom_config=trainer_config,
        **code,
    )

    # With the lesion audit, the blessing that counts is the audit's (it includes the
    # Evaluator's): a model the audit refused is never a baseline.
    blessings = (
        tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing,
            producer_component_id="LesionAudit",
            output_key="blessing",
        )
        if config.box_dir
        else tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing)
    )
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=blessings,
    ).with_id("LatestBlessedModelResolver")

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=[evaluate_on],
        eval_config=eval_config(
            config.accuracy_lower_bound, config.max_accuracy_regression, config.min_acceptance
        ),
    )

    audit = None
    blessing = evaluator.outputs["blessing"]
    if config.box_dir:
        audit = LesionAudit(
            model=trainer.outputs["model"],
            examples=example_gen.outputs["examples"],
            model_blessing=evaluator.outputs["blessing"],
            box_dir=config.box_dir,
            min_pointing=config.audit_min_pointing,
            min_removed_changed=config.audit_min_removed_changed,
        ).with_id("LesionAudit")
        blessing = audit.outputs["blessing"]

    # Serving validation: `btmri serve` on the candidate, answers against the in-process
    # model, latency; writes the warm-up file into the copy the Pusher pushes
    # (pipeline/infra_validator/). Only a blessed candidate is served.
    infra_validator = InfraValidator(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        model_blessing=blessing,
        evaluated_split=evaluate_on,
    ).with_id("InfraValidator")
    # The monitoring baseline (components/baseline/): request-feature statistics of the
    # evaluated split (nothing was fitted on it) as this model answers it, and the schema
    # `btmri monitor` validates served traffic with. Needs only the model: it runs
    # beside the Evaluator.
    baseline = RequestBaseline(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        schema_text=Path(config.request_schema_file).read_text(),
        split=evaluate_on,
    ).with_id("RequestBaseline")

    # The report and the model card, from this run's artifacts only (pipeline/report/component.py).
    report = ModelReport(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        evaluation=evaluator.outputs["evaluation"],
        blessing=blessing,
        statistics=statistics_gen.outputs["statistics"],
        anomalies=example_validator.outputs["anomalies"],
        model_run=trainer.outputs["model_run"],
        lesion_audit=audit.outputs["audit"] if audit else None,
        infra_blessing=infra_validator.outputs["blessing"],
        request_baseline=baseline.outputs["statistics"],
        shortcut_control=shortcut.outputs["control"],
        evaluated_split=evaluate_on,
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
    ).with_id("ModelReport")

    if config.vertex is not None and config.vertex.endpoint_name:
        from pipeline import vertex

        pusher = vertex.pusher(config, trainer.outputs["model"], blessing)
    else:
        # The Pusher pushes the validated copy (the candidate plus its warm-up file), and
        # only when both the model and its serving were blessed.
        pusher = CardPusher(
            model=infra_validator.outputs[VALIDATED_MODEL_KEY],
            model_blessing=blessing,
            infra_blessing=infra_validator.outputs["blessing"],
            model_report=report.outputs["report"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=os.path.abspath(config.serving_dir)
                    if "://" not in config.serving_dir
                    else config.serving_dir
                )
            ),
        ).with_id("Pusher")

    components = [
        example_gen,
        statistics_gen,
        schema_gen,
        example_validator,
        shortcut,
        transform,
        trainer,
        model_resolver,
        evaluator,
        *([audit] if audit else []),
        baseline,
        infra_validator,
        report,
        pusher,
    ]
    with_component_beam_args(components, config.component_beam_args)
    return components


def with_component_beam_args(components, args_by_id: dict[str, list[str]]) -> None:
    """Adds each component's own Beam options (`--component-beam-arg ID=ARG`) after the
    pipeline's, so they override them for that component only (TFX's
    with_beam_pipeline_args). Only Beam components take them."""
    beam = {c.id: c for c in components if isinstance(c, BaseBeamComponent)}
    for node, args in args_by_id.items():
        if node not in beam:
            raise ValueError(
                f"--component-beam-arg: {node!r} is not a Beam component of this pipeline "
                f"(those are {', '.join(beam)})"
            )
        beam[node].with_beam_pipeline_args(list(args))
