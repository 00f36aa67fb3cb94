"""`btmri evaluate`'s images and model: a labelled folder in, one answer per image out.

Images are found as `btmri prepare` finds them (data_prep.discover: the Kaggle layout
or class folders) and read as it reads them (data_prep.image_io): the model is sent
the bytes prepare would store, so a DICOM is windowed and re-encoded to PNG exactly
as for training. A file prepare would skip (corrupt, truncated, too large, not an
image) is skipped here too, with its reason; so is an image the model refuses.

The model is a SavedModel loaded in this process or a model server reached over gRPC
(TF Serving or `btmri serve`, through serving.client); both through the
`predict_images` signature, several images per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from btmri.spec import (
    ABSTAIN,
    ABSTAIN_REASON,
    IMAGE_BYTES_INPUT,
    OOD_SCORE,
    PREDICT_IMAGES,
    PROBABILITIES,
)
from data_prep.discover import Candidate, find_images
from data_prep.image_io import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS, ImageError, decode_image, read_bytes
from pipeline.site_evaluation import Row

BATCH_SIZE = 16  # images per call
BATCH_BYTES = 8 * 1024 * 1024  # and at most this many bytes (a served model's messages are capped)


class PredictionFailed(Exception):
    """The model refused the images of one call (one of them is bad); str is the reason."""


class ModelError(RuntimeError):
    """The model cannot be used at all (no such model, no predict_images signature)."""


@dataclass
class Answer:
    probabilities: np.ndarray  # [classes]
    abstained: bool
    reason: str
    ood_score: float | None  # None: a model exported without abstention


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def answers(outputs: dict) -> list[Answer]:
    """Answers from a predict_images call's outputs (NumPy arrays by output name)."""
    probs = np.asarray(outputs[PROBABILITIES], np.float64)
    n = len(probs)
    abstain = np.asarray(outputs[ABSTAIN], bool) if ABSTAIN in outputs else np.zeros(n, bool)
    reasons = [_text(r) for r in outputs[ABSTAIN_REASON]] if ABSTAIN_REASON in outputs else [""] * n
    ood = np.asarray(outputs[OOD_SCORE], np.float64) if OOD_SCORE in outputs else None
    return [
        Answer(probs[i], bool(abstain[i]), reasons[i], None if ood is None else float(ood[i]))
        for i in range(n)
    ]


def saved_model_dir(path: str) -> str | None:
    """A SavedModel folder, or the highest integer version of a TF Serving base path."""
    from pipeline.audit_cli import _saved_model_dir

    return _saved_model_dir(path)


class SavedModelPredictor:
    """The exported SavedModel's predict_images signature, in this process."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self._tf = tf
        self._model = tf.saved_model.load(model_dir)
        if PREDICT_IMAGES not in self._model.signatures:
            raise ModelError(f"it has no {PREDICT_IMAGES} signature")
        self._signature = self._model.signatures[PREDICT_IMAGES]
        name = Path(model_dir).name
        self.info = {
            "kind": "saved_model",
            "path": str(model_dir),
            "version": int(name) if name.isdigit() else None,
        }

    def predict(self, images: Sequence[bytes]) -> list[Answer]:
        tf = self._tf
        try:
            out = self._signature(**{IMAGE_BYTES_INPUT: tf.constant(list(images))})
        except tf.errors.InvalidArgumentError as err:
            raise PredictionFailed(err.message.strip().splitlines()[0]) from None
        return answers({name: value.numpy() for name, value in out.items()})

    def close(self) -> None:
        pass


# gRPC codes that belong to the images sent (one bad or too large image), not to the server.
_IMAGE_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")


class ServerPredictor:
    """predict_images of a served model over gRPC (serving.client.PredictionClient);
    serving.client.ServerUnavailable when the server cannot be reached."""

    def __init__(self, target: str, model_name: str, timeout: float, version_label: str | None = None):
        from serving.client import PredictionClient

        self._client = PredictionClient(
            target, model_name=model_name, timeout=timeout, version_label=version_label
        )
        self.versions: set[int] = set()
        self.info = {"kind": "server", "address": target, "model_name": model_name, "label": version_label}

    def predict(self, images: Sequence[bytes]) -> list[Answer]:
        import tensorflow as tf

        from serving.client import RequestFailed

        try:
            response = self._client.predict(PREDICT_IMAGES, {IMAGE_BYTES_INPUT: list(images)})
        except RequestFailed as err:
            if err.code in _IMAGE_CODES:
                raise PredictionFailed(str(err)) from None
            raise ModelError(f"the server at {self._client.target} answered {err}") from None
        self.versions.add(int(response.model_spec.version.value))
        self.info["versions"] = sorted(self.versions)
        return answers({name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()})

    def close(self) -> None:
        self._client.close()


def find(data_dir: str) -> tuple[list[Candidate], list[dict]]:
    """The folder's labelled images and the files skipped by name (hidden files,
    other extensions); data_prep.discover.LayoutError for a folder of no known layout."""
    candidates, skips = find_images(data_dir)
    return candidates, [{"path": s.source, "reason": s.reason} for s in skips]


def read_image(candidate: Candidate, max_pixels: int, max_bytes: int) -> bytes:
    """The bytes prepare would store for the file (ImageError with the reason)."""
    data = read_bytes(candidate.path, max_bytes)
    return decode_image(data, os.path.splitext(candidate.path)[1], max_pixels).encoded


def predict_folder(
    candidates: Sequence[Candidate],
    predictor,
    tags_of: Callable[[str], dict[str, str]] = lambda path: {},
    *,
    batch_size: int = BATCH_SIZE,
    batch_bytes: int = BATCH_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    progress: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
) -> tuple[list[Row], list[dict]]:
    """(one Row per answered or abstained image, the files skipped with reasons).

    A call the model refuses (PredictionFailed) is repeated one image at a time, so
    one bad image costs only itself. ServerUnavailable and ModelError end the run."""
    rows: list[Row] = []
    skipped: list[dict] = []
    batch: list[tuple[Candidate, bytes]] = []
    bar = tqdm(total=len(candidates), desc="evaluate", unit="img", disable=not progress)

    def skip(path: str, reason: str) -> None:
        skipped.append({"path": path, "reason": reason})
        if on_skip is not None:
            on_skip(path, reason)

    def keep(candidate: Candidate, answer: Answer) -> None:
        rows.append(
            Row(
                path=candidate.source,
                label=candidate.label,
                probabilities=[float(p) for p in answer.probabilities],
                abstained=answer.abstained,
                reason=answer.reason if answer.abstained else "",
                ood_score=answer.ood_score,
                tags=tags_of(candidate.source),
            )
        )

    def flush() -> None:
        if not batch:
            return
        try:
            for (candidate, _), answer in zip(batch, predictor.predict([data for _, data in batch])):
                keep(candidate, answer)
        except PredictionFailed as err:
            if len(batch) == 1:
                skip(batch[0][0].source, f"the model refused it: {err}")
            else:
                for candidate, data in batch:
                    try:
                        (answer,) = predictor.predict([data])
                    except PredictionFailed as one:
                        skip(candidate.source, f"the model refused it: {one}")
                    else:
                        keep(candidate, answer)
        bar.update(len(batch))
        batch.clear()

    max_bytes = int(max_file_mb * 1024 * 1024)
    try:
        for candidate in candidates:
            try:
                data = read_image(candidate, max_pixels, max_bytes)
            except ImageError as err:
                skip(candidate.source, str(err))
                bar.update(1)
                continue
            if batch and sum(len(d) for _, d in batch) + len(data) > batch_bytes:
                flush()
            batch.append((candidate, data))
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
    return rows, skipped
