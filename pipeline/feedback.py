"""`btmri run --feedback TARGET`: the site's reviews as the FeedbackSet prepare takes
(data_prep/feedback.py).

TARGET is an export folder (`btmri review --export DIR`) or a review database: a SQLite
file, a sqlite:/// URL or a postgresql:// URL. A database is exported first, with
pipeline/review/export.py, into WORK_DIR/data/feedback/<name>/, so both kinds are read
by one reader: the export's reviews.csv and its class folders.
"""

from __future__ import annotations

import csv
import hashlib
import urllib.parse
from pathlib import Path

from btmri import spec
from btmri.layout import RunLayout
from data_prep.discover import LayoutError, find_images
from data_prep.feedback import FeedbackError, FeedbackReview, FeedbackSet
from pipeline.review.export import CSV_COLUMNS, EXPORT_CSV
from pipeline.review.store import LABELS, POSTGRES_SCHEMES

SQLITE_SCHEME = "sqlite"
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def feedback_data_dir(work_dir: str) -> Path:
    """Where a database's reviews are exported (RunLayout.feedback_data)."""
    return Path(RunLayout(work_dir).feedback_data)


def sqlite_path(url: str) -> str:
    """The file of a sqlite:/// URL, read as SQLAlchemy reads it: sqlite:///reviews.db is
    relative, sqlite:////srv/reviews.db absolute."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise FeedbackError(
            f"{url}: a SQLite URL names a file as sqlite:///FILE (or sqlite:////ABSOLUTE/FILE)"
        )
    return urllib.parse.unquote(rest[1:])


def _database(target: str) -> str | None:
    """What pipeline.review.store.open_store takes for `target` (a file path or a
    postgresql:// URL), or None when `target` is not a database."""
    if "://" in target:
        scheme = target.split("://", 1)[0].lower()
        if scheme == SQLITE_SCHEME:
            return sqlite_path(target)
        if scheme in POSTGRES_SCHEMES:
            return target
        raise FeedbackError(
            f"--feedback {target}: unknown URL scheme {scheme!r}; give an export folder, a SQLite "
            "file, a sqlite:/// URL or a postgresql:// URL"
        )
    path = Path(target)
    if path.is_dir():
        return None
    if not path.exists():
        raise FeedbackError(
            f"--feedback {target}: no such export folder or review database (write one with "
            "`btmri review --export DIR`, or give the --db that `btmri review` wrote)"
        )
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as err:
        raise FeedbackError(f"--feedback {target}: cannot read it: {err.strerror or err}") from None
    if header != SQLITE_HEADER:
        raise FeedbackError(f"--feedback {target}: neither an export folder nor a SQLite review database")
    return target


def _export_name(where: str) -> str:
    """A folder name per database: readable, and distinct for two databases of one name."""
    if "://" not in where:
        where = str(Path(where).resolve())  # one folder however the file is named
    stem = Path(urllib.parse.urlsplit(where).path).stem if "://" in where else Path(where).stem
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return f"{stem or 'reviews'}-{digest}"


def export_database(db: str, work_dir: str) -> tuple[Path, str]:
    """(export folder, the database as messages name it): the current reviews of `db`
    exported under the work folder, replacing an earlier export of the same database."""
    from pipeline.review.export import ExportError, export_reviews
    from pipeline.review.store import StoreError, open_store

    if "://" not in db and not Path(db).is_file():  # opening would create an empty database
        raise FeedbackError(f"--feedback: no review database {db}")
    try:
        store = open_store(db)
    except StoreError as err:
        raise FeedbackError(f"--feedback: {err}") from None
    try:
        out = feedback_data_dir(work_dir) / _export_name(store.where)
        export_reviews(store, out)
    except ExportError as err:
        raise FeedbackError(f"--feedback: {err}") from None
    finally:
        store.close()
    return out, store.where


def _number(text: str, what: str, where: str, required: bool = False) -> int | None:
    if text == "" and not required:
        return None
    try:
        return int(text)
    except ValueError:
        raise FeedbackError(f"{where}: {what} {text!r} is not a number") from None


def read_export(folder: str | Path, origin: str = "") -> FeedbackSet:
    """The reviews an export folder lists, checked against its class folders; FeedbackError
    when it is no export, names an image it lacks or a label it should not, holds an image
    no review lists or a folder that is no class, or has no usable review."""
    folder = Path(folder)
    table = folder / EXPORT_CSV
    if not table.is_file():
        raise FeedbackError(
            f"--feedback {folder}: no {EXPORT_CSV}, so not an export of `btmri review --export`"
        )
    reviews = []
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise FeedbackError(f"{table}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{table}, line {line}"
            if row["label"] not in LABELS:
                raise FeedbackError(
                    f"{where}: unknown label {row['label']!r} (expected one of {', '.join(LABELS)})"
                )
            file = row["file"]
            if file and (Path(file).parent.as_posix() != row["label"] or not (folder / file).is_file()):
                raise FeedbackError(
                    f"{where}: {file!r} is not an image of the export's {row['label']}/ folder: "
                    "the export was changed by hand; export the reviews again"
                )
            reviews.append(
                FeedbackReview(
                    review_id=_number(row["review_id"], "review_id", where, required=True),
                    record_id=row["record_id"],
                    label=row["label"],
                    reviewer=row["reviewer"],
                    reviewed_at=row["reviewed_at"],
                    model_name=row["model_name"],
                    model_version=_number(row["model_version"], "model_version", where),
                    file=file,
                )
            )
    feedback = FeedbackSet(str(folder), reviews, origin or str(folder.resolve()))
    usable = feedback.by_file()
    if not usable:
        unusable = sum(1 for r in reviews if r.label not in spec.CLASS_NAMES)
        raise FeedbackError(
            f"--feedback {feedback.origin}: no usable reviews ({len(reviews)} reviews: {unusable} "
            f"'not a usable slice', {len(reviews) - unusable} with a class but no logged image)"
        )
    try:
        found, _ = find_images(folder)
    except LayoutError as err:
        raise FeedbackError(f"--feedback {feedback.origin}: {err}") from None
    unlisted = sorted(c.source for c in found if c.source not in usable)
    if unlisted:
        raise FeedbackError(
            f"--feedback {feedback.origin}: {len(unlisted)} images no review lists (first: "
            f"{unlisted[0]}): the export was changed by hand; export the reviews again"
        )
    return feedback


def resolve(target: str, work_dir: str) -> FeedbackSet:
    """The FeedbackSet of `btmri run --feedback TARGET` (module docstring)."""
    db = _database(target)
    if db is None:
        return read_export(target)
    folder, where = export_database(db, work_dir)
    return read_export(folder, origin=where)
