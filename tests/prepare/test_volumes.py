"""`btmri slices`: NIfTI volumes with a tumour mask → labelled axial slices, tags and
boxes, on small volumes made here (a bright cube "tumour" in an ellipsoid "brain")."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.lesion_boxes import parse_yolo_box
from data_prep.volumes import SliceOptions, choose_slices, slice_volumes

nib = pytest.importorskip("nibabel")

SHAPE = (40, 48, 30)  # x (RAS: towards the patient's right), y (anterior), z (superior)
# The tumour: the patient's right-anterior part of the brain, slices 12-17.
TUMOUR = (slice(24, 32), slice(30, 40), slice(12, 18))


def _volume(seed: int, tumour_value: float) -> np.ndarray:
    x, y, z = np.indices(SHAPE)
    brain = ((x - 20) / 16) ** 2 + ((y - 24) / 20) ** 2 + ((z - 15) / 20) ** 2 <= 1
    rng = np.random.default_rng(seed)
    data = np.where(brain, 300 + rng.normal(0, 20, SHAPE), 0).astype(np.int16)
    data[TUMOUR] = tumour_value
    return data


def write_case(
    root: Path, name: str, sequences=("t1", "t1ce", "t2", "flair"), seg=True, shift: int = 0, seed: int = 0
) -> Path:
    """One case folder; `shift` moves its head along y, `seed` draws other noise (cases
    that are not copies of each other)."""
    case = root / name
    case.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS on disk, as BraTS ships it
    for i, seq in enumerate(sequences):
        # Stored LPS: flip x and y of the RAS array.
        data = np.roll(_volume(i + 10 * seed, 900), shift, axis=1)[::-1, ::-1, :]
        nib.save(nib.Nifti1Image(data, affine), str(case / f"{name}_{seq}.nii.gz"))
    if seg:
        mask = np.zeros(SHAPE, np.uint8)
        mask[TUMOUR] = 2
        mask = np.roll(mask, shift, axis=1)
        nib.save(nib.Nifti1Image(mask[::-1, ::-1, :], affine), str(case / f"{name}_seg.nii.gz"))
    return case


def read_tags(out: Path) -> list[dict]:
    """slices.csv, checked against tags.csv (the same files, patients and sequences)."""
    with (out / "slices.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (out / "tags.csv").open(newline="") as f:
        tags = list(csv.DictReader(f))
    assert [(t["file"], t["patient"], t["sequence"]) for t in tags] == [
        (r["file"], r["patient"], r["sequence"]) for r in rows
    ]
    return rows


def test_slices_tags_and_boxes(tmp_path):
    write_case(tmp_path / "vols", "caseA")
    out = tmp_path / "out"
    summary = slice_volumes(str(tmp_path / "vols"), str(out), SliceOptions(progress=False))
    tags = read_tags(out)
    tumour = [t for t in tags if t["file"].startswith("glioma/")]
    # 6 tumour slices (12-17), each 8 x 10 = 80 pixels: below the default 100 → none.
    assert not tumour and summary.skipped == []
    out2 = tmp_path / "out2"
    slice_volumes(str(tmp_path / "vols"), str(out2), SliceOptions(min_tumour_pixels=50, progress=False))
    tags = read_tags(out2)
    tumour = [t for t in tags if t["file"].startswith("glioma/")]
    assert sorted({int(t["slice"]) for t in tumour}) == list(range(12, 18))
    assert {t["sequence"] for t in tumour} == {"t1", "t1c", "t2", "flair"}
    assert {t["patient"] for t in tags} == {"caseA"}
    assert all(int(t["tumour_pixels"]) == 80 for t in tumour)
    clear = [t for t in tags if t["file"].startswith("notumor/")]
    # No-tumour slices keep their distance (gap 3) from slices 12-17.
    assert clear and all(int(t["slice"]) <= 8 or int(t["slice"]) >= 21 for t in clear)

    first = out2 / tumour[0]["file"]
    image = cv2.imread(str(first), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (SHAPE[1], SHAPE[0])  # rows: anterior-posterior, columns: right-left
    ymin, xmin, ymax, xmax = parse_yolo_box(first.with_suffix(".txt").read_text())
    # Radiological view: anterior up, the patient's right on the left of the picture.
    assert ymax <= 0.5 and xmax <= 0.5
    rows, cols = image.shape
    inside = image[round(ymin * rows) : round(ymax * rows), round(xmin * cols) : round(xmax * cols)]
    assert inside.mean() == 255  # the bright "tumour" fills its box, at the window's top

    with (out2 / "patients.csv").open(newline="") as f:
        patients = list(csv.DictReader(f))
    assert len(patients) == len(tags) and {p["patient"] for p in patients} == {"caseA"}


def test_a_bad_case_is_reported_and_skipped(tmp_path):
    vols = tmp_path / "vols"
    write_case(vols, "good")
    write_case(vols, "nomask", seg=False)
    broken = write_case(vols, "broken", sequences=("t1", "t2"))
    (broken / "broken_t2.nii.gz").write_bytes(b"not a volume")
    hopeless = write_case(vols, "hopeless", sequences=("t1",))
    (hopeless / "hopeless_t1.nii.gz").write_bytes(b"")
    summary = slice_volumes(
        str(vols), str(tmp_path / "out"), SliceOptions(min_tumour_pixels=50, progress=False)
    )
    reasons = dict(summary.skipped)
    assert "no tumour mask" in reasons["nomask"]
    assert "not a readable NIfTI volume" in reasons["broken/broken_t2.nii.gz"]
    assert "not a readable NIfTI volume" in reasons["hopeless/hopeless_t1.nii.gz"]
    assert summary.cases == 2  # good, and broken's t1; hopeless wrote nothing
    patients = {t["patient"] for t in read_tags(tmp_path / "out")}
    assert patients == {"good", "broken"}


def test_choose_slices_spacing_and_budget():
    tumour_pixels = np.array([0] * 10 + [200] * 6 + [0] * 14)
    brain = np.array([10] * 3 + [100] * 27)
    opts = SliceOptions(every=2, no_tumour_per_volume=4, gap=2)
    tumour, clear = choose_slices(tumour_pixels, brain, opts)
    assert tumour.tolist() == [10, 12, 14]
    assert len(clear) == 4 and not set(clear) & set(range(8, 18)) and min(clear) >= 3
    assert choose_slices(tumour_pixels, brain, SliceOptions(no_tumour_per_volume=0))[1].size == 0


def run_cli(*argv: str) -> tuple[int, str, str]:
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["slices", *argv])
    return code, out.getvalue(), err.getvalue()


def test_cli(tmp_path):
    write_case(tmp_path / "vols", "caseA", sequences=("t1ce", "flair"))
    code, out, _ = run_cli(
        str(tmp_path / "vols"), "--out", str(tmp_path / "out"), "--min-tumour-pixels", "50", "-q"
    )
    assert code == 0
    assert "of 1 cases" in out and "glioma: t1c 6, flair 6" in out
    code, _, err = run_cli(str(tmp_path / "vols"), "--out", str(tmp_path / "o2"), "--sequences", "dwi")
    assert code == 2 and "unknown sequence(s) dwi" in err
    code, _, err = run_cli(str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3"))
    assert code == 2 and "is not a folder" in err
    code, _, err = run_cli(str(tmp_path / "vols"), "--out", str(tmp_path / "o4"), "--every", "0")
    assert code == 2 and "--every must be at least 1" in err


def test_without_no_tumour_slices_the_output_is_a_box_folder(tmp_path):
    from data_prep.lesion_boxes import read_box_folder
    from data_prep.patients import read_patients_csv

    write_case(tmp_path / "vols", "caseA", sequences=("t2",))
    out = tmp_path / "out"
    slice_volumes(
        str(tmp_path / "vols"),
        str(out),
        SliceOptions(min_tumour_pixels=50, no_tumour_per_volume=0, progress=False),
    )
    slices, skips = read_box_folder(out)
    assert len(slices) == 6 and not skips
    assert set(read_patients_csv(out).values()) == {"caseA"}


def test_slices_as_feedback_join_prepare_whole_patients_at_a_time(tmp_path):
    """`--as-feedback` writes reviews.csv, so `btmri run --feedback OUT` takes the slices as
    site data; patients.csv makes each case one unit: no case on both sides of the split."""
    from btmri import spec
    from data_prep.prepare import PrepareOptions, prepare
    from data_prep.synth import generate_dataset
    from data_prep.tfrecords import read_split
    from pipeline.feedback import read_export

    cases = [f"case{i}" for i in range(12)]
    for i, name in enumerate(cases):
        write_case(tmp_path / "vols", name, sequences=("t1", "t2"), shift=i - 6, seed=i)
    out = tmp_path / "out"
    code, printed, _ = run_cli(
        str(tmp_path / "vols"), "--out", str(out), "--min-tumour-pixels", "50", "--as-feedback", "-q"
    )
    assert code == 0 and "`btmri run --feedback" in printed
    feedback = read_export(out)
    written = read_tags(out)
    assert sorted(feedback.by_file()) == sorted(r["file"] for r in written)
    assert {r.label for r in feedback.reviews} == {"glioma", "notumor"}

    data = tmp_path / "data"
    generate_dataset(data, per_class=4, test_per_class=0, seed=0, progress=False)
    # No near-duplicate joining: these made-up heads differ too little to stay apart by
    # perceptual hash, so only patients.csv may join a case's slices.
    opts = PrepareOptions(str(data), str(tmp_path / "prepared"), workers=1, progress=False, near_threshold=-1)
    manifest = prepare(opts, feedback)
    splits_of_case: dict[str, set[str]] = {}
    for split in manifest.splits:
        for example in read_split(tmp_path / "prepared", split):
            if example["source"].startswith("feedback/"):
                case = next(c for c in cases if f"/{c}_" in example["source"])
                assert case in example["patient"]  # the unit is the case's
                splits_of_case.setdefault(case, set()).add(split)
    assert set(splits_of_case) == set(cases)
    assert all(len(splits) == 1 for splits in splits_of_case.values())
    assert {s for splits in splits_of_case.values() for s in splits} == {spec.TRAIN_SPLIT, spec.EVAL_SPLIT}
