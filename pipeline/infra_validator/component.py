"""The InfraValidator's TFX component: its spec (inputs, outputs, parameters) and class;
the work is the executor's (executor.py)."""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from btmri import spec
from pipeline.infra_validator.executor import VALIDATED_MODEL_KEY, InfraValidatorExecutor


class InfraValidatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "evaluated_split": ExecutionParameter(type=str),
        "latency_requests": ExecutionParameter(type=int),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {
        "blessing": ChannelParameter(type=standard_artifacts.InfraBlessing),
        VALIDATED_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }


class InfraValidator(base_component.BaseComponent):
    SPEC_CLASS = InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(InfraValidatorExecutor)

    def __init__(
        self,
        model,
        examples,
        evaluated_split: str,
        model_blessing=None,
        latency_requests: int = spec.LATENCY_REQUESTS,
    ):
        component_spec = InfraValidatorSpec(
            model=model,
            examples=examples,
            model_blessing=model_blessing,
            evaluated_split=evaluated_split,
            latency_requests=int(latency_requests),
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            validated_model=types.Channel(type=standard_artifacts.Model),
        )
        super().__init__(spec=component_spec)
