"""Tests of the synthetic phantom generator (data_prep/synth.py)."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_prep import synth
from btmri.spec import CLASS_NAMES, KAGGLE_TESTING_DIR, KAGGLE_TRAINING_DIR

PER_CLASS, TEST_PER_CLASS = 100, 50


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = synth.generate_dataset(
        out, per_class=PER_CLASS, test_per_class=TEST_PER_CLASS, seed=0, progress=False
    )
    return out, summary


def _images(root: pathlib.Path, split: str) -> list[tuple[pathlib.Path, int]]:
    return [
        (p, label)
        for label, name in enumerate(CLASS_NAMES)
        for p in sorted((root / split / name).glob("*.png"))
    ]


def _read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_render_phantom_returns_image_and_mask():
    for name in CLASS_NAMES:
        image, mask = synth.render_phantom(name, np.random.default_rng(7))
        assert image.dtype == np.uint8 and image.ndim == 2
        assert 200 <= min(image.shape) and max(image.shape) <= 512
        if name == synth.NOTUMOR:
            assert mask is None
        else:
            assert mask.dtype == np.uint8 and mask.shape == image.shape
            assert set(np.unique(mask)) == {0, 255}
    with pytest.raises(ValueError):
        synth.render_phantom("astrocytoma", np.random.default_rng(0))


def test_deterministic_per_seed_and_independent_of_order(tmp_path, dataset):
    def run(name: str, seed: int) -> dict[str, bytes]:
        synth.generate_dataset(tmp_path / name, per_class=3, test_per_class=1, seed=seed, progress=False)
        return _files(tmp_path / name)

    first = run("a", seed=0)
    assert len(first) == 4 * 4 + 3 * 4 + 3 * 4  # images + masks + the box folder's copies
    assert first == run("b", seed=0)
    # Same bytes as the same names in the big dataset: each image has its own seed.
    big_root, _ = dataset
    assert all((big_root / rel).read_bytes() == data for rel, data in first.items())
    other = run("c", seed=1)
    assert other.keys() == first.keys()
    assert all(other[rel] != data for rel, data in first.items())


def test_layout_counts_and_summary(dataset):
    root, summary = dataset
    assert summary["out_dir"] == str(root)
    expected = {KAGGLE_TRAINING_DIR: PER_CLASS, KAGGLE_TESTING_DIR: TEST_PER_CLASS}
    for split, n in expected.items():
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASS_NAMES)
        for name in CLASS_NAMES:
            files = sorted((root / split / name).iterdir())
            assert len(files) == n == summary["counts"][split][name]
            assert files[0].name == f"syn_{name}_0000.png"
    assert summary["images"] == (PER_CLASS + TEST_PER_CLASS) * len(CLASS_NAMES)


def test_masks_for_tumours_only_outside_class_folders_and_inside_image(dataset):
    root, summary = dataset
    n_masks = 0
    for split in (KAGGLE_TRAINING_DIR, KAGGLE_TESTING_DIR):
        for path, label in _images(root, split):
            mask_path = synth.mask_path_for(path)
            if CLASS_NAMES[label] == synth.NOTUMOR:
                assert mask_path is None
                continue
            n_masks += 1
            assert mask_path is not None and mask_path.is_file()
            # A loader that globs the class folders must never pick a mask up as an image.
            assert root / split not in mask_path.parents
            image, mask = _read(path), _read(mask_path)
            assert mask.shape == image.shape
            assert set(np.unique(mask)) == {0, 255}
            border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
            assert not border.any(), "lesion touches the image edge"
            # The lesion sits in the head, not in the air around it.
            assert image[mask > 0].mean() > 2 * image[:5, :5].mean() + 10
    assert n_masks == summary["masks"] == 3 * (PER_CLASS + TEST_PER_CLASS)
    assert synth.mask_path_for(root / "nowhere" / "x" / "y.png") is None


def test_sizes_vary_and_are_not_all_square(dataset):
    root, _ = dataset
    shapes = [_read(p).shape for p, _ in _images(root, KAGGLE_TESTING_DIR)]
    assert len(set(shapes)) > len(shapes) // 2
    assert sum(h != w for h, w in shapes) > len(shapes) // 2
    assert all(200 <= h <= 512 and 200 <= w <= 512 for h, w in shapes)


def _mean_std(image: np.ndarray) -> np.ndarray:
    return np.array([image.mean(), image.std()])


_HOG = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)


def _head_hog(image: np.ndarray) -> np.ndarray:
    """HOG of the head's bounding box (Otsu threshold), resized to 64x64: a plain image
    descriptor that sees shapes and where they are, not only global statistics."""
    _, head = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    x, y, w, h = cv2.boundingRect(cv2.findNonZero(head))
    crop = cv2.resize(image[y : y + h, x : x + w], (64, 64), interpolation=cv2.INTER_AREA)
    return _HOG.compute(crop).ravel()


def _accuracy(root: pathlib.Path, features) -> float:
    def xy(split):
        items = _images(root, split)
        return np.array([features(_read(p)) for p, _ in items]), np.array([y for _, y in items])

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
    model.fit(*xy(KAGGLE_TRAINING_DIR))
    return model.score(*xy(KAGGLE_TESTING_DIR))


def test_learnable_but_not_from_global_statistics(dataset):
    root, _ = dataset
    global_stats = _accuracy(root, _mean_std)
    image_based = _accuracy(root, _head_hog)
    print(f"test accuracy: mean/std {global_stats:.3f}, head HOG {image_based:.3f} (chance 0.25)")
    # Measured on seeds 0-3: mean/std 0.225-0.28, head HOG 0.735-0.78 (gap >= 0.455).
    assert global_stats <= 0.40
    assert image_based >= 0.60
    assert image_based >= global_stats + 0.30


def test_box_folder_holds_every_tumour_phantom_with_its_mask_box(tmp_path):
    from data_prep.lesion_boxes import mask_to_box, read_box_folder

    synth.generate_dataset(tmp_path, per_class=2, test_per_class=1, seed=3, progress=False)
    slices, skips = read_box_folder(tmp_path / synth.BOXES_DIR)
    assert not skips and len(slices) == 3 * 3  # tumour classes x (2 + 1)
    for s in slices:
        split, name = pathlib.Path(s.path).name.split("_", 1)
        image = tmp_path / split.capitalize() / pathlib.Path(s.path).parent.name / name
        assert pathlib.Path(s.path).read_bytes() == image.read_bytes()
        mask = cv2.imread(str(synth.mask_path_for(image)), cv2.IMREAD_GRAYSCALE)
        assert s.box == pytest.approx(mask_to_box(mask), abs=1e-5)


def test_no_images_asked_writes_nothing(tmp_path):
    summary = synth.generate_dataset(tmp_path / "none", per_class=0, test_per_class=0, progress=False)
    assert summary["images"] == summary["masks"] == 0 and summary["counts"] == {}
    assert not any((tmp_path / "none").rglob("*.png"))
