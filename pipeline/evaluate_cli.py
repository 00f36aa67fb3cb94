"""`btmri evaluate`: the model on a site's own labelled scans, before trusting it.

Argument parsing, the printed table and the files of --out; the images and the
model are pipeline/site_predict.py's, the figures pipeline/site_evaluation.py's,
the page pipeline/report/site_evaluation_page.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from btmri.cli_conventions import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    add_output_flags,
    add_work_dir,
    error,
    exit_code_text,
)
from btmri.layout import RunLayout

PROG = "btmri evaluate"


def _error(message) -> int:
    return error("evaluate", message)


class _Refused(Exception):
    """A usage or input error found before any image is sent (exit 2)."""


def _check_arguments(args: argparse.Namespace):
    """Everything that needs no model, first: a wrong pattern or folder costs no model
    load. Returns (pattern, tags table, candidates, skipped, notes)."""
    from data_prep.discover import LayoutError
    from pipeline import site_evaluation as evaluation
    from pipeline import site_predict

    try:
        pattern = evaluation.compile_pattern(args.slice_by_filename) if args.slice_by_filename else None
        table = evaluation.read_tags_csv(args.tags) if args.tags else {}
        candidates, skipped = site_predict.find(args.data_dir)
    except (evaluation.TagError, LayoutError) as err:
        raise _Refused(err) from None
    if not candidates:
        raise _Refused(f"no image files in {args.data_dir} ({len(skipped)} other files)")
    if args.batch_size < 1:
        raise _Refused(f"--batch-size must be at least 1, got {args.batch_size}")
    for bound in ("min_accuracy", "max_tumour_called_notumor"):
        if getattr(args, bound) > 1:
            raise _Refused(f"--{bound.replace('_', '-')} is a share in [0, 1], got {getattr(args, bound)}")
    notes = []
    unknown = sorted(set(table) - {c.source for c in candidates} - {s["path"] for s in skipped})
    if unknown:
        notes.append(
            f"{len(unknown)} paths in {args.tags} name no file in {args.data_dir} (first: {unknown[0]})"
        )
    return pattern, table, candidates, skipped, notes


def _predictor(args: argparse.Namespace):
    """The model asked: a server, or a SavedModel (default: the work folder's pushed one)."""
    from pipeline import site_predict

    if args.server:
        return site_predict.ServerPredictor(args.server, args.model_name, args.timeout, args.label)
    model = args.model_dir or RunLayout(args.work_dir).serving_dir
    model_dir = site_predict.saved_model_dir(model)
    if model_dir is None:
        raise _Refused(
            f"no SavedModel in {model} (expected saved_model.pb there or in an integer "
            "version folder); give --model-dir DIR or --server HOST:PORT, or run `btmri run` first"
        )
    try:
        return site_predict.SavedModelPredictor(model_dir)
    except (site_predict.ModelError, OSError, ValueError) as err:
        raise _Refused(f"cannot load the SavedModel {model_dir}: {err}") from None


def _write_outputs(out: Path, document: dict) -> None:
    from btmri.documents import write_atomic
    from pipeline import site_evaluation as evaluation
    from pipeline.report import site_evaluation_page as page

    write_atomic(out / evaluation.EVALUATION_JSON, json.dumps(evaluation.json_ready(document), indent=1))
    write_atomic(out / evaluation.EVALUATION_HTML, page.render(document))
    print(f"wrote {out / evaluation.EVALUATION_JSON} and {out / evaluation.EVALUATION_HTML}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline import site_evaluation as evaluation
    from pipeline import site_predict
    from serving.client import ServerUnavailable, unavailable_message

    try:
        pattern, table, candidates, skipped, notes = _check_arguments(args)
        for s in skipped:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        predictor = _predictor(args)
    except _Refused as err:
        return _error(err)

    def on_skip(path: str, reason: str) -> None:
        tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)

    try:
        rows, unreadable = site_predict.predict_folder(
            candidates,
            predictor,
            lambda path: evaluation.image_tags(path, pattern, table),
            batch_size=args.batch_size,
            max_pixels=args.max_pixels,
            max_file_mb=args.max_file_mb,
            progress=not args.quiet,
            on_skip=on_skip,
        )
    except ServerUnavailable as err:
        print(unavailable_message(PROG, err), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except site_predict.ModelError as err:
        return _error(err)
    finally:
        predictor.close()
    skipped += unreadable
    if not rows:
        return _error(
            f"no image in {args.data_dir} could be evaluated: all {len(skipped)} files were skipped"
        )

    model = dict(predictor.info, description=_describe(predictor.info))
    if len(model.get("versions", [])) > 1:
        notes.append(f"the server answered with several model versions: {model['versions']}")
    gates = evaluation.Gates(args.min_accuracy, args.max_tumour_called_notumor)
    document = evaluation.build_document(
        rows,
        skipped,
        data_dir=args.data_dir,
        model=model,
        gates=gates,
        notes=notes,
        patient_tag=args.patient_tag,
    )
    print("\n".join(evaluation.text_lines(document)))
    if args.out:
        _write_outputs(Path(args.out), document)
    return EXIT_REFUSED if document["gates"]["failures"] else EXIT_OK


def _describe(info: dict) -> str:
    if info["kind"] == "server":
        label = f", label {info['label']}" if info.get("label") else ""
        versions = ", ".join(str(v) for v in info.get("versions", []))
        return f"model {info['model_name']} served at {info['address']}{label} (version {versions or '?'})"
    version = f" (version {info['version']})" if info.get("version") is not None else ""
    return f"SavedModel {info['path']}{version}"


def register(sub) -> None:
    from btmri.documents import SERVER_DEFAULTS
    from btmri.spec import MODEL_NAME

    p = sub.add_parser(
        "evaluate",
        help="how the model does on your own labelled scans (accuracy, abstentions, slices)",
        description="Sends every image of a labelled folder (the Kaggle layout or class folders, "
        "as btmri prepare reads them; DICOM, TIFF and BMP converted as prepare converts them) "
        "to a SavedModel or a model server and prints accuracy, per-class recall, abstentions "
        "and their reasons, wrong-and-confident answers, tumours called notumor and the "
        "confusion matrix, each share with its 95 % interval, for all images and per tag "
        "value. Unreadable files are skipped with their reason. " + exit_code_text(),
    )
    p.add_argument(
        "data_dir",
        metavar="DIR",
        help="labelled images: DIR/Training/<class>/, DIR/Testing/<class>/ or DIR/<class>/",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--model-dir",
        "--model",
        dest="model_dir",
        metavar="DIR",
        help="a pushed model: a TF Serving base path (its highest integer version) or one version "
        "folder; default: the work folder's pushed model, WORK_DIR/serving/brain_tumor",
    )
    where.add_argument(
        "--server", metavar="HOST:PORT", help="gRPC address of TF Serving / btmri serve (e.g. localhost:8500)"
    )
    p.add_argument(
        "--model-name", default=MODEL_NAME, help="--server: served model name (default %(default)s)"
    )
    p.add_argument(
        "--label", default=None, metavar="LABEL", help="--server: ask the version with this version label"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=SERVER_DEFAULTS.client_timeout_seconds,
        help="--server: seconds per request (default %(default)s)",
    )
    _add_slicing_gates_and_limits(p)
    add_work_dir(p, "its pushed model, unless --server or --model-dir")
    add_output_flags(p, "no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _add_slicing_gates_and_limits(p: argparse.ArgumentParser) -> None:
    """Tags to slice by, where the files go, the two bounds and the input limits."""
    from data_prep.image_io import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS
    from pipeline.site_predict import BATCH_SIZE

    p.add_argument(
        "--slice-by-filename",
        metavar="REGEX",
        default=None,
        help="tags from each image's path relative to DIR: every named group of the first "
        "match is a tag, e.g. '(?P<sequence>t1c|t1|t2|flair)'",
    )
    p.add_argument(
        "--tags",
        metavar="CSV",
        default=None,
        help="tags from a CSV file: a header line, then the image path relative to DIR and one "
        "column per tag (its values win over --slice-by-filename's)",
    )
    p.add_argument(
        "--patient-tag",
        metavar="TAG",
        default="patient",
        help="the tag naming each image's patient: intervals then resample patients, not images, "
        "where a patient has several images (default %(default)s; without that tag: Wilson over images)",
    )
    p.add_argument(
        "--out", metavar="DIR", default=None, help="write evaluation.json and evaluation.html here"
    )
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=-1.0,
        metavar="SHARE",
        help="exit 1 when the accuracy (abstentions count as wrong) is below SHARE (default: off)",
    )
    p.add_argument(
        "--max-tumour-called-notumor",
        type=float,
        default=-1.0,
        metavar="SHARE",
        help="exit 1 when more than SHARE of the tumour images are answered notumor (default: off)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help="images per call to the model (default %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip images with more pixels than this, as prepare does (default %(default)s)",
    )
    p.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_FILE_MB,
        help="skip files larger than this many MiB, as prepare does (default %(default)s)",
    )
