"""The tf.Example contract (docs/architecture.md, Contracts) and sharded TFRecord writing."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from btmri import spec


def make_example(
    image: bytes,
    label: int,
    height: int,
    width: int,
    source: str,
    lesion_box: tuple[float, ...] | None = None,
    patient: str | None = None,
    collection: str = spec.UNKNOWN_COLLECTION,
) -> tf.train.Example:
    """One image as the contract writes it. `patient`: its unit (data_prep/patients.py);
    an image written without one is its own unit, named after its source."""

    def _bytes(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                spec.IMAGE_KEY: _bytes(image),
                spec.LABEL_KEY: _int(label),
                spec.HEIGHT_KEY: _int(height),
                spec.WIDTH_KEY: _int(width),
                spec.SOURCE_KEY: _bytes(source.encode("utf-8")),
                spec.LESION_BOX_KEY: tf.train.Feature(
                    float_list=tf.train.FloatList(value=list(lesion_box or spec.NO_BOX))
                ),
                spec.PATIENT_KEY: _bytes((patient or spec.GROUP_PREFIX + source).encode("utf-8")),
                spec.COLLECTION_KEY: _bytes(collection.encode("utf-8")),
            }
        )
    )


def request_example(image: bytes) -> bytes:
    """A serialized tf.Example holding only the image: what `serving_default` needs in a
    request (no label, source or box of an evaluated image goes into a request)."""
    feature = {spec.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: bytes) -> dict:
    """Plain-Python view of one serialized Example (for tests and tools)."""
    feats = tf.train.Example.FromString(serialized).features.feature
    return {
        spec.IMAGE_KEY: feats[spec.IMAGE_KEY].bytes_list.value[0],
        spec.LABEL_KEY: feats[spec.LABEL_KEY].int64_list.value[0],
        spec.HEIGHT_KEY: feats[spec.HEIGHT_KEY].int64_list.value[0],
        spec.WIDTH_KEY: feats[spec.WIDTH_KEY].int64_list.value[0],
        spec.SOURCE_KEY: feats[spec.SOURCE_KEY].bytes_list.value[0].decode("utf-8"),
        spec.LESION_BOX_KEY: tuple(feats[spec.LESION_BOX_KEY].float_list.value),
        # Absent in data prepared before patients were carried: each image its own unit.
        spec.PATIENT_KEY: _text(feats, spec.PATIENT_KEY)
        or spec.GROUP_PREFIX + feats[spec.SOURCE_KEY].bytes_list.value[0].decode("utf-8"),
        spec.COLLECTION_KEY: _text(feats, spec.COLLECTION_KEY) or spec.UNKNOWN_COLLECTION,
    }


def _text(feats, key: str) -> str:
    values = feats[key].bytes_list.value if key in feats else []
    return values[0].decode("utf-8") if values else ""


def read_split(out_dir: str | Path, split: str) -> list[dict]:
    """Every Example of one split of a prepared folder, parsed."""
    files = sorted(str(p) for p in (Path(out_dir) / split).glob(f"*{spec.TFRECORD_SUFFIX}"))
    return [parse_example(r.numpy()) for r in tf.data.TFRecordDataset(files)]


class ShardedWriter:
    """Writes Examples round-robin into `<dir>/<split>-SSSSS-of-NNNNN.tfrecord`.

    Files are written under a temporary name and renamed on close, so a crashed
    run never leaves a shard that looks complete.
    """

    def __init__(self, directory: Path, split: str, num_shards: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = [
            directory / f"{split}-{i:05d}-of-{num_shards:05d}{spec.TFRECORD_SUFFIX}"
            for i in range(num_shards)
        ]
        self._writers = [tf.io.TFRecordWriter(str(p) + ".partial") for p in self.paths]
        self.count = 0

    def write(self, example: tf.train.Example) -> None:
        self._writers[self.count % len(self._writers)].write(example.SerializeToString())
        self.count += 1

    def close(self) -> None:
        for writer, path in zip(self._writers, self.paths):
            writer.close()
            Path(str(path) + ".partial").replace(path)
