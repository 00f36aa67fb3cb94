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

from btmri.spec import (
    ABSTAIN,
    ABSTAIN_REASON,
    CLASS_ID,
    EXAMPLES_INPUT,
    HEATMAP,
    IMAGE_BYTES_INPUT,
    OOD_SCORE,
    PROBABILITIES,
)
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
    labels: np.ndarray  # int [N]
    probs: np.ndarray  # float [N, classes]
    sources: list[str]  # path of each image relative to the data folder
    images: list[bytes]  # encoded image of each example
    # The model's abstention outputs (None: a model exported without abstention).
    ood_score: np.ndarray | None = None  # float [N]
    abstain: np.ndarray | None = None  # bool [N]
    abstain_reason: list[str] | None = None
    # The unit of each image (btmri.spec.PATIENT_KEY: "patient:<id>" or "group:<md5>");
    # data prepared without units: each image's source, its own unit. None: not read.
    patients: list[str] | None = None
    # The collection of each image (btmri.spec.COLLECTION_KEY); None: not read.
    collections: list[str] | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def subset(self, keep: np.ndarray) -> Predictions:
        idx = np.flatnonzero(keep)
        return Predictions(
            self.labels[idx],
            self.probs[idx],
            [self.sources[i] for i in idx],
            [self.images[i] for i in idx],
            None if self.ood_score is None else self.ood_score[idx],
            None if self.abstain is None else self.abstain[idx],
            None if self.abstain_reason is None else [self.abstain_reason[i] for i in idx],
            None if self.patients is None else [self.patients[i] for i in idx],
            None if self.collections is None else [self.collections[i] for i in idx],
        )


def load_model(model_dir: str):
    return tf.saved_model.load(model_dir)


def predict_split(model, split_uri: str, batch_size: int = BATCH_SIZE) -> Predictions:
    serving = model.signatures["serving_default"]
    labels, sources, images, patients, collections, probs, batch = [], [], [], [], [], [], []
    abstention = {OOD_SCORE: [], ABSTAIN: [], ABSTAIN_REASON: []}
    has_abstention = ABSTAIN in serving.structured_outputs

    def flush():
        if batch:
            out = serving(**{EXAMPLES_INPUT: tf.constant(batch)})
            probs.append(out[PROBABILITIES].numpy())
            if has_abstention:
                for key, values in abstention.items():
                    values.append(out[key].numpy())
            batch.clear()

    for serialized, example in read_examples(split_uri):
        labels.append(example[spec.LABEL_KEY])
        sources.append(example[spec.SOURCE_KEY])
        images.append(example[spec.IMAGE_KEY])
        patients.append(example.get(spec.PATIENT_KEY) or example[spec.SOURCE_KEY])
        collections.append(example.get(spec.COLLECTION_KEY) or spec.UNKNOWN_COLLECTION)
        batch.append(serialized)
        if len(batch) == batch_size:
            flush()
    flush()
    result = Predictions(
        np.asarray(labels, np.int64),
        np.concatenate(probs) if probs else np.zeros((0, spec.NUM_CLASSES)),
        sources,
        images,
        patients=patients,
        collections=collections,
    )
    if has_abstention and probs:
        result.ood_score = np.concatenate(abstention[OOD_SCORE]).astype(np.float64)
        result.abstain = np.concatenate(abstention[ABSTAIN]).astype(bool)
        result.abstain_reason = [r.decode() for r in np.concatenate(abstention[ABSTAIN_REASON])]
    return result


def gradcam(model, images: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmaps [N, 224, 224] in [0, 1], class ids [N], probabilities [N, classes])
    from the model's own `gradcam` signature."""
    out = model.signatures["gradcam"](**{IMAGE_BYTES_INPUT: tf.constant(images)})
    return out[HEATMAP].numpy(), out[CLASS_ID].numpy(), out[PROBABILITIES].numpy()
