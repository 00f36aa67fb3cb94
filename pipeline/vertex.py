"""The Vertex AI variant of the pipeline (`btmri compile --target vertex`).

TFX's Vertex extensions replace two components, nothing else changes:

- Trainer → `tfx.extensions.google_cloud_ai_platform.Trainer`: the same run_fn, run as a
  Vertex AI custom job. Its worker pools: pool 0 is the chief (one replica), pool 1 the
  other workers (replicas - 1), every replica on the same machine type and accelerators,
  every one running the project image. Vertex AI sets TF_CONFIG on each replica (task
  types chief and worker), which `--distribution multi_worker` reads
  (components/training/distribution.py).
- Pusher (only with an endpoint name) → `tfx.extensions.google_cloud_ai_platform.Pusher`:
  uploads the blessed SavedModel to the Vertex AI Model Registry and deploys it to the
  endpoint (created if missing) on a Vertex AI prebuilt TensorFlow prediction image. The
  model card is then not pushed beside the model: it stays in the ModelReport artifact.
"""

from __future__ import annotations

from tfx import v1 as tfx

from pipeline.config import PipelineConfig

_platform = tfx.extensions.google_cloud_ai_platform


def worker_pool_specs(config: PipelineConfig) -> list[dict]:
    """Vertex AI CustomJob worker pools: the chief, then the other workers (if any)."""
    options = config.vertex
    machine = {"machine_type": options.machine_type}
    if options.accelerator_type:
        machine.update(accelerator_type=options.accelerator_type, accelerator_count=options.accelerator_count)
    pools = [{"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": options.image}}]
    if options.replicas > 1:
        pools.append(
            {
                "machine_spec": dict(machine),
                "replica_count": options.replicas - 1,
                "container_spec": {"image_uri": options.image},
            }
        )
    return pools


def training_config(config: PipelineConfig) -> dict:
    """The Vertex keys TFX's Vertex Trainer reads from custom_config (run_fn ignores them)."""
    options = config.vertex
    return {
        _platform.ENABLE_VERTEX_KEY: True,
        _platform.VERTEX_REGION_KEY: options.region,
        _platform.TRAINING_ARGS_KEY: {
            "project": options.project,
            "job_spec": {"worker_pool_specs": worker_pool_specs(config)},
        },
    }


def pusher(config: PipelineConfig, model, blessing):
    """TFX's Vertex Pusher: Model Registry upload + deploy to `config.vertex.endpoint_name`."""
    options = config.vertex
    return _platform.Pusher(
        model=model,
        model_blessing=blessing,
        custom_config={
            _platform.ENABLE_VERTEX_KEY: True,
            _platform.VERTEX_REGION_KEY: options.region,
            _platform.VERTEX_CONTAINER_IMAGE_URI_KEY: options.serving_image,
            _platform.SERVING_ARGS_KEY: {
                "project_id": options.project,
                "endpoint_name": options.endpoint_name,
                "machine_type": options.serving_machine_type,
            },
        },
    ).with_id("Pusher")
