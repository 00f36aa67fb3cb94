"""The model's own predictions on the evaluated split, for the figures TFMA
does not give (ROC curves, calibration, de-duplicated figures, Grad-CAM).

Examples are read from the ImportExampleGen artifact, the very records the
Evaluator scored, and go through the `serving_default` signature as TFMA sent them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from btmri.spec import CLASS_ID, EXAMPLES_INPUT, HEATMAP, IMAGE_BYTES_INPUT, PROBABILITIES
from btmri import spec
from data_prep.tfrecords import parse_example

BATCH_SIZE = 32


def read_examples(split_uri: str) -> Iterator[tuple[bytes, dict]]:
    """(serialized, parsed) for every tf.Example of one split folder of an Examples artifact."""
    files = sorted(tf.io.gfile.glob(os.path.join(split_uri, "*")))
    if not files:
        raise FileNotFoundError(f"no example files in {split_uri}")
    compression = "GZIP" if files[0].endswith(".gz") else ""
    for record in tf.data.TFRecordDataset(files, compression_type=compression):
        serialized = record.numpy()
        yield serialized, parse_example(serialized)


@dataclass
class Predictions:
    labels: np.ndarray        # int [N]
    probs: np.ndarray         # float [N, classes]
    sources: list[str]        # path of each image relative to the data folder
    images: list[bytes]       # encoded image of each example

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def subset(self, keep: np.ndarray) -> Predictions:
        idx = np.flatnonzero(keep)
        return Predictions(self.labels[idx], self.probs[idx],
                           [self.sources[i] for i in idx], [self.images[i] for i in idx])


def load_model(model_dir: str):
    return tf.saved_model.load(model_dir)


def predict_split(model, split_uri: str, batch_size: int = BATCH_SIZE) -> Predictions:
    serving = model.signatures["serving_default"]
    labels, sources, images, probs, batch = [], [], [], [], []

    def flush():
        if batch:
            out = serving(**{EXAMPLES_INPUT: tf.constant(batch)})
            probs.append(out[PROBABILITIES].numpy())
            batch.clear()

    for serialized, example in read_examples(split_uri):
        labels.append(example[spec.LABEL_KEY])
        sources.append(example[spec.SOURCE_KEY])
        images.append(example[spec.IMAGE_KEY])
        batch.append(serialized)
        if len(batch) == batch_size:
            flush()
    flush()
    return Predictions(np.asarray(labels, np.int64),
                       np.concatenate(probs) if probs else np.zeros((0, spec.NUM_CLASSES)),
                       sources, images)


def gradcam(model, images: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmaps [N, 224, 224] in [0, 1], class ids [N], probabilities [N, classes])
    from the model's own `gradcam` signature."""
    out = model.signatures["gradcam"](**{IMAGE_BYTES_INPUT: tf.constant(images)})
    return out[HEATMAP].numpy(), out[CLASS_ID].numpy(), out[PROBABILITIES].numpy()
