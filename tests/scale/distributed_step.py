"""One training step of LesionGuidedModel on one device and under MirroredStrategy over
two logical CPU devices (a separate process: the CPU is split before TensorFlow starts).

    python tests/scale/distributed_step.py

Prints RESULT:{"replicas": 2, "max_weight_difference": ..., "losses": [...]}: the global
batch of 8 is split 4 + 4, and the weights after the step must equal the single-device
ones (the gradient is that of the global-batch mean, regularisation counted once).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from btmri.spec import DISTRIBUTION_MIRRORED, NUM_CLASSES
    from components.training import distribution
    from components.training.lesion_guidance import LesionGuidedModel
    from components.training.models import CAM_LAYER, LOGITS_LAYER
    from components.training.trainer import smoothed_sparse_crossentropy

    def classifier() -> keras.Model:
        inputs = keras.Input((16, 16, 1))
        x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.Activation("linear", name=CAM_LAYER)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        logits = keras.layers.Dense(
            NUM_CLASSES, name=LOGITS_LAYER, kernel_regularizer=keras.regularizers.L2(0.01)
        )(x)
        return keras.Model(inputs, keras.layers.Softmax()(logits))

    rng = np.random.default_rng(0)
    images = rng.random((8, 16, 16, 1), dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 0], np.int64)
    cells = np.zeros((8, 16, 16, 1), np.float32)
    cells[1, 2:8, 3:9] = 1.0  # one boxed image in each half of the global batch
    cells[6, 8:14, 5:12] = 1.0
    data = tf.data.Dataset.from_tensors((images, (labels, cells)))

    keras.utils.set_random_seed(0)
    start = classifier().get_weights()

    def one_step(distributed: bool):
        model = classifier()
        model.set_weights(start)
        guided = LesionGuidedModel(
            model,
            smoothed_sparse_crossentropy(0.1, per_example=distributed),
            evidence_weight=1.0,
            distributed=distributed,
        )
        guided.compile(optimizer=keras.optimizers.SGD(0.5))
        history = guided.fit(data, epochs=1, verbose=0)
        return model.get_weights(), history.history["loss"][0]

    single, single_loss = one_step(False)
    strategy = distribution.make_strategy(DISTRIBUTION_MIRRORED)
    with strategy.scope():
        mirrored, mirrored_loss = one_step(True)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(single, mirrored))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single, start))
    print(
        "RESULT:"
        + json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "max_weight_difference": difference,
                "max_weight_change": moved,
                "losses": [single_loss, mirrored_loss],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
