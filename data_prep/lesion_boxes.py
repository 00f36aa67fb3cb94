"""Real tumour locations: folders of slices with one bounding box each, and
matching them to the images of a dataset.

Box folder layout (the public figshare boxes in YOLO format, and what
`btmri synth` writes under `boxes/`):

    <class>/<id>.<jpg|png>   the slice (tumour classes only)
    <class>/<id>.txt         "k x_center y_center width height", normalised to [0, 1]

Boxes are kept as (ymin, xmin, ymax, xmax) normalised to the image, the order
TensorFlow's box ops use. A box survives any resize that keeps the whole image
(data_prep stores whole images; Transform resizes them to 224x224), so a box
found for a 512x512 slice is the box of its 224x224 copy.

Matching: the Kaggle set re-encodes and resizes most figshare slices. Two copies
of one slice correlate at >= 0.995 on the 32x32 grayscale thumbnails data_prep
already computes; different slices, even neighbours from the same patient, stay
below 0.99 (measured: the best same-class figshare slice of each of the 4,117
Kaggle tumour training images correlates >= 0.995 for 1,299 of them, 0.98-0.99 for
9, and nothing falls between 0.99 and 0.995). The rule is "same class and
correlation >= MATCH_CORRELATION".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from btmri import spec
from data_prep.image_io import ImageError, decode_image, read_bytes

MATCH_CORRELATION = 0.99
# Slices with no copy in the dataset are split between training (added as extra
# training images) and the lesion audit, by groups of consecutive ids: figshare
# numbers a patient's slices consecutively, so a group rarely spans two patients'
# worth of neighbours on both sides of the split.
AUDIT_SHARE = 0.5
ID_GROUP = 10
SPLIT_SEED = "lesion-audit-v1"
BOX_SUFFIXES = (".jpg", ".jpeg", ".png")
THUMB_SIZE = 32
# A box folder may hold only these classes: a box needs a tumour.
TUMOUR_CLASSES = tuple(c for c in spec.CLASS_NAMES if c != "notumor")


@dataclass(frozen=True)
class BoxedSlice:
    path: str  # image file
    source: str  # "<class>/<file name>"
    label: int
    box: tuple[float, float, float, float]  # ymin, xmin, ymax, xmax in [0, 1]


@dataclass(frozen=True)
class BoxSkip:
    source: str
    reason: str


def parse_yolo_box(text: str) -> tuple[float, float, float, float]:
    """First line "k xc yc w h" → (ymin, xmin, ymax, xmax), clipped to [0, 1];
    ValueError with the reason when the line is not a usable box."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty box file")
    fields = lines[0].split()
    if len(fields) != 5:
        raise ValueError(f"expected 'k xc yc w h', got {len(fields)} fields")
    xc, yc, w, h = (float(v) for v in fields[1:])
    if not all(np.isfinite([xc, yc, w, h])) or w <= 0 or h <= 0:
        raise ValueError("box has no area")
    box = (yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2)
    box = tuple(float(np.clip(v, 0.0, 1.0)) for v in box)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError("box lies outside the image")
    return box  # type: ignore[return-value]


def format_yolo_box(box: tuple[float, float, float, float], k: int = 0) -> str:
    """The inverse of parse_yolo_box, for writers of box folders."""
    ymin, xmin, ymax, xmax = box
    return f"{k} {(xmin + xmax) / 2:.6f} {(ymin + ymax) / 2:.6f} {xmax - xmin:.6f} {ymax - ymin:.6f}\n"


def read_box_folder(box_dir: str | os.PathLike) -> tuple[list[BoxedSlice], list[BoxSkip]]:
    """Every slice with a readable box, sorted; slices without one are skipped with a reason."""
    root = Path(box_dir)
    if not root.is_dir():
        raise ValueError(f"box folder {box_dir} does not exist")
    slices: list[BoxedSlice] = []
    skips: list[BoxSkip] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = folder.name.lower()
        if name not in TUMOUR_CLASSES:
            raise ValueError(
                f"{folder}: a box folder holds tumour classes only "
                f"({', '.join(TUMOUR_CLASSES)}), not {folder.name!r}"
            )
        label = spec.CLASS_TO_ID[name]
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() not in BOX_SUFFIXES or image.name.startswith("."):
                continue
            source = f"{name}/{image.name}"
            txt = image.with_suffix(".txt")
            try:
                box = parse_yolo_box(txt.read_text())
            except FileNotFoundError:
                skips.append(BoxSkip(source, "no box file"))
                continue
            except (OSError, ValueError, UnicodeDecodeError) as err:
                skips.append(BoxSkip(source, f"unusable box file: {err}"))
                continue
            slices.append(BoxedSlice(str(image), source, label, box))
    if not slices:
        raise ValueError(
            f"box folder {box_dir} holds no slice with a box "
            f"(expected <class>/<id>.jpg with <class>/<id>.txt)"
        )
    return slices, skips


def split_group(source: str) -> str:
    """Group of a slice for the audit/training split: class + id // ID_GROUP for
    numeric ids (figshare), else the file stem."""
    cls, name = source.split("/", 1)
    stem = os.path.splitext(name)[0]
    return f"{cls}/{int(stem) // ID_GROUP}" if stem.isdigit() else f"{cls}/{stem}"


def in_audit_part(source: str) -> bool:
    """Deterministic, content-free: the same slice is on the same side everywhere."""
    return unit_in_audit_part(split_group(source))


def unit_in_audit_part(unit: str) -> bool:
    """in_audit_part for a whole patient (data_prep/patients.py unit id) or id group."""
    import hashlib

    digest = hashlib.sha256(f"{SPLIT_SEED}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < AUDIT_SHARE


def collection_name(box_dir: str | os.PathLike) -> str:
    """The collection a box folder's slices come from, by its folder name
    ("figshare-boxes" → "figshare"; a folder named plain "boxes", as `btmri synth`
    writes it, by its parent: "synthetic/boxes" → "synthetic"): the tag of the images
    that copy them."""
    path = Path(box_dir).resolve()
    name = path.name.lower()
    for suffix in ("-boxes", "_boxes"):
        name = name.removesuffix(suffix)
    if name == "boxes" and path.parent.name:
        name = path.parent.name.lower()
    return name


def normalised_thumbnail(gray_small: np.ndarray) -> np.ndarray:
    """32x32 grayscale → zero-mean unit-norm vector (correlation = dot product)."""
    v = np.asarray(gray_small, np.float32).ravel()
    v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-6)


def slice_thumbnail(path: str) -> np.ndarray:
    """Thumbnail of an image file, computed the way data_prep computes its own."""
    data = read_bytes(path)
    return normalised_thumbnail(decode_image(data, os.path.splitext(path)[1]).gray_small)


class BoxMatcher:
    """Finds, for an image's thumbnail, the boxed slice it is a copy of."""

    def __init__(
        self,
        slices: list[BoxedSlice],
        thumbnails: np.ndarray | None = None,
        threshold: float = MATCH_CORRELATION,
    ):
        self.slices = slices
        self.threshold = threshold
        if thumbnails is None:
            thumbnails = np.stack([_thumb_or_zero(s.path) for s in slices])
        self.thumbnails = thumbnails.astype(np.float32)
        self.labels = np.array([s.label for s in slices])

    @classmethod
    def from_folder(cls, box_dir: str | os.PathLike) -> BoxMatcher:
        return cls(read_box_folder(box_dir)[0])

    def best(self, gray_small: np.ndarray, label: int) -> tuple[int, float] | None:
        """(index into slices, correlation) of the best same-class slice, or None."""
        candidates = np.flatnonzero(self.labels == label)
        if not len(candidates):
            return None
        corr = self.thumbnails[candidates] @ normalised_thumbnail(gray_small)
        i = int(np.argmax(corr))
        return int(candidates[i]), float(corr[i])

    def match(self, gray_small: np.ndarray, label: int) -> BoxedSlice | None:
        found = self.best(gray_small, label)
        if found is None or found[1] < self.threshold:
            return None
        return self.slices[found[0]]


def _thumb_or_zero(path: str) -> np.ndarray:
    """An unreadable slice matches nothing (a zero vector correlates 0 with all)."""
    try:
        return slice_thumbnail(path)
    except ImageError:
        return np.zeros(THUMB_SIZE * THUMB_SIZE, np.float32)


def box_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """bool [height, width], True inside the box (pixel centres)."""
    ymin, xmin, ymax, xmax = box
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    return ((ys >= ymin) & (ys <= ymax))[:, None] & ((xs >= xmin) & (xs <= xmax))[None, :]


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tightest normalised box around a binary mask's nonzero pixels, or None."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    h, w = mask.shape[:2]
    return (ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w)


def gray_of(path: str) -> np.ndarray:
    """8-bit grayscale pixels of a slice (for the audit's image edits)."""
    pixels = cv2.imdecode(np.frombuffer(read_bytes(path), np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ImageError("not a decodable image")
    return pixels
