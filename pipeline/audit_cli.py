"""`btmri audit`: the lesion audit against a served model or a SavedModel."""

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
)
from btmri.layout import RunLayout


def _cmd_audit(args: argparse.Namespace) -> int:
    from components.audit.component import run_lesion_audit
    from components.audit.lesion_audit import AuditBounds
    from components.audit.report_text import audit_lines
    from btmri import spec

    predictor = None
    model_dir = None
    if args.server:
        from components.audit.predictors import ServedPredictor

        predictor = ServedPredictor(args.server, args.model_name, timeout=args.timeout)
    else:
        model = args.model or RunLayout(args.work_dir).serving_dir
        model_dir = _saved_model_dir(model)
        if model_dir is None:
            return error(
                "audit",
                f"no SavedModel in {model} (expected saved_model.pb there or in a numbered "
                "version folder); give --model DIR or --server HOST:PORT, or run `btmri run` first",
            )
    training = []
    if args.exclude_training:
        training = sorted(
            str(p) for p in (Path(args.exclude_training) / spec.TRAIN_SPLIT).glob(f"*{spec.TFRECORD_SUFFIX}")
        )
        if not training:
            return error("audit", f"no training records under {args.exclude_training}/{spec.TRAIN_SPLIT}/")
    if not Path(args.box_dir).is_dir():
        return error("audit", f"no box folder {args.box_dir}")
    from serving.client import ServerUnavailable, unavailable_message

    bounds = AuditBounds(args.min_pointing, args.min_removed_changed)
    try:
        document = run_lesion_audit(
            model_dir,
            args.box_dir,
            training,
            args.tolerance_px,
            bounds,
            args.out,
            progress=not args.quiet,
            predictor=predictor,
        )
    except ServerUnavailable as err:
        print(unavailable_message("btmri audit", err), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ValueError as err:
        return error("audit", err)
    finally:
        if predictor is not None:
            predictor.close()
    if args.json:
        print(json.dumps({k: v for k, v in document.items() if k != "results"}, indent=1))
    else:
        print("\n".join(audit_lines(document)))
        print(f"written to {args.out}")
    return EXIT_OK if document["passed"] else EXIT_REFUSED


def _saved_model_dir(path: str) -> str | None:
    """A SavedModel folder, or the highest numbered version of a TF Serving base path."""
    root = Path(path)
    if (root / "saved_model.pb").is_file():
        return str(root)
    versions = (
        [p for p in root.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
        if root.is_dir()
        else []
    )
    return str(max(versions, key=lambda p: int(p.name))) if versions else None


def register(sub) -> None:
    from components.audit.lesion_audit import DEFAULT_TOLERANCE_PX
    from btmri.spec import MODEL_NAME

    p = sub.add_parser("audit", help="does the model look at the tumour? (slices with boxes)")
    p.add_argument(
        "box_dir", metavar="DIR", help="tumour slices with boxes: <class>/<id>.jpg + <class>/<id>.txt (YOLO)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="HOST:PORT", help="gRPC address of TF Serving / btmri serve")
    where.add_argument(
        "--model",
        metavar="DIR",
        help="a SavedModel, or a TF Serving base path (its latest version); default: the "
        "work folder's pushed model, WORK_DIR/serving/brain_tumor",
    )
    add_work_dir(p, "its pushed model, unless --server or --model")
    p.add_argument("--model-name", default=MODEL_NAME, help="served model name (default %(default)s)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="--server: seconds per request, retries on an unavailable server included (default %(default)s)",
    )
    p.add_argument(
        "--exclude-training",
        metavar="PREPARED",
        help="prepared data (btmri prepare --out): skip slices copied in its train split",
    )
    p.add_argument(
        "--tolerance-px",
        type=float,
        default=DEFAULT_TOLERANCE_PX,
        help="pointing-game tolerance on the 224x224 heatmap (default %(default)s)",
    )
    p.add_argument(
        "--min-pointing",
        type=float,
        default=-1.0,
        metavar="SHARE",
        help="refuse (exit 1) when the pointing game is below SHARE",
    )
    p.add_argument(
        "--min-removed-changed",
        type=float,
        default=-1.0,
        metavar="SHARE",
        help="refuse (exit 1) when fewer than SHARE of answers change with the lesion removed",
    )
    p.add_argument(
        "--out",
        default="lesion_audit",
        help="folder for lesion_audit.json and the gallery (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_output_flags(p, "no progress bar")
    p.set_defaults(func=_cmd_audit)
