"""The shortcut control: its image statistics on hand-made images, the classifier on
data where a shortcut is planted (and where none is), the component on a hand-made
Examples folder, and its rows in the report. Its place in the pipeline and the tiny
run's control are checked in test_pipeline.py, its rows in the run's report in
tests/report/."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from scipy import stats

from btmri import spec
from btmri.intervals import format_with_interval
from btmri.layout import SHORTCUT_CONTROL_FILE
from components.shortcut import control
from components.shortcut.control import FEATURES, image_statistics

COLUMN = {name: i for i, name in enumerate(FEATURES)}
NOTUMOR = spec.CLASS_NAMES.index("notumor")


def _png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def _stat(row: np.ndarray, name: str) -> float:
    return float(row[COLUMN[name]])


def test_statistics_of_a_constant_and_a_two_level_image():
    flat = np.full((30, 50), 100, np.uint8)
    data = _png(flat)
    row = image_statistics(data)
    assert row.shape == (len(FEATURES),)
    assert _stat(row, "encoded_bytes") == len(data)
    assert _stat(row, "format") == control.FORMAT_CODES[spec.FORMAT_PNG]
    assert (_stat(row, "height"), _stat(row, "width")) == (30, 50)
    assert _stat(row, "intensity_mean") == 100 and _stat(row, "intensity_std") == 0
    assert _stat(row, "intensity_skewness") == 0 and _stat(row, "intensity_kurtosis") == 0
    assert _stat(row, "dark_share") == 0
    assert _stat(row, "gradient_mean") == 0 and _stat(row, "laplacian_variance") == 0

    # Half black, half white: mean = sd = 127.5, symmetric (skewness 0), excess kurtosis -2.
    halves = np.zeros((40, 40), np.uint8)
    halves[:, 20:] = 255
    row = image_statistics(_png(halves))
    assert _stat(row, "intensity_mean") == pytest.approx(127.5)
    assert _stat(row, "intensity_std") == pytest.approx(127.5)
    assert _stat(row, "intensity_skewness") == pytest.approx(0, abs=1e-12)
    assert _stat(row, "intensity_kurtosis") == pytest.approx(-2)
    assert _stat(row, "dark_share") == 0.5


def test_moments_equal_scipys_and_texture_measures_known_values():
    rng = np.random.default_rng(3)
    pixels = np.clip(rng.gamma(2.0, 20.0, (64, 48)), 0, 255).astype(np.uint8)
    row = image_statistics(_png(pixels))
    values = pixels.ravel().astype(np.float64)
    assert _stat(row, "intensity_mean") == pytest.approx(values.mean())
    assert _stat(row, "intensity_std") == pytest.approx(values.std())
    assert _stat(row, "intensity_skewness") == pytest.approx(stats.skew(values))
    assert _stat(row, "intensity_kurtosis") == pytest.approx(stats.kurtosis(values))  # Fisher: excess
    assert _stat(row, "dark_share") == pytest.approx(np.mean(values <= control.DARK_LEVEL))
    assert _stat(row, "intensity_skewness") > 0.5  # a gamma is right-skewed: the check can fail

    # A vertical step 0 → 100 on a 20x20 image: the 3x3 Sobel answers 4 * 100 in the two
    # columns beside the step, 0 elsewhere (mean 2 * 400 / 20); the 4-neighbour Laplacian
    # +100 and -100 there (variance 2 * 100² / 20).
    step = np.zeros((20, 20), np.uint8)
    step[:, 10:] = 100
    row = image_statistics(_png(step))
    assert _stat(row, "gradient_mean") == pytest.approx(40.0)
    assert _stat(row, "laplacian_variance") == pytest.approx(1000.0)


def test_format_size_and_undecodable_bytes():
    pixels = np.full((24, 36), 60, np.uint8)
    jpeg = _jpeg(pixels)
    row = image_statistics(jpeg)
    assert _stat(row, "format") == control.FORMAT_CODES[spec.FORMAT_JPEG]
    assert _stat(row, "encoded_bytes") == len(jpeg)
    assert (_stat(row, "height"), _stat(row, "width")) == (24, 36)
    assert _stat(row, "intensity_mean") == pytest.approx(60, abs=1)

    row = image_statistics(b"not an image")
    assert _stat(row, "encoded_bytes") == 12
    assert _stat(row, "format") == control.FORMAT_CODES[spec.FORMAT_OTHER]
    pixel_features = [f for f in FEATURES if f not in ("encoded_bytes", "format")]
    assert all(math.isnan(_stat(row, f)) for f in pixel_features)


def _scan(rng: np.random.Generator, size: int) -> np.ndarray:
    """An MRI-like slice whose content is drawn the same way for every class: a bright
    ellipse of random size and brightness on black, with noise."""
    image = np.zeros((size, size), np.float32)
    centre = (size // 2 + int(rng.integers(-4, 5)), size // 2 + int(rng.integers(-4, 5)))
    axes = (int(size * rng.uniform(0.25, 0.42)), int(size * rng.uniform(0.25, 0.42)))
    cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(60, 200)), -1)
    image += rng.normal(0, rng.uniform(4, 20), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _dataset(seed: int, per_class: int, planted: bool) -> list[tuple[bytes, int]]:
    """Four classes alike in content. Planted: notumor is PNG at 80x80, the tumour classes
    JPEG at 64x64 (the Kaggle merge's pattern); otherwise all JPEG at 64x64."""
    rng = np.random.default_rng(seed)
    records = []
    for label in range(spec.NUM_CLASSES):
        for _ in range(per_class):
            if planted and label == NOTUMOR:
                records.append((_png(_scan(rng, 80)), label))
            else:
                records.append((_jpeg(_scan(rng, 64)), label))
    return records


@pytest.fixture(scope="module")
def planted():
    return control.run_control(_dataset(1, 60, True), _dataset(2, 40, True), evaluated_split="eval")


@pytest.fixture(scope="module")
def no_signal():
    return control.run_control(_dataset(1, 60, False), _dataset(2, 40, False), evaluated_split="eval")


def _recalls(document: dict) -> dict[str, dict]:
    return {c["name"]: c["recall"] for c in document["per_class"]}


def test_a_planted_shortcut_is_found_far_above_chance(planted):
    doc = planted
    assert (doc["train_examples"], doc["evaluated_examples"]) == (240, 160)
    recall = _recalls(doc)
    assert recall["notumor"]["value"] >= 0.95 and recall["notumor"]["ci95"][0] > 0.85
    # The tumour classes are alike in everything: among themselves the control guesses.
    others = [recall[name]["value"] for name in spec.CLASS_NAMES if name != "notumor"]
    assert np.mean(others) < 0.6
    accuracy, chance = doc["accuracy"], doc["chance"]["accuracy"]
    assert chance["value"] == pytest.approx(0.25)
    assert accuracy["value"] > 0.42 and accuracy["ci95"][0] > chance["ci95"][1]
    # It found the shortcut where it was planted: storage, not gray levels.
    assert doc["feature_importance"][0]["feature"] in ("format", "height", "width", "encoded_bytes")
    # The confusion matrix carries the figures.
    confusion = np.array(doc["confusion"])
    assert confusion.sum() == 160 and confusion[NOTUMOR, NOTUMOR] == recall["notumor"]["successes"]
    assert doc["fitted"] and doc["seconds"]["total"] > 0


def test_without_a_shortcut_the_control_stays_near_chance(no_signal, planted):
    doc = no_signal
    accuracy = doc["accuracy"]
    assert accuracy["value"] < 0.4
    assert accuracy["ci95"][0] < doc["chance"]["accuracy"]["ci95"][1]  # not above chance
    assert _recalls(doc)["notumor"]["value"] < 0.7
    assert accuracy["value"] < planted["accuracy"]["value"] - 0.1


def test_the_control_is_deterministic(planted):
    again = control.run_control(_dataset(1, 60, True), _dataset(2, 40, True), evaluated_split="eval")
    without_time = {k: v for k, v in again.items() if k != "seconds"}
    assert json.dumps(without_time, sort_keys=True) == json.dumps(
        {k: v for k, v in planted.items() if k != "seconds"}, sort_keys=True
    )


def test_one_training_class_and_unknown_labels():
    image = _png(np.full((16, 16), 80, np.uint8))
    doc = control.run_control([(image, 1)] * 5 + [(image, 9)], [(image, 1), (image, 2)], "eval")
    assert not doc["fitted"] and doc["feature_importance"] == []
    assert doc["chance"]["predicts"] == spec.CLASS_NAMES[1]
    assert doc["accuracy"]["successes"] == 1 and doc["accuracy"]["n"] == 2
    assert doc["skipped_labels"] == [9] and doc["train_examples"] == 5


def _write_examples(root, splits: dict[str, list[tuple[bytes, int]]]) -> str:
    """An Examples artifact as ImportExampleGen writes it: Split-<name>/*.gz."""
    import tensorflow as tf

    for split, records in splits.items():
        folder = root / f"Split-{split}"
        folder.mkdir(parents=True)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(folder / "data_tfrecord-00000-of-00001.gz"), options) as writer:
            for data, label in records:
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            spec.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                            spec.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    return str(root)


def test_the_component_reads_an_examples_artifact_and_writes_its_document(tmp_path, planted):
    from components.shortcut.component import run_shortcut_control

    uri = _write_examples(
        tmp_path / "examples", {"train": _dataset(1, 60, True), "test": _dataset(2, 40, True)}
    )
    document = run_shortcut_control(uri, "test", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / SHORTCUT_CONTROL_FILE).read_text()) == document
    assert document["evaluated_split"] == "test" and document["train_split"] == "train"
    # The records hold the same bytes as the in-memory run: the same figures.
    assert document["confusion"] == planted["confusion"]
    assert document["seconds"]["component"] >= document["seconds"]["total"] > 0


def test_report_rows_put_the_control_beside_the_cnn(planted):
    from pipeline.report import metrics, shortcut_control
    from pipeline.report.markup import to_markdown

    labels = np.repeat(np.arange(4), 40)
    probs = np.eye(4)[labels] * 0.9 + 0.025
    cnn = metrics.figures(metrics.confusion_matrix(labels, labels, 4), labels, probs, spec.CLASS_NAMES)
    text = to_markdown(shortcut_control.blocks(planted, cnn, spec.CLASS_NAMES))
    control_row = next(
        line for line in text.splitlines() if line.startswith(f"| {shortcut_control.CONTROL_ROW}")
    )
    cells = [c.strip() for c in control_row.strip("|").split("|")]
    recall = _recalls(planted)
    assert cells[1:3] == [
        "160",
        format_with_interval(planted["accuracy"]["value"], planted["accuracy"]["ci95"]),
    ]
    assert cells[3 + NOTUMOR].startswith(f"{recall['notumor']['value']:.3f} [")
    assert f"| {shortcut_control.CNN_ROW} | 160 | 1.000 [" in text
    assert "far above chance" in text and "notumor" in text
    assert "not clearly above chance" in to_markdown(
        shortcut_control.blocks({**planted, "accuracy": planted["chance"]["accuracy"]}, cnn, spec.CLASS_NAMES)
    )
    assert "No shortcut control" in to_markdown(shortcut_control.blocks(None, cnn, spec.CLASS_NAMES))


@pytest.mark.realdata
def test_cost_on_the_real_images(real_data, tmp_path):
    """The component on the real training folder (5,474 images of 224x224, re-encoded
    JPEG), as an Examples artifact split 80/20 by content hash: under a minute, and the
    shortcut it finds (the figures are printed for the README)."""
    import hashlib

    from components.shortcut.component import run_shortcut_control

    splits: dict[str, list] = {"train": [], "eval": []}
    for label, name in enumerate(spec.CLASS_NAMES):
        for path in sorted((real_data / "Training" / name).iterdir()):
            data = path.read_bytes()
            held_out = int(hashlib.md5(data).hexdigest(), 16) % 5 == 0
            splits["eval" if held_out else "train"].append((data, label))
    uri = _write_examples(tmp_path / "examples", splits)
    document = run_shortcut_control(uri, "eval", str(tmp_path / "out"))
    print(json.dumps({k: document[k] for k in ("seconds", "accuracy", "chance", "evaluated_examples")}))
    print({c["name"]: round(c["recall"]["value"], 3) for c in document["per_class"]})
    print([(r["feature"], round(r["accuracy_drop"], 3)) for r in document["feature_importance"]])
    assert document["train_examples"] + document["evaluated_examples"] == sum(map(len, splits.values()))
    assert document["seconds"]["component"] < 60
    assert document["accuracy"]["ci95"][0] > document["chance"]["accuracy"]["ci95"][1]
