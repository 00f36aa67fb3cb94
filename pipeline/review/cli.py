"""`btmri review`: argument parsing and what it prints; the page is server.py's, the
cases cases.py's, the database store.py's, the export export.py's."""

from __future__ import annotations

import argparse
import logging
import sys

from btmri.cli_conventions import EXIT_OK, add_options, add_output_flags, add_work_dir, error, options_from
from btmri.layout import RunLayout
from pipeline.review.options import ReviewOptions


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "unknown"


def _gradcam_source(opts: ReviewOptions, work_dir: str):
    """(ModelSource or None, what the page says without one); ValueError for a bad --model."""
    from pipeline.review.gradcam import saved_model_source, server_source
    from pipeline.site_predict import saved_model_dir

    if not opts.gradcam:
        return None, "no Grad-CAM: started with --no-gradcam"
    if opts.server:
        return server_source(opts.server, opts.model_name, opts.timeout), ""
    pushed = RunLayout(work_dir).serving_dir
    model_dir = saved_model_dir(opts.model or pushed)
    if model_dir is not None:
        return saved_model_source(model_dir), ""
    if opts.model:
        raise ValueError(
            f"no SavedModel in {opts.model} (expected saved_model.pb there or in a numbered version folder)"
        )
    return None, (
        f"no Grad-CAM: no model given (--model DIR or --server HOST:PORT) and no pushed model in {pushed}"
    )


def _check(opts: ReviewOptions) -> str | None:
    if opts.model and opts.server:
        return "give --model or --server, not both"
    if not opts.gradcam and (opts.model or opts.server):
        return "--no-gradcam loads no model: drop --model / --server (or --no-gradcam)"
    if not 0 <= opts.port <= 65535:
        return f"--port must be in 0..65535, got {opts.port}"
    if min(opts.max_abstained, opts.answered) < 0:
        return "--abstained and --answered cannot be negative"
    if opts.max_abstained == opts.answered == 0:
        return "--abstained 0 and --answered 0 list nothing"
    return None


def _export(opts: ReviewOptions, db: str) -> int:
    from pathlib import Path

    from pipeline.review.export import ExportError, export_reviews
    from pipeline.review.store import StoreError, open_store

    if "://" not in db and not Path(db).is_file():  # an export must not create an empty database
        return error(
            "review", f"no reviews in {db} yet (no such database): review some with `btmri review` first"
        )
    try:
        store = open_store(db)
    except StoreError as err:
        return error("review", err)
    try:
        summary = export_reviews(store, opts.export)
    except ExportError as err:
        return error("review", err)
    finally:
        store.close()
    images = ", ".join(f"{name} {n}" for name, n in sorted(summary.images.items())) or "none"
    print(
        f"exported {summary.rows} current reviews from {store.where} to {summary.out}: images {images}; "
        f"{summary.unusable} not usable and {summary.without_image} logged without their image "
        f"are in {summary.out}/reviews.csv only"
    )
    return EXIT_OK


def _cmd_review(args: argparse.Namespace) -> int:
    from pipeline.review.store import default_db

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    opts = ReviewOptions(**options_from(args, ReviewOptions))
    db = opts.db or default_db(args.work_dir)
    if opts.export:
        return _export(opts, db)
    if not opts.request_log_dir:
        return error(
            "review",
            "give --request-log DIR (the folder `btmri serve --request-log DIR` writes), or --export DIR",
        )
    if problem := _check(opts):
        return error("review", problem)
    try:
        model, without_model = _gradcam_source(opts, args.work_dir)
    except ValueError as err:
        return error("review", err)

    from pipeline.review.cases import CaseError, load_cases
    from pipeline.review.gradcam import Overlays
    from pipeline.review.server import ReviewApp, ReviewServer, is_loopback_bind
    from pipeline.review.store import StoreError, open_store

    try:
        store = open_store(db)
    except StoreError as err:
        return error("review", err)
    try:
        cases = load_cases(opts.request_log_dir, opts.max_abstained, opts.answered, opts.seed)
        local = is_loopback_bind(opts.host)
        app = ReviewApp(
            cases,
            store,
            Overlays(model, without_model),
            opts.reviewer or _os_user(),
            opts.request_log_dir,
            local_only=local,
        )
        try:
            server = ReviewServer(app, opts.host, opts.port)
        except OSError as err:
            return error("review", f"cannot listen on {opts.host}:{opts.port}: {err.strerror or err}")
        if not args.quiet:
            print(
                f"{len(cases.cases)} cases ({cases.abstained} abstentions, then {cases.answered} of "
                f"{cases.answered_total} answered) from {opts.request_log_dir}; reviews by "
                f"{app.reviewer} go to {store.where}"
            )
        if not local:
            print(
                f"listening on {opts.host}: any machine that reaches this one can see the images "
                "(reviews still need the page's token)"
            )
        print(f"review page: {server.url}  (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    except CaseError as err:
        return error("review", err)
    finally:
        store.close()
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "review",
        help="a local page to label logged requests (abstentions first); --export writes the labels",
        description="Serves a page on this machine listing requests of a request log (`btmri serve "
        "--request-log DIR`): abstentions first, then a sample of answered ones, each with its "
        "image (if logged), answer, probabilities and Grad-CAM. A reviewer records the right "
        "class or 'not a usable slice' with the keyboard; reviews go to a SQLite file (or "
        "PostgreSQL). --export DIR writes the reviewed images as class folders plus a CSV.",
    )
    add_work_dir(p, "its pushed model (Grad-CAM) and review/reviews.sqlite")
    add_options(p, ReviewOptions)
    add_output_flags(p, "no notes beside the page's address")
    p.set_defaults(func=_cmd_review)
