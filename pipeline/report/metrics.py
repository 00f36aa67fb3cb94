"""Classification figures from a confusion matrix and from predicted probabilities.

Plain NumPy on purpose: the tests recompute every figure with scikit-learn, so
the report must not be scikit-learn checking itself.

Conventions (the same as scikit-learn's with `zero_division=nan`): a ratio whose
denominator is zero is NaN (shown as "n/a"), never a silent 0.

Every figure carries its 95 % interval (btmri.intervals). When the images' patients
(or near-duplicate groups) are known and some hold more than one image, every interval
is a bootstrap over patients: a proportion (accuracy, precision, recall, specificity)
as the ratio of the drawn patients' sums, ROC AUC and the expected calibration error
recomputed on the drawn patients' images. Otherwise: Wilson for proportions, a
bootstrap over images for ROC AUC and ECE. F1 is neither and is shown without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from btmri import intervals
from btmri.spec import ECE_BINS

NAN_INTERVAL = intervals.NAN_INTERVAL


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [actual, predicted]."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return cm


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of a class's images per predicted class)."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.full(cm.shape, np.nan), where=totals > 0)


@dataclass
class ClassFigures:
    """One class against the rest, with the top-1 decision."""

    name: str
    support: int  # images of this class
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float  # sensitivity
    specificity: float
    f1: float
    auc: float = float("nan")  # one-vs-rest ROC AUC, from the probabilities
    auc_ci: tuple[float, float] = NAN_INTERVAL  # bootstrap over images or patients
    # Proportions' intervals: Wilson over the counts unless given (patient bootstrap).
    precision_ci: tuple[float, float] | None = None
    recall_ci: tuple[float, float] | None = None
    specificity_ci: tuple[float, float] | None = None

    def __post_init__(self):
        if self.precision_ci is None:
            self.precision_ci = intervals.wilson(self.tp, self.tp + self.fp)
        if self.recall_ci is None:
            self.recall_ci = intervals.wilson(self.tp, self.tp + self.fn)
        if self.specificity_ci is None:
            self.specificity_ci = intervals.wilson(self.tn, self.tn + self.fp)


def class_figures(cm: np.ndarray, class_names) -> list[ClassFigures]:
    total = int(cm.sum())
    figures = []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = total - tp - fn - fp
        figures.append(
            ClassFigures(
                name=name,
                support=tp + fn,
                tp=tp,
                fp=fp,
                fn=fn,
                tn=tn,
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn),
                specificity=_ratio(tn, tn + fp),
                f1=_ratio(2 * tp, 2 * tp + fp + fn),
            )
        )
    return figures


def accuracy(cm: np.ndarray) -> float:
    return _ratio(np.trace(cm), cm.sum())


def macro(values) -> float:
    """Unweighted mean over classes, leaving out undefined (NaN) ones."""
    values = np.asarray([v for v in values if not np.isnan(v)], float)
    return float(values.mean()) if values.size else float("nan")


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, bool)
    order = np.argsort(-np.asarray(score, float), kind="mergesort")
    score, positive = np.asarray(score, float)[order], positive[order]
    # One point per distinct score: the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(score))[0], score.size - 1]
    tps = np.cumsum(positive)[last]
    fps = (last + 1) - tps
    n_pos, n_neg = positive.sum(), (~positive).sum()
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(last.size + 1, np.nan)
    return fpr, tpr


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random
    negative, ties counting half (the Mann-Whitney statistic)."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first copy
    return (starts + (counts + 1) / 2.0)[inverse]


@dataclass
class Calibration:
    """Reliability of the top-1 probability, in equal-width confidence bins."""

    edges: np.ndarray  # bins+1 edges over [0, 1]
    counts: np.ndarray  # images per bin
    accuracy: np.ndarray  # share correct per bin (NaN when empty)
    confidence: np.ndarray  # mean top-1 probability per bin (NaN when empty)
    ece: float  # expected calibration error: sum_b n_b/N * |acc_b - conf_b|


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    return calibration(labels, probs, bins).ece


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> Calibration:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi]; the first also holds 0.
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=bins) / counts
        conf = np.bincount(which, weights=confidence, minlength=bins) / counts
    filled = counts > 0
    ece = (
        float(np.sum(counts[filled] / counts.sum() * np.abs(acc[filled] - conf[filled])))
        if counts.sum()
        else float("nan")
    )
    return Calibration(edges, counts, acc, conf, ece)


@dataclass
class Figures:
    """Everything the report shows about one set of evaluated images."""

    n: int
    confusion: np.ndarray  # counts [actual, predicted]
    accuracy: float
    per_class: list[ClassFigures]
    macro_f1: float
    macro_auc: float
    calibration: Calibration | None
    roc: list[tuple[np.ndarray, np.ndarray]]  # per class (fpr, tpr)
    macro_auc_ci: tuple[float, float] = NAN_INTERVAL  # bootstrap over images or patients
    ece_ci: tuple[float, float] = NAN_INTERVAL  # bootstrap over images or patients
    accuracy_ci: tuple[float, float] | None = None  # None: Wilson over the images
    # How every interval was drawn (intervals.WILSON: proportions by Wilson, the rest
    # by a bootstrap over images; intervals.PATIENT_BOOTSTRAP: all over patients) and
    # over how many units (patients / groups; n when each image is its own).
    interval_method: str = intervals.WILSON
    units: int | None = None
    correct: int = field(init=False, default=0)

    def __post_init__(self):
        self.correct = int(np.trace(self.confusion))
        if self.accuracy_ci is None:
            self.accuracy_ci = intervals.wilson(self.correct, self.n)
        if self.units is None:
            self.units = self.n

    @property
    def units_text(self) -> str:
        """'812 images from 143 patients / groups' or '812 images, each its own unit'."""
        return intervals.units_text(self.n, self.units, self.interval_method)

    @property
    def intervals_text(self) -> str:
        """'812 images from 143 patients / groups; 95 % intervals: bootstrap over patients'."""
        return intervals.statement(self.n, self.units, self.interval_method)

    @property
    def ece(self) -> float:
        return self.calibration.ece if self.calibration else float("nan")


def figures(cm: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names, patients=None) -> Figures:
    """Counting figures from `cm`; ranking and calibration figures from the probabilities.

    `cm` is passed in, not recomputed, so the as-is figures can come from TFMA's
    own confusion matrix; `labels`/`probs` are the same images. `patients`: the unit
    of each image (btmri.spec.PATIENT_KEY); when some unit holds more than one image,
    every interval is a bootstrap over units (btmri.intervals.interval_method).
    """
    per_class = class_figures(cm, class_names)
    labels, probs = np.asarray(labels), np.asarray(probs)
    if patients is not None and len(patients) != len(labels):
        raise ValueError(f"{len(patients)} patients for {len(labels)} images")
    method = intervals.interval_method(patients)
    groups = patients if method == intervals.PATIENT_BOOTSTRAP else None
    roc = []
    for k, fig in enumerate(per_class):
        positive = labels == k
        fig.auc = roc_auc(positive, probs[:, k]) if len(labels) else float("nan")
        roc.append(roc_curve(positive, probs[:, k]) if len(labels) else (np.zeros(1), np.zeros(1)))
    macro_auc_ci = ece_ci = NAN_INTERVAL
    if len(labels):
        for k, fig in enumerate(per_class):
            fig.auc_ci = intervals.bootstrap(
                lambda y, p, k=k: roc_auc(y == k, p[:, k]), [labels, probs], groups=groups
            )
        macro_auc_ci = intervals.bootstrap(
            lambda y, p: macro(roc_auc(y == k, p[:, k]) for k in range(len(class_names))),
            [labels, probs],
            groups=groups,
        )
        ece_ci = intervals.bootstrap(expected_calibration_error, [labels, probs], groups=groups)
    accuracy_ci, units = None, None if patients is None else intervals.count_units(patients, len(labels))
    if groups is not None:
        accuracy_ci = _patient_intervals(per_class, labels, probs.argmax(axis=1), groups)
    return Figures(
        n=int(cm.sum()),
        confusion=cm,
        accuracy=accuracy(cm),
        per_class=per_class,
        macro_f1=macro(f.f1 for f in per_class),
        macro_auc=macro(f.auc for f in per_class),
        calibration=calibration(labels, probs) if len(labels) else None,
        roc=roc,
        macro_auc_ci=macro_auc_ci,
        ece_ci=ece_ci,
        accuracy_ci=accuracy_ci,
        interval_method=method,
        units=units,
    )


def _patient_intervals(
    per_class: list[ClassFigures], labels: np.ndarray, predicted: np.ndarray, patients
) -> tuple[float, float]:
    """Sets the per-class proportions' intervals by the bootstrap over patients and
    returns accuracy's. Recall of class k: per patient, the correct answers among its
    images of class k over its images of class k; precision: among the images predicted
    k; specificity: the images of other classes not predicted k."""
    method = intervals.PATIENT_BOOTSTRAP
    codes, units = intervals.unit_codes(patients)
    correct = predicted == labels

    def ci(hits, mask=None):
        return intervals.ratio_interval(*intervals.unit_sums(hits, codes, units, mask), method)

    for k, fig in enumerate(per_class):
        fig.recall_ci = ci(correct, labels == k)
        fig.precision_ci = ci(correct, predicted == k)
        fig.specificity_ci = ci(predicted != k, labels != k)
    return ci(correct)
