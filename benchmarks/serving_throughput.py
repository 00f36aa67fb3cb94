"""Benchmark: gRPC serving throughput and latency against the in-process limit, and the
first request after a version swap with and without the warm-up file.

    python benchmarks/serving_throughput.py --model-base-path runs/serving/brain_tumor \
        [--images DIR] [--requests 400] [--clients 1 8] [--swaps 3]
    python benchmarks/serving_throughput.py --model-config-file F --label canary   # a label's version

Every request carries one JPEG (the `predict_images` signature, as `btmri predict`
sends it). Measured, for 1 and 8 concurrent clients:
  - in process: the same SavedModel's signature called directly from as many
    threads, one image per call (the limit: no network, no serialization);
    also one caller with batches of 8 (what server-side batching can form);
  - `btmri serve` without and with --enable-batching, over gRPC with the
    official stubs, one channel per client.
With --model-config-file and --label the servers serve that config and every request
asks for the label (the in-process figures use the version the label names).
First request after a swap (--swaps N, 0: skip): a server on a temporary base path
is given new versions of the same model, alternately without and with TF Serving's
warm-up file (assets.extra/tf_serving_warmup_requests, written as the InfraValidator
writes it), and the first predict_images and gradcam requests on each new version are
timed once it is AVAILABLE (the warm-up is replayed before that).
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up notes would bury the table

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)
from serving.latency import p50_p99_ms
from serving.requests import predict_request

BATCH = 8  # in-process batch: what batching can form from 8 clients
REAL_DATA = REPO.parent / "shared" / "data" / "brain-tumor-mri" / "Training"


def load_images(folder: str | None, count: int) -> tuple[list[bytes], str]:
    import cv2
    import numpy as np

    if folder or REAL_DATA.is_dir():
        root = Path(folder) if folder else REAL_DATA
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = files[:: max(1, len(files) // count)][:count]  # spread over classes
        images = []
        for f in files:
            data = f.read_bytes()
            if f.suffix.lower() == ".png":
                ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(f), cv2.IMREAD_UNCHANGED))
                data = jpeg.tobytes()
            images.append(data)
        return images, str(root)
    from btmri.spec import CLASS_NAMES
    from data_prep.synth import render_phantom

    rng = np.random.default_rng(0)
    images = [
        cv2.imencode(".jpg", render_phantom(CLASS_NAMES[i % 4], rng)[0])[1].tobytes() for i in range(count)
    ]
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
    p50_ms, p99_ms = p50_p99_ms(latencies)
    return {
        "images_per_s": len(latencies) / wall,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "cpu_ms_per_image": 1000 * cpu / len(latencies),
    }


def in_process_loads(model_dir: Path, images: list[bytes], clients_list) -> dict:
    """name → load function(requests) for the SavedModel called in this process."""
    import tensorflow as tf

    from btmri import spec

    fn = tf.saved_model.load(str(model_dir)).signatures[spec.PREDICT_IMAGES]

    def one(c, r):
        fn(**{spec.IMAGE_BYTES_INPUT: tf.constant([images[(c * 7919 + r) % len(images)]])})

    def batched(c, r):
        start = (r * BATCH) % len(images)
        fn(**{spec.IMAGE_BYTES_INPUT: tf.constant((images * 2)[start : start + BATCH])})

    def batched_load(requests):
        result = run_load(1, requests // BATCH, batched)
        result["images_per_s"] *= BATCH
        result["cpu_ms_per_image"] /= BATCH
        return result

    for r in range(10):
        one(0, r)  # warm up
    loads = {
        f"in process, {n} caller(s), batch 1": (lambda q, n=n: run_load(n, q, one)) for n in clients_list
    }
    loads[f"in process, 1 caller, batch {BATCH}"] = batched_load
    return loads


def served_loads(
    server, label: str, images: list[bytes], clients_list, version_label: str | None = None
) -> dict:
    """name → load function(requests) for a running server, over gRPC."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from btmri import spec

    requests_pb = [
        predict_request(spec.PREDICT_IMAGES, {spec.IMAGE_BYTES_INPUT: [image]}, version_label=version_label)
        for image in images
    ]
    # One channel per client, as separate client processes would have.
    stubs = [
        prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        for _ in range(max(clients_list))
    ]

    def one(c, r):
        stubs[c].Predict(requests_pb[(c * 7919 + r) % len(requests_pb)], timeout=60)

    for c in range(len(stubs)):
        for r in range(3):
            one(c, r)  # connect and warm up
    return {
        f"{label}, {n} client(s)": (lambda q, n=n: run_load(n, q, one, server.process.pid))
        for n in clients_list
    }


def _push(source: Path, base: Path, version: int) -> None:
    """As the Pusher does: a hidden copy renamed into place."""
    import shutil

    staging = base / f".staging-{version}"
    shutil.copytree(source, staging)
    staging.rename(base / str(version))


def _wait_available(server, version: int, limit: float = 600.0) -> None:
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from btmri import spec

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = spec.MODEL_NAME
    request.model_spec.version.value = version
    deadline = time.monotonic() + limit
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                (status,) = stub.GetModelStatus(request, timeout=10).model_version_status
                if status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                    return
                if status.state == get_model_status_pb2.ModelVersionStatus.END:
                    sys.exit(f"version {version} failed to load: {status.status.error_message}")
            except grpc.RpcError:
                pass  # not seen yet
            time.sleep(0.01)
    sys.exit(f"version {version} not AVAILABLE after {limit:.0f} s")


def first_requests_after_swap(model_dir: Path, images: list[bytes], swaps: int) -> dict:
    """{'without'|'with': {signature: [ms of the first request on each new version]}}."""
    import shutil

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from btmri import spec
    from btmri.layout import WARMUP_DIR
    from pipeline.infra_validator import warmup_logs, write_warmup
    from serving.process import ServerProcess

    work = Path(tempfile.mkdtemp(prefix="serving-bench-swap-"))
    plain, warm, base = work / "plain", work / "warm", work / spec.MODEL_NAME
    shutil.copytree(model_dir, plain, ignore=shutil.ignore_patterns(WARMUP_DIR))
    shutil.copytree(plain, warm)
    write_warmup(str(warm), warmup_logs(images))
    base.mkdir()
    _push(plain, base, 1)
    times = {
        "without": {spec.PREDICT_IMAGES: [], spec.GRADCAM: []},
        "with": {spec.PREDICT_IMAGES: [], spec.GRADCAM: []},
    }
    version = 1
    with (
        ServerProcess(base, "--poll-seconds", "0.1", log_path=work / "server.log") as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for swap in range(swaps):
            for kind, source in (("without", plain), ("with", warm)):
                version += 1
                _push(source, base, version)
                _wait_available(server, version)
                for signature in (spec.PREDICT_IMAGES, spec.GRADCAM):
                    request = predict_request(
                        signature,
                        {spec.IMAGE_BYTES_INPUT: [images[(swap + version) % len(images)]]},
                        version=version,
                    )
                    start = time.perf_counter()
                    stub.Predict(request, timeout=600)
                    times[kind][signature].append(1000 * (time.perf_counter() - start))
    shutil.rmtree(work, ignore_errors=True)
    return times


def _labelled_version(config_file: str, label: str) -> Path:
    from btmri import spec
    from serving.model_config import read_model_config_file
    from serving.source import list_versions

    for model in read_model_config_file(config_file):
        if model.name == spec.MODEL_NAME:
            if label not in model.labels:
                sys.exit(f"{config_file}: model {model.name} has no label {label!r}")
            for candidate in list_versions(model.base_path):
                if candidate.version == model.labels[label]:
                    return Path(candidate.path)
            sys.exit(f"version {model.labels[label]} ({label}) is not under {model.base_path}")
    sys.exit(f"{config_file} does not list model {spec.MODEL_NAME}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", default=None, help="TF Serving base path (<dir>/<version>/)")
    parser.add_argument(
        "--model-config-file", default=None, help="serve this TF Serving model config instead (with --label)"
    )
    parser.add_argument("--label", default=None, help="every request asks for this version label")
    parser.add_argument(
        "--swaps", type=int, default=3, help="version swaps without and with the warm-up file each (0: skip)"
    )
    parser.add_argument("--images", default=None, help="folder of JPEG/PNG images")
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--batching-parameters-file",
        default=None,
        help="for the batching run (default: serving/config/batching.config)",
    )
    parser.add_argument("--skip-unbatched", action="store_true", help="only the batching run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each is kept")
    args = parser.parse_args()

    from serving.process import ServerProcess
    from serving.source import aspired_version

    if bool(args.model_base_path) == bool(args.model_config_file):
        sys.exit("give --model-base-path or --model-config-file (with --label)")
    if args.model_config_file:
        if not args.label:
            sys.exit("--model-config-file needs --label (the version to measure)")
        model_dir, serve_args = (
            _labelled_version(args.model_config_file, args.label),
            ["--model-config-file", args.model_config_file],
        )
        base = None
    else:
        base = Path(args.model_base_path)
        latest = aspired_version(str(base))
        if latest is None:
            sys.exit(f"no model version under {base}")
        model_dir, serve_args = Path(latest.path), []
    images, source = load_images(args.images, 64)
    print(
        f"model {model_dir}{f' (label {args.label})' if args.label else ''}; "
        f"{len(images)} JPEGs from {source} "
        f"(mean {statistics.mean(map(len, images)) / 1024:.0f} KiB); {args.requests} requests "
        f"per measurement, best of {args.rounds} rounds"
    )

    loads = in_process_loads(model_dir, images, args.clients)
    batching = ["--enable-batching"]
    if args.batching_parameters_file:
        batching += ["--batching-parameters-file", args.batching_parameters_file]
    logs = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    configs = {"btmri serve": []} if not args.skip_unbatched else {}
    configs["btmri serve --enable-batching"] = batching
    with contextlib.ExitStack() as stack:
        for i, (label, extra) in enumerate(configs.items()):
            server = stack.enter_context(
                ServerProcess(base, *serve_args, *extra, log_path=logs / f"server{i}.log")
            )
            loads.update(served_loads(server, label, images, args.clients, args.label))
        # Other jobs share this machine: alternate the measurements over several
        # rounds and keep each one's best round.
        runs: dict[str, list[dict]] = {name: [] for name in loads}
        for _ in range(args.rounds):
            for name, load in loads.items():
                runs[name].append(load(args.requests))
    rows = {name: max(results, key=lambda r: r["images_per_s"]) for name, results in runs.items()}

    print(f"\n{'configuration':48s} {'images/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms/img':>11s}")
    for name, r in rows.items():
        print(
            f"{name:48s} {r['images_per_s']:9.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
            f"{r['cpu_ms_per_image']:11.2f}"
        )
    print(
        "\nserved / in-process (throughput; CPU efficiency = in-process CPU per image / "
        "server + client CPU per image):"
    )
    for n in args.clients:
        same = rows[f"in process, {n} caller(s), batch 1"]
        best = max(
            (r for name, r in rows.items() if name.startswith("in process")), key=lambda r: r["images_per_s"]
        )
        for label in configs:
            r = rows[f"{label}, {n} client(s)"]
            print(
                f"  {label}, {n} client(s): {r['images_per_s'] / same['images_per_s']:.2f}x "
                f"in-process at the same concurrency ({r['images_per_s'] / best['images_per_s']:.2f}x "
                f"the best in-process figure); CPU efficiency "
                f"{same['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}"
            )

    if args.swaps > 0:
        times = first_requests_after_swap(model_dir, images, args.swaps)
        print(
            f"\nfirst request on a version just swapped in (ms; {args.swaps} swaps each, "
            f"median [min, max]); steady state: the p50 rows above"
        )
        for kind in ("without", "with"):
            cells = [
                f"{sig} {statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]"
                for sig, v in times[kind].items()
            ]
            print(f"  {kind + ' warm-up file':25s} " + ";  ".join(cells))


if __name__ == "__main__":
    main()
