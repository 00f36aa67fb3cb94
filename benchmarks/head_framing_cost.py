"""What head framing costs in the Transform graph, per image, in process.

    python benchmarks/head_framing_cost.py [--data-dir D] [--images 64] [--repeats 3]

Compares the whole-image decode the model read before (decode + resize to 224) with
the current preprocessing_fn (decode at DECODE_SIZE, crop to the head, standardise,
resize to 224), on the same encoded images, in one run. Without --data-dir it uses
synthetic phantoms written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import btmri  # noqa: E402,F401  (Keras 2 switch before TensorFlow)


def _images(data_dir: str | None, count: int) -> list[bytes]:
    if data_dir is None:
        from data_prep.synth import generate_dataset

        data_dir = tempfile.mkdtemp()
        generate_dataset(data_dir, per_class=max(1, count // 4), test_per_class=0, progress=False)
    files = sorted(p for p in Path(data_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    step = max(1, len(files) // count)
    return [p.read_bytes() for p in files[::step][:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="image folder (default: phantoms)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    from btmri import spec
    from components.transform.preprocessing import IMAGE_XF, decode_and_resize, preprocessing_fn

    data = tf.constant(_images(args.data_dir, args.images))
    n = int(data.shape[0])
    ways = {
        "whole image, 224": tf.function(lambda x: decode_and_resize(x)),
        "head framing (current)": tf.function(
            lambda x: preprocessing_fn({spec.IMAGE_KEY: x[:, None]})[IMAGE_XF]
        ),
    }
    for fn in ways.values():
        fn(data)  # trace once
    timings = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn(data)
            timings[name].append((time.perf_counter() - start) / n * 1000)
    base = min(timings["whole image, 224"])
    print(f"{n} images, best of {args.repeats}")
    for name, values in timings.items():
        print(f"  {name:24s} {min(values):6.2f} ms per image  ({min(values) / base:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
