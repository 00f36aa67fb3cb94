"""The Grad-CAM overlay of a case, drawn when the page first shows it and then cached.

Where the heatmap comes from, first that applies:
  1. the log itself: a `gradcam` call logged with `--log-payload images` keeps the
     heatmap the answering model computed;
  2. a model given to `btmri review`: a SavedModel (default: the work folder's pushed
     model) loaded in this process on first use, or a model server's `gradcam`
     signature (components/audit/predictors.py, as the lesion audit reaches them);
  3. none: the page says why.
A model other than the one that answered may look elsewhere: the caption says when the
versions differ. The overlay is drawn as `btmri gradcam` draws it
(serving/heatmap_overlay.py), with the ABSTAINED banner when the model abstained.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.review.cases import Case

CACHED_OVERLAYS = 256  # PNGs kept in memory (a few hundred KB each)


class GradcamUnavailable(Exception):
    """No overlay for this case; str(err) is what the page shows instead."""


@dataclass
class ModelSource:
    """A model that computes heatmaps: `load()` returns an object with
    `gradcam(images) -> (heatmaps, probabilities)` (components.audit.predictors)."""

    description: str  # e.g. "SavedModel runs/serving/brain_tumor/3"
    version: int | None  # None: unknown (a server)
    load: Callable[[], object]


def saved_model_source(model_dir: str) -> ModelSource:
    from pathlib import Path

    def load():
        from components.audit.predictors import SavedModelPredictor

        return SavedModelPredictor(model_dir)

    name = Path(model_dir).name
    return ModelSource(f"SavedModel {model_dir}", int(name) if name.isdigit() else None, load)


def server_source(target: str, model_name: str, timeout: float) -> ModelSource:
    def load():
        from components.audit.predictors import ServedPredictor

        return ServedPredictor(target, model_name, timeout=timeout)

    return ModelSource(f"model {model_name} served at {target}", None, load)


class Overlays:
    """Overlay PNGs of cases, computed on first request and kept (least recently used out)."""

    def __init__(self, model: ModelSource | None, without_model: str):
        self.model = model
        self.without_model = without_model  # what the page says when no model is given
        self._predictor = None
        self._failed: str | None = None  # a model that did not load is not tried again
        self._model_lock = threading.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()

    def note(self, case: Case) -> str:
        """The caption of a case's Grad-CAM: where it comes from, or why there is none."""
        if case.image is None:
            return "no Grad-CAM: the image was not logged"
        if case.heatmap is not None:
            return "Grad-CAM logged with the answer (the model that answered)"
        if self.model is None:
            return self.without_model
        text = f"Grad-CAM of the {self.model.description}"
        if self.model.version is not None and self.model.version != case.model_version:
            text += (
                f" (version {self.model.version}); version {case.model_version} answered: "
                "the heatmap is another model's"
            )
        return text

    def available(self, case: Case) -> bool:
        return case.image is not None and (case.heatmap is not None or self.model is not None)

    def png(self, case: Case) -> bytes:
        """The overlay as PNG bytes; GradcamUnavailable with the reason when there is none."""
        with self._cache_lock:
            if case.record_id in self._cache:
                self._cache.move_to_end(case.record_id)
                return self._cache[case.record_id]
        if not self.available(case):
            raise GradcamUnavailable(self.note(case))
        heatmap = case.heatmap if case.heatmap is not None else self._compute(case.image)
        data = _draw(case, heatmap)
        with self._cache_lock:
            self._cache[case.record_id] = data
            while len(self._cache) > CACHED_OVERLAYS:
                self._cache.popitem(last=False)
        return data

    def _compute(self, image: bytes):
        from serving.client import RequestFailed, ServerUnavailable

        # One model call at a time: a second page request waits rather than doubling memory.
        with self._model_lock:
            if self._failed:
                raise GradcamUnavailable(self._failed)
            if self._predictor is None:
                try:
                    self._predictor = self.model.load()
                except Exception as err:  # any load failure: say it on the page, keep serving
                    self._failed = f"no Grad-CAM: the {self.model.description} did not load: {err}"
                    raise GradcamUnavailable(self._failed) from None
            try:
                heatmaps, _ = self._predictor.gradcam([image])
            except (ServerUnavailable, RequestFailed) as err:
                raise GradcamUnavailable(f"no Grad-CAM: {err}") from None
            except Exception as err:  # the model refused the image (tf InvalidArgumentError, ...)
                raise GradcamUnavailable(f"no Grad-CAM: the model refused the image: {err}") from None
        return heatmaps[0]


def _draw(case: Case, heatmap) -> bytes:
    import cv2

    from serving import heatmap_overlay

    try:
        images = heatmap_overlay.render(heatmap_overlay.decode_bgr(case.image, gray=True), heatmap)
    except (ValueError, cv2.error) as err:  # an undecodable image, a malformed logged heatmap
        raise GradcamUnavailable(f"no Grad-CAM: {err}") from None
    if case.abstain:
        images = heatmap_overlay.mark_abstained(images, case.abstain_reason)
    ok, data = cv2.imencode(".png", images.overlay)
    if not ok:
        raise GradcamUnavailable("no Grad-CAM: the overlay could not be encoded")
    return data.tobytes()
