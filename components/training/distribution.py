"""tf.distribute for the Trainer: the strategy, who is chief, where each worker writes.

`TrainerConfig.distribution` (btmri/spec.py DISTRIBUTIONS):

- `none` (default): no strategy at all; run_fn takes exactly the single-device path.
- `mirrored`: one host, every local GPU; with no GPU, every logical CPU device (one,
  unless the process split its CPU into several, as the tests do).
- `multi_worker`: MultiWorkerMirroredStrategy over the hosts the TF_CONFIG environment
  variable names (Vertex AI custom jobs and Kubeflow's TFJob set it). It must be created
  before TensorFlow runs its first operation: run_fn creates it first thing.

`batch_size` is the global batch: replicas split it and the gradient is averaged over
all of it (lesion_guidance.LesionGuidedModel, distributed), so the learning rate keeps
the meaning it has on one device and is not rescaled here.

Multi-worker output: every worker trains, writes its logs (the chief into the real
folders, the others into temporary folders deleted after a final barrier) and copies
the weights into a plain float32 model (reading them is collective: batch-norm
statistics are synchronised on read). Only the chief then calibrates, fits abstention
and exports: that uses the plain copy alone, with no collective ops, so the other
workers go straight to the barrier. The barrier means no worker returns before the chief's
SavedModel is in place (TFX's Trainer executor checks for it on every replica).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from btmri import spec

TF_CONFIG_ENV = "TF_CONFIG"


def make_strategy(name: str) -> tf.distribute.Strategy | None:
    """The strategy `name` asks for; None for `none` (the default path)."""
    if name == spec.DISTRIBUTION_NONE:
        return None
    if name == spec.DISTRIBUTION_MIRRORED:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif name == spec.DISTRIBUTION_MULTI_WORKER:
        if not json.loads(os.environ.get(TF_CONFIG_ENV) or "{}").get("cluster"):
            raise ValueError(
                "distribution multi_worker needs the TF_CONFIG environment variable "
                "(cluster and task), as Vertex AI and Kubeflow's TFJob set it"
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ValueError(f"distribution must be one of {', '.join(spec.DISTRIBUTIONS)}, not {name!r}")
    logging.info("Distribution %s: %d replicas in sync", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True unless this is a non-chief worker of a multi-worker cluster. The chief is the
    `chief` task, or worker 0 of a cluster without one (TF's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in ("chief", "master"):
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def task_name(strategy: tf.distribute.Strategy | None) -> str:
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}{resolver.task_id}"


def write_dir(real_dir: str, strategy: tf.distribute.Strategy | None) -> str:
    """`real_dir` for the chief; a fresh local temporary folder for any other worker."""
    if is_chief(strategy):
        return real_dir
    return tempfile.mkdtemp(prefix=f"btmri-{task_name(strategy)}-")


def finish(strategy: tf.distribute.Strategy | None, *written: str) -> None:
    """Multi-worker: waits for every worker (one all-reduce), then a non-chief removes
    the temporary folders it wrote. Nothing to do without a cluster."""
    if getattr(strategy, "cluster_resolver", None) is None:
        return

    @tf.function
    def one():
        return tf.constant(1.0)

    arrived = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(one), axis=None)
    logging.info("Barrier passed: %d replicas arrived", int(arrived.numpy()))
    if not is_chief(strategy):
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)


def sharded(dataset: tf.data.Dataset, policy: str) -> tf.data.Dataset:
    """Sets how a multi-worker strategy splits `dataset` between workers: `file`, each
    worker reads its own TFRecord files (needs at least as many files as workers);
    `data`, each reads every file and keeps its share of the elements."""
    policies = {
        spec.INPUT_SHARDING_FILE: tf.data.experimental.AutoShardPolicy.FILE,
        spec.INPUT_SHARDING_DATA: tf.data.experimental.AutoShardPolicy.DATA,
    }
    if policy not in policies:
        raise ValueError(f"input sharding must be one of {', '.join(spec.INPUT_SHARDING)}, not {policy!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(options)
