"""Patients and groups: splits, extra box slices and the lesion audit's held-out part
are drawn by patient (data_prep/patients.py), never by image."""

from __future__ import annotations

import glob
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from components.audit.component import slices_not_in, training_images
from data_prep.lesion_boxes import collection_name, format_yolo_box, read_box_folder
from data_prep.patients import (
    Item,
    PatientsFileError,
    assign_train_eval_by_unit,
    assign_units,
    canonical_patient,
    patients_in_unit,
    read_patients_csv,
)
from data_prep.prepare import PrepareOptions, prepare, summary_table
from data_prep.tfrecords import read_split
from tests.imaging import make_class_folders, textured_image, write_jpeg, write_png

TUMOURS = ("glioma", "meningioma", "pituitary")
BOX = (0.3, 0.3, 0.6, 0.6)


def _box_folder(root: Path, patients_per_class: int, slices_per_patient: int) -> dict[str, str]:
    """A box folder of distinct slices, several per patient, with patients.csv.
    Returns slice source → patient."""
    rows, patient_of = ["id,class,patient"], {}
    slice_id = 0
    for c, cls in enumerate(TUMOURS):
        for p in range(patients_per_class):
            patient = f"P{c}{p:02d}"
            for _ in range(slices_per_patient):
                slice_id += 1
                write_png(root / cls / f"{slice_id}.png", textured_image(90_000 + slice_id, 128, 128))
                (root / cls / f"{slice_id}.txt").write_text(format_yolo_box(BOX))
                rows.append(f"{slice_id},{cls},{patient}")
                patient_of[f"{cls}/{slice_id}.png"] = patient
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return patient_of


def _dataset_with_copies(root: Path, boxes: Path, patient_of: dict[str, str]) -> dict[str, str]:
    """Kaggle-layout Training folder: distinct images of every class, plus resized JPEG
    copies of the first two slices of each patient. Returns copy source → patient."""
    make_class_folders(root / "Training", per_class=24)
    copies, seen = {}, defaultdict(int)
    for source, patient in sorted(patient_of.items(), key=lambda kv: int(Path(kv[0]).stem)):
        if seen[patient] >= 2:
            continue
        seen[patient] += 1
        cls, name = source.split("/")
        pixels = cv2.resize(cv2.imread(str(boxes / source), cv2.IMREAD_GRAYSCALE), (96, 96))
        target = root / "Training" / cls / f"copy_{Path(name).stem}.jpg"
        write_jpeg(target, pixels)
        copies[f"Training/{cls}/{target.name}"] = patient
    return copies


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patients")
    boxes, data, out = tmp / "boxes", tmp / "data", tmp / "out"
    patient_of = _box_folder(boxes, patients_per_class=6, slices_per_patient=4)
    copies = _dataset_with_copies(data, boxes, patient_of)
    # a near-duplicate pair with no patient: must form one group, on one side
    near = data / "Training" / "notumor"
    pixels = cv2.imread(str(near / "notumor_000.jpg"), cv2.IMREAD_GRAYSCALE)
    write_jpeg(near / "near_copy.jpg", np.clip(pixels.astype(int) + 3, 0, 255).astype(np.uint8), quality=80)
    manifest = prepare(
        PrepareOptions(str(data), str(out), eval_fraction=0.3, box_dir=str(boxes), workers=1, progress=False)
    )
    examples = {split: read_split(out, split) for split in ("train", "eval")}
    return {
        "boxes": boxes,
        "out": out,
        "manifest": manifest,
        "examples": examples,
        "patient_of": patient_of,
        "copies": copies,
    }


def test_copies_carry_their_patient_and_collection(prepared):
    by_source = {ex["source"]: ex for exs in prepared["examples"].values() for ex in exs}
    for source, patient in prepared["copies"].items():
        assert by_source[source]["patient"] == f"patient:{patient}"
        assert by_source[source]["collection"] == collection_name(prepared["boxes"]) != "unknown"
    others = [
        ex
        for ex in by_source.values()
        if ex["source"].startswith("Training/") and "copy_" not in ex["source"]
    ]
    assert others and all(ex["patient"].startswith("group:") for ex in others)
    assert all(ex["collection"] == "unknown" for ex in others)


def test_no_patient_or_group_on_two_sides(prepared):
    sides = defaultdict(set)
    for split, exs in prepared["examples"].items():
        for ex in exs:
            sides[ex["patient"]].add(split)
    assert all(len(s) == 1 for s in sides.values()), {u: s for u, s in sides.items() if len(s) > 1}
    # the planted near copy sits with its original
    by_source = {ex["source"]: ex for exs in prepared["examples"].values() for ex in exs}
    assert (
        by_source["Training/notumor/near_copy.jpg"]["patient"]
        == by_source["Training/notumor/notumor_000.jpg"]["patient"]
    )
    # known patients landed in eval too, so the check above is not vacuous
    eval_patients = {
        ex["patient"] for ex in prepared["examples"]["eval"] if ex["patient"].startswith("patient:")
    }
    assert eval_patients


def test_extra_slices_and_audit_follow_the_patient(prepared):
    """Slices with no copy join training only with their patient; the audit holds out
    whole patients, none of which has an image in training."""
    train = prepared["examples"]["train"]
    train_patients = {p for ex in train for p in patients_in_unit(ex["patient"])}
    eval_patients = {p for ex in prepared["examples"]["eval"] for p in patients_in_unit(ex["patient"])}
    extra = [ex for ex in train if ex["source"].startswith("boxes/")]
    assert extra, "some slices should join training"
    for ex in extra:
        assert prepared["patient_of"][ex["source"].removeprefix("boxes/")] not in eval_patients
    slices, _ = read_box_folder(prepared["boxes"])
    files = sorted(glob.glob(str(prepared["out"] / "train" / "*.tfrecord")))
    audited = slices_not_in(slices, training_images(files), read_patients_csv(prepared["boxes"]))
    audited_patients = {prepared["patient_of"][s.source] for s in audited}
    assert audited_patients and not audited_patients & train_patients
    assert eval_patients <= audited_patients
    # every slice of an audited patient is audited: no neighbour trains the model
    for source, patient in prepared["patient_of"].items():
        if patient in audited_patients:
            assert source in {s.source for s in audited}


def test_audit_leaves_out_the_neighbours_of_a_training_slice(prepared):
    """One slice of a patient trains the model: by the copy rule its neighbours would
    grade it; by patient, none of that patient's slices is audited."""
    from data_prep.image_io import decode_image

    slices, _ = read_box_folder(prepared["boxes"])
    first = slices[0]
    image = decode_image((prepared["boxes"] / first.source).read_bytes(), ".png")
    training = [(image.gray_small, first.label, f"patient:{prepared['patient_of'][first.source]}")]
    neighbours = {
        s.source for s in slices if prepared["patient_of"][s.source] == prepared["patient_of"][first.source]
    }
    by_copy = {s.source for s in slices_not_in(slices, training)}
    by_patient = {s.source for s in slices_not_in(slices, training, read_patients_csv(prepared["boxes"]))}
    assert first.source not in by_copy and neighbours - {first.source} <= by_copy
    assert not neighbours & by_patient
    assert by_patient == by_copy - neighbours


def test_manifest_states_the_unit(prepared):
    manifest = prepared["manifest"]
    assert manifest.split_unit == "patient"
    for split, exs in prepared["examples"].items():
        units = manifest.units[split]
        assert units["images"] == len(exs)
        assert units["units"] == len({ex["patient"] for ex in exs})
        assert units["patients"] + units["groups"] == units["units"]
    assert manifest.lesion_boxes["patients"] == 18
    table = summary_table(manifest)
    assert f"eval: {manifest.units['eval']['images']} images from {manifest.units['eval']['units']}" in table
    # Counts per split in words, never a Python dict.
    assert "{" not in table and "within a split: " in table


def test_image_split_is_still_available_and_differs(prepared, tmp_path):
    """--split-unit image splits files, so a known patient may straddle train and eval."""
    data = prepared["out"].parent / "data"
    manifest = prepare(
        PrepareOptions(
            str(data),
            str(tmp_path / "img"),
            eval_fraction=0.3,
            box_dir=str(prepared["boxes"]),
            split_unit="image",
            workers=1,
            progress=False,
        )
    )
    assert manifest.split_unit == "image"
    sides = defaultdict(set)
    for split in ("train", "eval"):
        for ex in read_split(tmp_path / "img", split):
            if ex["source"].startswith("Training/"):
                sides[ex["patient"]].add(split)
    assert any(len(s) > 1 for s in sides.values())
    with pytest.raises(ValueError, match="split unit"):
        prepare(PrepareOptions(str(data), str(tmp_path / "bad"), split_unit="slice", progress=False))


def test_units_join_patients_copies_and_near_duplicates():
    items = [
        Item("a", 0, "m1", 0b0, "P1"),
        Item("b", 0, "m2", 0b1111111111 << 20, "P1"),  # same patient, far hash
        Item("c", 0, "m3", 0b11, None),  # 2 bits from a: near duplicate
        Item("d", 1, "m4", 0b1111111111 << 40, None),
        Item("e", 1, "m4", 0b0101010101 << 5, None),  # byte copy of d (same md5)
        Item("f", 2, "m6", 0b1111111111 << 50, "P2"),
        Item("g", 2, "m7", 0b1111111111 << 50 | 1, "P3"),  # near duplicate joins P2 and P3
    ]
    units = assign_units(items, near_threshold=4)
    assert units["a"] == units["b"] == units["c"] == "patient:P1"
    assert units["d"] == units["e"] == "group:m4"
    assert units["f"] == units["g"] == "patient:P2+P3"
    assert patients_in_unit(units["f"]) == ["P2", "P3"] and patients_in_unit(units["d"]) == []


def test_unit_split_keeps_units_whole_and_is_deterministic():
    rng = np.random.default_rng(0)
    items = []
    for u in range(200):
        label, size = u % 4, int(rng.integers(1, 12))
        items += [(f"u{u}/{i}", label, f"unit{u}") for i in range(size)]
    a = assign_train_eval_by_unit(items, 0.2, seed=3)
    assert a == assign_train_eval_by_unit(list(reversed(items)), 0.2, seed=3)
    assert a != assign_train_eval_by_unit(items, 0.2, seed=4)
    side = defaultdict(set)
    for source, _, unit in items:
        side[unit].add(a[source])
    assert all(len(s) == 1 for s in side.values())
    for label in range(4):
        of_class = [s for s, lab, _ in items if lab == label]
        share = sum(a[s] == "eval" for s in of_class) / len(of_class)
        assert 0.15 <= share <= 0.25, (label, share)
    # one unit of a class always stays in training
    single = [("x/0", 0, "only"), ("y/0", 1, "u1"), ("y/1", 1, "u2")]
    assert assign_train_eval_by_unit(single, 0.5, seed=0)["x/0"] == "train"


def test_collection_names():
    assert collection_name("/data/figshare-boxes") == "figshare"
    assert collection_name("/work/runs/data/synthetic/boxes") == "synthetic"


def test_patients_csv(tmp_path):
    assert read_patients_csv(tmp_path) == {}
    write_png(tmp_path / "glioma" / "12.png", textured_image(1))
    (tmp_path / "patients.csv").write_text("id,class,patient\n12,glioma,MR0517C\n13,glioma,MR0517\n")
    assert read_patients_csv(tmp_path) == {"glioma/12.png": "MR0517"}
    assert canonical_patient("MR051644C") == canonical_patient("MR051644") == "MR051644"
    assert canonical_patient("103257") == "103257"
    (tmp_path / "patients.csv").write_text("id,class\n12,glioma\n")
    with pytest.raises(PatientsFileError, match="missing column"):
        read_patients_csv(tmp_path)


@pytest.mark.realdata
def test_real_box_folder_patients(real_data):
    """figshare-boxes: 197 patients as the folder's README counts them."""
    boxes = real_data.parent / "figshare-boxes"
    if not (boxes / "patients.csv").is_file():
        pytest.skip("no figshare-boxes/patients.csv")
    patients = read_patients_csv(boxes)
    assert len(patients) == len(read_box_folder(boxes)[0])
    assert 150 <= len(set(patients.values())) <= 197


def test_leave_one_source_out(prepared, tmp_path):
    """--hold-out-collection: the collection's tumour images leave the dataset, whole
    patients at a time, as class folders; none of their patients' slices trains."""
    data = prepared["out"].parent / "data"
    collection = collection_name(prepared["boxes"])
    held = tmp_path / "held"
    manifest = prepare(
        PrepareOptions(
            str(data),
            str(tmp_path / "out"),
            eval_fraction=0.3,
            box_dir=str(prepared["boxes"]),
            hold_out_collection=collection,
            hold_out_dir=str(held),
            workers=1,
            progress=False,
        )
    )
    written = [ex for split in ("train", "eval") for ex in read_split(tmp_path / "out", split)]
    assert not [
        ex for ex in written if ex["collection"] == collection or ex["patient"].startswith("patient:")
    ]
    files = {f"{p.parent.name}/{p.name}" for p in held.rglob("*.jpg")}
    assert files == {f"{s.split('/')[1]}/{s.replace('/', '__')}" for s in prepared["copies"]}
    assert manifest.held_out_collection["images"] == {c: 12 for c in TUMOURS}
    assert manifest.lesion_boxes["slices_added_to_train"] == {}
    with pytest.raises(ValueError, match="no tumour image of collection 'elsewhere'"):
        prepare(
            PrepareOptions(
                str(data),
                str(tmp_path / "x"),
                box_dir=str(prepared["boxes"]),
                hold_out_collection="elsewhere",
                hold_out_dir=str(tmp_path / "y"),
                progress=False,
            )
        )
