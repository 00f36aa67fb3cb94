"""Reviewed images from the site as a source of prepared data (`btmri run --feedback`).

A reader's review (docs/review.md) gives a logged request's image its class. An export
of the reviews (`btmri review --export DIR`: DIR/<class>/<file> + DIR/reviews.csv) joins
the dataset here as a collection of its own, spec.FEEDBACK_COLLECTION, so the Evaluator
slices it apart from the images it joins. Prepare needs a FeedbackSet: the folder and
the reviews it lists. pipeline/feedback.py reads the export (its CSV columns belong to
pipeline/review/export.py) and turns a review database into an export first; this
module knows class folders only, as data_prep.discover reads them.

What prepare records of them (the manifest's `feedback`) says which reviews made the
images: review and record ids, reviewers, when, and the model versions that answered.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from btmri import spec
from data_prep.discover import Candidate, Skip, find_images
from data_prep.patients import unit_counts

FEEDBACK_ORIGIN = "feedback"  # Candidate.origin of a reviewed image (beside "training", "testing")
# Sources of reviewed images: feedback/<class>/<file>. No dataset source starts so: a
# Kaggle layout's start with Training/ or Testing/, class folders' with a class name.
SOURCE_PREFIX = "feedback/"
MLMD_PREFIX = "feedback_"  # custom properties of the Examples artifact (components/executors.py)


class FeedbackError(ValueError):
    """The feedback cannot be used (missing, nothing usable, not an export); str(err) says why."""


@dataclass(frozen=True)
class FeedbackReview:
    """One current review of a logged request, as the export lists it."""

    review_id: int
    record_id: str  # the request log's <file>#<record>/<row>
    label: str  # a class name, or the store's "not a usable slice" label
    reviewer: str
    reviewed_at: str  # ISO 8601, UTC
    model_name: str  # the model that answered the request
    model_version: int | None
    file: str = ""  # the image, relative to the export folder; "" when none was written

    @property
    def usable(self) -> bool:
        return bool(self.file) and self.label in spec.CLASS_NAMES


@dataclass
class FeedbackSet:
    """An export folder and the current reviews its reviews.csv lists."""

    dir: str
    reviews: list[FeedbackReview]
    origin: str = ""  # what --feedback named (a database or the folder), for the record

    def by_file(self) -> dict[str, FeedbackReview]:
        """file (relative to dir) → the review that gave its image a class."""
        return {r.file: r for r in self.reviews if r.usable}

    def fingerprint(self) -> str:
        """Identity of the content, not of the files: a database exported again into the
        same folder writes the same bytes, so prepared data (and TFX's cache) is reused
        until a review changes."""
        digest = hashlib.sha256()
        for review in sorted(self.reviews, key=lambda r: r.review_id):
            digest.update(json.dumps(asdict(review), sort_keys=True).encode() + b"\n")
            if review.usable:
                path = Path(self.dir, review.file)
                digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
        return digest.hexdigest()


def source_of(file: str) -> str:
    return SOURCE_PREFIX + file


def is_feedback(source: str) -> bool:
    return source.startswith(SOURCE_PREFIX)


def candidates(feedback: FeedbackSet) -> tuple[list[Candidate], list[Skip]]:
    """The export's images as prepare's candidates (origin FEEDBACK_ORIGIN, sources under
    feedback/): its class folders as data_prep.discover reads them, so an unknown class
    folder is a LayoutError. Images no review lists are skipped: nothing says who labelled them."""
    found, skips = find_images(feedback.dir)
    listed = feedback.by_file()
    out, skipped = [], [Skip(source_of(s.source), s.reason) for s in skips]
    for cand in found:
        if cand.source in listed:
            out.append(Candidate(cand.path, source_of(cand.source), cand.label, FEEDBACK_ORIGIN))
        else:
            skipped.append(Skip(source_of(cand.source), "in the feedback export but no review lists it"))
    return out, skipped


# A site's own patient ids, kept apart from the dataset's (figshare PIDs) in unit names.
PATIENT_PREFIX = "site-"


def patients(feedback: FeedbackSet) -> dict[str, str]:
    """Reviewed image source → its patient, where the export folder has a patients.csv
    (id, class, patient; `btmri slices` writes one): slices of one patient then form one
    unit, so a patient is never on both sides of the split. {} without one."""
    from data_prep.patients import read_patients_csv

    known = read_patients_csv(feedback.dir)
    return {source_of(file): PATIENT_PREFIX + patient for file, patient in known.items()}


def provenance(reviews: list[FeedbackReview]) -> dict:
    """Which reviews: their ids, reviewers and time range, and the model versions that
    answered the requests they label."""
    versions = Counter((r.model_name, r.model_version) for r in reviews)
    times = sorted(r.reviewed_at for r in reviews)
    return {
        "reviews": len(reviews),
        "review_ids": sorted(r.review_id for r in reviews),
        "reviewers": sorted({r.reviewer for r in reviews}),
        "reviewed_from": times[0] if times else None,
        "reviewed_to": times[-1] if times else None,
        "model_versions": [
            {"model_name": name, "model_version": version, "reviews": n}
            for (name, version), n in sorted(versions.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1))
        ],
    }


def manifest_section(
    feedback: FeedbackSet, written: list[tuple[str, str, str]], evaluated_split: str
) -> dict:
    """The manifest's `feedback`: counts per split and class, units, the provenance of the
    images written, and each one's review. `written`: (source, split, unit) of every
    feedback image prepare wrote."""
    by_file = feedback.by_file()
    counts: dict[str, Counter] = {}
    units: dict[str, list[str]] = {}
    images = []
    for source, split, unit in written:
        review = by_file[source[len(SOURCE_PREFIX) :]]
        counts.setdefault(split, Counter())[review.label] += 1
        units.setdefault(split, []).append(unit)
        images.append({"source": source, "split": split, "unit": unit, **asdict(review)})
    order = {s: i for i, s in enumerate(spec.SPLITS)}
    return {
        "dir": str(Path(feedback.dir).resolve()),
        "origin": feedback.origin or str(Path(feedback.dir).resolve()),
        "collection": spec.FEEDBACK_COLLECTION,
        "fingerprint": feedback.fingerprint(),
        "evaluated_split": evaluated_split,
        "counts": {
            s: {c: counts[s][c] for c in spec.CLASS_NAMES} for s in sorted(counts, key=order.__getitem__)
        },
        "units": unit_counts({s: units[s] for s in sorted(units, key=order.__getitem__)}),
        "reviews_listed": len(feedback.reviews),
        "reviews_unusable": sum(1 for r in feedback.reviews if r.label not in spec.CLASS_NAMES),
        "reviews_without_image": sum(
            1 for r in feedback.reviews if r.label in spec.CLASS_NAMES and not r.file
        ),
        "provenance": provenance([by_file[s[len(SOURCE_PREFIX) :]] for s, _, _ in written]),
        "images": images,
    }


def summary(section: dict | None) -> dict | None:
    """The section without its per-image list: what the run record keeps."""
    if not section:
        return None
    return {k: v for k, v in section.items() if k != "images"}


def images_in(section: dict, split: str | None = None) -> int:
    return sum(sum(c.values()) for s, c in section["counts"].items() if split is None or s == split)


def versions_text(section: dict) -> str:
    """'brain_tumor version 3 (12 reviews), version 4 (2 reviews)'."""
    by_model: dict[str, list[str]] = {}
    for v in section["provenance"]["model_versions"]:
        version = "version unknown" if v["model_version"] is None else f"version {v['model_version']}"
        n = v["reviews"]
        by_model.setdefault(v["model_name"], []).append(f"{version} ({n} review{'s' * (n != 1)})")
    return "; ".join(f"{name} {', '.join(parts)}" for name, parts in by_model.items()) or "none"


def describe(section: dict) -> str:
    """One line for prepare's summary: where the reviewed images went and whose they are."""
    split_counts = ", ".join(f"{s} {sum(c.values())}" for s, c in section["counts"].items()) or "none"
    p = section["provenance"]
    return (
        f"feedback (collection {section['collection']!r}): {images_in(section)} reviewed images "
        f"({split_counts}) from {p['reviews']} reviews by {', '.join(p['reviewers']) or 'nobody'}, "
        f"{p['reviewed_from'] or '?'} to {p['reviewed_to'] or '?'}; answered by {versions_text(section)}"
    )


def mlmd_properties(section: dict | None) -> dict[str, int | str]:
    """Custom properties of the run's Examples artifact (components/executors.py): the
    provenance in ML Metadata, where a lineage query finds it without the manifest."""
    if not section:
        return {}
    p = section["provenance"]
    return {
        f"{MLMD_PREFIX}images": images_in(section),
        f"{MLMD_PREFIX}reviews": p["reviews"],
        f"{MLMD_PREFIX}reviews_listed": section["reviews_listed"],
        f"{MLMD_PREFIX}review_ids": json.dumps(p["review_ids"]),
        f"{MLMD_PREFIX}record_ids": json.dumps(sorted(i["record_id"] for i in section["images"])),
        f"{MLMD_PREFIX}reviewers": json.dumps(p["reviewers"]),
        f"{MLMD_PREFIX}reviewed_from": p["reviewed_from"] or "",
        f"{MLMD_PREFIX}reviewed_to": p["reviewed_to"] or "",
        f"{MLMD_PREFIX}model_versions": json.dumps(
            [f"{v['model_name']}:{v['model_version']}" for v in p["model_versions"]]
        ),
        f"{MLMD_PREFIX}counts": json.dumps(section["counts"]),
        f"{MLMD_PREFIX}origin": section["origin"],
    }
