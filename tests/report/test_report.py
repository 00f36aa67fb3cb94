"""`btmri report` and the model card on the session's tiny pipeline run.

Every count-based figure in the report is recomputed here with scikit-learn from
the pushed model's own predictions on the prepared test TFRecords (a path of
its own: `predict_images` on the image bytes, not the report's reader), then
found, formatted the same way, in the HTML tables.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from btmri import intervals
from btmri.intervals import format_interval, format_with_interval, wilson
from btmri.spec import ECE_BINS
from components.executors import DIGEST_FILE
from btmri.spec import IMAGE_BYTES_INPUT, PROBABILITIES
from btmri.layout import CARD_VERSION_PLACEHOLDER, MANIFEST_FILE, MODEL_CARD_FILE
from btmri import spec
from data_prep.tfrecords import read_split
from pipeline.cli import main as btmri
from pipeline.config import PipelineConfig
from pipeline.report import collect as collect_module, metrics
from pipeline.report.build import build_report
from pipeline.report.markup import rate, rate_ci
from pipeline.report.model_card import write_model_card
from pipeline.report import shortcut_control
from tests.conftest import only_version

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = list(spec.CLASS_NAMES)


def _config(work: Path) -> PipelineConfig:
    return PipelineConfig(pipeline_root=str(work / "pipeline"), data_root="", serving_dir="")


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    """(report data, HTML path), built once through the CLI's function."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    data = build_report(_config(tiny_run), out)
    return data, out


@pytest.fixture(scope="module")
def own_predictions(tiny_run, version_dir):
    """(labels, probabilities, sources) of the pushed model on data/prepared/test."""
    examples = read_split(tiny_run / "data" / "prepared" / "current", spec.TEST_SPLIT)
    model = tf.saved_model.load(str(version_dir))
    out = model.signatures["predict_images"](
        **{IMAGE_BYTES_INPUT: tf.constant([e[spec.IMAGE_KEY] for e in examples])}
    )
    return (
        np.array([e[spec.LABEL_KEY] for e in examples]),
        out[PROBABILITIES].numpy(),
        [e[spec.SOURCE_KEY] for e in examples],
    )


class _Tables(HTMLParser):
    """Cell texts of every <table id=...>, row by row (header row included)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _expected(labels, probs) -> dict:
    """Everything the report counts, the scikit-learn way."""
    predicted = probs.argmax(axis=1)
    cm = skm.confusion_matrix(labels, predicted, labels=range(len(CLASSES)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=range(len(CLASSES)), zero_division=np.nan
    )
    per_class = skm.multilabel_confusion_matrix(labels, predicted, labels=range(len(CLASSES)))
    specificity = [tn / (tn + fp) for (tn, fp), _ in per_class]
    auc = [skm.roc_auc_score(labels == k, probs[:, k]) for k in range(len(CLASSES))]
    confidence, correct = probs.max(axis=1), predicted == labels
    accuracy_in_bin, confidence_in_bin = calibration_curve(
        correct, confidence, n_bins=ECE_BINS, strategy="uniform"
    )
    edges = np.linspace(0, 1, ECE_BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=len(edges) - 1)
    counts = counts[counts > 0]
    return {
        "n": len(labels),
        "confusion": cm,
        "accuracy": skm.accuracy_score(labels, predicted),
        "macro_f1": skm.f1_score(labels, predicted, average="macro", zero_division=np.nan),
        "macro_auc": float(np.mean(auc)),
        "ece": float(np.sum(counts / counts.sum() * np.abs(accuracy_in_bin - confidence_in_bin))),
        "per_class": [
            [
                name,
                f"{support[k]:,}",
                rate(precision[k]),
                rate(recall[k]),
                rate(specificity[k]),
                rate(f1[k]),
                rate(auc[k]),
            ]
            for k, name in enumerate(CLASSES)
        ],
        "raw": (precision, recall, specificity, f1, support, auc),
    }


def _expected_interval(hits, mask, patients, method):
    """A proportion's interval as the report must show it: Wilson of the counts, or the
    bootstrap over patients of each patient's hits among its images in `mask`."""
    if method == intervals.WILSON:
        return wilson(int((hits & mask).sum()), int(mask.sum()))
    units = sorted(set(patients))
    successes = [sum(bool(h and m) for h, m, p in zip(hits, mask, patients) if p == u) for u in units]
    counts = [sum(bool(m) for m, p in zip(mask, patients) if p == u) for u in units]
    return intervals.ratio_interval(successes, counts, method)


def _assert_figures_equal(figures: metrics.Figures, want: dict) -> None:
    np.testing.assert_array_equal(figures.confusion, want["confusion"])
    assert figures.n == want["n"]
    for name in ("accuracy", "macro_f1", "macro_auc"):
        assert getattr(figures, name) == pytest.approx(want[name], abs=1e-9), name
    assert figures.calibration.ece == pytest.approx(want["ece"], abs=1e-6)
    precision, recall, specificity, f1, support, auc = want["raw"]
    got = np.array(
        [[f.precision, f.recall, f.specificity, f.f1, f.support, f.auc] for f in figures.per_class]
    )
    np.testing.assert_allclose(
        got, np.column_stack([precision, recall, specificity, f1, support, auc]), rtol=0, atol=1e-6
    )


def _values(rows: list[list[str]]) -> list[list[str]]:
    """Table cells without their 95 % interval ('0.873 [0.842, 0.899]' -> '0.873')."""
    return [[cell.split(" [")[0] for cell in row] for row in rows]


def _overall_row(name: str, want: dict) -> list[str]:
    return [
        name,
        f"{want['n']:,}",
        rate(want["accuracy"]),
        rate(want["macro_f1"]),
        rate(want["macro_auc"]),
        rate(want["ece"]),
    ]


def test_every_count_in_the_report_equals_scikit_learn(report, own_predictions):
    data, html_path = report
    labels, probs, sources = own_predictions
    assert data.run.evaluated_split == spec.TEST_SPLIT
    want = _expected(labels, probs)
    _assert_figures_equal(data.as_is, want)

    kept = np.array([s not in data.duplicates for s in sources])
    want_dedup = _expected(labels[kept], probs[kept])
    _assert_figures_equal(data.deduplicated, want_dedup)

    tables = _Tables(html_path.read_text())
    assert _values(tables.tables["per-class-as-is"][1:]) == want["per_class"]
    assert _values(tables.tables["per-class-dedup"][1:]) == want_dedup["per_class"]
    assert _values(tables.tables["overall"][1:]) == [
        _overall_row("test, as is", want),
        _overall_row("test, without duplicates of training images", want_dedup),
    ]
    # Proportions carry the Wilson interval of scikit-learn's counts, or, where the test
    # images' patients / groups hold several images, the bootstrap over them.
    patient_of = dict(zip(data.predictions.sources, data.predictions.patients))
    patients = [patient_of[s] for s in sources]
    method = intervals.interval_method(patients)
    assert data.as_is.interval_method == method and data.as_is.units == len(set(patients))
    assert data.as_is.intervals_text in html_path.read_text()
    predicted = probs.argmax(axis=1)
    correct = predicted == labels
    for k, row in enumerate(tables.tables["per-class-as-is"][1:]):
        precision_ci = _expected_interval(correct, predicted == k, patients, method)
        recall_ci = _expected_interval(correct, labels == k, patients, method)
        assert row[2].endswith(format_interval(precision_ci)), row
        assert row[3].endswith(format_interval(recall_ci)), row
    accuracy_cell = tables.tables["overall"][1][2]
    assert accuracy_cell.endswith(
        format_interval(_expected_interval(correct, np.ones_like(correct), patients, method))
    )
    lo, hi = data.as_is.macro_auc_ci  # bootstrap: around the figure
    assert lo <= data.as_is.macro_auc + 1e-9 and hi >= data.as_is.macro_auc - 0.2
    shares = want["confusion"] / want["confusion"].sum(axis=1, keepdims=True)
    assert tables.tables["confusion-as-is"][1:] == [
        [
            name,
            *(f"{want['confusion'][i, j]} ({shares[i, j]:.2f})" for j in range(len(CLASSES))),
            f"{want['confusion'][i].sum():,}",
        ]
        for i, name in enumerate(CLASSES)
    ]


def test_abstention_on_the_evaluated_split_matches_the_model(report, tiny_run, version_dir):
    """The report's abstention table counts what the pushed model's own `abstain` says on
    the test split, and the risk–coverage curve ends at the plain accuracy."""
    data, html_path = report
    examples = read_split(tiny_run / "data" / "prepared" / "current", spec.TEST_SPLIT)
    out = tf.saved_model.load(str(version_dir)).signatures["predict_images"](
        **{IMAGE_BYTES_INPUT: tf.constant([e[spec.IMAGE_KEY] for e in examples])}
    )
    abstain = out["abstain"].numpy()
    reasons = [r.decode() for r in out["abstain_reason"].numpy()]
    summary = data.abstention
    assert summary.n == len(examples) and summary.answered == int((~abstain).sum())
    assert summary.out_of_distribution == reasons.count("out_of_distribution")
    assert summary.low_confidence == reasons.count("low_confidence")
    assert summary.by_confidence.accuracy[-1] == pytest.approx(summary.accuracy_all)
    assert summary.by_ood_score.coverage[-1] == pytest.approx(1.0)
    rows = dict((r[0], r[1]) for r in _Tables(html_path.read_text()).tables["abstention-split"][1:])
    share = format_with_interval(summary.acceptance, wilson(summary.answered, summary.n))
    assert rows["answered"] == f"{summary.answered:,} ({share})"
    assert rows["abstained: out of distribution"] == str(summary.out_of_distribution)
    assert summary.fitted["accepted_share"] >= summary.fitted["accept"]


def test_split_counts_and_thresholds_match_the_run(report, tiny_run):
    data, html_path = report
    import json

    manifest = json.loads((tiny_run / "data" / "prepared" / "current" / MANIFEST_FILE).read_text())
    tables = _Tables(html_path.read_text()).tables
    assert data.split_counts == manifest["counts"]
    for row in tables["split-counts"][1:-1]:
        assert row[1:-1] == [f"{manifest['counts'][row[0]][c]:,}" for c in CLASSES]
    assert tables["thresholds"][1][0] == "sparse_categorical_accuracy"
    assert tables["thresholds"][1][-1] == "pass" and data.run.blessed
    # The data is described by the manifest that travels with the run's examples, not by
    # whatever the prepared-data folder holds later.
    assert data.run.data_root == data.run.examples_uri
    assert json.loads((Path(data.run.examples_uri) / MANIFEST_FILE).read_text()) == manifest
    statuses = {c.name: c.status for c in data.checks}
    # TFMA and the predictions must describe the same records.
    assert statuses["example count"] == statuses["accuracy"] == statuses["confusion matrix"] == "ok"


def test_de_duplicated_figures_leave_out_the_duplicates(tiny_run, monkeypatch, own_predictions):
    """The tiny synthetic set may hold no test/train duplicate: pretend every third
    test image is one, and the de-duplicated figures must be those of the rest."""
    from pipeline.report.dedup import Match

    def every_third(index, sources, images, threshold):
        return {s: Match("exact", "Training/x.png", 0) for s in sorted(sources)[::3]}

    monkeypatch.setattr(collect_module.dedup, "training_duplicates", every_third)
    data = collect_module.collect(_config(tiny_run), gallery_per_kind=0)
    labels, probs, sources = own_predictions
    kept = np.array([s not in set(sorted(sources)[::3]) for s in sources])
    assert data.deduplicated.n == kept.sum() < data.as_is.n
    _assert_figures_equal(data.deduplicated, _expected(labels[kept], probs[kept]))


def test_report_is_self_contained(report):
    page = report[1].read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page)
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert images and all(src.startswith("data:image/") for src in images)
    for section in (
        "Blessing decision",
        "Figures on the test split",
        "Confusion matrix",
        "ROC",
        "Reliability",
        "Training",
        "TFDV anomalies",
        "Skipped files",
        "Duplicates and leakage",
        "Grad-CAM gallery",
        "When it does not answer",
        "Risk–coverage",
        "Model card",
        "Cross-checks",
    ):
        assert section in page, section


def test_cli_writes_the_report(tiny_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert (
        btmri(["report", "--pipeline-root", str(tiny_run / "pipeline"), "--out", str(out), "--gallery", "1"])
        == 0
    )
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    assert re.search(
        r"\n  shortcut control \(trees on 11 image statistics, no pixels\): test accuracy ", printed
    )
    assert btmri(["report", "--pipeline-root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_model_card_is_written_beside_the_pushed_model(tiny_run, version_dir, tmp_path, report):
    data = report[0]
    copy = tmp_path / version_dir.name  # tiny_run is read-only: card a copy of the version
    shutil.copytree(version_dir, copy)
    path = write_model_card(_config(tiny_run), str(copy))
    assert path == copy / MODEL_CARD_FILE
    card = path.read_text()
    for heading in (
        "## Model details",
        "## Intended use",
        "## Out-of-scope uses",
        "## Training data",
        "## Evaluation data",
        "### Known flaws of the data",
        "## Quantitative analysis",
        "## Calibration",
        "## When it does not answer",
        "## Limitations",
        "## Ethical considerations",
    ):
        assert f"\n{heading}\n" in card, heading
    assert f"version {version_dir.name}" in card and "Not a diagnostic device" in card
    for word in ("3D", "anatomy", "Pediatric", "modalities", "synthetic phantoms", "duplicate"):
        assert word in card, word
    for f in data.deduplicated.per_class:  # de-duplicated per-class figures, by name
        assert (
            f"| {f.name} | {f.support} | {rate_ci(f.precision, f.precision_ci)} | "
            f"{rate_ci(f.recall, f.recall_ci)} | "
        ) in card
    assert (copy / DIGEST_FILE).read_text().strip() in card  # the card names the model it describes
    assert not list(copy.glob(".model-card-*"))


def test_the_shortcut_control_sits_beside_the_cnn(report, tiny_run):
    """The control's row in the report and the card: its figures as the ShortcutControl
    artifact recorded them, beside the CNN's as-is figures, with the explanation."""
    from components.shortcut import control
    from pipeline.metadata import latest_output

    data, html_path = report
    artifact = latest_output(_config(tiny_run), "ShortcutControl", "control")
    document = control.read(artifact.uri)
    assert data.shortcut_control == document
    rows = _Tables(html_path.read_text()).tables["shortcut-control"]
    cnn_row, control_row, chance_row = rows[1:]
    figures = data.as_is
    assert cnn_row[:3] == [
        shortcut_control.CNN_ROW,
        f"{figures.n:,}",
        rate_ci(figures.accuracy, figures.accuracy_ci),
    ]
    assert cnn_row[3:] == [rate_ci(f.recall, f.recall_ci) for f in figures.per_class]
    assert control_row[:3] == [
        shortcut_control.CONTROL_ROW,
        f"{document['evaluated_examples']:,}",
        format_with_interval(document["accuracy"]["value"], document["accuracy"]["ci95"]),
    ]
    assert control_row[3:] == [
        format_with_interval(c["recall"]["value"], c["recall"]["ci95"]) for c in document["per_class"]
    ]
    assert chance_row[0] == f"chance: always {document['chance']['predicts']}"
    page = html_path.read_text()
    assert "A deliberately dumb classifier beside the CNN" in page and 'id="shortcut-importance"' in page
    # The card the pipeline's ModelReport wrote from its own inputs, pushed with the model.
    card = (only_version(tiny_run / "serving") / MODEL_CARD_FILE).read_text()
    assert "\n## Shortcut control\n" in card
    assert (
        f"| {shortcut_control.CONTROL_ROW} | {document['evaluated_examples']:,} | {control_row[2]} |" in card
    )


def test_model_card_refuses_a_version_of_another_model(tiny_run, version_dir, tmp_path):
    copy = tmp_path / "7"
    copy.mkdir()
    (copy / DIGEST_FILE).write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="does not hold the latest evaluated model"):
        write_model_card(_config(tiny_run), str(copy))
    assert not (copy / MODEL_CARD_FILE).exists()


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _console_messages(stderr: str) -> list[str]:
    """Page console output (any level: the report has no script, so any is an error)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (.ci/run installs it with apt-get "
    "when it can): headless browser check skipped",
)
def test_report_opens_in_headless_chromium(report, tmp_path):
    # The console check must be able to fail: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('x'); no_such_function();</script></body></html>")
    assert _console_messages(
        _chromium([f"--screenshot={tmp_path / 'b.png'}", broken.as_uri()], tmp_path).stderr
    )

    shot = tmp_path / "report.png"
    run = _chromium(
        ["--window-size=1280,2400", f"--screenshot={shot}", "--dump-dom", report[1].as_uri()], tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_messages(run.stderr) == []
    # The DOM the browser built holds the shortcut control's row beside the CNN's.
    rows = _Tables(run.stdout).tables.get("shortcut-control", [])
    assert [row[0] for row in rows[1:3]] == [shortcut_control.CNN_ROW, shortcut_control.CONTROL_ROW], rows
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (2400, 1280)
    background = np.median(image.reshape(-1, 3), axis=0)
    drawn = np.abs(image.astype(int) - background).sum(axis=2) > 30
    assert drawn.mean() > 0.05, "screenshot is (nearly) blank"
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200  # text, tables and plots, not a flat page


def test_the_pipeline_pushes_the_card_with_the_model(version_dir, tiny_run, capsys):
    """The ModelReport component wrote the card; the Pusher put it into the version
    folder before the rename, with the version filled in."""
    card = (version_dir / MODEL_CARD_FILE).read_text()
    assert f"version {version_dir.name}" in card and CARD_VERSION_PLACEHOLDER not in card
    assert (version_dir / DIGEST_FILE).read_text().strip() in card
    assert "## Quantitative analysis" in card
