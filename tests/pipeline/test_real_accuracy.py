"""The real-data goals (slow: ~55 minutes on 2 otherwise idle cores).

    pytest -m slow tests/pipeline/test_real_accuracy.py -s

Runs the README's `btmri run --data-dir <Kaggle> --drop-cross-split-duplicates
--boxes-dir <figshare boxes>` with the defaults, then scores the pushed (served)
model on the eval split with scikit-learn, and reads the run's lesion audit. The eval
split and the audit are patient-disjoint from training (prepare draws the split by
patient / near-duplicate group; the audit holds out whole patients): the test checks
that first, then asserts the goals on those held-out patients.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score, recall_score

from components.audit.lesion_audit import read_audit
from components.audit.report_text import audit_lines
from components.executors import pushed_versions
from components.training.calibration import expected_calibration_error
from btmri import spec
from data_prep.tfrecords import read_split
from pipeline.cli import main as btmri
from pipeline.config import PipelineConfig
from pipeline.metadata import latest_output

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

ACCURACY_GOAL = 0.97  # on patient-disjoint eval (the per-file split's goal was 0.98)
# The lesion audit's goals (docs/lesion-audit.md): pointing game >= 0.75
# overall and >= 0.6 per tumour class, heat in box >= 0.35, lesion removed -> changed
# >= 0.8, most of it to notumor. One run of the defaults on held-out patients: 0.78
# (per class 0.76-1.00), 0.68 and 0.82 [0.75, 0.88]; pointing and removal are close
# enough to their goals that a run with another seed may miss them, and then this test
# says so.
POINTING_GOAL, POINTING_PER_CLASS_GOAL, HEAT_IN_BOX_GOAL = 0.75, 0.6, 0.35
REMOVED_CHANGED_GOAL = 0.8


@pytest.mark.timeout(80 * 60)  # the run's budget is 60 minutes; scoring and slack on top
def test_default_model_meets_the_accuracy_goal(real_data, real_boxes, tmp_path):
    started = time.time()
    assert (
        btmri(
            [
                "run",
                "--data-dir",
                str(real_data),
                "--drop-cross-split-duplicates",
                "--boxes-dir",
                str(real_boxes),
                "--work-dir",
                str(tmp_path),
                "--pipeline-root",
                str(tmp_path / "pipeline"),
                "--serving-dir",
                str(tmp_path / "serving"),
            ]
        )
        == 0
    )
    minutes = (time.time() - started) / 60

    (version,) = pushed_versions(str(tmp_path / "serving"))
    model = tf.saved_model.load(str(tmp_path / "serving" / str(version)))
    examples = read_split(tmp_path / "data" / "prepared" / "current", spec.EVAL_SPLIT)
    labels = np.array([ex[spec.LABEL_KEY] for ex in examples])

    def probabilities(images: list[bytes]) -> np.ndarray:
        """The served model's calibrated probabilities, 64 images per call."""
        return np.concatenate(
            [
                model.signatures["predict_images"](image_bytes=tf.constant(images[i : i + 64]))[
                    "probabilities"
                ].numpy()
                for i in range(0, len(images), 64)
            ]
        )

    probs = probabilities([ex[spec.IMAGE_KEY] for ex in examples])
    predicted = probs.argmax(axis=1)

    manifest = json.loads((tmp_path / "data" / "prepared" / "current" / "manifest.json").read_text())
    assert manifest["split_unit"] == "patient"
    train_units = {
        ex[spec.PATIENT_KEY] for ex in read_split(tmp_path / "data" / "prepared" / "current", "train")
    }
    assert not train_units & {ex[spec.PATIENT_KEY] for ex in examples}, "a unit on both sides"

    accuracy = accuracy_score(labels, predicted)
    macro_f1 = f1_score(labels, predicted, average="macro")
    meningioma = spec.CLASS_TO_ID["meningioma"]
    meningioma_recall = recall_score(labels, predicted, labels=[meningioma], average=None)[0]
    ece = expected_calibration_error(probs, labels)
    run = latest_output(PipelineConfig(str(tmp_path / "pipeline"), "", ""), "Trainer", "model_run")
    calibration = json.loads(tf.io.gfile.GFile(f"{run.uri}/calibration.json").read())
    print(
        f"\nreal data, patient-disjoint eval split ({len(labels)} images from "
        f"{manifest['units']['eval']['units']} patients / groups): accuracy {accuracy:.4f}, "
        f"macro F1 {macro_f1:.4f}, meningioma recall {meningioma_recall:.4f}, ECE served "
        f"{ece:.4f} (before calibration {calibration['ece_before']:.4f}, T "
        f"{calibration['temperature']:.2f}); whole run {minutes:.1f} min"
    )

    audit_artifact = latest_output(PipelineConfig(str(tmp_path / "pipeline"), "", ""), "LesionAudit", "audit")
    audit = read_audit(audit_artifact.uri, rows=False)
    print("\n".join(audit_lines(audit)))

    assert accuracy >= ACCURACY_GOAL
    assert macro_f1 >= 0.97
    assert meningioma_recall >= 0.95
    assert ece <= 0.03
    assert minutes <= 60
    overall = audit["summary"]["overall"]
    assert audit["held_out_by"] == "patient" and audit["slices_audited"] >= 300
    assert overall["pointing"]["ci95"][0] > overall["centre_baseline"]["ci95"][1]
    assert overall["pointing"]["value"] >= POINTING_GOAL
    for name, figures in audit["summary"]["per_class"].items():
        assert figures["pointing"]["value"] >= POINTING_PER_CLASS_GOAL, name
    assert overall["mass_in_box"]["value"] >= HEAT_IN_BOX_GOAL
    assert overall["removed_changed"]["value"] >= REMOVED_CHANGED_GOAL
    assert overall["removed_notumor"]["value"] > 0.5 * overall["removed_changed"]["value"]
