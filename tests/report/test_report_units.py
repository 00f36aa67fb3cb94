"""Report building blocks without a pipeline run: figures against scikit-learn,
duplicate matching, gallery choice, the Markdown/HTML renderers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from btmri import intervals
from btmri.spec import ECE_BINS
from pipeline.report import metrics, model_card
from pipeline.report.dedup import TrainingIndex, training_duplicates
from pipeline.report.gallery import choose
from pipeline.report.markup import Bullets, Cell, Heading, Paragraph, Table, to_html, to_markdown
from pipeline.report.predictions import Predictions
from serving.heatmap_overlay import overlay
from tests.imaging import textured_image

K = 4
NAMES = [f"c{k}" for k in range(K)]


def _random_predictions(seed: int, n: int = 300, never_predicted: int | None = None):
    """Labels and probabilities of a mediocre classifier, rounded so scores tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)) + 1.5 * np.eye(K)[labels]
    if never_predicted is not None:
        logits[:, never_predicted] -= 10.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, np.round(probs, 2)  # ties on purpose: AUC and ROC must handle them


def _sklearn_ece(labels, probs, bins):
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / counts.sum() * np.abs(accuracy - mean_conf)))


@pytest.mark.parametrize("seed,never", [(0, None), (1, None), (2, 3)])
def test_figures_equal_scikit_learn(seed, never):
    labels, probs = _random_predictions(seed, never_predicted=never)
    predicted = probs.argmax(axis=1)
    cm = metrics.confusion_matrix(labels, predicted, K)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, predicted, labels=range(K)))
    figs = metrics.figures(cm, labels, probs, NAMES)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(K), zero_division=np.nan
    )
    per_class_cm = skm.multilabel_confusion_matrix(labels, predicted, labels=range(K))
    for k, fig in enumerate(figs.per_class):
        (tn, fp), (fn, tp) = per_class_cm[k]
        assert (fig.tp, fig.fp, fig.fn, fig.tn, fig.support) == (tp, fp, fn, tn, support[k])
        np.testing.assert_allclose(
            [fig.precision, fig.recall, fig.f1, fig.specificity, fig.auc],
            [precision[k], recall[k], f1[k], tn / (tn + fp), skm.roc_auc_score(labels == k, probs[:, k])],
            rtol=0,
            atol=1e-12,
        )
        fpr, tpr = fig_roc = figs.roc[k]
        assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
        assert np.trapz(tpr, fpr) == pytest.approx(fig.auc, abs=1e-12)  # ties drawn diagonally
        assert len(fig_roc[0]) == len(np.unique(probs[:, k])) + 1
    if never is not None:
        assert np.isnan(figs.per_class[never].precision) and figs.per_class[never].recall == 0
    assert figs.accuracy == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
    assert figs.macro_f1 == pytest.approx(
        skm.f1_score(labels, predicted, average="macro", zero_division=np.nan), abs=1e-12
    )
    assert figs.macro_auc == pytest.approx(
        skm.roc_auc_score(np.eye(K)[labels], probs, average="macro"), abs=1e-12
    )
    assert figs.calibration.ece == pytest.approx(_sklearn_ece(labels, probs, ECE_BINS), abs=1e-12)
    assert figs.calibration.counts.sum() == len(labels)


def test_ece_matches_the_trainers_temperature_report():
    from components.training.calibration import expected_calibration_error

    labels, probs = _random_predictions(7)
    assert metrics.calibration(labels, probs).ece == pytest.approx(
        expected_calibration_error(probs, labels, bins=ECE_BINS), abs=1e-12
    )


def test_row_normalised_leaves_empty_rows_undefined():
    shares = metrics.row_normalised(np.array([[2, 2], [0, 0]]))
    np.testing.assert_array_equal(shares[0], [0.5, 0.5])
    assert np.isnan(shares[1]).all()


def _png(pixels) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def test_duplicates_of_training_images_are_found_exact_and_near():
    train = {f"train/{i}.png": _png(textured_image(i)) for i in range(6)}
    index = TrainingIndex(train.items())
    near_copy = cv2.imencode(".jpg", textured_image(2), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    evaluated = {
        "test/exact.png": train["train/4.png"],
        "test/near.jpg": near_copy,
        "test/new.png": _png(textured_image(100)),
    }
    found = training_duplicates(index, list(evaluated), list(evaluated.values()), threshold=4)
    assert set(found) == {"test/exact.png", "test/near.jpg"}
    assert (found["test/exact.png"].kind, found["test/exact.png"].training_source) == ("exact", "train/4.png")
    assert (found["test/near.jpg"].kind, found["test/near.jpg"].training_source) == ("near", "train/2.png")
    assert found["test/near.jpg"].distance_bits <= 4


def test_gallery_shows_each_class_once_then_the_most_confident_mistakes():
    probs = np.array(
        [
            [0.9, 0.1, 0, 0],
            [0.8, 0.2, 0, 0],
            [0.1, 0.7, 0.2, 0],
            [0.6, 0.4, 0, 0],
            [0.05, 0.95, 0, 0],
            [0.3, 0.3, 0.4, 0],
        ]
    )
    labels = np.array([0, 0, 1, 1, 3, 3])
    p = Predictions(labels, probs, [str(i) for i in range(6)], [b""] * 6)
    items = choose(p, per_kind=2)
    assert [(i.index, i.correct) for i in items] == [(0, True), (2, True), (4, False), (3, False)]


def test_overlay_keeps_the_image_size_and_colours_hot_regions():
    image = _png(np.full((60, 90), 128, np.uint8))
    heat = np.zeros((224, 224), np.float32)
    heat[:, 112:] = 1.0
    out = overlay(image, heat)
    assert out.shape == (60, 90, 3)
    assert np.array_equal(out[:, :30], np.full((60, 30, 3), 128))  # cold: the image itself
    assert (out[:, 70:, 2].astype(int) - out[:, 70:, 0]).min() > 50  # hot: red (BGR)


def test_markup_renders_markdown_and_escaped_html():
    blocks = [
        Heading("Card", 1),
        Paragraph("a <b> & `code`"),
        Bullets(["one", "two"]),
        Table(["x", "y|z"], [[Cell("1", "num"), "a|b"]], id="t", caption="cap"),
    ]
    md = to_markdown(blocks)
    assert "# Card" in md and "- one\n- two" in md
    assert "| x | y\\|z |\n|---|---|\n| 1 | a\\|b |" in md
    page = to_html(blocks)
    assert "a &lt;b&gt; &amp; <code>code</code>" in page
    assert '<table id="t"><caption>cap</caption>' in page
    assert '<td class="num">1</td>' in page


def test_thresholds_read_from_the_eval_config_with_tfmas_verdicts():
    from tensorflow_model_analysis.proto import validation_result_pb2

    from components.evaluation import ACCURACY, eval_config
    from pipeline.report.tfma_results import _thresholds

    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.name, failure.metric_key.is_diff = ACCURACY, True
    failure.message = "dropped against the baseline"
    config = eval_config(accuracy_lower_bound=0.8, max_regression=0.0)

    value, change = _thresholds(config, {ACCURACY: 0.85}, {ACCURACY: 0.9}, validation)
    assert (value.metric, value.kind, value.condition, value.passed) == (ACCURACY, "value", "≥ 0.800", True)
    assert (change.kind, change.condition, change.passed) == ("change", "change vs baseline ≥ 0", False)
    assert (change.candidate, change.baseline, change.message) == (0.85, 0.9, "dropped against the baseline")
    # Without a baseline TFMA checks the absolute bound only.
    assert [t.kind for t in _thresholds(config, {ACCURACY: 0.85}, None, validation)] == ["value"]


def test_kept_epoch_is_the_last_unless_an_older_trainer_restored_its_best():
    history = {"history": {"loss": [0.9, 0.5, 0.4, 0.3], "val_loss": [0.8, 0.3, 0.5, 0.4]}}
    whole_schedule = dict(history, config={"patience": 0})
    early_stopped = dict(history, config={"patience": 2})  # before schedules: best epoch restored
    annealed = dict(
        history,
        config={"patience": 2},
        schedule={"schedule": "converge", "anneal_start_epoch": 3, "reason": "eval loss flat for 2 epochs"},
    )
    assert model_card.epochs_kept(whole_schedule) == (4, 4)
    assert model_card.kept_reason(whole_schedule) == "end of the schedule"
    assert model_card.epochs_kept(early_stopped) == (4, 2)
    assert model_card.kept_reason(early_stopped) == "lowest eval loss"
    assert model_card.epochs_kept(annealed) == (4, 4)
    assert model_card.kept_reason(annealed) == "end of the anneal from epoch 3 (eval loss flat for 2 epochs)"
    assert model_card.epochs_kept(None) == (0, None)
    assert model_card.schedule_text(dict(annealed, config={"patience": 2})) == "converge (patience 2)"
    assert model_card.schedule_text(whole_schedule) == "cosine"
    small_first = dict(
        annealed, schedule={**annealed["schedule"], "base_phase_size": 128, "base_phase_epochs": 2}
    )
    assert model_card.schedule_text(small_first) == "converge (patience 2); epochs 1-2 on 128x128 images"


def test_risk_coverage_refuses_the_most_doubtful_first():
    from pipeline.report.abstention_section import risk_coverage

    correct = np.array([True, False, True, True, False])
    doubt = np.array([0.1, 0.9, 0.2, 0.3, 0.5])  # both mistakes are the most doubtful
    curve = risk_coverage(correct, doubt)
    np.testing.assert_allclose(curve.coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.accuracy, [1, 1, 1, 0.75, 0.6])


def test_the_abstention_text_says_when_the_notumor_floor_gave_way():
    from types import SimpleNamespace

    from pipeline.report import abstention_section
    from pipeline.report.markup import Paragraph

    n = 4
    predictions = SimpleNamespace(
        labels=np.array([0, 1, 2, 3]),
        predicted=np.array([0, 1, 2, 2]),
        probs=np.full((n, 4), 0.25),
        abstain=np.array([False, False, True, False]),
        abstain_reason=np.array(["", "", "uncertain_no_tumour", ""]),
        ood_score=np.full(n, 0.5),
    )

    def text(fitted):
        summary = abstention_section.summarize(predictions, fitted)
        return " ".join(
            b.text for b in abstention_section.blocks(summary, "test") if isinstance(b, Paragraph)
        )

    kept = {"accept": 0.95, "notumor_floor": 0.8, "notumor_floor_wanted": 0.8}
    assert "P(notumor) ≥ 0.800" in text(kept) and "asked for" not in text(kept)
    lowered = dict(kept, notumor_floor=0.4)
    assert "P(notumor) ≥ 0.400" in text(lowered)
    assert "below the 0.800 its fit asked for" in text(lowered)
    assert "asked for" not in text({"accept": 0.95, "notumor_floor": 0.4})  # older models
    # The notumor answers' distance bound: said when below 1, with its give-way.
    bounded = dict(kept, notumor_ood_bound=0.87, notumor_ood_bound_wanted=0.87)
    assert "an ood_score of at most 0.870." in text(bounded) and "asked for" not in text(bounded)
    assert "ood_score of at most" not in text(dict(kept, notumor_ood_bound=1.0))
    assert "its fit asked for 0.700" in text(dict(bounded, notumor_ood_bound_wanted=0.7))


def test_the_abstention_facts_say_what_the_cross_fitted_share_estimates():
    from pipeline.report.abstention_section import _fitted_facts

    fitted = {"ood_threshold": 1.6, "confidence_floor": 0.6, "accepted_share": 0.97}
    fitted["accepted_share_cross_fitted"] = 0.9
    by_patient = _fitted_facts(dict(fitted, cross_fitted_by="patient / near-duplicate group", units=476))[0]
    assert (
        "cross-fitted by patient / near-duplicate group, 476 units: the estimate for new patients"
        in by_patient
    )
    by_image = _fitted_facts(fitted)[0]  # a model fitted before the folds held out patients
    assert "cross-fitted by image, which overstates what new patients get" in by_image


# ── Intervals over patients (btmri.intervals): slices of one patient are not independent ──


def _per_unit(hits, units):
    """(successes, counts) per unit, in sorted unit order, counted by hand."""
    names = sorted(set(units))
    successes = [sum(bool(h) for h, u in zip(hits, units) if u == name) for name in names]
    counts = [sum(1 for u in units if u == name) for name in names]
    return np.array(successes, float), np.array(counts, float)


def _width(interval) -> float:
    return interval[1] - interval[0]


def test_cluster_bootstrap_widens_when_the_same_images_share_patients():
    # 200 images, 160 right. As 200 patients of one image each, the bootstrap over
    # patients is about as wide as Wilson's; the same images as 20 patients of 10,
    # each patient all right or all wrong, leave 20 independent draws, not 200.
    hits = np.r_[np.ones(160, bool), np.zeros(40, bool)]
    wilson = intervals.wilson(160, 200)
    alone = intervals.cluster_bootstrap_ratio(*_per_unit(hits, [f"i{i:03d}" for i in range(200)]))
    assert abs(_width(alone) - _width(wilson)) < 0.2 * _width(wilson)
    assert alone[0] < 0.8 < alone[1]
    grouped_units = [f"p{i // 10:02d}" for i in range(200)]
    grouped = intervals.cluster_bootstrap_ratio(*_per_unit(hits, grouped_units))
    assert _width(grouped) > 2.5 * _width(wilson)
    assert grouped[0] < 0.7 and grouped[1] > 0.9
    # the same seed, the same interval; clusters without images change nothing
    s, c = _per_unit(hits, grouped_units)
    assert intervals.cluster_bootstrap_ratio(s, c) == grouped
    assert intervals.cluster_bootstrap_ratio(np.r_[s, 0.0], np.r_[c, 0.0]) == grouped
    # undefined: no images, or no unit with an image
    assert all(np.isnan(intervals.cluster_bootstrap_ratio([], [])))
    assert all(np.isnan(intervals.cluster_bootstrap_ratio([0, 0], [0, 0])))
    assert all(np.isnan(intervals.ratio_interval([0, 0], [0, 0], intervals.PATIENT_BOOTSTRAP)))
    empty = intervals.share([], [], intervals.PATIENT_BOOTSTRAP)
    assert np.isnan(empty["value"]) and all(np.isnan(empty["ci95"])) and empty["n"] == 0


def test_shares_pick_the_patient_bootstrap_only_when_patients_hold_several_images():
    hits = np.r_[np.ones(160, bool), np.zeros(40, bool)]
    assert intervals.interval_method(None) == intervals.WILSON
    assert intervals.interval_method([f"i{i}" for i in range(200)]) == intervals.WILSON
    assert intervals.interval_method(["a", "b", "a"]) == intervals.PATIENT_BOOTSTRAP

    plain = intervals.share(hits)
    alone = intervals.share(hits, [f"i{i}" for i in range(200)])
    assert plain["method"] == alone["method"] == intervals.WILSON
    assert (
        plain["ci95"]
        == alone["ci95"]
        == list(intervals.wilson(160, 200))
        == intervals.proportion(160, 200)["ci95"]
    )
    assert (plain["units"], alone["units"]) == (200, 200)

    grouped = intervals.share(hits, [f"p{i // 10:02d}" for i in range(200)])
    assert grouped["method"] == intervals.PATIENT_BOOTSTRAP and grouped["units"] == 20
    assert (grouped["value"], grouped["successes"], grouped["n"]) == (0.8, 160, 200)
    assert _width(grouped["ci95"]) > 2.5 * _width(plain["ci95"])
    # All right: every draw is 1.0, so the percentile interval is the point [1, 1];
    # the reported one still holds Wilson's (clustering only adds uncertainty).
    perfect = intervals.share(np.ones(50, bool), [f"p{i // 5}" for i in range(50)])
    assert perfect["ci95"] == [intervals.wilson(50, 50)[0], 1.0] and perfect["ci95"][0] < 0.95

    values = np.r_[np.full(50, 0.9), np.full(50, 0.1)]
    by_patient = intervals.mean(values, [f"p{i // 25}" for i in range(100)])  # 2 high, 2 low patients
    by_image = intervals.mean(values)
    assert by_patient["method"] == intervals.PATIENT_BOOTSTRAP and by_image["method"] == intervals.BOOTSTRAP
    assert by_patient["units"] == 4 and by_image["units"] == 100
    assert _width(by_patient["ci95"]) > 3 * _width(by_image["ci95"])
    assert (
        intervals.statement(812, 143, intervals.PATIENT_BOOTSTRAP)
        == "812 images from 143 patients / groups; 95 % intervals: bootstrap over patients"
    )
    assert intervals.statement(812, 812, intervals.WILSON) == (
        "812 images, each its own unit; 95 % intervals: Wilson over images"
    )


def test_bootstrap_over_units_draws_whole_units():
    units = np.repeat(np.arange(10), 3)  # 10 units of 3 rows each

    def whole_units(drawn):
        return float(np.all(np.bincount(drawn) % 3 == 0))

    assert intervals.bootstrap(whole_units, [units], resamples=200, groups=units) == (1.0, 1.0)
    assert intervals.bootstrap(whole_units, [units], resamples=200) == (0.0, 0.0)  # rows alone


def _clustered_predictions(seed: int, patients: int = 60, per_patient: int = 5):
    """Every patient's images share its class and whether the model gets it right."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, K, patients)
    right = rng.random(patients) < 0.8
    predicted = np.where(right, label, (label + 1) % K)
    labels = np.repeat(label, per_patient)
    probs = np.full((len(labels), K), 0.1)
    probs[np.arange(len(labels)), np.repeat(predicted, per_patient)] = 0.7
    probs += rng.random(probs.shape) * 0.01  # untied scores
    ids = [f"patient:{i:03d}" for i in range(patients) for _ in range(per_patient)]
    return labels, probs, ids


def test_figures_draw_intervals_over_patients_when_given():
    labels, probs, patients = _clustered_predictions(3)
    predicted = probs.argmax(axis=1)
    cm = metrics.confusion_matrix(labels, predicted, K)
    by_image = metrics.figures(cm, labels, probs, NAMES)
    own_units = metrics.figures(cm, labels, probs, NAMES, patients=[f"group:{i}" for i in range(len(labels))])
    figs = metrics.figures(cm, labels, probs, NAMES, patients=patients)

    assert by_image.interval_method == own_units.interval_method == intervals.WILSON
    assert by_image.units == own_units.units == len(labels) == 300
    assert by_image.accuracy_ci == own_units.accuracy_ci == intervals.wilson(figs.correct, 300)
    assert figs.interval_method == intervals.PATIENT_BOOTSTRAP and figs.units == 60
    assert figs.accuracy == by_image.accuracy  # the figures stay; only their intervals move

    correct = predicted == labels
    method = intervals.PATIENT_BOOTSTRAP
    assert figs.accuracy_ci == intervals.ratio_interval(*_per_unit(correct, patients), method)
    assert _width(figs.accuracy_ci) > 1.8 * _width(by_image.accuracy_ci)
    for k, fig in enumerate(figs.per_class):
        of_class = labels == k
        want = _per_unit(correct[of_class], [p for p, m in zip(patients, of_class) if m])
        assert fig.recall_ci == intervals.ratio_interval(*want, method), fig.name
        as_k = predicted == k
        want = _per_unit(correct[as_k], [p for p, m in zip(patients, as_k) if m])
        assert fig.precision_ci == intervals.ratio_interval(*want, method), fig.name
        assert fig.recall_ci != by_image.per_class[k].recall_ci
        assert fig.recall_ci[0] <= fig.recall <= fig.recall_ci[1]
    assert (
        figs.intervals_text == "300 images from 60 patients / groups; 95 % intervals: bootstrap over patients"
    )
    assert by_image.intervals_text == "300 images, each its own unit; 95 % intervals: Wilson over images"

    from pipeline.report import tables

    caption = tables.overall([("test, as is", figs), ("test, deduplicated", by_image)], "o").caption
    assert (
        "test, as is: 300 images from 60 patients / groups; 95 % intervals: bootstrap over patients"
        in caption
    )
    assert "test, deduplicated: 300 images, each its own unit" in caption
    assert tables.intervals_note([figs]) == tables.PATIENT_INTERVALS_NOTE
    assert tables.intervals_note([by_image]) == tables.INTERVALS_NOTE


def test_predictions_keep_their_patients_through_a_subset():
    p = Predictions(
        np.arange(4) % K, np.eye(K)[np.arange(4) % K], ["a", "b", "c", "d"], [b""] * 4, patients=list("xxyz")
    )
    kept = p.subset(np.array([False, True, True, False]))
    assert kept.sources == ["b", "c"] and kept.patients == ["x", "y"]
    assert Predictions(p.labels, p.probs, p.sources, p.images).subset(np.ones(4, bool)).patients is None


def test_report_summary_names_the_unit_and_the_interval_method():
    from pipeline.report.cli import summary_text

    summary = {
        "evaluated_split": "eval",
        "accuracy": 0.9,
        "accuracy_ci95": [0.85, 0.94],
        "n": 812,
        "deduplicated_accuracy": 0.88,
        "deduplicated_accuracy_ci95": [0.82, 0.93],
        "duplicates_of_training_images": 3,
        "blessed": True,
        "checks": [],
        "units": 143,
        "interval_method": intervals.PATIENT_BOOTSTRAP,
    }
    lines = summary_text("out.html", summary)
    assert "  eval: 812 images from 143 patients / groups; 95 % intervals: bootstrap over patients" in lines
    old = {k: v for k, v in summary.items() if k not in ("units", "interval_method")}  # before units
    assert "  eval: 812 images, each its own unit; 95 % intervals: Wilson over images" in summary_text(
        "o", old
    )


def test_by_collection_table_shows_the_gap_between_collections():
    """The report's per-collection rows: accuracy and tumours called notumor per
    collection, over patients; no table for a single collection."""
    import numpy as np

    from pipeline.report.html_report import _by_collection
    from pipeline.report.predictions import Predictions

    labels = np.array([0, 0, 1, 1, 2, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 2, 1, 2])  # the second collection: 3 tumours missed
    probs = np.eye(4)[predicted]
    collections = ["figshare"] * 5 + ["unknown"] * 5
    patients = ["patient:a", "patient:a", "patient:b", "patient:b", "group:c"] + [
        f"group:{i}" for i in range(5)
    ]
    p = Predictions(
        labels, probs, [str(i) for i in range(10)], [b""] * 10, patients=patients, collections=collections
    )
    table = _by_collection(p)
    rows = {r[0].text: [c.text for c in r[1:]] for r in table.rows}
    assert rows["figshare"][0] == "5 images from 3 patients / groups"
    assert rows["figshare"][1].startswith("1.000") and rows["figshare"][2].startswith("0.000")
    assert rows["unknown"][1].startswith("0.400") and rows["unknown"][2].startswith("0.750")
    assert _by_collection(p.subset(np.arange(10) < 5)) is None
