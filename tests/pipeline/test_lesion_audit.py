"""The lesion audit: its figures on hand-made heatmaps and images, the pipeline's
LesionAudit component on the tiny run, `btmri audit` in process and over gRPC, and
the audit gate."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from btmri.layout import LESION_AUDIT_FILE
from btmri import intervals
from components.audit import lesion_audit
from components.audit.lesion_audit import (
    AuditBounds,
    SliceResult,
    check,
    heatmap_figures,
    lesion_only,
    remove_lesion,
    summarise,
)
from btmri import spec
from data_prep.lesion_boxes import read_box_folder
from pipeline.config import PipelineConfig
from pipeline.metadata import latest_output


def test_wilson_interval_known_values_and_edges():
    lo, hi = intervals.wilson(81, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.722, 0.875)  # worked by hand
    assert intervals.wilson(0, 10)[0] == 0.0 and intervals.wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(intervals.wilson(0, 0)))
    lo, hi = intervals.bootstrap_mean(np.r_[np.zeros(50), np.ones(50)])
    assert 0.38 < lo < 0.45 and 0.55 < hi < 0.62


def test_pointing_and_mass_from_a_heatmap():
    box = (0.25, 0.5, 0.5, 0.75)  # rows 56..112, cols 112..168 at 224
    heat = np.zeros((224, 224), np.float32)
    heat[80, 140] = 1.0
    fig = heatmap_figures(heat, box, tolerance_px=8)
    assert fig["pointing"] and fig["pointing_tolerant"] and fig["mass_in_box"] == 1.0
    assert fig["box_area"] == pytest.approx(0.0625, abs=0.002)
    heat[80, 140], heat[80, 172] = 0.5, 1.0  # peak 4 px right of the box
    fig = heatmap_figures(heat, box, tolerance_px=8)
    assert not fig["pointing"] and fig["pointing_tolerant"]
    assert fig["mass_in_box"] == pytest.approx(1 / 3)
    assert not heatmap_figures(heat, box, tolerance_px=2)["pointing_tolerant"]
    empty = heatmap_figures(np.zeros((224, 224), np.float32), box, 8)
    assert not empty["pointing"] and empty["mass_in_box"] == 0.0  # no evidence: no hit


def test_lesion_removal_and_lesion_only_edit_the_box():
    gray = np.full((200, 200), 90, np.uint8)
    gray[60:100, 60:100] = 250  # bright lesion
    box = (0.3, 0.3, 0.5, 0.5)
    removed = remove_lesion(gray, box)
    assert abs(float(removed[60:100, 60:100].mean()) - 90) < 10
    assert (removed[150:, 150:] == 90).all()
    only = lesion_only(gray, box)
    assert (only[150:, 150:] == 0).all() and (only[70:90, 70:90] == 250).all()


def _row(label, pointing, removed, mass=0.5):
    return SliceResult(
        source="x",
        label=label,
        box=(0.4, 0.4, 0.6, 0.6),
        predicted=label,
        probability=0.9,
        peak=(0.5, 0.5),
        pointing=pointing,
        pointing_tolerant=pointing,
        mass_in_box=mass,
        box_area=0.04,
        removed_predicted=removed,
        removed_probability=0.1,
        lesion_only_predicted=label,
    )


def test_summary_counts_and_gate():
    rows = [_row(0, True, spec.NOTUMOR_ID)] * 3 + [_row(0, False, 0)] + [_row(3, True, 1)] * 2
    summary = summarise(rows)
    assert summary["per_class"]["glioma"]["pointing"]["successes"] == 3
    assert summary["per_class"]["glioma"]["removed_notumor"]["value"] == 0.75
    assert summary["per_class"]["pituitary"]["removed_changed"]["value"] == 1.0
    assert summary["overall"]["pointing"]["value"] == pytest.approx(5 / 6)
    assert summary["overall"]["centre_baseline"]["value"] == 1.0
    assert check(summary, AuditBounds()) == []
    assert check(summary, AuditBounds(min_pointing=0.8, min_removed_changed=0.8)) == []
    failures = check(summary, AuditBounds(min_pointing=0.9, min_removed_changed=0.9))
    assert len(failures) == 2 and "pointing game 0.833" in failures[0]


def test_summary_draws_intervals_over_patients():
    # Patient A: 3 slices, all pointing; patient B: 3 slices, none. Six slices, but two
    # independent draws: the bootstrap over patients spans [0, 1], Wilson does not.
    rows = [
        dataclasses.replace(_row(0, True, 0), source=f"glioma/{i}.png", patient="patient:A") for i in range(3)
    ]
    rows += [
        dataclasses.replace(_row(0, False, 0, mass=0.1), source=f"glioma/{i}.png", patient="patient:B")
        for i in range(3, 6)
    ]
    summary = summarise(rows)
    assert summary["interval_method"] == intervals.PATIENT_BOOTSTRAP
    assert (summary["slices"], summary["units"], summary["slices_with_patient"]) == (6, 2, 6)
    pointing = summary["overall"]["pointing"]
    assert pointing["method"] == intervals.PATIENT_BOOTSTRAP and pointing["units"] == 2
    assert (pointing["value"], pointing["ci95"]) == (0.5, [0.0, 1.0])
    wilson = intervals.wilson(3, 6)
    assert wilson[0] > 0.1 and wilson[1] < 0.9
    mass = summary["overall"]["mass_in_box"]
    assert mass["method"] == intervals.PATIENT_BOOTSTRAP and mass["ci95"] == pytest.approx([0.1, 0.5])
    assert summary["per_class"]["glioma"]["removed_changed"]["method"] == intervals.PATIENT_BOOTSTRAP
    assert lesion_audit.intervals_statement(summary) == (
        "6 slices from 2 patients; 95 % intervals: bootstrap over patients"
    )
    # Without patients (an audit written before them, or no patients.csv): each slice
    # its own unit, Wilson for shares, the interval the audit always gave.
    alone = summarise([dataclasses.replace(r, patient="") for r in rows])
    assert alone["interval_method"] == intervals.WILSON and alone["units"] == 6
    assert alone["overall"]["pointing"]["ci95"] == list(wilson)
    assert alone["overall"]["mass_in_box"]["method"] == intervals.BOOTSTRAP
    assert (
        lesion_audit.intervals_statement(alone)
        == "6 slices, each its own unit; 95 % intervals: Wilson over slices"
    )


class _BrightnessPredictor:
    """Points into the box of bright slices and away from it on dark ones; says glioma."""

    def gradcam(self, images):
        heatmaps = np.zeros((len(images), 224, 224), np.float32)
        for i, data in enumerate(images):
            bright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).mean() > 100
            heatmaps[i, (112 if bright else 4), (112 if bright else 4)] = 1.0
        return heatmaps, self.predict(images)

    def predict(self, images):
        return np.tile(np.eye(spec.NUM_CLASSES)[0], (len(images), 1))


def _box_folder(root, with_patients: bool):
    (root / "glioma").mkdir(parents=True)
    for i in range(8):  # slices 0-3 bright (patient A), 4-7 dark (patient B)
        gray = np.full((64, 64), 200 if i < 4 else 40, np.uint8)
        gray[24:40, 24:40] = 255
        cv2.imwrite(str(root / "glioma" / f"{i}.png"), gray)
        (root / "glioma" / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    if with_patients:
        lines = ["id,class,patient"] + [f"{i},glioma,{'A' if i < 4 else 'B'}" for i in range(8)]
        (root / "patients.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("with_patients", [True, False])
def test_audit_takes_the_slices_patients_from_the_box_folder(tmp_path, with_patients):
    from components.audit.component import run_lesion_audit

    box_dir = _box_folder(tmp_path / "boxes", with_patients)
    document = run_lesion_audit(
        None, str(box_dir), [], 8.0, AuditBounds(), str(tmp_path / "audit"), predictor=_BrightnessPredictor()
    )
    summary = document["summary"]
    assert document["slices_audited"] == 8 and summary["overall"]["pointing"]["value"] == 0.5
    written = json.loads((tmp_path / "audit" / LESION_AUDIT_FILE).read_text())
    if with_patients:
        assert summary["interval_method"] == intervals.PATIENT_BOOTSTRAP and summary["units"] == 2
        assert document["intervals"] == "8 slices from 2 patients; 95 % intervals: bootstrap over patients"
        assert summary["overall"]["pointing"]["ci95"] == [0.0, 1.0]
        assert [r["patient"] for r in written["results"]] == ["patient:A"] * 4 + ["patient:B"] * 4
    else:
        assert summary["interval_method"] == intervals.WILSON and summary["units"] == 8
        assert document["intervals"] == "8 slices, each its own unit; 95 % intervals: Wilson over slices"
        assert summary["overall"]["pointing"]["ci95"] == list(intervals.wilson(4, 8))
        assert {r["patient"] for r in written["results"]} == {""}
    # Rows read back give the same summary; rows of older audits (no patient) are their own units.
    assert summarise([lesion_audit.result_from_dict(r) for r in written["results"]]) == summary
    old = [
        lesion_audit.result_from_dict({k: v for k, v in r.items() if k != "patient"})
        for r in written["results"]
    ]
    assert [r.unit for r in old] == [r["source"] for r in written["results"]]
    assert summarise(old)["interval_method"] == intervals.WILSON
    from components.audit.report_text import audit_lines

    assert audit_lines(written)[1] == document["intervals"]


def _config(work):
    return PipelineConfig(
        pipeline_root=str(work / "pipeline"),
        data_root=str(work / "data" / "prepared" / "current"),
        serving_dir=str(work / "serving"),
        box_dir=str(work / "data" / "synthetic" / "boxes"),
    )


@pytest.fixture(scope="module")
def audit_document(tiny_run):
    artifact = latest_output(_config(tiny_run), "LesionAudit", "audit")
    assert artifact is not None
    return artifact.uri, lesion_audit.read_audit(artifact.uri)


def test_pipeline_audits_only_slices_that_did_not_train(tiny_run, audit_document):
    uri, document = audit_document
    manifest = json.loads((tiny_run / "data" / "prepared" / "current" / "manifest.json").read_text())
    boxed_in_train = sum(manifest["lesion_boxes"]["images_with_box"]["train"].values())
    slices, _ = read_box_folder(tiny_run / "data" / "synthetic" / "boxes")
    assert document["slices_in_folder"] == len(slices)
    assert document["slices_in_training"] == boxed_in_train
    assert document["slices_audited"] == len(slices) - boxed_in_train == len(document["results"])
    trained = {r.source for r in slices} - {r["source"] for r in document["results"]}
    assert all(s.startswith(tuple(f"{c}/training_" for c in spec.CLASS_NAMES)) for s in trained)
    overall = document["summary"]["overall"]
    assert overall["slices"] == document["slices_audited"]
    for key in ("pointing", "removed_changed", "lesion_only_same_class"):
        lo, hi = overall[key]["ci95"]
        assert 0.0 <= lo <= overall[key]["value"] <= hi <= 1.0
    assert document["gallery"] and all(
        (tiny_run / uri / "gallery" / f"{i}.npy").is_file() for i in document["gallery"]
    )


def test_btmri_audit_in_process_and_over_grpc_agree_with_the_pipeline(
    tiny_run, audit_document, tmp_path, capsys
):
    from pipeline.cli import main
    from serving.process import ServerProcess

    _, document = audit_document
    boxes = str(tiny_run / "data" / "synthetic" / "boxes")
    prepared = str(tiny_run / "data" / "prepared" / "current")
    common = [boxes, "--exclude-training", prepared, "--quiet", "--json"]
    assert (
        main(["audit", "--model", str(tiny_run / "serving"), *common, "--out", str(tmp_path / "local")]) == 0
    )
    local = json.loads(capsys.readouterr().out)
    with ServerProcess(tiny_run / "serving") as server:
        assert (
            main(["audit", "--server", server.grpc_target, *common, "--out", str(tmp_path / "served")]) == 0
        )
    served = json.loads(capsys.readouterr().out)
    for other in (local, served):
        assert other["slices_audited"] == document["slices_audited"]
        for key in ("accuracy", "pointing", "removed_changed", "lesion_only_same_class"):
            assert (
                other["summary"]["overall"][key]["successes"]
                == document["summary"]["overall"][key]["successes"]
            ), key
    # A bound nobody meets: exit status 1 and the reason printed.
    assert (
        main(
            [
                "audit",
                "--model",
                str(tiny_run / "serving"),
                boxes,
                "--quiet",
                "--min-removed-changed",
                "1.01",
                "--out",
                str(tmp_path / "gate"),
            ]
        )
        == 1
    )
    assert "audit gate failed: lesion removed, class changed" in capsys.readouterr().out


def test_btmri_audit_explains_a_missing_model(tmp_path, capsys):
    from pipeline.cli import main

    slices = tmp_path / "boxes" / "glioma"
    slices.mkdir(parents=True)
    cv2.imwrite(str(slices / "1.png"), np.zeros((8, 8), np.uint8))
    (slices / "1.txt").write_text("0 0.5 0.5 0.2 0.2")
    assert main(["audit", "--model", str(tmp_path), str(tmp_path / "boxes")]) == 2
    assert "no SavedModel in" in capsys.readouterr().err


def test_audit_gate_refuses_to_bless(tiny_run, tmp_path):
    """The executor with an unreachable bound writes a NOT_BLESSED blessing with the reason,
    even though the Evaluator blessed; the Pusher reads that one."""
    from tfx.types import standard_artifacts

    from components.audit.component import LesionAuditExecutor, LesionAuditResult
    from pipeline.factory import create_pipeline

    config = _config(tiny_run)
    inputs = {
        "model": [latest_output(config, "Trainer", "model")],
        "examples": [latest_output(config, "ImportExampleGen", "examples")],
        "model_blessing": [latest_output(config, "Evaluator", "blessing")],
    }
    assert inputs["model_blessing"][0].get_int_custom_property("blessed") == 1
    outputs = {"audit": [LesionAuditResult()], "blessing": [standard_artifacts.ModelBlessing()]}
    outputs["audit"][0].uri = str(tmp_path / "audit")
    outputs["blessing"][0].uri = str(tmp_path / "blessing")
    LesionAuditExecutor().Do(
        inputs,
        outputs,
        {"box_dir": config.box_dir, "tolerance_px": 8.0, "min_pointing": -1.0, "min_removed_changed": 1.01},
    )
    blessing = outputs["blessing"][0]
    assert blessing.get_int_custom_property("blessed") == 0
    assert "lesion removed, class changed" in blessing.get_string_custom_property("blessing_message")
    assert (tmp_path / "blessing" / "NOT_BLESSED").is_file()
    assert (tmp_path / "audit" / LESION_AUDIT_FILE).is_file()

    nodes = {c.id: c for c in create_pipeline(config).components}
    assert nodes["Pusher"].inputs["model_blessing"].producer_component_id == "LesionAudit"
    config.box_dir = None
    nodes = {c.id: c for c in create_pipeline(config).components}
    assert "LesionAudit" not in nodes
    assert nodes["Pusher"].inputs["model_blessing"].producer_component_id == "Evaluator"
