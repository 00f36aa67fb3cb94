"""Benchmark: training images/s through the real input function vs in-memory tensors.

    python benchmarks/training_throughput.py --pipeline-root ROOT [--steps 40] [--batch-size 32]
        [--compute-dtype auto|float32|bfloat16]

Uses the latest ImportExampleGen and Transform outputs of a pipeline run (e.g.
the one benchmarks/pipeline_components.py leaves behind). Times model.fit of
the default model for the same number of steps fed three ways:
  1. the Trainer's input_fn (TFRecords → Transform graph → augmentation),
  2. the same with the in-memory cache filled (what every epoch after the first sees),
  3. the same without augmentation and without the cache,
  4. one in-memory batch of already transformed tensors, repeated (the limit:
     no reading, decoding or augmentation at all).
Then the limit once more in float32 if the chosen compute dtype was not float32.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)
from components.training import compute_dtype  # noqa: E402  (TF-free until a policy is chosen)


def _fit_rate(model, dataset, steps: int, batch_size: int) -> float:
    model.fit(dataset.take(3), epochs=1, verbose=0)  # build + warm up
    start = time.perf_counter()
    model.fit(dataset.take(steps), epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline-root", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=None)
    parser.add_argument("--compute-dtype", default="auto", choices=compute_dtype.CHOICES)
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras
    from tfx import v1 as tfx
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils

    from components.training.models import DEFAULT_MODEL, build_model
    from components.training.trainer import input_fn
    from pipeline.config import PipelineConfig
    from pipeline.metadata import latest_output

    config = PipelineConfig(pipeline_root=args.pipeline_root, data_root="", serving_dir="")
    examples = latest_output(config, "ImportExampleGen", "examples")
    graph = latest_output(config, "Transform", "transform_graph")
    if examples is None or graph is None:
        sys.exit(f"no ImportExampleGen/Transform output in {args.pipeline_root}: run the pipeline first")
    accessor = tfx.components.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
        record_batch_factory=None,
        data_view_decode_fn=None,
    )
    files = [os.path.join(artifact_utils.get_split_uri([examples], "train"), "*")]
    tft_output = tft.TFTransformOutput(graph.uri)

    policy = compute_dtype.keras_policy(args.compute_dtype)

    def fresh_model(policy_name: str = policy):
        with compute_dtype.keras_policy_scope(policy_name):
            model = build_model(args.model or DEFAULT_MODEL)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
        return model

    def dataset(augment: bool, cache: bool = False):
        return input_fn(
            files, accessor, tft_output, args.batch_size, training=True, augment=augment, cache=cache
        )

    with_aug = _fit_rate(fresh_model(), dataset(True).repeat(), args.steps, args.batch_size)
    cached = dataset(True, cache=True)
    for _ in cached:  # one full pass fills the cache (a partial pass is discarded)
        pass
    with_cache = _fit_rate(fresh_model(), cached.repeat(), args.steps, args.batch_size)
    no_aug = _fit_rate(fresh_model(), dataset(False).repeat(), args.steps, args.batch_size)
    images, labels = next(iter(dataset(False)))
    in_memory = tf.data.Dataset.from_tensors((images, labels)).repeat()
    limit = _fit_rate(fresh_model(), in_memory, args.steps, args.batch_size)

    print(
        f"model {args.model or DEFAULT_MODEL}, batch {args.batch_size}, {args.steps} steps, "
        f"{os.cpu_count()} cores, policy {policy}"
    )
    print(f"input_fn with augmentation     : {with_aug:7.1f} images/s  ({with_aug / limit:.2f} x limit)")
    print(f"  ... from the filled cache    : {with_cache:7.1f} images/s  ({with_cache / limit:.2f} x limit)")
    print(f"input_fn without augmentation  : {no_aug:7.1f} images/s  ({no_aug / limit:.2f} x limit)")
    print(f"in-memory tensors (the limit)  : {limit:7.1f} images/s")
    if policy != "float32":
        limit32 = _fit_rate(fresh_model("float32"), in_memory, args.steps, args.batch_size)
        print(
            f"in-memory tensors, float32     : {limit32:7.1f} images/s  "
            f"({policy} is {limit / limit32:.2f} x faster)"
        )


if __name__ == "__main__":
    main()
