"""The two ways the lesion audit reaches a model: in process, or served over gRPC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from btmri import spec


class SavedModelPredictor:
    """The exported SavedModel's `gradcam` and `predict_images` signatures, in process."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(model_dir)
        self._gradcam = self._model.signatures[spec.GRADCAM]
        self._predict = self._model.signatures[spec.PREDICT_IMAGES]

    def gradcam(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        out = self._gradcam(**{spec.IMAGE_BYTES_INPUT: self._tf.constant(list(images))})
        return out[spec.HEATMAP].numpy(), out[spec.PROBABILITIES].numpy()

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        out = self._predict(**{spec.IMAGE_BYTES_INPUT: self._tf.constant(list(images))})
        return out[spec.PROBABILITIES].numpy()


class ServedPredictor:
    """The same signatures of a model served by TF Serving or `btmri serve` (gRPC)."""

    def __init__(self, target: str, model_name: str, timeout: float = 60.0):
        from serving.client import PredictionClient

        self._client = PredictionClient(target, model_name=model_name, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _outputs(self, signature: str, images: Sequence[bytes], names: list[str]) -> list[np.ndarray]:
        import tensorflow as tf

        response = self._client.predict(
            signature, {spec.IMAGE_BYTES_INPUT: list(images)}, output_filter=names
        )
        return [tf.make_ndarray(response.outputs[name]) for name in names]

    def gradcam(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        heatmaps, probs = self._outputs(spec.GRADCAM, images, [spec.HEATMAP, spec.PROBABILITIES])
        return heatmaps, probs

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        (probs,) = self._outputs(spec.PREDICT_IMAGES, images, [spec.PROBABILITIES])
        return probs
