"""Sends hostile images to an exported SavedModel in a fresh process and reports, as
one JSON object on stdout, each request's outcome and the process's peak-memory
growth (VmHWM) since a warm-up request:

    python -m tests.hostile_probe MODEL_DIR

A fresh process, because VmHWM only ever grows: in the test process it would
still hold the peak of whatever ran before.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(model_dir: str) -> None:
    import cv2
    import numpy as np
    import tensorflow as tf

    from data_prep.image_io import decode_image
    from data_prep.tfrecords import make_example
    from btmri import spec
    from tests.hostile_files import jpeg_bomb_header, png_bomb, png_bytes
    from tests.imaging import textured_image

    model = tf.saved_model.load(model_dir)
    images = model.signatures[spec.PREDICT_IMAGES]
    examples = model.signatures[spec.SERVING_DEFAULT]

    def by_bytes(data: bytes):
        return images(**{spec.IMAGE_BYTES_INPUT: tf.constant([data])})[spec.PROBABILITIES].numpy()[0]

    def by_example(data: bytes):
        serialized = make_example(data, 0, 1, 1, "probe.png").SerializeToString()
        return examples(**{spec.EXAMPLES_INPUT: tf.constant([serialized])})[spec.PROBABILITIES].numpy()[0]

    normal = cv2.imencode(".png", textured_image(1, 256, 256))[1].tobytes()
    by_bytes(normal), by_example(normal)  # warm-up: every graph loaded and run once
    jpeg_bomb, png_bomb_ = jpeg_bomb_header(), png_bomb()
    scan12 = (textured_image(2, 200, 240).astype(np.uint16) * 16 + 5).astype(np.uint16)
    png16 = png_bytes(scan12)
    report: dict = {"sizes": {"jpeg_bomb": len(jpeg_bomb), "png_bomb": len(png_bomb_)}}
    baseline = peak_rss_mb()
    cases = {
        "jpeg_bomb": lambda: by_bytes(jpeg_bomb),
        "png_bomb": lambda: by_bytes(png_bomb_),
        "jpeg_bomb_in_example": lambda: by_example(jpeg_bomb),
        "png_bomb_in_example": lambda: by_example(png_bomb_),
        "bmp": lambda: by_bytes(cv2.imencode(".bmp", textured_image(3, 50, 50))[1].tobytes()),
    }
    for name, call in cases.items():
        try:
            call()
            outcome = "answered"
        except tf.errors.InvalidArgumentError as err:
            outcome = "INVALID_ARGUMENT: " + next(
                (line.strip() for line in err.message.splitlines() if "assertion failed" in line),
                err.message.splitlines()[0],
            )
        report[name] = {"outcome": outcome, "peak_rss_growth_mb": round(peak_rss_mb() - baseline, 1)}
    # 16-bit PNG straight to the model vs the PNG prepare would store for it
    report["png16_served"] = by_bytes(png16).tolist()
    report["png16_prepared"] = by_bytes(decode_image(png16, ".png").encoded).tolist()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
