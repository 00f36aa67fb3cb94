"""TFX Trainer entry point (`run_fn`) and the exported signatures.

Training reads the raw Examples and applies the Transform graph on the fly
(Transform runs with materialize=False by default): decoded 224x224 float images
are ~200 KB each, ten times the JPEG, so materialising them costs more disk and
I/O than decoding (figures: benchmarks/pipeline_components.py, docs/benchmarks.md).

Exported SavedModel signatures (DESIGN.md):
  serving_default(examples: string[N])   serialized tf.Example, only `image` needed
  predict_images(image_bytes: string[N]) encoded JPEG/PNG
  gradcam(image_bytes: string[N])        + heatmap float32 [N, 224, 224] in [0, 1]
All return probabilities float32 [N, 4], class_id int64 [N], class_name string [N]
(gradcam: not class_name), and, with abstention fitted (the default), ood_score
float32 [N], abstain bool [N] and abstain_reason string [N] (abstention.py).
"""

from __future__ import annotations

import contextlib
import time
import math
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from btmri.documents import TrainerConfig, parse_trainer_config
from btmri.spec import (
    DISTRIBUTION_MULTI_WORKER,
    INPUT_SHARDING_DATA,
    SMALL_INPUT_MODELS,
    TRAINER_KERNELS_LOG,
    TRAINER_PHASE_LOG,
    TRAINING_SIZE_LOG,
    base_phase_size_error,
)
from btmri.layout import CALIBRATION_FILE, HISTORY_CSV_FILE, HISTORY_FILE, TENSORBOARD_DIR
from btmri.spec import (
    CLASS_ID,
    CLASS_NAME,
    EXAMPLES_INPUT,
    GRADCAM,
    HEATMAP,
    IMAGE_BYTES_INPUT,
    PREDICT_IMAGES,
    PROBABILITIES,
    SERVING_DEFAULT,
)
from components.training import abstention, calibration, distribution, gradcam as cam, outliers, compute_dtype
from components.training import random_draws as draws
from components.training.augment import (
    AcquisitionConfig,
    SequenceRemapConfig,
    acquisition_batch,
    augment_batch,
    sequence_remap_batch,
)
from components.training.counterfactual import CounterfactualConfig, box_masks, counterfactual_batch
from components.training.lesion_guidance import LesionGuidedModel, lesion_cells
from components.training.epoch_clock import EpochClock
from components.training.schedule import ScheduleCallback
from components.training.models import (
    CLASS_EVIDENCE_LAYER,
    GRADCAM_FINE_LAYER,
    GRADCAM_LAYER,
    LOGITS_LAYER,
    build_model,
)
from components.transform.head_framing import maps_to_image
from components.transform.preprocessing import (
    CHANNELS,
    HEAD_BOX_XF,
    IMAGE_SIZE,
    IMAGE_XF,
    LABEL_XF,
    LESION_BOX_XF,
)
from btmri.spec import CLASS_NAMES, IMAGE_KEY, LABEL_KEY, NUM_CLASSES, PATIENT_KEY

# Tumour boxes are marked on this grid of cells: the evidence maps of
# mri_resnet_evidence (14x14); the loss pools them to a coarser map (mri_resnet's 7x7).
CAM_SIZE = 14

# Examples held in the shuffle buffer of the cached training set (each ~200 KB).
CACHE_SHUFFLE_BUFFER = 8192


def input_fn(
    file_pattern: list[str],
    data_accessor: tfx.components.DataAccessor,
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int,
    training: bool,
    **options,
) -> tf.data.Dataset:
    """Examples → (image [B,size,size,1], (label [B], lesion cells [B,g,g,1])), g the CAM
    grid at that size (CAM_SIZE at full size): examples() (`materialized`, `cache`,
    `seed`) then batches() (`seed` and the rest: augment, counterfactuals, shard_policy,
    acquisition, sequence_remap, repeat, size).

    Lesion cells mark the CAM cells the tumour box touches (all zero without a box;
    lesion_guidance.py). `counterfactuals` (training only) removes lesions and decoys
    before the geometric augmentation, which then moves the box with the image.
    `acquisition` (training only) changes every image's look after both (filled holes
    get the same look as the rest) and moves nothing (augment.AcquisitionConfig);
    `sequence_remap` (training only) then gives a share of them another sequence's
    tissue contrast (augment.SequenceRemapConfig).

    Raw Examples go through the Transform graph here; `materialized` examples
    were transformed by the Transform component already. `cache` keeps the
    transformed images in memory after the first pass (~200 KB each), so later
    epochs neither read nor decode; training then reshuffles every epoch.

    `shard_policy` (multi-worker training only): how workers split the dataset,
    distribution.sharded; the batches stay global batches, the strategy splits them.

    `repeat`: the batches go round forever (each round reshuffled), so the caller gives
    Keras `steps_per_epoch` (steps_per_epoch()) and one iterator serves every epoch.
    Keras otherwise makes a new iterator each epoch, and destroying the old one waits
    for tf.data's autotuning thread to wake: 14 s an epoch on the phantoms, 40 s on
    some epochs of the real set (docs/experiments.md, 2026-12-07).

    `size` < IMAGE_SIZE: every image is shrunk last, after fills and augmentation at full
    size (the base-rate phase's smaller images, TrainerConfig.base_phase_size).
    """
    read = {k: options.pop(k) for k in ("materialized", "cache") if k in options}
    source = examples(
        file_pattern, data_accessor, tf_transform_output, batch_size, training, options.get("seed", 0), **read
    )
    return batches(source, training, **options)


def examples(
    file_pattern: list[str],
    data_accessor: tfx.components.DataAccessor,
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int,
    training: bool,
    seed: int = 0,
    materialized: bool = False,
    cache: bool = False,
) -> tf.data.Dataset:
    """Batches of (image [B,224,224,1], label [B], box [B,4]) as Transform makes them,
    cached (input_fn). Several batches() built on one of these share its cache."""
    metadata = tf_transform_output.transformed_metadata if materialized else tf_transform_output.raw_metadata
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(
            batch_size=batch_size, shuffle=training, shuffle_seed=seed, num_epochs=1, shuffle_buffer_size=2048
        ),
        metadata.schema,
    )

    def boxes_of(xf):
        if LESION_BOX_XF in xf:
            return tf.reshape(tf.cast(xf[LESION_BOX_XF], tf.float32), [-1, 4])
        # Data prepared before boxes existed: no box anywhere.
        return tf.fill([tf.shape(xf[LABEL_XF])[0], 4], -1.0)

    if materialized:

        def transform(xf):
            images = tf.reshape(xf[IMAGE_XF], [-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS])
            return images, xf[LABEL_XF], boxes_of(xf)
    else:
        tft_layer = tf_transform_output.transform_features_layer()

        def transform(raw):
            xf = tft_layer(raw)
            return xf[IMAGE_XF], xf[LABEL_XF], boxes_of(xf)

    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    if cache and training:
        return (
            dataset.unbatch()
            .cache()
            .shuffle(CACHE_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
        )
    return dataset.cache() if cache else dataset


def cam_grid(size: int) -> int:
    """The CAM grid's side for images of side `size` (CAM_SIZE at IMAGE_SIZE)."""
    return size * CAM_SIZE // IMAGE_SIZE


def batches(
    dataset: tf.data.Dataset,
    training: bool,
    augment: bool = False,
    seed: int = 0,
    counterfactuals: CounterfactualConfig | None = None,
    shard_policy: str | None = None,
    acquisition: AcquisitionConfig | None = None,
    sequence_remap: SequenceRemapConfig | None = None,
    repeat: bool = False,
    size: int = IMAGE_SIZE,
) -> tf.data.Dataset:
    """examples() → what Keras fits on and evaluates (input_fn)."""
    grid = cam_grid(size)

    def finish(index, batch):
        images, labels, boxes = batch
        # Stateless draws keyed by (seed, batch index): the same for a seed, new in every
        # batch, and runnable on parallel threads under op determinism (random_draws.py).
        key = draws.batch_key(seed, index)
        if training and counterfactuals is not None:
            images, labels, boxes = counterfactual_batch(images, labels, boxes, counterfactuals, seed=key)
        if training and augment:
            images, boxes = augment_batch(images, seed=key, boxes=boxes, acquisition=acquisition)
        elif training and acquisition is not None:
            images = acquisition_batch(images, acquisition, seed=key)
        if training and sequence_remap is not None:
            images = sequence_remap_batch(images, sequence_remap, seed=key)
        if size != IMAGE_SIZE:
            images = tf.image.resize(images, [size, size], antialias=True)
        return images, (labels, lesion_cells(box_masks(boxes, grid * 8, grid * 8), grid))

    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    if shard_policy is not None:
        dataset = distribution.sharded(dataset, shard_policy)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _outputs(probs: tf.Tensor) -> dict:
    class_id = tf.argmax(probs, axis=1, output_type=tf.int64)
    return {
        PROBABILITIES: probs,
        CLASS_ID: class_id,
        CLASS_NAME: tf.gather(tf.constant(CLASS_NAMES), class_id),
    }


def make_signatures(
    model: keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    abstention_spec: abstention.AbstentionSpec | None = None,
) -> dict:
    """The three serving signatures; `model.tft_layer` must be set (it is tracked with the model).
    With `abstention_spec`, each also returns ood_score, abstain and abstain_reason, from
    the same forward pass that gives the probabilities."""
    raw_spec = tf_transform_output.raw_feature_spec()
    image_only_spec = {IMAGE_KEY: raw_spec[IMAGE_KEY]}
    layer_names = [layer.name for layer in model.layers]
    # A model with class evidence maps tags them as its Grad-CAM layer; its coarse
    # heatmap is the predicted class's map itself (gradcam.evidence_map).
    explicit_evidence = CLASS_EVIDENCE_LAYER in layer_names
    maps = [model.get_layer(GRADCAM_LAYER).output]
    if GRADCAM_FINE_LAYER in layer_names:
        maps.append(model.get_layer(GRADCAM_FINE_LAYER).output)
    grad_model = keras.Model(model.inputs, [maps, model.get_layer(LOGITS_LAYER).output])
    scorer = None
    if abstention_spec is not None:
        scorer, _ = abstention.scoring_model(model, abstention_spec.features)

    def scored(x) -> tuple[tf.Tensor, dict]:
        """(probabilities, abstention outputs) of model inputs, in one pass."""
        if scorer is None:
            return model(x, training=False), {}
        probs, *features = scorer(x, training=False)
        return probs, abstention.outputs(abstention_spec, probs, features)

    def transformed(image_bytes):
        return model.tft_layer({IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})

    def images_to_model_input(image_bytes):
        return transformed(image_bytes)[IMAGE_XF]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, image_only_spec)
        probs, abstained = scored(model.tft_layer(parsed)[IMAGE_XF])
        return {**_outputs(probs), **abstained}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def predict_images(image_bytes):
        probs, abstained = scored(images_to_model_input(image_bytes))
        return {**_outputs(probs), **abstained}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def gradcam(image_bytes):
        xf = transformed(image_bytes)
        x = xf[IMAGE_XF]
        with tf.GradientTape() as tape:
            features, logits = grad_model(x, training=False)
            class_id = tf.argmax(logits, axis=1, output_type=tf.int64)
            score = tf.gather(logits, class_id, batch_dims=1)  # pre-softmax class score
        coarse = cam.evidence_map(features[0], class_id) if explicit_evidence else None
        heatmap = cam.heatmap(IMAGE_SIZE, features, tape.gradient(score, features), coarse=coarse)
        if HEAD_BOX_XF in xf:  # the model saw the head crop; clients sent the whole image
            heatmap = maps_to_image(heatmap, xf[HEAD_BOX_XF], IMAGE_SIZE)
            heatmap = tf.math.divide_no_nan(heatmap, tf.reduce_max(heatmap, axis=[1, 2], keepdims=True))
        # The model's own (calibrated) probabilities, as the other signatures return.
        probs, abstained = scored(x)
        return {HEATMAP: heatmap, CLASS_ID: class_id, PROBABILITIES: probs, **abstained}

    return {
        SERVING_DEFAULT: serve_examples.get_concrete_function(),
        PREDICT_IMAGES: predict_images.get_concrete_function(),
        GRADCAM: gradcam.get_concrete_function(),
    }


def _calibrate(model: keras.Model, eval_ds: tf.data.Dataset, run_dir: str) -> keras.Model:
    """Fits the temperature on the eval split (never trained on) and returns the
    calibrated model; the figures go to calibration.json beside the history."""
    logits_model = keras.Model(model.inputs, model.get_layer(LOGITS_LAYER).output)
    logits, labels = [], []
    for images, (batch_labels, _) in eval_ds:
        logits.append(logits_model(images, training=False).numpy())
        labels.append(batch_labels.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels).astype(int)
    temperature = calibration.fit_temperature(logits, labels)
    report = calibration.calibration_report(logits, labels, temperature)
    logging.info("Temperature scaling on eval: %s", report)
    with open(os.path.join(run_dir, CALIBRATION_FILE), "w") as f:
        json.dump(report, f, indent=1)
    return calibration.with_temperature(model, temperature)


def smoothed_sparse_crossentropy(smoothing: float, per_example: bool = False):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none).
    Smoothing keeps the network from driving training images to probability 1, which
    it otherwise does by mid-schedule on the real set (train accuracy 0.998).
    `per_example`: one loss per example (under a tf.distribute strategy, where the
    training step averages over the global batch itself); else their mean."""
    categorical = (
        keras.losses.CategoricalCrossentropy(label_smoothing=smoothing, reduction=keras.losses.Reduction.NONE)
        if per_example
        else keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    )

    def loss(labels, probabilities):
        one_hot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), NUM_CLASSES)
        return categorical(one_hot, probabilities)

    return loss


def _optimizer(config: TrainerConfig) -> keras.optimizers.Optimizer:
    weight_decay = config.weight_decay
    if weight_decay <= 0:
        return keras.optimizers.Adam(config.learning_rate)
    optimizer = keras.optimizers.AdamW(config.learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def acquisition_config(config: TrainerConfig) -> AcquisitionConfig | None:
    """The acquisition-style augmentation a Trainer config asks for; None when off."""
    strength = config.acquisition_strength
    if not config.acquisition_augment or strength <= 0:
        return None
    return AcquisitionConfig(strength=strength)


def sequence_remap_config(config: TrainerConfig) -> SequenceRemapConfig | None:
    """The sequence-look augmentation a Trainer config asks for; None when off."""
    if config.sequence_remap <= 0:
        return None
    return SequenceRemapConfig(rate=config.sequence_remap)


def count_examples(file_patterns: list[str]) -> int:
    """How many records a split's TFRecord files hold (ExampleGen writes them gzipped);
    reads the records without parsing them."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    if not files:
        raise ValueError(f"no TFRecord files match {file_patterns}")
    total = 0
    for name in files:
        records = tf.data.TFRecordDataset(name, compression_type="GZIP" if name.endswith(".gz") else "")
        total += int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    return total


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in one pass over `examples` (the last one partial)."""
    if examples <= 0:
        raise ValueError("the training split has no examples")
    return math.ceil(examples / batch_size)


class TrainerData:
    """The Trainer's datasets at any image size, the training and eval examples read,
    transformed and cached once (examples()) however many sizes are asked for.
    Multi-worker: training files split by file (input_sharding), eval (few files: prepare
    writes proportionally fewer) by example. The training batches repeat (input_fn's
    `repeat`): one pass over the split is an epoch, `steps` batches."""

    def __init__(self, fn_args, config: TrainerConfig, tf_transform_output, multi_worker: bool):
        self.config, self.multi_worker = config, multi_worker
        self.steps = steps_per_epoch(count_examples(fn_args.train_files), config.batch_size)
        read = dict(
            data_accessor=fn_args.data_accessor,
            tf_transform_output=tf_transform_output,
            batch_size=config.batch_size,
            seed=config.seed,
            materialized=config.materialized,
            cache=config.cache,
        )
        self._train_examples = examples(fn_args.train_files, training=True, **read)
        self._eval_examples = examples(fn_args.eval_files, training=False, **read)
        self._made: dict = {}

    def train(self, size: int = IMAGE_SIZE) -> tf.data.Dataset:
        config = self.config
        if ("train", size) not in self._made:
            self._made["train", size] = batches(
                self._train_examples,
                training=True,
                augment=config.augment,
                seed=config.seed,
                counterfactuals=CounterfactualConfig(
                    lesion_rate=config.lesion_removal_rate,
                    decoy_rate=config.decoy_removal_rate,
                    paste_rate=config.lesion_paste_rate,
                ),
                shard_policy=config.input_sharding if self.multi_worker else None,
                acquisition=acquisition_config(config),
                sequence_remap=sequence_remap_config(config),
                repeat=True,
                size=size,
            )
        return self._made["train", size]

    def eval(self, size: int = IMAGE_SIZE) -> tf.data.Dataset:
        if ("eval", size) not in self._made:
            self._made["eval", size] = batches(
                self._eval_examples,
                training=False,
                shard_policy=INPUT_SHARDING_DATA if self.multi_worker else None,
                size=size,
            )
        return self._made["eval", size]


def eval_units(
    fn_args, tf_transform_output: tft.TFTransformOutput, config: TrainerConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, unit) of every eval example, in input_fn's eval order (no shuffling; the
    same reader and batches): the patient or near-duplicate group `prepare` wrote, which
    the abstention's cross-fitting holds out together. None where the examples carry no
    unit (materialized examples: Transform drops it; data prepared before units)."""
    raw_spec = tf_transform_output.raw_feature_spec()
    if config.materialized or PATIENT_KEY not in raw_spec:
        return None
    dataset = fn_args.data_accessor.tf_dataset_factory(
        fn_args.eval_files,
        tfxio.TensorFlowDatasetOptions(batch_size=config.batch_size, shuffle=False, num_epochs=1),
        tf_transform_output.raw_metadata.schema,
    )

    def flat(values):
        values = tf.sparse.to_dense(values) if isinstance(values, tf.SparseTensor) else values
        return tf.reshape(values, [-1]).numpy()

    labels, units = [], []
    for batch in dataset:
        labels.append(flat(batch[LABEL_KEY]))
        units.append(flat(batch[PATIENT_KEY]))
    if not labels:
        return None
    return np.concatenate(labels).astype(int), np.array([u.decode("utf-8") for u in np.concatenate(units)])


def _guided_model(config: TrainerConfig, strategy, policy: str):
    """(the network, the lesion-guided training wrapper), built and compiled in the
    strategy's scope under the compute dtype."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        with compute_dtype.keras_policy_scope(policy):
            model = build_model(config.model, config.weights)
        model.summary(print_fn=logging.info)
        guided = LesionGuidedModel(
            model,
            smoothed_sparse_crossentropy(config.label_smoothing, per_example=strategy is not None),
            evidence_weight=config.evidence_weight,
            distributed=strategy is not None,
        )
        guided.compile(optimizer=_optimizer(config))
    return model, guided


def base_phase_size(config: TrainerConfig) -> int:
    """The image side of the base-rate phase: config.base_phase_size for models that can
    train smaller (spec.SMALL_INPUT_MODELS), else full size."""
    if config.model not in SMALL_INPUT_MODELS:
        return IMAGE_SIZE
    if (problem := base_phase_size_error(config.base_phase_size)) is not None:
        raise ValueError(problem)
    return config.base_phase_size


def _train(
    guided, data: TrainerData, config: TrainerConfig, run_dir: str, strategy
) -> tuple[dict, dict, dict]:
    """Fits on the schedule; (Keras history, the schedule's summary, where each epoch's
    wall time went: epoch_clock.EpochClock).

    With a smaller base-phase size the fit runs twice on one model, optimizer and set of
    callbacks: on small images until the schedule says full size (the last
    config.full_size_share of the anneal), then on full-size images to the end. An epoch at 128 px
    cost 0.4 of one at 224 in the real-data run (docs/experiments.md)."""
    schedule = ScheduleCallback(
        config.schedule, config.learning_rate, config.epochs, config.patience, config.full_size_share
    )
    clock = EpochClock()
    csv_path = os.path.join(run_dir, HISTORY_CSV_FILE)
    if os.path.exists(csv_path):
        os.remove(csv_path)
    callbacks = [
        schedule,  # first: the epoch's rate is in the logs the others write
        keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, TENSORBOARD_DIR)),
        keras.callbacks.CSVLogger(csv_path, append=True),  # appended to by each fit
        clock,  # last: its epoch ends after the others' work
    ]
    small = base_phase_size(config)
    # The base phase ends at the latest one epoch before the last (full_size_from), so
    # after it the full-size fit always has an epoch to run.
    sizes = [small, IMAGE_SIZE] if small != IMAGE_SIZE and schedule.full_size_from() > 0 else [IMAGE_SIZE]
    history: dict = {}
    epochs_run = 0
    with trainer_phase("training"):
        for size in sizes:
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                guided.train_at(size)
            schedule.stop_at_full_size = size != IMAGE_SIZE
            if len(sizes) > 1:
                logging.info(TRAINING_SIZE_LOG, epochs_run + 1, size, size)  # a console line
            fitted = guided.fit(
                data.train(size),
                validation_data=data.eval(size),
                epochs=config.epochs,
                initial_epoch=epochs_run,
                steps_per_epoch=data.steps,
                callbacks=callbacks,
                verbose=2,
            )
            for key, values in fitted.history.items():
                history.setdefault(key, []).extend(values)
            epochs_run = len(history.get("loss", []))
    summary = schedule.summary()
    summary["base_phase_size"] = small if len(sizes) > 1 else IMAGE_SIZE
    summary["base_phase_epochs"] = schedule.full_size_from() if len(sizes) > 1 else 0
    logging.info("Training schedule: %s", json.dumps(summary))
    epoch_seconds = clock.summary()
    logging.info("Epoch seconds: %s", json.dumps(epoch_seconds["totals"]))
    return history, summary, epoch_seconds


def _write_history(
    run_dir: str,
    config: TrainerConfig,
    policy: str,
    history: dict,
    schedule: dict,
    epoch_seconds: dict,
    strategy,
) -> None:
    record = {
        "config": config.to_dict(),
        "compute_dtype_policy": policy,
        "schedule": schedule,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "epoch_seconds": epoch_seconds,
    }
    if strategy is not None:
        record["distribution"] = {
            "strategy": config.distribution,
            "replicas_in_sync": int(strategy.num_replicas_in_sync),
            "task": distribution.task_name(strategy),
        }
    with open(os.path.join(run_dir, HISTORY_FILE), "w") as f:
        json.dump(record, f, indent=1)


def _calibrate_fit_and_export(
    model, eval_ds, tf_transform_output, config: TrainerConfig, run_dir, serving_model_dir, units=None
):
    """The chief's part after training: temperature, abstention (cross-fitted by `units`,
    eval_units()), the SavedModel."""
    if config.calibrate:
        with trainer_phase("calibration"):
            model = _calibrate(model, eval_ds, run_dir)
    spec = None
    if config.abstention:
        with trainer_phase("abstention fitting"):
            spec = fit_abstention(model, eval_ds, tf_transform_output, config, units)
    with trainer_phase("export"):
        model.tft_layer = tf_transform_output.transform_features_layer()
        model.save(
            serving_model_dir, save_format="tf", signatures=make_signatures(model, tf_transform_output, spec)
        )
    if spec is not None:
        abstention.write(spec, serving_model_dir)
        abstention.write(spec, run_dir)


def seed_training(config: TrainerConfig) -> None:
    """Seeds Python, NumPy and TensorFlow; with config.deterministic, also TensorFlow's
    deterministic kernels and input order (process-wide, from here on). Without them two
    runs of one seed may differ: TensorFlow picks kernels whose reductions run in any
    order (docs/training.md). The input pipeline's draws are stateless (random_draws.py),
    so op determinism keeps its maps parallel."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains on the schedule (components/training/schedule.py), exports the SavedModel.

    With a distribution (TrainerConfig.distribution; components/training/distribution.py)
    the model and optimizer are built in the strategy's scope and Keras distributes the
    datasets; only the chief calibrates, fits abstention and exports, into the real
    serving_model_dir and model_run_dir."""
    config = parse_trainer_config(fn_args.custom_config)
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow's first operation.
    strategy = distribution.make_strategy(config.distribution)
    seed_training(config)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    multi_worker = config.distribution == DISTRIBUTION_MULTI_WORKER
    data = TrainerData(fn_args, config, tf_transform_output, multi_worker)
    policy = compute_dtype.keras_policy(config.compute_dtype)
    logging.info(
        TRAINER_KERNELS_LOG,
        policy,
        "on" if compute_dtype.onednn_enabled() else "off",
    )
    model, guided = _guided_model(config, strategy, policy)

    run_dir = distribution.write_dir(fn_args.model_run_dir, strategy)
    serving_model_dir = distribution.write_dir(fn_args.serving_model_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    history, schedule, epoch_seconds = _train(guided, data, config, run_dir, strategy)
    _write_history(run_dir, config, policy, history, schedule, epoch_seconds, strategy)

    # The export copy holds plain float32 variables (no distributed ones): calibration,
    # abstention and the SavedModel are then the same code with or without a strategy.
    # Every worker makes it: reading a distributed model's weights is collective (the
    # batch-norm statistics are synchronised on read).
    if policy != "float32" or strategy is not None:
        model = _float32_copy(model, config.model)
    if not distribution.is_chief(strategy):
        # What follows uses the plain copy only (no collective ops), so it is the
        # chief's alone; the barrier holds this worker until the chief has exported.
        logging.info("Task %s: training done; the chief exports", distribution.task_name(strategy))
        distribution.finish(strategy, serving_model_dir, run_dir)
        return
    units = eval_units(fn_args, tf_transform_output, config) if config.abstention else None
    _calibrate_fit_and_export(
        model, data.eval(), tf_transform_output, config, run_dir, serving_model_dir, units
    )
    distribution.finish(strategy, serving_model_dir, run_dir)


@contextlib.contextmanager
def trainer_phase(name: str):
    """Logs how long one phase of the Trainer took (training, calibration, abstention
    fitting, export): the run's console and summary list them."""
    started = time.time()
    yield
    logging.info(TRAINER_PHASE_LOG, name, time.time() - started)


def fit_abstention(
    model: keras.Model,
    eval_ds: tf.data.Dataset,
    tf_transform_output: tft.TFTransformOutput,
    config: TrainerConfig,
    units: tuple[np.ndarray, np.ndarray] | None = None,
) -> abstention.AbstentionSpec:
    """Fits the abstention detector on the eval split (never trained on; the served,
    calibrated probabilities), choosing its features with generated outliers.
    `units` (eval_units()): (labels, unit) per eval example in `eval_ds`'s order; the
    cross-fitting then holds out whole patients or groups. Ignored, with a warning,
    when its labels are not `eval_ds`'s (a different order)."""
    scorer, names = abstention.scoring_model(model)
    images, labels = [], []
    for batch_images, (batch_labels, _) in eval_ds:
        images.append(batch_images)
        labels.append(batch_labels.numpy())
    probs, features = abstention.collect(scorer, images)
    labels = np.concatenate(labels).astype(int)
    groups = None
    if units is not None:
        unit_labels, unit_names = units
        if np.array_equal(unit_labels, labels):
            groups = unit_names
        else:
            logging.warning("eval units not in the eval batches' order: abstention cross-fitted by example")
    tft_layer = tf_transform_output.transform_features_layer()
    outlier_features = {}
    per_kind = config.abstention_outliers_per_kind
    if per_kind > 0:
        for kind, pngs in outliers.outlier_images(per_kind, seed=config.seed).items():
            batch = tft_layer({IMAGE_KEY: tf.reshape(tf.constant(pngs), [-1, 1])})[IMAGE_XF]
            outlier_features[kind] = dict(zip(names, abstention.collect(scorer, [batch])[1]))
    spec = abstention.choose(
        dict(zip(names, features)),
        labels,
        probs,
        outlier_features,
        accept=config.abstention_accept,
        notumor_refuse=config.abstention_notumor_refuse,
        notumor_ood_refuse=config.abstention_notumor_ood_refuse,
        ood_share=config.abstention_ood_share,
        seed=config.seed,
        groups=groups,
    )
    logging.info("Abstention fitted on eval: %s", json.dumps(spec.to_json())[:2000])
    return spec


def _float32_copy(model: keras.Model, name: str) -> keras.Model:
    """The same architecture built in float32 with the trained weights: the exported
    model then computes in float32 on any CPU, whatever trained it."""
    copy = build_model(name, weights=None)
    copy.set_weights(model.get_weights())
    return copy
