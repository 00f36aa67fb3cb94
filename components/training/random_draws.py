"""The random draws of the Trainer's batch transforms (counterfactual fills, augmentation).

Each transform takes a `seed`:
- None: unseeded draws;
- an int: TensorFlow op seeds (`seed + offset` per draw), which pair with the global
  seed (tf.random.set_seed): stateful ops, whose streams advance with every call;
- a key, an int64 tensor [2]: stateless draws, a pure function of the key and the
  draw's offset. `trainer.batches` gives every training batch its own key (the
  training seed, the batch's index).

Keys are what lets `--deterministic` training run the transforms on parallel threads:
under TensorFlow's op determinism a `Dataset.map` that holds a stateful random op
runs serially, one batch at a time (docs/training.md).
"""

from __future__ import annotations

import tensorflow as tf

Seed = int | tf.Tensor | None


def batch_key(seed: int, index: tf.Tensor) -> tf.Tensor:
    """The stateless key of the batch at `index` of a run seeded `seed`."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])


def is_key(seed: Seed) -> bool:
    return isinstance(seed, (tf.Tensor, tf.Variable))


def offset(seed: Seed, k: int) -> Seed:
    """The seed of a draw `k` places along: seed + k, or the key folded with k."""
    if seed is None:
        return None
    if is_key(seed):
        return tf.random.experimental.stateless_fold_in(seed, k)
    return seed + k


def uniform(shape, low=0.0, high=1.0, seed: Seed = None, dtype=tf.float32) -> tf.Tensor:
    if is_key(seed):
        return tf.random.stateless_uniform(shape, seed, low, high, dtype=dtype)
    return tf.random.uniform(shape, low, high, dtype=dtype, seed=seed)


def normal(shape, seed: Seed = None) -> tf.Tensor:
    if is_key(seed):
        return tf.random.stateless_normal(shape, seed)
    return tf.random.normal(shape, seed=seed)


def categorical(logits, samples: int, seed: Seed = None, dtype=tf.int64) -> tf.Tensor:
    if is_key(seed):
        return tf.random.stateless_categorical(logits, samples, seed, dtype=dtype)
    return tf.random.categorical(logits, samples, seed=seed, dtype=dtype)
