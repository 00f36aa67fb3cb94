"""Small read-only queries on the pipeline's ML Metadata store."""

from __future__ import annotations


from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from pipeline.config import PipelineConfig

PIPELINE_RUN_CONTEXT_TYPE = "pipeline_run"  # TFX's context of one run of the pipeline
PUSHER_NODE_ID = "Pusher"  # pipeline/factory.py
PUSHED_MODEL_KEY = "pushed_model"


def open_store(config: PipelineConfig) -> metadata_store.MetadataStore:
    conn = metadata_store_pb2.ConnectionConfig()
    conn.sqlite.filename_uri = config.metadata_path
    conn.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(conn)


def node_executions(config: PipelineConfig, node_id: str) -> list[metadata_store_pb2.Execution]:
    """Executions of one pipeline node, oldest first (by id)."""
    store = open_store(config)
    context_name = f"{config.pipeline_name}.{node_id}"
    context = store.get_context_by_type_and_name("node", context_name)
    if context is None:
        return []
    return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)


def execution_state_name(execution: metadata_store_pb2.Execution) -> str:
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def _output(store, execution_id: int, key: str):
    """The raw MLMD artifact an execution output under `key`, or None."""
    events = [
        e
        for e in store.get_events_by_execution_ids([execution_id])
        if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
        and any(step.key == key for step in e.path.steps)
    ]
    return store.get_artifacts_by_id([events[0].artifact_id])[0] if events else None


def _deserialized(store, artifact):
    types = store.get_artifact_types_by_id([artifact.type_id])
    return artifact_utils.deserialize_artifact(types[0], artifact)


def _succeeded(execution) -> bool:
    return execution.last_known_state in (
        metadata_store_pb2.Execution.COMPLETE,
        metadata_store_pb2.Execution.CACHED,
    )


def latest_output(config: PipelineConfig, node_id: str, key: str):
    """The TFX artifact a node's latest successful (or cached) execution output under `key`."""
    store = open_store(config)
    for execution in reversed(node_executions(config, node_id)):
        if not _succeeded(execution):
            continue
        artifact = _output(store, execution.id, key)
        if artifact is not None:
            return _deserialized(store, artifact)
    return None


def outputs_of_pushing_run(config: PipelineConfig, version: int, node_id: str, keys: tuple[str, ...]):
    """{key: TFX artifact} that `node_id` output in the latest pipeline run whose Pusher
    pushed (or found already pushed) serving version `version`; None if no run of this
    pipeline did, or that run's `node_id` lacks one of `keys`."""
    store = open_store(config)
    run_type = store.get_context_type(PIPELINE_RUN_CONTEXT_TYPE)
    node = {e.id for e in node_executions(config, node_id) if _succeeded(e)}
    for pusher in reversed(node_executions(config, PUSHER_NODE_ID)):
        pushed = _output(store, pusher.id, PUSHED_MODEL_KEY) if _succeeded(pusher) else None
        if pushed is None:
            continue
        properties = pushed.custom_properties
        if properties["pushed"].int_value != 1 or properties["pushed_version"].string_value != str(version):
            continue
        for run in store.get_contexts_by_execution(pusher.id):
            if run.type_id != run_type.id:
                continue
            for execution in store.get_executions_by_context(run.id):
                if execution.id not in node:
                    continue
                artifacts = {key: _output(store, execution.id, key) for key in keys}
                if all(a is not None for a in artifacts.values()):
                    return {key: _deserialized(store, a) for key, a in artifacts.items()}
    return None


def served_outputs(
    config: PipelineConfig, version: int | None, node_id: str, keys: tuple[str, ...], instead: str
) -> tuple[dict | None, int | None, str]:
    """(the {key: artifact} `node_id` output in the run that pushed serving version
    `version`, that version, ""); when no run of this pipeline pushed it (or `version` is
    None), the latest run's outputs, None and a note ending in `instead` (what is used
    instead). The outputs are None when that run has not all of them."""
    note = ""
    if version is not None:
        found = outputs_of_pushing_run(config, version, node_id, keys)
        if found is not None:
            return found, version, ""
        note = f"served version {version} was not pushed by a run of {config.pipeline_root}: {instead}"
    latest = {key: latest_output(config, node_id, key) for key in keys}
    return (latest if all(a is not None for a in latest.values()) else None), None, note


def custom_properties(artifact, prefix: str = "") -> dict:
    """A TFX artifact's custom properties whose names start with `prefix`, as Python values."""
    values = {}
    for name, value in artifact.mlmd_artifact.custom_properties.items():
        if name.startswith(prefix):
            kind = value.WhichOneof("value")
            values[name] = getattr(value, kind) if kind else None
    return values


def feedback_provenance(config: PipelineConfig) -> dict:
    """The feedback_* properties of the latest Examples artifact (components/executors.py):
    which reviews, reviewers and model versions stand behind the run's data; {} without feedback."""
    from data_prep.feedback import MLMD_PREFIX

    examples = latest_output(config, "ImportExampleGen", "examples")
    return {} if examples is None else custom_properties(examples, MLMD_PREFIX)
