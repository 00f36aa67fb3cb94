"""What request logging costs a request: the local server with and without --request-log.

    python benchmarks/request_log_overhead.py --model-base-path runs/serving/brain_tumor \\
        --images 'runs/data/synthetic/Testing/*/*.png' [--requests 200] [--payload features]

Starts `btmri serve` twice on the same model (no logging; logging every request with
the chosen payload), sends the same sequential gRPC Predict calls (one image each,
after a warm-up) and prints the median and mean latency of each, the difference, and
what the log holds afterwards. Then times `RequestLog.offer` alone in this process:
the only logging work a request thread does (the sample draw and a queue put).
Latencies on a shared machine are noisy: compare medians, repeat.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _latencies(base: str, images: list[bytes], requests: int, *args: str) -> list[float]:
    from serving.client import PredictionClient
    from serving.process import ServerProcess

    with ServerProcess(base, *args) as server, PredictionClient(server.grpc_target) as client:
        for image in images[:5]:
            client.classify_image(image)  # warm-up
        out = []
        for i in range(requests):
            start = time.perf_counter()
            client.classify_image(images[i % len(images)])
            out.append(time.perf_counter() - start)
    return out


def _offer_cost(images: list[bytes], payload: str, calls: int = 2000) -> float:
    import numpy as np

    from btmri import spec
    from btmri.documents import ServerOptions
    from serving.request_log import RequestLog

    outputs = {
        spec.PROBABILITIES: np.full((1, spec.NUM_CLASSES), 0.25, np.float32),
        spec.CLASS_NAME: np.array([b"glioma"], object),
        spec.OOD_SCORE: np.array([0.5], np.float32),
    }
    with tempfile.TemporaryDirectory() as folder:
        logger = RequestLog(ServerOptions(model_base_path="-", request_log_dir=folder, log_payload=payload))
        start = time.perf_counter()
        for i in range(calls):
            logger.offer(
                spec.MODEL_NAME,
                spec.PREDICT_IMAGES,
                {spec.IMAGE_BYTES_INPUT: np.array([images[i % len(images)]], object)},
                1,
                outputs,
            )
        took = (time.perf_counter() - start) / calls
        logger.close(timeout=60)
    return took


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", required=True)
    parser.add_argument("--images", required=True, help="glob of JPEG/PNG files")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--payload", default="features", choices=("none", "features", "images"))
    args = parser.parse_args(argv)
    images = [Path(p).read_bytes() for p in sorted(glob.glob(args.images))]
    if not images:
        parser.error(f"no images match {args.images}")

    from serving.request_log import log_files

    plain = _latencies(args.model_base_path, images, args.requests)
    with tempfile.TemporaryDirectory() as log_dir:
        logged = _latencies(
            args.model_base_path,
            images,
            args.requests,
            "--request-log",
            log_dir,
            "--log-payload",
            args.payload,
        )
        files = log_files(log_dir)
        size = sum(f.stat().st_size for f in files)
    for name, values in (("no logging", plain), (f"logging ({args.payload})", logged)):
        print(
            f"{name:>22}: median {statistics.median(values) * 1e3:7.2f} ms, "
            f"mean {statistics.fmean(values) * 1e3:7.2f} ms over {len(values)} requests"
        )
    print(
        f"{'difference':>22}: median {(statistics.median(logged) - statistics.median(plain)) * 1e3:+7.2f} ms, "
        f"mean {(statistics.fmean(logged) - statistics.fmean(plain)) * 1e3:+7.2f} ms"
    )
    print(
        f"{'log':>22}: {len(files)} files, {size / 1024:.1f} KiB "
        f"({size / max(1, args.requests + 5):.0f} bytes per request)"
    )
    print(
        f"{'RequestLog.offer':>22}: {_offer_cost(images, args.payload) * 1e6:.1f} µs per call "
        "(the request thread's share)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
