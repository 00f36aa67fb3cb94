"""Benchmark: wall time of every component of `btmri run` on the real training images.

    python benchmarks/pipeline_components.py [--data-dir /path/to/brain-tumor-mri]
        [--epochs 1] [--materialize] [--beam-mode multi_processing|in_memory]

Runs the whole pipeline without cache in a fresh pipeline root and prints the
seconds per component. With --materialize, Transform writes transformed
examples and the Trainer reads them; the size of those on disk is printed too,
to compare with on-the-fly transformation (the default).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "brain-tumor-mri"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--materialize", action="store_true")
    parser.add_argument("--beam-mode", default="multi_processing", choices=["multi_processing", "in_memory"])
    parser.add_argument("--work-dir", default=None, help="keep artifacts here (default: a temp dir)")
    args = parser.parse_args()

    from data_prep.prepare import PrepareOptions, prepare
    from pipeline.config import PipelineConfig
    from pipeline.local_runner import run_pipeline
    from pipeline.metadata import latest_output

    work = args.work_dir or tempfile.mkdtemp(prefix="btmri-bench-")
    prepared = os.path.join(work, "prepared")
    started = time.time()
    manifest = prepare(PrepareOptions(args.data_dir, prepared, progress=False))
    prepare_s = time.time() - started
    beam = [f"--direct_running_mode={args.beam_mode}", f"--direct_num_workers={os.cpu_count()}"]
    config = PipelineConfig(
        pipeline_root=os.path.join(work, "root"),
        data_root=prepared,
        serving_dir=os.path.join(work, "serving"),
        epochs=args.epochs,
        accuracy_lower_bound=0.0,
        enable_cache=False,
        materialize=args.materialize,
        beam_pipeline_args=beam,
    )
    summary = run_pipeline(config, progress_stream=open(os.devnull, "w"))

    print(
        f"data: {manifest['total_written']} images {manifest['counts']}; "
        f"{args.epochs} epoch(s); Beam DirectRunner {args.beam_mode}, {os.cpu_count()} workers; "
        f"materialize={args.materialize}"
    )
    print(f"{'btmri prepare':28s}{prepare_s:8.1f} s")
    for node, seconds in summary.component_seconds.items():
        print(f"{node:28s}{seconds:8.1f} s")
    print(f"{'whole pipeline':28s}{summary.seconds:8.1f} s")
    examples = latest_output(config, "ImportExampleGen", "examples")
    print(f"ImportExampleGen output on disk: {_du(examples.uri) / 1e6:.0f} MB")
    if args.materialize:
        transformed = latest_output(config, "Transform", "transformed_examples")
        print(f"Transform materialized output on disk: {_du(transformed.uri) / 1e6:.0f} MB")
    print(
        f"eval accuracy after {args.epochs} epoch(s): "
        f"{summary.metrics.get('sparse_categorical_accuracy', float('nan')):.3f}"
    )
    print(f"artifacts in {work}")


if __name__ == "__main__":
    main()
