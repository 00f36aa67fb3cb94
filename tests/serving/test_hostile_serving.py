"""Hostile input against the exported model the tiny pipeline run pushed (`tiny_run`):
decompression bombs refused by the SavedModel itself (so by the official TF Serving
too) within bounded memory, 16-bit PNGs answered as prepare would have stored them,
and `btmri predict` / `btmri gradcam` converting DICOM, TIFF, BMP and 16-bit PNG
with prepare's code before sending them to a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep.image_io import decode_image
from serving.client import PredictionClient, RequestFailed, image_payload
from serving.process import ServerProcess
from tests.conftest import REPO_ROOT, only_version
from tests.hostile_files import jpeg_bomb_header, png_bytes
from tests.imaging import textured_image
from tests.imaging import write_dicom

# Peak-memory growth allowed for refusing a bomb; decoding one costs ~1.3 GB.
MAX_GROWTH_MB = 100


@pytest.fixture(scope="module")
def probe(tiny_run) -> dict:
    """tests/serving/hostile_probe.py against the pushed SavedModel, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.serving.hostile_probe", str(only_version(tiny_run / "serving"))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["jpeg_bomb", "png_bomb", "jpeg_bomb_in_example", "png_bomb_in_example"])
def test_exported_model_refuses_bombs_in_bounded_memory(probe, case):
    assert probe["sizes"]["jpeg_bomb"] < 200 and probe["sizes"]["png_bomb"] < 300_000
    result = probe[case]
    assert result["outcome"].startswith(
        "INVALID_ARGUMENT: assertion failed: [image too large: 16384x16384 pixels"
    ), result
    assert result["peak_rss_growth_mb"] < MAX_GROWTH_MB, result


def test_exported_model_names_the_formats_it_reads(probe):
    assert "unsupported image format: the model reads JPEG and PNG" in probe["bmp"]["outcome"]


def test_exported_model_answers_a_16_bit_png_as_prepare_stored_it(probe):
    np.testing.assert_allclose(probe["png16_served"], probe["png16_prepared"], atol=1e-6)


# --- clients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile-serve") / "server.log"
    with ServerProcess(tiny_run / "serving", log_path=log) as process:
        yield process


@pytest.fixture(scope="module")
def converted_files(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """One synthetic test slice as DICOM (12-bit, windowed), 16-bit TIFF, BMP, 12-bit
    PNG and CMYK JPEG: formats the model does not read as they are."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("formats")
    source = sorted((tiny_run / "data" / "synthetic" / "Testing" / "glioma").glob("*.png"))[0]
    gray = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    files = {
        "dicom": folder / "slice.dcm",
        "tiff": folder / "slice.tif",
        "bmp": folder / "slice.bmp",
        "png16": folder / "slice16.png",
        "cmyk": folder / "slice_cmyk.jpg",
    }
    write_dicom(files["dicom"], gray.astype(np.float64) * 16, center=2040, width=4080)
    assert cv2.imwrite(str(files["tiff"]), gray.astype(np.uint16) * 256)
    assert cv2.imwrite(str(files["bmp"]), gray)
    files["png16"].write_bytes(png_bytes(gray.astype(np.uint16) * 16))
    Image.fromarray(gray).convert("CMYK").save(files["cmyk"], "JPEG")
    return files


def test_client_converts_with_prepares_code(converted_files):
    for name, path in converted_files.items():
        data = path.read_bytes()
        payload = image_payload(data, str(path))
        assert payload == decode_image(data, path.suffix).encoded, name
        assert payload.startswith(b"\x89PNG"), name
    plain = cv2.imencode(".jpg", textured_image(1))[1].tobytes()
    assert image_payload(plain, "a.jpg") is plain  # sent as it is
    assert image_payload(b"junk", "junk.png") == b"junk"  # the model refuses it
    bomb = jpeg_bomb_header()
    assert image_payload(bomb, "bomb.jpg") == bomb  # the model refuses it


def test_btmri_predict_converts_dicom_tiff_bmp_16_bit_png(server, converted_files, capsys):
    from pipeline.cli import main

    files = [str(p) for p in converted_files.values()]
    assert main(["predict", "--server", server.grpc_target, *files]) == 0
    lines = {line["file"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    with PredictionClient(server.grpc_target) as client:
        for path in files:
            data = Path(path).read_bytes()
            # the served answer is the answer for the PNG prepare would have trained on
            expected = client.classify_image(decode_image(data, Path(path).suffix).encoded)
            assert lines[path]["class"] == (None if expected.abstain else expected.class_name)
            assert lines[path]["answer"] == expected.answer
            assert lines[path]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
        # sent unconverted, only the 16-bit PNG is read by the model (the same way)
        png16 = converted_files["png16"].read_bytes()
        assert client.classify_image(png16).probabilities == pytest.approx(
            lines[str(converted_files["png16"])]["probabilities"], abs=1e-6
        )
        for name in ("dicom", "tiff", "bmp"):
            with pytest.raises(RequestFailed, match="unsupported image format"):
                client.classify_image(converted_files[name].read_bytes())


def test_btmri_predict_reports_bombs_and_special_files(server, tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "bomb.jpg").write_bytes(jpeg_bomb_header())
    (tmp_path / "broken.dcm").write_bytes(bytes(128) + b"DICM" + b"garbage" * 10)
    os.mkfifo(tmp_path / "pipe.png")
    files = [str(tmp_path / n) for n in ("bomb.jpg", "broken.dcm", "pipe.png")]
    assert main(["predict", "--server", server.grpc_target, *files]) == 2  # bad input
    errors = {line["file"]: line["error"] for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert (
        errors[files[0]].startswith("INVALID_ARGUMENT") and "image too large: 16384x16384" in errors[files[0]]
    )
    assert errors[files[1]].startswith("cannot convert .dcm to PNG: unreadable DICOM")
    assert errors[files[2]] == "cannot read: not a regular file (FIFO (named pipe))"


def test_btmri_gradcam_draws_a_dicom_as_the_model_saw_it(server, converted_files, tmp_path, capsys):
    from pipeline.cli import main

    path = converted_files["dicom"]
    assert main(["gradcam", "--server", server.grpc_target, str(path), "--out", str(tmp_path)]) == 0
    assert "slice.dcm: " in capsys.readouterr().out
    sent = cv2.imdecode(
        np.frombuffer(decode_image(path.read_bytes(), ".dcm").encoded, np.uint8), cv2.IMREAD_COLOR
    )
    original = cv2.imread(str(tmp_path / "slice_original.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(original, sent)
    assert cv2.imread(str(tmp_path / "slice_overlay.png")).shape == sent.shape
