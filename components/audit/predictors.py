"""The two ways the lesion audit reaches a model: in process, or served over gRPC."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from components import signature_names as sig


class SavedModelPredictor:
    """The exported SavedModel's `gradcam` and `predict_images` signatures, in process."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(model_dir)
        self._gradcam = self._model.signatures[sig.GRADCAM]
        self._predict = self._model.signatures[sig.PREDICT_IMAGES]

    def gradcam(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        out = self._gradcam(**{sig.IMAGE_BYTES_INPUT: self._tf.constant(list(images))})
        return out[sig.HEATMAP].numpy(), out[sig.PROBABILITIES].numpy()

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        out = self._predict(**{sig.IMAGE_BYTES_INPUT: self._tf.constant(list(images))})
        return out[sig.PROBABILITIES].numpy()


class ServedPredictor:
    """The same signatures of a model served by TF Serving or `btmri serve` (gRPC)."""

    def __init__(self, target: str, model_name: str, timeout: float = 60.0):
        from serving.client import PredictionClient

        self._client = PredictionClient(target, model_name=model_name, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _outputs(self, signature: str, images: Sequence[bytes], names: list[str]) -> list[np.ndarray]:
        import tensorflow as tf

        response = self._client.predict(signature, {sig.IMAGE_BYTES_INPUT: list(images)},
                                        output_filter=names)
        return [tf.make_ndarray(response.outputs[name]) for name in names]

    def gradcam(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        heatmaps, probs = self._outputs(sig.GRADCAM, images, [sig.HEATMAP, sig.PROBABILITIES])
        return heatmaps, probs

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        (probs,) = self._outputs(sig.PREDICT_IMAGES, images, [sig.PROBABILITIES])
        return probs
