"""Beam's portability layer on one machine: a job service and a worker pool, each its own
process, and the pipeline's Beam stage on its own (docs/scale.md).

PortableRunner submits each Beam job to the job service
(`apache_beam.runners.portability.local_job_service_main`), which asks the worker pool
(`apache_beam.runners.worker.worker_pool_main`, environment EXTERNAL) for SDK worker
processes and drives them over the Fn API: the protocol Flink's, Spark's and Dataflow's
runners speak to the same SDK workers. What differs on a cluster is who runs the stages
and how many workers it asks for; Beam's local job service runs each stage on one SDK
worker, whatever `--direct_num_workers` says (measured: benchmarks/beam_scaling.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from btmri import KERAS_SWITCH
from pipeline.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
JOB_SERVICE_MODULE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL_MODULE = "apache_beam.runners.worker.worker_pool_main"
# The pool logs this line for each SDK worker process it starts.
WORKER_STARTED = "Starting worker"
# The components of the Beam stage: everything up to Transform (then an Evaluator).
BEAM_STAGE = ("ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "Transform")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclass
class PortableServices:
    job_endpoint: str  # HOST:PORT of the job service (--beam-job-endpoint)
    worker_pool: str  # HOST:PORT of the worker pool (--beam-workers external:HOST:PORT)
    pool_log: Path

    @property
    def workers_spec(self) -> str:
        return f"external:{self.worker_pool}"

    def workers_started(self) -> int:
        """SDK worker processes the pool has started so far."""
        return self.pool_log.read_text(errors="replace").count(WORKER_STARTED)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{proc.args[2]}: nothing listening on {port} after {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    """Ends a process started here and the SDK workers it started (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@contextmanager
def portable_services(
    log_dir: str | os.PathLike, pythonpath: str = str(REPO), start_seconds: float = 120
) -> Iterator[PortableServices]:
    """Starts a job service and a worker pool on free loopback ports; stops both (and the
    pool's workers) on exit. The workers import this project from `pythonpath` and run
    under this interpreter (the pool starts them as `python` from PATH)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    # The pool starts each SDK worker as `python -c ...` from PATH: this interpreter's first.
    # Workers load models in TFMA before importing anything of the project: Keras 2 by
    # environment (btmri.KERAS_SWITCH), or TFMA's loader takes Keras 3 and fails.
    env = {
        **os.environ,
        KERAS_SWITCH[0]: KERAS_SWITCH[1],
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p),
    }
    job_port, pool_port = free_port(), free_port()
    job_log, pool_log = log_dir / "job_service.log", log_dir / "worker_pool.log"
    started = []
    try:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    JOB_SERVICE_MODULE,
                    "--port",
                    str(job_port),
                    "--staging_dir",
                    str(log_dir / "staging"),
                ],
                stdout=job_log.open("w"),
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_dir,
                start_new_session=True,
            )
        )
        # The workers run `python -c`: their first import path is the current folder,
        # before PYTHONPATH, so it must hold no other copy of the project.
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", WORKER_POOL_MODULE, "--service_port", str(pool_port)],
                stdout=pool_log.open("w"),
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_dir,
                start_new_session=True,
            )
        )
        _wait_for_port(job_port, started[0], job_log, start_seconds)
        _wait_for_port(pool_port, started[1], pool_log, start_seconds)
        yield PortableServices(f"localhost:{job_port}", f"localhost:{pool_port}", pool_log)
    finally:
        for proc in reversed(started):
            _stop(proc)


def beam_stage_pipeline(config: PipelineConfig, model_uri: str | None = None, evaluate_on: str | None = None):
    """The pipeline's own components up to Transform (the factory's, unchanged) and,
    with `model_uri`, an Evaluator of that imported model with the project's EvalConfig:
    every Beam component, without training. No cache, so every component runs."""
    from tfx import v1 as tfx

    from btmri import spec
    from components.evaluation import eval_config
    from pipeline.factory import pipeline_components, pipeline_of, with_component_beam_args

    nodes = {c.id: c for c in pipeline_components(config)}
    components = [nodes[n] for n in BEAM_STAGE]
    if model_uri is not None:
        model = tfx.dsl.Importer(
            source_uri=model_uri, artifact_type=tfx.types.standard_artifacts.Model
        ).with_id("ModelImporter")
        evaluator = tfx.components.Evaluator(
            examples=nodes["ImportExampleGen"].outputs["examples"],
            model=model.outputs["result"],
            example_splits=[evaluate_on or (spec.TEST_SPLIT if config.has_test_split else spec.EVAL_SPLIT)],
            eval_config=eval_config(
                config.accuracy_lower_bound, config.max_accuracy_regression, config.min_acceptance
            ),
        )
        with_component_beam_args(
            [evaluator], {k: v for k, v in config.component_beam_args.items() if k == evaluator.id}
        )
        components += [model, evaluator]
    return pipeline_of(config, components, enable_cache=False)
