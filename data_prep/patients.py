"""Patients and groups: the unit every split, held-out audit and interval is drawn over.

Slices of one patient are near copies of each other (adjacent slices of one tumour,
a few millimetres apart), so a split by image measures memory. Where a box folder's
`patients.csv` knows an image's patient (through the copy matcher of
data_prep/lesion_boxes.py), the image belongs to that patient. Every other image
forms a group with its exact and near-duplicate copies (perceptual hash within the
duplicate threshold), so a re-encoded copy can never sit on the other side of a split.
Clusters that join two known patients become one unit, named after both.

Unit ids are content-derived ("patient:<id>" or "group:<smallest md5>"), so the same
data gives the same units, and the same split, on any machine.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from btmri.spec import GROUP_PREFIX, PATIENT_PREFIX
from btmri.spec import EVAL_SPLIT, TRAIN_SPLIT
from data_prep.duplicates import popcount64

PATIENT_JOIN = "+"  # between the ids of patients that near-duplicate images join into one unit
PATIENTS_FILE = "patients.csv"  # id,class,patient: the patient of each slice of a box folder


class PatientsFileError(ValueError):
    """patients.csv exists but cannot be used (missing columns, no rows)."""


def read_patients_csv(box_dir: str | os.PathLike) -> dict[str, str]:
    """Slice source ("<class>/<file name>", as data_prep/lesion_boxes.py names slices)
    → patient id, for the image files of a box folder; {} when it has no patients.csv.

    The csv names slices by id (the file stem) and class folder; slices the csv does
    not list are left out (the caller then treats each as its own unit)."""
    root = Path(box_dir)
    path = root / PATIENTS_FILE
    if not path.is_file():
        return {}
    by_stem: dict[tuple[str, str], str] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "class", "patient"} - set(reader.fieldnames or ())
        if missing:
            raise PatientsFileError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            patient = canonical_patient(row["patient"] or "")
            if patient:
                by_stem[(row["class"].strip().lower(), row["id"].strip())] = patient
    if not by_stem:
        raise PatientsFileError(f"{path}: no rows with a patient")
    patients: dict[str, str] = {}
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        cls = folder.name.lower()
        for image in folder.iterdir():
            patient = by_stem.get((cls, image.stem))
            if patient is not None and image.suffix.lower() != ".txt":
                patients[f"{cls}/{image.name}"] = patient
    return patients


def canonical_patient(patient: str) -> str:
    """figshare's PIDs sometimes differ only by a trailing letter (MR051644, MR051644C):
    the same patient's other series, counted as one patient here (erring towards
    keeping near copies together)."""
    patient = patient.strip()
    return re.sub(r"(?<=\d)[A-Za-z]$", "", patient)


def patient_unit(*patients: str) -> str:
    """The unit of one patient, or of several that near-duplicate images join."""
    return PATIENT_PREFIX + PATIENT_JOIN.join(sorted(patients))


def patients_in_unit(unit: str) -> list[str]:
    """The inverse of patient_unit; [] for a group with no known patient."""
    if not unit.startswith(PATIENT_PREFIX):
        return []
    return unit[len(PATIENT_PREFIX) :].split(PATIENT_JOIN)


@dataclass(frozen=True)
class Item:
    """What grouping needs to know of one image."""

    source: str
    label: int
    md5: str
    phash: int
    patient: str | None = None  # known patient id, if any


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_units(items: list[Item], near_threshold: int, block: int = 512) -> dict[str, str]:
    """source → unit id. Joins images of one known patient, byte-identical copies and
    near duplicates (Hamming distance of perceptual hashes <= near_threshold)."""
    n = len(items)
    uf = _UnionFind(n)
    first_of: dict[tuple[str, str], int] = {}
    for i, item in enumerate(items):
        for key in (("md5", item.md5), ("patient", item.patient)):
            if key[1] is None:
                continue
            if key in first_of:
                uf.union(first_of[key], i)
            else:
                first_of[key] = i
    hashes = np.array([it.phash for it in items], np.uint64)
    for start in range(0, n, block):  # all pairs, a block of rows at a time
        rows = hashes[start : start + block]
        dist = popcount64(np.bitwise_xor(rows[:, None], hashes[None, :]))
        for r, c in zip(*np.nonzero(dist <= near_threshold)):
            if start + r < c:
                uf.union(start + int(r), int(c))
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[uf.find(i)].append(i)
    units: dict[str, str] = {}
    for group in members.values():
        patients = sorted({items[i].patient for i in group if items[i].patient is not None})
        name = patient_unit(*patients) if patients else GROUP_PREFIX + min(items[i].md5 for i in group)
        for i in group:
            units[items[i].source] = name
    return units


def _unit_key(unit: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()


def assign_train_eval_by_unit(
    items: list[tuple[str, int, str]], eval_fraction: float, seed: int
) -> dict[str, str]:
    """items: (source, label, unit). source → 'train' | 'eval', whole units at a time.

    Stratified by class: a unit counts for its most common label, units of a class are
    ordered by sha256(seed, unit id), and units go to eval until the class's eval images
    reach round(n * eval_fraction). Deterministic from content and seed."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for _, label, unit in items:
        labels_of[unit][label] += 1
    by_class: dict[int, list[str]] = defaultdict(list)
    for unit, labels in labels_of.items():
        by_class[min(labels, key=lambda k: (-labels[k], k))].append(unit)
    eval_units: set[str] = set()
    for units in by_class.values():
        units.sort(key=lambda u: (_unit_key(u, seed), u))
        total = sum(sum(labels_of[u].values()) for u in units)
        target = round(total * eval_fraction)
        taken = 0
        for count, unit in enumerate(units[:-1]):  # the last unit always stays for training
            if taken >= target:
                break
            size = sum(labels_of[unit].values())
            # skip a unit that would overshoot the target more than leaving it out misses it
            if count and taken + size - target > target - taken:
                continue
            eval_units.add(unit)
            taken += size
    return {source: EVAL_SPLIT if unit in eval_units else TRAIN_SPLIT for source, _, unit in items}


def unit_counts(units_of_split: dict[str, list[str]]) -> dict[str, dict]:
    """split → {"images", "units", "patients", "groups"}: the unit statement of a split."""
    out = {}
    for split, units in units_of_split.items():
        distinct = set(units)
        patients = sum(1 for u in distinct if u.startswith(PATIENT_PREFIX))
        out[split] = {
            "images": len(units),
            "units": len(distinct),
            "patients": patients,
            "groups": len(distinct) - patients,
        }
    return out


def describe_units(split: str, counts: dict) -> str:
    """'eval: 812 images from 143 units (61 patients, 82 groups)'."""
    return (
        f"{split}: {counts['images']} images from {counts['units']} patients / groups "
        f"({counts['patients']} known patients, {counts['groups']} groups)"
    )
