"""`btmri review --export DIR`: the current reviews as a plain labelled-image folder.

    DIR/<class>/<record>.png|.jpg   the image of each current review with a class label,
                                    as the client sent it (class folders: what
                                    data_prep.discover reads, so `btmri prepare` takes DIR)
    DIR/reviews.csv                 one row per current review, provenance included

Reviews labelled "not a usable slice" and reviews of requests logged without their
image are rows of the CSV (with an empty `file`) but not images: they name no class.
Images come from the store's own copies (store.py), so the export does not depend on
the request log still holding them. The folder is written beside DIR and renamed into
place, so a reader never sees half an export; an earlier export in DIR is replaced.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from btmri import spec
from data_prep.request_features import image_format
from pipeline.review.store import ReviewStore

EXPORT_CSV = "reviews.csv"
CSV_COLUMNS = (
    "file",  # the image, relative to DIR; empty when none was written
    "record_id",
    "label",
    "reviewer",
    "reviewed_at",
    "model_name",
    "model_version",
    "model_answer",  # the model's top class
    "abstain_reason",  # empty when the model answered
    "review_id",
    "supersedes",  # the earlier review of the record this one replaced, if any
)
_SUFFIX = {spec.FORMAT_PNG: ".png", spec.FORMAT_JPEG: ".jpg"}


class ExportError(Exception):
    """Nothing to export, or DIR cannot take it; str(err) says what to do."""


@dataclass
class ExportSummary:
    out: Path
    images: dict[str, int] = field(default_factory=dict)  # class → images written
    unusable: int = 0
    without_image: int = 0  # class labels whose request was logged without its image
    rows: int = 0


def _stem(record_id: str, used: set[str]) -> str:
    """A file name from a record id: path separators and other marks replaced, no
    leading dot (discover skips hidden files), unique within the export."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", record_id).lstrip(".") or "record"
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def _row(
    file: str,
    record_id: str,
    label: str,
    reviewer: str,
    reviewed_at: str,
    review_id: int,
    model_name: str = "",
    model_version: int | None = None,
    model_answer: str = "",
    abstain_reason: str = "",
    supersedes: int | None = None,
) -> dict:
    """One line of reviews.csv by column name (csv.DictWriter orders it by CSV_COLUMNS)."""
    return {
        "file": file,
        "record_id": record_id,
        "label": label,
        "reviewer": reviewer,
        "reviewed_at": reviewed_at,
        "model_name": model_name,
        "model_version": "" if model_version is None else model_version,
        "model_answer": model_answer,
        "abstain_reason": abstain_reason,
        "review_id": review_id,
        "supersedes": "" if supersedes is None else supersedes,
    }


def label_folder_as_reviews(folder: str | os.PathLike, reviewer: str) -> int:
    """Writes FOLDER/reviews.csv for a labelled folder whose labels come from a program,
    not a reader (`btmri slices`: each slice's class from its tumour mask): one review per
    image of its class folders, no model answer, so `btmri run --feedback FOLDER` trains
    on them as site data. Returns the number of reviews written."""
    from datetime import datetime, timezone

    from data_prep.discover import find_images

    folder = Path(folder)
    found, _ = find_images(folder)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(folder / EXPORT_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for review_id, cand in enumerate(sorted(found, key=lambda c: c.source), start=1):
            label = spec.CLASS_NAMES[cand.label]
            writer.writerow(_row(cand.source, f"file:{cand.source}", label, reviewer, now, review_id))
    return len(found)


def _write(store: ReviewStore, folder: Path) -> ExportSummary:
    summary = ExportSummary(folder)
    used: set[str] = set()
    with open(folder / EXPORT_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for review in store.current().values():
            file = ""
            if review.label in spec.CLASS_NAMES:
                image = store.image(review.record_id)
                if image and image_format(image) in _SUFFIX:
                    file = f"{review.label}/{_stem(review.record_id, used)}{_SUFFIX[image_format(image)]}"
                    (folder / review.label).mkdir(exist_ok=True)
                    (folder / file).write_bytes(image)
                    summary.images[review.label] = summary.images.get(review.label, 0) + 1
                else:
                    summary.without_image += 1
            else:
                summary.unusable += 1
            writer.writerow(
                _row(
                    file,
                    review.record_id,
                    review.label,
                    review.reviewer,
                    review.reviewed_at,
                    review_id=review.id,
                    model_name=review.model_name,
                    model_version=review.model_version,
                    model_answer=review.model_answer,
                    abstain_reason=review.abstain_reason,
                    supersedes=review.supersedes,
                )
            )
            summary.rows += 1
    return summary


def export_reviews(store: ReviewStore, out_dir: str | os.PathLike) -> ExportSummary:
    """Writes the export (module docstring); ExportError when there is nothing to write
    or DIR holds something other than an earlier export."""
    out = Path(out_dir)
    if not store.current():
        raise ExportError(f"no reviews in {store.where} yet: review some with `btmri review` first")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_CSV).is_file():
        raise ExportError(
            f"{out} holds files but no earlier export ({EXPORT_CSV}): give a new or empty folder"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise ExportError(f"cannot write beside {out}: {err.strerror or err}") from None
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the images from other users
        summary = _write(store, staging)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {out}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.out = out
    return summary
