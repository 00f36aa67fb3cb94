"""`btmri evaluate`: the figures by hand, the tags, reading a folder with a model that
refuses an image, and the command end to end on a small site folder (phantoms with
sequence names, a DICOM, a corrupt file) against the tiny run's pushed SavedModel, in
process and through `btmri serve` over gRPC."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from btmri import spec
from btmri.intervals import wilson
from pipeline import site_evaluation as se
from pipeline.site_predict import Answer, PredictionFailed, find, predict_folder
from tests.imaging import make_class_folders, write_dicom

GLIOMA, MENINGIOMA, NOTUMOR, PITUITARY = (spec.CLASS_TO_ID[name] for name in spec.CLASS_NAMES)


def one_hot(c: int, p: float = 0.7) -> list[float]:
    probs = [(1 - p) / (spec.NUM_CLASSES - 1)] * spec.NUM_CLASSES
    probs[c] = p
    return probs


def row(label: int, top: int, reason: str | None = None, **tags) -> se.Row:
    """An answered image (reason None) or an abstention whose top class is `top`."""
    return se.Row(
        f"{label}-{top}-{reason}", label, one_hot(top), reason is not None, reason or "", None, tags
    )


# Ten images: 5 right, 3 wrong answers, 2 abstentions (one of them on its true class).
HAND_MADE = [
    row(GLIOMA, GLIOMA),
    row(GLIOMA, GLIOMA),
    row(GLIOMA, GLIOMA, spec.REASON_OUT_OF_DISTRIBUTION),  # top class right, but no answer
    row(GLIOMA, NOTUMOR),
    row(MENINGIOMA, MENINGIOMA),
    row(MENINGIOMA, GLIOMA),
    row(NOTUMOR, NOTUMOR),
    row(NOTUMOR, NOTUMOR, spec.REASON_LOW_CONFIDENCE),
    row(PITUITARY, NOTUMOR),
    row(PITUITARY, PITUITARY),
]


def counts(fig: dict) -> tuple[int, int]:
    return fig["successes"], fig["n"]


# ── The figures, by hand ──────────────────────────────────────────────────────────
def test_figures_count_abstentions_as_not_right():
    fig = se.figures(HAND_MADE)
    assert fig["n"] == 10
    assert counts(fig["accuracy"]) == (5, 10)
    assert fig["accuracy"]["ci95"] == pytest.approx(list(wilson(5, 10)))
    assert counts(fig["answered"]) == (8, 10)
    assert counts(fig["abstained"]) == (2, 10)
    assert {k: counts(v) for k, v in fig["abstention_reasons"].items()} == {
        spec.REASON_LOW_CONFIDENCE: (1, 10),
        spec.REASON_OUT_OF_DISTRIBUTION: (1, 10),
    }
    assert counts(fig["wrong_confident"]) == (3, 10)
    # Right + wrong and confident + abstained = every image.
    assert fig["accuracy"]["successes"] + fig["wrong_confident"]["successes"] + 2 == 10
    assert counts(fig["tumour_called_notumor"]) == (2, 8)  # glioma and pituitary answered notumor
    assert counts(fig["accuracy_answered"]) == (5, 8)
    recall = {name: counts(per["recall"]) for name, per in fig["per_class"].items()}
    assert recall == {"glioma": (2, 4), "meningioma": (1, 2), "notumor": (1, 2), "pituitary": (1, 2)}
    assert counts(fig["per_class"]["glioma"]["abstained"]) == (1, 4)
    confusion = fig["confusion"]
    assert confusion["columns"] == [*spec.CLASS_NAMES, se.ABSTAIN_COLUMN]
    assert confusion["counts"] == [
        [2, 0, 1, 0, 1],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 1],
        [0, 0, 1, 1, 0],
    ]
    # Abstention aside: the glioma abstained on is its top class, the notumor one too.
    assert counts(fig["top_class_accuracy"]) == (7, 10)
    assert counts(fig["tumour_top_class_notumor"]) == (2, 8)
    assert fig["top_class_confusion"]["counts"] == [
        [3, 0, 1, 0],
        [1, 1, 0, 0],
        [0, 0, 2, 0],
        [0, 0, 1, 1],
    ]


def test_figures_of_no_tumour_images_and_no_images_are_undefined_not_zero():
    fig = se.figures([row(NOTUMOR, NOTUMOR)])
    assert counts(fig["tumour_called_notumor"]) == (0, 0) and math.isnan(
        fig["tumour_called_notumor"]["value"]
    )
    empty = se.figures([])
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]["value"])
    assert se.json_ready(empty)["accuracy"]["value"] is None  # strict JSON: null, not NaN
    assert se.Gates(min_accuracy=0.0).failures(empty)  # no image cannot pass a gate


def test_slices_add_up_and_untagged_images_have_their_own_slice():
    rows = [
        row(GLIOMA, GLIOMA, sequence="t1"),
        row(GLIOMA, NOTUMOR, sequence="t1", site="a"),
        row(NOTUMOR, NOTUMOR, sequence="flair", site="b"),
        row(PITUITARY, PITUITARY, spec.REASON_LOW_CONFIDENCE),
    ]
    slices = se.slices(rows)
    assert list(slices) == ["sequence", "site"]
    assert list(slices["sequence"]) == ["flair", "t1", se.UNTAGGED]
    assert list(slices["site"]) == ["a", "b", se.UNTAGGED]
    for values in slices.values():
        assert sum(fig["n"] for fig in values.values()) == len(rows)
    t1 = slices["sequence"]["t1"]
    assert counts(t1["accuracy"]) == (1, 2) and counts(t1["tumour_called_notumor"]) == (1, 2)
    assert counts(slices["sequence"][se.UNTAGGED]["abstained"]) == (1, 1)
    assert counts(slices["site"][se.UNTAGGED]["accuracy"]) == (1, 2)


def test_gates():
    fig = se.figures(HAND_MADE)  # accuracy 0.5, tumour called notumor 0.25
    assert se.Gates().failures(fig) == []
    assert se.Gates(min_accuracy=0.5, max_tumour_called_notumor=0.25).failures(fig) == []
    failures = se.Gates(min_accuracy=0.6, max_tumour_called_notumor=0.2).failures(fig)
    assert len(failures) == 2 and "--min-accuracy 0.6" in failures[0] and "0.250" in failures[1]


def test_text_table_has_every_figure_and_slice():
    rows = list(HAND_MADE)
    rows[0] = row(GLIOMA, GLIOMA, sequence="t1")
    document = se.build_document(
        rows,
        [{"path": "glioma/x.png", "reason": "truncated PNG"}],
        data_dir="site",
        model={"description": "M"},
    )
    text = "\n".join(se.text_lines(document))
    assert "evaluated 10 images in site with M; 1 file skipped" in text
    assert "accuracy (abstentions count as wrong)" in text and "0.500 [0.237, 0.763] (5/10)" in text
    assert "out_of_distribution" in text and "tumour called notumor (of tumour images)" in text
    assert "by sequence" in text and se.UNTAGGED in text
    assert text.count("\n  glioma ") == 3  # per-class row and the two confusions' rows
    assert "top class notumor (of tumour images)" in text and "(2/8)" in text


def test_figures_and_page_modules_import_no_tensorflow():
    code = (
        "import sys, pipeline.site_evaluation, pipeline.report.site_evaluation_page; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ── Tags ──────────────────────────────────────────────────────────────────────────
def test_filename_pattern_tags():
    pattern = se.compile_pattern(r"_(?P<sequence>t1c|t1|t2|flair)(?:_(?P<site>s\d+))?\.")
    assert se.pattern_tags(pattern, "glioma/a_t1c_s2.png") == {"sequence": "t1c", "site": "s2"}
    assert se.pattern_tags(pattern, "glioma/a_flair.png") == {"sequence": "flair"}  # site took no part
    assert se.pattern_tags(pattern, "glioma/a.png") == {}
    with pytest.raises(se.TagError, match="no named group"):
        se.compile_pattern("t1|t2")
    with pytest.raises(se.TagError, match="not a regular expression"):
        se.compile_pattern("(?P<x>")


def test_tags_csv(tmp_path):
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text(
        "path,site,scanner\n"
        "./glioma/a.png,north,GE\n"
        "glioma\\b.png,south,\n"  # a Windows path; an empty cell is no tag
        "\n"
        "notumor/c.png,north,Siemens\n",
        encoding="utf-8",
    )
    table = se.read_tags_csv(str(csv_file))
    assert table == {
        "glioma/a.png": {"site": "north", "scanner": "GE"},
        "glioma/b.png": {"site": "south"},
        "notumor/c.png": {"site": "north", "scanner": "Siemens"},
    }
    pattern = se.compile_pattern(r"(?P<site>[a-z]+)\.png$")
    assert se.image_tags("glioma/a.png", pattern, table) == {"site": "north", "scanner": "GE"}  # CSV wins
    assert se.image_tags("glioma/zz.png", pattern, table) == {"site": "zz"}

    for text, message in (
        ("path\nglioma/a.png\n", "at least one tag"),
        ("path,site,site\n", "distinct"),
        ("path,site\nglioma/a.png,x\n./glioma/a.png,y\n", "listed twice"),
        ("path,site\nglioma/a.png,x,y\n", "line 2: 3 cells"),
    ):
        csv_file.write_text(text)
        with pytest.raises(se.TagError, match=message):
            se.read_tags_csv(str(csv_file))


# ── Reading a folder: skips, and an image the model refuses ───────────────────────
class AnswerByImage:
    """A model that answers each image's own label (notumor: abstains) and refuses
    one image; it records the size of every call."""

    def __init__(self, labels: dict[bytes, int], refused: bytes):
        self.labels, self.refused, self.calls = labels, refused, []

    def predict(self, images):
        self.calls.append(len(images))
        if self.refused in images:
            raise PredictionFailed("INVALID_ARGUMENT: bad image")
        out = []
        for image in images:
            label = self.labels[image]
            abstain = label == NOTUMOR
            out.append(Answer(np.asarray(one_hot(label)), abstain, "low_confidence" if abstain else "", 0.5))
        return out


@pytest.mark.parametrize("kaggle", [False, True])
def test_predict_folder_skips_bad_files_and_refused_images_only(tmp_path, kaggle):
    from data_prep.image_io import decode_image

    root = tmp_path / "site"
    make_class_folders(root / "Testing" if kaggle else root, per_class=3, ext=".png")
    class_root = root / "Testing" if kaggle else root
    good = (class_root / "glioma" / "glioma_000.png").read_bytes()
    (class_root / "glioma" / "broken.png").write_bytes(good[: len(good) // 2])
    (class_root / "notumor" / "notes.txt").write_text("not an image")
    candidates, skipped = find(str(root))
    labels = {
        decode_image(Path(c.path).read_bytes(), ".png").encoded: c.label
        for c in candidates
        if "broken" not in c.path
    }
    refused = (class_root / "meningioma" / "meningioma_001.png").read_bytes()
    model = AnswerByImage(labels, refused)
    rows, unreadable = predict_folder(
        candidates, model, lambda path: {"first": path.split("/")[0]}, batch_size=4, progress=False
    )
    prefix = "Testing/" if kaggle else ""
    assert skipped == [{"path": f"{prefix}notumor/notes.txt", "reason": "unsupported extension .txt"}]
    reasons = {s["path"]: s["reason"] for s in unreadable}
    assert reasons == {
        f"{prefix}glioma/broken.png": "truncated PNG (no IEND chunk)",
        f"{prefix}meningioma/meningioma_001.png": "the model refused it: INVALID_ARGUMENT: bad image",
    }
    assert len(rows) == 11
    # Rows belong to their images: the model answered each image's own label.
    assert all(r.top_class == r.label for r in rows)
    assert [r.abstained for r in rows] == [r.label == NOTUMOR for r in rows]
    assert all(r.reason == ("low_confidence" if r.abstained else "") for r in rows)
    assert {r.tags["first"] for r in rows} == ({"Testing"} if kaggle else set(spec.CLASS_NAMES))
    # The batch holding the refused image was asked again one image at a time; no other.
    assert model.calls.count(1) == 4 and sum(model.calls) == 11 + 1 + 4


# ── The command end to end ────────────────────────────────────────────────────────
SEQUENCE_PATTERN = "_(?P<sequence>t1c|t1|t2|flair)[.]"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A labelled site folder of plain class folders: 2 phantoms per class named
    *_t1.png / *_flair.png, a DICOM (*_t2.dcm), a truncated PNG and a hidden file;
    and a tags CSV naming the site of some images."""
    from data_prep.synth import generate_dataset

    tmp = tmp_path_factory.mktemp("evaluate")
    generate_dataset(tmp / "synth", per_class=2, test_per_class=0, seed=11, progress=False)
    root = tmp / "site"
    for name in spec.CLASS_NAMES:
        for i, source in enumerate(sorted((tmp / "synth" / spec.KAGGLE_TRAINING_DIR / name).glob("*.png"))):
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name / f"{source.stem}_{('t1', 'flair')[i]}.png")
    phantom = cv2.imread(str(next((root / "meningioma").glob("*_t1.png"))), cv2.IMREAD_GRAYSCALE)
    write_dicom(root / "meningioma" / "scan_t2.dcm", phantom.astype(np.uint16) * 16, center=2048, width=4096)
    good = next((root / "glioma").glob("*.png")).read_bytes()
    (root / "glioma" / "broken_t1.png").write_bytes(good[: len(good) // 2])
    (root / "glioma" / ".DS_Store").write_bytes(b"\0")
    tags = tmp / "tags.csv"
    first = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*_t1.png"))
    tags.write_text(
        "path,site\n" + "".join(f"{p},{('north', 'south')[i % 2]}\n" for i, p in enumerate(first))
    )
    return root, tags


def run_cli(*argv: str) -> tuple[int, str, str]:
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def in_process(site, tiny_run, tmp_path_factory):
    root, tags = site
    out = tmp_path_factory.mktemp("evaluation")
    result = run_cli(
        str(root),
        "--model-dir",
        str(tiny_run / "serving"),
        "--slice-by-filename",
        SEQUENCE_PATTERN,
        "--tags",
        str(tags),
        "--out",
        str(out),
        "--min-accuracy",
        "0",
        "--quiet",
    )
    return (*result, out)


def test_evaluate_with_a_saved_model(in_process, site, pushed_model, pushed_version):
    import tensorflow as tf

    from data_prep.image_io import decode_image

    code, stdout, stderr, out = in_process
    root, _ = site
    assert code == 0, stderr
    document = json.loads((out / se.EVALUATION_JSON).read_text())
    images = {image["path"]: image for image in document["images"]}
    assert len(images) == 9  # 8 phantoms and the DICOM
    assert {s["path"]: s["reason"] for s in document["skipped"]} == {
        "glioma/.DS_Store": "hidden or system file",
        "glioma/broken_t1.png": "truncated PNG (no IEND chunk)",
    }
    assert "skipped glioma/broken_t1.png: truncated PNG (no IEND chunk)" in stderr
    assert document["model"]["kind"] == "saved_model"
    assert document["model"]["version"] == int(pushed_version.name)

    # The answers are the model's on the bytes prepare stores (the DICOM windowed to PNG).
    paths = sorted(images)
    sent = [decode_image((root / p).read_bytes(), "." + p.rsplit(".", 1)[1]).encoded for p in paths]
    assert sent[paths.index("meningioma/scan_t2.dcm")].startswith(b"\x89PNG")
    expected = pushed_model.signatures[spec.PREDICT_IMAGES](**{spec.IMAGE_BYTES_INPUT: tf.constant(sent)})
    probs = np.asarray([[images[p]["probabilities"][c] for c in spec.CLASS_NAMES] for p in paths])
    np.testing.assert_allclose(probs, expected[spec.PROBABILITIES].numpy(), atol=1e-5)
    abstained = expected[spec.ABSTAIN].numpy().tolist()
    assert [images[p]["abstained"] for p in paths] == abstained
    assert [images[p]["reason"] for p in paths] == [
        r.decode() if a else "" for r, a in zip(expected[spec.ABSTAIN_REASON].numpy(), abstained)
    ]
    for image in images.values():
        assert image["label"] == image["path"].split("/")[0]
        top = max(image["probabilities"], key=image["probabilities"].get)
        assert image["predicted"] == (None if image["abstained"] else top)

    # Figures are those of the rows; tags from the file name and the CSV.
    fig = document["figures"]
    right = sum(image["predicted"] == image["label"] for image in images.values())
    assert (fig["accuracy"]["successes"], fig["n"]) == (right, 9)
    assert sum(map(sum, fig["confusion"]["counts"])) == 9
    assert images["meningioma/scan_t2.dcm"]["tags"] == {"sequence": "t2"}
    sequence = document["slices"]["sequence"]
    assert {value: s["n"] for value, s in sequence.items()} == {"flair": 4, "t1": 4, "t2": 1}
    site_slices = document["slices"]["site"]
    assert {value: s["n"] for value, s in site_slices.items()} == {"north": 2, "south": 2, se.UNTAGGED: 5}
    assert document["gates"] == {
        "min_accuracy": 0.0,
        "max_tumour_called_notumor": -1.0,
        "failures": [],
        "passed": True,
    }

    assert f"evaluated 9 images in {root}" in stdout and "2 files skipped" in stdout
    assert "by sequence" in stdout and "by site" in stdout
    assert f"{right}/9)" in stdout.splitlines()[1]

    page = (out / se.EVALUATION_HTML).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for table_id in (
        "evaluation-headline",
        "evaluation-confusion",
        "evaluation-slice-sequence",
        "evaluation-skipped",
    ):
        assert f'id="{table_id}"' in page
    assert "broken_t1.png" in page


def test_evaluate_through_the_model_server(in_process, site, tiny_run, pushed_version, tmp_path):
    from serving.process import ServerProcess

    root, _ = site
    with ServerProcess(tiny_run / "serving", log_path=tmp_path / "server.log") as server:
        code, stdout, stderr = run_cli(
            str(root),
            "--server",
            server.grpc_target,
            "--slice-by-filename",
            SEQUENCE_PATTERN,
            "--out",
            str(tmp_path),
            "--min-accuracy",
            "1",
            "--quiet",
        )
    served = json.loads((tmp_path / se.EVALUATION_JSON).read_text())
    local = json.loads((in_process[3] / se.EVALUATION_JSON).read_text())
    assert served["model"]["kind"] == "server" and served["model"]["versions"] == [int(pushed_version.name)]
    assert [i["path"] for i in served["images"]] == [i["path"] for i in local["images"]]
    for remote, here in zip(served["images"], local["images"]):
        assert remote["predicted"] == here["predicted"] and remote["reason"] == here["reason"]
        for name in spec.CLASS_NAMES:
            assert remote["probabilities"][name] == pytest.approx(here["probabilities"][name], abs=1e-4)
    assert served["skipped"] == local["skipped"]
    # --min-accuracy 1: missed unless every image was answered right.
    missed = served["figures"]["accuracy"]["successes"] < served["figures"]["n"]
    assert code == (1 if missed else 0), stderr
    assert ("gate missed: accuracy" in stdout) == missed
    assert served["gates"]["passed"] == (not missed)


def test_evaluate_usage_errors_and_a_down_server(site, tmp_path):
    from serving.process import free_ports

    root, tags = site
    (tmp_path / "scans" / "oligodendroglioma").mkdir(parents=True)
    for argv, message in (
        ([str(root), "--model-dir", str(tmp_path), "--slice-by-filename", "t1|t2"], "no named group"),
        ([str(root), "--model-dir", str(tmp_path)], "no SavedModel in"),
        ([str(tmp_path / "scans"), "--model-dir", str(tmp_path)], "unknown class folder"),
        ([str(root), "--model-dir", str(tmp_path), "--min-accuracy", "95"], "a share in [0, 1]"),
    ):
        code, _, stderr = run_cli(*argv)
        assert code == 2 and "btmri evaluate: error: " in stderr and message in stderr, stderr
    (port,) = free_ports(1)  # nothing listens here
    code, stdout, stderr = run_cli(str(root), "--server", f"127.0.0.1:{port}", "--quiet")
    assert code == 3 and f"the model server at 127.0.0.1:{port} is unavailable" in stderr
    assert stdout == ""


def test_a_patient_tag_makes_intervals_resample_patients_and_widens_them():
    # 40 images: 4 patients of 10 slices each; two patients' slices all right, two all wrong.
    rows = [row(GLIOMA, GLIOMA if p < 2 else NOTUMOR, patient=f"p{p}") for p in range(4) for _ in range(10)]
    per_image = se.figures(rows)
    by_patient = se.figures(rows, patient_tag="patient")
    assert per_image["interval_method"] == "wilson" and by_patient["interval_method"] == "patient bootstrap"
    assert counts(by_patient["accuracy"]) == counts(per_image["accuracy"]) == (20, 40)
    assert by_patient["accuracy"]["units"] == 4
    lo_w, hi_w = per_image["accuracy"]["ci95"]
    lo_p, hi_p = by_patient["accuracy"]["ci95"]
    assert hi_p - lo_p > (hi_w - lo_w) + 0.2  # 4 patients know much less than 40 images
    document = se.build_document(rows, [], data_dir="site", model={"description": "M"}, patient_tag="patient")
    text = "\n".join(se.text_lines(document))
    assert "bootstrap over patients, tag patient: 40 images from 4" in text
    # The table prints the interval the header names, not Wilson's.
    lo_p, hi_p = document["figures"]["accuracy"]["ci95"]
    assert f"0.500 [{lo_p:.3f}, {hi_p:.3f}] (20/40)" in text
    # A tag nobody has: Wilson over images, as without one.
    assert se.figures(rows, patient_tag="scanner")["accuracy"]["ci95"] == per_image["accuracy"]["ci95"]
