"""Benchmark: gRPC serving throughput and latency against the in-process limit.

    python benchmarks/serving_throughput.py --model-base-path runs/serving/brain_tumor \
        [--images DIR] [--requests 400] [--clients 1 8]

Every request carries one JPEG (the `predict_images` signature, as `btmri predict`
sends it). Measured, for 1 and 8 concurrent clients:
  - in process: the same SavedModel's signature called directly from as many
    threads, one image per call (the limit: no network, no serialization);
    also one caller with batches of 8 (what server-side batching can form);
  - `btmri serve` without and with --enable-batching, over gRPC with the
    official stubs, one channel per client.
Images: --images, else the real Kaggle JPEGs in /path/to/brain-tumor-mri
when present, else synthetic phantoms encoded as JPEG in memory.
Clients and server share this machine's cores, as they would on one host.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TF's start-up notes would bury the table

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)

BATCH = 8   # in-process batch: what batching can form from 8 clients
REAL_DATA = REPO.parent / "shared" / "data" / "brain-tumor-mri" / "Training"


def load_images(folder: str | None, count: int) -> tuple[list[bytes], str]:
    import cv2
    import numpy as np

    if folder or REAL_DATA.is_dir():
        root = Path(folder) if folder else REAL_DATA
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = files[:: max(1, len(files) // count)][:count]   # spread over classes
        images = []
        for f in files:
            data = f.read_bytes()
            if f.suffix.lower() == ".png":
                ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
                data = jpeg.tobytes()
            images.append(data)
        return images, str(root)
    from data_prep.contract import CLASS_NAMES
    from data_prep.synth import render_phantom

    rng = np.random.default_rng(0)
    images = [cv2.imencode(".jpg", render_phantom(CLASS_NAMES[i % 4], rng)[0])[1].tobytes()
              for i in range(count)]
    return images, "synthetic phantoms"


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU time of another process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(clients: int, requests: int, call, server_pid: int | None = None) -> dict:
    """`call(client_index, request_index)` from `clients` threads: images/s, latency in ms,
    and CPU ms per image (this process, plus the server's when there is one), which other
    jobs on the machine disturb far less than wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = requests // clients

    def worker(c: int) -> None:
        mine = []
        for r in range(per_client):
            start = time.perf_counter()
            call(c, r)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    cpu = time.process_time() + (process_cpu_seconds(server_pid) if server_pid else 0.0)
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = time.process_time() + (process_cpu_seconds(server_pid) if server_pid else 0.0) - cpu
    latencies.sort()
    return {"images_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "cpu_ms_per_image": 1000 * cpu / len(latencies)}


def in_process_loads(model_dir: Path, images: list[bytes], clients_list) -> dict:
    """name → load function(requests) for the SavedModel called in this process."""
    import tensorflow as tf

    from btmri import spec

    fn = tf.saved_model.load(str(model_dir)).signatures[spec.PREDICT_IMAGES]

    def one(c, r):
        fn(**{spec.IMAGE_BYTES_INPUT: tf.constant([images[(c * 7919 + r) % len(images)]])})

    def batched(c, r):
        start = (r * BATCH) % len(images)
        fn(**{spec.IMAGE_BYTES_INPUT: tf.constant((images * 2)[start:start + BATCH])})

    def batched_load(requests):
        result = run_load(1, requests // BATCH, batched)
        result["images_per_s"] *= BATCH
        result["cpu_ms_per_image"] /= BATCH
        return result

    for r in range(10):
        one(0, r)                                                  # warm up
    loads = {f"in process, {n} caller(s), batch 1": (lambda q, n=n: run_load(n, q, one))
             for n in clients_list}
    loads[f"in process, 1 caller, batch {BATCH}"] = batched_load
    return loads


def served_loads(server, label: str, images: list[bytes], clients_list) -> dict:
    """name → load function(requests) for a running server, over gRPC."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from btmri import spec

    requests_pb = []
    for image in images:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = spec.MODEL_NAME
        request.model_spec.signature_name = spec.PREDICT_IMAGES
        request.inputs[spec.IMAGE_BYTES_INPUT].CopyFrom(tf.make_tensor_proto([image]))
        requests_pb.append(request)
    # One channel per client, as separate client processes would have.
    stubs = [prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
             for _ in range(max(clients_list))]

    def one(c, r):
        stubs[c].Predict(requests_pb[(c * 7919 + r) % len(requests_pb)], timeout=60)

    for c in range(len(stubs)):
        for r in range(3):
            one(c, r)                                              # connect and warm up
    return {f"{label}, {n} client(s)": (lambda q, n=n: run_load(n, q, one, server.process.pid))
            for n in clients_list}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", required=True, help="TF Serving base path (<dir>/<version>/)")
    parser.add_argument("--images", default=None, help="folder of JPEG/PNG images")
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batching-parameters-file", default=None,
                        help="for the batching run (default: serving/config/batching.config)")
    parser.add_argument("--skip-unbatched", action="store_true", help="only the batching run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each is kept")
    args = parser.parse_args()

    from serving.process import ServerProcess
    from serving.source import aspired_version

    base = Path(args.model_base_path)
    latest = aspired_version(str(base))
    if latest is None:
        sys.exit(f"no model version under {base}")
    images, source = load_images(args.images, 64)
    print(f"model {latest.path}; {len(images)} JPEGs from {source} "
          f"(mean {statistics.mean(map(len, images)) / 1024:.0f} KiB); {args.requests} requests "
          f"per measurement, best of {args.rounds} rounds")

    loads = in_process_loads(Path(latest.path), images, args.clients)
    batching = ["--enable-batching"]
    if args.batching_parameters_file:
        batching += ["--batching-parameters-file", args.batching_parameters_file]
    logs = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    configs = {"btmri serve": []} if not args.skip_unbatched else {}
    configs["btmri serve --enable-batching"] = batching
    with contextlib.ExitStack() as stack:
        for i, (label, extra) in enumerate(configs.items()):
            server = stack.enter_context(ServerProcess(base, *extra, log_path=logs / f"server{i}.log"))
            loads.update(served_loads(server, label, images, args.clients))
        # Other jobs share this machine: alternate the measurements over several
        # rounds and keep each one's best round.
        runs: dict[str, list[dict]] = {name: [] for name in loads}
        for _ in range(args.rounds):
            for name, load in loads.items():
                runs[name].append(load(args.requests))
    rows = {name: max(results, key=lambda r: r["images_per_s"]) for name, results in runs.items()}

    print(f"\n{'configuration':48s} {'images/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms/img':>11s}")
    for name, r in rows.items():
        print(f"{name:48s} {r['images_per_s']:9.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['cpu_ms_per_image']:11.2f}")
    print("\nserved / in-process (throughput; CPU efficiency = in-process CPU per image / "
          "server + client CPU per image):")
    for n in args.clients:
        same = rows[f"in process, {n} caller(s), batch 1"]
        best = max((r for name, r in rows.items() if name.startswith("in process")),
                   key=lambda r: r["images_per_s"])
        for label in configs:
            r = rows[f"{label}, {n} client(s)"]
            print(f"  {label}, {n} client(s): {r['images_per_s'] / same['images_per_s']:.2f}x "
                  f"in-process at the same concurrency ({r['images_per_s'] / best['images_per_s']:.2f}x "
                  f"the best in-process figure); CPU efficiency "
                  f"{same['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}")


if __name__ == "__main__":
    main()
