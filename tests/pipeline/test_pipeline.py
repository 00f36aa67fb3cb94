"""End to end: `btmri run` on tiny synthetic data, through every TFX component.

The session's shared `tiny_run` feeds the read-only tests; the cache and
threshold tests rerun the pipeline on a run of their own (`own_run`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.executors import AnomaliesFound, pushed_versions
from btmri.documents import TRAINER_DEFAULTS
from btmri.spec import ABSTENTION_OUTPUTS, MODEL_NAME
from btmri.spec import CLASS_NAMES, IMAGE_KEY, KAGGLE_TESTING_DIR, LABEL_KEY, TEST_SPLIT, TRAIN_SPLIT
from data_prep.tfrecords import request_example, make_example
from pipeline.cli import main as btmri
from pipeline.config import PipelineConfig
from pipeline.factory import COMPONENT_IDS
from pipeline.local_runner import read_outcome, run_pipeline
from pipeline.metadata import execution_state_name, latest_output, node_executions
from tests.conftest import btmri_run


def _config(work: Path) -> PipelineConfig:
    return PipelineConfig(
        pipeline_root=str(work / "pipeline"),
        data_root=str(work / "data" / "prepared" / "current"),
        serving_dir=str(work / "serving"),
    )


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    assert btmri_run(work) == 0
    return work


def test_every_component_executed(tiny_run):
    config = _config(tiny_run)
    for node in COMPONENT_IDS:
        states = [execution_state_name(e) for e in node_executions(config, node)]
        assert states and states[0] == "COMPLETE", (node, states)


def test_pushed_version_has_a_model_card(tiny_run):
    (version,) = pushed_versions(str(tiny_run / "serving"))
    card = (tiny_run / "serving" / str(version) / "MODEL_CARD.md").read_text()
    assert "Intended use" in card and all(name in card for name in CLASS_NAMES)


def test_the_pushed_version_was_served_before_the_push_and_carries_its_warmup(tiny_run):
    """The InfraValidator served the candidate (blessed, with latency), the Pusher pushed
    its validated copy: the warm-up file is TF Serving's TFRecord of PredictionLogs, and
    the report and card show the validation."""
    from tensorflow_serving.apis import prediction_log_pb2

    from btmri import spec
    from btmri.layout import WARMUP_PATH

    outcome = read_outcome(_config(tiny_run))
    validation = outcome.serving_validation
    assert validation.blessed and validation.validated, validation.reason
    assert all(check["passed"] for check in validation.checks)
    assert validation.signatures == sorted(spec.SIGNATURE_CONTRACT)
    assert 0 < validation.grpc_p50_ms <= validation.grpc_p99_ms
    (version,) = pushed_versions(str(tiny_run / "serving"))
    folder = tiny_run / "serving" / str(version)
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r)
        for r in tf.data.TFRecordDataset(str(folder / WARMUP_PATH)).as_numpy_iterator()
    ]
    assert (
        len(logs) == validation.warmup_replayed == len(spec.SIGNATURE_CONTRACT) * len(spec.WARMUP_BATCH_SIZES)
    )
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == set(spec.SIGNATURE_CONTRACT)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Serving validation" in card and f"| gRPC | {validation.latency_requests} |" in card
    report = (Path(outcome.report_dir) / "report.html").read_text()
    assert 'id="serving-validation"' in report and "warm-up file" in report


def test_the_shortcut_control_scored_the_evaluated_split(tiny_run):
    """The ShortcutControl ran on the tiny run's examples (no model needed) and its
    artifact holds the figures: trained on train, scored on the Evaluator's split."""
    from btmri.layout import SHORTCUT_CONTROL_FILE
    from components.shortcut.control import FEATURES
    from data_prep.tfrecords import read_split

    config = _config(tiny_run)
    artifact = latest_output(config, "ShortcutControl", "control")
    assert artifact is not None
    document = json.loads((Path(artifact.uri) / SHORTCUT_CONTROL_FILE).read_text())
    prepared = tiny_run / "data" / "prepared" / "current"
    test_labels = [e[LABEL_KEY] for e in read_split(prepared, TEST_SPLIT)]
    assert document["evaluated_split"] == TEST_SPLIT == artifact.get_string_custom_property("split")
    assert document["evaluated_examples"] == len(test_labels)
    assert document["train_examples"] == len(read_split(prepared, TRAIN_SPLIT))
    confusion = np.array(document["confusion"])
    assert confusion.shape == (4, 4) and confusion.sum() == len(test_labels)
    assert confusion.sum(axis=1).tolist() == [test_labels.count(k) for k in range(4)]
    accuracy = document["accuracy"]
    assert accuracy["successes"] == np.trace(confusion) and accuracy["n"] == len(test_labels)
    assert accuracy["ci95"][0] <= accuracy["value"] <= accuracy["ci95"][1]
    assert artifact.get_float_custom_property("accuracy") == pytest.approx(accuracy["value"])
    for k, row in enumerate(document["per_class"]):
        assert row["name"] == CLASS_NAMES[k]
        assert (row["recall"]["successes"], row["recall"]["n"]) == (confusion[k, k], confusion[k].sum())
    assert [f["name"] for f in document["features"]] == list(FEATURES)
    assert 0 < document["seconds"]["total"] <= document["seconds"]["component"] < 60


def _test_images(work: Path, n: int = 5) -> list[bytes]:
    files = sorted((work / "data" / "synthetic" / KAGGLE_TESTING_DIR).rglob("*.png"))
    return [f.read_bytes() for f in files[:: max(1, len(files) // n)][:n]]


def test_signatures_names_shapes_dtypes(tiny_run, pushed_model):
    sigs = pushed_model.signatures
    assert set(sigs) == {"serving_default", "predict_images", "gradcam"}
    assert set(sigs["serving_default"].structured_input_signature[1]) == {"examples"}
    assert set(sigs["predict_images"].structured_input_signature[1]) == {"image_bytes"}
    assert set(sigs["gradcam"].structured_input_signature[1]) == {"image_bytes"}

    images = _test_images(tiny_run)
    n = len(images)
    by_bytes = sigs["predict_images"](image_bytes=tf.constant(images))
    examples = [make_example(b, 0, 1, 1, "x").SerializeToString() for b in images]
    # only `image` is required in a request
    image_only = [request_example(b) for b in images]
    by_example = sigs["serving_default"](examples=tf.constant(examples))
    by_image_only = sigs["serving_default"](examples=tf.constant(image_only))
    for out in (by_bytes, by_example, by_image_only):
        assert set(out) == {"probabilities", "class_id", "class_name", *ABSTENTION_OUTPUTS}
        assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (n, 4)
        assert out["class_id"].dtype == tf.int64 and out["class_id"].shape == (n,)
        assert out["class_name"].dtype == tf.string and out["class_name"].shape == (n,)
        np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
        names = [CLASS_NAMES[i] for i in out["class_id"].numpy()]
        assert [s.decode() for s in out["class_name"].numpy()] == names
    np.testing.assert_allclose(by_bytes["probabilities"], by_example["probabilities"], atol=1e-6)
    np.testing.assert_allclose(by_bytes["probabilities"], by_image_only["probabilities"], atol=1e-6)

    cam = sigs["gradcam"](image_bytes=tf.constant(images))
    assert set(cam) == {"heatmap", "class_id", "probabilities", *ABSTENTION_OUTPUTS}
    for out in (by_bytes, by_example, cam):  # abstention: the same decision everywhere
        assert out["abstain"].dtype == tf.bool and out["ood_score"].shape == (n,)
        np.testing.assert_array_equal(out["abstain_reason"], by_bytes["abstain_reason"])
    assert cam["heatmap"].dtype == tf.float32 and cam["heatmap"].shape == (n, 224, 224)
    heat = cam["heatmap"].numpy()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_array_equal(cam["class_id"], by_bytes["class_id"])


def test_undecodable_image_is_an_error_not_a_crash(pushed_model):
    with pytest.raises(tf.errors.InvalidArgumentError):
        pushed_model.signatures["predict_images"](image_bytes=tf.constant([b"not an image"]))


def test_rerun_is_served_from_cache_and_pushes_nothing_new(own_run, capsys):
    capsys.readouterr()
    before = pushed_versions(str(own_run / "serving"))
    assert btmri_run(own_run) == 0
    out = capsys.readouterr().out
    assert "data unchanged since the last prepare" in out
    assert "nothing new pushed" in out
    config = _config(own_run)
    for node in ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer"):
        states = [execution_state_name(e) for e in node_executions(config, node)]
        assert states[-1] == "CACHED", (node, states)
    assert pushed_versions(str(own_run / "serving")) == before


def test_unreachable_accuracy_bound_pushes_nothing(own_run, capsys):
    capsys.readouterr()
    before = pushed_versions(str(own_run / "serving"))
    assert btmri_run(own_run, "--accuracy-bound", "1.01") == 1  # ran, refused
    out = capsys.readouterr().out
    assert "blessed: no" in out and "not pushed" in out
    assert "serving validation: not run (not validated: the model was not blessed)" in out
    assert pushed_versions(str(own_run / "serving")) == before


def test_acceptance_below_the_floor_refuses_blessing(own_run, capsys):
    """The Evaluator's abstention gate: a model answering less than --min-acceptance of
    the evaluated split is not blessed (1.01 cannot be reached: the share is at most 1)."""
    capsys.readouterr()
    before = pushed_versions(str(own_run / "serving"))
    assert btmri_run(own_run, "--min-acceptance", "1.01") == 1
    out = capsys.readouterr().out
    assert re.search(
        r"answered \(not abstained\) [01]\.\d{3} \[[01]\.\d{3}, [01]\.\d{3}\] \(\d+/\d+\) "
        r"of the evaluated split \(floor 1\.01\)",
        out,
    ), out
    assert "blessed: no" in out and "not pushed" in out
    assert pushed_versions(str(own_run / "serving")) == before
    evaluation = read_outcome(_config(own_run)).evaluation
    assert not evaluation.validation_ok
    assert any(t.metric == "abstention_acceptance" and not t.passed for t in evaluation.thresholds)


def test_anomalous_data_stops_before_training(tmp_path):
    data = tmp_path / "prepared"
    rng = np.random.default_rng(0)
    good = tf.io.encode_png(rng.integers(0, 255, (32, 32, 1), dtype=np.uint8)).numpy()
    for split in ("train", "eval"):
        (data / split).mkdir(parents=True)
        with tf.io.TFRecordWriter(str(data / split / f"{split}-00000-of-00001.tfrecord")) as w:
            for i in range(8):
                w.write(make_example(good, i % 4, 32, 32, f"{split}/{i}.png").SerializeToString())
            w.write(make_example(good, 7, 32, 32, f"{split}/bad-label.png").SerializeToString())
            no_image = make_example(good, 1, 32, 32, f"{split}/no-image.png")
            del no_image.features.feature[IMAGE_KEY]
            w.write(no_image.SerializeToString())
    config = PipelineConfig(
        pipeline_root=str(tmp_path / "root"),
        data_root=str(data),
        serving_dir=str(tmp_path / "serving"),
        beam_pipeline_args=["--direct_running_mode=in_memory"],
    )
    with pytest.raises(AnomaliesFound) as err:
        run_pipeline(config)
    message = str(err.value)
    assert "feature 'label'" in message and "feature 'image'" in message
    assert not node_executions(config, "Transform") and not node_executions(config, "Trainer")
    assert not (tmp_path / "serving").exists()


def test_compile_writes_a_spec_naming_every_component(tmp_path):
    out = tmp_path / "pipeline.json"
    assert (
        btmri(
            [
                "compile",
                "--out",
                str(out),
                "--data-root",
                "gs://bucket/prepared",
                "--pipeline-root",
                "gs://bucket/root",
                "--serving-dir",
                "gs://bucket/serving",
            ]
        )
        == 0
    )
    spec = json.loads(out.read_text())
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for node in COMPONENT_IDS:  # no box folder: no LesionAudit
        assert any(task.startswith(node) for task in tasks) == (node != "LesionAudit"), node
    text = out.read_text()
    assert "components.transform.preprocessing.preprocessing_fn" in text
    assert "components.training.trainer.run_fn" in text


def test_compile_with_a_box_folder_includes_the_lesion_audit(tmp_path):
    # The Kubeflow v2 compiler refuses custom artifact types without a namespace.
    out = tmp_path / "pipeline.json"
    assert (
        btmri(
            [
                "compile",
                "--out",
                str(out),
                "--data-root",
                "gs://bucket/prepared",
                "--pipeline-root",
                "gs://bucket/root",
                "--serving-dir",
                "gs://bucket/serving",
                "--boxes-dir",
                "gs://bucket/boxes",
            ]
        )
        == 0
    )
    spec = json.loads(out.read_text())
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    # kfp's own loader accepts the pipeline spec (as it would a compiled pipeline).
    import yaml
    from kfp import components

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec["pipelineSpec"]))
    assert components.load_component_from_file(str(tmp_path / "spec.yaml")).name

    def constant(task: str, name: str):
        value = tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]
        return next(iter(value.values()))

    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert constant("LesionAudit", "box_dir") == "gs://bucket/boxes"
    assert constant("ImportExampleGen", "input_base") == "gs://bucket/prepared"
    custom = json.loads(constant("Trainer", "custom_config"))
    assert (custom["epochs"], custom["lesion_removal_rate"]) == (
        TRAINER_DEFAULTS.epochs,
        TRAINER_DEFAULTS.lesion_removal_rate,
    )
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for name, e in executors.items() if "resolver" not in name.lower()}
    assert images == {"brain-tumor-mri-tfx:latest"}  # every component runs in the project image


@pytest.mark.parametrize("materialize", [False, True])
def test_materialize_switch_wires_the_trainer_input(tmp_path, materialize):
    """materialize=True: Transform writes train/eval examples and the Trainer reads them."""
    from pipeline.factory import create_pipeline

    (tmp_path / "prepared").mkdir()
    config = PipelineConfig(
        pipeline_root=str(tmp_path / "root"),
        data_root=str(tmp_path / "prepared"),
        serving_dir=str(tmp_path / "serving"),
        materialize=materialize,
    )
    nodes = {c.id: c for c in create_pipeline(config).components}
    transform, trainer = nodes["Transform"], nodes["Trainer"]
    assert trainer.inputs["examples"].producer_component_id == (
        "Transform" if materialize else "ImportExampleGen"
    )
    splits = json.loads(transform.exec_properties["splits_config"])  # stored as proto JSON
    assert splits.get("transform", []) == (["train", "eval"] if materialize else [])
    custom = trainer.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert custom["materialized"] is materialize


def test_the_pipeline_runs_the_control_after_example_gen_and_not_after_the_trainer(tmp_path):
    from pipeline.factory import create_pipeline

    (tmp_path / "prepared").mkdir()
    config = PipelineConfig(
        pipeline_root=str(tmp_path / "root"),
        data_root=str(tmp_path / "prepared"),
        serving_dir=str(tmp_path / "serving"),
    )
    nodes = {c.id: c for c in create_pipeline(config).components}
    shortcut = nodes["ShortcutControl"]
    assert shortcut.inputs["examples"].producer_component_id == "ImportExampleGen"
    assert {n.id for n in shortcut.upstream_nodes} == {"ImportExampleGen", "ExampleValidator"}
    assert [shortcut.exec_properties["split"]] == json.loads(
        nodes["Evaluator"].exec_properties["example_splits"]
    )
    assert nodes["ModelReport"].inputs["shortcut_control"].producer_component_id == "ShortcutControl"


def test_training_options_reach_the_trainer_config(tmp_path):
    from pipeline.cli import _pipeline_config, build_parser

    args = build_parser().parse_args(
        [
            "run",
            "--compute-dtype",
            "float32",
            "--schedule",
            "cosine",
            "--patience",
            "4",
            "--epochs",
            "7",
            "--pipeline-root",
            str(tmp_path),
        ]
    )
    custom = _pipeline_config(args, str(tmp_path)).trainer_config()
    assert (custom["compute_dtype"], custom["schedule"], custom["patience"], custom["epochs"]) == (
        "float32",
        "cosine",
        4,
        7,
    )
    defaults = _pipeline_config(build_parser().parse_args(["run"]), str(tmp_path)).trainer_config()
    assert (defaults["compute_dtype"], defaults["schedule"], defaults["patience"]) == ("auto", "converge", 8)
    with pytest.raises(ValueError, match="compute dtype must be one of"):
        PipelineConfig(pipeline_root="r", data_root="d", serving_dir="s", compute_dtype="float16")
    with pytest.raises(ValueError, match="multiple of 32 from 64 to 224"):
        PipelineConfig(pipeline_root="r", data_root="d", serving_dir="s", base_phase_size=100)
    with pytest.raises(ValueError, match=r"full-size share must be in \(0, 1\]"):
        PipelineConfig(pipeline_root="r", data_root="d", serving_dir="s", full_size_share=0)


def test_every_training_setting_of_a_run_reaches_the_trainer():
    from btmri.documents import TRAINING_SETTINGS, TrainerConfig

    changed = {
        "model": "mri_resnet",
        "weights": "imagenet",
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "schedule": "cosine",
        "patience": 2,
        "base_phase_size": 160,
        "full_size_share": 0.25,
        "augment": False,
        "acquisition_augment": True,
        "acquisition_strength": 0.25,
        "sequence_remap": 0.4,
        "seed": 9,
        "deterministic": False,
        "compute_dtype": "float32",
        "evidence_weight": 0.5,
        "lesion_removal_rate": 0.1,
        "decoy_removal_rate": 0.2,
        "lesion_paste_rate": 0.3,
        "abstention": False,
        "abstention_accept": 0.9,
        "distribution": "mirrored",
        "input_sharding": "data",
    }
    assert set(changed) == set(TRAINING_SETTINGS)  # a new setting gets a line here
    received = TrainerConfig.from_dict(PipelineConfig("r", "d", "s", **changed).trainer_config())
    assert {name: getattr(received, name) for name in changed} == changed


def test_the_work_folder_holds_the_whole_run_unless_told_otherwise(tmp_path):
    from pipeline.cli import _pipeline_config, build_parser

    work = tmp_path / "w"
    config = _pipeline_config(build_parser().parse_args(["run", "--work-dir", str(work)]), "d")
    assert (config.pipeline_root, config.serving_dir) == (
        str(work / "pipeline"),
        str(work / "serving" / MODEL_NAME),
    )
    assert config.metadata_path.startswith(str(work / "pipeline"))
    args = build_parser().parse_args(["run", "--work-dir", str(work), "--pipeline-root", str(tmp_path / "p")])
    assert _pipeline_config(args, "d").pipeline_root == str(tmp_path / "p")
