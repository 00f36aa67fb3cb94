"""`LesionAudit`: a TFX component after the Evaluator.

Inputs: the candidate model, the examples it was trained on and the Evaluator's
blessing. Parameter: a box folder (data_prep/lesion_boxes.py). The slices audited
are those with no copy among the training split's images (same matching rule as
`btmri prepare`) and, where the folder's patients.csv knows patients, whose patient
has no image in the training split: neither a slice that trained the model nor its
neighbour from the same patient grades it.

Outputs: a `LesionAudit` artifact (lesion_audit.json: figures with intervals and a
row per slice; gallery/: a few slices with their heatmaps, for the report)
and a `ModelBlessing` for the Pusher: blessed when the Evaluator blessed and, if
bounds are set, the audit passes them.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from btmri import spec
from btmri.layout import LESION_AUDIT_FILE
from components.audit import lesion_audit

GALLERY_PER_KIND = 2  # slices kept per class and outcome (peak in box or not)
GALLERY_DIR = "gallery"


class LesionAuditResult(types.Artifact):
    """Figures of the lesion audit (lesion_audit.json) and its gallery."""

    TYPE_NAME = "btmri.LesionAudit"  # a namespace: the Kubeflow v2 compiler requires one


class LesionAuditSpec(types.ComponentSpec):
    PARAMETERS = {
        "box_dir": ExecutionParameter(type=str),
        "tolerance_px": ExecutionParameter(type=float),
        "min_pointing": ExecutionParameter(type=float),
        "min_removed_changed": ExecutionParameter(type=float),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS = {
        "audit": ChannelParameter(type=LesionAuditResult),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


def split_files(examples_uri: str, split: str = spec.TRAIN_SPLIT) -> list[str]:
    """The record files of one split of an Examples artifact."""
    return sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))


def training_images(files: list[str]):
    """(32x32 grayscale thumbnail, label, patient unit) of each image in record files,
    decoded as `prepare` decodes them."""
    import tensorflow as tf

    from data_prep.image_io import ImageError, decode_image

    for path in files:
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            feats = tf.train.Example.FromString(record.numpy()).features.feature
            try:
                image = decode_image(feats[spec.IMAGE_KEY].bytes_list.value[0], ".png")
            except ImageError:
                continue
            unit = feats[spec.PATIENT_KEY].bytes_list.value if spec.PATIENT_KEY in feats else []
            yield (
                image.gray_small,
                feats[spec.LABEL_KEY].int64_list.value[0],
                (unit[0].decode() if unit else ""),
            )


def slices_not_in(slices, images, patients: dict[str, str] | None = None):
    """The slices of which no image is a copy, by prepare's own rule (each image's best
    same-class slice, if it correlates above the threshold: data_prep/lesion_boxes.py),
    and, for slices whose patient `patients` (slice source → patient) knows, whose
    patient has no image among `images`."""
    from data_prep.lesion_boxes import BoxMatcher
    from data_prep.patients import patients_in_unit

    matcher = BoxMatcher(slices)
    copied = set()
    seen_patients: set[str] = set()
    for gray_small, label, unit in images:
        found = matcher.best(gray_small, label)
        if found is not None and found[1] >= matcher.threshold:
            copied.add(found[0])
        seen_patients.update(patients_in_unit(unit))
    patients = patients or {}
    return [
        s for i, s in enumerate(slices) if i not in copied and patients.get(s.source) not in seen_patients
    ]


def write_audit(out_dir: str, document: dict, results, gallery: dict[int, tuple[str, np.ndarray]]) -> None:
    """lesion_audit.json, and gallery/<i>.<ext> + gallery/<i>.npy (the slice and its
    heatmap) for the kept slices, so the report needs nothing but this folder."""
    import shutil

    os.makedirs(os.path.join(out_dir, GALLERY_DIR), exist_ok=True)
    document = dict(document, results=lesion_audit.results_as_dicts(results), gallery=sorted(gallery))
    with open(os.path.join(out_dir, LESION_AUDIT_FILE), "w") as f:
        json.dump(document, f, indent=1)
    for i, (path, heatmap) in gallery.items():
        shutil.copyfile(path, gallery_image_path(out_dir, i, path))
        np.save(os.path.join(out_dir, GALLERY_DIR, f"{i}.npy"), heatmap.astype(np.float16))


def gallery_image_path(out_dir: str, index: int, original: str) -> str:
    return os.path.join(out_dir, GALLERY_DIR, f"{index}{os.path.splitext(original)[1].lower()}")


def run_lesion_audit(
    model_dir: str | None,
    box_dir: str,
    training_files: list[str],
    tolerance_px: float,
    bounds: lesion_audit.AuditBounds,
    out_dir: str,
    progress: bool = False,
    predictor=None,
) -> dict:
    """The audit as the component runs it; returns the JSON document written."""
    from components.audit.predictors import SavedModelPredictor
    from data_prep.lesion_boxes import read_box_folder
    from data_prep.patients import read_patients_csv

    slices, skipped = read_box_folder(box_dir)
    patients = read_patients_csv(box_dir)
    audited = slices
    if training_files:
        audited = slices_not_in(slices, training_images(training_files), patients)
    predictor = predictor or SavedModelPredictor(model_dir)
    results, heatmaps = lesion_audit.audit_slices(
        audited,
        predictor,
        tolerance_px=tolerance_px,
        progress=progress,
        keep_heatmaps=GALLERY_PER_KIND,
        patients=lesion_audit.patient_units(patients),
    )
    summary = lesion_audit.summarise(results)
    failures = lesion_audit.check(summary, bounds)
    document = {
        "box_dir": os.path.abspath(box_dir),
        "slices_in_folder": len(slices),
        "slices_skipped": [{"source": s.source, "reason": s.reason} for s in skipped],
        "slices_in_training": len(slices) - len(audited),
        "slices_audited": len(audited),
        "intervals": lesion_audit.intervals_statement(summary),  # "N slices from M patients; …"
        "held_out_by": "patient" if patients else "copy",
        "tolerance_px": tolerance_px,
        "lesion_removal": f"box grown by {lesion_audit.REMOVAL_MARGIN:.2f} of the side, "
        "inpainted with OpenCV Telea at the slice's resolution",
        "summary": summary,
        "bounds": {"min_pointing": bounds.min_pointing, "min_removed_changed": bounds.min_removed_changed},
        "failures": failures,
        "passed": not failures,
    }
    write_audit(
        out_dir, document, results, {i: (audited[i].path, heatmap) for i, heatmap in heatmaps.items()}
    )
    return document


class LesionAuditExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        evaluator_blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])
        audit = artifact_utils.get_single_instance(output_dict["audit"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])

        bounds = lesion_audit.AuditBounds(
            float(exec_properties["min_pointing"]), float(exec_properties["min_removed_changed"])
        )
        document = run_lesion_audit(
            path_utils.serving_model_path(model.uri),
            exec_properties["box_dir"],
            split_files(examples.uri),
            float(exec_properties["tolerance_px"]),
            bounds,
            audit.uri,
        )
        overall = document["summary"]["overall"]
        for key in ("pointing", "removed_changed", "removed_notumor"):
            audit.set_float_custom_property(key, float(overall[key]["value"]))
        audit.set_int_custom_property("slices_audited", document["slices_audited"])

        evaluator_ok = (
            evaluator_blessing.get_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY)
            == evaluator_constants.BLESSED_VALUE
        )
        ok = evaluator_ok and document["passed"]
        blessing.set_string_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri
        )
        blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
        reason = (
            "blessed"
            if ok
            else "the Evaluator did not bless the model"
            if not evaluator_ok
            else "; ".join(document["failures"])
        )
        blessing.set_string_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, reason
        )
        blessing.set_int_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
            evaluator_constants.BLESSED_VALUE if ok else evaluator_constants.NOT_BLESSED_VALUE,
        )
        io_utils.write_string_file(
            os.path.join(
                blessing.uri,
                evaluator_constants.BLESSED_FILE_NAME if ok else evaluator_constants.NOT_BLESSED_FILE_NAME,
            ),
            "",
        )


class LesionAudit(base_component.BaseComponent):
    SPEC_CLASS = LesionAuditSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(LesionAuditExecutor)

    def __init__(
        self,
        model,
        examples,
        model_blessing,
        box_dir: str,
        tolerance_px: float = lesion_audit.DEFAULT_TOLERANCE_PX,
        min_pointing: float = -1.0,
        min_removed_changed: float = -1.0,
    ):
        component_spec = LesionAuditSpec(
            model=model,
            examples=examples,
            model_blessing=model_blessing,
            box_dir=box_dir,
            tolerance_px=float(tolerance_px),
            min_pointing=float(min_pointing),
            min_removed_changed=float(min_removed_changed),
            audit=types.Channel(type=LesionAuditResult),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing),
        )
        super().__init__(spec=component_spec)
