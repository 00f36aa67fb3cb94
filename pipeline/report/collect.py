"""Gathers everything the report and the model card show, from one run."""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from btmri import spec
from btmri.layout import CALIBRATION_FILE, HISTORY_FILE
from components.executors import model_digest
from pipeline.config import PipelineConfig
from pipeline.report import dedup, metrics, predictions as preds, tfma_results
from pipeline.report.artifacts import RunArtifacts, find_run
from pipeline.report.data_summary import DataSummary, summarize_data
from pipeline.report.gallery import GalleryItem, choose
from pipeline.report.markup import rate
from serving.heatmap_overlay import overlay

# TFMA's AUC integrates over 10,000 fixed thresholds: close to, not equal to, the exact AUC.
TFMA_AUC_TOLERANCE = 0.01
GALLERY_MAX_SIDE = 320


@dataclass
class Check:
    """A cross-check between TFMA's figures and the model's own predictions.

    "fail": the report's inputs disagree (the data changed since the run?);
    "warn": a TFMA figure is off, the report's own figure is used instead.
    """

    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


@dataclass
class ReportData:
    run: RunArtifacts
    tfma: tfma_results.TfmaResult
    predictions: preds.Predictions
    as_is: metrics.Figures
    deduplicated: metrics.Figures
    duplicates: dict[str, dedup.Match]  # evaluated image → training image it duplicates
    data: DataSummary
    split_counts: dict[str, dict[str, int]]  # as imported by the pipeline
    history: dict | None  # history.json of the Trainer
    temperature: dict | None  # calibration.json: the Trainer's temperature scaling
    model_digest: str  # as the Pusher records it (MODEL_DIGEST)
    checks: list[Check] = field(default_factory=list)
    gallery: list[GalleryItem] = field(default_factory=list)
    lesion_audit: dict | None = None  # lesion_audit.json of the run's LesionAudit
    lesion_gallery: list = field(default_factory=list)  # lesion_audit.AuditTile
    abstention: object = None  # pipeline.report.abstention_section.AbstentionSummary
    infra_validation: object = None  # btmri.documents.InfraValidation of the InfraValidator
    request_baseline: object = None  # pipeline.report.request_baseline.BaselineSummary
    shortcut_control: dict | None = None  # shortcut_control.json of the run's ShortcutControl
    generated_at: float = field(default_factory=time.time)


def _count(labels) -> dict[str, int]:
    tally = Counter(int(label) for label in labels)
    return {name: tally.get(k, 0) for k, name in enumerate(spec.CLASS_NAMES)}


def _read_json(folder: str | None, name: str) -> dict | None:
    path = os.path.join(folder or "", name)
    if not folder or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _checks(tfma: tfma_results.TfmaResult, p: preds.Predictions, as_is: metrics.Figures) -> list[Check]:
    own_cm = metrics.confusion_matrix(p.labels, p.predicted, spec.NUM_CLASSES)
    tfma_n, tfma_acc = tfma.get("example_count"), tfma.get("sparse_categorical_accuracy")
    same_cm = tfma.confusion is not None and np.array_equal(tfma.confusion, own_cm) and not tfma.unpredicted

    def status(ok: bool, otherwise: str = "fail") -> str:
        return "ok" if ok else otherwise

    checks = [
        Check(
            "example count",
            status(tfma_n == len(p.labels)),
            f"TFMA {tfma_n:.0f}, predictions {len(p.labels)}",
        ),
        Check(
            "accuracy",
            status(abs(tfma_acc - metrics.accuracy(own_cm)) < 1e-6),
            f"TFMA {tfma_acc:.4f}, predictions {metrics.accuracy(own_cm):.4f}",
        ),
        Check(
            "confusion matrix",
            status(same_cm),
            "TFMA's MultiClassConfusionMatrixPlot equals the predictions' matrix"
            if same_cm
            else f"TFMA {None if tfma.confusion is None else tfma.confusion.tolist()} "
            f"({tfma.unpredicted} without a class), predictions {own_cm.tolist()}",
        ),
    ]
    off = []
    for k, fig in enumerate(as_is.per_class):
        for stat, value in (("precision", fig.precision), ("recall", fig.recall)):
            recorded = tfma.get(f"{stat}_{fig.name}", f"classId:{k} topK:1")
            if not (np.isnan(value) and np.isnan(recorded)) and not abs(recorded - value) < 1e-6:
                off.append(f"{stat}_{fig.name} {rate(recorded)} (matrix {rate(value)})")
    checks.append(
        Check(
            "TFMA per-class precision/recall (top-1)",
            status(not off, "warn"),
            "agree with TFMA's confusion matrix"
            if not off
            else "disagree with TFMA's own confusion matrix: "
            + "; ".join(off)
            + ". The per-class tables use the confusion matrix.",
        )
    )
    off = []
    for k, fig in enumerate(as_is.per_class):
        recorded = tfma.get("auc", f"classId:{k}")
        if not abs(recorded - fig.auc) <= TFMA_AUC_TOLERANCE:
            off.append(f"{fig.name} {rate(recorded)} (exact {rate(fig.auc)})")
    checks.append(
        Check(
            "TFMA one-vs-rest AUC",
            status(not off, "warn"),
            f"within {TFMA_AUC_TOLERANCE} of the exact AUC"
            if not off
            else "differs from the exact AUC: " + "; ".join(off) + ". TFMA bins scores into 10,000 "
            "thresholds, which merges close scores; the tables show the exact AUC.",
        )
    )
    return checks


def _scan_other_splits(run: RunArtifacts, p: preds.Predictions, near_threshold: int):
    """Counts per class of the splits not evaluated, and, while the training split
    streams by, which evaluated images duplicate a training image."""
    counts: dict[str, dict[str, int]] = {}
    duplicates: dict[str, dedup.Match] = {}
    for split in run.splits:
        if split == run.evaluated_split:
            continue
        labels: list[int] = []

        def images(split=split, labels=labels):
            for _, example in preds.read_examples(run.split_uri(split)):
                labels.append(example[spec.LABEL_KEY])
                yield example[spec.SOURCE_KEY], example[spec.IMAGE_KEY]

        if split == spec.TRAIN_SPLIT:
            index = dedup.TrainingIndex(images())
            duplicates = dedup.training_duplicates(index, p.sources, p.images, near_threshold)
        else:
            deque(images(), maxlen=0)
        counts[split] = _count(labels)
    return counts, duplicates


def collect(
    config: PipelineConfig,
    data_root: str | None = None,
    gallery_per_kind: int = 4,
    abstention_benchmark: str | None = None,
) -> ReportData:
    """The latest run's report data, its artifacts found in ML Metadata.
    `abstention_benchmark`: JSON written by benchmarks/abstention_probes.py --out."""
    return collect_run(find_run(config, data_root), gallery_per_kind, abstention_benchmark)


def collect_run(
    run: RunArtifacts, gallery_per_kind: int = 4, abstention_benchmark: str | None = None
) -> ReportData:
    """Reads the run's artifacts, predicts the evaluated split, finds duplicates of
    training images in it, and (if gallery_per_kind) computes Grad-CAM for a few images."""
    tfma = tfma_results.load(run.evaluation_uri)
    data = summarize_data(run.data_root, run.splits, run.statistics_uri, run.anomalies_uri)
    model = preds.load_model(run.model_dir)
    p = preds.predict_split(model, run.split_uri(run.evaluated_split))

    other_counts, duplicates = _scan_other_splits(run, p, data.near_threshold)
    split_counts = {s: _count(p.labels) if s == run.evaluated_split else other_counts[s] for s in run.splits}

    cm_own = metrics.confusion_matrix(p.labels, p.predicted, spec.NUM_CLASSES)
    as_is = metrics.figures(
        tfma.confusion if tfma.confusion is not None else cm_own,
        p.labels,
        p.probs,
        spec.CLASS_NAMES,
        patients=p.patients,
    )
    kept = p.subset(np.array([s not in duplicates for s in p.sources], bool))
    deduplicated = metrics.figures(
        metrics.confusion_matrix(kept.labels, kept.predicted, spec.NUM_CLASSES),
        kept.labels,
        kept.probs,
        spec.CLASS_NAMES,
        patients=kept.patients,
    )

    report = ReportData(
        run=run,
        tfma=tfma,
        predictions=p,
        as_is=as_is,
        deduplicated=deduplicated,
        duplicates=duplicates,
        data=data,
        split_counts=split_counts,
        history=_read_json(run.model_run_dir, HISTORY_FILE),
        temperature=_read_json(run.model_run_dir, CALIBRATION_FILE),
        model_digest=model_digest(run.model_dir),
        checks=_checks(tfma, p, as_is),
    )
    import components.training.abstention  # the fitted thresholds beside the model
    from pipeline.report import abstention_section

    report.abstention = abstention_section.summarize(
        p,
        components.training.abstention.read(run.model_dir),
        abstention_section.read_benchmark(abstention_benchmark),
    )
    from btmri.documents import InfraValidation
    from pipeline.report import request_baseline

    report.infra_validation = InfraValidation.read_if_present(run.infra_validation_uri)
    report.request_baseline = request_baseline.summarize(run.request_baseline_uri)
    from components.shortcut import control

    report.shortcut_control = control.read(run.shortcut_control_uri)
    if run.lesion_audit_uri:
        from components.audit.lesion_audit import read_audit
        from pipeline.report.lesion_audit_section import gallery as audit_gallery

        report.lesion_audit = read_audit(run.lesion_audit_uri)
        report.lesion_gallery = audit_gallery(run.lesion_audit_uri, report.lesion_audit, GALLERY_MAX_SIDE)
    if gallery_per_kind:
        report.gallery = choose(p, gallery_per_kind)
        if report.gallery:
            heatmaps, _, _ = preds.gradcam(model, [p.images[g.index] for g in report.gallery])
            for item, heat in zip(report.gallery, heatmaps):
                item.overlay = overlay(p.images[item.index], heat, GALLERY_MAX_SIDE)
    return report
