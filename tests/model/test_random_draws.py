"""The Trainer's batch transforms draw stateless random numbers keyed by (seed, batch index)
(components/training/random_draws.py): repeatable without thread order mattering, and
free of the stateful random ops that TensorFlow's op determinism runs serially."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.training import random_draws as draws
from components.training import trainer
from components.training.augment import AcquisitionConfig, SequenceRemapConfig
from components.training.counterfactual import CounterfactualConfig

STATEFUL_RANDOM_OPS = {
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "Multinomial",
    "RandomGamma",
    "RandomPoisson",
}


def _source(batches: int = 4, batch: int = 4) -> tf.data.Dataset:
    """The same batch `batches` times: any difference between outputs is the draws'."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch, 224, 224, 1)).astype(np.float32)
    labels = np.arange(batch, dtype=np.int64) % 4
    boxes = np.tile(np.float32([0.3, 0.3, 0.6, 0.6]), (batch, 1))
    return tf.data.Dataset.from_tensors((images, labels, boxes)).repeat(batches)


def _training_batches(seed: int, fills=CounterfactualConfig(), **options) -> tf.data.Dataset:
    return trainer.batches(
        _source(), training=True, augment=True, seed=seed, counterfactuals=fills, **options
    )


def _images(dataset: tf.data.Dataset) -> list[np.ndarray]:
    return [images.numpy() for images, _ in dataset]


def _op_types(dataset: tf.data.Dataset) -> set[str]:
    graph = tf.compat.v1.GraphDef.FromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=dataset._variant_tensor).numpy()
    )
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def test_a_batch_is_a_function_of_the_seed_and_its_index():
    first, again = _images(_training_batches(seed=5)), _images(_training_batches(seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # The same input batch at another index is augmented and filled otherwise ...
    assert not np.allclose(first[0], first[1])
    # ... and another seed changes every batch.
    other = _images(_training_batches(seed=6))
    assert not any(np.allclose(a, b) for a, b in zip(first, other))


def test_the_training_map_holds_no_stateful_random_op():
    dataset = _training_batches(
        seed=0,
        fills=CounterfactualConfig(paste_rate=0.5),  # every transform on
        acquisition=AcquisitionConfig(),
        sequence_remap=SequenceRemapConfig(rate=0.5),
        repeat=True,
    )
    ops = _op_types(dataset)
    assert "StatelessRandomUniformV2" in ops  # the draws are there, as stateless ops
    assert not ops & STATEFUL_RANDOM_OPS, ops & STATEFUL_RANDOM_OPS


def test_int_seeds_and_keys_both_draw_and_keys_fold_by_offset():
    key = draws.batch_key(3, tf.constant(7))
    assert draws.is_key(key) and not draws.is_key(3)
    a = draws.uniform([5], seed=key)
    assert np.array_equal(a, draws.uniform([5], seed=key))
    assert not np.allclose(a, draws.uniform([5], seed=draws.offset(key, 1)))
    assert draws.offset(3, 2) == 5 and draws.offset(None, 2) is None
    picked = draws.categorical(tf.zeros([2, 3]), 4, seed=key, dtype=tf.int32)
    assert picked.shape == (2, 4) and picked.dtype == tf.int32
