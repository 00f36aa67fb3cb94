"""`btmri review`'s options, each declared once with its flag, default and help
(btmri.documents.option); cli.py turns them into flags."""

from __future__ import annotations

from dataclasses import dataclass

from btmri import spec
from btmri.documents import DEFAULT_HOST, option

DEFAULT_PORT = 8502  # beside the model server's 8500 (gRPC) and 8501 (REST)


@dataclass(kw_only=True)
class ReviewOptions:
    request_log_dir: str | None = option(
        None,
        "the request log folder `btmri serve --request-log DIR` writes",
        flag="request_log",
        metavar="DIR",
    )
    db: str | None = option(
        None,
        "the review database: a SQLite file, or postgresql://USER@HOST/DB for a team's shared store "
        "(needs the postgres extra); default WORK_DIR/review/reviews.sqlite",
        metavar="FILE|URL",
    )
    reviewer: str | None = option(None, "the name each review is stored under; default the OS user")
    host: str = option(
        DEFAULT_HOST,
        "address to bind; the page refuses requests from other machines unless this is widened "
        "(e.g. 0.0.0.0: anyone who reaches this machine sees the images)",
    )
    port: int = option(DEFAULT_PORT, "port of the review page (0: any free port)")
    max_abstained: int = option(200, "abstentions listed, newest first", flag="abstained", metavar="N")
    answered: int = option(50, "answered requests listed after them: a sample of the log", metavar="N")
    seed: int = option(0, "the sample's seed (the same seed lists the same requests)")
    model: str | None = option(
        None,
        "Grad-CAM from this SavedModel or TF Serving base path (its latest version); default the "
        "work folder's pushed model, when there is one",
        metavar="DIR",
    )
    server: str | None = option(
        None, "Grad-CAM from a running model server's gradcam signature (gRPC HOST:PORT)", metavar="HOST:PORT"
    )
    model_name: str = option(spec.MODEL_NAME, "--server: served model name")
    timeout: float = option(30.0, "--server: seconds per request")
    gradcam: bool = option(True, "no Grad-CAM overlays (no model is loaded)")
    export: str | None = option(
        None,
        "write the current reviews as labelled images into DIR (DIR/<class>/ + reviews.csv) and "
        "exit, instead of serving the page",
        metavar="DIR",
    )
