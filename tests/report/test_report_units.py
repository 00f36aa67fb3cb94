"""Report building blocks without a pipeline run: figures against scikit-learn,
duplicate matching, gallery choice, the Markdown/HTML renderers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

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


def test_kept_epoch_is_the_last_unless_the_trainer_early_stopped():
    history = {"history": {"loss": [0.9, 0.5, 0.4, 0.3], "val_loss": [0.8, 0.3, 0.5, 0.4]}}
    whole_schedule = dict(history, config={"patience": 0})
    early_stopped = dict(history, config={"patience": 2})
    assert model_card.epochs_kept(whole_schedule) == (4, 4)
    assert model_card.kept_reason(whole_schedule) == "end of the schedule"
    assert model_card.epochs_kept(early_stopped) == (4, 2)
    assert model_card.kept_reason(early_stopped) == "lowest eval loss"
    assert model_card.epochs_kept(None) == (0, None)


def test_risk_coverage_refuses_the_most_doubtful_first():
    from pipeline.report.abstention import risk_coverage

    correct = np.array([True, False, True, True, False])
    doubt = np.array([0.1, 0.9, 0.2, 0.3, 0.5])  # both mistakes are the most doubtful
    curve = risk_coverage(correct, doubt)
    np.testing.assert_allclose(curve.coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.accuracy, [1, 1, 1, 0.75, 0.6])
