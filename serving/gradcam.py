"""Grad-CAM pictures from a served heatmap: original, colour heatmap, overlay.

The model computes the heatmap (the `gradcam` signature, 224x224 in [0, 1]
over the whole resized image); this module only draws it. The heatmap is
stretched back to the original image's size, which undoes the model's plain
resize, so it lines up with the anatomy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFAULT_ALPHA = 0.4      # heatmap weight in the overlay


@dataclass
class GradcamImages:
    original: np.ndarray     # BGR uint8, the image as decoded
    heatmap: np.ndarray      # BGR uint8, JET colour map at the original size
    overlay: np.ndarray      # BGR uint8, alpha blend of the two


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image → BGR uint8; ValueError when OpenCV cannot read it."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("OpenCV cannot decode this image")
    return image


def render(original: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> GradcamImages:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = original.shape[:2]
    scaled = cv2.resize(np.clip(heatmap, 0.0, 1.0).astype(np.float32), (width, height),
                        interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(original, 1.0 - alpha, colour, alpha, 0.0)
    return GradcamImages(original, colour, overlay)


def mark_abstained(images: GradcamImages, reason: str) -> GradcamImages:
    """Heatmap and overlay with a banner saying the model abstained (and why): the
    heatmap of an answer the model did not give must not pass for an explanation.
    The original stays as it was."""
    def banner(image: np.ndarray) -> np.ndarray:
        marked = image.copy()
        height, width = marked.shape[:2]
        bar = max(12, height // 12)
        marked[:bar] = (0, 0, 160)
        text = "ABSTAINED" + (f": {reason.replace('_', ' ')}" if reason else "")
        scale = max(0.3, bar / 30)
        cv2.putText(marked, text, (4, int(bar * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), max(1, int(scale * 2)), cv2.LINE_AA)
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
