"""Hostile input: decompression bombs, odd PNGs and formats in the model's own decode
graph; special files, odd names, oversized and header-bomb files in `btmri prepare`;
duplicate reporting on huge near-identical sets. Fast: no pipeline run here (the
exported model and the clients are tested in test_hostile_serving.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import struct
import tracemalloc

import cv2
import numpy as np
import pytest
import tensorflow as tf

from components.transform import decode as graph_decode
from components.transform.preprocessing import IMAGE_SIZE, decode_and_resize
from data_prep import image_io
from data_prep.duplicates import DuplicateIndex, Record
from data_prep.image_io import DEFAULT_MAX_PIXELS, ImageError, decode_image, read_bytes
from data_prep.prepare import PrepareOptions, prepare
from data_prep.tfrecords import read_split
from tests.hostile_files import jpeg_bomb_header, png_bomb, png_bomb_header, png_bytes
from tests.imaging import make_class_folders, textured_image, write_jpeg

decode_graph = tf.function(decode_and_resize)


def graph_error(data: bytes, **kw) -> str:
    """The InvalidArgumentError the model's decode raises for `data` (its assertion text)."""
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        tf.function(lambda x: decode_and_resize(x, **kw))(tf.constant([data]))
    return err.value.message


@tf.function
def _reference_graph(data):
    pixels = tf.io.decode_image(data, channels=1, expand_animations=False)
    pixels = tf.image.resize(
        tf.cast(pixels, tf.float32), [IMAGE_SIZE, IMAGE_SIZE], method="bilinear", antialias=True
    )
    return tf.clip_by_value(pixels / 255.0, 0.0, 1.0)


def reference_decode(data: bytes) -> np.ndarray:
    """The graph as it was before the pixel budget (tf.io.decode_image, channels=1): the
    bit-exact reference for ordinary images, and what data_prep's stored PNGs meet.
    Run as a graph, as the model runs it (eager float division differs in the last bit)."""
    return _reference_graph(tf.constant(data)).numpy()


# --- the model's decode graph ------------------------------------------------------


def test_decompression_bombs_are_refused_before_decoding():
    jpeg, png = jpeg_bomb_header(), png_bomb()
    assert len(jpeg) < 200 and len(png) < 300_000
    for data in (jpeg, png):
        message = graph_error(data)
        assert "image too large: 16384x16384 pixels" in message
        assert f"over the budget of {DEFAULT_MAX_PIXELS} pixels (refused before decoding)" in message
    # one home for the figure: data_prep's
    assert graph_decode.DEFAULT_MAX_PIXELS is image_io.DEFAULT_MAX_PIXELS


def test_the_pixel_budget_is_configurable():
    ok = cv2.imencode(".png", textured_image(1, 10, 10))[1].tobytes()
    assert decode_graph(tf.constant([ok])).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 1)
    small = tf.function(lambda x: decode_and_resize(x, max_pixels=99))
    for fmt in (".png", ".jpg"):
        data = cv2.imencode(fmt, textured_image(1, 10, 10))[1].tobytes()
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large: 10x10 pixels"):
            small(tf.constant([data]))


@pytest.mark.parametrize(
    "name, data",
    [
        ("bmp", cv2.imencode(".bmp", textured_image(2, 20, 20))[1].tobytes()),
        ("tiff", cv2.imencode(".tiff", textured_image(2, 20, 20))[1].tobytes()),
        ("gif", b"GIF89a" + bytes(40)),
        ("dicom", bytes(128) + b"DICM" + bytes(200)),
        ("text", b"this is not an image"),
        ("empty", b""),
    ],
)
def test_formats_other_than_jpeg_and_png_are_refused_by_name(name, data):
    assert "unsupported image format: the model reads JPEG and PNG" in graph_error(data)


def test_damaged_headers_are_refused_cleanly():
    assert "PNG header is damaged" in graph_error(image_io.PNG_MAGIC + b"\0\0")
    assert "PNG header is damaged" in graph_error(image_io.PNG_MAGIC + bytes(40))
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_graph(tf.constant([b"\xff\xd8\xff\xe0 truncated"]))


def _ordinary_images() -> dict[str, bytes]:
    from PIL import Image

    gray = textured_image(3, 230, 310)
    colour = cv2.applyColorMap(gray, cv2.COLORMAP_BONE)
    out = {
        "gray.png": cv2.imencode(".png", gray)[1].tobytes(),
        "gray.jpg": cv2.imencode(".jpg", gray)[1].tobytes(),
        "rgb.png": cv2.imencode(".png", colour)[1].tobytes(),
        "rgb.jpg": cv2.imencode(".jpg", colour)[1].tobytes(),
        "small.jpg": cv2.imencode(".jpg", textured_image(4, 100, 90))[1].tobytes(),
        "big.jpg": cv2.imencode(".jpg", textured_image(5, 1700, 1790))[1].tobytes(),
    }
    for name, kw in (
        ("progressive.jpg", {"format": "JPEG", "progressive": True}),
        ("palette.png", {"format": "PNG"}),
        ("onebit.png", {"format": "PNG"}),
    ):
        image = Image.fromarray(colour[:, :, ::-1])
        image = {"palette.png": image.quantize(100), "onebit.png": image.convert("1")}.get(name, image)
        buf = io.BytesIO()
        image.save(buf, **kw)
        out[name] = buf.getvalue()
    return out


def test_ordinary_images_decode_bit_for_bit_as_before():
    """JPEGs up to 1791 px on the short side, 8-bit gray/RGB/palette/1-bit PNGs: the
    same float32 model input as the graph before the budget (tf.io.decode_image)."""
    for name, data in _ordinary_images().items():
        np.testing.assert_array_equal(
            decode_graph(tf.constant([data])).numpy()[0], reference_decode(data), err_msg=name
        )


def test_large_jpegs_are_decoded_downscaled_and_stay_close():
    big = cv2.resize(textured_image(6, 120, 100), (1800, 2000), interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    index = graph_decode._jpeg_ratio_index(
        tf.constant(2000, tf.int64), tf.constant(1800, tf.int64), IMAGE_SIZE
    )
    assert graph_decode._JPEG_RATIOS[int(index)] == 2  # 900 px short side decoded
    diff = np.abs(decode_graph(tf.constant([data])).numpy()[0] - reference_decode(data))
    assert 0 < diff.max() <= 3 / 255 and diff.mean() < 1 / 255


def _png_variants() -> dict[str, bytes]:
    """16-bit and alpha PNGs of every colour type, built chunk by chunk."""
    rng = np.random.default_rng(7)
    g = textured_image(8, 70, 90)
    rgb = np.dstack([g, textured_image(9, 70, 90), textured_image(10, 70, 90)])
    alpha = np.clip(textured_image(11, 70, 90).astype(int) * 2 - 60, 0, 255).astype(np.uint8)
    scan12 = (g.astype(np.uint16) * 16 + rng.integers(0, 16, g.shape)).astype(np.uint16)
    alpha16 = alpha.astype(np.uint16) * 257
    palette = rng.integers(0, 256, 768).astype(np.uint8).tobytes()
    return {
        "12-bit scan in 16-bit gray": png_bytes(scan12),
        "16-bit RGB": png_bytes((rgb.astype(np.uint16) * 200 + 7).astype(np.uint16)),
        "16-bit opaque RGBA, 12-bit data": png_bytes(np.dstack([scan12] * 3 + [np.full_like(scan12, 65535)])),
        "16-bit gray+alpha": png_bytes(np.dstack([scan12, alpha16])),
        "8-bit gray+alpha": png_bytes(np.dstack([g, alpha])),
        "8-bit RGBA": png_bytes(np.dstack([rgb, alpha])),
        "palette with transparency": png_bytes(
            g, color_type=3, palette=palette, trns=rng.integers(0, 256, 256).astype(np.uint8).tobytes()
        ),
        "RGB with tRNS colour key": png_bytes(rgb, trns=struct.pack(">HHH", *rgb[0, 0])),
        "constant 16-bit": png_bytes(np.full((30, 40), 1234, np.uint16)),
    }


@pytest.mark.parametrize("name", list(_png_variants()))
def test_16_bit_and_alpha_pngs_give_what_prepare_trains_on(name):
    """The served graph on the raw file == the graph on the PNG prepare stores for it
    (prepare stretches 16-bit, composites alpha over black); the old graph kept the high
    byte of 16-bit samples (0..15 for a 12-bit scan) and dropped alpha."""
    data = _png_variants()[name]
    stored = decode_image(data, ".png").encoded
    trained_on = reference_decode(stored)
    served = decode_graph(tf.constant([data])).numpy()[0]
    assert np.abs(served - trained_on).max() <= 1 / 255, name
    if name.startswith("12-bit"):
        assert trained_on.max() > 0.9 and reference_decode(data).max() < 16 / 255  # the old skew


# --- prepare: special files, names, sizes, header bombs -----------------------------


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails the test instead of hanging (a FIFO used to block prepare forever)."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_prepare(data_dir, out, **kw) -> dict:
    kw.setdefault("workers", 1)
    with deadline(120):
        return prepare(PrepareOptions(str(data_dir), str(out), progress=False, **kw)).to_dict()


def test_special_files_odd_names_and_big_files_never_stop_prepare(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    make_class_folders(data, per_class=20)  # 80 good images
    g, m = data / "glioma", data / "meningioma"
    latin1 = os.path.join(os.fsencode(g), b"T\xfcmor.jpg")  # Latin-1, not UTF-8
    with open(latin1, "wb") as f:
        f.write(cv2.imencode(".jpg", textured_image(777))[1].tobytes())
    os.mkfifo(g / "pipe.jpg")
    os.symlink("/dev/zero", g / "zero.png")
    monkeypatch.chdir(m)  # a relative socket path: AF_UNIX paths are limited to 107 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("s.png")
        write_jpeg(m / "big.jpg", textured_image(5, 300, 300))
        (m / "big.jpg").write_bytes((m / "big.jpg").read_bytes() + bytes(2 << 20))  # 2 MB of padding
        manifest = run_prepare(data, tmp_path / "out", eval_fraction=0.25, max_file_mb=1)
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["glioma/pipe.jpg"] == "not a regular file (FIFO (named pipe))"
    assert reasons["glioma/zero.png"] == "not a regular file (character device): symlink to /dev/zero"
    assert reasons["meningioma/s.png"] == "not a regular file (socket)"
    assert (
        reasons["meningioma/big.jpg"].startswith("file too large: ")
        and "1 MB limit" in reasons["meningioma/big.jpg"]
    )
    assert len(reasons) == 4 and all("\n" not in r for r in reasons.values())
    # the Latin-1 name is kept, its source escaped to valid UTF-8 everywhere
    examples = {ex["source"]: ex for s in ("train", "eval") for ex in read_split(tmp_path / "out", s)}
    assert manifest["total_written"] == len(examples) == 81
    assert "glioma/T\\xfcmor.jpg" in examples
    json.dumps(manifest, ensure_ascii=False).encode("utf-8")  # no lone surrogates anywhere
    capsys.readouterr()


def test_btmri_prepare_with_a_latin1_name_and_a_fifo_exits_0(tmp_path, capsys):
    from pipeline.cli import main

    data = tmp_path / "data"
    make_class_folders(data, per_class=6)
    with open(os.path.join(os.fsencode(data / "notumor"), b"caf\xe9.jpg"), "wb") as f:
        f.write(cv2.imencode(".jpg", textured_image(778))[1].tobytes())
    os.mkfifo(data / "pituitary" / "pipe.jpg")
    with deadline(120):
        code = main(
            [
                "prepare",
                "--data-dir",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--workers",
                "2",
                "--eval-fraction",
                "0.34",
                "--max-file-mb",
                "5",
            ]
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skip pituitary/pipe.jpg: not a regular file (FIFO (named pipe))" in captured.err
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["arguments"]["max_file_mb"] == 5


def test_read_bytes_refuses_special_files_without_opening_them(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with deadline(10):
        with pytest.raises(ImageError, match=r"^not a regular file \(FIFO"):
            read_bytes(tmp_path / "fifo")
    with pytest.raises(ImageError, match=r"^not a regular file \(character device\)$"):
        read_bytes("/dev/zero")
    with pytest.raises(ImageError, match="^is a directory$"):
        read_bytes(tmp_path)
    (tmp_path / "f").write_bytes(b"x" * 2000)
    with pytest.raises(ImageError, match="^file too large: 2,000 bytes"):
        read_bytes(tmp_path / "f", max_bytes=1999)
    assert read_bytes(tmp_path / "f", max_bytes=2000) == b"x" * 2000


def _bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 8, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + bytes(64)


def _tiff_header(width: int, height: int, order: str = "<", big: bool = False) -> bytes:
    mark = b"II" if order == "<" else b"MM"
    if big:
        head = mark + struct.pack(order + "HHHQ", 43, 8, 0, 16)
        ifd = struct.pack(order + "Q", 2) + b"".join(
            struct.pack(order + "HHQQ", tag, 16, 1, v) for tag, v in ((256, width), (257, height))
        )
    else:
        head = mark + struct.pack(order + "HI", 42, 8)
        ifd = struct.pack(order + "H", 2) + b"".join(
            struct.pack(order + "HHIHH", tag, 3, 1, v, 0) for tag, v in ((256, width), (257, height))
        )
    return head + ifd + bytes(16)


def _dicom_header(rows: int, columns: int, tmp_path) -> bytes:
    from tests.imaging import write_dicom

    write_dicom(tmp_path / "small.dcm", np.zeros((4, 4)), center=0, width=1)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "small.dcm")
    ds.Rows, ds.Columns = rows, columns  # pixel data still 4x4: a header bomb
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_every_format_is_size_checked_from_its_header_before_decoding(tmp_path, monkeypatch):
    def no_decoding(*_a, **_k):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(image_io.cv2, "imdecode", no_decoding)
    import pydicom.dataset

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoding))
    cases = {
        ".bmp": _bmp_header(30000, 20000),
        ".tif": _tiff_header(30000, 20000),
        ".tiff": _tiff_header(30000, 20000, order=">"),
        ".TIF": _tiff_header(30000, 20000, big=True),
        ".dcm": _dicom_header(20000, 30000, tmp_path),
        ".png": png_bomb_header(30000, 20000),
        ".jpg": jpeg_bomb_header(30000, 20000),
    }
    for suffix, data in cases.items():
        with pytest.raises(ImageError, match="^image too large: 30000x20000 exceeds 40,000,000 pixels$"):
            decode_image(data, suffix)


def test_content_prepare_does_not_read_is_named(tmp_path):
    with pytest.raises(ImageError, match=r"^not a valid image \(content is not JPEG; it is GIF\)$"):
        decode_image(b"GIF89a" + bytes(100), ".jpg")
    with pytest.raises(ImageError, match=r"^not a valid image \(content is not BMP\)$"):
        decode_image(b"hello world", ".bmp")
    with pytest.raises(ImageError, match="TIFF header has no image size"):
        decode_image(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0) + bytes(8), ".tif")


def test_real_bmp_and_tiff_still_convert(tmp_path):
    for suffix in (".bmp", ".tif"):
        pixels = textured_image(12, 50, 70)
        image = decode_image(cv2.imencode(suffix, pixels)[1].tobytes(), suffix)
        assert (image.width, image.height, image.reencoded) == (70, 50, True)
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(image.encoded, np.uint8), 0), pixels)


# --- duplicates: bounded memory on huge near-identical sets --------------------------


def test_duplicate_report_counts_5_billion_pairs_in_bounded_memory():
    n, listed = 100_000, 50
    index = DuplicateIndex()
    splits = ("train", "eval", "test")
    for i in range(n):  # one perceptual hash, all different files
        index.add(Record(f"Training/glioma/{i:06d}.jpg", splits[i % 3], 0, f"{i:032x}", 0x0123456789ABCDEF))
    tracemalloc.start()
    report = index.report(max_listed=listed)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    near = report.near
    per = [len(range(k, n, 3)) for k in range(3)]  # train, eval, test
    assert near.pairs == n * (n - 1) // 2 == 4_999_950_000
    assert near.pairs_within_split == {s: c * (c - 1) // 2 for s, c in zip(splits, per)}
    assert near.pairs_across_splits == {
        "eval-train": per[0] * per[1],
        "test-train": per[0] * per[2],
        "eval-test": per[1] * per[2],
    }
    assert near.pairs_listed[:2] == [
        ["Training/glioma/000000.jpg", "Training/glioma/000001.jpg", 0],
        ["Training/glioma/000000.jpg", "Training/glioma/000002.jpg", 0],
    ]
    assert len(near.pairs_listed) == listed
    assert peak < 64 * 2**20, f"report peak {peak / 2**20:.0f} MiB"


def test_byte_identical_copies_are_not_near_pairs_at_any_scale():
    n = 100_000
    index = DuplicateIndex()
    for i in range(n):  # two files, 50,000 copies each, same hash
        index.add(Record(f"s{i}", "train", 0, "a" * 32 if i % 2 else "b" * 32, 42))
    report = index.report(max_listed=10)
    assert report.near.pairs == (n // 2) ** 2  # only pairs across the two files
    assert report.exact.extra_copies == n - 2
    assert all(
        index.records[int(a[1:])].md5 != index.records[int(b[1:])].md5 for a, b, _ in report.near.pairs_listed
    )
