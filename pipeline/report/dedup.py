"""Which evaluated images duplicate a training image, recomputed from the records.

The manifest lists only the first few hundred duplicate pairs, so the test set
cannot be cleaned from it; the hashes are recomputed here with data_prep's own
functions (md5 of the stored bytes, DCT perceptual hash) and its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable

from btmri.spec import TRAIN_SPLIT
from data_prep.duplicates import DuplicateIndex, Record, perceptual_hash
from data_prep.image_io import ImageError, content_hash, decode_image


@dataclass
class Match:
    kind: str  # "exact" (same bytes) or "near" (perceptual hash)
    training_source: str
    distance_bits: int


def _hashes(image: bytes) -> tuple[str, int | None]:
    try:
        # The suffix only matters for formats without magic bytes; stored images are JPEG/PNG.
        return content_hash(image), perceptual_hash(decode_image(image, ".png").gray_small)
    except ImageError:
        return content_hash(image), None


class TrainingIndex:
    """md5 and pHash of every training image, matched with prepare's own rule
    (data_prep.duplicates.DuplicateIndex.training_match)."""

    def __init__(self, training: Iterable[tuple[str, bytes]]):
        self._index = DuplicateIndex()
        for source, image in training:
            md5, phash = _hashes(image)
            self._index.add(Record(source, TRAIN_SPLIT, -1, md5, phash))

    def match(self, image: bytes, threshold: int) -> Match | None:
        found = self._index.training_match(*_hashes(image), threshold=threshold)
        return Match(*found) if found else None


def training_duplicates(
    index: TrainingIndex, sources: list[str], images: list[bytes], threshold: int
) -> dict[str, Match]:
    """Evaluated image source → the training image it duplicates (only those that do)."""
    matches = {}
    for source, image in zip(sources, images):
        found = index.match(image, threshold)
        if found:
            matches[source] = found
    return matches
