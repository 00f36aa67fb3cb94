"""The `gradcam` signature: its contract, the model-randomisation sanity check
(Adebayo et al., 2018: an explanation that survives randomised weights explains
nothing about the model), and, in the slow run, localisation on phantoms whose
lesion masks are known."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr

from data_prep.synth import mask_path_for
from btmri import spec
from tests.conftest import only_version

TUMOR_CLASSES = [c for c in spec.CLASS_NAMES if c != "notumor"]


def tumor_images(synthetic: Path, per_class: int | None = None) -> list[Path]:
    root = synthetic / spec.KAGGLE_TESTING_DIR
    return [p for c in TUMOR_CLASSES for p in sorted((root / c).glob("*.png"))[:per_class]]


def gradcam(model, files: list[Path], batch: int = 16) -> dict[str, np.ndarray]:
    parts = []
    for i in range(0, len(files), batch):
        data = tf.constant([f.read_bytes() for f in files[i : i + batch]])
        parts.append(
            {
                k: v.numpy()
                for k, v in model.signatures[spec.GRADCAM](**{spec.IMAGE_BYTES_INPUT: data}).items()
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def files(tiny_run) -> list[Path]:
    return tumor_images(tiny_run / "data" / "synthetic", per_class=3)


@pytest.fixture(scope="module")
def trained(model_dir):
    return tf.saved_model.load(str(model_dir))


def test_heatmap_contract(trained, files):
    out = gradcam(trained, files)
    heatmap, probs = out[spec.HEATMAP], out[spec.PROBABILITIES]
    assert heatmap.shape == (len(files), 224, 224) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0
    # Normalised per image: the peak is 1 (or the map is all zero when no region helps the class).
    assert all(np.isclose(h.max(), 1.0) or h.max() == 0.0 for h in heatmap)
    assert out[spec.CLASS_ID].tolist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The heatmap explains the class the model answers.
    plain = trained.signatures[spec.PREDICT_IMAGES](
        **{spec.IMAGE_BYTES_INPUT: tf.constant([f.read_bytes() for f in files])}
    )
    assert out[spec.CLASS_ID].tolist() == plain[spec.CLASS_ID].numpy().tolist()


def test_gradcam_probabilities_are_the_models(trained, files):
    """The probabilities `btmri gradcam` prints are the ones `btmri predict` prints."""
    out = gradcam(trained, files)
    plain = trained.signatures[spec.PREDICT_IMAGES](
        **{spec.IMAGE_BYTES_INPUT: tf.constant([f.read_bytes() for f in files])}
    )
    np.testing.assert_allclose(out[spec.PROBABILITIES], plain[spec.PROBABILITIES].numpy(), atol=1e-5)


def rank_correlations(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Spearman correlation per image pair; constant maps (undefined rank order) are left out."""
    return [spearmanr(x.ravel(), y.ravel()).correlation for x, y in zip(a, b) if x.std() > 0 and y.std() > 0]


def reinitialise(model, seed: int = 0) -> int:
    """He-normal re-initialisation of every kernel the gradcam signature uses (conv and dense);
    norm scales and biases keep their values. Returns how many kernels were replaced."""
    rng = np.random.default_rng(seed)
    kernels = [v for v in model.signatures[spec.GRADCAM].trainable_variables if len(v.shape) >= 2]
    for v in kernels:
        fan_in = int(np.prod(v.shape[:-1]))
        v.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), v.shape).astype(np.float32))
    return len(kernels)


def hot_region_overlap(a: np.ndarray, b: np.ndarray, top: float = 0.1) -> float:
    """Intersection over union of the hottest `top` share of pixels of two maps."""
    hot_a, hot_b = a >= np.quantile(a, 1 - top), b >= np.quantile(b, 1 - top)
    return float((hot_a & hot_b).sum() / max((hot_a | hot_b).sum(), 1))


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two maps read as distributions of attention: 0 same, 1 disjoint.
    Unlike a mean pixel difference it does not shrink when the maps are sparse."""
    p, q = a / max(a.sum(), 1e-12), b / max(b.sum(), 1e-12)
    return float(0.5 * np.abs(p - q).sum())


def inside_crops(heatmaps: np.ndarray, files: list[Path]) -> list[np.ndarray]:
    """Each heatmap cut to the head crop the Transform chose for its image: outside the
    crop the map is zero whatever the weights (the network never saw those pixels), so
    those pixels would only make any two maps look alike."""
    from components.transform.preprocessing import HEAD_BOX_XF, preprocessing_fn

    boxes = preprocessing_fn({spec.IMAGE_KEY: tf.constant([[f.read_bytes()] for f in files])})[HEAD_BOX_XF]
    size = heatmaps.shape[1]
    out = []
    for heatmap, (y0, x0, y1, x1) in zip(heatmaps, np.clip(boxes.numpy(), 0.0, 1.0)):
        top, left = int(np.floor(y0 * size)), int(np.floor(x0 * size))
        bottom, right = int(np.ceil(y1 * size)), int(np.ceil(x1 * size))
        out.append(heatmap[top:bottom, left:right])
    return out


def test_heatmap_depends_on_the_learned_weights(model_dir, files):
    """Model-parameter randomisation (all kernels at once). Random convolutions still
    respond to the image's own structure, so maps keep some rank correlation even between
    two random models; what must change is where the map is hot and how its attention
    is spread. The tiny run trains one epoch, so its weights are still close to their
    initialisation and the figures vary from run to run: total-variation distance trained
    vs randomised had a median of 0.55 in one run and 0.29 in another, against 0.21-0.27
    between two random models; rank correlation 0.13-0.47 (0.81 once), hot-region overlap
    0.05-0.15.
    A map that ignored the weights would give distance 0, correlation 1, overlap 1.
    Compared inside the head crop only: over the whole image one run gave rank
    correlation 0.83 (the zeros outside the crop are shared), inside it 0.57."""
    model = tf.saved_model.load(str(model_dir))  # a private copy: its weights get overwritten
    trained = gradcam(model, files)[spec.HEATMAP]
    again = gradcam(model, files)[spec.HEATMAP]
    np.testing.assert_array_equal(trained, again)  # control: same weights, same maps

    assert reinitialise(model) >= 5
    randomised = gradcam(model, files)[spec.HEATMAP]
    trained, randomised = inside_crops(trained, files), inside_crops(randomised, files)
    rho = rank_correlations(trained, randomised)
    assert len(rho) >= len(files) // 2, "too many constant heatmaps to compare"
    # A map that ignored the weights would give rho ~1, difference ~0, overlap ~1. The
    # bounds leave room for a 1-epoch model's spread (one CI run: median rho 0.81).
    assert np.median(np.abs(rho)) < 0.95, rho
    tv = [total_variation(a, b) for a, b in zip(trained, randomised)]
    assert np.median(tv) > 0.1, tv
    assert np.median([hot_region_overlap(a, b) for a, b in zip(trained, randomised)]) < 0.7


POINTING_TOLERANCE = 15  # pixels of the 224x224 model input (the pointing game's usual 15)


def peak_distance(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Distance in model-input pixels from the heatmap's peak to the nearest lesion pixel
    (0 when the peak is inside). The heatmap covers the whole image resized to 224x224,
    so the mask is resized the same way; INTER_AREA keeps lesions smaller than a pixel."""
    small = cv2.resize(mask, heatmap.shape[::-1], interpolation=cv2.INTER_AREA) > 0
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    ys, xs = np.nonzero(small)
    return float(np.sqrt((ys - row) ** 2 + (xs - col) ** 2).min())


@pytest.mark.slow
def test_heatmap_peak_falls_inside_the_lesion(tmp_path_factory, record_property):
    """After a short training on phantoms (about 5 minutes here), Grad-CAM points at the
    lesion the generator drew. Two figures: the peak strictly inside the mask, and the
    pointing game (peak within 15 px of it). Grad-CAM at 14x14 alone puts peaks on a
    16-px grid, coarser than a pituitary lesion (~0.2% of the image); the signature
    sharpens it with a 56x56 LayerCAM (components/training/gradcam.py). Measured with the
    defaults: 63.7% inside (glioma 65%, meningioma 58%, pituitary 68%), 97.3% within
    15 px; a random point is inside 0.6% of the time. (Other trainings: 62.7-80.0%;
    14x14 Grad-CAM alone: 33-61% inside.) Since lesion guidance and head framing:
    44.7% inside, 84.0% within 15 px (one run, mri_resnet), which failed this test; with
    the evidence model (the default now) 88.7% inside, 97.7% within 15 px (one run)."""
    from pipeline.cli import main

    work = tmp_path_factory.mktemp("gradcam_localisation")
    assert (
        main(
            [
                "run",
                "--work-dir",
                str(work),
                "--pipeline-root",
                str(work / "pipeline"),
                "--serving-dir",
                str(work / "serving"),
                "--synthetic-per-class",
                "400",
                "--epochs",
                "15",
                "--schedule",  # the 15-epoch cosine the figures in its docstring were measured with
                "cosine",
                "--batch-size",
                "32",
                "--model",
                spec.DEFAULT_MODEL,
            ]
        )
        == 0
    )
    model = tf.saved_model.load(str(only_version(work / "serving")))
    files = tumor_images(work / "data" / "synthetic")
    out = gradcam(model, files)
    distances: dict[str, list[float]] = {c: [] for c in TUMOR_CLASSES}
    areas = []
    for f, heatmap in zip(files, out[spec.HEATMAP]):
        mask = cv2.imread(str(mask_path_for(f)), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.any(), f"no lesion mask for {f}"
        distances[f.parent.name].append(peak_distance(heatmap, mask))
        areas.append(float((mask > 0).mean()))
    every = np.array([d for ds in distances.values() for d in ds])
    inside, pointing, chance = (
        float(np.mean(every == 0)),
        float(np.mean(every <= POINTING_TOLERANCE)),
        float(np.mean(areas)),
    )
    per_class = ", ".join(
        f"{c} {np.mean(np.array(d) == 0):.0%} / {np.mean(np.array(d) <= POINTING_TOLERANCE):.0%}"
        for c, d in distances.items()
    )
    print(
        f"\nGrad-CAM on {len(files)} tumour test images: peak inside the lesion {inside:.1%}, "
        f"within {POINTING_TOLERANCE} px {pointing:.1%} (inside / within per class: {per_class}); "
        f"a random point would be inside {chance:.1%} of the time"
    )
    record_property("gradcam_peak_inside_lesion", inside)
    record_property("gradcam_pointing_game", pointing)
    assert inside > 0.5, per_class  # the issue: inside the mask for most tumour images
    assert pointing > 0.8, per_class
    assert inside > 20 * chance, per_class
