"""Brain MRI volumes with a tumour mask → labelled axial slices (`btmri slices`).

The shared data hold tumours on one sequence only (T1 post-contrast); volumes such as
the public BraTS cases hold the same tumours on T1, T2 and FLAIR too, with a voxel
mask. This module turns them into what the rest of the project reads: class folders
for `btmri evaluate`, with tags per slice, and a box per tumour slice in the box
folder's YOLO format (data_prep/lesion_boxes.py).

Layout read (BraTS 2018-2021 and 2023 names alike), one folder per case:

    <case>/<case>_<sequence>.nii[.gz]   sequence: flair|t2f, t1|t1n, t1ce|t1c|t1gd, t2|t2w
    <case>/<case>_seg.nii[.gz]          the tumour mask: any non-zero voxel is tumour

Written to the output folder:

    <tumour class>/<case>_<seq>_z<k>.png   a slice with tumour (>= min_tumour_pixels)
    <tumour class>/<case>_<seq>_z<k>.txt   the mask's box on that slice, "k xc yc w h"
    notumor/<case>_<seq>_z<k>.png          a slice with no tumour on it nor `gap` slices
                                           either side, and at least half the largest
                                           brain area (not the skull cap)
    tags.csv                               file,patient,sequence: `btmri evaluate --tags`
    slices.csv                             file,patient,sequence,slice,tumour_pixels
    patients.csv                           id,class,patient (the box folder's file)

A `notumor` slice here is a slice of a patient who has a tumour elsewhere: "no tumour
on this slice", not a healthy brain. Slices are shown as a radiologist reads them
(anterior up, the patient's right on the left), square pixels, each volume windowed to
its own 0.5-99.5 percentiles of non-zero voxels, 8-bit PNG.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from btmri.documents import option
from data_prep.lesion_boxes import TUMOUR_CLASSES, format_yolo_box, mask_to_box
from data_prep.patients import PATIENTS_FILE

TAGS_FILE = "tags.csv"
INVENTORY_FILE = "slices.csv"
# File-name sequence → the tag value written (one name per sequence, whatever the release).
SEQUENCE_NAMES = {
    "flair": "flair",
    "t2f": "flair",
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1c",
    "t1c": "t1c",
    "t1gd": "t1c",
    "t2": "t2",
    "t2w": "t2",
}
SEQUENCES = ("t1", "t1c", "t2", "flair")
MASK_NAMES = ("seg",)
VOLUME_SUFFIXES = (".nii.gz", ".nii")
WINDOW_PERCENTILES = (0.5, 99.5)
# No-tumour slices must show at least this share of the volume's largest brain area.
MIN_BRAIN_SHARE = 0.5


class VolumeError(ValueError):
    """A case that cannot be sliced (missing mask, unreadable volume, shapes that differ)."""


@dataclass(frozen=True)
class SliceOptions:
    tumour_class: str = option(
        "glioma",
        "class of the tumour slices (every BraTS case is a glioma)",
        choices=TUMOUR_CLASSES,
    )
    min_tumour_pixels: int = option(100, "a tumour slice shows at least this many mask pixels")
    gap: int = option(3, "a no-tumour slice has no mask pixel on it nor this many slices either side")
    every: int = option(1, "keep every n-th qualifying slice of each volume (neighbours are near copies)")
    no_tumour_per_volume: int = option(
        8, "no-tumour slices kept per volume, evenly spaced among those that qualify (0: none)"
    )
    sequences: str = option(",".join(SEQUENCES), "comma-separated sequences to slice")
    progress: bool = option(True, "progress bar (-q: none)", cli=False)

    def check(self) -> None:
        """ValueError naming the flag, for values that would slice nothing sensible."""
        for name in ("min_tumour_pixels", "every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("gap", "no_tumour_per_volume"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} cannot be negative")
        self.wanted_sequences()

    def wanted_sequences(self) -> tuple[str, ...]:
        wanted = tuple(s.strip().lower() for s in self.sequences.split(",") if s.strip())
        unknown = sorted(set(wanted) - set(SEQUENCES))
        if unknown or not wanted:
            raise ValueError(
                f"unknown sequence(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(SEQUENCES)}"
            )
        return wanted


@dataclass
class SliceSummary:
    cases: int = 0
    slices: Counter = field(default_factory=Counter)  # (class, sequence) → count
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (case or file, reason)


def _stem(path: Path) -> str:
    for suffix in VOLUME_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def case_files(case_dir: Path) -> tuple[Path | None, dict[str, Path]]:
    """(the mask, {sequence: volume}) of one case folder, by the part of each file
    name after its last underscore."""
    mask, volumes = None, {}
    for path in sorted(case_dir.iterdir()):
        if not path.name.endswith(VOLUME_SUFFIXES):
            continue
        kind = _stem(path).rsplit("_", 1)[-1].lower()
        if kind in MASK_NAMES:
            mask = path
        elif kind in SEQUENCE_NAMES:
            volumes[SEQUENCE_NAMES[kind]] = path
    return mask, volumes


def load_axial(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """A volume as float32 [z, rows, cols] of axial slices in radiological view
    (rows anterior → posterior, columns the patient's right → left), and the
    (row, column) pixel spacing in mm."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))  # RAS+
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many kinds for a damaged file
        raise VolumeError(f"{path.name}: not a readable NIfTI volume ({err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path.name}: expected a 3-D volume, got shape {data.shape}")
    zooms = image.header.get_zooms()[:3]
    # RAS: axis 0 → right, 1 → anterior, 2 → superior. Reverse both in-plane axes, then
    # put anterior-posterior on the rows.
    axial = np.transpose(data[::-1, ::-1, :], (2, 1, 0))
    return np.ascontiguousarray(axial), (float(zooms[1]), float(zooms[0]))


def window_to_uint8(volume: np.ndarray) -> np.ndarray:
    """Whole-volume window: its non-zero voxels' WINDOW_PERCENTILES → 0..255."""
    inside = volume[volume > 0]
    if inside.size == 0:
        raise VolumeError("the volume is empty (no non-zero voxel)")
    low, high = np.percentile(inside, WINDOW_PERCENTILES)
    if high <= low:
        high = low + 1.0
    scaled = (volume - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def square_pixels(slice_u8: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Resample so a pixel is as tall as it is wide (the finer spacing kept)."""
    row_mm, col_mm = spacing
    if abs(row_mm - col_mm) < 1e-3 * max(row_mm, col_mm):
        return slice_u8
    fine = min(row_mm, col_mm)
    rows = max(1, round(slice_u8.shape[0] * row_mm / fine))
    cols = max(1, round(slice_u8.shape[1] * col_mm / fine))
    interpolation = cv2.INTER_NEAREST if slice_u8.dtype == bool else cv2.INTER_LINEAR
    return cv2.resize(slice_u8.astype(np.uint8), (cols, rows), interpolation=interpolation)


def choose_slices(tumour_pixels: np.ndarray, brain_pixels: np.ndarray, opts: SliceOptions):
    """(tumour slice indices, no-tumour slice indices) of one volume."""
    tumour = np.flatnonzero(tumour_pixels >= opts.min_tumour_pixels)[:: opts.every]
    near = np.convolve((tumour_pixels > 0).astype(int), np.ones(2 * opts.gap + 1, int), mode="same") > 0
    enough_brain = brain_pixels >= MIN_BRAIN_SHARE * brain_pixels.max()
    clear = np.flatnonzero(~near & enough_brain)
    keep = min(opts.no_tumour_per_volume, len(clear))
    if keep == 0:
        return tumour, clear[:0]
    return tumour, clear[np.unique(np.linspace(0, len(clear) - 1, keep).round().astype(int))]


def slice_case(case_dir: Path, out: Path, opts: SliceOptions, summary: SliceSummary, rows: list) -> int:
    """Writes one case's slices; returns how many (a sequence that cannot be read is
    recorded in the summary and the others go on)."""
    mask_path, volumes = case_files(case_dir)
    if mask_path is None:
        raise VolumeError("no tumour mask (<case>_seg.nii.gz)")
    wanted = [s for s in opts.wanted_sequences() if s in volumes]
    if not wanted:
        raise VolumeError(f"none of the sequences {opts.sequences} (found: {', '.join(volumes) or 'none'})")
    mask, spacing = load_axial(mask_path)
    mask = mask > 0
    case = case_dir.name
    written = len(rows)
    for sequence in wanted:
        try:
            volume, vol_spacing = load_axial(volumes[sequence])
            if volume.shape != mask.shape:
                raise VolumeError(f"shape {volume.shape} differs from the mask's {mask.shape}")
            pixels = window_to_uint8(volume)
        except VolumeError as err:
            summary.skipped.append((f"{case}/{volumes[sequence].name}", str(err)))
            continue
        tumour_idx, clear_idx = choose_slices(mask.sum(axis=(1, 2)), (volume > 0).sum(axis=(1, 2)), opts)
        for label, indices in ((opts.tumour_class, tumour_idx), ("notumor", clear_idx)):
            if not len(indices):
                continue  # no empty class folder: without notumor/ the output is a box folder
            folder = out / label
            folder.mkdir(parents=True, exist_ok=True)
            for z in indices:
                stem = f"{case}_{sequence}_z{z:03d}"
                image = square_pixels(pixels[z], vol_spacing)
                if not cv2.imwrite(str(folder / f"{stem}.png"), image):
                    raise OSError(f"cannot write {folder / stem}.png")
                if label != "notumor":
                    box = mask_to_box(square_pixels(mask[z], spacing) > 0)
                    (folder / f"{stem}.txt").write_text(format_yolo_box(box))
                rows.append((f"{label}/{stem}.png", case, sequence, int(z), int(mask[z].sum()), label, stem))
                summary.slices[(label, sequence)] += 1
    return len(rows) - written


def case_folders(volumes_dir: Path) -> list[Path]:
    if not volumes_dir.is_dir():
        raise ValueError(f"{volumes_dir} is not a folder")
    cases = sorted(p for p in volumes_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise ValueError(f"{volumes_dir} holds no case folders (<case>/<case>_<sequence>.nii.gz)")
    return cases


def slice_volumes(volumes_dir: str, out_dir: str, opts: SliceOptions = SliceOptions()) -> SliceSummary:
    """Every case folder of `volumes_dir` → slices, tags.csv and patients.csv in `out_dir`.
    A case that cannot be read is reported in the summary and skipped."""
    opts.check()  # bad options fail before any work
    out = Path(out_dir)
    cases = case_folders(Path(volumes_dir))
    out.mkdir(parents=True, exist_ok=True)
    summary, rows = SliceSummary(), []
    for case_dir in tqdm(cases, desc="slicing", unit="case", disable=not opts.progress):
        try:
            summary.cases += int(slice_case(case_dir, out, opts, summary, rows) > 0)
        except VolumeError as err:
            summary.skipped.append((case_dir.name, str(err)))
    if not rows:
        raise ValueError(f"no slice written: every case was skipped ({summary.skipped[0][1]} ...)")
    with (out / TAGS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "patient", "sequence"])
        writer.writerows(row[:3] for row in rows)
    with (out / INVENTORY_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "patient", "sequence", "slice", "tumour_pixels"])
        writer.writerows(row[:5] for row in rows)
    with (out / PATIENTS_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "class", "patient"])
        writer.writerows((stem, label, case) for _, case, _, _, _, label, stem in rows)
    return summary


def summary_lines(summary: SliceSummary, out_dir: str) -> list[str]:
    total = sum(summary.slices.values())
    lines = [f"wrote {total} slices of {summary.cases} cases to {out_dir}"]
    for label in sorted({label for label, _ in summary.slices}):
        per_seq = ", ".join(
            f"{seq} {summary.slices[(label, seq)]}" for seq in SEQUENCES if summary.slices[(label, seq)]
        )
        lines.append(f"  {label}: {per_seq}")
    for what, reason in summary.skipped:
        lines.append(f"  skipped {what}: {reason}")
    return lines
