"""Small read-only queries on the pipeline's ML Metadata store."""

from __future__ import annotations

import os

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils

from pipeline.config import PipelineConfig


def missing_store_message(config: PipelineConfig) -> str | None:
    """Why the run's ML Metadata store cannot be read (for the caller's own error), or None."""
    if os.path.isfile(config.metadata_path):
        return None
    return f"no ML Metadata store at {config.metadata_path}: run `btmri run` first or pass --pipeline-root"


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


def latest_output(config: PipelineConfig, node_id: str, key: str):
    """The TFX artifact a node's latest successful (or cached) execution output under `key`."""
    store = open_store(config)
    for execution in reversed(node_executions(config, node_id)):
        if execution.last_known_state not in (
            metadata_store_pb2.Execution.COMPLETE,
            metadata_store_pb2.Execution.CACHED,
        ):
            continue
        events = [
            e
            for e in store.get_events_by_execution_ids([execution.id])
            if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
            and any(step.key == key for step in e.path.steps)
        ]
        if not events:
            continue
        artifacts = store.get_artifacts_by_id([events[0].artifact_id])
        types = store.get_artifact_types_by_id([artifacts[0].type_id])
        return artifact_utils.deserialize_artifact(types[0], artifacts[0])
    return None
