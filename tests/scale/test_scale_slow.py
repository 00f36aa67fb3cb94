"""The scale-out path, run for real on this machine (marker `scale`: `pytest -m scale`).

- Beam's portability layer: the pipeline's Beam components (ImportExampleGen,
  StatisticsGen, Transform, Evaluator) with PortableRunner against a local job service
  process and SDK workers from an external worker pool process (environment EXTERNAL),
  the same Fn API Flink, Spark and Dataflow drive. Statistics, the transform graph and
  TFMA's metrics must equal the DirectRunner's (the session's tiny run) on the same data
  and the same model.
- Multi-worker training: two processes of the Trainer's run_fn on loopback with
  TF_CONFIG; the chief exports the SavedModel with the three signatures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PipelineConfig, beam_args

pytestmark = [pytest.mark.scale, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """A Beam job service and a worker pool, each its own process (pipeline/portable.py);
    the pool's SDK workers import this checkout."""
    from pipeline.portable import portable_services

    with portable_services(tmp_path_factory.mktemp("beam_services"), pythonpath=str(REPO)) as services:
        yield services


def _tiny_config(work: Path, **kw) -> PipelineConfig:
    return PipelineConfig(
        pipeline_root=str(work / "pipeline"),
        data_root=str(work / "data" / "prepared" / "current"),
        serving_dir=str(work / "serving"),
        **kw,
    )


def _feature_stats(statistics_uri: str, split: str):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(Path(statistics_uri, f"Split-{split}", "FeatureStats.pb").read_bytes())
    (dataset,) = stats.datasets
    return dataset


def test_beam_components_on_the_portable_runner_equal_the_direct_runner(tiny_run, beam_services, tmp_path):
    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx import v1 as tfx

    from btmri import spec
    from pipeline.metadata import latest_output
    from pipeline.portable import beam_stage_pipeline
    from pipeline.report import tfma_results

    direct = _tiny_config(tiny_run)  # the session's run: DirectRunner in process
    portable = PipelineConfig(
        pipeline_root=str(tmp_path / "root"),
        data_root=direct.data_root,
        serving_dir=str(tmp_path / "serving"),
        accuracy_lower_bound=0.0,
        use_module_files=False,
        beam_pipeline_args=beam_args(beam_services.workers_spec, beam_services.job_endpoint),
    )
    model = latest_output(direct, "Trainer", "model")
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(beam_stage_pipeline(portable, model.uri, "test"))
    seconds = time.time() - started

    # It ran on the portability layer: the pool started SDK workers for the jobs.
    assert beam_services.workers_started() >= 4, beam_services.pool_log.read_text()[-3000:]

    # Statistics: the same figures for every feature of every split.
    for split in ("train", "eval", "test"):
        ours = _feature_stats(latest_output(portable, "StatisticsGen", "statistics").uri, split)
        theirs = _feature_stats(latest_output(direct, "StatisticsGen", "statistics").uri, split)
        assert ours.num_examples == theirs.num_examples > 0
        assert {f.path.step[0]: f for f in ours.features}.keys() == {f.path.step[0] for f in theirs.features}
        by_name = {f.path.step[0]: f for f in theirs.features}
        for feature in ours.features:
            other = by_name[feature.path.step[0]]
            if feature.HasField("num_stats"):
                for name in ("mean", "std_dev", "min", "max", "num_zeros"):
                    assert getattr(feature.num_stats, name) == pytest.approx(
                        getattr(other.num_stats, name), rel=1e-9, abs=1e-12
                    ), (split, feature.path, name)
                common, other_common = feature.num_stats.common_stats, other.num_stats.common_stats
            elif feature.HasField("bytes_stats"):
                assert feature.bytes_stats.unique == other.bytes_stats.unique
                assert feature.bytes_stats.avg_num_bytes == pytest.approx(other.bytes_stats.avg_num_bytes)
                assert feature.bytes_stats.max_num_bytes == other.bytes_stats.max_num_bytes
                common, other_common = feature.bytes_stats.common_stats, other.bytes_stats.common_stats
            else:
                common, other_common = feature.string_stats.common_stats, other.string_stats.common_stats
                assert feature.string_stats.unique == other.string_stats.unique
            assert (common.num_non_missing, common.num_missing, common.tot_num_values) == (
                other_common.num_non_missing,
                other_common.num_missing,
                other_common.tot_num_values,
            )

    # Transform graph: the same schema out, the same tensors for the same raw examples.
    ours = tft.TFTransformOutput(latest_output(portable, "Transform", "transform_graph").uri)
    theirs = tft.TFTransformOutput(latest_output(direct, "Transform", "transform_graph").uri)
    assert ours.transformed_metadata.schema == theirs.transformed_metadata.schema
    files = sorted((tiny_run / "data" / "synthetic" / spec.KAGGLE_TESTING_DIR).rglob("*.png"))[:6]
    raw = {spec.IMAGE_KEY: tf.constant([[f.read_bytes()] for f in files])}
    a, b = ours.transform_features_layer()(raw), theirs.transform_features_layer()(raw)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)

    # TFMA: the same model on the same split gives the same metrics and the same verdict.
    ours = tfma_results.load(latest_output(portable, "Evaluator", "evaluation").uri)
    theirs = tfma_results.load(latest_output(direct, "Evaluator", "evaluation").uri)
    assert ours.metrics.keys() == theirs.metrics.keys() and len(ours.metrics) > 5
    for key, value in theirs.metrics.items():
        assert ours.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    np.testing.assert_array_equal(ours.confusion, theirs.confusion)
    assert ours.validation_ok == theirs.validation_ok
    print(f"portable Beam stage: {seconds:.0f} s")


def test_two_worker_training_on_loopback_exports_from_the_chief(tiny_run, tmp_path):
    import tensorflow as tf

    from btmri.layout import HISTORY_FILE
    from btmri.spec import GRADCAM, PREDICT_IMAGES, SERVING_DEFAULT

    from pipeline.portable import free_port

    ports = [free_port(), free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    out, scratch = tmp_path / "trainer", tmp_path / "scratch"
    scratch.mkdir()
    config = {
        "distribution": "multi_worker",
        "input_sharding": "file",
        "epochs": 2,
        "batch_size": 8,
        "abstention_outliers_per_kind": 4,
    }
    procs, logs = [], []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TMPDIR": str(scratch),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        log = tmp_path / f"worker{index}.log"
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "scale" / "distributed_worker.py"),
                    "--pipeline-root",
                    str(tiny_run / "pipeline"),
                    "--out",
                    str(out),
                    "--config",
                    json.dumps(config),
                ],
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=1500) == 0, log.read_text()[-5000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = [
        json.loads(
            next(line for line in log.read_text().splitlines() if line.startswith("RESULT:"))[
                len("RESULT:") :
            ]
        )
        for log in logs
    ]
    # Two training files: with file sharding each worker reads its own (TF refuses FILE
    # sharding with fewer files than workers, so this run would have failed otherwise).
    assert len(results[0]["train_files"]) == 1
    assert len(tf.io.gfile.glob(results[0]["train_files"][0] + "*")) >= 2

    serving = Path(results[0]["serving_model_dir"])
    assert (serving / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(serving))
    assert set(loaded.signatures) == {SERVING_DEFAULT, PREDICT_IMAGES, GRADCAM}
    history = json.loads((Path(results[0]["model_run_dir"]) / HISTORY_FILE).read_text())
    assert history["distribution"] == {"strategy": "multi_worker", "replicas_in_sync": 2, "task": "worker0"}
    assert len(history["history"]["loss"]) == 2 and all(np.isfinite(history["history"]["loss"]))
    # Only the chief fitted abstention and exported; the other worker went to the barrier.
    chief_log, other_log = (log.read_text() for log in logs)
    assert "Abstention fitted on eval" in chief_log and "the chief exports" not in chief_log
    assert "Abstention fitted on eval" not in other_log and "worker1: training done" in other_log
    # The other worker wrote only to temporary folders, and removed them.
    assert not any(scratch.glob("btmri-worker1-*")), list(scratch.iterdir())
