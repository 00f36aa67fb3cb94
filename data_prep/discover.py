"""Finding images: the Kaggle layout (Training/ and Testing/ of class folders) or
flat class folders directly under the data dir. Folder names match in any
letter case. Nothing is read here, only listed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from btmri import spec
from data_prep.image_io import is_hidden, printable_path


class LayoutError(ValueError):
    """The data dir does not have a layout prepare understands."""


@dataclass(frozen=True)
class Candidate:
    path: str  # as found on disk
    source: str  # path relative to the data dir, '/'-separated, valid UTF-8 (see find_images)
    label: int
    origin: str  # "training" (feeds train/eval) or "testing" (feeds test)


@dataclass(frozen=True)
class Skip:
    source: str
    reason: str


def _child_dirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name)}


def _class_folders(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for name, path in sorted(_child_dirs(folder).items()):
        try:
            out.append((spec.class_id(name), path))
        except ValueError:
            raise LayoutError(
                f"{path}: unknown class folder {path.name!r}; expected class folders named "
                f"{', '.join(spec.CLASS_NAMES)}"
            ) from None
    if not out:
        raise LayoutError(f"{folder}: no class folders; expected {', '.join(spec.CLASS_NAMES)}")
    return out


def _box_files(filenames: list[str]) -> set[str]:
    """`<id>.txt` files beside an image `<id>.<ext>`: a box folder's boxes
    (data_prep/lesion_boxes.py), annotations of the image, neither data nor a skip."""
    stems = {
        os.path.splitext(n)[0] for n in filenames if os.path.splitext(n)[1].lower() in spec.IMAGE_EXTENSIONS
    }
    return {n for n in filenames if n.lower().endswith(".txt") and os.path.splitext(n)[0] in stems}


def find_images(data_dir: str | os.PathLike) -> tuple[list[Candidate], list[Skip]]:
    """Lists image candidates and files skipped by name, sorted for determinism.

    Kaggle layout when a Training/ or Testing/ folder exists (any case), else the
    data dir's own subfolders are class folders. Other top-level folders of the
    Kaggle layout are not data (the synthetic generator keeps lesion masks in masks/).

    A name that is not valid UTF-8 (a Latin-1 `Tümor.jpg` copied from an old system)
    is kept: the file is read by its real name, and its `source` (manifest, tf.Example)
    shows the undecodable bytes as \\xNN escapes (`T\\xfcmor.jpg`), which is valid UTF-8.
    Should that escaped text equal another file's name, the second one is skipped.
    Only names are listed here: special files (FIFOs, devices) are refused when read.
    A box file beside its slice (`<id>.txt` beside `<id>.png`) is passed over silently.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise LayoutError(f"data dir {root} does not exist or is not a folder")
    top = _child_dirs(root)
    roots: list[tuple[str, Path]] = []
    if spec.KAGGLE_TRAINING_DIR.lower() in top or spec.KAGGLE_TESTING_DIR.lower() in top:
        for name, origin in (
            (spec.KAGGLE_TRAINING_DIR, "training"),
            (spec.KAGGLE_TESTING_DIR, "testing"),
        ):
            if name.lower() in top:
                roots.append((origin, top[name.lower()]))
    else:
        roots.append(("training", root))

    candidates: list[Candidate] = []
    skips: list[Skip] = []
    sources: set[str] = set()
    for origin, split_root in roots:
        for label, class_dir in _class_folders(split_root):
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
                rel_dir = Path(dirpath).relative_to(root).as_posix()
                annotations = _box_files(filenames)
                for name in sorted(filenames):
                    if name in annotations:
                        continue
                    source = printable_path(f"{rel_dir}/{name}")
                    suffix = os.path.splitext(name)[1]
                    if source in sources:
                        skips.append(
                            Skip(source, "same name as another file once its non-UTF-8 bytes are escaped")
                        )
                        continue
                    sources.add(source)
                    if is_hidden(name):
                        skips.append(Skip(source, "hidden or system file"))
                    elif suffix.lower() not in spec.IMAGE_EXTENSIONS:
                        skips.append(
                            Skip(source, f"unsupported extension {printable_path(suffix) or '(none)'}")
                        )
                    else:
                        candidates.append(Candidate(os.path.join(dirpath, name), source, label, origin))
    return candidates, skips
