"""Offline compile of the same pipeline to a Kubeflow Pipelines v2 / Vertex AI spec.

No cluster is contacted. The functions are referenced by import path (the code
is baked into the container image built from the top-level Dockerfile), so the
compiler does not try to build and upload a user-code wheel.
"""
from __future__ import annotations

import argparse
import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline.config import PipelineConfig
from pipeline.factory import create_pipeline


def compile_pipeline(args: argparse.Namespace) -> str:
    config = PipelineConfig(
        pipeline_root=args.pipeline_root, data_root=args.data_root, serving_dir=args.serving_dir,
        model=args.model, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, accuracy_lower_bound=args.accuracy_bound,
        beam_pipeline_args=list(args.beam_arg), use_module_files=False,
        metadata_path="", test_split=not args.no_test_split)
    out = os.path.abspath(args.out)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=os.path.dirname(out), output_filename=os.path.basename(out))
    runner.run(create_pipeline(config))
    return out
