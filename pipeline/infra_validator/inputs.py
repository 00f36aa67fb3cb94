"""What the InfraValidator sends: images of the evaluated split, and each contract
signature's input for them."""

from __future__ import annotations

import numpy as np

from btmri import spec


def evaluated_images(examples_uri: str, split: str, count: int) -> list[bytes]:
    """The first `count` encoded images of a split of an Examples artifact (fewer if
    the split is smaller)."""
    import tensorflow as tf

    from components.audit.component import split_files

    images: list[bytes] = []
    for path in split_files(examples_uri, split):
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            feature = tf.train.Example.FromString(record.numpy()).features.feature[spec.IMAGE_KEY]
            if feature.bytes_list.value:
                images.append(feature.bytes_list.value[0])
            if len(images) >= count:
                return images
    return images


def signature_inputs(signature: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """The one input of a contract signature for these images."""
    from data_prep.tfrecords import request_example  # TensorFlow only when a request is built

    alias = spec.SIGNATURE_CONTRACT[signature][0]
    values = [request_example(i) for i in images] if alias == spec.EXAMPLES_INPUT else list(images)
    return {alias: np.array(values, dtype=object)}
