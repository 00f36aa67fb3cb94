"""The shortcut control: a deliberately dumb classifier that sees no anatomy.

Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) on a handful of
statistics of each image: how it was stored (height, width, JPEG or PNG, encoded size)
and what its gray levels look like overall (histogram moments, the share of near-black
background, two texture measures). No pixel reaches it, so whatever it gets right it
gets from how the images were collected, not from a tumour. Fitted on the training
split, scored on the split the Evaluator scores; the report puts its accuracy and
per-class recall beside the CNN's. In the Kaggle merge `notumor` comes from other
collections than the tumour classes (other sizes, formats, scanners), so a control far
above chance says the data offers a shortcut, and the CNN's figures may include it.

`image_statistics` is the one place the statistics are computed (OpenCV decode of the
encoded bytes); `run_control` fits and scores the classifier and returns the JSON
document the ShortcutControl component writes (components/shortcut/component.py).
Deterministic: fixed random states, no early stopping (no random validation split).
NumPy, OpenCV and scikit-learn only: no TensorFlow here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from btmri import intervals, spec
from btmri.layout import SHORTCUT_CONTROL_FILE
from data_prep.request_features import image_format

RANDOM_STATE = 0
DARK_LEVEL = 10  # gray levels 0..DARK_LEVEL (of 255) count as near-black background
IMPORTANCE_REPEATS = 5  # permutation importance: shuffles per statistic, on the scored split

# The classifier's settings (recorded in the document). Early stopping off: it would
# hold out a random share of the training split, which the figures should not depend on.
CLASSIFIER_PARAMS = {
    "max_iter": 150,
    "learning_rate": 0.1,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 20,
    "early_stopping": False,
}

# The statistics, in column order. Pixel statistics are of OpenCV's 8-bit grayscale
# decode; an image OpenCV cannot decode keeps only the first two, the rest are NaN
# (the trees send missing values down a branch of their own).
FEATURES = (
    "encoded_bytes",  # length of the stored bytes
    "format",  # FORMAT_CODES, from the magic bytes
    "height",  # pixels of the stored image
    "width",
    "intensity_mean",  # gray levels 0..255
    "intensity_std",
    "intensity_skewness",  # third standardised moment (0 for a constant image)
    "intensity_kurtosis",  # excess kurtosis: fourth standardised moment - 3 (0 when constant)
    "dark_share",  # share of pixels at or below DARK_LEVEL
    "gradient_mean",  # mean Sobel gradient magnitude (3x3), gray levels per pixel
    "laplacian_variance",  # variance of the 3x3 Laplacian: sharpness, noise
)
FEATURE_DESCRIPTIONS = {
    "encoded_bytes": "encoded size in bytes",
    "format": "file format (JPEG/PNG, from the magic bytes)",
    "height": "height in pixels",
    "width": "width in pixels",
    "intensity_mean": "mean gray level",
    "intensity_std": "standard deviation of the gray levels",
    "intensity_skewness": "skewness of the gray levels",
    "intensity_kurtosis": "excess kurtosis of the gray levels",
    "dark_share": f"share of near-black pixels (gray level ≤ {DARK_LEVEL})",
    "gradient_mean": "mean gradient magnitude (Sobel)",
    "laplacian_variance": "variance of the Laplacian",
}
assert set(FEATURE_DESCRIPTIONS) == set(FEATURES)
FORMAT_CODES = {spec.FORMAT_JPEG: 0.0, spec.FORMAT_PNG: 1.0, spec.FORMAT_OTHER: 2.0}
_COLUMN = {name: i for i, name in enumerate(FEATURES)}
_LEVELS = np.arange(256, dtype=np.float64)


def image_statistics(data: bytes) -> np.ndarray:
    """The FEATURES of one encoded image, float64 [len(FEATURES)]."""
    row = np.full(len(FEATURES), np.nan)
    row[_COLUMN["encoded_bytes"]] = len(data)
    row[_COLUMN["format"]] = FORMAT_CODES[image_format(data)]
    try:
        gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        gray = None
    if gray is None or not gray.size:
        return row
    row[_COLUMN["height"]], row[_COLUMN["width"]] = gray.shape[:2]

    # Moments from the 256-bin histogram: exact for 8-bit images, and cheap.
    share = np.bincount(gray.ravel(), minlength=256).astype(np.float64) / gray.size
    mean = float(share @ _LEVELS)
    centred = _LEVELS - mean
    variance = float(share @ centred**2)
    row[_COLUMN["intensity_mean"]] = mean
    row[_COLUMN["intensity_std"]] = np.sqrt(variance)
    if variance > 0:
        row[_COLUMN["intensity_skewness"]] = float(share @ centred**3) / variance**1.5
        row[_COLUMN["intensity_kurtosis"]] = float(share @ centred**4) / variance**2 - 3.0
    else:
        row[_COLUMN["intensity_skewness"]] = row[_COLUMN["intensity_kurtosis"]] = 0.0
    row[_COLUMN["dark_share"]] = float(share[: DARK_LEVEL + 1].sum())

    # Float64 throughout: OpenCV's float32 SIMD paths can differ in the last bit from
    # run to run (memory alignment), and the control must not.
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    row[_COLUMN["gradient_mean"]] = float(np.sqrt(gx * gx + gy * gy).mean())
    row[_COLUMN["laplacian_variance"]] = float(cv2.Laplacian(gray, cv2.CV_64F, ksize=1).var())
    return row


def statistics_table(records: Iterable[tuple[bytes, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(statistics [N, len(FEATURES)], labels [N]) of (encoded image, label) pairs."""
    rows, labels = [], []
    for data, label in records:
        rows.append(image_statistics(data))
        labels.append(int(label))
    return np.asarray(rows, np.float64).reshape(-1, len(FEATURES)), np.asarray(labels, np.int64)


def fit(x: np.ndarray, y: np.ndarray):
    """The fitted classifier, or None when the training split has fewer than two classes."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if len(np.unique(y)) < 2:
        return None
    return HistGradientBoostingClassifier(**CLASSIFIER_PARAMS, random_state=RANDOM_STATE).fit(x, y)


def _one_thread():
    """OpenMP held to one thread while the trees are fitted and asked. At these sizes
    (thousands of rows, a dozen columns) threads gain little, and on a machine whose
    cores are busy with other work (the Trainer beside it) OpenMP's waiting at every
    tree's barrier made fit and permutation importance many times slower."""
    import sklearn.ensemble  # noqa: F401  (loads OpenMP: threadpoolctl limits loaded libraries only)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _majority(y: np.ndarray, num_classes: int) -> int:
    return int(np.argmax(np.bincount(y, minlength=num_classes))) if len(y) else 0


def feature_importance(model, x: np.ndarray, y: np.ndarray) -> list[dict]:
    """Permutation importance on the scored split: the accuracy lost when one statistic
    is shuffled across images, mean and sd over IMPORTANCE_REPEATS shuffles; largest first."""
    from sklearn.inspection import permutation_importance

    if model is None or len(y) < 2:
        return []
    result = permutation_importance(
        model, x, y, scoring="accuracy", n_repeats=IMPORTANCE_REPEATS, random_state=RANDOM_STATE, n_jobs=1
    )
    rows = [
        {"feature": name, "accuracy_drop": float(m), "sd": float(s)}
        for name, m, s in zip(FEATURES, result.importances_mean, result.importances_std)
    ]
    return sorted(rows, key=lambda r: (-r["accuracy_drop"], FEATURES.index(r["feature"])))


def class_medians(x: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict:
    """{class: {statistic: median}} (NaN-aware; None where a class has no value): what
    differs between the classes, for the reader."""
    out = {}
    for k, name in enumerate(class_names):
        rows = x[y == k]
        medians = {}
        for j, feature in enumerate(FEATURES):
            values = rows[:, j][~np.isnan(rows[:, j])]
            medians[feature] = float(np.median(values)) if values.size else None
        out[name] = medians
    return out


def evaluate(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    class_names: Sequence[str] = spec.CLASS_NAMES,
) -> dict:
    """Fits on (x_train, y_train), scores on (x_eval, y_eval): the figures of the document."""
    num_classes = len(class_names)
    started = time.perf_counter()
    with _one_thread():
        model = fit(x_train, y_train)
        fitted = time.perf_counter()
        majority = _majority(y_train, num_classes)
        if model is None:
            predicted = np.full(len(y_eval), majority, np.int64)
        else:
            predicted = model.predict(x_eval).astype(np.int64) if len(y_eval) else np.zeros(0, np.int64)
        importance = feature_importance(model, x_eval, y_eval)
    scored = time.perf_counter()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (y_eval, predicted), 1)
    correct = int(np.trace(confusion))
    return {
        "fitted": model is not None,
        "accuracy": intervals.proportion(correct, len(y_eval)),
        # What a classifier without information scores: the most frequent training class.
        "chance": {
            "predicts": class_names[majority],
            "accuracy": intervals.proportion(int(np.sum(y_eval == majority)), len(y_eval)),
        },
        "per_class": [
            {
                "name": name,
                "support": int(confusion[k].sum()),
                "recall": intervals.proportion(int(confusion[k, k]), int(confusion[k].sum())),
            }
            for k, name in enumerate(class_names)
        ],
        "confusion": confusion.tolist(),  # [actual, predicted]
        "feature_importance": importance,
        "train_class_medians": class_medians(x_train, y_train, class_names),
        "seconds": {"fit": fitted - started, "score_and_importance": scored - fitted},
    }


def _valid(records: Iterable[tuple[bytes, int]], num_classes: int, skipped: list):
    for data, label in records:
        if 0 <= int(label) < num_classes:
            yield data, label
        else:
            skipped.append(int(label))


def run_control(
    train_records: Iterable[tuple[bytes, int]],
    evaluated_records: Iterable[tuple[bytes, int]],
    evaluated_split: str,
    class_names: Sequence[str] = spec.CLASS_NAMES,
) -> dict:
    """The control's JSON document: statistics of both splits (reading the records
    happens as they are drawn, so it is timed with them), the fit, the figures."""
    started = time.perf_counter()
    skipped: list[int] = []
    x_train, y_train = statistics_table(_valid(train_records, len(class_names), skipped))
    x_eval, y_eval = statistics_table(_valid(evaluated_records, len(class_names), skipped))
    read = time.perf_counter()
    figures = evaluate(x_train, y_train, x_eval, y_eval, class_names)
    seconds = {"read_and_statistics": read - started, **figures.pop("seconds")}
    seconds["total"] = time.perf_counter() - started
    return {
        "method": "gradient-boosted trees (scikit-learn HistGradientBoostingClassifier) on "
        f"{len(FEATURES)} statistics of each image, no pixels",
        "classifier": {"type": "HistGradientBoostingClassifier", **CLASSIFIER_PARAMS},
        "random_state": RANDOM_STATE,
        "features": [{"name": f, "description": FEATURE_DESCRIPTIONS[f]} for f in FEATURES],
        "format_codes": FORMAT_CODES,
        "train_split": spec.TRAIN_SPLIT,
        "evaluated_split": evaluated_split,
        "train_examples": int(len(y_train)),
        "evaluated_examples": int(len(y_eval)),
        "undecodable_images": int(
            np.isnan(x_train[:, _COLUMN["height"]]).sum() + np.isnan(x_eval[:, _COLUMN["height"]]).sum()
        ),
        "skipped_labels": sorted(set(skipped)),
        **figures,
        "seconds": seconds,
    }


def write(document: dict, out_dir: str) -> str:
    """Writes the document into an artifact folder; returns its path."""
    path = os.path.join(out_dir, SHORTCUT_CONTROL_FILE)
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
    return path


def read(out_dir: str | None) -> dict | None:
    """The document in a ShortcutControl artifact folder, or None when absent."""
    path = os.path.join(out_dir or "", SHORTCUT_CONTROL_FILE)
    if not out_dir or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
