"""Benchmark: milliseconds per training batch of the augmentation: geometry, acquisition, sequence look.

    python benchmarks/augmentation_cost.py [--batch-size 32] [--repeats 40] [--threads 1 2]

Times components/training/augment.py as the training input pipeline runs it (a traced
graph, float32 [32, 224, 224, 1] in [0, 1]) on this machine: the geometric augmentation
alone (the old one), then with the acquisition-style transforms at the default strength,
then each acquisition transform alone with probability 1 (the rest off) to show where
the time goes, then the sequence look (SequenceRemapConfig) at its default share and at 1. Each figure is the median and the fastest of --repeats calls, for each
--threads count (TensorFlow intra- and inter-op threads; one process per count, since
TensorFlow fixes them at start-up). On a shared machine the fastest is the better guide.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OFF = dict(
    resolution_p=0.0,
    bias_p=0.0,
    noise_p=0.0,
    contrast_p=0.0,
    window_p=0.0,
    gamma_p=0.0,
    curve_p=0.0,
    jpeg_p=0.0,
    restandardise=False,
)
ALONE = ("resolution_p", "bias_p", "noise_p", "contrast_p", "window_p", "gamma_p", "curve_p", "jpeg_p")


def _measure(threads: int, batch_size: int, repeats: int) -> None:
    import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from components.training import augment

    rng = np.random.default_rng(0)
    # A bright disc on a dark background with texture: intensities like a framed head.
    yy, xx = np.mgrid[:224, :224]
    disc = ((yy - 112) ** 2 + (xx - 112) ** 2 < 90**2).astype(np.float32)[None, :, :, None]
    images = tf.constant(disc * rng.uniform(0.3, 0.9, (batch_size, 224, 224, 1)).astype(np.float32))
    boxes = tf.constant(np.tile([[0.4, 0.4, 0.6, 0.6]], (batch_size, 1)).astype(np.float32))
    spec = (tf.TensorSpec([None, 224, 224, 1], tf.float32), tf.TensorSpec([None, 4], tf.float32))
    acquisition = augment.AcquisitionConfig()

    def timed(name, fn):
        call = tf.function(fn).get_concrete_function(*spec)
        for _ in range(3):
            call(images, boxes)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(images, boxes)
            times.append((time.perf_counter() - start) * 1000)
        print(f"  {name:<34} median {statistics.median(times):6.1f} ms   fastest {min(times):6.1f} ms")
        return min(times)

    print(f"{threads} thread(s), batch {batch_size}x224x224x1, strength {acquisition.strength}:")
    old = timed("old (geometry + contrast)", lambda x, b: augment.augment_batch(x, seed=1, boxes=b))
    new = timed(
        "old + acquisition (defaults)",
        lambda x, b: augment.augment_batch(x, seed=1, boxes=b, acquisition=acquisition),
    )
    print(f"  {'added by acquisition (fastest)':<34} {new - old:+6.1f} ms per batch")
    timed(
        "acquisition, every p = 0",
        lambda x, b: augment.acquisition_batch(x, dataclasses.replace(acquisition, **OFF), seed=1),
    )
    for name in ALONE:
        alone = dataclasses.replace(acquisition, **{**OFF, name: 1.0})
        timed(f"acquisition, only {name} = 1", lambda x, b, c=alone: augment.acquisition_batch(x, c, seed=1))
    timed(
        "acquisition, only restandardise",
        lambda x, b: augment.acquisition_batch(
            x, dataclasses.replace(acquisition, **{**OFF, "restandardise": True}), seed=1
        ),
    )
    remap = augment.SequenceRemapConfig()
    for rate in (remap.rate, 1.0):
        cfg = dataclasses.replace(remap, rate=rate)
        timed(
            f"sequence look, share {rate:g}", lambda x, b, c=cfg: augment.sequence_remap_batch(x, c, seed=1)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one is not None:
        _measure(args.one, args.batch_size, args.repeats)
        return
    for threads in args.threads:
        command = [sys.executable, __file__, "--one", str(threads), "--batch-size", str(args.batch_size)]
        subprocess.run([*command, "--repeats", str(args.repeats)], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
