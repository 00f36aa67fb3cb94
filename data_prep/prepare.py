"""`btmri prepare`: image folders → validated, split, sharded TFRecords + manifest.

Two passes over the files, streaming (memory holds per-file metadata only):
  1. survey: worker threads decode each candidate once for its md5, perceptual hash
     and 32x32 thumbnail; thumbnails find the box folder's slice (and patient) an image
     copies; images are joined into units (patients, near-duplicate groups:
     data_prep/patients.py) and the split is drawn by unit, deterministically;
  2. worker threads decode/validate/re-encode each image again; the main thread
     writes Examples, training images first, so eval/test images can be checked
     against every training image before they are written.
Any single bad file is skipped with a reason; only an unusable dataset fails.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from btmri.documents import Manifest, option
from btmri.layout import MANIFEST_FILE
from btmri import spec
from data_prep.discover import find_images
from data_prep import feedback as site_feedback
from data_prep.duplicates import (
    DEFAULT_NEAR_THRESHOLD,
    DuplicateIndex,
    Record,
    hamming_to_many,
    perceptual_hash,
)
from data_prep.image_io import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_PIXELS,
    ImageError,
    content_hash,
    decode_image,
    read_bytes,
)
from data_prep.lesion_boxes import collection_name
from data_prep.patients import (
    Item,
    assign_train_eval_by_unit,
    assign_units,
    describe_units,
    patient_unit,
    patients_in_unit,
    read_patients_csv,
    unit_counts,
)
from data_prep.splits import assign_train_eval

# About 100-200 MB per shard for the real set: few enough files for the
# DirectRunner, enough for parallel reads on Flink/Dataflow.
DEFAULT_TRAIN_SHARDS = 4


class PrepareError(RuntimeError):
    """The dataset as a whole is unusable (no images, or a class empty in a split)."""


@dataclass
class PrepareOptions:
    """What `btmri prepare` is told; the option() fields are its flags (declared once)."""

    data_dir: str
    out_dir: str
    eval_fraction: float = option(0.15, "share of Training/ per class held out for eval")
    seed: int = option(42, "split seed")
    workers: int = option(0, "decoding threads (0: one per core)")
    shards: int = option(
        DEFAULT_TRAIN_SHARDS, "TFRecord shards for train; eval/test get proportionally fewer"
    )
    drop_cross_split_duplicates: bool = option(
        False, "leave out eval/test images that duplicate a training image"
    )
    near_threshold: int = option(
        DEFAULT_NEAR_THRESHOLD, "perceptual-hash Hamming distance (bits of 64) counted as a near duplicate"
    )
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images with more pixels than this")
    max_file_mb: float = option(
        DEFAULT_MAX_FILE_MB, "skip files larger than this many MiB before opening them"
    )
    box_dir: str | None = option(
        None,
        "folder of tumour slices with boxes (<class>/<id>.jpg + .txt, and patients.csv: "
        "id,class,patient): images that are copies of one get its box and patient, for "
        "lesion-guided training and splits by patient",
        flag="boxes_dir",
    )
    split_unit: str = option(
        spec.SPLIT_UNITS[0],
        "draw the eval split by whole patients / near-duplicate groups (patient; patients from the "
        "box folder's patients.csv) or by file (image, only to measure how much an image-level "
        "split inflates the figures)",
        choices=spec.SPLIT_UNITS,
    )
    hold_out_collection: str | None = option(
        None,
        "leave one source out: the tumour images of this collection (e.g. figshare, the copies "
        "of a box folder's slices, or unknown, the others), whole patients at a time, are left "
        "out of training and eval and copied to --hold-out-dir for `btmri evaluate`",
        metavar="NAME",
    )
    hold_out_dir: str | None = option(None, "where the held-out images go, as class folders")
    progress: bool = option(True, "progress bars (-q: none)", cli=False)
    allow_empty_eval: bool = option(
        False,
        "write the data even when no image falls in the eval split (refused by default: "
        "`btmri run` needs eval images)",
    )

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    def file_tasks(self, candidates: list) -> Iterator[tuple]:
        """The (path, suffix, pixel cap, byte cap) each worker reads a candidate with."""
        return (
            (c.path, os.path.splitext(c.path)[1], self.max_pixels, self.max_file_bytes) for c in candidates
        )

    def arguments(self) -> dict:
        """The options that decide the output (all but `progress` and `allow_empty_eval`,
        which decide only whether to write it), as the manifest records them."""
        return {k: v for k, v in asdict(self).items() if k not in ("progress", "allow_empty_eval")}


def input_fingerprint(data_dir: str, found: tuple | None = None) -> str:
    """Cheap identity of a data folder's content: every candidate's path, size and
    mtime. Lets `btmri run` reuse prepared TFRecords (and so TFX's cache) when the
    images have not changed."""
    import hashlib

    digest = hashlib.sha256()
    candidates, skips = found or find_images(data_dir)
    for cand in candidates:
        try:
            st = os.stat(cand.path)
            digest.update(f"{cand.source}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{cand.source}\0missing\n".encode())
    for skip in skips:
        digest.update(f"{skip.source}\0skipped\n".encode())
    return digest.hexdigest()


def _survey_file(task: tuple[str, str, int, int]) -> dict:
    """What the split needs of one file (md5, perceptual hash, thumbnail), or the reason
    it is skipped; the encoded image is dropped here and made again when written."""
    res = _convert_file(task)
    res.pop("encoded", None)
    return res


def _convert_file(task: tuple[str, str, int, int]) -> dict:
    """One file → Example fields, or the reason it is skipped.

    Never raises: an unexpected failure in a decoder is a skip too, so one odd
    file cannot end a 7,000-image run.
    """
    path, suffix, max_pixels, max_bytes = task
    try:
        data = read_bytes(path, max_bytes)
        image = decode_image(data, suffix, max_pixels)
        return {
            "ok": True,
            "md5": content_hash(data),
            "encoded": image.encoded,
            "height": image.height,
            "width": image.width,
            "reencoded": image.reencoded,
            "phash": perceptual_hash(image.gray_small),
            "gray_small": image.gray_small,
        }
    except ImageError as err:
        return {"ok": False, "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - reported per file, never fatal
        return {"ok": False, "reason": f"unexpected {type(err).__name__}: {err}".splitlines()[0]}


def _ordered_map(fn, items, workers: int, chunk: int = 16, window: int = 8):
    """Like map(fn, items), on `workers` threads, in order, memory-bounded.

    Threads, not processes: reading, md5 and OpenCV decode/encode release the
    GIL, and for 20 KB images pickling and starting processes cost more than
    decoding (benchmarks/prepare_throughput.py). Items go to threads in chunks
    so the per-task overhead does not rival a 70 µs decode; at most `window`
    chunks are in flight, whatever the size of the folder.
    """
    if workers <= 1:
        yield from map(fn, items)
        return

    def run_chunk(batch):
        return [fn(item) for item in batch]

    items = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        while True:
            batch = list(itertools.islice(items, chunk))
            if batch:
                pending.append(pool.submit(run_chunk, batch))
            if pending and (len(pending) >= window or not batch):
                yield from pending.popleft().result()
            elif not batch:
                return


def _shard_counts(expected: Counter, train_shards: int) -> dict[str, int]:
    n_train = max(expected[spec.TRAIN_SPLIT], 1)
    return {
        split: max(1, min(train_shards, math.ceil(train_shards * n / n_train)))
        for split, n in expected.items()
        if n
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _survey(candidates: list, opts: PrepareOptions, workers: int, skipped: list[dict]) -> dict[str, dict]:
    """Pass 1: every file decoded once for its hashes and a thumbnail; unreadable ones
    go to `skipped` with their reason."""
    surveyed: dict[str, dict] = {}
    for cand, res in tqdm(
        zip(candidates, _ordered_map(_survey_file, opts.file_tasks(candidates), workers)),
        total=len(candidates),
        desc="surveying",
        unit="img",
        disable=not opts.progress,
    ):
        if not res["ok"]:
            skipped.append({"source": cand.source, "reason": res["reason"]})
            _log(f"skip {cand.source}: {res['reason']}")
        else:
            surveyed[cand.source] = res
    return surveyed


def _draw(candidates: list, surveyed: dict, unit_of: dict[str, str], opts: PrepareOptions) -> dict[str, str]:
    """source → train | eval: by unit (or by file), stratified per class."""
    if opts.split_unit == spec.SPLIT_UNITS[0]:
        return assign_train_eval_by_unit(
            [(c.source, c.label, unit_of[c.source]) for c in candidates], opts.eval_fraction, opts.seed
        )
    if opts.split_unit == spec.SPLIT_UNITS[1]:
        return assign_train_eval(
            [(c.source, c.label, surveyed[c.source]["md5"]) for c in candidates],
            opts.eval_fraction,
            opts.seed,
        )
    raise ValueError(f"split unit must be one of {', '.join(spec.SPLIT_UNITS)}, got {opts.split_unit!r}")


def _split(readable: list, surveyed: dict, unit_of: dict[str, str], opts: PrepareOptions) -> dict[str, str]:
    """source → split: the training images by unit (or by file), Testing/ as test, the
    reviewed images (feedback) as _split_feedback says."""
    split_of = _draw([c for c in readable if c.origin == "training"], surveyed, unit_of, opts)
    if readable and spec.EVAL_SPLIT not in split_of.values():  # refused before writing anything
        _refuse_empty_eval(sum(1 for s in split_of.values() if s == spec.TRAIN_SPLIT), opts)
    split_of.update({c.source: spec.TEST_SPLIT for c in readable if c.origin == "testing"})
    _split_feedback(readable, surveyed, unit_of, split_of, opts)
    return split_of


def _evaluated_split(split_of: dict[str, str]) -> str:
    """The split the pipeline's Evaluator scores: test when there is one (pipeline/config.py)."""
    return spec.TEST_SPLIT if spec.TEST_SPLIT in split_of.values() else spec.EVAL_SPLIT


def _split_feedback(
    readable: list, surveyed: dict, unit_of: dict[str, str], split_of: dict[str, str], opts: PrepareOptions
) -> None:
    """Reviewed images: one that shares a unit with dataset images (a copy of one) takes
    their split, so a group is never on two sides; the others are drawn among themselves
    by unit and class, as the training images are, to train or to the split the
    Evaluator scores. That is test when there is one: in eval they would only be fitted
    on (temperature, abstention thresholds) and never make the feedback slice."""
    reviewed = [c for c in readable if c.origin == site_feedback.FEEDBACK_ORIGIN]
    if not reviewed:
        return
    taken: dict[str, str] = {}
    for cand in sorted(readable, key=lambda c: c.origin != "training"):  # a training image's split first
        if cand.origin != site_feedback.FEEDBACK_ORIGIN:
            taken.setdefault(unit_of[cand.source], split_of[cand.source])
    own = [c for c in reviewed if unit_of[c.source] not in taken]
    drawn = _draw(own, surveyed, unit_of, opts)
    held_out = _evaluated_split(split_of)
    for cand in reviewed:
        unit = unit_of[cand.source]
        if unit in taken:
            split_of[cand.source] = taken[unit]
        else:
            split_of[cand.source] = held_out if drawn[cand.source] == spec.EVAL_SPLIT else spec.TRAIN_SPLIT


class _Writing:
    """Pass 2: the split's shard writers and what they wrote (counts, units, duplicates,
    dropped cross-split copies)."""

    def __init__(self, out: Path, split_sizes: Counter, opts: PrepareOptions):
        from data_prep.tfrecords import ShardedWriter  # TF only in this process

        for split in spec.SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        self.opts = opts
        self.writers = {
            s: ShardedWriter(out / s, s, n) for s, n in _shard_counts(split_sizes, opts.shards).items()
        }
        self.dups = DuplicateIndex(threshold=opts.near_threshold)
        self.counts = {s: Counter() for s in spec.SPLITS}
        self.units: dict[str, list[str]] = {sp: [] for sp in spec.SPLITS}
        self.dropped: list[dict] = []
        self.reencoded = 0
        self.feedback: list[tuple[str, str, str]] = []  # (source, split, unit) of reviewed images

    def dropped_as_copy(self, source: str, split: str, res: dict) -> bool:
        """With --drop-cross-split-duplicates: an eval/test image that copies a training one."""
        if split == spec.TRAIN_SPLIT or not self.opts.drop_cross_split_duplicates:
            return False
        match = self.dups.training_match(res["md5"], res["phash"])
        if match:
            kind, train_source, dist = match
            self.dropped.append(
                {
                    "source": source,
                    "split": split,
                    "kind": kind,
                    "duplicates": train_source,
                    "distance_bits": dist,
                }
            )
        return bool(match)

    def write(self, split: str, source: str, label: int, res: dict, box, unit: str, collection: str) -> None:
        from data_prep.tfrecords import make_example

        example = make_example(
            res["encoded"],
            label,
            res["height"],
            res["width"],
            source,
            box,
            patient=unit,
            collection=collection,
        )
        self.writers[split].write(example)
        self.units[split].append(unit)
        if collection == spec.FEEDBACK_COLLECTION:
            self.feedback.append((source, split, unit))
        self.dups.add(Record(source, split, label, res["md5"], res["phash"]))
        self.counts[split][spec.CLASS_NAMES[label]] += 1
        self.reencoded += res.get("reencoded", 0)

    def held_out_hashes(self) -> np.ndarray:
        return np.array([r.phash for r in self.dups.records if r.split != spec.TRAIN_SPLIT], np.uint64)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _write_extra_slices(
    writing: _Writing, boxes: _BoxAttacher, opts: PrepareOptions, skipped: list[dict]
) -> None:
    """The box folder's slices that copy no image go to train. They are no copies of
    eval/test images (correlation), but may still be near duplicates by perceptual hash
    (re-windowed neighbours): those are not added."""
    held_out = writing.held_out_hashes()
    for slice_, res in boxes.extra_training_slices(opts.max_pixels, opts.max_file_bytes):
        source = boxes.source_of(slice_)
        if not res["ok"]:
            skipped.append({"source": source, "reason": res["reason"]})
            continue
        if len(held_out) and int(hamming_to_many(res["phash"], held_out).min()) <= opts.near_threshold:
            boxes.not_added.append(source)
            continue
        boxes.added[spec.CLASS_NAMES[slice_.label]] += 1
        res = dict(res, reencoded=0)  # counted among the box folder's, not the dataset's
        writing.write(
            spec.TRAIN_SPLIT,
            source,
            slice_.label,
            res,
            slice_.box,
            boxes.unit_of_slice(slice_),
            boxes.collection,
        )


def _manifest(
    opts: PrepareOptions,
    fingerprint: str,
    writing: _Writing,
    skipped: list[dict],
    boxes: _BoxAttacher,
    left_out: dict | None,
    seconds: float,
    feedback: site_feedback.FeedbackSet | None = None,
    evaluated_split: str = spec.EVAL_SPLIT,
) -> Manifest:
    written = [s for s in spec.SPLITS if s in writing.writers]
    return Manifest(
        data_dir=str(Path(opts.data_dir).resolve()),
        input_fingerprint=fingerprint,
        arguments=opts.arguments(),
        classes=list(spec.CLASS_NAMES),
        counts={s: {c: writing.counts[s][c] for c in spec.CLASS_NAMES} for s in written},
        total_written=sum(sum(c.values()) for c in writing.counts.values()),
        reencoded_to_png=writing.reencoded,
        shards={s: [p.name for p in w.paths] for s, w in writing.writers.items()},
        skipped=sorted(skipped, key=lambda s: s["source"]),
        dropped_cross_split_duplicates=writing.dropped,
        duplicates=writing.dups.report(),
        lesion_boxes=boxes.report(),
        split_unit=opts.split_unit,
        units=unit_counts({sp: u for sp, u in writing.units.items() if sp in written}),
        held_out_collection=left_out,
        feedback=None
        if feedback is None
        else site_feedback.manifest_section(feedback, writing.feedback, evaluated_split),
        seconds=round(seconds, 2),
    )


def prepare(opts: PrepareOptions, feedback: site_feedback.FeedbackSet | None = None) -> Manifest:
    """Runs the whole preparation; returns the manifest (also written to disk).
    `feedback`: reviewed images from the site (data_prep/feedback.py), a source of their own."""
    started = time.time()
    workers = opts.workers or os.cpu_count() or 1
    out = Path(opts.out_dir)
    candidates, name_skips = find_images(opts.data_dir)
    fingerprint = input_fingerprint(opts.data_dir, (candidates, name_skips))
    skipped: list[dict] = [asdict(s) for s in name_skips]
    if not candidates:
        raise PrepareError(
            f"no image files found under {opts.data_dir} "
            f"(extensions: {', '.join(sorted(spec.IMAGE_EXTENSIONS))})"
        )
    site_patients: dict[str, str] = {}
    if feedback is not None:  # after the fingerprint: the run's key adds the feedback's own
        reviewed, reviewed_skips = site_feedback.candidates(feedback)
        candidates = candidates + reviewed
        skipped += [asdict(s) for s in reviewed_skips]
        site_patients = site_feedback.patients(feedback)

    # Pass 1: hashes, and the patients a box folder knows, decide the units and the split.
    surveyed = _survey(candidates, opts, workers, skipped)
    readable = [c for c in candidates if c.source in surveyed]
    boxes = _BoxAttacher(opts.box_dir)
    for cand in readable:
        boxes.match(cand.source, surveyed[cand.source]["gray_small"], cand.label)
    items = [
        Item(
            c.source,
            c.label,
            surveyed[c.source]["md5"],
            surveyed[c.source]["phash"],
            boxes.patient_of(c.source) or site_patients.get(c.source),
        )
        for c in readable
    ]
    unit_of = assign_units(items, opts.near_threshold)
    left_out = None
    if opts.hold_out_collection:
        readable, left_out = _hold_out(readable, unit_of, boxes, opts)
    split_of = _split(readable, surveyed, unit_of, opts)
    boxes.note_units({c.source: unit_of[c.source] for c in readable}, split_of)
    order = {s: i for i, s in enumerate(spec.SPLITS)}  # train before eval/test
    readable.sort(key=lambda c: (order[split_of[c.source]], c.source))
    del surveyed  # the thumbnails are not needed past the split

    # Pass 2: convert and write.
    writing = _Writing(out, Counter(split_of.values()), opts)
    results = _ordered_map(_convert_file, opts.file_tasks(readable), workers)
    for cand, res in tqdm(
        zip(readable, results), total=len(readable), desc="converting", unit="img", disable=not opts.progress
    ):
        if not res["ok"]:
            skipped.append({"source": cand.source, "reason": res["reason"]})
            _log(f"skip {cand.source}: {res['reason']}")
            continue
        split = split_of[cand.source]
        if writing.dropped_as_copy(cand.source, split, res):
            continue
        writing.write(
            split,
            cand.source,
            cand.label,
            res,
            boxes.box_of(cand.source, split),
            unit_of[cand.source],
            _collection_of(cand.source, boxes),
        )
    _write_extra_slices(writing, boxes, opts, skipped)
    writing.close()

    manifest = _manifest(
        opts,
        fingerprint,
        writing,
        skipped,
        boxes,
        left_out,
        time.time() - started,
        feedback,
        _evaluated_split(split_of),
    )
    manifest.write(out)
    _check_usable(manifest, opts)
    return manifest


def _hold_out(readable: list, unit_of: dict[str, str], boxes: _BoxAttacher, opts: PrepareOptions):
    """Leave one source out: every unit holding a tumour image of the collection leaves
    the dataset; its files are copied to opts.hold_out_dir/<class>/ (flat names), so that
    `btmri evaluate` can grade a model that never saw that source."""
    if not opts.hold_out_dir:
        raise ValueError("--hold-out-collection needs --hold-out-dir (where the held-out images go)")
    wanted = opts.hold_out_collection
    units = {
        unit_of[c.source]
        for c in readable
        if c.label != spec.NOTUMOR_ID and _collection_of(c.source, boxes) == wanted
    }
    if not units:
        known = sorted({_collection_of(c.source, boxes) for c in readable})
        raise ValueError(f"no tumour image of collection {wanted!r} (collections here: {', '.join(known)})")
    out = Path(opts.hold_out_dir)
    shutil.rmtree(out, ignore_errors=True)
    kept, counts = [], Counter()
    for cand in readable:
        if unit_of[cand.source] not in units:
            kept.append(cand)
            continue
        cls = spec.CLASS_NAMES[cand.label]
        target = out / cls / cand.source.replace("/", "__")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cand.path, target)
        counts[cls] += 1
    boxes.hold_out(units, everything=wanted == boxes.collection)
    _log(f"held out {sum(counts.values())} images of collection {wanted!r} ({len(units)} units) in {out}")
    return kept, {
        "collection": wanted,
        "dir": str(out.resolve()),
        "images": dict(counts),
        "units": len(units),
    }


def _collection_of(source: str, boxes: _BoxAttacher) -> str:
    """A reviewed image's collection is the feedback's, whatever box slice it copies: the
    slice TFMA shows is the site's. Any other image's is the box folder's (or unknown)."""
    return spec.FEEDBACK_COLLECTION if site_feedback.is_feedback(source) else boxes.collection_of(source)


class _BoxAttacher:
    """Tumour boxes and patients for the dataset (data_prep/lesion_boxes.py, patients.py).

    An image that is a copy of a boxed slice gets its box, the slice's patient (from the
    folder's patients.csv) and the folder's collection name. Boxed slices with no copy in
    the dataset either join the training split as extra images or are left for the
    lesion audit, a whole patient at a time: a patient with images in training joins it,
    one with images in eval or test stays out, and one the dataset does not hold is
    drawn by its id. Without patients.csv the draw is by groups of consecutive ids."""

    def __init__(self, box_dir: str | None):
        from data_prep.lesion_boxes import BoxMatcher, read_box_folder

        self.box_dir = box_dir
        self.matcher = None
        self.skipped: list = []
        self.patients: dict[str, str] = {}  # slice source → patient id
        self.collection = spec.UNKNOWN_COLLECTION
        self.slice_of: dict[str, int] = {}  # image source → index of the slice it copies
        self.copied_in: dict[int, str] = {}  # slice index → split holding a copy
        self.unit_of_patient: dict[str, str] = {}
        self.splits_of_unit: dict[str, set[str]] = {}
        self.matched = {s: Counter() for s in spec.SPLITS}
        self.added: Counter = Counter()
        self.held_out_patients: set[str] = set()
        self.left_out_patients: set[str] = set()  # left out of the dataset (leave one source out)
        self.hold_out_all = False  # the box folder's own collection is left out
        self.not_added: list[str] = []  # near duplicates of eval/test images
        if box_dir:
            slices, self.skipped = read_box_folder(box_dir)
            self.matcher = BoxMatcher(slices)
            self.patients = read_patients_csv(box_dir)
            self.collection = collection_name(box_dir)

    def match(self, source: str, gray_small, label: int) -> None:
        if self.matcher is None:
            return
        found = self.matcher.best(gray_small, label)
        if found is not None and found[1] >= self.matcher.threshold:
            self.slice_of[source] = found[0]

    def patient_of(self, source: str) -> str | None:
        i = self.slice_of.get(source)
        return None if i is None else self.patients.get(self.matcher.slices[i].source)

    def note_units(self, unit_of: dict[str, str], split_of: dict[str, str]) -> None:
        """Where each unit's images went, so a patient's other slices follow them."""
        for source, unit in unit_of.items():
            self.splits_of_unit.setdefault(unit, set()).add(split_of[source])
            patient = self.patient_of(source)
            if patient is not None:
                self.unit_of_patient[patient] = unit
            if source in self.slice_of:
                self.copied_in.setdefault(self.slice_of[source], split_of[source])

    def hold_out(self, units: set[str], everything: bool) -> None:
        for unit in units:
            self.left_out_patients.update(patients_in_unit(unit))
        self.hold_out_all = self.hold_out_all or everything

    def box_of(self, source: str, split: str):
        i = self.slice_of.get(source)
        if i is None:
            return None
        slice_ = self.matcher.slices[i]
        self.matched[split][spec.CLASS_NAMES[slice_.label]] += 1
        return slice_.box

    def collection_of(self, source: str) -> str:
        return self.collection if source in self.slice_of else spec.UNKNOWN_COLLECTION

    def source_of(self, slice_) -> str:
        return f"{Path(self.box_dir).name}/{slice_.source}"

    def unit_of_slice(self, slice_) -> str:
        patient = self.patients.get(slice_.source)
        if patient is None:
            return spec.GROUP_PREFIX + self.source_of(slice_)
        return self.unit_of_patient.get(patient, patient_unit(patient))

    def _joins_training(self, slice_) -> bool:
        from data_prep.lesion_boxes import in_audit_part, unit_in_audit_part

        if self.hold_out_all:
            return False
        if slice_.source not in self.patients:
            return not in_audit_part(slice_.source)
        if self.patients[slice_.source] in self.left_out_patients:
            return False
        unit = self.unit_of_slice(slice_)
        splits = self.splits_of_unit.get(unit)
        joins = (spec.TRAIN_SPLIT in splits) if splits else not unit_in_audit_part(unit)
        if not joins:
            self.held_out_patients.update(patients_in_unit(unit))
        return joins

    def extra_training_slices(self, max_pixels: int, max_bytes: int):
        """(slice, converted) for each slice with no copy that falls on the training side."""
        if self.matcher is None:
            return
        for i, slice_ in enumerate(self.matcher.slices):
            if i in self.copied_in or not self._joins_training(slice_):
                continue
            yield (
                slice_,
                _convert_file((slice_.path, os.path.splitext(slice_.path)[1], max_pixels, max_bytes)),
            )

    def report(self) -> dict | None:
        if self.matcher is None:
            return None
        return {
            "box_dir": str(Path(self.box_dir).resolve()),
            "collection": self.collection,
            "slices": len(self.matcher.slices),
            "slices_with_patient": sum(1 for s in self.matcher.slices if s.source in self.patients),
            "patients": len(set(self.patients.values())),
            "patients_held_out_for_audit": len(self.held_out_patients),
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "images_with_box": {s: dict(c) for s, c in self.matched.items() if c},
            "slices_added_to_train": dict(self.added),
            "slices_not_added_near_duplicates_of_eval_or_test": self.not_added,
        }


def _refuse_empty_eval(train: int, opts: PrepareOptions) -> None:
    if opts.allow_empty_eval:
        return
    raise PrepareError(
        f"the eval split is empty: {train} training images with --eval-fraction "
        f"{opts.eval_fraction} leave no whole {opts.split_unit} for eval, and training needs "
        "one to calibrate, fit abstention and gate the model (add images, raise "
        "--eval-fraction, or pass --allow-empty-eval to write it anyway)"
    )


def _check_usable(manifest: Manifest, opts: PrepareOptions) -> None:
    if manifest.total_written == 0:
        raise PrepareError(
            f"no usable image found: every file was skipped (see {MANIFEST_FILE} for the reasons)"
        )
    if not sum(manifest.counts.get(spec.EVAL_SPLIT, {}).values()):
        _refuse_empty_eval(sum(manifest.counts.get(spec.TRAIN_SPLIT, {}).values()), opts)
    empty = [
        f"{split}/{cls}"
        for split, per_class in manifest.counts.items()
        for cls, n in per_class.items()
        if n == 0
    ]
    if empty:
        raise PrepareError(
            "class empty in a split: "
            + ", ".join(empty)
            + " (add images, or lower/raise --eval-fraction so every class has some in each split)"
        )


def _per_split(counts: dict[str, int]) -> str:
    """{'train': 588, 'eval': 64} → 'train 588, eval 64'; nothing → 'none'."""
    shown = [f"{name} {n}" for name, n in counts.items() if n]
    return ", ".join(shown) if shown else "none"


def summary_table(manifest: Manifest) -> str:
    """Plain-text table: split × class counts, skipped, dropped, duplicates."""
    classes = manifest.classes
    width = max(len(c) for c in classes + ["split"]) + 2
    lines = ["".join(h.ljust(width) for h in ["split", *classes, "total"])]
    for split, per_class in manifest.counts.items():
        row = [split, *(str(per_class[c]) for c in classes), str(sum(per_class.values()))]
        lines.append("".join(v.ljust(width) for v in row))
    dup = manifest.duplicates
    reasons = Counter(s["reason"].split(":")[0] for s in manifest.skipped)
    lines.append(
        f"skipped: {len(manifest.skipped)}" + "".join(f"\n  {n:5d}  {r}" for r, n in reasons.most_common())
    )
    lines.append(
        f"exact duplicates: {dup.exact.extra_copies} extra copies in "
        f"{dup.exact.groups} groups; within a split: "
        f"{_per_split(dup.exact.extra_copies_within_split)}; with a copy in another split: "
        f"{_per_split(dup.exact.images_with_copy_in_other_split)}"
    )
    lines.append(
        f"near duplicates (<= {dup.near_threshold_bits} bits): {dup.near.pairs} pairs; "
        f"within a split: {_per_split(dup.near.pairs_within_split)}; across splits: "
        f"{_per_split(dup.near.pairs_across_splits)}"
    )
    lines.append(f"split by {manifest.split_unit}")
    lines.extend("  " + describe_units(split, c) for split, c in manifest.units.items())
    if manifest.feedback:
        lines.append(site_feedback.describe(manifest.feedback))
    if manifest.dropped_cross_split_duplicates:
        lines.append(
            f"dropped eval/test duplicates of training images: {len(manifest.dropped_cross_split_duplicates)}"
        )
    return "\n".join(lines)
