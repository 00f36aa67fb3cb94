"""The model card (Mitchell et al., "Model Cards for Model Reporting", 2019):
in the HTML report and as MODEL_CARD.md beside each pushed model version."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from btmri.documents import Manifest, write_atomic
from btmri.intervals import format_with_interval
from btmri.layout import MODEL_CARD_FILE
from btmri.spec import MODEL_NAME
from btmri import spec
from pipeline.config import PipelineConfig
from pipeline.report import abstention, serving_validation, tables
from pipeline.report.lesion_audit import audit_blocks
from pipeline.report.markup import Bullets, Heading, Paragraph, count, to_markdown


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def early_stopping(history: dict | None) -> bool:
    """Whether the Trainer early-stopped and restored its best epoch (patience > 0)."""
    return int(((history or {}).get("config") or {}).get("patience") or 0) > 0


def epochs_kept(history: dict | None) -> tuple[int, int | None]:
    """(epochs run, epoch whose weights were exported): the lowest eval loss when the
    Trainer early-stopped, else the last epoch."""
    h = (history or {}).get("history", {})
    run = len(h.get("loss", []))
    if not early_stopping(history):
        return run, run or None
    kept = int(np.argmin(h["val_loss"])) + 1 if h.get("val_loss") else None
    return run, kept


def kept_reason(history: dict | None) -> str:
    return "lowest eval loss" if early_stopping(history) else "end of the schedule"


def _calibration_sentence(name: str, figures) -> str:
    cal = figures.calibration
    if cal is None or not cal.counts.sum():
        return f"{name}: no images."
    confidence = float(np.sum(cal.counts[cal.counts > 0] * cal.confidence[cal.counts > 0])
                       / cal.counts.sum())
    gap = confidence - figures.accuracy
    leaning = ("over-confident" if gap > 0.02 else "under-confident" if gap < -0.02
               else "about as confident as it is accurate")
    return (f"{name}: expected calibration error "
            f"{format_with_interval(cal.ece, figures.ece_ci)}; mean top-1 probability "
            f"{confidence:.3f} against accuracy "
            f"{format_with_interval(figures.accuracy, figures.accuracy_ci)} ({leaning}).")


def temperature_sentence(temperature: dict | None) -> str:
    if not temperature:
        return "The probabilities are the network's softmax, not recalibrated."
    return (f"The probabilities are temperature-scaled (T = {temperature['temperature']:.3f}, fitted "
            f"on the {temperature.get('examples', '?')} eval images: NLL "
            f"{temperature['nll_before']:.3f} → {temperature['nll_after']:.3f}, ECE "
            f"{temperature['ece_before']:.3f} → {temperature['ece_after']:.3f}); the ranking and "
            "the top-1 class are unchanged by it.")


def _data_flaws(data) -> list[str]:
    manifest = data.data.manifest or Manifest()
    flaws = []
    if data.data.synthetic:
        flaws.append("The images are synthetic phantoms from this project's generator, not "
                     "patients: the figures below say nothing about clinical performance.")
    else:
        flaws.append(f"Images from {manifest.data_dir or 'an unrecorded folder'}. The public "
                     "Kaggle Brain Tumor MRI Dataset, which this project targets, merges earlier "
                     "public collections (figshare, SARTAJ, Br35H). Sources, MRI sequences (T1, contrast T1, T2, "
                     "FLAIR) and planes are mixed and not recorded per image, and the classes do "
                     "not come from the sources in equal shares, so acquisition cues can stand in "
                     "for the diagnosis. Labels are per image, without a recorded reading "
                     "protocol; no patient identifiers exist to keep a patient's slices in one split.")
    dups = manifest.duplicates
    if dups:
        exact, near = dups["exact"], dups["near"]
        flaws.append(
            f"Duplicates found while preparing: {exact['extra_copies']} extra exact copies in "
            f"{exact['groups']} groups, {near['pairs']} near-duplicate pairs (perceptual hash "
            f"within {dups['near_threshold_bits']} bits), of which across splits: exact "
            f"{sum(exact['images_with_copy_in_other_split'].values())}, near "
            f"{sum(near['pairs_across_splits'].values())}.")
        if exact.get("conflicting_labels"):
            flaws.append(f"{len(exact['conflicting_labels'])} groups of identical images carry "
                         "different labels.")
    if manifest.dropped_cross_split_duplicates:
        flaws.append(f"{len(manifest.dropped_cross_split_duplicates)} eval/test images that "
                     "duplicate training images were left out when the data was prepared.")
    n_dup = len(data.duplicates)
    kinds = {k: sum(m.kind == k for m in data.duplicates.values()) for k in ("exact", "near")}
    flaws.append(
        f"{n_dup} of {data.as_is.n} evaluated images duplicate a training image "
        f"({kinds['exact']} exact, {kinds['near']} near): figures are given with and without them.")
    if manifest.skipped:
        flaws.append(f"{len(manifest.skipped)} files could not be used (unreadable, truncated, "
                     "out of scope) and were skipped.")
    return flaws


def card_blocks(data, version: str | None = None, level: int = 1) -> list:
    """The card's content; `level` is the heading level of its title."""
    run = data.run
    h2, h3 = level + 1, level + 2
    cfg = run.trainer_config
    epochs_run, kept = epochs_kept(data.history)
    split = run.evaluated_split
    train = data.split_counts.get(spec.TRAIN_SPLIT, {})
    eval_ = data.split_counts.get(spec.EVAL_SPLIT, {})
    evaluated = data.split_counts.get(split, {})
    classes = ", ".join(spec.CLASS_NAMES)

    blocks = [
        Heading(f"Model card: {MODEL_NAME}" + (f", version {version}" if version else ""),
                level),
        Heading("Model details", h2),
        Bullets([
            f"Four-class classifier of single 2D brain MRI slices: {classes}.",
            f"Architecture: {cfg.get('model', 'unknown')} (convolutional network, "
            f"{'ImageNet' if cfg.get('weights') else 'random'} initial weights), input a 224×224 "
            "grayscale image scaled to [0, 1]; preprocessing is the TFX Transform graph inside "
            "the SavedModel.",
            f"Training: {epochs_run} epochs run (of {cfg.get('epochs', '?')} allowed), weights of "
            f"epoch {kept if kept else '?'} kept ({kept_reason(data.history)}); batch {cfg.get('batch_size', '?')}, "
            f"learning rate {cfg.get('learning_rate', '?')} with cosine decay, weight decay "
            f"{cfg.get('weight_decay', 0)}, label smoothing {cfg.get('label_smoothing', 0)}, "
            f"augmentation {'on' if cfg.get('augment') else 'off'}.",
            "Outputs: class probabilities, the top-1 class, a Grad-CAM heatmap (signature "
            "`gradcam`) showing which image regions drove the top-1 score, and whether the "
            "model abstains (`abstain`, `abstain_reason`, `ood_score`): an image unlike the "
            "training slices, or a low top probability, gets no answer.",
            f"Evaluated {_date(run.evaluated_at)} by the TFX Evaluator (TFMA); blessed: "
            f"{'yes' if run.blessed else 'no' if run.blessed is not None else 'unknown'}.",
            f"Evaluated SavedModel: {run.model_dir} (sha256 of its files {data.model_digest}).",
        ]),
        Heading("Intended use", h2),
        Bullets([
            "Decision support for trained readers (radiologists, neuroradiology trainees) "
            "reviewing 2D MRI slices of the adult brain: a second look and a pointer to the "
            "region that drove the suggestion.",
            "Not a diagnostic device. It is not cleared or approved by any regulator; every "
            "output must be confirmed by a qualified reader who has the whole study and the "
            "clinical context.",
            "Research, teaching and engineering of ML pipelines for medical images.",
        ]),
        Heading("Out-of-scope uses", h2),
        Bullets([
            "3D studies or series read as a whole: the model sees one slice at a time "
            "(multi-frame DICOM is refused when data is prepared).",
            "Other anatomy than the brain; other modalities than MRI (CT, X-ray, PET, ultrasound). "
            "The model abstains on many such images (see below), but the detector is fitted to "
            "brain slices like its eval split and is no guarantee against every foreign image.",
            "Pediatric patients: no data on children was used or checked.",
            "Tumour types and findings outside the four classes (metastases, lymphoma, stroke, "
            "haemorrhage, post-operative changes): the model will still answer with one of the "
            "four classes.",
            "Autonomous decisions, triage without a reader, screening populations, grading, "
            "segmentation or treatment planning.",
        ]),
        Heading("Training data", h2),
        Paragraph(
            f"{count(sum(train.values()))} training images ({_per_class(train)}) and "
            f"{count(sum(eval_.values()))} eval images ({_per_class(eval_)}), used for early "
            "stopping and to pick the kept epoch. The split between them is stratified per "
            "class and decided by each file's content hash, so byte-identical copies share a split."),
        Heading("Evaluation data", h2),
        Paragraph(
            f"The {split} split: {count(sum(evaluated.values()))} images ({_per_class(evaluated)}). "
            + ("It comes from the dataset's separate Testing folder."
               if split == spec.TEST_SPLIT else
               "There was no separate test set: the eval split, which also picked the kept "
               "epoch, is the evaluation set, so its figures are optimistic.")),
        Heading("Known flaws of the data", h3),
        Bullets(_data_flaws(data)),
        Heading("Metrics", h2),
        Paragraph(
            "Per class, one class against the rest with the top-1 decision: precision, recall "
            "(sensitivity: the share of that class's images found), specificity (the share of the "
            "other images not flagged as it), F1, and ROC AUC from the class probability. "
            "Overall: accuracy, macro F1 (classes weigh equally) and expected calibration error. "
            "A missed tumour (low recall) and a false alarm (low specificity) have different "
            "costs; read both. " + tables.INTERVALS_NOTE),
        Heading("Quantitative analysis", h2),
        tables.overall([(f"{split}, as is", data.as_is),
                        (f"{split}, without duplicates of training images", data.deduplicated)],
                       "card-overall"),
        tables.per_class(data.as_is, "card-per-class-as-is", f"{split}, as is"),
        tables.per_class(data.deduplicated, "card-per-class-dedup",
                         f"{split}, without the {len(data.duplicates)} images that duplicate "
                         "training images"),
        Heading("Calibration", h2),
        Bullets([_calibration_sentence("As is", data.as_is),
                 _calibration_sentence("Without duplicates", data.deduplicated),
                 temperature_sentence(data.temperature),
                 "Calibration measured on this data need not hold at another site; do not read "
                 "a probability as the chance that the finding is present without local checks."]),
        Heading("Does it look at the tumour?", h2),
        *audit_blocks(data.lesion_audit, "card-lesion-audit"),
        Heading("When it does not answer", h2),
        *abstention.blocks(getattr(data, "abstention", None), split, "card-abstention"),
        Heading("Serving validation", h2),
        *serving_validation.blocks(getattr(data, "infra_validation", None), "card-serving-validation"),
        Heading("Limitations", h2),
        Bullets([
            "Duplicates and near duplicates between training and test images inflate the "
            "as-is figures; the de-duplicated figures are the better estimate, and still "
            "optimistic for a new site.",
            "Mixed, unrecorded sources and sequences: the model may have learned where an image "
            "came from rather than what it shows. Validate on local data before any use.",
            "Single slices: no context from neighbouring slices, other sequences or prior studies.",
            "Grad-CAM shows where the top-1 score is sensitive (for the default model: "
            "Grad-CAM on the 14×14 feature map sharpened by a LayerCAM of the 56×56 one): "
            "a coarse pointer, and no proof that the model looked at the lesion for the "
            "right reason.",
            "Small classes and small test sets make per-class figures uncertain: read the 95 % "
            "intervals beside each figure, not the third decimal.",
        ]),
        Heading("Ethical considerations", h2),
        Bullets([
            "Automation bias: a confident suggestion can sway a reader; show it after the "
            "reader's own first impression where possible.",
            "A missed tumour can delay care; a false tumour finding can cause anxiety and "
            "further imaging. Neither error rate is zero (see the per-class table).",
            "The training data carries no demographic information (age, sex, ethnicity, "
            "scanner, site): performance for any subgroup is unknown.",
            "Train and evaluate only on de-identified images you are allowed to use; the "
            "model and its heatmaps must not be used to re-identify anyone.",
        ]),
    ]
    return blocks


def _per_class(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count(counts.get(name, 0))}" for name in spec.CLASS_NAMES)


def render_markdown(data, version: str | None = None) -> str:
    return to_markdown(card_blocks(data, version))


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
        raise ValueError(f"{version_dir} does not hold the latest evaluated model "
                         f"({evaluated}): no model card written")
    data = collect(config, gallery_per_kind=0)
    text = render_markdown(data, os.path.basename(version_dir.rstrip("/")))
    return write_atomic(Path(version_dir) / MODEL_CARD_FILE, text)
