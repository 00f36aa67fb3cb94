"""One seed gives one model only if the examples reach the Trainer in one order: the
default Beam runner must keep ImportExampleGen's output in the same order run after run
(docs/training.md). Under worker processes (`--beam-workers 2`) it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from btmri.spec import EVAL_SPLIT, TRAIN_SPLIT
from components.audit.component import split_files
from data_prep.tfrecords import make_example
from pipeline.config import PipelineConfig
from pipeline.factory import pipeline_components, pipeline_of
from pipeline.metadata import latest_output

SHARDS = 4
PER_SHARD = 48


def _prepared(root: Path) -> Path:
    """Several shards per split, as `prepare` writes them: more than one Beam bundle."""
    rng = np.random.default_rng(0)
    image = tf.io.encode_png(rng.integers(0, 255, (16, 16, 1), dtype=np.uint8)).numpy()
    for split in (TRAIN_SPLIT, EVAL_SPLIT):
        (root / split).mkdir(parents=True)
        for shard in range(SHARDS):
            name = root / split / f"{split}-{shard:05d}-of-{SHARDS:05d}.tfrecord"
            with tf.io.TFRecordWriter(str(name)) as writer:
                for i in range(PER_SHARD):
                    source = f"{split}/{shard}-{i}.png"
                    writer.write(make_example(image, i % 4, 16, 16, source).SerializeToString())
    return root


def _imported_order(data_root: Path, work: Path, beam_args: list[str] | None = None) -> list[bytes]:
    """Runs the pipeline's own ImportExampleGen on `beam_args` (default: the pipeline's
    default Beam options); the train split's records in the order the Trainer reads them
    (file by file, as written)."""
    from tfx import v1 as tfx

    config = PipelineConfig(
        pipeline_root=str(work / "root"), data_root=str(data_root), serving_dir=str(work / "serving")
    )
    if beam_args is not None:
        config.beam_pipeline_args = beam_args
    gen = next(c for c in pipeline_components(config) if c.id == "ImportExampleGen")
    tfx.orchestration.LocalDagRunner().run(pipeline_of(config, [gen], enable_cache=False))
    files = split_files(latest_output(config, "ImportExampleGen", "examples").uri)
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_default_beam_runner_imports_examples_in_one_order(tmp_path):
    data = _prepared(tmp_path / "prepared")
    first = _imported_order(data, tmp_path / "first")
    second = _imported_order(data, tmp_path / "second")
    assert len(first) == SHARDS * PER_SHARD
    assert first == second
