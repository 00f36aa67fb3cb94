"""`btmri evaluate`'s figures: how the model does on a site's own labelled scans.

TensorFlow-free (NumPy and the standard library): the rows come from the model
(pipeline/site_predict.py), the figures, the tags and the text table are computed
here, the HTML page in pipeline/report/site_evaluation_page.py.

Every image counts. An abstention is not a right answer, so

- accuracy = answered with the true class / all images;
- wrong and confident = answered with another class / all images (the errors a
  reader would be shown as an answer);
- tumour called notumor = tumour images answered `notumor` / all tumour images (the
  missed tumours; an abstention on a tumour image is not counted here, it is in the
  abstention rate);
- per-class recall = that class's images answered with it / that class's images;

each with its 95 % interval (btmri.intervals): a bootstrap over patients when a tag
names each image's patient (`--patient-tag`, default `patient`) and some patient has
several images (slices of one patient are near copies, so Wilson over images would be
too narrow), else Wilson over images. The confusion matrix has one
row per true class and one column per answer, the last one `abstain`.

Tags slice the same figures: `--slice-by-filename REGEX` (each named group that
matches the image's path relative to the folder is a tag) and `--tags CSV` (first
column the path relative to the folder, the others tag columns; a CSV value wins over
the pattern's for the same tag). Images without a value of a tag fall in its
`(untagged)` slice, so the slices of a tag add up to all images.
"""

from __future__ import annotations

import csv
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from btmri.intervals import PATIENT_BOOTSTRAP, format_with_interval, interval_method, method_text, share
from btmri.spec import CLASS_NAMES, NOTUMOR_ID, NUM_CLASSES

EVALUATION_JSON = "evaluation.json"  # what --out DIR gets: the figures and one row per image
EVALUATION_HTML = "evaluation.html"  # the same as a self-contained page
ABSTAIN_COLUMN = "abstain"  # the confusion matrix's last column
UNTAGGED = "(untagged)"  # the slice of the images a tag does not name
NO_REASON = "no reason given"  # an abstention whose model gave no reason


# ── Per-image rows ─────────────────────────────────────────────────────────────────
@dataclass
class Row:
    """One evaluated image: its label, the model's answer and the image's tags."""

    path: str  # relative to the evaluated folder, '/'-separated (data_prep.discover's `source`)
    label: int  # index into CLASS_NAMES
    probabilities: Sequence[float]  # one per class, in CLASS_NAMES order
    abstained: bool = False
    reason: str = ""  # the model's abstain_reason ("" when it answered or gives none)
    ood_score: float | None = None  # None: a model exported without abstention
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def top_class(self) -> int:
        """The model's most probable class, also when it abstains."""
        return int(np.argmax(self.probabilities))

    @property
    def answer(self) -> int | None:
        """The class the model answered, None when it abstained."""
        return None if self.abstained else self.top_class

    @property
    def correct(self) -> bool:
        return self.answer == self.label

    def to_dict(self) -> dict:
        answer = self.answer
        return {
            "path": self.path,
            "label": CLASS_NAMES[self.label],
            "predicted": None if answer is None else CLASS_NAMES[answer],
            "top_class": CLASS_NAMES[self.top_class],
            "probabilities": {name: float(p) for name, p in zip(CLASS_NAMES, self.probabilities)},
            "abstained": bool(self.abstained),
            "reason": self.reason,
            "ood_score": None if self.ood_score is None else float(self.ood_score),
            "tags": dict(self.tags),
        }


# ── Figures ────────────────────────────────────────────────────────────────────────
def patients(rows: Sequence[Row], patient_tag: str | None) -> np.ndarray | None:
    """Each image's patient (its `patient_tag` value; an image without one is its own
    unit), or None when no image has the tag."""
    if not patient_tag or not any(patient_tag in r.tags for r in rows):
        return None
    return np.asarray([r.tags.get(patient_tag) or f"(image) {r.path}" for r in rows])


def figures(rows: Sequence[Row], patient_tag: str | None = None) -> dict:
    """All figures of a set of images; proportions as btmri.intervals.proportion
    ({"value", "successes", "n", "ci95", "method", "units"}; value NaN when n is 0),
    their intervals a bootstrap over the `patient_tag`'s patients where it clusters
    the images (btmri.intervals.share), else Wilson over images."""
    groups = patients(rows, patient_tag)

    def proportion_of(hits, among=None) -> dict:
        hits = np.asarray(hits, bool)
        if among is None:
            return share(hits, groups)
        return share(hits[among], None if groups is None else groups[among])

    n = len(rows)
    labels = np.asarray([r.label for r in rows], np.int64)
    top = np.asarray([r.top_class for r in rows], np.int64)
    abstained = np.asarray([bool(r.abstained) for r in rows], bool)
    answered = ~abstained
    correct = answered & (top == labels)
    tumour = labels != NOTUMOR_ID
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    for label, column in zip(labels, np.where(abstained, NUM_CLASSES, top)):
        confusion[label, column] += 1
    # What the classifier itself says, abstention aside: whether it knows these images'
    # tumours, or only the abstention keeps its mistakes from the user.
    top_confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for label, column in zip(labels, top):
        top_confusion[label, column] += 1
    reason_of = np.asarray([(r.reason or NO_REASON) if r.abstained else "" for r in rows])
    reasons = Counter(reason for reason in reason_of if reason)
    per_class = {}
    for c, name in enumerate(CLASS_NAMES):
        of_class = labels == c
        per_class[name] = {
            "n": int(of_class.sum()),
            "recall": proportion_of(correct, of_class),
            "abstained": proportion_of(abstained, of_class),
        }
    return {
        "n": n,
        "interval_method": interval_method(groups),
        "accuracy": proportion_of(correct),
        "answered": proportion_of(answered),
        "abstained": proportion_of(abstained),
        "abstention_reasons": {reason: proportion_of(reason_of == reason) for reason in sorted(reasons)},
        "wrong_confident": proportion_of(answered & (top != labels)),
        "tumour_called_notumor": proportion_of(answered & (top == NOTUMOR_ID), tumour),
        "accuracy_answered": proportion_of(correct, answered),
        "top_class_accuracy": proportion_of(top == labels),
        "tumour_top_class_notumor": proportion_of(top == NOTUMOR_ID, tumour),
        "per_class": per_class,
        "confusion": {
            "rows": list(CLASS_NAMES),
            "columns": [*CLASS_NAMES, ABSTAIN_COLUMN],
            "counts": confusion.tolist(),
        },
        "top_class_confusion": {
            "rows": list(CLASS_NAMES),
            "columns": list(CLASS_NAMES),
            "counts": top_confusion.tolist(),
        },
    }


def tag_names(rows: Iterable[Row]) -> list[str]:
    """Every tag some image has, in the order first seen."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row.tags))
    return list(names)


def slices(rows: Sequence[Row], patient_tag: str | None = None) -> dict[str, dict[str, dict]]:
    """{tag: {value: figures}}, values sorted, `(untagged)` last."""
    out: dict[str, dict[str, dict]] = {}
    for tag in tag_names(rows):
        groups: dict[str, list[Row]] = {}
        for row in rows:
            groups.setdefault(row.tags.get(tag, UNTAGGED), []).append(row)
        order = sorted(groups, key=lambda value: (value == UNTAGGED, value))
        out[tag] = {value: figures(groups[value], patient_tag) for value in order}
    return out


# ── Gates ──────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Gates:
    """Bounds the command exits 1 for; negative: off. Point estimates, as the
    pipeline's thresholds are."""

    min_accuracy: float = -1.0
    max_tumour_called_notumor: float = -1.0

    def failures(self, figures_: dict) -> list[str]:
        out = []
        accuracy = figures_["accuracy"]["value"]
        if self.min_accuracy >= 0 and not accuracy >= self.min_accuracy:  # NaN (no image) fails
            out.append(f"accuracy {_value(accuracy)} is below --min-accuracy {self.min_accuracy:g}")
        missed = figures_["tumour_called_notumor"]["value"]
        if self.max_tumour_called_notumor >= 0 and missed > self.max_tumour_called_notumor:
            out.append(
                f"tumour called notumor {_value(missed)} is above "
                f"--max-tumour-called-notumor {self.max_tumour_called_notumor:g}"
            )
        return out


def _value(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


# ── Tags ───────────────────────────────────────────────────────────────────────────
class TagError(ValueError):
    """A --slice-by-filename pattern or a --tags file that cannot be used."""


def compile_pattern(text: str) -> re.Pattern:
    """The --slice-by-filename pattern; TagError unless it compiles with a named group."""
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise TagError(f"--slice-by-filename {text!r} is not a regular expression: {err}") from None
    if not pattern.groupindex:
        raise TagError(
            f"--slice-by-filename {text!r} has no named group: name the tag, e.g. (?P<sequence>t1c|t1|t2|flair)"
        )
    return pattern


def pattern_tags(pattern: re.Pattern | None, path: str) -> dict[str, str]:
    """The named groups of the pattern's first match in `path` (relative to the
    folder) that took part in it."""
    match = pattern.search(path) if pattern is not None else None
    if match is None:
        return {}
    return {name: value for name, value in match.groupdict().items() if value is not None}


def normalise_path(text: str) -> str:
    """A path as the tags CSV may write it ('./a\\b.png') → as sources are ('a/b.png')."""
    text = text.strip().replace("\\", "/")
    return posixpath.normpath(text) if text else ""


def read_tags_csv(path: str) -> dict[str, dict[str, str]]:
    """{relative path: {tag: value}} from a CSV whose header names the columns: the
    path, then one column per tag. Empty cells give no tag; blank lines are ignored."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise TagError(f"cannot read --tags {path}: {err}") from None
    header = [cell.strip() for cell in lines[0]] if lines else []
    if len(header) < 2:
        raise TagError(
            f"--tags {path}: the first line must name the columns: the image path, then at least one tag"
        )
    names = header[1:]
    if not all(names) or len(set(names)) != len(names):
        raise TagError(f"--tags {path}: tag column names must be given and distinct, got {names}")
    table: dict[str, dict[str, str]] = {}
    for number, cells in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            raise TagError(f"--tags {path}, line {number}: {len(cells)} cells, the header has {len(header)}")
        key = normalise_path(cells[0])
        if not key:
            raise TagError(f"--tags {path}, line {number}: no image path in the first column")
        if key in table:
            raise TagError(f"--tags {path}, line {number}: {key} is listed twice")
        table[key] = {name: value.strip() for name, value in zip(names, cells[1:]) if value.strip()}
    return table


def image_tags(
    path: str, pattern: re.Pattern | None = None, table: dict[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """An image's tags: the pattern's, then the CSV's (which win)."""
    tags = pattern_tags(pattern, path)
    tags.update((table or {}).get(path, {}))
    return tags


# ── The document (evaluation.json) and the text table ──────────────────────────────
def build_document(
    rows: Sequence[Row],
    skipped: Sequence[dict],
    *,
    data_dir: str,
    model: dict,
    gates: Gates = Gates(),
    notes: Sequence[str] = (),
    patient_tag: str | None = None,
) -> dict:
    """Everything `btmri evaluate` found: figures, slices, gates, skipped files and
    one row per image. `patient_tag`: the tag naming each image's patient, for
    intervals that resample patients."""
    overall = figures(rows, patient_tag)
    failures = gates.failures(overall)
    return {
        "data_dir": data_dir,
        "model": model,
        "intervals": intervals_text(overall, patient_tag),
        # The tag naming patients: its values are patients, not a slice worth a table.
        "patient_tag": patient_tag if overall["interval_method"] == PATIENT_BOOTSTRAP else None,
        "figures": overall,
        "slices": slices(rows, patient_tag),
        "gates": {
            "min_accuracy": gates.min_accuracy,
            "max_tumour_called_notumor": gates.max_tumour_called_notumor,
            "failures": failures,
            "passed": not failures,
        },
        "notes": list(notes),
        "skipped": list(skipped),
        "images": [row.to_dict() for row in rows],
    }


def intervals_text(fig: dict, patient_tag: str | None) -> str:
    """'95 % intervals (bootstrap over patients, tag patient: 958 images from 6)'."""
    method = fig["interval_method"]
    if method == PATIENT_BOOTSTRAP:
        units = fig["accuracy"]["units"]
        return f"95 % intervals ({method_text(method)}, tag {patient_tag}: {fig['n']} images from {units})"
    return f"95 % intervals ({method_text(method)})"


def json_ready(value):
    """NaN (a 0/0 figure) as null, so evaluation.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _files(k: int) -> str:
    return f"{k} file" if k == 1 else f"{k} files"


def _share(fig: dict) -> str:
    """The share with its own interval (a bootstrap over patients where the figures have one)."""
    return f"{format_with_interval(fig['value'], fig['ci95'])} ({fig['successes']}/{fig['n']})"


HEADLINE = (
    ("accuracy", "accuracy (abstentions count as wrong)"),
    ("answered", "answered"),
    ("abstained", "abstained"),
    ("wrong_confident", "wrong and confident (answered, wrong)"),
    ("tumour_called_notumor", "tumour called notumor (of tumour images)"),
    ("accuracy_answered", "accuracy of the answered"),
    ("top_class_accuracy", "top class right (abstention aside)"),
    ("tumour_top_class_notumor", "top class notumor (of tumour images)"),
)
SLICE_COLUMNS = (
    ("accuracy", "accuracy"),
    ("abstained", "abstained"),
    ("wrong_confident", "wrong and confident"),
    ("tumour_called_notumor", "tumour called notumor"),
)


def text_lines(document: dict) -> list[str]:
    """The table `btmri evaluate` prints: headline, per class, confusion, slices."""
    fig = document["figures"]
    model = document["model"]
    lines = [
        f"evaluated {fig['n']} images in {document['data_dir']} with {model['description']}; "
        f"{_files(len(document['skipped']))} skipped; {document['intervals']}, counts in brackets"
    ]
    width = 42
    for key, title in HEADLINE:
        lines.append(f"  {title:<{width}}{_share(fig[key])}")
        if key == "abstained":
            for reason, share in fig["abstention_reasons"].items():
                lines.append(f"    {reason:<{width - 2}}{_share(share)}")

    lines += ["", f"  {'class':<12}{'n':>6}  {'recall':<34}abstained"]
    for name, per in fig["per_class"].items():
        lines.append(f"  {name:<12}{per['n']:>6}  {_share(per['recall']):<34}{_share(per['abstained'])}")

    for key, title in (
        ("confusion", "confusion (rows: true class; columns: the model's answer)"),
        ("top_class_confusion", "top class, abstention aside (rows: true class; columns: top class)"),
    ):
        confusion = fig[key]
        cell = max(len(c) for c in confusion["columns"]) + 2
        lines += ["", f"  {title}"]
        lines.append("  " + " " * 12 + "".join(f"{c:>{cell}}" for c in confusion["columns"]))
        for name, counts in zip(confusion["rows"], confusion["counts"]):
            lines.append(f"  {name:<12}" + "".join(f"{k:>{cell}}" for k in counts))

    for tag, values in document["slices"].items():
        column = max(12, *(len(v) + 2 for v in values))
        lines += [
            "",
            f"  by {tag}",
            (f"  {'':<{column}}{'n':>6}  " + "".join(f"{t:<34}" for _, t in SLICE_COLUMNS)).rstrip(),
        ]
        for value, slice_fig in values.items():
            cells = "".join(f"{_share(slice_fig[key]):<34}" for key, _ in SLICE_COLUMNS)
            lines.append(f"  {value:<{column}}{slice_fig['n']:>6}  {cells.rstrip()}")

    for note in document.get("notes", []):
        lines.append(f"note: {note}")
    gates = document["gates"]
    if gates["failures"]:
        lines.append("gate missed: " + "; ".join(gates["failures"]))
    return lines
