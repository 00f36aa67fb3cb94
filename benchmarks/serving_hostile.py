"""Benchmark: hostile and malformed traffic against `btmri serve`, with the server's
memory growth per case.

    python benchmarks/serving_hostile.py --model-base-path runs/serving/brain_tumor [--heavy]

Copies the latest version under --model-base-path into a temporary base path (the
version cases add folders there), starts `btmri serve` on it with its default
limits, then runs every case of serving/hostile_cases.py once: oversized and
broadcast tensors, junk messages, stalled gRPC streams and REST connections, deeply
nested or many-dimensional JSON, absurd version paths, HTTP/0.9, clients vanishing
mid-body, responses above the cap; then odd version folders. For each it prints the
answer, the time, and how much the server's peak RSS (VmHWM) grew; after each it
checks that a valid request is still answered. The closing line gives the worst
growth. Goal: no case grows the server's peak RSS by more than 300 MB.
`--heavy` adds the 64 MB messages and the decompression bomb.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.
`tests/serving/test_hostile_serving.py` runs the same cases (`CASES`) and asserts their answers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)
from btmri import spec
from serving.hostile_cases import (
    CASES,
    RSS_GOAL_MB,
    Target,
    peak_rss_mb,
    run_case,
    small_image,
    valid_predict,
    valid_rest,
    version_statuses,
)

ODD_VERSION_FOLDERS = ("99999999999999999999", "v2", "1.5")


def available_versions(target: Target) -> list:
    """The AVAILABLE versions, or the gRPC code when the status call fails."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2

    try:
        statuses = version_statuses(target, timeout=10)
    except grpc.RpcError as err:
        return [err.code().name]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return [version for version, (state, _, _) in statuses.items() if state == available]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", required=True, help="TF Serving base path (<dir>/<version>/)")
    parser.add_argument(
        "--heavy", action="store_true", help="also the 64 MB messages and the decompression bomb"
    )
    args = parser.parse_args()

    from serving.process import ServerProcess
    from serving.source import aspired_version

    latest = aspired_version(args.model_base_path)
    if latest is None:
        sys.exit(f"no model version under {args.model_base_path}")
    work = Path(tempfile.mkdtemp(prefix="serving-hostile-"))
    base = work / spec.MODEL_NAME
    base.mkdir()
    shutil.copytree(latest.path, base / str(latest.version))
    target = Target("", 0, 0, small_image())
    print(f"model {latest.path} (copied to {base}); server log {work / 'server.log'}")
    results = []
    with ServerProcess(base, *target.args(), "--poll-seconds", "0.5", log_path=work / "server.log") as server:
        target.grpc_target, target.rest_port, target.pid = (
            server.grpc_target,
            server.rest_port,
            server.process.pid,
        )
        valid_predict(target)  # warm up
        valid_rest(target)
        print(
            f"server peak RSS after warm-up: {peak_rss_mb(target.pid):.0f} MB; growth below "
            f"is each case's peak RSS minus the RSS before it\n"
        )
        print(f"{'case':52s} {'answer':22s} {'expected':20s} {'s':>6s} {'+RSS MB':>8s} alive")
        for case in CASES:
            if case.heavy and not args.heavy:
                continue
            r = run_case(case, target)
            results.append(r)
            print(
                f"{r['case']:52s} {r['answer'][:22]:22s} {r['expected']:20s} {r['seconds']:6.2f} "
                f"{r['rss_growth_mb']:8.1f} {'yes' if r['alive'] else 'NO'}",
                flush=True,
            )
        for name in ODD_VERSION_FOLDERS:
            shutil.copytree(latest.path, base / name)
        time.sleep(3)
        statuses = available_versions(target)
        print(
            f"{'versions: ' + ', '.join(ODD_VERSION_FOLDERS) + ' beside ' + str(latest.version):52s} "
            f"{'serving ' + str(statuses):22s}"
        )
        peak = peak_rss_mb(target.pid)
    log = (work / "server.log").read_text(errors="replace")
    worst = max(results, key=lambda r: r["rss_growth_mb"])
    wrong = [r["case"] for r in results if r["answer"] != r["expected"] or not r["alive"]]
    print(
        f"\nserver peak RSS {peak:.0f} MB; tracebacks in the server log: "
        f"{log.count('Traceback')}; answers not as expected: {wrong or 'none'}"
    )
    print(
        f"worst RSS growth: {worst['rss_growth_mb']:.1f} MB ({worst['case']}); goal "
        f"< {RSS_GOAL_MB} MB per request: {'met' if worst['rss_growth_mb'] < RSS_GOAL_MB else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
