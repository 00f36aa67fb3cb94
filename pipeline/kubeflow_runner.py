"""Offline compile of the same pipeline to a Kubeflow Pipelines v2 / Vertex AI spec.

No cluster is contacted. The functions are referenced by import path (the code
is baked into the container image built from the top-level Dockerfile), so the
compiler does not try to build and upload a user-code wheel.
"""

from __future__ import annotations

import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline.config import PipelineConfig
from pipeline.factory import create_pipeline


def compile_pipeline(config: PipelineConfig, out: str, image: str) -> str:
    """Writes the spec of `config`'s pipeline to `out`; returns its absolute path.
    `config` should have use_module_files=False and no metadata_path."""
    out = os.path.abspath(out)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(out),
        output_filename=os.path.basename(out),
    )
    runner.run(create_pipeline(config))
    return out
