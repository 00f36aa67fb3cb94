"""Benchmark: StatisticsGen and Transform throughput per Beam runner setup, on real images.

    python benchmarks/beam_scaling.py [--data-dir /path/to/brain-tumor-mri] [--sample 400]
        [--work-dir W] [--direct-only]

Takes `--sample` images from <data-dir>/Training/<class>/ (the same share of every
class, evenly spaced in name order), prepares them once (train/eval TFRecords) and runs
the pipeline's Beam stage (pipeline/portable.py: ImportExampleGen, StatisticsGen,
ImportSchemaGen, ExampleValidator, Transform; no cache) under each setup, in one run:

  direct in_memory            DirectRunner inside the driver process
  direct 1 / 2 processes      DirectRunner, multi-processing, 1 / 2 SDK worker processes
  portable 1 / 2 workers      PortableRunner → local job service process → SDK workers
                              from an external worker pool process (environment EXTERNAL)

It prints images per second of StatisticsGen (every image of both splits) and Transform
(analysis and pre/post-transform statistics over the train split: every train image is
decoded and framed), the SDK workers the pool started per portable setup, and the
portable layer's overhead as a ratio of seconds against the DirectRunner with as many
worker processes (`--direct-only`: the DirectRunner rows alone). Skips (exit 0, saying so) when the images are absent.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "brain-tumor-mri"
MEASURED = ("StatisticsGen", "Transform")


def sample_images(data_dir: Path, n: int, out: Path) -> dict[str, int]:
    """Links an even share of each class's training images into out/Training/<class>/."""
    from btmri.spec import CLASS_NAMES, IMAGE_EXTENSIONS, KAGGLE_TRAINING_DIR

    counts = {}
    folders = {p.name.lower(): p for p in (data_dir / KAGGLE_TRAINING_DIR).iterdir() if p.is_dir()}
    for i, name in enumerate(CLASS_NAMES):
        files = sorted(f for f in folders[name].iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        want = n // len(CLASS_NAMES) + (1 if i < n % len(CLASS_NAMES) else 0)
        step = max(1, len(files) // max(want, 1))
        chosen = files[::step][:want]
        target = out / KAGGLE_TRAINING_DIR / name
        target.mkdir(parents=True, exist_ok=True)
        for f in chosen:
            (target / f.name).symlink_to(f.resolve())
        counts[name] = len(chosen)
    return counts


def component_seconds(config) -> dict[str, float]:
    """Wall seconds of each component's latest execution, from ML Metadata."""
    from pipeline.metadata import node_executions

    out = {}
    for node in MEASURED:
        execution = node_executions(config, node)[-1]
        out[node] = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
    return out


def run_setup(name: str, beam: list[str], prepared: str, work: Path) -> tuple[dict[str, float], float]:
    from tfx import v1 as tfx

    from pipeline.config import PipelineConfig
    from pipeline.portable import beam_stage_pipeline

    config = PipelineConfig(
        pipeline_root=str(work / name.replace(" ", "_") / "root"),
        data_root=prepared,
        serving_dir=str(work / "unused"),
        beam_pipeline_args=beam,
        enable_cache=False,
        use_module_files=False,
    )  # external workers import the project
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(beam_stage_pipeline(config))
    return component_seconds(config), time.time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--sample", type=int, default=400, help="images (default %(default)s)")
    parser.add_argument("--work-dir", default=None, help="keep artifacts here (default: a temp dir)")
    parser.add_argument("--direct-only", action="store_true", help="skip the portable setups")
    args = parser.parse_args()

    from btmri.spec import KAGGLE_TRAINING_DIR, TRAIN_SPLIT

    data_dir = Path(args.data_dir)
    if not (data_dir / KAGGLE_TRAINING_DIR).is_dir():
        print(f"skipped: no {KAGGLE_TRAINING_DIR}/ images at {data_dir} (give --data-dir)")
        return 0

    import logging

    from absl import logging as absl_logging

    from data_prep.prepare import PrepareOptions, prepare
    from pipeline.config import beam_args
    from pipeline.portable import portable_services

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="btmri-beam-scaling-"))
    counts = sample_images(data_dir, args.sample, work / "sample")
    prepared = str(work / "prepared")
    manifest = prepare(PrepareOptions(str(work / "sample"), prepared, progress=False))
    images = {
        "StatisticsGen": manifest.total_written,
        "Transform": sum(manifest.counts[TRAIN_SPLIT].values()),
    }
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} cores  "
        f"{platform.processor() or platform.machine()}  load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"data: {manifest.total_written} real training images sampled from {data_dir} "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())}); StatisticsGen reads all "
        f"{images['StatisticsGen']}, Transform decodes the {images['Transform']} of train"
    )

    rows = []
    setups = [
        ("direct in_memory", beam_args("in_memory"), None),
        ("direct 1 process", beam_args("1"), None),
        ("direct 2 processes", beam_args("2"), None),
    ]
    for name, beam, _ in setups:
        rows.append((name, *run_setup(name, beam, prepared, work), None))
    if not args.direct_only:
        with portable_services(work / "beam_services") as services:
            for n in (1, 2):
                before = services.workers_started()
                beam = beam_args(services.workers_spec, services.job_endpoint) + [f"--direct_num_workers={n}"]
                name = f"portable {n} worker{'s' if n > 1 else ''}"
                seconds, total = run_setup(name, beam, prepared, work)
                rows.append((name, seconds, total, services.workers_started() - before))

    print(f"\n{'setup':22s}{'StatisticsGen':>22s}{'Transform':>22s}{'Beam stage':>12s}{'SDK workers':>13s}")
    for name, seconds, total, started in rows:
        cells = "".join(f"{images[c] / seconds[c]:9.1f} img/s {seconds[c]:6.1f} s" for c in MEASURED)
        print(f"{name:22s}{cells}{total:10.1f} s{'' if started is None else f'{started:>8d} started':>13s}")
    by_name = {name: seconds for name, seconds, _, _ in rows}
    if args.direct_only:
        print(f"\nartifacts in {work}")
        return 0
    print("\nportable layer overhead (seconds, portable / DirectRunner):")
    for portable, direct in (
        ("portable 1 worker", "direct 1 process"),
        ("portable 2 workers", "direct 2 processes"),
        ("portable 1 worker", "direct in_memory"),
    ):
        ratios = ", ".join(f"{c} {by_name[portable][c] / by_name[direct][c]:.2f}x" for c in MEASURED)
        print(f"  {portable} vs {direct}: {ratios}")
    print(f"\nartifacts in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
