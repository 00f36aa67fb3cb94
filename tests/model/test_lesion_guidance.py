"""Tumour boxes, their matching onto dataset images, counterfactual images and the
lesion-evidence loss: the parts of lesion-guided training, on small data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow as tf

from components.training.counterfactual import (
    CounterfactualConfig,
    box_masks,
    counterfactual_batch,
    fill_from_surroundings,
    rim_fill,
    transplant_sources,
)
from components.training.lesion_guidance import evidence_loss, lesion_cells
from btmri import spec
from data_prep.lesion_boxes import (
    BoxMatcher,
    format_yolo_box,
    in_audit_part,
    mask_to_box,
    parse_yolo_box,
    read_box_folder,
    slice_thumbnail,
    split_group,
)
from data_prep.synth import render_phantom


def test_yolo_box_round_trip_and_clipping():
    box = parse_yolo_box("2 0.62 0.25 0.13 0.15\n")
    assert box == pytest.approx((0.175, 0.555, 0.325, 0.685))
    assert parse_yolo_box(format_yolo_box(box)) == pytest.approx(box)
    assert parse_yolo_box("0 0.02 0.5 0.1 0.2")[1] == 0.0  # clipped at the edge
    for bad in ("", "1 2 3", "0 0.5 0.5 0 0.1", "0 nan 0.5 0.1 0.1"):
        with pytest.raises(ValueError):
            parse_yolo_box(bad)


def _write_slice(folder, cls, name, image, box_text):
    (folder / cls).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / cls / f"{name}.png"), image)
    if box_text is not None:
        (folder / cls / f"{name}.txt").write_text(box_text)


def test_box_folder_reports_slices_without_a_usable_box(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64), np.uint8)
    _write_slice(tmp_path, "glioma", "1", image, "0 0.5 0.5 0.2 0.2")
    _write_slice(tmp_path, "glioma", "2", image, None)
    _write_slice(tmp_path, "Pituitary", "3", image, "garbage")
    slices, skips = read_box_folder(tmp_path)
    assert [s.source for s in slices] == ["glioma/1.png"]
    assert {s.source: s.reason for s in skips} == {
        "glioma/2.png": "no box file",
        "pituitary/3.png": "unusable box file: expected 'k xc yc w h', got 1 fields",
    }
    (tmp_path / "notumor").mkdir()
    with pytest.raises(ValueError, match="tumour classes only"):
        read_box_folder(tmp_path)


def test_matcher_finds_resized_reencoded_copies_but_not_neighbours(tmp_path):
    """A 224-px JPEG copy of a slice matches it; another phantom of the same class does not."""
    slices = []
    for i in range(6):
        image, mask = render_phantom("meningioma", np.random.default_rng(i))
        _write_slice(tmp_path, "meningioma", str(i), image, format_yolo_box(mask_to_box(mask)))
        slices.append(image)
    matcher = BoxMatcher(read_box_folder(tmp_path)[0])
    label = spec.CLASS_TO_ID["meningioma"]
    copy = cv2.imdecode(
        cv2.imencode(".jpg", cv2.resize(slices[3], (224, 224)), [cv2.IMWRITE_JPEG_QUALITY, 80])[1],
        cv2.IMREAD_GRAYSCALE,
    )
    small = cv2.resize(copy, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    found = matcher.match(small, label)
    assert found is not None and found.source == "meningioma/3.png"
    assert matcher.match(small, spec.CLASS_TO_ID["glioma"]) is None  # class must agree
    other, _ = render_phantom("meningioma", np.random.default_rng(100))
    other_small = cv2.resize(other, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert matcher.match(other_small, label) is None
    assert slice_thumbnail(str(tmp_path / "meningioma" / "3.png")).shape == (1024,)


def test_audit_split_is_by_groups_of_consecutive_ids():
    assert split_group("glioma/1842.jpg") == split_group("glioma/1849.jpg") == "glioma/184"
    assert in_audit_part("glioma/1842.jpg") == in_audit_part("glioma/1849.jpg")
    sides = [in_audit_part(f"pituitary/{i}.jpg") for i in range(0, 4000, 10)]
    assert 0.35 < np.mean(sides) < 0.65


def test_box_masks_cover_the_box_and_no_box_is_empty():
    boxes = tf.constant([[0.25, 0.5, 0.5, 1.0], spec.NO_BOX], tf.float32)
    masks = box_masks(boxes, 8, 8).numpy()[..., 0]
    expected = np.zeros((8, 8))
    expected[2:4, 4:8] = 1
    np.testing.assert_array_equal(masks[0], expected)
    assert masks[1].sum() == 0


def test_fill_replaces_a_bright_lesion_with_its_surroundings():
    image = np.full((1, 224, 224, 1), 0.4, np.float32)
    image[:, 100:130, 90:120] = 1.0  # the "lesion"
    mask = box_masks(tf.constant([[95 / 224, 85 / 224, 135 / 224, 125 / 224]]), 224, 224)
    filled = fill_from_surroundings(tf.constant(image), mask, tf.zeros([1])).numpy()
    assert abs(filled[0, 100:130, 90:120].mean() - 0.4) < 0.02
    np.testing.assert_allclose(filled[0, :60], image[0, :60], atol=1e-6)  # far away: untouched


def test_rim_fill_carries_the_rim_inwards():
    image = np.full((1, 224, 224, 1), 0.4, np.float32)
    image[:, 95:135, 80:125] = 1.0  # the lesion, reaching 5 px past its box on the left
    box = [[90 / 224, 85 / 224, 140 / 224, 135 / 224]]
    filled = rim_fill(tf.constant(image), box_masks(tf.constant(box), 224, 224)).numpy()[0, ..., 0]
    assert filled[110:120, 86:90].mean() > 0.8  # the bright rim streaks into the hole ...
    assert abs(filled[110:120, 128:134].mean() - 0.4) < 0.08  # ... the plain side stays plain
    assert filled[90:140, 85:135].max() <= 1.0 + 1e-6
    image[:, 20:40, 20:40] = 0.9  # elsewhere: the image itself
    filled_again = rim_fill(tf.constant(image), box_masks(tf.constant(box), 224, 224)).numpy()[0, ..., 0]
    np.testing.assert_allclose(filled_again[:80], image[0, :80, :, 0], atol=1e-6)


def test_counterfactuals_use_the_rim_fill_at_its_share():
    image = np.full((1, 224, 224, 1), 0.4, np.float32)
    image[:, 95:135, 80:125] = 1.0  # reaching 5 px past the box on the left
    box = tf.constant([[90 / 224, 85 / 224, 140 / 224, 135 / 224]])

    def removed(rim_share):
        cfg = CounterfactualConfig(
            lesion_rate=1.0,
            decoy_rate=0.0,
            transplant_share=0.0,
            rim_share=rim_share,
            margin=0.0,
            max_noise=0.0,
        )
        out, out_labels, _ = counterfactual_batch(tf.constant(image), tf.constant([0], tf.int64), box, cfg)
        assert out_labels.numpy()[0] == spec.NOTUMOR_ID
        return out.numpy()[0, 110:120, 88:92, 0].mean()

    assert removed(1.0) > 0.75 > removed(0.0)  # the rim streaks in; the smooth fill spreads it


def test_fill_shares_are_checked():
    with pytest.raises(ValueError, match="fill shares"):
        CounterfactualConfig(transplant_share=0.7, rim_share=0.5)


def test_counterfactuals_relabel_removed_lesions_only():
    images = tf.random.uniform([64, 224, 224, 1], seed=3)
    labels = tf.constant([0, 2] * 32, tf.int64)  # glioma with a box, notumor without
    boxes = tf.constant([[0.3, 0.3, 0.5, 0.5], spec.NO_BOX] * 32, tf.float32)
    out_images, out_labels, out_boxes = counterfactual_batch(
        images, labels, boxes, CounterfactualConfig(lesion_rate=0.5, decoy_rate=0.5, paste_rate=0.0), seed=7
    )
    out_labels, out_boxes = out_labels.numpy(), out_boxes.numpy()
    removed = (labels.numpy() == 0) & (out_labels == spec.NOTUMOR_ID)
    assert 5 < removed.sum() < 27  # about half of the 32 gliomas
    assert (out_boxes[removed] == -1).all()  # nothing left to point at
    kept_glioma = (labels.numpy() == 0) & ~removed
    assert (out_labels[kept_glioma] == 0).all()
    np.testing.assert_array_equal(out_boxes[kept_glioma], boxes.numpy()[kept_glioma])
    # Decoys edit images without changing labels (notumor stays notumor).
    changed = np.abs(out_images.numpy() - images.numpy()).reshape(64, -1).max(axis=1) > 0
    notumor = labels.numpy() == 2
    assert changed[notumor].any() and (out_labels[notumor] == 2).all()
    # A kept glioma's decoy never touches its lesion box.
    diff = np.abs(out_images.numpy() - images.numpy())[..., 0]
    lesion = box_masks(boxes, 224, 224).numpy()[..., 0] > 0
    assert diff[kept_glioma][lesion[kept_glioma]].max() < 0.25


def test_pasted_lesions_bring_their_class_and_box_to_notumor_images():
    images = np.full((8, 224, 224, 1), 0.3, np.float32)
    images[:4] = 0.5
    images[:4, 60:90, 60:90] = 1.0  # the gliomas' lesion
    images[7] = 0.0  # a notumor image that is all background
    labels = tf.constant([0, 0, 0, 0, 2, 2, 2, 2], tf.int64)
    box = [50 / 224, 50 / 224, 100 / 224, 100 / 224]
    boxes = tf.constant([box] * 4 + [spec.NO_BOX] * 4, tf.float32)
    out, out_labels, out_boxes = counterfactual_batch(
        tf.constant(images),
        labels,
        boxes,
        CounterfactualConfig(lesion_rate=0.0, decoy_rate=0.0, paste_rate=1.0, paste_invert_share=0.0),
        seed=1,
    )
    out, out_labels, out_boxes = out.numpy(), out_labels.numpy(), out_boxes.numpy()
    np.testing.assert_array_equal(out_labels, [0, 0, 0, 0, 0, 0, 0, 2])  # background: skipped
    np.testing.assert_allclose(out_boxes[4:7], [box] * 3, atol=1e-6)
    # The lesion arrives 0.5 above its surroundings, as it was in the donor.
    assert out[4:7, 65:85, 65:85].mean() == pytest.approx(0.8, abs=0.03)
    np.testing.assert_allclose(out[4:7, 150:], images[4:7, 150:])  # elsewhere: untouched
    np.testing.assert_array_equal(out[7], images[7])
    np.testing.assert_array_equal(out[:4], images[:4])  # donors keep theirs


def test_inverted_paste_turns_the_lesion_dark_against_its_ring():
    """paste_invert_share: the pasted lesion keeps its shape and contrast magnitude but
    lies below its surroundings (a T1 look), with the donor's class all the same."""
    images = np.full((4, 224, 224, 1), 0.4, np.float32)
    images[:2] = 0.5
    images[:2, 60:90, 60:90] = 0.7  # lesion 0.2 above the ring
    labels = tf.constant([1, 1, 2, 2], tf.int64)
    box = [50 / 224, 50 / 224, 100 / 224, 100 / 224]
    boxes = tf.constant([box] * 2 + [spec.NO_BOX] * 2, tf.float32)
    cfg = CounterfactualConfig(lesion_rate=0.0, decoy_rate=0.0, paste_rate=1.0, paste_invert_share=1.0)
    out, out_labels, _ = counterfactual_batch(tf.constant(images), labels, boxes, cfg, seed=3)
    out = out.numpy()
    np.testing.assert_array_equal(out_labels.numpy(), [1, 1, 1, 1])
    assert out[2:, 65:85, 65:85].mean() == pytest.approx(0.2, abs=0.03)  # 0.4 - 0.2
    np.testing.assert_allclose(out[2:, 150:], images[2:, 150:])


def test_transplant_fill_takes_tissue_from_the_mirror_side_not_the_lesion():
    rng = np.random.default_rng(0)
    tissue = rng.uniform(0.3, 0.6, (224, 224)).astype(np.float32)
    images = tissue[None, :, :, None].copy()
    images[0, 60:100, 40:80] = 1.0  # lesion on the left
    box = [55 / 224, 35 / 224, 105 / 224, 85 / 224]
    boxes = tf.constant([box], tf.float32)
    transforms, found = transplant_sources(tf.constant([box]), boxes, 224, 224)
    assert found.numpy()[0] and transforms.numpy()[0, 0] == -1.0  # the mirror image fits
    out, out_labels, _ = counterfactual_batch(
        tf.constant(images),
        tf.constant([0], tf.int64),
        boxes,
        CounterfactualConfig(
            lesion_rate=1.0,
            decoy_rate=0.0,
            paste_rate=0.0,
            transplant_share=1.0,
            rim_share=0.0,
            margin=0.0,
        ),
        seed=2,
    )
    filled = out.numpy()[0, 70:90, 50:70, 0]
    assert out_labels.numpy()[0] == spec.NOTUMOR_ID
    assert filled.max() < 0.9  # the lesion is gone
    mirrored = tissue[70:90, ::-1][:, 50:70]
    # Textured tissue from the other side (not a smooth blob), brought to the local mean.
    assert np.corrcoef(filled.ravel(), mirrored.ravel())[0, 1] > 0.9


def test_transplant_source_avoids_a_midline_lesion():
    box = tf.constant([[0.4, 0.45, 0.55, 0.55]])  # the mirror image is the lesion itself
    transforms, found = transplant_sources(box, box, 224, 224, seed=3, tries=8)
    assert found.numpy()[0] and transforms.numpy()[0, 0] == 1.0  # a shifted copy instead
    dy, dx = transforms.numpy()[0, 5] / 224, transforms.numpy()[0, 2] / 224
    source = np.array([0.4 + dy, 0.45 + dx, 0.55 + dy, 0.55 + dx])
    assert (source >= 0.1).all() and (source <= 0.9).all()
    apart = source[2] < 0.38 or source[0] > 0.57 or source[3] < 0.43 or source[1] > 0.57
    assert apart


def test_evidence_loss_is_the_share_of_class_evidence_outside_the_box():
    features = np.zeros((2, 7, 7, 3), np.float32)
    features[0, 2, 3, 0] = 1.0  # all evidence in cell (2, 3)
    features[1, 5, 5, 0] = 1.0
    features[1, 2, 3, 0] = 1.0  # half of it in (2, 3)
    kernel = np.zeros((3, 4), np.float32)
    kernel[0, 1] = 1.0  # channel 0 speaks for class 1
    cells = np.zeros((2, 7, 7, 1), np.float32)
    cells[:, 2, 3] = 1.0
    labels = tf.constant([1, 1])
    loss = evidence_loss(features, kernel, labels, cells).numpy()
    assert loss == pytest.approx(0.25, abs=1e-4)  # mean of 0 and 0.5
    # Images without a box do not count; none at all gives 0.
    assert evidence_loss(features, kernel, labels, np.zeros_like(cells)).numpy() == 0.0


def test_lesion_cells_mark_every_cell_a_box_touches():
    masks = box_masks(tf.constant([[0.0, 0.0, 0.2, 0.2]]), 224, 224)
    cells = lesion_cells(masks, 7).numpy()[0, ..., 0]
    assert cells[:2, :2].all() and cells.sum() == 4


def test_boxes_follow_the_augmentation_geometry():
    """The box moved analytically covers the warped box mask (and not much more)."""
    from components.training.augment import _random_transforms, transform_boxes, warp

    boxes = tf.constant([[0.2, 0.3, 0.4, 0.6], [0.5, 0.1, 0.9, 0.3], spec.NO_BOX], tf.float32)
    masks = box_masks(boxes, 224, 224)
    transforms = _random_transforms(
        3,
        224.0,
        224.0,
        __import__("components.training.augment", fromlist=["AugmentConfig"]).AugmentConfig(),
        seed=5,
    )
    warped = warp(masks, transforms).numpy()[..., 0] > 0.5
    moved = transform_boxes(boxes, transforms, 224.0, 224.0).numpy()
    for i in range(2):
        inside = box_masks(tf.constant(moved[i : i + 1]), 224, 224).numpy()[0, ..., 0] > 0
        assert warped[i].sum() > 0
        assert (warped[i] & ~inside).sum() <= 0.02 * warped[i].sum()  # the box covers the mask
        assert inside.sum() < 1.6 * warped[i].sum()  # rotation adds corners only
    np.testing.assert_array_equal(moved[2], spec.NO_BOX)


def test_prepare_adds_unmatched_box_slices_but_not_near_duplicates_of_test_images(tmp_path):
    """A box slice that is a shifted, re-windowed copy of a test image (a near duplicate by
    perceptual hash, not a copy by correlation) must not join training; an unrelated one does."""
    import json

    from data_prep import synth
    from data_prep.prepare import PrepareOptions, prepare

    data = tmp_path / "data"
    synth.generate_dataset(data, per_class=4, test_per_class=2, seed=1, progress=False)
    test_image = cv2.imread(str(data / "Testing" / "glioma" / "syn_glioma_0000.png"), cv2.IMREAD_GRAYSCALE)
    shifted = (((np.roll(test_image, 8, axis=1) / 255.0) ** 0.5) * 255).astype(np.uint8)
    other, mask = render_phantom("glioma", np.random.default_rng(99))
    boxes = tmp_path / "boxes"
    _write_slice(boxes, "glioma", "0", shifted, "0 0.5 0.5 0.2 0.2")  # training side
    _write_slice(boxes, "glioma", "10", other, format_yolo_box(mask_to_box(mask)))
    assert not in_audit_part("glioma/0.png") and not in_audit_part("glioma/10.png")
    manifest = prepare(PrepareOptions(str(data), str(tmp_path / "out"), box_dir=str(boxes), progress=False))
    report = manifest.lesion_boxes
    assert report["slices_added_to_train"] == {"glioma": 1}
    assert report["slices_not_added_near_duplicates_of_eval_or_test"] == ["boxes/glioma/0.png"]
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["train"]["glioma"] + counts["eval"]["glioma"] == 4 + 1  # Training/ + the slice
