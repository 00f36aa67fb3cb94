"""Grad-CAM overlays and the choice of gallery images.

The heatmap comes from the model's `gradcam` signature (224x224, the model's
stretched view of the image); it is stretched back to the image's own size, so
the overlay keeps the original aspect ratio.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.report.predictions import Predictions

OVERLAY_STRENGTH = 0.6  # heat colour share where the heatmap is 1


def overlay(image: bytes, heatmap: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Encoded image + heatmap [h, w] in [0, 1] → BGR uint8 image with the heat in JET
    colours, blended in proportion to the heat so cold regions stay readable."""
    gray = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError("undecodable image")
    if max_side and max(gray.shape) > max_side:
        scale = max_side / max(gray.shape)
        gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
    heat = cv2.resize(np.clip(heatmap, 0.0, 1.0).astype(np.float32), (gray.shape[1], gray.shape[0]),
                      interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    weight = (OVERLAY_STRENGTH * heat)[..., None]
    return np.clip(base * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)


@dataclass
class GalleryItem:
    index: int           # position in the predictions
    correct: bool
    overlay: np.ndarray | None = None  # BGR, from the model's heatmap of its top-1 class


def choose(predictions: Predictions, per_kind: int = 4) -> list[GalleryItem]:
    """Up to `per_kind` correct images (the most confident one of each class first)
    and the `per_kind` most confident mistakes: the errors a reviewer should see."""
    predicted, confidence = predictions.predicted, predictions.probs.max(axis=1)
    correct = np.flatnonzero(predicted == predictions.labels)
    wrong = np.flatnonzero(predicted != predictions.labels)
    chosen: list[int] = []
    for k in np.unique(predictions.labels[correct]):
        of_class = correct[predictions.labels[correct] == k]
        chosen.append(int(of_class[np.argmax(confidence[of_class])]))
    rest = [int(i) for i in correct[np.argsort(-confidence[correct], kind="stable")] if i not in chosen]
    chosen = (chosen + rest)[:per_kind]
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")][:per_kind]
    return ([GalleryItem(i, True) for i in chosen]
            + [GalleryItem(int(i), False) for i in mistakes])
