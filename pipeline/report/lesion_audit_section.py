"""The lesion audit in the report and the model card: one table and its reading,
shared by both, plus the report's gallery of heatmaps with the tumour box."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from components.audit.component import GALLERY_DIR, gallery_image_path
from components.audit.report_text import COLUMNS, intervals_text
from btmri import spec
from serving.heatmap_overlay import overlay
from btmri.intervals import PATIENT_BOOTSTRAP, WILSON, format_with_interval
from pipeline.report.markup import Bullets, Cell, Paragraph, Table

BOX_COLOUR = (60, 220, 60)  # BGR green: the tumour box on every overlay


def _cell(fig: dict) -> Cell:
    return Cell(format_with_interval(fig["value"], fig["ci95"], digits=2), "num")


def audit_table(document: dict, table_id: str = "lesion-audit") -> Table:
    summary = document["summary"]
    rows = [
        [Cell(name), Cell(str(fig["slices"]), "num"), *(_cell(fig[key]) for key, _ in COLUMNS)]
        for name, fig in [*summary["per_class"].items(), ("overall", summary["overall"])]
    ]
    return Table(
        ["class", "slices", *(title for _, title in COLUMNS)],
        rows,
        id=table_id,
        caption=intervals_text(summary)
        + (
            " (shares widened where needed to hold their Wilson interval over slices)"
            if summary.get("interval_method", WILSON) == PATIENT_BOOTSTRAP
            else " for shares, bootstrap over slices for mean heat and box area"
        ),
    )


def audit_blocks(document: dict | None, table_id: str = "lesion-audit") -> list:
    """Explanation, table and verdict; a note when the run had no box folder."""
    if document is None:
        return [
            Paragraph(
                "No lesion audit: the run had no box folder (`btmri run --boxes-dir`). "
                "Nothing here shows whether the model looks at the tumour."
            )
        ]
    overall = document["summary"]["overall"]
    gate = document.get("bounds", {})
    gated = any(gate.get(key, -1) >= 0 for key in ("min_pointing", "min_removed_changed"))
    gate_text = (
        "no bound set (the audit does not gate blessing)"
        if not gated
        else "passed"
        if document.get("passed")
        else "failed: " + "; ".join(document.get("failures", []))
    )
    return [
        Paragraph(
            f"Tumour slices with boxes ({document['slices_audited']} of "
            f"{document['slices_in_folder']}: the slices with no copy among the training images). "
            "Peak in box: the heatmap's maximum falls inside the tumour box (pointing game); "
            f"peak near box: within {document['tolerance_px']:g} px of it on the 224×224 heatmap; "
            "centre in box: the trivial baseline of pointing at the image centre. Heat in box: "
            "the share of the heatmap's mass inside the box, against the box's share of the image. "
            f"Removed: the lesion {document['lesion_removal']}; changed: the model no longer gives "
            "the tumour class; notumor: it says no tumour. Lesion only: everything outside the "
            "box blacked out, same class kept."
        ),
        audit_table(document, table_id),
        Bullets(
            [
                f"Pointing game {overall['pointing']['value']:.2f} against "
                f"{overall['centre_baseline']['value']:.2f} for the image centre; "
                f"heat in box {overall['mass_in_box']['value']:.2f} for boxes covering "
                f"{overall['box_area']['value']:.2f} of the image.",
                f"With the lesion removed the answer changes for {overall['removed_changed']['value']:.2f}"
                f" of slices and becomes notumor for {overall['removed_notumor']['value']:.2f}.",
                f"Audit gate: {gate_text}.",
            ]
        ),
    ]


@dataclass
class AuditTile:
    row: dict  # the slice's row of lesion_audit.json
    image: np.ndarray  # BGR overlay with the box


def draw_box(image: np.ndarray, box) -> np.ndarray:
    h, w = image.shape[:2]
    ymin, xmin, ymax, xmax = box
    out = image.copy()
    cv2.rectangle(
        out,
        (round(xmin * w), round(ymin * h)),
        (round(xmax * w) - 1, round(ymax * h) - 1),
        BOX_COLOUR,
        max(1, round(max(h, w) / 160)),
    )
    return out


def gallery(audit_dir: str, document: dict, max_side: int) -> list[AuditTile]:
    """The audit artifact's kept slices as overlays (heatmap + green box)."""
    tiles = []
    for index in document.get("gallery", []):
        row = document["results"][index]
        heat_path = os.path.join(audit_dir, GALLERY_DIR, f"{index}.npy")
        image_path = gallery_image_path(audit_dir, index, row["source"])
        if not (os.path.isfile(heat_path) and os.path.isfile(image_path)):
            continue
        with open(image_path, "rb") as f:
            picture = overlay(f.read(), np.load(heat_path).astype(np.float32), max_side)
        tiles.append(AuditTile(row, draw_box(picture, row["box"])))
    return tiles


def tile_caption(row: dict) -> str:
    names = spec.CLASS_NAMES
    return (
        f"{names[row['label']]} → predicted {names[row['predicted']]} "
        f"({row['probability']:.2f}); lesion removed → {names[row['removed_predicted']]}; "
        f"heat in box {row['mass_in_box']:.2f}"
    )
