"""Outliers the Trainer makes for itself, to choose the abstention detector's features.

Outlier exposure without anybody's data: procedural images drawn with NumPy and
OpenCV. These sources are the Trainer's only; benchmarks/abstention_probes.py probes the
exported model with *other* sources (photographs shipped with matplotlib, rendered
documents, uniform/Gaussian/salt-and-pepper noise, blanks, linear ramps, a chest-like
drawing), so nothing that tunes the detector grades it.

Kinds here: sinusoidal gratings, checkerboards, random filled polygons and ellipses,
band-limited (blurred) noise textures, a head outline without a brain (skull ring
and scalp only, dark inside), and photograph-like scenes (a frame filled edge to
edge with 1/f noise, the amplitude spectrum of natural images, under a lighting
gradient, with shaded, textured objects in front). Every image is 8-bit grayscale, 160-320 px a side,
returned PNG-encoded so it goes through the model's own decoder.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("grating", "checkerboard", "shapes", "texture", "empty_head", "scene")


def _size(rng) -> tuple[int, int]:
    return int(rng.integers(160, 321)), int(rng.integers(160, 321))


def grating(rng) -> np.ndarray:
    h, w = _size(rng)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 60)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period + rng.uniform(0, 6.3))
    return np.clip(127.5 + rng.uniform(40, 127) * wave, 0, 255).astype(np.uint8)


def checkerboard(rng) -> np.ndarray:
    h, w = _size(rng)
    cell = int(rng.integers(8, 48))
    y, x = np.mgrid[0:h, 0:w]
    board = ((x // cell + y // cell) % 2).astype(np.float32)
    low, high = sorted(rng.uniform(0, 255, 2))
    return (low + (high - low) * board).astype(np.uint8)


def shapes(rng) -> np.ndarray:
    h, w = _size(rng)
    image = np.full((h, w), int(rng.integers(0, 256)), np.uint8)
    for _ in range(int(rng.integers(2, 9))):
        colour = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            points = rng.integers(0, [w, h], (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(image, [points], colour)
        else:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(5, w // 2)), int(rng.integers(5, h // 2)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return image


def texture(rng) -> np.ndarray:
    h, w = _size(rng)
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    sigma = float(rng.uniform(1.5, 12))
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-6)
    return np.clip(127.5 + rng.uniform(20, 70) * smooth, 0, 255).astype(np.uint8)


def empty_head(rng) -> np.ndarray:
    """Scalp and skull of an axial slice, nothing inside: a head with the brain removed."""
    h, w = _size(rng)
    image = np.clip(rng.normal(8, 4, (h, w)), 0, 255).astype(np.float32)
    centre = (
        w // 2 + int(rng.integers(-w // 10, w // 10 + 1)),
        h // 2 + int(rng.integers(-h // 10, h // 10 + 1)),
    )
    axes = (int(w * rng.uniform(0.3, 0.45)), int(h * rng.uniform(0.35, 0.47)))
    angle = float(rng.uniform(-20, 20))
    cv2.ellipse(image, centre, axes, angle, 0, 360, float(rng.uniform(150, 250)), int(rng.integers(4, 14)))
    inner = (max(axes[0] - 12, 4), max(axes[1] - 12, 4))
    cv2.ellipse(image, centre, inner, angle, 0, 360, float(rng.uniform(10, 60)), -1)
    return np.clip(cv2.GaussianBlur(image, (0, 0), 1.0), 0, 255).astype(np.uint8)


def _pink_noise(rng, h: int, w: int) -> np.ndarray:
    """Zero-mean, unit-std noise whose amplitude falls as 1/f**alpha (natural images: alpha ~ 1-2)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    spectrum = rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)
    field = np.fft.irfft2(spectrum / radius ** rng.uniform(1.0, 2.0), s=(h, w)).astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def scene(rng) -> np.ndarray:
    """A photograph-like frame: no dark background, light from one side, objects in front."""
    h, w = _size(rng)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = (x / w - 0.5) * np.cos(angle) + (y / h - 0.5) * np.sin(angle)
    image = rng.uniform(70, 170) + rng.uniform(20, 60) * _pink_noise(rng, h, w) + rng.uniform(20, 80) * light
    for _ in range(int(rng.integers(1, 6))):
        mask = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(w // 10, w // 2)), int(rng.integers(h // 10, h // 2)))
        if rng.random() < 0.5:
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(
                mask, (centre[0] - axes[0], centre[1] - axes[1]), (centre[0] + axes[0], centre[1]), 1, -1
            )
        shade = (
            rng.uniform(30, 220) + rng.uniform(10, 40) * _pink_noise(rng, h, w) + rng.uniform(-60, 60) * light
        )
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), float(rng.uniform(0.5, 3)))
        image = image * (1 - soft) + shade * soft
    return np.clip(image, 0, 255).astype(np.uint8)


_MAKERS = {
    "grating": grating,
    "checkerboard": checkerboard,
    "shapes": shapes,
    "texture": texture,
    "empty_head": empty_head,
    "scene": scene,
}
assert set(_MAKERS) == set(KINDS)


def outlier_images(per_kind: int = 24, seed: int = 0) -> dict[str, list[bytes]]:
    """PNG bytes per kind, deterministic per seed."""
    rng = np.random.default_rng(seed)
    return {
        kind: [cv2.imencode(".png", _MAKERS[kind](rng))[1].tobytes() for _ in range(per_kind)]
        for kind in KINDS
    }
