"""Live performance in `btmri monitor`: how the served model does on the window's
reviewed requests, against what it scored in its own evaluation (docs/monitoring.md).

1. The join: the current review (pipeline/review/store.py; a later review supersedes
   an earlier one) of every request of the window, matched by record id, the name
   pipeline/review/cases.py gives each logged image, with the model's answer read back
   from the log. "unusable" reviews name no class: counted, left out of every figure.
2. The figures, as `btmri evaluate` counts them (pipeline/site_evaluation.py: an
   abstention is not a right answer): accuracy and per-class recall. The review page
   lists abstentions first and then a sample of the answered requests, so reviewed
   requests over-represent abstentions: each reviewed request stands for the window's
   requests of its kind (abstained or answered) that nobody reviewed (post-
   stratification), and the figures estimate the window's, not the review queue's.
   Abstentions nobody reviewed count as wrong answers of unknown class (in accuracy
   only). Intervals: Wilson over the reviews' effective number (Kish's: the number
   reviewed when every review stands for as many requests).
3. What to expect: the pushed model's own evaluation, found in ML Metadata as the
   baseline is (the run that pushed the version that answered the window): per class,
   TFMA's top-class recall and share answered (the Evaluator's label slices), and
   overall the share answered with the true class (the ModelReport's summary). Per
   class, the share answered with the true class lies between r + a - 1 and min(r, a)
   (r: top-class recall, a: share answered); TFMA does not record where, so it is taken
   as r - w(1 - a), with w the evaluated split's overall share of abstentions whose top
   class was right, which makes the classes add up to the recorded overall figure.
4. The alarms, calibrated as the drift thresholds are (pipeline/drift_calibration.py):
   under the null hypothesis the site's requests are answered at the evaluated split's
   rates, at this window's class mix. The evaluation measured those rates on a few
   hundred images, so each draw takes them from their posterior (per class: answered
   right, answered wrong, abstained; Jeffreys' prior), then simulates the window (its
   abstentions; the classes and right answers of as many reviewed requests of each
   kind as were reviewed), estimates its figures as step 2 does and records each
   figure's shortfall: the evaluation's figure minus the window's. One rank for all
   checked figures (family_thresholds, the max-statistic method), so at most
   `false_alarm_rate` of healthy windows raise any live-performance alarm. A figure
   worth fewer than MIN_REVIEWS effective reviews is shown, not checked.

NumPy only, apart from reading the log and the evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from btmri import spec
from btmri.intervals import WILSON, format_interval, proportion, wilson
from pipeline.drift_calibration import CalibrationOptions, family_thresholds
from pipeline.site_evaluation import Row, json_ready
from pipeline.site_evaluation import figures as evaluate_figures

# Below this many effective reviews a figure's interval spans most of [0, 1]: it is
# shown, not checked.
MIN_REVIEWS = 20
ACCURACY = "accuracy"
# How a figure's interval was computed when reviews stand for unequal numbers of requests.
EFFECTIVE_WILSON = "wilson over the effective number of reviews"
# A check's status.
OK, ALARM, TOO_FEW, NO_EXPECTED, NOT_ESTIMATED = (
    "ok",
    "alarm",
    "too few reviews",
    "no expected figure",
    "not estimated",
)
ANSWERED, ABSTAINED = 0, 1  # the two kinds of request, by what the model did
_CLASSES = spec.NUM_CLASSES
_SLACK = 1e-9  # floating-point noise between a shortfall and its threshold


# ---- the join -------------------------------------------------------------------------


@dataclass
class ReviewedRequest:
    record_id: str
    label: str  # a class name, or pipeline.review.store.UNUSABLE
    abstained: bool  # as logged
    row: Row | None  # the answer as `btmri evaluate` reads it; None for "unusable"


def _answer_row(case, label: int) -> Row | None:
    """A logged case as site_evaluation's Row; None when the log kept no answer."""
    if case.probabilities is not None:
        probabilities = [case.probabilities[name] for name in spec.CLASS_NAMES]
    elif case.top_class in spec.CLASS_TO_ID:
        probabilities = np.eye(_CLASSES)[spec.CLASS_TO_ID[case.top_class]]
    else:
        return None
    return Row(
        path=case.record_id,
        label=label,
        probabilities=probabilities,
        abstained=case.abstain,
        reason=case.abstain_reason,
        ood_score=case.ood_score,
    )


def reviewed_requests(reviews: dict, files: Iterable[tuple[str, Path, int]]) -> tuple[list, int]:
    """The window's requests that have a current review. `reviews`: record id → Review
    (ReviewStore.current()); `files`: (closed name, path to read, records to skip) of
    each window file. → (ReviewedRequests, reviewed requests whose answer the log does
    not hold readably)."""
    from pipeline.monitor import read_log_file
    from pipeline.review.cases import cases_of_record
    from pipeline.review.store import UNUSABLE

    # A record id is "<log file>#<record>/<row>" (cases.py): only files some review names are read.
    named = {record_id.rpartition("#")[0] for record_id in reviews}
    found, unreadable = [], 0
    for name, path, skip in files:
        if name not in named:
            continue
        for position, serialized in enumerate(read_log_file(str(path))):
            if position < skip:  # an earlier report's window
                continue
            try:
                cases = cases_of_record(serialized, name, position)
            except Exception:  # a damaged record: its reviews cannot be matched to an answer
                continue
            for case in cases:
                review = reviews.get(case.record_id)
                if review is None:
                    continue
                if review.label == UNUSABLE:
                    found.append(ReviewedRequest(case.record_id, review.label, case.abstain, None))
                    continue
                row = _answer_row(case, spec.CLASS_TO_ID[review.label])
                if row is None:
                    unreadable += 1
                    continue
                found.append(ReviewedRequest(case.record_id, review.label, case.abstain, row))
    return found, unreadable


# ---- the window's figures from its reviewed requests -----------------------------------


@dataclass
class Sample:
    """The window's requests and its reviewed ones, by kind (ANSWERED, ABSTAINED)."""

    window: np.ndarray  # [2] the window's requests
    reviewed: np.ndarray  # [2] of them reviewed, "unusable" included
    usable: np.ndarray  # [2, classes] reviewed with a class, by that class
    right: np.ndarray  # [classes] answered with the reviewed class (all of kind ANSWERED)

    @classmethod
    def of(cls, requests: list[ReviewedRequest], window_rows: int, window_abstained: int) -> Sample:
        reviewed = np.zeros(2, np.int64)
        usable = np.zeros((2, _CLASSES), np.int64)
        right = np.zeros(_CLASSES, np.int64)
        for request in requests:
            kind = ABSTAINED if request.abstained else ANSWERED
            reviewed[kind] += 1
            if request.row is not None:
                usable[kind, request.row.label] += 1
                right[request.row.label] += request.row.correct
        window = np.array([window_rows - window_abstained, window_abstained], np.int64)
        # A record the statistics could not read may still have been reviewed.
        return cls(np.maximum(window, reviewed), reviewed, usable, right)

    @property
    def rows(self) -> int:
        return int(self.window.sum())

    def weights(self) -> np.ndarray:
        """[2] requests of the window each reviewed request of that kind stands for (0
        for a kind nobody reviewed)."""
        return np.where(self.reviewed > 0, self.window / np.maximum(self.reviewed, 1), 0.0)

    @property
    def abstentions_unreviewed(self) -> bool:
        return bool(self.window[ABSTAINED] and not self.reviewed[ABSTAINED])

    def _pairs(self, label: int | None) -> list[tuple[float, int]]:
        """(weight, reviews) behind accuracy (label None) or one class's recall."""
        w = self.weights()
        counts = self.usable.sum(axis=1) if label is None else self.usable[:, label]
        pairs = [(float(w[ANSWERED]), int(counts[ANSWERED])), (float(w[ABSTAINED]), int(counts[ABSTAINED]))]
        if label is None and self.abstentions_unreviewed:
            pairs[ABSTAINED] = (1.0, int(self.window[ABSTAINED]))  # each stands for itself
        return [(weight, n) for weight, n in pairs if n]

    def equal_weights(self, label: int | None = None) -> bool:
        """Whether every review behind the figure stands for as many requests."""
        return len({weight for weight, _ in self._pairs(label)}) <= 1

    def effective(self, label: int | None = None) -> float:
        """Kish's effective number of the reviews behind accuracy (label None) or one
        class's recall: (sum of weights)^2 / sum of squared weights."""
        pairs = self._pairs(label)
        total = sum(weight * n for weight, n in pairs)
        squares = sum(weight * weight * n for weight, n in pairs)
        return float(total * total / squares) if squares > 0 else 0.0


def estimates(
    abstained, rows: int, reviewed: np.ndarray, usable: np.ndarray, right: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [D], recall [D, classes]) of windows of `rows` requests, `abstained[d]`
    of them abstentions, from their reviewed requests: usable [D, 2, classes] and right
    [D, classes] (one window per leading index; `reviewed` [2] as Sample's). Each
    reviewed request counts for the requests of its kind; unreviewed abstentions count
    as wrong answers of unknown class. NaN where a figure has no reviewed request."""
    abstained = np.asarray(abstained, np.float64)
    answered = rows - abstained
    if reviewed[ANSWERED]:
        w_answered = answered / reviewed[ANSWERED]
    else:  # nothing known of the answered requests, unless there are none
        w_answered = np.where(answered > 0, np.nan, 0.0)
    hits = w_answered[:, None] * right
    mass = w_answered[:, None] * usable[:, ANSWERED]
    unknown = np.zeros_like(abstained)
    if reviewed[ABSTAINED]:
        mass = mass + (abstained / reviewed[ABSTAINED])[:, None] * usable[:, ABSTAINED]
    else:
        unknown = abstained
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = hits.sum(axis=1) / (mass.sum(axis=1) + unknown)
        recall = hits / mass
    return accuracy, recall


# ---- what to expect ---------------------------------------------------------------------


@dataclass
class Expected:
    """What the pushed model scored on its evaluated split (abstentions count as wrong)."""

    split: str
    images: dict[str, int]  # per class
    recall: dict[str, float]  # answered with the class / the class's images
    answered: dict[str, float]  # share not abstained on; 1.0 for a model without abstention
    accuracy: float  # answered with the true class / all images
    derived: bool = False  # per-class recall derived from top-class recall (module docstring)
    version: int | None = None  # the served version whose pushing run evaluated it; None: the latest run
    source: str = ""  # the Evaluator's output folder
    note: str = ""  # why it is not the served version's own evaluation

    @property
    def n(self) -> int:
        return sum(self.images.values())

    @property
    def abstained(self) -> float:
        return 1.0 - sum(self.images[c] * self.answered[c] for c in self.images) / max(self.n, 1)


def expected_from(
    split: str, per_class: dict[str, tuple[int, float, float]], answered_right: float | None, **about
) -> Expected:
    """Expected figures from what the run recorded. `per_class`: class → (images, top-class
    recall, share answered) as TFMA records them per label slice (share answered NaN for a
    model without abstention); `answered_right`: the share of all images answered with
    their class (the ModelReport's), None when not recorded."""
    classes = {name: v for name, v in per_class.items() if v[0] > 0 and math.isfinite(v[1])}
    images = {name: int(v[0]) for name, v in classes.items()}
    top = {name: float(v[1]) for name, v in classes.items()}
    answered = {name: float(v[2]) if math.isfinite(v[2]) else 1.0 for name, v in classes.items()}
    n = sum(images.values())
    top_all = sum(images[c] * top[c] for c in images) / max(n, 1)
    answered_all = sum(images[c] * answered[c] for c in images) / max(n, 1)
    if answered_all >= 1.0:  # nothing abstained: the answer is the top class
        recall, derived = dict(top), False
        accuracy = top_all if answered_right is None else answered_right
    else:
        # Share of abstentions whose top class was right; unrecorded: all (the least recall).
        share = 1.0 if answered_right is None else (top_all - answered_right) / (1.0 - answered_all)
        share = min(1.0, max(0.0, share))
        recall = {
            c: max(0.0, top[c] + answered[c] - 1.0, min(answered[c], top[c] - share * (1.0 - answered[c])))
            for c in images
        }
        derived = True
        accuracy = (
            sum(images[c] * recall[c] for c in images) / max(n, 1)
            if answered_right is None
            else answered_right
        )
    return Expected(split, images, recall, answered, float(accuracy), derived, **about)


def read_expected(evaluation_uri: str, report_uri: str | None) -> Expected:
    """Expected figures from an Evaluator's output (TFMA, the candidate's label slices)
    and, when given, its run's ModelReport (summary.json: the share answered right)."""
    from components.evaluation import ACCEPTANCE
    from components.evaluation import ACCURACY as TOP_CLASS_ACCURACY
    from pipeline.report import read_summary
    from pipeline.report.tfma_results import flatten_metrics, load_candidate

    per_class = {}
    for key, metrics in load_candidate(evaluation_uri).slicing_metrics:
        if len(key) == 1 and key[0][0] == spec.LABEL_KEY and 0 <= int(key[0][1]) < _CLASSES:
            flat = flatten_metrics(metrics)
            per_class[spec.CLASS_NAMES[int(key[0][1])]] = (
                int(flat.get("example_count", 0)),
                flat.get(TOP_CLASS_ACCURACY, math.nan),
                flat.get(ACCEPTANCE, math.nan),
            )
    summary = (read_summary(report_uri) if report_uri else None) or {}
    abstention = summary.get("abstention")
    answered_right = None
    if abstention:
        accepted, right = abstention.get("acceptance"), abstention.get("accuracy_answered")
        if accepted is not None:
            answered_right = 0.0 if not accepted else float(right) * float(accepted)
    elif summary.get("accuracy") is not None:  # no abstention outputs: the top class answers
        answered_right = float(summary["accuracy"])
    return expected_from(summary.get("evaluated_split", ""), per_class, answered_right, source=evaluation_uri)


def find_expected(pipeline_root: str, version: int | None) -> tuple[Expected | None, str]:
    """(the expected figures of the run that pushed serving version `version`, or of the
    latest run with a note when none did; why there are none)."""
    from pipeline.config import PipelineConfig, missing_store_message
    from pipeline.metadata import latest_output, outputs_of_pushing_run, served_outputs

    config = PipelineConfig(pipeline_root=pipeline_root, data_root="", serving_dir="")
    if missing := missing_store_message(config):
        return None, missing
    found, matched, note = served_outputs(
        config, version, "Evaluator", ("evaluation",), "expected figures from the latest run's evaluation"
    )
    if found is None:
        return None, f"no Evaluator output in {pipeline_root} to take the expected figures from"
    evaluation = found["evaluation"]
    if matched is not None:  # that run's report, never another run's
        reported = outputs_of_pushing_run(config, matched, "ModelReport", ("report",))
        report = reported["report"] if reported else None
    else:
        report = latest_output(config, "ModelReport", "report")
    expected = read_expected(evaluation.uri, report.uri if report is not None else None)
    expected.version, expected.note = matched, note
    return expected, ""


# ---- the checks -----------------------------------------------------------------------


@dataclass
class Check:
    """One figure of the window against its expectation."""

    figure: str  # ACCURACY or a class name (its recall)
    value: float  # the window's estimate; NaN: not estimated
    ci95: list[float]
    reviewed: int  # reviewed requests with a class behind it
    effective: float  # what they are worth as independent reviews
    method: str  # how the interval was computed
    expected: float | None = None  # the evaluation's figure (accuracy: at this window's class mix)
    alarm_below: float | None = None  # a healthy window is below this at most at the false-alarm rate
    status: str = NOT_ESTIMATED

    @property
    def title(self) -> str:
        return ACCURACY if self.figure == ACCURACY else f"recall {self.figure}"


def _rates(expected: Expected) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, share answered, images) per class in CLASS_NAMES order; a class the
    evaluation had no image of takes the overall figures."""
    overall_answered = 1.0 - expected.abstained
    recall = np.array([expected.recall.get(c, expected.accuracy) for c in spec.CLASS_NAMES])
    answered = np.array([expected.answered.get(c, overall_answered) for c in spec.CLASS_NAMES])
    images = np.array([expected.images.get(c, 0) for c in spec.CLASS_NAMES], np.int64)
    return recall, np.maximum(answered, recall), images


def class_mix(sample: Sample, answered: np.ndarray) -> np.ndarray:
    """[classes] the window's share of each class among usable requests, estimated from
    its reviews (with abstentions unreviewed, from the answered ones and each class's
    share answered in the evaluation)."""
    w = sample.weights()
    if sample.abstentions_unreviewed:
        mass = w[ANSWERED] * sample.usable[ANSWERED] / np.maximum(answered, 1e-9)
    else:
        mass = w[ANSWERED] * sample.usable[ANSWERED] + w[ABSTAINED] * sample.usable[ABSTAINED]
    total = mass.sum()
    return mass / total if total > 0 else np.full(_CLASSES, 1.0 / _CLASSES)


def null_shortfalls(sample: Sample, expected: Expected, mix: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """[draws, 1 + classes]: the evaluation's figure minus the window's estimate, for
    accuracy then each class's recall, over healthy windows shaped like `sample`
    (module docstring, step 4); -inf where a draw has no reviewed request of a class."""
    rng = np.random.default_rng(seed)
    recall, answered, images = _rates(expected)
    # The evaluation's rates are estimates from its images: each draw takes them from
    # their posterior (per class answered right, answered wrong, abstained; Jeffreys'
    # prior). A plug-in rate near 1 would make healthy windows look tighter than they are.
    true_recall, true_answered = np.tile(recall, (draws, 1)), np.tile(answered, (draws, 1))
    for c in np.flatnonzero(images):
        outcome = np.clip([recall[c], answered[c] - recall[c], 1.0 - answered[c]], 0.0, None)
        shares = rng.dirichlet(images[c] * outcome / outcome.sum() + 0.5, size=draws)
        true_recall[:, c], true_answered[:, c] = shares[:, 0], shares[:, 0] + shares[:, 1]
    # The window: requests found unusable stay as estimated; the usable ones abstain at
    # those rates, at this window's class mix.
    unusable = sample.weights() * (sample.reviewed - sample.usable.sum(axis=1))
    usable_rows = max(0, int(round(sample.rows - unusable.sum())))
    abstain_share = np.clip((1.0 - true_answered) @ mix, 0.0, 1.0)
    abstained = unusable[ABSTAINED] + rng.binomial(usable_rows, abstain_share)

    def classes_of(weights: np.ndarray) -> np.ndarray:
        total = weights.sum(axis=1, keepdims=True)
        return np.where(total > 0, weights / np.where(total > 0, total, 1.0), mix)

    reviewed_usable = sample.usable.sum(axis=1)
    usable = np.stack(
        [
            rng.multinomial(reviewed_usable[ANSWERED], classes_of(mix * true_answered)),
            rng.multinomial(reviewed_usable[ABSTAINED], classes_of(mix * (1.0 - true_answered))),
        ],
        axis=1,
    )
    right = rng.binomial(
        usable[:, ANSWERED], np.clip(true_recall / np.maximum(true_answered, 1e-9), 0.0, 1.0)
    )
    accuracy, recalls = estimates(abstained, sample.rows, sample.reviewed, usable, right)
    shortfalls = np.column_stack([recall @ mix - accuracy, recall - recalls])
    return np.where(np.isnan(shortfalls), -np.inf, shortfalls)


def _interval(value: float, effective: float) -> list[float]:
    if not math.isfinite(value) or effective <= 0:
        return [math.nan, math.nan]
    return list(wilson(value * effective, effective))


def assess(
    sample: Sample, expected: Expected | None, options: CalibrationOptions, min_reviews: int = MIN_REVIEWS
) -> tuple[list[Check], float | None]:
    """(accuracy's check, then each class's recall's; the share of the null draws that
    alarmed, None when nothing was checked)."""
    accuracy, recall = estimates(
        [sample.window[ABSTAINED]], sample.rows, sample.reviewed, sample.usable[None], sample.right[None]
    )
    figures = [(ACCURACY, float(accuracy[0]), int(sample.usable.sum()), None)]
    figures += [
        (name, float(recall[0, c]), int(sample.usable[:, c].sum()), c)
        for c, name in enumerate(spec.CLASS_NAMES)
    ]
    checks = []
    for figure, value, reviewed, label in figures:
        effective = sample.effective(label)
        method = WILSON if sample.equal_weights(label) else EFFECTIVE_WILSON
        checks.append(
            Check(figure, value, _interval(value, effective), reviewed, round(effective, 1), method)
        )
    if expected is None:
        for check in checks:
            check.status = NO_EXPECTED if math.isfinite(check.value) else NOT_ESTIMATED
        return checks, None
    recall_expected, answered, _ = _rates(expected)
    mix = class_mix(sample, answered)
    targets = [float(recall_expected @ mix)] + [expected.recall.get(name) for name in spec.CLASS_NAMES]
    checked = []
    for j, (check, target) in enumerate(zip(checks, targets)):
        check.expected = target
        if not math.isfinite(check.value):
            check.status = NOT_ESTIMATED
        elif target is None:
            check.status = NO_EXPECTED
        elif check.effective < min_reviews:
            check.status = TOO_FEW
        else:
            checked.append(j)
    if not checked:
        return checks, None
    null = null_shortfalls(sample, expected, mix, options.draws, options.seed)[:, checked]
    thresholds, rate = family_thresholds(null, options.false_alarm_rate)
    for j, threshold in zip(checked, thresholds):
        check = checks[j]
        check.alarm_below = check.expected - float(threshold)
        check.status = ALARM if check.expected - check.value > threshold + _SLACK else OK
    return checks, rate


# ---- the section of a monitor report ---------------------------------------------------


@dataclass
class LivePerformance:
    """The live-performance section of one monitor report (window.json's
    `live_performance`, monitor.html's "Live performance")."""

    reviews: str = ""  # the review store: its file, or its URL without a password
    unavailable: str = ""  # why there are no figures (no database, nothing reviewed)
    window_rows: int = 0
    window_abstained: int = 0
    reviewed: int = 0  # the window's requests with a current review ("unusable" included)
    reviewed_abstained: int = 0
    unusable: int = 0
    unreadable: int = 0  # reviewed requests whose answer the log does not hold readably
    abstained: dict | None = None  # the window's share of abstentions (btmri.intervals.proportion)
    checks: list[Check] = field(default_factory=list)
    expected: Expected | None = None
    false_alarm_rate: float = 0.0
    in_sample_rate: float | None = None  # share of the null draws that alarmed
    draws: int = 0
    min_reviews: int = MIN_REVIEWS
    notes: list[str] = field(default_factory=list)
    # `btmri evaluate`'s figures of the reviewed requests themselves, unweighted
    # (pipeline/site_evaluation.py): the confusion matrix and what the reviews saw.
    reviewed_figures: dict | None = None

    @property
    def alarms(self) -> list[Check]:
        return [c for c in self.checks if c.status == ALARM]

    def to_dict(self) -> dict:
        return json_ready(asdict(self))

    def expected_text(self) -> str:
        e = self.expected
        if e is None:
            return "no expected figures"
        whose = f"version {e.version}" if e.version is not None else "the latest run"
        return f"the evaluation of {whose} ({e.split or 'evaluated'} split, {e.n} images)"

    def description(self) -> str:
        """How much of the window was reviewed and where the reviews are, or why there are none."""
        if self.unavailable:
            return self.unavailable[:1].upper() + self.unavailable[1:]
        return (
            f"{self.reviewed} of the window's {self.window_rows} requests reviewed "
            f"({self.reviewed_abstained} of its {self.window_abstained} abstentions; {self.unusable} "
            f"unusable) in {self.reviews}; expected: {self.expected_text()}"
        )

    def summary(self) -> str:
        """The printed first line."""
        text = self.description()
        return f"live performance: {text[:1].lower()}{text[1:]}"

    def alarm_lines(self) -> list[str]:
        return [
            f"live {c.title} {c.value:.3f} {format_interval(c.ci95)} is below {c.alarm_below:.3f} "
            f"(expected {c.expected:.3f}; {c.reviewed} reviewed requests): healthy windows reviewed "
            f"so fall below a bound at most at the false-alarm rate {self.false_alarm_rate:g}"
            for c in self.alarms
        ]

    def lines(self) -> list[str]:
        """The printed table: each figure, its interval, reviews, expectation and verdict."""
        out = [self.summary()]
        if self.unavailable:
            return out
        out.append(
            f"  {'figure':<20} {'live':>6} {'95 % interval':<16} {'reviews':>13} {'expected':>8} "
            f"{'alarm below':>11}  status"
        )
        for c in self.checks:
            value = "–" if not math.isfinite(c.value) else f"{c.value:.3f}"
            reviews = f"{c.reviewed}" + ("" if c.method == WILSON else f" (≈{c.effective:g})")
            expected = "–" if c.expected is None else f"{c.expected:.3f}"
            below = "–" if c.alarm_below is None else f"{c.alarm_below:.3f}"
            out.append(
                f"  {c.title:<20} {value:>6} {format_interval(c.ci95):<16} {reviews:>13} {expected:>8} "
                f"{below:>11}  {c.status}"
            )
        if self.abstained is not None:
            expected = "" if self.expected is None else f"; expected {self.expected.abstained:.3f}"
            out.append(
                f"  {'abstained (window)':<20} {self.abstained['value']:>6.3f} "
                f"{format_interval(self.abstained['ci95']):<16} {self.abstained['n']:>13}"
                f"{expected}"
            )
        return out


def live_performance(
    where: str,
    reviews: dict,
    files: Iterable[tuple[str, Path, int]],
    window_rows: int,
    window_abstained: int,
    expected_for: Callable[[], tuple[Expected | None, str]],
    options: CalibrationOptions,
    min_reviews: int = MIN_REVIEWS,
) -> LivePerformance:
    """The section for one window: `where` and `reviews` (record id → current Review)
    from the review store, `files` as reviewed_requests() takes them, the window's
    rows and abstentions (from its statistics), `expected_for()` → (Expected or None,
    why none) called only when some request of the window was reviewed."""
    from pipeline.review.store import UNUSABLE

    result = LivePerformance(
        reviews=where,
        window_rows=int(window_rows),
        window_abstained=int(window_abstained),
        abstained=proportion(int(window_abstained), int(window_rows)),
        false_alarm_rate=options.false_alarm_rate,
        min_reviews=min_reviews,
    )
    requests, result.unreadable = reviewed_requests(reviews, files)
    result.reviewed = len(requests)
    result.reviewed_abstained = sum(r.abstained for r in requests)
    result.unusable = sum(r.label == UNUSABLE for r in requests)
    if result.unreadable:
        result.notes.append(
            f"{result.unreadable} reviewed requests left out: the log holds no readable answer for them"
        )
    if not requests:
        result.unavailable = (
            f"none of the window's {window_rows} requests has been reviewed in {where} "
            "(`btmri review` lists them)"
        )
        return result
    rows = [r.row for r in requests if r.row is not None]
    if rows:
        result.reviewed_figures = evaluate_figures(rows)
    sample = Sample.of(requests, window_rows, window_abstained)
    result.expected, why = expected_for()
    if why:
        result.notes.append(why)
    if result.expected is not None and result.expected.note:
        result.notes.append(result.expected.note)
    result.checks, result.in_sample_rate = assess(sample, result.expected, options, min_reviews)
    result.draws = options.draws if result.in_sample_rate is not None else 0
    if sample.window[ANSWERED] and not sample.reviewed[ANSWERED]:
        result.notes.append(
            "no answered request of this window has been reviewed: its figures cannot be estimated"
        )
    if sample.abstentions_unreviewed:
        result.notes.append(
            f"none of the window's {int(sample.window[ABSTAINED])} abstentions has been reviewed: "
            "they count as wrong answers in accuracy, and per-class recall counts answered requests only"
        )
    if any(c.status == TOO_FEW for c in result.checks):
        weighted = (
            ""
            if not result.checks or result.checks[0].method == WILSON
            else (
                "; reviews of the kind the window has more of unreviewed (answered requests, as a rule) "
                "are worth more than one each, and the effective number counts that"
            )
        )
        result.notes.append(
            f"figures worth fewer than {min_reviews} effective reviews are shown, not checked{weighted}"
        )
    if result.expected is not None and result.expected.derived:
        result.notes.append(
            "expected per-class recall derived from the evaluation's top-class recall and share "
            "answered per class (TFMA does not record their overlap; docs/monitoring.md)"
        )
    return result
