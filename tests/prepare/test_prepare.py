"""btmri prepare: the Example contract, splits, bad input, duplicates, real data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from btmri.layout import MANIFEST_FILE
from btmri import spec
from data_prep.prepare import PrepareError, PrepareOptions, prepare
from data_prep.tfrecords import make_example, parse_example, read_split
from pipeline.cli import main as btmri
from tests.imaging import make_class_folders, textured_image, write_dicom, write_jpeg, write_png


def run_prepare(data_dir: Path, out: Path, **kw) -> dict:
    kw.setdefault("workers", 1)
    return prepare(PrepareOptions(str(data_dir), str(out), progress=False, **kw)).to_dict()


def skip_reasons(manifest: dict) -> dict[str, str]:
    return {s["source"]: s["reason"] for s in manifest["skipped"]}


# --- the Example contract ------------------------------------------------------


def test_example_round_trip_in_memory():
    ex = make_example(b"\x89PNGfake", 2, 300, 200, "Training/notumor/a b.png")
    parsed = parse_example(ex.SerializeToString())
    assert parsed == {
        "image": b"\x89PNGfake",
        "label": 2,
        "height": 300,
        "width": 200,
        "source": "Training/notumor/a b.png",
        "lesion_box": spec.NO_BOX,
        # written without a patient: the image is its own unit
        "patient": "group:Training/notumor/a b.png",
        "collection": "unknown",
    }
    boxed = make_example(
        b"x", 0, 1, 1, "s", lesion_box=(0.25, 0.5, 0.75, 1.0), patient="patient:7", collection="figshare"
    )
    parsed = parse_example(boxed.SerializeToString())
    assert parsed["lesion_box"] == (0.25, 0.5, 0.75, 1.0)
    assert (parsed["patient"], parsed["collection"]) == ("patient:7", "figshare")


def test_prepared_examples_follow_contract(tmp_path):
    make_class_folders(tmp_path / "data", per_class=6)
    manifest = run_prepare(tmp_path / "data", tmp_path / "out", eval_fraction=0.34)
    examples = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "eval")
    assert len(examples) == 24 == manifest["total_written"]
    for ex in examples:
        original = (tmp_path / "data" / ex["source"]).read_bytes()
        assert ex["image"] == original  # plain 8-bit JPEG is stored as read
        assert spec.CLASS_NAMES[ex["label"]] == ex["source"].split("/")[0]
        decoded = tf.io.decode_image(ex["image"]).numpy()
        assert decoded.shape[:2] == (ex["height"], ex["width"]) == (96, 96)
    written = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    assert written and all(n.endswith(spec.TFRECORD_SUFFIX) for n in written)


# --- splits ----------------------------------------------------------------------


def _split_by_content(out: Path) -> dict[str, str]:
    return {
        hashlib.md5(ex["image"]).hexdigest(): split
        for split in ("train", "eval")
        for ex in read_split(out, split)
    }


def test_split_is_stratified_and_deterministic_from_content(tmp_path):
    make_class_folders(tmp_path / "a", per_class=40)
    # Same contents under other names (and so another listing order).
    for path in sorted((tmp_path / "a").rglob("*.jpg")):
        target = (
            tmp_path / "b" / path.parent.name / f"renamed_{hashlib.md5(path.name.encode()).hexdigest()}.jpg"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    m1 = run_prepare(tmp_path / "a", tmp_path / "out1", eval_fraction=0.25, seed=7)
    m2 = run_prepare(tmp_path / "b", tmp_path / "out2", eval_fraction=0.25, seed=7, workers=2)
    for cls in spec.CLASS_NAMES:
        assert m1["counts"]["eval"][cls] == 10 and m1["counts"]["train"][cls] == 30
    assert _split_by_content(tmp_path / "out1") == _split_by_content(tmp_path / "out2")
    assert m2["counts"] == m1["counts"]
    m3 = run_prepare(tmp_path / "a", tmp_path / "out3", eval_fraction=0.25, seed=8)
    assert m3["counts"] == m1["counts"]
    assert _split_by_content(tmp_path / "out3") != _split_by_content(tmp_path / "out1")


# --- bad input -------------------------------------------------------------------


def _build_messy_folder(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Good images + every bad case. Returns ({source: expected skip reason part},
    {source: expected stored format 'original' | 'png'})."""
    make_class_folders(root / "Training", per_class=8)
    g = root / "Training" / "glioma"
    m = root / "Training" / "meningioma"
    skip, keep = {}, {}

    (g / "zero.jpg").write_bytes(b"")
    skip["Training/glioma/zero.jpg"] = "empty file"
    good = (g / "glioma_000.jpg").read_bytes()
    (g / "truncated.jpg").write_bytes(good[: len(good) // 2])
    skip["Training/glioma/truncated.jpg"] = "truncated JPEG"
    (g / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    skip["Training/glioma/random.jpg"] = "not a valid image"
    (g / "notes.jpg").write_text("this is a text file, not a picture\n" * 20)
    skip["Training/glioma/notes.jpg"] = "not a valid image"
    (g / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 10)
    skip["Training/glioma/broken.dcm"] = "unreadable DICOM"
    write_png(g / "huge.png", np.zeros((10000, 10000), np.uint8))
    skip["Training/glioma/huge.png"] = "image too large: 10000x10000"
    os.symlink(g / "does-not-exist.jpg", g / "dangling.jpg")
    skip["Training/glioma/dangling.jpg"] = "broken symlink"
    for hidden in (".DS_Store", "Thumbs.db", "._glioma_001.jpg"):
        (g / hidden).write_bytes(b"\0\1junk")
        skip[f"Training/glioma/{hidden}"] = "hidden or system file"
    (g / "readme.txt").write_text("not data")
    skip["Training/glioma/readme.txt"] = "unsupported extension .txt"

    base = textured_image(99, 64, 80)
    write_png(m / "deep16.png", (base.astype(np.uint16) * 200))
    keep["Training/meningioma/deep16.png"] = "png"
    rgba = np.dstack([cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), np.full_like(base, 255)])
    write_png(m / "alpha.png", rgba)
    keep["Training/meningioma/alpha.png"] = "png"
    write_jpeg(m / "gray.jpeg", textured_image(98))
    keep["Training/meningioma/gray.jpeg"] = "original"
    write_png(m / "gray8.PNG", textured_image(97))
    keep["Training/meningioma/gray8.PNG"] = "original"
    # A box file beside its slice (a box folder's layout) is an annotation: neither kept
    # nor skipped. Beside no image it is an unsupported file like any other.
    (m / "gray8.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (m / "orphan.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    skip["Training/meningioma/orphan.txt"] = "unsupported extension .txt"
    from PIL import Image

    Image.fromarray(textured_image(96)).convert("CMYK").save(m / "cmyk.jpg", "JPEG")
    keep["Training/meningioma/cmyk.jpg"] = "png"
    cv2.imwrite(str(m / "scan.bmp"), textured_image(95))
    keep["Training/meningioma/scan.bmp"] = "png"
    cv2.imwrite(str(m / "scan16.tif"), textured_image(94).astype(np.uint16) * 256)
    keep["Training/meningioma/scan16.tif"] = "png"
    ramp = np.tile(np.linspace(0, 4000, 70), (50, 1))
    write_dicom(m / "slice.dcm", ramp, center=1000, width=1000)
    keep["Training/meningioma/slice.dcm"] = "png"
    return skip, keep


def test_bad_input_is_skipped_with_reason_or_converted(tmp_path):
    skip, keep = _build_messy_folder(tmp_path / "data")
    manifest = run_prepare(tmp_path / "data", tmp_path / "out", eval_fraction=0.25, workers=2)
    reasons = skip_reasons(manifest)
    assert set(reasons) == set(skip), reasons
    for source, expected in skip.items():
        assert expected in reasons[source], (source, reasons[source])
        assert "\n" not in reasons[source]

    examples = {ex["source"]: ex for split in ("train", "eval") for ex in read_split(tmp_path / "out", split)}
    assert manifest["total_written"] == len(examples) == 32 + len(keep)
    for source, stored in keep.items():
        ex = examples[source]
        original = (tmp_path / "data" / source).read_bytes()
        if stored == "original":
            assert ex["image"] == original
        else:
            assert ex["image"].startswith(b"\x89PNG"), source
        decoded = tf.io.decode_image(ex["image"]).numpy()  # TF reads every stored image
        assert decoded.dtype == np.uint8 and decoded.shape[:2] == (ex["height"], ex["width"])

    # 16-bit PNG keeps its content (min..max scaled to 8 bits)
    deep = tf.io.decode_image(examples["Training/meningioma/deep16.png"]["image"]).numpy()[..., 0]
    base = textured_image(99, 64, 80).astype(float)
    assert np.corrcoef(deep.ravel(), base.ravel())[0, 1] > 0.99
    # DICOM window 500..1500 applied: ramp 0..4000 → black left, white right, grey between
    dcm = tf.io.decode_image(examples["Training/meningioma/slice.dcm"]["image"]).numpy()[..., 0]
    assert dcm.shape == (50, 70)
    assert dcm[:, :5].max() == 0 and dcm[:, -20:].min() == 255
    assert 0 < dcm[0, 15] < 255


def test_unreadable_file_is_skipped(tmp_path):
    make_class_folders(tmp_path / "data", per_class=4)
    locked = tmp_path / "data" / "pituitary" / "locked.jpg"
    if os.geteuid() == 0:  # root reads anything: the reader is checked as "nobody" below
        locked = Path(tempfile.mkdtemp(prefix="btmri-perm-")) / "locked.jpg"
        locked.parent.chmod(0o755)
    write_jpeg(locked, textured_image(4242))
    locked.chmod(0)
    if os.geteuid() != 0:
        manifest = run_prepare(tmp_path / "data", tmp_path / "out", eval_fraction=0.25)
        assert skip_reasons(manifest)["pituitary/locked.jpg"] == "permission denied"
        return
    # Fork a child that drops to "nobody" and calls the reader; it reports on a pipe.
    from data_prep.image_io import ImageError, read_bytes

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            read_bytes(locked)
            message = "read"
        except ImageError as err:
            message = str(err)
        except BaseException as err:  # noqa: BLE001
            message = f"child failed: {err!r}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    message = os.read(read_end, 4096).decode()
    shutil.rmtree(locked.parent)
    assert message == "permission denied"


def test_unknown_class_folder_is_a_clear_error(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=2)
    write_jpeg(tmp_path / "data" / "astrocytoma" / "x.jpg", textured_image(1))
    code = btmri(["prepare", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "astrocytoma" in err and all(c in err for c in spec.CLASS_NAMES)


def test_no_usable_image_fails(tmp_path):
    for cls in spec.CLASS_NAMES:
        (tmp_path / "data" / cls).mkdir(parents=True)
        (tmp_path / "data" / cls / "empty.jpg").write_bytes(b"")
    with pytest.raises(PrepareError, match="no usable image"):
        run_prepare(tmp_path / "data", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert len(manifest["skipped"]) == 4  # the reasons are kept for the user


def test_class_empty_in_a_split_fails(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=10)
    for path in list((tmp_path / "data" / "notumor").iterdir())[1:]:
        path.unlink()
    code = btmri(
        [
            "prepare",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
            "--workers",
            "1",
        ]
    )
    assert code == 2
    assert "class empty in a split: eval/notumor" in capsys.readouterr().err


def test_an_empty_eval_split_is_refused_before_anything_is_written(tmp_path, capsys):
    make_class_folders(tmp_path / "data", per_class=2)  # 15 % of 2 images: no eval image
    args = ["prepare", "--data-dir", str(tmp_path / "data"), "--quiet", "--workers", "1"]
    assert btmri([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("btmri prepare: error: the eval split is empty: 8 training images")
    assert "--allow-empty-eval" in err and not (tmp_path / "o").exists()
    assert btmri([*args, "--out", str(tmp_path / "o"), "--allow-empty-eval"]) == 0
    manifest = json.loads((tmp_path / "o" / MANIFEST_FILE).read_text())
    assert spec.EVAL_SPLIT not in manifest["counts"] and "allow_empty_eval" not in manifest["arguments"]


# --- duplicates ------------------------------------------------------------------


def _near_copy(path: Path, target: Path) -> None:
    """Resized and re-encoded at lower quality, as copies in the public set are:
    other bytes and size, same picture (pHash distance 0-4 bits on these images)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    img = cv2.resize(img, (int(w * 1.3), int(h * 1.3)))
    write_jpeg(target, img, quality=70)


def _pair_kind(split_a: str, split_b: str) -> str:
    return (
        split_a
        if split_a == split_b
        else "-".join(sorted((split_a, split_b), key="eval test train".split().index))
    )


def test_planted_duplicates_found_within_and_across_splits(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "Training", per_class=20)
    make_class_folders(root / "Testing", per_class=3, seed0=50_000)
    tr, te = root / "Training", root / "Testing"
    exact, near = [], []  # planted (original, copy) source pairs
    for i in range(3):  # within Training
        shutil.copy(tr / "glioma" / f"glioma_{i:03d}.jpg", tr / "glioma" / f"copy_{i}.jpg")
        exact.append((f"Training/glioma/glioma_{i:03d}.jpg", f"Training/glioma/copy_{i}.jpg"))
    for i in range(4):
        _near_copy(tr / "pituitary" / f"pituitary_{i:03d}.jpg", tr / "pituitary" / f"near_{i}.jpg")
        near.append((f"Training/pituitary/pituitary_{i:03d}.jpg", f"Training/pituitary/near_{i}.jpg"))
    for i in range(3):  # Testing copies of Training images
        shutil.copy(tr / "meningioma" / f"meningioma_{i:03d}.jpg", te / "meningioma" / f"leak_{i}.jpg")
        exact.append((f"Training/meningioma/meningioma_{i:03d}.jpg", f"Testing/meningioma/leak_{i}.jpg"))
        _near_copy(tr / "notumor" / f"notumor_{i:03d}.jpg", te / "notumor" / f"nearleak_{i}.jpg")
        near.append((f"Training/notumor/notumor_{i:03d}.jpg", f"Testing/notumor/nearleak_{i}.jpg"))

    manifest = run_prepare(root, tmp_path / "out", eval_fraction=0.3)
    split_of = {ex["source"]: s for s in ("train", "eval", "test") for ex in read_split(tmp_path / "out", s)}
    dup = manifest["duplicates"]
    assert dup["exact"]["extra_copies"] == 6 and dup["exact"]["groups"] == 6
    exact_kinds = Counter(_pair_kind(split_of[a], split_of[b]) for a, b in exact)
    # a file and its byte copy in the same class always share a split: no eval-train leak
    assert exact_kinds["eval-train"] == 0
    assert dup["exact"]["extra_copies_within_split"] == {k: v for k, v in exact_kinds.items() if "-" not in k}
    assert dup["exact"]["images_with_copy_in_other_split"] == {
        k: v for k, v in exact_kinds.items() if "-" in k
    }
    near_kinds = Counter(_pair_kind(split_of[a], split_of[b]) for a, b in near)
    assert dup["near"]["pairs"] == len(near)
    assert dup["near"]["pairs_within_split"] == {k: v for k, v in near_kinds.items() if "-" not in k}
    assert dup["near"]["pairs_across_splits"] == {k: v for k, v in near_kinds.items() if "-" in k}

    run = run_prepare(root, tmp_path / "out2", eval_fraction=0.3, drop_cross_split_duplicates=True)
    dropped = {d["source"]: d for d in run["dropped_cross_split_duplicates"]}
    should_drop = {}  # held-out member of a pair whose other member is in train
    for kind, pairs in (("exact", exact), ("near", near)):
        for a, b in pairs:
            if (split_of[a] == "train") != (split_of[b] == "train"):
                train_one, held_out = (a, b) if split_of[a] == "train" else (b, a)
                should_drop[held_out] = (train_one, kind)
    assert should_drop, "the seed should put some originals in train"
    assert set(dropped) == set(should_drop)
    for source, (original, kind) in should_drop.items():
        assert (dropped[source]["duplicates"], dropped[source]["kind"]) == (original, kind)
    kept = {ex["source"] for s in ("eval", "test") for ex in read_split(tmp_path / "out2", s)}
    assert not kept & set(dropped)
    assert run["total_written"] == manifest["total_written"] - len(should_drop)
    assert "test-train" not in run["duplicates"]["exact"]["images_with_copy_in_other_split"]


# --- real data ---------------------------------------------------------------------


@pytest.mark.realdata
def test_real_training_images(real_data, tmp_path):
    training = real_data / spec.KAGGLE_TRAINING_DIR
    files = [p for p in training.rglob("*") if p.is_file()]
    manifest = run_prepare(real_data, tmp_path / "out", workers=2)
    folder_counts = Counter(p.parent.name.lower() for p in files)
    skipped = Counter(s["source"].split("/")[1].lower() for s in manifest["skipped"])
    for cls in spec.CLASS_NAMES:
        written = manifest["counts"]["train"][cls] + manifest["counts"]["eval"][cls]
        assert written == folder_counts[cls] - skipped[cls]
    md5_counts = Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in files)
    plain_extra_copies = sum(n - 1 for n in md5_counts.values())
    assert manifest["duplicates"]["exact"]["extra_copies"] == plain_extra_copies
    print(
        f"real data: {len(files)} files, {plain_extra_copies} exact extra copies, "
        f"near pairs {manifest['duplicates']['near']['pairs']}"
    )


def test_run_work_folder_keeps_datasets_apart_and_reuses_each(tmp_path):
    from btmri.layout import RunLayout
    from pipeline.workdir import prepare_if_changed

    layout = RunLayout(str(tmp_path / "runs"))
    make_class_folders(tmp_path / "a", per_class=4)
    make_class_folders(tmp_path / "b", per_class=4, seed0=50)
    first = prepare_if_changed(str(tmp_path / "a"), layout, progress=False, workers=1)
    other = prepare_if_changed(str(tmp_path / "b"), layout, progress=False, workers=1)
    assert not first.reused and not other.reused and first.path != other.path
    assert os.path.realpath(layout.current_prepared_data) == os.path.realpath(other.path)
    # The first dataset's folder still holds its own data, and is reused as it is.
    again = prepare_if_changed(str(tmp_path / "a"), layout, progress=False, workers=1)
    assert again.reused and again.path == first.path
    assert again.manifest.input_fingerprint == first.manifest.input_fingerprint
    assert os.path.realpath(layout.current_prepared_data) == os.path.realpath(first.path)
    # Other prepare arguments are another dataset.
    assert prepare_if_changed(
        str(tmp_path / "a"), layout, progress=False, workers=1, eval_fraction=0.5
    ).path not in (first.path, other.path)
