"""The scale-out path (docs/scale.md): Beam options per run and per component,
training under tf.distribute, and the Kubeflow / Vertex AI specs, parsed offline.

The Beam portability run and the two-process multi-worker training are in
tests/test_scale_slow.py (marker `scale`, not in the default run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from btmri.documents import TRAINER_DEFAULTS
from btmri.spec import DISTRIBUTION_NONE
from pipeline.cli import main as btmri
from pipeline.config import PipelineConfig, beam_args, component_beam_args, runs_beyond_this_process

REPO = Path(__file__).resolve().parents[2]
ROOTS = [
    "--data-root",
    "gs://bucket/prepared",
    "--pipeline-root",
    "gs://bucket/root",
    "--serving-dir",
    "gs://bucket/serving",
]
IMAGE = "europe-docker.pkg.dev/p/r/brain-tumor-mri-tfx:7"


def _compile(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "spec.json"
    assert btmri(["compile", "--out", str(out), "--image", IMAGE, *ROOTS, *extra]) == 0
    return json.loads(out.read_text())


def _tasks(spec: dict) -> dict:
    return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def _constant(spec: dict, task: str, name: str):
    value = _tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
    return next(iter(value.values()))


def _executor(spec: dict, task: str) -> dict:
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    return executors[f"{task}_executor"]["container"]


# ── Beam options ────────────────────────────────────────────────────────────────
def test_beam_workers_spec_gives_the_runner_options():
    assert beam_args("2") == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    in_process = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    assert beam_args("in_memory") == in_process
    assert beam_args(None) == in_process  # the default: one order of examples, one model
    assert beam_args("external:localhost:50000") == [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--job_server_timeout=86400",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
    ]
    assert "--job_endpoint=10.0.0.2:8099" in beam_args("external:10.0.0.9:50000", "10.0.0.2:8099")
    for bad in ("external:50000", "0", "two", "external:host:port"):
        with pytest.raises(ValueError, match="--beam-workers"):
            beam_args(bad)
    with pytest.raises(ValueError, match="--beam-job-endpoint"):
        beam_args("2", "localhost:8099")
    assert runs_beyond_this_process(beam_args("external:localhost:50000"))
    assert runs_beyond_this_process(["--runner=FlinkRunner", "--flink_master=h:8081"])
    assert not runs_beyond_this_process(beam_args("2") + ["--runner=DirectRunner"])
    assert not runs_beyond_this_process(beam_args(None))
    assert component_beam_args(["Evaluator=--direct_num_workers=1", "Evaluator=--x=1"]) == {
        "Evaluator": ["--direct_num_workers=1", "--x=1"]
    }
    with pytest.raises(ValueError, match="COMPONENT=--option"):
        component_beam_args(["Evaluator"])


def test_component_beam_args_override_the_pipeline_args_for_that_component_only(tmp_path):
    from pipeline.factory import create_pipeline

    config = PipelineConfig(
        pipeline_root=str(tmp_path),
        data_root=str(tmp_path),
        serving_dir=str(tmp_path),
        beam_pipeline_args=["--direct_num_workers=2"],
        component_beam_args={"Evaluator": ["--direct_num_workers=1"]},
    )
    nodes = {c.id: c for c in create_pipeline(config).components}
    assert nodes["Evaluator"].executor_spec.beam_pipeline_args == [
        "--direct_num_workers=2",
        "--direct_num_workers=1",
    ]  # the component's come last: they win
    assert nodes["StatisticsGen"].executor_spec.beam_pipeline_args == ["--direct_num_workers=2"]
    with pytest.raises(ValueError, match="not a Beam component"):
        create_pipeline(
            PipelineConfig(
                pipeline_root=str(tmp_path),
                data_root=str(tmp_path),
                serving_dir=str(tmp_path),
                component_beam_args={"Trainer": ["--x=1"]},
            )
        )


# ── Distribution: configuration ────────────────────────────────────────────────
def test_distribution_flows_from_the_cli_to_the_trainer_config(tmp_path):
    from pipeline.cli import _pipeline_config, build_parser

    default = _pipeline_config(build_parser().parse_args(["run"]), str(tmp_path))
    assert TRAINER_DEFAULTS.distribution == DISTRIBUTION_NONE == default.distribution
    # The default adds nothing to custom_config: the Trainer's cache key is unchanged.
    assert "distribution" not in default.trainer_config()
    assert "input_sharding" not in default.trainer_config()
    args = build_parser().parse_args(["run", "--distribution", "multi_worker", "--input-sharding", "data"])
    custom = _pipeline_config(args, str(tmp_path)).trainer_config()
    assert (custom["distribution"], custom["input_sharding"]) == ("multi_worker", "data")
    with pytest.raises(ValueError, match="distribution must be one of"):
        PipelineConfig(pipeline_root="r", data_root="d", serving_dir="s", distribution="tpu")


def test_strategy_choice_and_input_sharding():
    import tensorflow as tf

    from components.training import distribution

    assert distribution.make_strategy("none") is None
    assert distribution.is_chief(None) and distribution.write_dir("/real", None) == "/real"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        os.environ.pop("TF_CONFIG", None)
        distribution.make_strategy("multi_worker")

    # Who is chief: Vertex AI's TF_CONFIG names a chief task; a plain TFJob may not (worker 0).
    def strategy(cluster: dict, task_type: str, task_id: int):
        class Fake:  # only the cluster resolver is read
            cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
            )

        return Fake()

    vertex = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert distribution.is_chief(strategy(vertex, "chief", 0))
    assert not distribution.is_chief(strategy(vertex, "worker", 0))
    plain = {"worker": ["a:1", "b:1"]}
    assert distribution.is_chief(strategy(plain, "worker", 0))
    worker1 = strategy(plain, "worker", 1)
    assert not distribution.is_chief(worker1)
    scratch = distribution.write_dir("/real", worker1)
    assert scratch != "/real" and "worker1" in os.path.basename(scratch) and os.path.isdir(scratch)
    os.rmdir(scratch)

    dataset = tf.data.Dataset.range(4)
    policy = tf.data.experimental.AutoShardPolicy
    assert (
        distribution.sharded(dataset, "file").options().experimental_distribute.auto_shard_policy
        == policy.FILE
    )
    assert (
        distribution.sharded(dataset, "data").options().experimental_distribute.auto_shard_policy
        == policy.DATA
    )
    with pytest.raises(ValueError, match="input sharding"):
        distribution.sharded(dataset, "hash")


def test_mirrored_step_on_two_devices_equals_the_single_device_step():
    """The global batch split over two replicas gives the single-device update: the loss
    is the global-batch mean (evidence and regularisation counted once), not twice it."""
    result = _run_script(REPO / "tests" / "scale" / "distributed_step.py")
    assert result["replicas"] == 2
    assert result["max_weight_change"] > 1e-3  # the step did move the weights
    assert result["max_weight_difference"] < 1e-5, result
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)


def _run_script(script: Path, *args: str, env: dict | None = None, timeout: float = 600) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or {**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT:")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT:") :])


# ── Cloud specs, offline ─────────────────────────────────────────────────────────
def test_kubeflow_spec_loads_with_kfp_and_names_image_root_and_every_components_args(tmp_path):
    import yaml
    from kfp import components

    spec = _compile(
        tmp_path,
        "--target",
        "kubeflow",
        "--distribution",
        "mirrored",
        "--beam-arg=--runner=DataflowRunner",
        "--beam-arg=--region=europe-west4",
        "--component-beam-arg",
        "Transform=--machine_type=n1-highmem-8",
    )
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec["pipelineSpec"]))
    assert components.load_component_from_file(str(tmp_path / "spec.yaml")).name
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    for task in ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"):
        container = _executor(spec, task)
        assert container["image"] == IMAGE
        assert "--runner=DataflowRunner" in container["args"] and "--region=europe-west4" in container["args"]
        assert ("--machine_type=n1-highmem-8" in container["args"]) == (task == "Transform"), task
    assert _executor(spec, "Transform")["args"][-1] == "--machine_type=n1-highmem-8"
    assert _executor(spec, "Trainer")["image"] == IMAGE
    custom = json.loads(_constant(spec, "Trainer", "custom_config"))
    assert custom["distribution"] == "mirrored" and custom["batch_size"] == TRAINER_DEFAULTS.batch_size
    assert _constant(spec, "ImportExampleGen", "input_base") == "gs://bucket/prepared"


def test_vertex_spec_runs_the_trainer_as_a_vertex_job_with_worker_pools(tmp_path):
    spec = _compile(
        tmp_path,
        "--target",
        "vertex",
        "--distribution",
        "multi_worker",
        "--vertex-project",
        "proj",
        "--vertex-region",
        "europe-west4",
        "--vertex-replicas",
        "3",
        "--vertex-machine-type",
        "n1-standard-16",
        "--vertex-accelerator-type",
        "NVIDIA_TESLA_T4",
        "--vertex-accelerator-count",
        "2",
        "--batch-size",
        "96",
    )
    trainer = _executor(spec, "Trainer")
    assert "tfx.extensions.google_cloud_ai_platform.trainer.executor" in " ".join(trainer["args"])
    custom = json.loads(_constant(spec, "Trainer", "custom_config"))
    assert custom["distribution"] == "multi_worker" and custom["batch_size"] == 96
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "europe-west4"
    job = custom["ai_platform_training_args"]
    assert job["project"] == "proj"
    pools = job["job_spec"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2]  # chief + 2 workers
    for pool in pools:
        assert pool["container_spec"]["image_uri"] == IMAGE
        assert pool["machine_spec"] == {
            "machine_type": "n1-standard-16",
            "accelerator_type": "NVIDIA_TESLA_T4",
            "accelerator_count": 2,
        }
    # No endpoint: the project's own Pusher, to the serving folder.
    assert "IdempotentAtomicPusher" in " ".join(_executor(spec, "Pusher")["args"])


def test_vertex_spec_with_an_endpoint_pushes_to_vertex(tmp_path):
    spec = _compile(
        tmp_path,
        "--target",
        "vertex",
        "--vertex-project",
        "proj",
        "--vertex-endpoint",
        "brain-tumor",
        "--vertex-serving-image",
        "us-docker.pkg.dev/x/tf2:1",
    )
    pusher = _executor(spec, "Pusher")
    assert "tfx.extensions.google_cloud_ai_platform.pusher.executor" in " ".join(pusher["args"])
    custom = json.loads(_constant(spec, "Pusher", "custom_config"))
    assert custom["ai_platform_vertex_container_image_uri"] == "us-docker.pkg.dev/x/tf2:1"
    assert custom["ai_platform_serving_args"] == {
        "project_id": "proj",
        "endpoint_name": "brain-tumor",
        "machine_type": "n1-standard-4",
    }
    pools = json.loads(_constant(spec, "Trainer", "custom_config"))["ai_platform_training_args"]["job_spec"][
        "worker_pool_specs"
    ]
    assert [p["replica_count"] for p in pools] == [1]  # no distribution: one machine


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "kubeflow", "--distribution", "multi_worker"], "needs --target vertex"),
        (["--target", "vertex", "--vertex-project", "p", "--vertex-replicas", "2"], "need --distribution"),
        (["--target", "vertex", "--vertex-project", "p", "--distribution", "multi_worker"], "2 or more"),
        (["--target", "vertex"], "--vertex-project is required"),
        (["--target", "vertex", "--vertex-project", "p", "--vertex-endpoint", "e"], "--vertex-serving-image"),
    ],
)
def test_compile_refuses_scale_options_that_cannot_run(tmp_path, capsys, extra, message):
    assert btmri(["compile", "--out", str(tmp_path / "x.json"), *ROOTS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
