"""The whole loop on synthetic data ("learn from the site"): the tiny run's model is
served with `--log-payload images`; a window of new phantoms raises no drift or skew
alarm in `monitor` (what `btmri monitor` runs), a window of phantoms 40 % darker with
two pictures of no brain among them raises `intensity_mean` as skew and as drift; a
reader reviews requests of both windows on the review page (`btmri review`) in headless
Chromium with the keyboard alone, each case's class known from what was sent through
its record id; the monitor then reports live performance on those reviews; and `btmri
run --quick --feedback <db>` trains the next model on them: the feedback is its own TFMA
slice, in the model card, the run record and ML Metadata.

The monitor's baseline is built as RequestBaseline builds it (components/baseline), from
the served model's answers to 200 phantoms the run never saw, not taken from the quick
run: that run's baseline is its 12 test images, and on 12 rows a 1-epoch model often
answers one class, so a healthy window in which it answers another for one image alarms
on `predicted_class` (a class the baseline never showed has no noise to calibrate).

Without Chromium the same reviews are written through the review store's API, with a
warning, so the rest of the loop still runs (the page alone: test_review_browser.py)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from btmri import spec
from btmri.documents import Manifest
from components.baseline.component import predict_rows
from components.baseline.statistics import load_schema, rows_to_json, statistics_of_rows
from data_prep.synth import render_phantom
from pipeline import run_record
from pipeline.config import PipelineConfig
from pipeline.drift_calibration import CalibrationOptions
from pipeline.live_performance import ACCURACY
from pipeline.metadata import feedback_provenance
from pipeline.monitor import Baseline, monitor
from pipeline.report.artifacts import find_run
from pipeline.report.tfma_results import flatten_metrics, load_candidate
from pipeline.review.cases import CaseError, load_cases
from pipeline.review.store import UNUSABLE, Review, open_store, utc_now
from serving.client import PredictionClient
from serving.process import ServerProcess
from tests.browser import CHROMIUM, DevTools, case_records, start_review, stop_review, visible_case
from tests.conftest import btmri_run, only_version

# Phantom streams (data_prep/synth.py's generator under seeds of their own, so none is
# an image of the synthetic dataset): the monitor's baseline, the two windows.
BASELINE, HEALTHY, SHIFTED, NOT_BRAIN = 1, 2, 3, 4
BASELINE_IMAGES = 200
WINDOW = 60  # requests per window, classes in turn
DARKER = 0.6
# At 0.01 the calibrated thresholds of a 60-row window against 200 baseline rows are
# about 0.15 (skew) and 0.2 (drift) on intensity_mean, which phantoms 40 % darker
# exceed two- to threefold; a healthy window alarms at most at that rate (what the
# calibration promises: none of 54 did, drawn as these are, across three quick-run models).
FALSE_ALARM_RATE = 0.01
REVIEWS_PER_CLASS = 6  # one per class is held out (0.15) and so makes the feedback slice
LISTED = 200  # --answered: the page lists every request of both windows
REVIEWER = "ana"
# The page's keys (docs/review.md): 1-4 in btmri/spec.py's class order, u for "not a usable slice".
KEYS = {name: str(k + 1) for k, name in enumerate(spec.CLASS_NAMES)} | {UNUSABLE: "u"}


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def _phantoms(stream: int, n: int) -> list[tuple[np.ndarray, str]]:
    """n phantoms, the classes in turn, each with a seed of its own."""
    out = []
    for i in range(n):
        name = spec.CLASS_NAMES[i % spec.NUM_CLASSES]
        image, _ = render_phantom(name, np.random.default_rng(np.random.SeedSequence([4099, stream, i])))
        out.append((image, name))
    return out


def _not_brain() -> list[bytes]:
    """Two pictures no reader can give a class: uniform noise and a gray ramp, of a
    phantom's size."""
    rng = np.random.default_rng(np.random.SeedSequence([4099, NOT_BRAIN]))
    noise = rng.integers(0, 256, (300, 380), dtype=np.uint8)
    ramp = np.tile(np.linspace(0, 255, 420), (330, 1)).astype(np.uint8)
    return [_png(noise), _png(ramp)]


def _baseline(signature, folder: Path) -> Baseline:
    """The served model's answers to BASELINE_IMAGES phantoms as RequestBaseline stores
    them: statistics and the rows the thresholds are calibrated on."""
    images = [_png(image) for image, _ in _phantoms(BASELINE, BASELINE_IMAGES)]
    rows = [row for i in range(0, len(images), 8) for row in predict_rows(signature, images[i : i + 8])]
    folder.mkdir(parents=True)
    schema = load_schema()
    (folder / "rows.json").write_text(rows_to_json(rows))
    return Baseline(
        statistics_of_rows(rows, schema, folder / "FeatureStats.pb"),
        schema,
        str(folder / "FeatureStats.pb"),
        "request_features.pbtxt",
        rows_uri=str(folder / "rows.json"),
    )


def _send(client: PredictionClient, window: list[tuple[bytes, str]]) -> set[int]:
    """One call per image; the versions that answered."""
    return {client.classify_image(image).model_version for image, _ in window}


def _wait_logged(log_dir: Path, n: int) -> None:
    """Until the log's closed files hold n requests (the server closes a file a second
    after its first record here): a report reads closed files only."""
    deadline = time.monotonic() + 120
    while True:
        try:
            logged = len(load_cases(log_dir, max_abstained=10**6, answered=10**6).cases)
        except CaseError:  # no closed file yet
            logged = 0
        if logged == n:
            return
        assert logged < n and time.monotonic() < deadline, f"{logged} of {n} requests logged"
        time.sleep(0.5)


def _review_plan(cases: list, truth: dict[str, str]) -> list[tuple[int, str]]:
    """What the reader reviews, walking the page from the top: (case index, label) for
    the first REVIEWS_PER_CLASS cases of each class and the first picture of no brain."""
    wanted = dict.fromkeys(spec.CLASS_NAMES, REVIEWS_PER_CLASS) | {UNUSABLE: 1}
    plan = []
    for index, case in enumerate(cases):
        label = truth[case.record_id]
        if wanted[label]:
            wanted[label] -= 1
            plan.append((index, label))
    assert not any(wanted.values()), wanted  # the windows hold enough of every kind
    return plan


def _review_in_browser(log_dir: Path, db: Path, cases: list, plan: list, profile: Path) -> None:
    """`btmri review` in headless Chromium: j skips a case, a label key then Enter saves one."""
    # No Grad-CAM: the overlays are the page test's (test_review_browser.py), and each
    # would be a model call on the cores the two trainings share.
    server, url = start_review(
        log_dir, "--db", str(db), "--reviewer", REVIEWER, "--answered", str(LISTED), "--no-gradcam"
    )
    devtools = DevTools(profile)
    try:
        devtools.call("Log.enable")
        devtools.open(url)
        assert case_records(devtools) == [c.record_id for c in cases]  # the list the plan was made on
        for index, label in plan:
            while visible_case(devtools) < index:
                devtools.press("j")
            assert visible_case(devtools) == index
            devtools.press(KEYS[label])
            devtools.press("Enter")
            devtools.wait_for(f"document.querySelector('#case-{index}').dataset.label === '{label}'")
        assert devtools.evaluate("document.querySelector('#progress').textContent") == str(len(plan))
        assert devtools.problems() == []
    finally:
        devtools.close()
        stop_review(server)


def _review_through_store(db: Path, cases: list, plan: list) -> None:
    """The reviews the page would write, written as its server writes them."""
    store = open_store(str(db))
    try:
        for index, label in plan:
            case = cases[index]
            review = Review(
                case.record_id,
                label,
                REVIEWER,
                utc_now(),
                case.model_name,
                case.model_version,
                case.top_class,
                case.abstain_reason,
            )
            store.add(review, image=case.image)
    finally:
        store.close()


def _config(work: Path) -> PipelineConfig:
    return PipelineConfig(
        pipeline_root=str(work / "pipeline"),
        data_root=str(work / "data" / "prepared" / "current"),
        serving_dir=str(work / "serving"),
    )


@pytest.mark.slow
@pytest.mark.timeout(40 * 60)  # two quick runs (the session's tiny run, then this one) on shared cores
def test_served_monitored_reviewed_in_the_browser_and_trained_on(tiny_run, pushed_model, tmp_path):
    version = int(only_version(tiny_run / "serving").name)
    pipeline_root = str(tiny_run / "pipeline")
    baseline = _baseline(pushed_model.signatures[spec.PREDICT_IMAGES], tmp_path / "baseline")
    healthy = [(_png(image), name) for image, name in _phantoms(HEALTHY, WINDOW)]
    shifted = [(_png((image * DARKER).astype(np.uint8)), name) for image, name in _phantoms(SHIFTED, WINDOW)]
    shifted += [(image, UNUSABLE) for image in _not_brain()]
    sent = dict(healthy + shifted)  # image → its class, or UNUSABLE for no brain
    assert len(sent) == len(healthy) + len(shifted)  # no image twice: a record names one
    options = CalibrationOptions(false_alarm_rate=FALSE_ALARM_RATE)

    # 1. Serve with logging; a healthy window, then a shifted one, each monitored.
    log_dir = tmp_path / "requests"
    with ServerProcess(
        tiny_run / "serving",
        "--request-log",
        str(log_dir),
        "--log-payload",
        spec.LOG_PAYLOAD_IMAGES,
        "--log-rotate-seconds",
        "1",
        log_path=tmp_path / "serve.log",
    ) as server:
        with PredictionClient(server.grpc_target) as client:
            answered_by = _send(client, healthy)
            _wait_logged(log_dir, len(healthy))
            first = monitor(str(log_dir), pipeline_root, baseline=baseline, calibration_options=options)
            answered_by |= _send(client, shifted)
    # The server has stopped, so every log file is closed.
    assert answered_by == {version}
    assert not first.anomalous, first.lines()
    assert first.window["rows"] == len(healthy) and first.window["versions"] == {str(version): len(healthy)}
    second = monitor(str(log_dir), pipeline_root, baseline=baseline, calibration_options=options)
    assert second.drift_against == first.out_dir and second.window["rows"] == len(shifted)
    assert spec.FEATURE_INTENSITY_MEAN in second.anomalies.anomaly_info, second.lines()
    measured = second.measurements()[spec.FEATURE_INTENSITY_MEAN]
    assert set(measured) == {"skew", "drift"} and all(value > limit for value, limit in measured.values())
    for unaffected in (spec.FEATURE_IMAGE_WIDTH, spec.FEATURE_IMAGE_HEIGHT, spec.FEATURE_IMAGE_FORMAT):
        assert unaffected not in second.anomalies.anomaly_info, second.lines()

    # 2. Review: the page's list (the same options give the same list), each case's
    # class from the image its record holds.
    cases = load_cases(log_dir, max_abstained=200, answered=LISTED).cases
    truth = {case.record_id: sent[case.image] for case in cases}
    assert len(truth) == len(sent)  # every request listed, once
    plan = _review_plan(cases, truth)
    db = tmp_path / "reviews.sqlite"
    if CHROMIUM.exists():
        _review_in_browser(log_dir, db, cases, plan, tmp_path / "profile")
    else:
        warnings.warn(
            f"no Chromium at {CHROMIUM}: the reviews were written through the review store, not on the page",
            stacklevel=1,
        )
        _review_through_store(db, cases, plan)
    store = open_store(str(db))
    current = store.current()
    store.close()
    assert {r: (v.label, v.reviewer) for r, v in current.items()} == {
        cases[i].record_id: (label, REVIEWER) for i, label in plan
    }
    assert {v.model_version for v in current.values()} == {version}

    # 3. Live performance: both windows at once, with the reviews.
    live = monitor(
        str(log_dir),
        pipeline_root,
        out=str(tmp_path / "live"),
        all_files=True,
        baseline=baseline,
        calibration_options=options,
        reviews=str(db),
    ).live
    used = spec.NUM_CLASSES * REVIEWS_PER_CLASS
    assert (live.window_rows, live.reviewed, live.unusable) == (len(sent), used + 1, 1), live.lines()
    assert live.expected is not None and live.expected.version == version  # the pushing run's evaluation
    figures = live.reviewed_figures
    assert [sum(row) for row in figures["confusion"]["counts"]] == [REVIEWS_PER_CLASS] * spec.NUM_CLASSES
    right = sum(
        not cases[i].abstain and cases[i].top_class == label for i, label in plan if label != UNUSABLE
    )
    assert figures["n"] == used and figures["accuracy"]["successes"] == right
    assert [c.figure for c in live.checks] == [ACCURACY, *spec.CLASS_NAMES]

    # 4. The next run trains on the reviews.
    work = tmp_path / "work"
    assert btmri_run(work, "--feedback", str(db)) == 0

    # The manifest: counts per split, every image's review.
    manifest = Manifest.read(work / "data" / "prepared" / "current")
    section = manifest.feedback
    assert sum(sum(c.values()) for c in section["counts"].values()) == used
    held_out = sum(section["counts"][spec.TEST_SPLIT].values())
    assert 0 < held_out < used and section["reviews_unusable"] == 1
    assert {i["record_id"] for i in section["images"]} == {
        cases[i].record_id for i, label in plan if label != UNUSABLE
    }

    # TFMA: the feedback slice of the new model's evaluation.
    config = _config(work)
    run = find_run(config)
    assert run.evaluated_split == spec.TEST_SPLIT
    slices = {
        tuple((name, value.decode() if isinstance(value, bytes) else value) for name, value in key): metrics
        for key, metrics in load_candidate(run.evaluation_uri).slicing_metrics
    }
    feedback_slice = flatten_metrics(slices[((spec.COLLECTION_KEY, spec.FEEDBACK_COLLECTION),)])
    assert feedback_slice["example_count"] == held_out
    accuracy = feedback_slice["sparse_categorical_accuracy"]

    # The model card of the pushed version says so, with the slice's figure.
    card = (only_version(work / "serving") / "MODEL_CARD.md").read_text()
    feedback_part = card.split("## Feedback", 1)[1].split("\n## ", 1)[0]
    assert f"{used} images from the site" in feedback_part
    assert f"{used} reviews by 1 reviewer ({REVIEWER})" in feedback_part
    assert f"brain_tumor version {version} ({used} reviews)" in feedback_part
    assert f"the {held_out} feedback images of the test split" in feedback_part
    assert f": {accuracy:.3f} [" in feedback_part

    # ML Metadata and the run record keep the provenance.
    properties = feedback_provenance(config)
    assert properties["feedback_images"] == properties["feedback_reviews"] == used
    assert json.loads(properties["feedback_review_ids"]) == section["provenance"]["review_ids"]
    assert json.loads(properties["feedback_model_versions"]) == [f"{spec.MODEL_NAME}:{version}"]
    record = run_record.read(config.pipeline_root)
    assert record["feedback"]["provenance"] == section["provenance"] and "images" not in record["feedback"]
