"""Benchmark: how close training, evaluation and the exported model come to the machine's limit.

    python benchmarks/training_cost.py --pipeline-root ROOT [--steps 30] [--batch-size 32]
        [--compute-dtype auto|float32|bfloat16] [--saved-model DIR] [--json FILE]
        [--no-deterministic]

Uses the latest ImportExampleGen, Transform (and Trainer) outputs of a pipeline run:
the main job's `runs/pipeline` after `btmri run`, or any `--work-dir`'s `pipeline`.

Prints, for the default model and the Trainer's own input pipeline:
  - the machine's matmul peak, measured here in float32 and bfloat16 (GFLOP/s);
  - the model's FLOPs per image, counted by TensorFlow's profiler on the forward
    graph and on forward + gradients (a training step; the optimizer update is a few
    FLOPs per weight and is left out);
  - training images/s three ways: the whole Trainer step (cached images →
    counterfactual fills → augmentation → lesion-guided model), the model alone on
    one in-memory batch, and the input pipeline alone (each stage added in turn);
  - the share of a training step the input pipeline costs: both share the same cores,
    so it is (1/full - 1/model) / (1/full);
  - achieved FLOP/s against the peak in the compute dtype, for training and for
    evaluation (forward only, the Trainer's eval pass);
  - the exported SavedModel's `predict_images` (encoded images in, float32) in images/s
    and against the float32 peak, when the run exported one.

Training is timed as the Trainer trains by default, with TensorFlow's deterministic
kernels (`--no-deterministic`: without them, as `btmri run --no-deterministic` trains).

Quote the ratios: absolute rates move with whatever else runs on the machine.
`--json FILE` also writes the figures, for `btmri results --from-run --benchmark FILE`
to keep them in the results record.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)
from btmri.documents import TRAINER_DEFAULTS  # noqa: E402
from components.training import compute_dtype  # noqa: E402  (TF-free until a policy is chosen)


def matmul_peak(tf, dtype, n: int = 2048, repeats: int = 15) -> float:
    """GFLOP/s of a large square matmul: what the cores can do in `dtype` at best."""
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    product = tf.function(tf.linalg.matmul)
    product(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = product(a, b)
    result.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def model_flops(tf, model_name: str, training: bool, size: int | None = None) -> float:
    """FLOPs for one image (side `size`, default the model's): forward, or forward +
    gradients of every trainable weight."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    from components.training.models import build_model, view_at
    from components.transform.preprocessing import CHANNELS, IMAGE_SIZE

    side = size or IMAGE_SIZE
    graph = tf.Graph()
    with graph.as_default():
        tf.random.set_seed(0)  # a new graph's own seed: deterministic kernels need one
        model = build_model(model_name)
        if side != IMAGE_SIZE:  # the Trainer's view of the same layers on smaller images
            model = view_at(model, side)
        images = tf.compat.v1.placeholder(tf.float32, [1, side, side, CHANNELS])
        probabilities = model(images, training=training)
        if training:
            tf.gradients(tf.reduce_sum(probabilities), model.trainable_variables)
        options = ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return float(profile(graph, options=options).total_float_ops)


def timed(fn, warmup, steps: int) -> float:
    """Seconds per step of fn(steps) after fn(warmup)."""
    fn(warmup)
    start = time.perf_counter()
    fn(steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline-root", required=True)
    parser.add_argument(
        "--steps", type=int, default=30, help="steps timed per measurement (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
    parser.add_argument("--model", default=None, help="architecture (default: the Trainer's)")
    parser.add_argument("--compute-dtype", default="auto", choices=compute_dtype.COMPUTE_DTYPES)
    parser.add_argument(
        "--saved-model", default=None, help="SavedModel to time (default: the run's latest Trainer model)"
    )
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=TRAINER_DEFAULTS.deterministic,
        help="time with TensorFlow's deterministic kernels, as `btmri run` trains by default "
        "(--no-deterministic: without them)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras
    from tfx import v1 as tfx
    from tfx.components.util import tfxio_utils
    from tfx.types import artifact_utils

    from components.training.counterfactual import CounterfactualConfig
    from components.training.lesion_guidance import LesionGuidedModel
    from components.training.models import build_model
    from components.training.trainer import (
        base_phase_size,
        input_fn,
        seed_training,
        sequence_remap_config,
        smoothed_sparse_crossentropy,
    )
    from components.transform.preprocessing import IMAGE_SIZE
    from pipeline.config import PipelineConfig
    from pipeline.metadata import latest_output

    model_name = args.model or TRAINER_DEFAULTS.model
    config = PipelineConfig(pipeline_root=args.pipeline_root, data_root="", serving_dir="")
    examples = latest_output(config, "ImportExampleGen", "examples")
    graph = latest_output(config, "Transform", "transform_graph")
    if examples is None or graph is None:
        sys.exit(
            f"error: no ImportExampleGen/Transform output in {args.pipeline_root}: run the pipeline first"
        )
    accessor = tfx.components.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([examples], []),
        record_batch_factory=None,
        data_view_decode_fn=None,
    )
    train_files = [os.path.join(artifact_utils.get_split_uri([examples], "train"), "*")]
    tft_output = tft.TFTransformOutput(graph.uri)
    policy = compute_dtype.keras_policy(args.compute_dtype)
    batch = args.batch_size
    counterfactuals = CounterfactualConfig()
    remap = sequence_remap_config(TRAINER_DEFAULTS)
    figures: dict = {"cores": os.cpu_count(), "model": model_name, "batch": batch}
    # The Trainer's own seeding and kernels (process-wide, as there).
    figures["deterministic"] = args.deterministic
    seed_training(dataclasses.replace(TRAINER_DEFAULTS, deterministic=args.deterministic))

    def dataset(fills: bool, augment: bool, sequence: bool = False, size: int = IMAGE_SIZE):
        return input_fn(
            train_files,
            accessor,
            tft_output,
            batch,
            training=True,
            augment=augment,
            cache=True,
            counterfactuals=counterfactuals if fills else None,
            sequence_remap=remap if sequence else None,
            size=size,
        )

    def guided_model(size: int = IMAGE_SIZE):
        with compute_dtype.keras_policy_scope(policy):
            classifier = build_model(model_name)
        guided = LesionGuidedModel(
            classifier,
            smoothed_sparse_crossentropy(TRAINER_DEFAULTS.label_smoothing),
            evidence_weight=TRAINER_DEFAULTS.evidence_weight,
        )
        guided.compile(optimizer=keras.optimizers.Adam(TRAINER_DEFAULTS.learning_rate))
        guided.train_at(size)
        return guided

    def fit_seconds(model, ds) -> float:
        repeated = ds.repeat()
        return timed(lambda n: model.fit(repeated, steps_per_epoch=n, epochs=1, verbose=0), 3, args.steps)

    def iterate_seconds(ds) -> float:
        iterator = iter(ds.repeat())

        def pull(n):
            for _ in range(n):
                images, _ = next(iterator)
            images.numpy()

        return timed(pull, 3, args.steps)

    onednn, native_bf16 = compute_dtype.onednn_enabled(), compute_dtype.cpu_has_bf16()
    print(
        f"{os.cpu_count()} cores, model {model_name}, batch {batch}, {args.steps} steps, policy {policy}, "
        f"oneDNN kernels {'on' if onednn else 'off'}, native bfloat16 {'yes' if native_bf16 else 'no'}, "
        f"deterministic kernels {'on' if args.deterministic else 'off'}"
    )
    peak32 = matmul_peak(tf, tf.float32)
    peak16 = matmul_peak(tf, tf.bfloat16)
    peak = peak16 if policy == "mixed_bfloat16" else peak32
    print(f"matmul peak: float32 {peak32:.0f} GFLOP/s, bfloat16 {peak16:.0f} GFLOP/s")
    forward = model_flops(tf, model_name, training=False)
    step = model_flops(tf, model_name, training=True)
    figures.update(
        policy=policy,
        onednn=onednn,
        native_bfloat16=native_bf16,
        peak_gflops={"float32": peak32, "bfloat16": peak16},
        gflops_per_image={"forward": forward / 1e9, "training_step": step / 1e9},
    )
    print(
        f"FLOPs per image: forward {forward / 1e9:.3f} G, training step {step / 1e9:.3f} G "
        f"({step / forward:.2f} x forward)"
    )

    print("input pipeline alone (images/s; the cache filled by a first pass):")
    stages = [
        ("from the cache", False, False, False),
        ("+ counterfactual fills", True, False, False),
        ("+ geometric augmentation", True, True, False),
    ]
    if remap is not None:
        stages.append(("+ sequence look (the Trainer's)", True, True, True))
    for name, fills, augment, sequence in stages:
        ds = dataset(fills, augment, sequence)  # each dataset object fills its own cache (~200 KB an image)
        start = time.perf_counter()
        count = sum(int(images.shape[0]) for images, _ in ds)
        if not fills:  # the first pass reads, decodes and runs the Transform graph
            print(
                f"  {'first pass (read, decode, Transform graph)':42s}: {count / (time.perf_counter() - start):7.1f}"
            )
        print(f"  {name:42s}: {batch / iterate_seconds(ds):7.1f}")
    trainer_ds = ds  # the last: what the Trainer feeds its model

    images, (labels, cells) = next(iter(trainer_ds))
    in_memory = tf.data.Dataset.from_tensors((images, (labels, cells)))
    model_only = fit_seconds(guided_model(), in_memory)
    full = fit_seconds(guided_model(), trainer_ds)
    share = max(0.0, (full - model_only) / full)
    print("training (lesion-guided model, images/s):")
    print(f"  whole Trainer step        : {batch / full:7.1f}  ({step * batch / full / 1e9:.0f} GFLOP/s)")
    print(
        f"  model alone (in memory)   : {batch / model_only:7.1f}  ({step * batch / model_only / 1e9:.0f} GFLOP/s, "
        f"{step * batch / model_only / 1e9 / peak:.2f} x the {policy} matmul peak)"
    )
    print(f"  input pipeline's share of a step: {share:.2f}")
    figures["training"] = {
        "images_per_s": batch / full,
        "peak_ratio": step * batch / full / 1e9 / peak,
        "model_alone_images_per_s": batch / model_only,
        "model_alone_peak_ratio": step * batch / model_only / 1e9 / peak,
        "input_pipeline_share": share,
    }
    small = base_phase_size(TRAINER_DEFAULTS)
    if small != IMAGE_SIZE:
        # The base-rate phase: fills and augmentation at full size, the model on smaller images.
        small_step = model_flops(tf, model_name, training=True, size=small)
        small_ds = dataset(True, True, remap is not None, size=small)
        for _ in small_ds:  # one whole pass fills its cache, as the full-size one's was
            pass
        small_full = fit_seconds(guided_model(small), small_ds)
        print(
            f"  whole Trainer step, base-rate phase ({small}x{small} images): {batch / small_full:7.1f}  "
            f"({small_step * batch / small_full / 1e9:.0f} GFLOP/s; {full / small_full:.2f} x the "
            f"full-size step's rate; FLOPs per image {small_step / 1e9:.3f} G)"
        )
        figures["training"]["base_phase"] = {
            "size": small,
            "images_per_s": batch / small_full,
            "peak_ratio": small_step * batch / small_full / 1e9 / peak,
            "speedup": full / small_full,
            "gflops_per_image": small_step / 1e9,
        }

    with compute_dtype.keras_policy_scope(policy):
        classifier = build_model(model_name)
    forward_fn = tf.function(lambda x: classifier(x, training=False))
    evaluate = timed(lambda n: [forward_fn(images) for _ in range(n)][-1].numpy(), 2, args.steps)
    print(
        f"evaluation (forward, {policy}): {batch / evaluate:7.1f} images/s "
        f"({forward * batch / evaluate / 1e9:.0f} GFLOP/s, {forward * batch / evaluate / 1e9 / peak:.2f} x peak)"
    )

    figures["evaluation"] = {
        "images_per_s": batch / evaluate,
        "peak_ratio": forward * batch / evaluate / 1e9 / peak,
    }
    try:
        _export(args, config, latest_output, glob, tf, images, batch, forward, peak32, figures)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
            print(f"wrote {args.json}")


def _export(args, config, latest_output, glob, tf, images, batch, forward, peak32, figures) -> None:
    """The exported model's predict_images, timed on the same batch, PNG-encoded."""
    from btmri.spec import IMAGE_BYTES_INPUT, PREDICT_IMAGES

    saved = args.saved_model
    if saved is None:
        model_artifact = latest_output(config, "Trainer", "model")
        candidates = glob.glob(os.path.join(model_artifact.uri, "*")) if model_artifact else []
        saved = candidates[0] if candidates else None
    if saved is None:
        print("export: no Trainer model in this run; pass --saved-model")
        return
    served = tf.saved_model.load(saved).signatures[PREDICT_IMAGES]
    encoded = tf.map_fn(
        lambda im: tf.io.encode_png(tf.cast(im * 255.0, tf.uint8)), images, fn_output_signature=tf.string
    )
    export = timed(lambda n: [served(**{IMAGE_BYTES_INPUT: encoded}) for _ in range(n)], 2, args.steps)
    print(
        f"export ({PREDICT_IMAGES}: decode, frame, float32 model, abstention): {batch / export:7.1f} images/s "
        f"({forward * batch / export / 1e9:.0f} GFLOP/s of model, {forward * batch / export / 1e9 / peak32:.2f} "
        "x the float32 peak)"
    )
    figures["export"] = {
        "images_per_s": batch / export,
        "peak_ratio": forward * batch / export / 1e9 / peak32,
    }


if __name__ == "__main__":
    main()
