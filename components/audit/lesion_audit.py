"""Does the model look at the tumour, and does its answer depend on it?

Checks on real tumour slices with boxes (data_prep/lesion_boxes.py), per class:

* pointing game: the peak of the `gradcam` heatmap lies inside the box (strictly,
  and within `tolerance_px` of it on the 224x224 heatmap); the image centre as the
  "peak" is the trivial baseline a heatmap must beat;
* heatmap mass in the box, against the box's share of the image;
* lesion removed: the box (grown by REMOVAL_MARGIN) is inpainted from its
  surroundings with OpenCV's Telea method at the slice's own resolution, and the
  model is asked again: does it keep its class, does it say notumor?
* lesion only: everything outside the grown box is set to black (reported only).

Every figure carries a 95 % interval over the slices' patients when the box folder's
patients.csv (data_prep/patients.py) puts more than one audited slice in a patient: a
bootstrap drawing whole patients (btmri.intervals). Otherwise each slice is its own
unit: proportions get a Wilson interval, means a bootstrap over slices. The model is
reached through a Predictor: the exported SavedModel in-process, or a served model
over gRPC (components/audit/predictors.py), so the pipeline and `btmri audit`
run the same checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from btmri import spec
from btmri.layout import LESION_AUDIT_FILE
from btmri import intervals
from data_prep.lesion_boxes import BoxedSlice, box_mask, gray_of

DEFAULT_TOLERANCE_PX = 8  # on the 224x224 heatmap: half a 14x14 Grad-CAM cell
REMOVAL_MARGIN = 0.02  # boxes are loose or tight by a few pixels: grow before editing
HEATMAP_SIZE = 224


class Predictor(Protocol):
    def gradcam(self, images: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded images → (heatmaps [N, 224, 224] in [0, 1], probabilities [N, 4])."""

    def predict(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images → probabilities [N, 4]."""


@dataclass
class SliceResult:
    source: str
    label: int
    box: tuple[float, float, float, float]
    predicted: int
    probability: float
    peak: tuple[float, float]  # normalised (y, x) of the heatmap's maximum
    pointing: bool
    pointing_tolerant: bool
    mass_in_box: float
    box_area: float
    removed_predicted: int
    removed_probability: float  # of the original class, lesion removed
    lesion_only_predicted: int
    # The slice's patient ("patient:<id>" from the box folder's patients.csv); "" when
    # unknown: the slice is then its own unit (as in audits written before patients).
    patient: str = ""

    @property
    def unit(self) -> str:
        """What the intervals resample: the patient, else the slice itself."""
        return self.patient or self.source


def result_from_dict(row: dict) -> SliceResult:
    """A row of lesion_audit.json back as a SliceResult; rows of older audits have no
    patient (each slice its own unit)."""
    return SliceResult(
        source=row["source"],
        label=int(row["label"]),
        box=tuple(row["box"]),
        predicted=int(row["predicted"]),
        probability=float(row["probability"]),
        peak=tuple(row["peak"]),
        pointing=bool(row["pointing"]),
        pointing_tolerant=bool(row["pointing_tolerant"]),
        mass_in_box=float(row["mass_in_box"]),
        box_area=float(row["box_area"]),
        removed_predicted=int(row["removed_predicted"]),
        removed_probability=float(row["removed_probability"]),
        lesion_only_predicted=int(row["lesion_only_predicted"]),
        patient=row.get("patient") or "",
    )


def grown(box, margin: float = REMOVAL_MARGIN):
    ymin, xmin, ymax, xmax = box
    return (
        max(0.0, ymin - margin),
        max(0.0, xmin - margin),
        min(1.0, ymax + margin),
        min(1.0, xmax + margin),
    )


def remove_lesion(gray: np.ndarray, box) -> np.ndarray:
    """The slice with its (grown) box inpainted from the surroundings (Telea)."""
    mask = box_mask(grown(box), *gray.shape[:2]).astype(np.uint8) * 255
    radius = max(3, round(0.01 * max(gray.shape)))
    return cv2.inpaint(gray, mask, radius, cv2.INPAINT_TELEA)


def lesion_only(gray: np.ndarray, box) -> np.ndarray:
    """The slice black outside its (grown) box."""
    return np.where(box_mask(grown(box), *gray.shape[:2]), gray, 0).astype(np.uint8)


def png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def _distance_to_box_px(y: float, x: float, box, size: int) -> float:
    ymin, xmin, ymax, xmax = (v * size for v in box)
    dy = max(ymin - y, 0.0, y - ymax)
    dx = max(xmin - x, 0.0, x - xmax)
    return float(np.hypot(dy, dx))


def heatmap_figures(heatmap: np.ndarray, box, tolerance_px: float) -> dict:
    """Pointing (strict and tolerant), peak and mass in box of one [h, w] heatmap."""
    h, w = heatmap.shape
    mask = box_mask(box, h, w)
    total = float(heatmap.sum())
    if total <= 0:  # nothing supports the class: no peak to point with
        return {
            "peak": (float("nan"), float("nan")),
            "pointing": False,
            "pointing_tolerant": False,
            "mass_in_box": 0.0,
            "box_area": float(mask.mean()),
        }
    py, px = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    y, x = py + 0.5, px + 0.5  # pixel centre, in heatmap pixels
    return {
        "peak": (y / h, x / w),
        "pointing": bool(mask[py, px]),
        "pointing_tolerant": _distance_to_box_px(y, x, box, h) <= tolerance_px,
        "mass_in_box": float(heatmap[mask].sum() / total),
        "box_area": float(mask.mean()),
    }


def audit_slices(
    slices: Sequence[BoxedSlice],
    predictor: Predictor,
    batch_size: int = 16,
    tolerance_px: float = DEFAULT_TOLERANCE_PX,
    progress: bool = True,
    keep_heatmaps: int = 0,
    patients: Mapping[str, str] | None = None,
) -> tuple[list[SliceResult], dict[int, np.ndarray]]:
    """Runs every check on every slice. Returns the per-slice results and, for the
    first `keep_heatmaps` slices of each class and outcome (peak in box or not), their
    heatmaps (for galleries). `patients`: slice source → its patient unit
    ("patient:<id>"); slices it does not name are their own unit."""
    patients = patients or {}
    results: list[SliceResult] = []
    kept: dict[int, np.ndarray] = {}
    kept_count: dict[tuple[int, bool], int] = {}
    bar = tqdm(total=len(slices), desc="lesion audit", unit="slice", disable=not progress)
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        grays = [gray_of(s.path) for s in batch]
        originals = [png(g) for g in grays]
        heatmaps, probs = predictor.gradcam(originals)
        removed = predictor.predict([png(remove_lesion(g, s.box)) for g, s in zip(grays, batch)])
        only = predictor.predict([png(lesion_only(g, s.box)) for g, s in zip(grays, batch)])
        for i, s in enumerate(batch):
            fig = heatmap_figures(np.asarray(heatmaps[i], np.float32), s.box, tolerance_px)
            results.append(
                SliceResult(
                    source=s.source,
                    label=s.label,
                    box=tuple(s.box),
                    predicted=int(np.argmax(probs[i])),
                    probability=float(np.max(probs[i])),
                    peak=fig["peak"],
                    pointing=fig["pointing"],
                    pointing_tolerant=fig["pointing_tolerant"],
                    mass_in_box=fig["mass_in_box"],
                    box_area=fig["box_area"],
                    removed_predicted=int(np.argmax(removed[i])),
                    removed_probability=float(removed[i][s.label]),
                    lesion_only_predicted=int(np.argmax(only[i])),
                    patient=patients.get(s.source, ""),
                )
            )
            kind = (s.label, fig["pointing"])
            if kept_count.get(kind, 0) < keep_heatmaps:
                kept[len(results) - 1] = np.asarray(heatmaps[i], np.float32)
                kept_count[kind] = kept_count.get(kind, 0) + 1
        bar.update(len(batch))
    bar.close()
    return results, kept


def _figures(rows: list[SliceResult], method: str) -> dict:
    """Shares and means of `rows`, every interval by `method` over the rows' units."""
    units = [r.unit for r in rows]

    def share(pred) -> dict:
        return intervals.share([bool(pred(r)) for r in rows], units, method)

    def mean(values) -> dict:
        return intervals.mean(values, units, method)

    return {
        "slices": len(rows),
        "units": intervals.count_units(units, len(rows)),
        "accuracy": share(lambda r: r.predicted == r.label),
        "pointing": share(lambda r: r.pointing),
        "pointing_tolerant": share(lambda r: r.pointing_tolerant),
        "centre_baseline": share(lambda r: _contains(r.box, 0.5, 0.5)),
        "mass_in_box": mean([r.mass_in_box for r in rows]),
        "box_area": mean([r.box_area for r in rows]),
        "removed_same_class": share(lambda r: r.removed_predicted == r.label),
        "removed_changed": share(lambda r: r.removed_predicted != r.label),
        "removed_notumor": share(lambda r: r.removed_predicted == spec.NOTUMOR_ID),
        "lesion_only_same_class": share(lambda r: r.lesion_only_predicted == r.label),
    }


def _contains(box, y: float, x: float) -> bool:
    ymin, xmin, ymax, xmax = box
    return ymin <= y <= ymax and xmin <= x <= xmax


def summarise(results: list[SliceResult]) -> dict:
    """Figures overall and per tumour class present. One interval method for all:
    the bootstrap over patients when some patient has more than one audited slice
    (btmri.intervals.interval_method), else Wilson (shares) and a bootstrap over slices
    (means). "units": the patients (and unnamed slices) the slices come from."""
    units = [r.unit for r in results]
    method = intervals.interval_method(units)
    per_class = {}
    for label in sorted({r.label for r in results}):
        per_class[spec.CLASS_NAMES[label]] = _figures([r for r in results if r.label == label], method)
    return {
        "overall": _figures(results, method),
        "per_class": per_class,
        "interval_method": method,
        "slices": len(results),
        "units": intervals.count_units(units, len(results)),
        "slices_with_patient": sum(1 for r in results if r.patient),
    }


def patient_units(patients: Mapping[str, str]) -> dict[str, str]:
    """Slice source → patient id (data_prep.patients.read_patients_csv) as the unit
    ids prepared data carries ("patient:<id>")."""
    return {source: spec.PATIENT_PREFIX + patient for source, patient in patients.items()}


def intervals_statement(summary: dict) -> str:
    """'412 slices from 87 patients; 95 % intervals: bootstrap over patients'."""
    from components.audit.report_text import intervals_text

    return intervals_text(summary)


@dataclass(frozen=True)
class AuditBounds:
    """Gate: a bound < 0 is off. Overall pointing (strict) and lesion-removed "changed"."""

    min_pointing: float = -1.0
    min_removed_changed: float = -1.0

    @property
    def enabled(self) -> bool:
        return self.min_pointing >= 0 or self.min_removed_changed >= 0


def check(summary: dict, bounds: AuditBounds) -> list[str]:
    """The bounds a summary fails, as readable reasons (empty: passed)."""
    overall = summary["overall"]
    failures = []
    if bounds.min_pointing >= 0 and not overall["pointing"]["value"] >= bounds.min_pointing:
        failures.append(f"pointing game {overall['pointing']['value']:.3f} < bound {bounds.min_pointing}")
    if (
        bounds.min_removed_changed >= 0
        and not overall["removed_changed"]["value"] >= bounds.min_removed_changed
    ):
        failures.append(
            f"lesion removed, class changed {overall['removed_changed']['value']:.3f} "
            f"< bound {bounds.min_removed_changed}"
        )
    return failures


def read_audit(folder: str, rows: bool = True) -> dict:
    """lesion_audit.json of an audit artifact (without the per-slice rows if not `rows`)."""
    import json
    import os

    with open(os.path.join(folder, LESION_AUDIT_FILE)) as f:
        document = json.load(f)
    if not rows:
        document.pop("results", None)
    return document


def results_as_dicts(results: list[SliceResult]) -> list[dict]:
    return [asdict(r) for r in results]
