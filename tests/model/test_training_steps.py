"""Steps per epoch: the Trainer repeats its training batches and tells Keras how many
make an epoch (components/training/trainer.py, input_fn's `repeat`)."""

from __future__ import annotations

import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
import pytest
import tensorflow as tf

from components.training.trainer import count_examples, steps_per_epoch


def _write_records(path, count: int, compression: str = "") -> None:
    options = tf.io.TFRecordOptions(compression_type=compression)
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for i in range(count):
            writer.write(f"record {i}".encode())


def test_count_examples_reads_gzipped_and_plain_splits(tmp_path):
    gz = tmp_path / "gz"
    gz.mkdir()
    _write_records(gz / "data_tfrecord-00000-of-00002.gz", 5, "GZIP")
    _write_records(gz / "data_tfrecord-00001-of-00002.gz", 2, "GZIP")
    plain = tmp_path / "plain"
    plain.mkdir()
    _write_records(plain / "data.tfrecord", 3)
    assert count_examples([str(gz / "*")]) == 7
    assert count_examples([str(plain / "*")]) == 3
    assert count_examples([str(gz / "*"), str(plain / "*")]) == 10  # mixed: each file its own way


def test_count_examples_names_a_pattern_that_matches_nothing(tmp_path):
    with pytest.raises(ValueError, match="no TFRecord files"):
        count_examples([str(tmp_path / "missing" / "*")])


@pytest.mark.parametrize("examples, batch, steps", [(64, 32, 2), (65, 32, 3), (1, 32, 1), (1359, 32, 43)])
def test_an_epoch_is_one_pass_with_the_last_batch_partial(examples, batch, steps):
    assert steps_per_epoch(examples, batch) == steps


def test_an_empty_training_split_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        steps_per_epoch(0, 32)
