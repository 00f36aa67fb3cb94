"""The report's Grad-CAM gallery: which evaluated images it shows.

The overlays are drawn by serving/heatmap_overlay.py, the same as `btmri gradcam` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.report.predictions import Predictions


@dataclass
class GalleryItem:
    index: int  # position in the predictions
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
    return [GalleryItem(i, True) for i in chosen] + [GalleryItem(int(i), False) for i in mistakes]
