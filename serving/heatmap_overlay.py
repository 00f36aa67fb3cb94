"""Drawing a Grad-CAM heatmap over its image: the one overlay style of the project
(`btmri gradcam`, the report's gallery, the lesion audit tiles and notebook 03).

The model computes the heatmap (the `gradcam` signature, 224x224 in [0, 1] over the
whole resized image; components/training/gradcam.py); this module only draws it. The
heatmap is stretched back to the original image's size, which undoes the model's
plain resize, so it lines up with the anatomy. The JET colours are blended in
proportion to the heat, so cold regions show the image itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_STRENGTH = 0.6  # share of heat colour where the heatmap is 1


@dataclass
class GradcamImages:
    original: np.ndarray  # BGR uint8, the image as decoded
    heatmap: np.ndarray  # BGR uint8, JET colour map at the original size
    overlay: np.ndarray  # BGR uint8, the heat blended over the image


def decode_bgr(data: bytes, gray: bool = False) -> np.ndarray:
    """Encoded image → BGR uint8 (gray copied to three channels when `gray`);
    ValueError when OpenCV cannot read it."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("OpenCV cannot decode this image")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if gray else image


def render(original: np.ndarray, heatmap: np.ndarray, strength: float = DEFAULT_STRENGTH) -> GradcamImages:
    """The colour heatmap and the overlay at the size of `original` (BGR uint8)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    height, width = original.shape[:2]
    heat = cv2.resize(
        np.clip(heatmap, 0.0, 1.0).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (strength * heat)[..., None]
    overlay = original.astype(np.float32) * (1 - weight) + colour.astype(np.float32) * weight
    return GradcamImages(original, colour, np.clip(np.round(overlay), 0, 255).astype(np.uint8))


def overlay(
    image: bytes, heatmap: np.ndarray, max_side: int | None = None, strength: float = DEFAULT_STRENGTH
) -> np.ndarray:
    """Encoded image + heatmap [h, w] in [0, 1] → the overlay (BGR uint8), drawn on the
    gray image, scaled down first so its longer side is at most `max_side`."""
    base = decode_bgr(image, gray=True)
    if max_side and max(base.shape[:2]) > max_side:
        scale = max_side / max(base.shape[:2])
        base = cv2.resize(
            base, (round(base.shape[1] * scale), round(base.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    return render(base, heatmap, strength).overlay


def mark_abstained(images: GradcamImages, reason: str) -> GradcamImages:
    """Heatmap and overlay with a banner saying the model abstained (and why): the
    heatmap of an answer the model did not give must not pass for an explanation.
    The original stays as it was."""

    def banner(image: np.ndarray) -> np.ndarray:
        marked = image.copy()
        bar = max(12, marked.shape[0] // 12)
        marked[:bar] = (0, 0, 160)
        text = "ABSTAINED" + (f": {reason.replace('_', ' ')}" if reason else "")
        scale = max(0.3, bar / 30)
        cv2.putText(
            marked,
            text,
            (4, int(bar * 0.75)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, int(scale * 2)),
            cv2.LINE_AA,
        )
        return marked

    return GradcamImages(images.original, banner(images.heatmap), banner(images.overlay))


def write(images: GradcamImages, out_dir: Path, stem: str) -> dict[str, Path]:
    """Writes <stem>_original.png, <stem>_heatmap.png, <stem>_overlay.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("original", "heatmap", "overlay"):
        path = out_dir / f"{stem}_{kind}.png"
        if not cv2.imwrite(str(path), getattr(images, kind)):
            raise OSError(f"cannot write {path}")
        paths[kind] = path
    return paths


def unique_stems(files: list[str]) -> list[str]:
    """File stems, made unique (a.png and b/a.png become a and a_2) so outputs never collide."""
    used: set[str] = set()
    stems = []
    for f in files:
        stem = Path(f).stem or "image"
        candidate, n = stem, 1
        while candidate in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate)
        stems.append(candidate)
    return stems
