"""Evaluation report (HTML) and model card of a pipeline run.

    build_report(config, out)             → report.html (see build.py)
    write_model_card(config, version_dir) → <version_dir>/MODEL_CARD.md (see model_card.py)

Both import TensorFlow and TFMA when called, not when this package is imported,
so `btmri --help` stays fast.
"""

from __future__ import annotations

DEFAULT_GALLERY_PER_KIND = 4  # Grad-CAM gallery: this many correct and this many wrong images


def read_summary(report_dir: str) -> dict | None:
    """The headline figures (summary.json) in a ModelReport artifact's folder, or None
    when it has none."""
    import json
    import os

    from btmri.layout import SUMMARY_FILE

    path = os.path.join(report_dir, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_report(*args, **kwargs):
    from pipeline.report.build import build_report as build

    return build(*args, **kwargs)


def write_model_card(config, version_dir: str):
    from pipeline.report.model_card import write_model_card as write

    return write(config, version_dir)
