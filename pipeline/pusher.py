"""The Pusher of this pipeline: TFX's Pusher spec plus an optional `model_report`
input, run by components.executors.IdempotentAtomicPusher, which copies the run's
model card (the ModelReport artifact's MODEL_CARD.md) into the version folder before
renaming it into place: a pushed version never exists without its card.

Like TFX's Pusher it takes `infra_blessing` (the InfraValidator's InfraBlessing) and
pushes only when that is blessed too (custom property `blessed` = 1): a model that
did not serve is never pushed. Its `model` is the InfraValidator's validated copy,
which carries the warm-up file."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter

from components.executors import MODEL_REPORT_KEY, IdempotentAtomicPusher
from pipeline.report.component import ModelReportResult


class CardPusherSpec(standard_component_specs.PusherSpec):
    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        MODEL_REPORT_KEY: ChannelParameter(type=ModelReportResult, optional=True),
    }


class CardPusher(base_component.BaseComponent):
    SPEC_CLASS = CardPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(IdempotentAtomicPusher)

    def __init__(self, model, model_blessing, push_destination, model_report=None, infra_blessing=None):
        component_spec = CardPusherSpec(
            model=model,
            model_blessing=model_blessing,
            push_destination=push_destination,
            model_report=model_report,
            infra_blessing=infra_blessing,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=component_spec)
