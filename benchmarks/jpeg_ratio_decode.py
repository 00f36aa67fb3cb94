"""Benchmark: how far the model input of a large JPEG decoded downscaled in the DCT
domain (`tf.io.decode_jpeg(ratio=2/4/8)`, components/transform/decode.py) is from
the full decode's, for several "decoded pixels per output pixel" thresholds.

    python benchmarks/jpeg_ratio_decode.py [--factors 4 2 1]

Images: synthetic phantoms and (when the Kaggle images are present, BTMRI_REAL_DATA) real slices, upscaled
to 460..6000 px with full-resolution noise, gray and 4:2:0 colour JPEGs, plus pure
pixel noise as the worst case. Prints the max and mean absolute difference of the
224x224 output in 1/255 per image and the worst per kind; images the rule leaves at
full scale are identical by construction and not printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import components.transform.decode as dec  # noqa: E402
from btmri.spec import CLASS_NAMES  # noqa: E402
from data_prep.synth import render_phantom  # noqa: E402

SIZE = 224
SIDES = [
    (460, 460),
    (500, 700),
    (896, 896),
    (1024, 1024),
    (1100, 1500),
    (1800, 1800),
    (2048, 2048),
    (3000, 4000),
    (4000, 4000),
    (6000, 6000),
]
REAL = (
    Path(os.environ.get("BTMRI_REAL_DATA", REPO.parent / "shared" / "data" / "brain-tumor-mri")) / "Training"
)


def full_decode(data: tf.Tensor) -> tf.Tensor:
    pixels = tf.io.decode_jpeg(data, channels=1)
    pixels = tf.image.resize(tf.cast(pixels, tf.float32), [SIZE, SIZE], method="bilinear", antialias=True)
    return tf.clip_by_value(pixels / 255.0, 0.0, 1.0)


def cases(rng: np.random.Generator):
    real = sorted(REAL.rglob("*.jpg")) if REAL.is_dir() else []
    for i, (h, w) in enumerate(SIDES):
        phantom, _ = render_phantom(CLASS_NAMES[i % 4], rng)
        big = cv2.resize(phantom, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
        yield "phantom", h, w, cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        colour = cv2.applyColorMap(big, cv2.COLORMAP_BONE)
        yield "phantom-rgb420", h, w, cv2.imencode(".jpg", colour)[1].tobytes()
        if real:
            slice_ = cv2.imread(str(real[(i * 97) % len(real)]), cv2.IMREAD_GRAYSCALE)
            up = cv2.resize(slice_, (w, h), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
            up = np.clip(up + rng.normal(0, 4, up.shape), 0, 255).astype(np.uint8)
            yield "real-upscaled", h, w, cv2.imencode(".jpg", up)[1].tobytes()
        noise = rng.integers(0, 256, (h, w)).astype(np.uint8)
        yield "pixel-noise", h, w, cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--factors",
        type=int,
        nargs="+",
        default=[4, 2, 1],
        help="decoded pixels per output pixel required before downscaling",
    )
    args = parser.parse_args()
    images = list(cases(np.random.default_rng(0)))
    default = dec.JPEG_MIN_DECODED_PER_OUTPUT_PIXEL
    for factor in args.factors:
        dec.JPEG_MIN_DECODED_PER_OUTPUT_PIXEL = factor  # read when the graph is built
        worst: dict[str, float] = {}
        for kind, h, w, data in images:
            index = int(dec._jpeg_ratio_index(tf.constant(h, tf.int64), tf.constant(w, tf.int64), SIZE))
            if index == 0:
                continue
            diff = (
                np.abs(
                    dec.decode_gray_resized(tf.constant(data), SIZE).numpy()
                    - full_decode(tf.constant(data)).numpy()
                )
                * 255
            )
            worst[kind] = max(worst.get(kind, 0.0), float(diff.max()))
            print(
                f"factor {factor}: {kind:15s} {h}x{w} ratio {dec._JPEG_RATIOS[index]}: "
                f"max {diff.max():.2f}/255, mean {diff.mean():.3f}/255"
            )
        print(
            f"factor {factor}{' (default)' if factor == default else ''}: worst max difference "
            + ", ".join(f"{k} {v:.1f}/255" for k, v in worst.items())
        )


if __name__ == "__main__":
    main()
