"""Live performance in `btmri monitor` (pipeline/live_performance.py): the window's
reviewed requests against the pushed model's own evaluation.

Fast and synthetic: the request logs are written by the server's own logger
(serving/request_log.py) from answers made up per request, the reviews by the review
store (pipeline/review/store.py) under the record ids the review page gives
(pipeline/review/cases.py). The expected figures stand for an evaluation of 200 images
per class in which the model answers 90 % of each class right and abstains on 5 %.
The calibration test draws healthy windows afresh (the evaluation included), not from
the figures the alarms are calibrated on.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pytest

from btmri import spec
from btmri.documents import ServerOptions
from btmri.layout import MONITOR_REPORT_FILE, MONITOR_WINDOW_FILE
from pipeline.drift_calibration import CalibrationOptions
from pipeline.live_performance import (
    ACCURACY,
    ALARM,
    EFFECTIVE_WILSON,
    MIN_REVIEWS,
    NOT_ESTIMATED,
    OK,
    TOO_FEW,
    Sample,
    assess,
    expected_from,
    live_performance,
)
from pipeline.monitor_cli import reviews_target
from pipeline.review.cases import load_cases
from pipeline.review.store import UNUSABLE, Review, default_db, open_store, utc_now
from serving.request_log import RequestLog, log_files

VERSION = 7
BATCH = 8  # images per logged call
PER_CLASS = 150  # requests of each class in a window
# The evaluation: per class 200 images, top class right on 93 %, 95 % answered, 90 %
# answered right (so 60 % of the abstentions had the right top class).
EVALUATED = 200
EXPECTED = expected_from(
    "test", {name: (EVALUATED, 0.93, 0.95) for name in spec.CLASS_NAMES}, 0.90, version=VERSION
)


def _outputs(top: list[int], abstain: list[bool]) -> dict[str, np.ndarray]:
    n = len(top)
    probabilities = np.full((n, spec.NUM_CLASSES), 0.1, np.float32)
    probabilities[np.arange(n), top] = 0.7
    return {
        spec.PROBABILITIES: probabilities,
        spec.CLASS_ID: np.array(top, np.int64),
        spec.CLASS_NAME: np.array([spec.CLASS_NAMES[k].encode() for k in top], object),
        spec.OOD_SCORE: np.full(n, 0.4, np.float32),
        spec.ABSTAIN: np.array(abstain),
        spec.ABSTAIN_REASON: np.array(
            [spec.REASON_LOW_CONFIDENCE.encode() if a else b"" for a in abstain], object
        ),
    }


def window(right: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """PER_CLASS requests per class, shuffled: 8 abstentions (top class right) and
    `right[class]` (default 135, the evaluation's 90 %) answered right, the rest
    answered with the next class. → {"truth", "top", "abstain"}."""
    right = right or {}
    truth, top, abstain = [], [], []
    for c, name in enumerate(spec.CLASS_NAMES):
        k = right.get(name, 135)
        truth += [c] * PER_CLASS
        top += [c] * 8 + [c] * k + [(c + 1) % spec.NUM_CLASSES] * (PER_CLASS - 8 - k)
        abstain += [True] * 8 + [False] * (PER_CLASS - 8)
    order = np.random.default_rng(seed).permutation(len(truth))
    return {
        key: np.asarray(values)[order]
        for key, values in (("truth", truth), ("top", top), ("abstain", abstain))
    }


def write_log(folder: Path, requests: dict[str, np.ndarray]) -> list:
    """The requests as `btmri serve --request-log DIR --log-payload none` logs them,
    BATCH per call. → the review page's cases, in request order."""
    log = RequestLog(
        ServerOptions(model_base_path="-", request_log_dir=str(folder), log_payload=spec.LOG_PAYLOAD_NONE)
    )
    n = len(requests["truth"])
    for i in range(0, n, BATCH):
        part = slice(i, i + BATCH)
        log.offer(
            spec.MODEL_NAME,
            spec.PREDICT_IMAGES,
            {spec.IMAGE_BYTES_INPUT: np.array([b"x"] * len(requests["top"][part]), object)},
            VERSION,
            _outputs(list(requests["top"][part]), list(requests["abstain"][part])),
        )
    log.close()
    assert log.written == -(-n // BATCH) and not log.dropped
    assert len(log_files(folder)) == 1  # so a case's place in the file is its place in `requests`
    cases = load_cases(folder, max_abstained=10**6, answered=10**6).cases
    return sorted(cases, key=lambda case: case.record * BATCH + case.row)


def review(store, cases: list, requests: dict, chosen, label=None) -> None:
    """Reviews of the chosen requests with their true class (or `label`)."""
    for i in chosen:
        case = cases[i]
        store.add(
            Review(
                record_id=case.record_id,
                label=label or spec.CLASS_NAMES[requests["truth"][i]],
                reviewer="ana",
                reviewed_at=utc_now(),
                model_name=case.model_name,
                model_version=case.model_version,
                model_answer=case.top_class,
                abstain_reason=case.abstain_reason,
            )
        )


def review_page_choice(requests: dict, answered_per_class: int) -> list[int]:
    """What a reviewer gets through on the review page: every abstention, then
    `answered_per_class` answered requests of each class, right and wrong ones in the
    window's proportion."""
    chosen = list(np.flatnonzero(requests["abstain"]))
    for c in range(spec.NUM_CLASSES):
        answered = np.flatnonzero((requests["truth"] == c) & ~requests["abstain"])
        hits = answered[requests["top"][answered] == c]
        misses = answered[requests["top"][answered] != c]
        k = round(answered_per_class * len(hits) / len(answered))
        chosen += list(hits[:k]) + list(misses[: answered_per_class - k])
    return chosen


def assessed(folder: Path, requests: dict, expected=EXPECTED, rate: float = 0.05):
    db = folder.parent / f"{folder.name}.sqlite"
    store = open_store(str(db))
    try:
        return live_performance(
            store.where,
            store.current(),
            [(p.name, p, 0) for p in log_files(folder)],
            len(requests["truth"]),
            int(requests["abstain"].sum()),
            lambda: (expected, ""),
            CalibrationOptions(false_alarm_rate=rate),
        )
    finally:
        store.close()


def reviewed_window(tmp_path: Path, right=None, answered_per_class: int = 50):
    folder = tmp_path / "requests"
    requests = window(right)
    cases = write_log(folder, requests)
    store = open_store(str(tmp_path / "requests.sqlite"))
    review(store, cases, requests, review_page_choice(requests, answered_per_class))
    store.close()
    return folder, requests, cases


def _check(result, figure):
    (check,) = [c for c in result.checks if c.figure == figure]
    return check


# ---- the figures and their alarms --------------------------------------------------------


def test_a_window_answered_as_the_evaluation_raises_no_alarm(tmp_path):
    folder, requests, _ = reviewed_window(tmp_path)
    result = assessed(folder, requests)
    assert result.reviewed == 32 + 4 * 50 and result.reviewed_abstained == 32
    assert not result.alarms, result.lines()
    accuracy = _check(result, ACCURACY)
    assert accuracy.status == OK and accuracy.expected == pytest.approx(0.90)
    # Abstentions are a seventh of the reviews and a nineteenth of the window: weighted
    # back, the estimate is the window's 0.90, not the reviews' 0.83.
    assert accuracy.value == pytest.approx(0.90, abs=0.015)
    assert accuracy.method == EFFECTIVE_WILSON and accuracy.effective < accuracy.reviewed
    assert accuracy.ci95[0] < accuracy.value < accuracy.ci95[1]
    assert accuracy.alarm_below < accuracy.expected
    assert result.reviewed_figures["accuracy"]["value"] < 0.85  # the reviews as they are
    assert result.in_sample_rate <= 0.05 and result.draws == CalibrationOptions().draws


def test_an_accuracy_collapse_alarms(tmp_path):
    folder, requests, _ = reviewed_window(tmp_path, right={name: 90 for name in spec.CLASS_NAMES})
    result = assessed(folder, requests)
    accuracy = _check(result, ACCURACY)
    assert accuracy.status == ALARM and accuracy.value < accuracy.alarm_below < accuracy.expected
    assert accuracy.value == pytest.approx(90 / 150, abs=0.02)
    assert any(line.startswith("live accuracy") for line in result.alarm_lines())


def test_per_class_recall_is_reported_and_one_class_collapsing_alarms_on_it(tmp_path):
    folder, requests, _ = reviewed_window(tmp_path, right={"meningioma": 60})
    result = assessed(folder, requests)
    assert [c.figure for c in result.checks] == [ACCURACY, *spec.CLASS_NAMES]
    assert _check(result, "meningioma").status == ALARM
    assert _check(result, "meningioma").value == pytest.approx(60 / 150, abs=0.03)
    for name in ("glioma", "notumor", "pituitary"):
        check = _check(result, name)
        assert check.status == OK and check.value == pytest.approx(0.9, abs=0.03), check
        assert check.expected == pytest.approx(0.9)
    assert any(line.startswith("live recall meningioma") for line in result.alarm_lines())
    assert any("recall meningioma" in line and "alarm" in line for line in result.lines())


def test_too_few_reviews_say_so_instead_of_alarming(tmp_path):
    folder = tmp_path / "requests"
    requests = window(right={name: 30 for name in spec.CLASS_NAMES})  # a collapse
    cases = write_log(folder, requests)
    store = open_store(str(tmp_path / "requests.sqlite"))
    answered = np.flatnonzero(~requests["abstain"])
    review(store, cases, requests, list(np.flatnonzero(requests["abstain"])[:5]) + list(answered[:10]))
    store.close()
    result = assessed(folder, requests)
    assert not result.alarms and result.in_sample_rate is None
    assert _check(result, ACCURACY).status == TOO_FEW
    assert {c.status for c in result.checks} <= {TOO_FEW, NOT_ESTIMATED}  # a class nobody reviewed
    assert _check(result, ACCURACY).value < 0.5  # shown, not checked
    assert any(f"fewer than {MIN_REVIEWS} effective reviews" in note for note in result.notes)


def test_the_latest_review_counts_and_unusable_ones_are_counted_not_scored(tmp_path):
    folder = tmp_path / "requests"
    requests = window()
    cases = write_log(folder, requests)
    store = open_store(str(tmp_path / "requests.sqlite"))
    answered_right = [
        i for i in np.flatnonzero(~requests["abstain"]) if requests["top"][i] == requests["truth"][i]
    ]
    wrong_label = spec.CLASS_NAMES[(requests["truth"][answered_right[0]] + 1) % spec.NUM_CLASSES]
    review(store, cases, requests, answered_right[:40], label=wrong_label)  # first thoughts
    review(store, cases, requests, answered_right[:40])  # corrected: these count
    review(store, cases, requests, answered_right[40:50], label=UNUSABLE)
    store.close()
    result = assessed(folder, requests)
    assert result.reviewed == 50 and result.unusable == 10
    accuracy = _check(result, ACCURACY)
    assert accuracy.reviewed == 40 and accuracy.value < 1.0  # unreviewed abstentions count as wrong
    assert sum(c.reviewed for c in result.checks[1:]) == 40
    assert any("none of the window's 32 abstentions has been reviewed" in n for n in result.notes)


def test_an_earlier_windows_reviews_do_not_count(tmp_path):
    folder, requests, cases = reviewed_window(tmp_path)
    store = open_store(str(tmp_path / "requests.sqlite"))
    try:
        skip = cases[-1].record  # the file's last record only is this window's
        later = live_performance(
            store.where,
            store.current(),
            [(p.name, p, skip) for p in log_files(folder)],
            BATCH,
            0,
            lambda: (EXPECTED, ""),
            CalibrationOptions(),
        )
    finally:
        store.close()
    in_window = [i for i, case in enumerate(cases) if case.record == skip]
    chosen = set(review_page_choice(requests, 50))
    assert later.reviewed == len(chosen & set(in_window)) < len(chosen)


def test_healthy_windows_alarm_at_about_the_promised_rate():
    """300 healthy windows per rate, each with an evaluation and a window drawn afresh
    from the same rates, reviewed as the page orders them: all abstentions, then a
    sample of the answered; what the alarms promise is the share that alarms at all."""
    rng = np.random.default_rng(5)
    recall = np.array([0.88, 0.92, 0.97, 0.98])  # answered right
    answered = np.array([0.94, 0.96, 0.99, 0.99])
    top = recall + 0.5 * (1 - answered)  # half the abstentions had the right top class
    mix = np.array([0.3, 0.3, 0.25, 0.15])

    def evaluation() -> object:
        per_class, right = {}, 0
        for c, name in enumerate(spec.CLASS_NAMES):
            outcome = [
                recall[c],
                answered[c] - recall[c],
                top[c] - recall[c],
                1 - top[c] - answered[c] + recall[c],
            ]
            k = rng.multinomial(EVALUATED, outcome)
            per_class[name] = (EVALUATED, (k[0] + k[2]) / EVALUATED, (k[0] + k[1]) / EVALUATED)
            right += k[0]
        return expected_from("test", per_class, right / (EVALUATED * spec.NUM_CLASSES))

    def healthy_window(rows: int = 600, reviewed_answered: int = 120) -> Sample:
        truth = rng.choice(spec.NUM_CLASSES, rows, p=mix)
        answers = rng.random(rows) < answered[truth]
        right = answers & (rng.random(rows) < recall[truth] / answered[truth])
        sample = Sample(
            np.array([answers.sum(), (~answers).sum()]),
            np.zeros(2, np.int64),
            np.zeros((2, spec.NUM_CLASSES), np.int64),
            np.zeros(spec.NUM_CLASSES, np.int64),
        )
        chosen = [
            *np.flatnonzero(~answers),
            *rng.choice(np.flatnonzero(answers), reviewed_answered, replace=False),
        ]
        for i in chosen:
            kind = 0 if answers[i] else 1
            sample.reviewed[kind] += 1
            sample.usable[kind, truth[i]] += 1
            sample.right[truth[i]] += right[i]
        return sample

    def alarm_share(rate: float, windows: int = 300) -> float:
        options = CalibrationOptions(false_alarm_rate=rate)
        alarms = 0
        for _ in range(windows):
            checks, _ = assess(healthy_window(), evaluation(), options)
            assert any(c.status == OK or c.status == ALARM for c in checks)
            alarms += any(c.status == ALARM for c in checks)
        return alarms / windows

    assert alarm_share(0.05) <= 0.09
    assert 0.18 <= alarm_share(0.3) <= 0.40


def test_the_expected_figures_add_up_to_what_the_evaluation_recorded():
    per_class = {"glioma": (197, 0.9645, 0.9543), "meningioma": (186, 0.9677, 0.9677)}
    per_class |= {"notumor": (237, 0.9873, 0.9916), "pituitary": (201, 0.995, 0.995)}
    expected = expected_from("eval", per_class, 796 / 821)
    assert expected.derived and expected.n == 821
    assert sum(expected.images[c] * expected.recall[c] for c in per_class) / 821 == pytest.approx(
        796 / 821, abs=1e-3
    )
    for name, (_, top, answered) in per_class.items():
        assert top + answered - 1 - 1e-12 <= expected.recall[name] <= min(top, answered) + 1e-12
    assert expected.abstained == pytest.approx(
        1 - (197 * 0.9543 + 186 * 0.9677 + 237 * 0.9916 + 201 * 0.995) / 821
    )
    # A model without abstention outputs answers its top class: recall is TFMA's.
    plain = expected_from("eval", {n: (100, 0.9, math.nan) for n in spec.CLASS_NAMES}, 0.9)
    assert not plain.derived and plain.recall == {n: 0.9 for n in spec.CLASS_NAMES} and plain.abstained == 0


# ---- in `btmri monitor` ------------------------------------------------------------------------


def test_monitor_reports_live_performance_in_window_json_and_the_page(tmp_path):
    from components.baseline.statistics import load_schema, rows_to_json, statistics_of_rows
    from data_prep.request_features import request_features
    from pipeline.monitor import Baseline, MonitorError, monitor

    baseline_requests = window(seed=1)
    outputs = _outputs(list(baseline_requests["top"]), list(baseline_requests["abstain"]))
    rows = request_features(None, outputs)
    folder = tmp_path / "baseline"
    folder.mkdir()
    schema = load_schema()
    (folder / "rows.json").write_text(rows_to_json(rows))
    baseline = Baseline(
        statistics_of_rows(rows, schema, folder / "FeatureStats.pb"),
        schema,
        str(folder / "FeatureStats.pb"),
        "request_features.pbtxt",
        rows_uri=str(folder / "rows.json"),
    )
    log_dir = tmp_path / "requests"
    requests = window(right={name: 90 for name in spec.CLASS_NAMES})
    cases = write_log(log_dir, requests)
    hostile = tmp_path / "db <b>&'x"  # the store's path is shown on the page
    store = open_store(str(hostile / "reviews.sqlite"))
    review(store, cases, requests, review_page_choice(requests, 50))
    store.close()

    result = monitor(
        str(log_dir), "", baseline=baseline, reviews=str(hostile / "reviews.sqlite"), expected=EXPECTED
    )
    assert not result.anomalous and result.alarmed  # traffic as usual, answers worse
    assert [c.figure for c in result.live.alarms][0] == ACCURACY
    out = Path(result.out_dir)
    live = json.loads((out / MONITOR_WINDOW_FILE).read_text())["live_performance"]
    assert live["reviewed"] == 232 and live["window_abstained"] == 32
    assert {c["figure"]: c["status"] for c in live["checks"]}[ACCURACY] == ALARM
    assert live["expected"]["version"] == VERSION
    page = (out / MONITOR_REPORT_FILE).read_text()
    assert 'id="live-performance"' in page and "Live performance" in page and "Live-performance alarm" in page
    for name in spec.CLASS_NAMES:
        assert f"recall {name}" in page
    assert "<b>&'x" not in page and html.escape("db <b>&'x") in page

    # Without a review database the section says why.
    requests = window(seed=2)
    write_log(tmp_path / "quiet", requests)
    quiet = monitor(str(tmp_path / "quiet"), "", baseline=baseline)
    assert quiet.live.unavailable.startswith("no review database") and not quiet.alarmed
    assert "No review database" in (Path(quiet.out_dir) / MONITOR_REPORT_FILE).read_text()
    # A database that cannot be opened stops the report before any work (exit 2).
    with pytest.raises(MonitorError, match="unknown database URL scheme"):
        monitor(str(tmp_path / "quiet"), "", all_files=True, baseline=baseline, reviews="mysql://db/x")
    reports = [p for p in (tmp_path / "quiet" / "monitor").iterdir() if p.name != ".calibration"]
    assert [str(p) for p in reports] == [quiet.out_dir]  # and no staging folder left behind


def test_reviews_default_to_the_work_folders_database_when_it_exists(tmp_path):
    work = str(tmp_path / "runs")
    assert reviews_target(None, work) is None
    open_store(default_db(work)).close()
    assert reviews_target(None, work) == default_db(work)
    assert reviews_target("postgresql://reviewer@db.example/reviews", work).startswith("postgresql://")
    with pytest.raises(ValueError, match="no review database"):
        reviews_target(str(tmp_path / "missing.sqlite"), work)
    assert not (tmp_path / "missing.sqlite").exists()
