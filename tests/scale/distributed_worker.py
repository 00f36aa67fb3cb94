"""One training process of a distributed test: the Trainer's run_fn on a finished run's
artifacts, with the FnArgs TFX's own Trainer executor would build (not the whole pipeline).

    python tests/scale/distributed_worker.py --pipeline-root R --out O --config '{"distribution": ...}'
        [--logical-cpus N]

Multi-worker: start one process per worker with TF_CONFIG set (cluster + task); all of
them get the same output folders, as every replica of a Vertex AI job does. Prints one
JSON line starting with RESULT: the task, the training files and the output folders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline-root", required=True, help="a finished local run's pipeline root")
    parser.add_argument("--out", required=True, help="the Trainer's output folders go here")
    parser.add_argument("--config", default="{}", help="Trainer custom_config (JSON)")
    parser.add_argument(
        "--logical-cpus",
        type=int,
        default=0,
        help="split the CPU into this many logical devices (mirrored on a CPU)",
    )
    args = parser.parse_args()

    import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the test reads what each task did from its log

    if args.logical_cpus > 1:
        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )

    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import standard_artifacts

    from pipeline.config import PipelineConfig
    from pipeline.metadata import latest_output

    config = PipelineConfig(pipeline_root=args.pipeline_root, data_root="", serving_dir="")
    inputs = {
        "examples": [latest_output(config, "ImportExampleGen", "examples")],
        "transform_graph": [latest_output(config, "Transform", "transform_graph")],
        "schema": [latest_output(config, "ImportSchemaGen", "schema")],
    }
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = os.path.join(args.out, "model"), os.path.join(args.out, "model_run")
    custom_config = json.loads(args.config)
    properties = {
        "train_args": json.dumps({"splits": ["train"]}),
        "eval_args": json.dumps({"splits": ["eval"]}),
        "custom_config": json.dumps(custom_config),
    }
    fn_args = GenericExecutor()._GetFnArgs(inputs, {"model": [model], "model_run": [model_run]}, properties)

    from components.training.trainer import run_fn

    run_fn(fn_args)
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    print(
        "RESULT:"
        + json.dumps(
            {
                "task": task,
                "train_files": fn_args.train_files,
                "serving_model_dir": fn_args.serving_model_dir,
                "model_run_dir": fn_args.model_run_dir,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
