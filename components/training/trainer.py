"""TFX Trainer entry point (`run_fn`) and the exported signatures.

Training reads the raw Examples and applies the Transform graph on the fly
(Transform runs with materialize=False by default): decoded 224x224 float images
are ~200 KB each, ten times the JPEG, so materialising them costs more disk and
I/O than decoding (figures: benchmarks/pipeline_components.py, README).

Exported SavedModel signatures (DESIGN.md):
  serving_default(examples: string[N])   serialized tf.Example, only `image` needed
  predict_images(image_bytes: string[N]) encoded JPEG/PNG
  gradcam(image_bytes: string[N])        + heatmap float32 [N, 224, 224] in [0, 1]
All return probabilities float32 [N, 4], class_id int64 [N], class_name string [N].
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components.signature_names import (CLASS_ID, CLASS_NAME, EXAMPLES_INPUT, GRADCAM, HEATMAP,
                                        IMAGE_BYTES_INPUT, PREDICT_IMAGES, PROBABILITIES,
                                        SERVING_DEFAULT)
from components.training import calibration
from components.training.models import DEFAULT_MODEL, GRADCAM_LAYER, LOGITS_LAYER, build_model
from components.transform.preprocessing import CHANNELS, IMAGE_SIZE, IMAGE_XF, LABEL_XF
from data_prep import contract

# Trainer custom_config keys and defaults (pipeline.config fills them).
DEFAULTS = {
    "model": DEFAULT_MODEL,
    "weights": None,
    "epochs": 15,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "patience": 5,
    "augment": True,
    "seed": 0,
    "materialized": False,   # examples are Transform's output, not raw Examples
    "calibrate": True,       # temperature scaling fitted on the eval split
}


def _augmenter(seed: int) -> keras.Sequential:
    """Training-only augmentation: small rigid/affine moves, left-right flip, contrast.

    Axial slices are roughly left-right symmetric and tumours occur on either side,
    so a horizontal flip makes a new plausible image; vertical flips do not.
    """
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 3),
        keras.layers.RandomContrast(0.2, seed=seed + 4),
    ], name="augment")


def input_fn(file_pattern: list[str], data_accessor: tfx.components.DataAccessor,
             tf_transform_output: tft.TFTransformOutput, batch_size: int,
             training: bool, augment: bool = False, seed: int = 0,
             materialized: bool = False) -> tf.data.Dataset:
    """Examples → (image [B,224,224,1], label [B]).

    Raw Examples go through the Transform graph here; `materialized` examples
    were transformed by the Transform component already.
    """
    metadata = (tf_transform_output.transformed_metadata if materialized
                else tf_transform_output.raw_metadata)
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle=training,
                                       shuffle_seed=seed, num_epochs=1,
                                       shuffle_buffer_size=2048),
        metadata.schema)
    if materialized:
        def transform(xf):
            return tf.reshape(xf[IMAGE_XF], [-1, IMAGE_SIZE, IMAGE_SIZE, CHANNELS]), xf[LABEL_XF]
    else:
        tft_layer = tf_transform_output.transform_features_layer()

        def transform(raw):
            xf = tft_layer(raw)
            return xf[IMAGE_XF], xf[LABEL_XF]

    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        aug = _augmenter(seed)
        dataset = dataset.map(lambda x, y: (tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def cosine_schedule(base_lr: float, epochs: int):
    """Per-epoch cosine decay from base_lr to ~0: the last epochs settle the weights
    and batch-norm statistics, which a constant rate leaves jumpy on small data."""
    def lr(epoch: int, _current=None) -> float:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return lr


def _outputs(probs: tf.Tensor) -> dict:
    class_id = tf.argmax(probs, axis=1, output_type=tf.int64)
    return {
        PROBABILITIES: probs,
        CLASS_ID: class_id,
        CLASS_NAME: tf.gather(tf.constant(contract.CLASS_NAMES), class_id),
    }


def make_signatures(model: keras.Model, tf_transform_output: tft.TFTransformOutput) -> dict:
    """The three serving signatures; `model.tft_layer` must be set (it is tracked with the model)."""
    raw_spec = tf_transform_output.raw_feature_spec()
    image_only_spec = {contract.IMAGE_KEY: raw_spec[contract.IMAGE_KEY]}
    grad_model = keras.Model(
        model.inputs, [model.get_layer(GRADCAM_LAYER).output, model.get_layer(LOGITS_LAYER).output])

    def images_to_model_input(image_bytes):
        raw = {contract.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])}
        return model.tft_layer(raw)[IMAGE_XF]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(examples):
        parsed = tf.io.parse_example(examples, image_only_spec)
        return _outputs(model(model.tft_layer(parsed)[IMAGE_XF], training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def predict_images(image_bytes):
        return _outputs(model(images_to_model_input(image_bytes), training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def gradcam(image_bytes):
        x = images_to_model_input(image_bytes)
        with tf.GradientTape() as tape:
            features, logits = grad_model(x, training=False)
            tape.watch(features)
            class_id = tf.argmax(logits, axis=1, output_type=tf.int64)
            score = tf.gather(logits, class_id, batch_dims=1)  # pre-softmax class score
        grads = tape.gradient(score, features)                # [N, h, w, C]
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        heatmap = tf.math.divide_no_nan(cam, peak)
        # The model's own (calibrated) probabilities, as the other signatures return.
        probs = model(x, training=False)
        return {HEATMAP: heatmap, CLASS_ID: class_id, PROBABILITIES: probs}

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
    for images, batch_labels in eval_ds:
        logits.append(logits_model(images, training=False).numpy())
        labels.append(batch_labels.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels).astype(int)
    temperature = calibration.fit_temperature(logits, labels)
    report = calibration.calibration_report(logits, labels, temperature)
    logging.info("Temperature scaling on eval: %s", report)
    with open(os.path.join(run_dir, "calibration.json"), "w") as f:
        json.dump(report, f, indent=1)
    return calibration.with_temperature(model, temperature)


def _config(fn_args: tfx.components.FnArgs) -> dict:
    config = dict(DEFAULTS)
    config.update({k: v for k, v in (fn_args.custom_config or {}).items() if v is not None})
    return config


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains, keeps the best epoch by eval loss, exports the SavedModel with signatures."""
    config = _config(fn_args)
    keras.utils.set_random_seed(int(config["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch = int(config["batch_size"])
    materialized = bool(config["materialized"])
    train_ds = input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                        batch, training=True, augment=bool(config["augment"]),
                        seed=int(config["seed"]), materialized=materialized)
    eval_ds = input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                       batch, training=False, materialized=materialized)

    model = build_model(config["model"], config["weights"])
    model.compile(optimizer=keras.optimizers.Adam(float(config["learning_rate"])),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.summary(print_fn=logging.info)

    run_dir = fn_args.model_run_dir
    os.makedirs(run_dir, exist_ok=True)
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv")),
        keras.callbacks.LearningRateScheduler(
            cosine_schedule(float(config["learning_rate"]), int(config["epochs"]))),
        # Not before half-way: at the high early learning rates eval loss jumps about
        # (seen on the real set) and would stop a run that is still improving.
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(config["patience"]),
                                      start_from_epoch=int(config["epochs"]) // 2,
                                      restore_best_weights=True),
    ]
    history = model.fit(train_ds, validation_data=eval_ds, epochs=int(config["epochs"]),
                        callbacks=callbacks, verbose=2)
    with open(os.path.join(run_dir, "history.json"), "w") as f:
        json.dump({"config": config, "history": {k: [float(v) for v in vals]
                                                 for k, vals in history.history.items()}}, f, indent=1)

    if config["calibrate"]:
        model = _calibrate(model, eval_ds, run_dir)
    model.tft_layer = tf_transform_output.transform_features_layer()
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=make_signatures(model, tf_transform_output))
