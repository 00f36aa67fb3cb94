"""The model card (Mitchell et al., "Model Cards for Model Reporting", 2019):
in the HTML report and as MODEL_CARD.md beside each pushed model version."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import numpy as np

from btmri.documents import Manifest, write_atomic
from btmri.intervals import format_with_interval
from btmri.layout import MODEL_CARD_FILE
from btmri.spec import MODEL_NAME
from btmri import spec
from pipeline.config import PipelineConfig
from pipeline.report import abstention_section, serving_validation, shortcut_control, tables
from pipeline.report.lesion_audit_section import audit_blocks
from pipeline.report.markup import TEMPLATES_DIR, count, to_markdown


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def early_stopping(history: dict | None) -> bool:
    """Whether the Trainer restored its best eval epoch: runs from before the schedules
    (components/training/schedule.py) with patience > 0. Today's runs export the last
    epoch, the end of their anneal."""
    history = history or {}
    return "schedule" not in history and int((history.get("config") or {}).get("patience") or 0) > 0


def epochs_kept(history: dict | None) -> tuple[int, int | None]:
    """(epochs run, epoch whose weights were exported): the last epoch, or the lowest
    eval loss for an older run that early-stopped."""
    h = (history or {}).get("history", {})
    run = len(h.get("loss", []))
    if not early_stopping(history):
        return run, run or None
    kept = int(np.argmin(h["val_loss"])) + 1 if h.get("val_loss") else None
    return run, kept


def kept_reason(history: dict | None) -> str:
    if early_stopping(history):
        return "lowest eval loss"
    schedule = (history or {}).get("schedule") or {}
    if schedule.get("anneal_start_epoch"):
        return (
            f"end of the anneal from epoch {schedule['anneal_start_epoch']} "
            f"({schedule.get('reason') or 'schedule'})"
        )
    return "end of the schedule"


def schedule_text(history: dict | None) -> str:
    """The learning-rate schedule in words: 'converge (patience 8)' or 'cosine', and
    the base-rate phase's smaller images where there was one: '...; epochs 1-25 on
    128x128 images'."""
    history = history or {}
    schedule = history.get("schedule") or {}
    name = schedule.get("schedule") or (history.get("config") or {}).get("schedule")
    if not name:
        return "cosine"  # runs from before the schedules
    patience = (history.get("config") or {}).get("patience")
    text = f"{name} (patience {patience})" if name == "converge" and patience else str(name)
    if schedule.get("base_phase_epochs"):
        side = schedule["base_phase_size"]
        text += f"; epochs 1-{schedule['base_phase_epochs']} on {side}x{side} images"
    return text


def _calibration_sentence(name: str, figures) -> str:
    cal = figures.calibration
    if cal is None or not cal.counts.sum():
        return f"{name}: no images."
    confidence = float(np.sum(cal.counts[cal.counts > 0] * cal.confidence[cal.counts > 0]) / cal.counts.sum())
    gap = confidence - figures.accuracy
    leaning = (
        "over-confident"
        if gap > 0.02
        else "under-confident"
        if gap < -0.02
        else "about as confident as it is accurate"
    )
    return (
        f"{name}: expected calibration error "
        f"{format_with_interval(cal.ece, figures.ece_ci)}; mean top-1 probability "
        f"{confidence:.3f} against accuracy "
        f"{format_with_interval(figures.accuracy, figures.accuracy_ci)} ({leaning})."
    )


def temperature_sentence(temperature: dict | None) -> str:
    if not temperature:
        return "The probabilities are the network's softmax, not recalibrated."
    return (
        f"The probabilities are temperature-scaled (T = {temperature['temperature']:.3f}, fitted "
        f"on the {temperature.get('examples', '?')} eval images: NLL "
        f"{temperature['nll_before']:.3f} → {temperature['nll_after']:.3f}, ECE "
        f"{temperature['ece_before']:.3f} → {temperature['ece_after']:.3f}); the ranking and "
        "the top-1 class are unchanged by it."
    )


def _data_flaws(data) -> list[str]:
    manifest = data.data.manifest or Manifest()
    flaws = []
    if data.data.synthetic:
        flaws.append(
            "The images are synthetic phantoms from this project's generator, not "
            "patients: the figures below say nothing about clinical performance."
        )
    else:
        flaws.append(
            f"Images from {manifest.data_dir or 'an unrecorded folder'}. The public "
            "Kaggle Brain Tumor MRI Dataset, which this project targets, merges earlier "
            "public collections (figshare, SARTAJ, Br35H). Sources, MRI sequences (T1, contrast T1, T2, "
            "FLAIR) and planes are mixed and not recorded per image, and the classes do "
            "not come from the sources in equal shares, so acquisition cues can stand in "
            "for the diagnosis. Labels are per image, without a recorded reading "
            "protocol."
        )
    if manifest.units:
        from data_prep.patients import describe_units

        known = (manifest.lesion_boxes or {}).get("patients", 0)
        flaws.append(
            f"Split by {manifest.split_unit}: "
            + "; ".join(describe_units(split, c) for split, c in manifest.units.items())
            + ". Patients are known only for copies of the box folder's slices"
            + (f" ({known} patients in its patients.csv)" if known else "")
            + "; every other image forms a group with its exact and near-duplicate copies, "
            "so neighbouring slices of an unknown patient that are not near copies can still "
            "fall on both sides."
            if manifest.split_unit == "patient"
            else f"Split by {manifest.split_unit}: slices of one patient can fall on both sides, "
            "so the figures below are optimistic."
        )
    dups = manifest.duplicates
    if dups:
        exact, near = dups.exact, dups.near
        flaws.append(
            f"Duplicates found while preparing: {exact.extra_copies} extra exact copies in "
            f"{exact.groups} groups, {near.pairs} near-duplicate pairs (perceptual hash "
            f"within {dups.near_threshold_bits} bits), of which across splits: exact "
            f"{exact.across_splits}, near {near.across_splits}."
        )
        if exact.conflicting_labels:
            flaws.append(
                f"{len(exact.conflicting_labels)} groups of identical images carry different labels."
            )
    if manifest.dropped_cross_split_duplicates:
        flaws.append(
            f"{len(manifest.dropped_cross_split_duplicates)} eval/test images that "
            "duplicate training images were left out when the data was prepared."
        )
    n_dup = len(data.duplicates)
    kinds = {k: sum(m.kind == k for m in data.duplicates.values()) for k in ("exact", "near")}
    flaws.append(
        f"{n_dup} of {data.as_is.n} evaluated images duplicate a training image "
        f"({kinds['exact']} exact, {kinds['near']} near): figures are given with and without them."
    )
    if manifest.skipped:
        flaws.append(
            f"{len(manifest.skipped)} files could not be used (unreadable, truncated, "
            "out of scope) and were skipped."
        )
    return flaws


def feedback_paragraphs(data) -> list[str]:
    """The "Feedback" section: the site's reviewed images (`btmri run --feedback`), the
    reviews and model versions behind them, and the accuracy on those in the evaluated
    split (TFMA's `collection: feedback` slice); [] for a run without feedback."""
    from btmri import intervals
    from data_prep.feedback import images_in, versions_text

    manifest = data.data.manifest
    section = manifest.feedback if manifest else None
    if not section:
        return []
    split = data.run.evaluated_split
    prov = section["provenance"]
    per_class = {c: sum(counts.get(c, 0) for counts in section["counts"].values()) for c in spec.CLASS_NAMES}
    reviewers = prov["reviewers"]
    left_out = section["reviews_unusable"] + section["reviews_without_image"]
    where = ", ".join(
        f"{count(images_in(section, name))} in {name}" + (" (the evaluated split)" if name == split else "")
        for name in section["counts"]
    )
    first = (
        f"{count(images_in(section))} images from the site, each labelled by a reader's review of a "
        f"logged request (`btmri review`), joined the data as the collection "
        f"`{section['collection']}` ({_per_class(per_class)}), split by near-duplicate group like the "
        f"other images, a copy of a dataset image with its original: {where}. "
        f"They come from {count(prov['reviews'])} reviews by {len(reviewers)} "
        f"reviewer{'s' * (len(reviewers) != 1)} ({', '.join(reviewers)}), made "
        f"{prov['reviewed_from']} to {prov['reviewed_to']}, of requests answered by "
        f"{versions_text(section)}."
        + (
            f" {count(left_out)} further {'review was' if left_out == 1 else 'reviews were'} not used: "
            f"{section['reviews_unusable']} "
            f"'not a usable slice', {section['reviews_without_image']} without a logged image."
            if left_out
            else ""
        )
        + " Each image's review and record id: the run's manifest (`feedback.images`); the "
        "reviews, reviewers and model versions also in ML Metadata (custom properties "
        "`feedback_*` of the run's Examples artifact)."
    )
    p = data.predictions
    keep = np.array([c == section["collection"] for c in (p.collections or [])], bool)
    if not keep.any():
        return [
            first,
            f"None of them is in the {split} split (too few reviews per class for its share), so "
            "the evaluation has no feedback slice: the site's images were trained on, not measured.",
        ]
    part = p.subset(keep)
    right = intervals.share(part.predicted == part.labels, part.patients)
    by_class = ", ".join(
        f"{name} {int(np.sum((part.labels == k) & (part.predicted == k)))}/{int(np.sum(part.labels == k))}"
        for k, name in enumerate(spec.CLASS_NAMES)
        if np.any(part.labels == k)
    )
    return [
        first,
        f"Accuracy on the feedback slice, the {count(right['n'])} feedback images of the {split} split "
        f"(TFMA slice `{spec.COLLECTION_KEY}: {section['collection']}`, beside the overall figures): "
        f"{format_with_interval(right['value'], right['ci95'])}; right per class: {by_class}. "
        "The gates judge the whole split, these images included.",
    ]


CARD_TEMPLATE = "model_card.md.j2"  # in templates/, beside the report's page frame


def card_context(data, version: str | None = None) -> dict:
    """What templates/model_card.md.j2 fills in: figures, counts and pre-rendered tables."""
    run = data.run
    epochs_run, kept = epochs_kept(data.history)
    split = run.evaluated_split
    train = data.split_counts.get(spec.TRAIN_SPLIT, {})
    eval_ = data.split_counts.get(spec.EVAL_SPLIT, {})
    evaluated = data.split_counts.get(split, {})
    return {
        "model_name": MODEL_NAME,
        "version": version,
        "classes": spec.CLASS_NAMES,
        "image_size": spec.IMAGE_SIZE,
        "cfg": run.trainer_config,
        "epochs_run": epochs_run,
        "epoch_kept": kept,
        "kept_reason": kept_reason(data.history),
        "schedule": schedule_text(data.history),
        "evaluated_at": _date(run.evaluated_at),
        "blessed": "yes" if run.blessed else "no" if run.blessed is not None else "unknown",
        "model_dir": run.model_dir,
        "model_digest": data.model_digest,
        "train_count": count(sum(train.values())),
        "train_per_class": _per_class(train),
        "eval_count": count(sum(eval_.values())),
        "eval_per_class": _per_class(eval_),
        "split": split,
        "separate_test_set": split == spec.TEST_SPLIT,
        "evaluated_count": count(sum(evaluated.values())),
        "evaluated_per_class": _per_class(evaluated),
        "data_flaws": _data_flaws(data),
        "intervals_note": tables.intervals_note([data.as_is, data.deduplicated]),
        "overall_table": to_markdown(
            [
                tables.overall(
                    [
                        (f"{split}, as is", data.as_is),
                        (f"{split}, without duplicates of training images", data.deduplicated),
                    ],
                    "card-overall",
                )
            ]
        ),
        "per_class_as_is": to_markdown(
            [tables.per_class(data.as_is, "card-per-class-as-is", f"{split}, as is")]
        ),
        "per_class_deduplicated": to_markdown(
            [
                tables.per_class(
                    data.deduplicated,
                    "card-per-class-dedup",
                    f"{split}, without the {len(data.duplicates)} images that duplicate training images",
                )
            ]
        ),
        "shortcut_control": to_markdown(
            shortcut_control.blocks(
                getattr(data, "shortcut_control", None),
                data.as_is,
                spec.CLASS_NAMES,
                "card-shortcut-control",
            )
        ),
        "calibration": [
            _calibration_sentence("As is", data.as_is),
            _calibration_sentence("Without duplicates", data.deduplicated),
            temperature_sentence(data.temperature),
        ],
        "lesion_audit": to_markdown(audit_blocks(data.lesion_audit, "card-lesion-audit")),
        "abstention": to_markdown(
            abstention_section.blocks(getattr(data, "abstention", None), split, "card-abstention")
        ),
        "serving_validation": to_markdown(
            serving_validation.blocks(getattr(data, "infra_validation", None), "card-serving-validation")
        ),
        "feedback": feedback_paragraphs(data),
    }


def _per_class(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count(counts.get(name, 0))}" for name in spec.CLASS_NAMES)


def render_markdown(data, version: str | None = None, level: int = 1) -> str:
    """The card as Markdown; `level` is the heading level of its title."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    text = env.get_template(CARD_TEMPLATE).render(level=level, **card_context(data, version))
    return re.sub(r"\n{3,}", "\n\n", text)


def write_model_card(config: PipelineConfig, version_dir: str) -> Path:
    """Writes MODEL_CARD.md into a pushed version folder, from the latest run's artifacts.

    The file is written beside and renamed into place, so a reader (or TF Serving's
    file-system poll) never sees half a card.
    """
    from components.executors import DIGEST_FILE, model_digest
    from pipeline.report.artifacts import find_run
    from pipeline.report.collect import collect

    version_dir = os.path.abspath(version_dir)
    recorded = Path(version_dir, DIGEST_FILE)
    evaluated = find_run(config).model_dir
    if recorded.is_file() and recorded.read_text().strip() != model_digest(evaluated):
        raise ValueError(
            f"{version_dir} does not hold the latest evaluated model ({evaluated}): no model card written"
        )
    data = collect(config, gallery_per_kind=0)
    text = render_markdown(data, os.path.basename(version_dir.rstrip("/")))
    return write_atomic(Path(version_dir) / MODEL_CARD_FILE, text)
