"""The evaluation report as one self-contained HTML file.

The page frame and the CSS are template files (templates/report.html.j2, report.css,
rendered with Jinja2); the sections are HTML built here from the report's data.

Everything is inline: CSS in a <style> element, plots and images as data URIs,
no script at all, so the file opens the same in any browser, offline, and can
be attached to a review.
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter

import numpy as np
from markupsafe import Markup

from btmri.documents import Manifest
from btmri.intervals import format_interval
from btmri.layout import MANIFEST_FILE
from btmri import spec
from pipeline.report import model_card, plots, tables
from pipeline.report.collect import ReportData
from pipeline.report.lesion_audit_section import audit_blocks, tile_caption
from pipeline.report.markup import (
    TEMPLATES_DIR,
    Bullets,
    Cell,
    Paragraph,
    Table,
    count,
    rate,
    rate_ci,
    table_html,
    to_html,
)

REPORT_TEMPLATE = "report.html.j2"
TITLE = "Brain tumor MRI classifier: evaluation report"
LISTED = 200  # longest list shown in a collapsed <details> element


SECTIONS = (
    ("decision", "Decision"),
    ("figures", "Test figures"),
    ("shortcut-control", "Shortcut control"),
    ("plots", "Confusion, ROC, calibration"),
    ("training", "Training"),
    ("data", "Data"),
    ("gradcam", "Grad-CAM"),
    ("lesion-audit", "Does it look at the tumour?"),
    ("abstention", "When it does not answer"),
    ("serving-validation", "Serving validation"),
    ("monitoring", "Monitoring baseline"),
    ("model-card", "Model card"),
    ("checks", "Cross-checks and provenance"),
)


def _e(text) -> str:
    return html.escape(str(text))


def _figure(uri: str, caption: str, width: int | None = None) -> str:
    style = f' style="width:{width}px;max-width:100%"' if width else ""
    return (
        f'<figure{style}><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def _version(data: ReportData) -> str | None:
    return data.run.pushed_to.rstrip("/").rsplit("/", 1)[-1] if data.run.pushed_to else None


# --- sections ------------------------------------------------------------------


def _decision(data: ReportData) -> str:
    run, tfma = data.run, data.tfma
    blessed = bool(run.blessed)
    version = _version(data)
    pushed = (
        f"pushed to TF Serving as version {version}"
        if version
        else "handed to the Pusher (written before the push)"
        if run.before_push and blessed
        else "not pushed"
    )
    verdict = {True: "BLESSED", False: "NOT BLESSED"}.get(run.blessed, "NO DECISION")
    has_baseline = run.baseline_model_dir is not None
    baseline_text = (
        f"Baseline: the last blessed model, {run.baseline_model_dir}."
        if has_baseline
        else "No baseline: no model had been blessed before this one, so only the "
        "absolute thresholds applied."
    )
    body = [
        f'<div class="decision {"ok" if blessed else "bad"}"><div class="verdict">{verdict}</div>'
        f"<div>TFMA validation {'passed' if tfma.validation_ok else 'failed'}; model {_e(pushed)}."
        f'<br><span class="muted">{_e(baseline_text)}</span></div></div>'
    ]
    problems = [c for c in data.checks if c.status != "ok"]
    if problems:
        body.append(
            f'<div class="notice">{len(problems)} cross-check(s) need attention: '
            f"{_e(', '.join(c.name for c in problems))} "
            '(see <a href="#checks">Cross-checks</a>).</div>'
        )
    body.append("<h3>Thresholds</h3>")
    body.append(to_html([tables.thresholds(tfma.thresholds, has_baseline)]))
    body.append(_kpis(data))
    return _section("decision", "Blessing decision", "\n".join(body))


def _kpis(data: ReportData) -> str:
    a, d = data.as_is, data.deduplicated

    cards = [
        ("accuracy", rate(a.accuracy), rate_ci(d.accuracy, d.accuracy_ci), a.accuracy_ci),
        ("macro F1", rate(a.macro_f1), rate(d.macro_f1), None),
        ("macro ROC AUC", rate(a.macro_auc), rate_ci(d.macro_auc, d.macro_auc_ci), a.macro_auc_ci),
        ("calibration error (ECE)", rate(a.ece), rate_ci(d.ece, d.ece_ci), a.ece_ci),
    ]
    items = "".join(
        f'<div class="kpi"><div class="label">{_e(label)}</div><div class="value">{x}</div>'
        + (f'<div class="sub">95 % interval {format_interval(ci)}</div>' if ci else "")
        + f'<div class="sub">without duplicates of training images: {y}</div></div>'
        for label, x, y, ci in cards
    )
    return (
        f"<h3>Headline on {_e(data.run.evaluated_split)} ({_e(a.intervals_text)})</h3>"
        f'<div class="kpis">{items}</div>'
    )


def _figures(data: ReportData) -> str:
    split = data.run.evaluated_split
    n_dup = len(data.duplicates)
    body = [
        to_html(
            [
                Paragraph(
                    f"The Evaluator scored the {split} split ({count(data.as_is.n)} images). "
                    f"{n_dup} of them duplicate a training image (same bytes, or perceptual hash "
                    f"within {data.data.near_threshold} bits); the second set of figures leaves "
                    "them out. Per class: one class against the rest with the top-1 decision; "
                    "n/a where a ratio is undefined (e.g. no image predicted as that class). "
                    + tables.intervals_note([data.as_is, data.deduplicated])
                ),
                tables.overall(
                    [
                        (f"{split}, as is", data.as_is),
                        (f"{split}, without duplicates of training images", data.deduplicated),
                    ],
                    "overall",
                ),
                tables.per_class(data.as_is, "per-class-as-is", f"Per class: {split}, as is"),
                tables.per_class(
                    data.deduplicated,
                    "per-class-dedup",
                    f"Per class: {split}, without the {n_dup} duplicates of training images",
                ),
            ]
        )
    ]
    by_collection = _by_collection(data.predictions)
    if by_collection is not None:
        body.append(to_html([by_collection]))
    if data.duplicates:
        rows = [
            [
                Cell(src, "path"),
                Cell(m.kind),
                Cell(m.training_source, "path"),
                Cell(str(m.distance_bits), "num"),
            ]
            for src, m in sorted(data.duplicates.items())[:LISTED]
        ]
        body.append(
            _details(
                f"The {n_dup} {split} images left out",
                table_html(
                    Table(
                        [f"{split} image", "kind", "training image", "distance (bits)"], rows, id="dedup-list"
                    )
                ),
            )
        )
    return _section("figures", f"Figures on the {split} split", "\n".join(body))


def _by_collection(p) -> Table | None:
    """Accuracy and tumours called notumor per collection of the evaluated images (the
    copies of a box folder's slices vs the rest): a model that learnt one collection's
    look shows it as a gap here. None when there is only one collection."""
    from btmri import intervals

    if not p.collections or len(set(p.collections)) < 2:
        return None
    rows = []
    for name in sorted(set(p.collections)):
        keep = np.array([c == name for c in p.collections], bool)
        part = p.subset(keep)
        groups = part.patients
        right = intervals.share(part.predicted == part.labels, groups)
        tumour = part.labels != spec.NOTUMOR_ID
        missed = intervals.share(
            part.predicted[tumour] == spec.NOTUMOR_ID,
            None if groups is None else [g for g, t in zip(groups, tumour) if t],
        )
        rows.append(
            [
                Cell(name),
                Cell(intervals.units_text(right["n"], right["units"], right["method"]), "num"),
                Cell(rate_ci(right["value"], right["ci95"]), "num"),
                Cell(rate_ci(missed["value"], missed["ci95"]) if missed["n"] else "n/a", "num"),
            ]
        )
    return Table(
        ["collection", "images", "accuracy (top-1)", "tumours called notumor"],
        rows,
        id="by-collection",
        caption="By collection (btmri prepare tags copies of a box folder's slices with its "
        "collection and reviewed requests of btmri run --feedback with feedback; unknown: the "
        "rest); 95 % intervals as above",
    )


def _shortcut_control(data: ReportData) -> str:
    """The control's rows beside the CNN's (pipeline/report/shortcut_control.py), its
    permutation importances and confusion matrix."""
    from pipeline.report import shortcut_control

    document = getattr(data, "shortcut_control", None)
    body = [to_html(shortcut_control.blocks(document, data.as_is, spec.CLASS_NAMES))]
    if document is not None:
        body.append(
            _details(
                "which statistics it used, and its confusion matrix",
                to_html(
                    [
                        shortcut_control.importance_table(document),
                        shortcut_control.confusion_table(document, spec.CLASS_NAMES),
                    ]
                ),
            )
        )
    return _section(
        "shortcut-control", "Shortcut control: what the images give away without anatomy", "\n".join(body)
    )


def _plots(data: ReportData) -> str:
    names = spec.CLASS_NAMES
    a, d = data.as_is, data.deduplicated
    body = [
        "<h3>Confusion matrix, as is</h3>",
        _figure(
            plots.confusion(a.confusion, names),
            "Left: counts (TFMA's MultiClassConfusionMatrixPlot). Right: each row divided "
            "by its total; the diagonal is each class's recall.",
            820,
        ),
        _details("as a table", to_html([tables.confusion(a, names, "confusion-as-is")])),
    ]
    if data.duplicates:
        body += [
            "<h3>Confusion matrix, without duplicates of training images</h3>",
            _figure(
                plots.confusion(d.confusion, names),
                "The same, from the model's predictions on the kept images.",
                820,
            ),
            _details("as a table", to_html([tables.confusion(d, names, "confusion-dedup")])),
        ]
    else:
        body.append(
            '<p class="muted">No evaluated image duplicates a training image: the '
            "de-duplicated confusion matrix is the one above.</p>"
        )
    figs = [
        _figure(
            plots.roc(a, names),
            "One class against the rest, from the class "
            "probability; computed from the model's predictions (TFMA keeps no curve).",
            480,
        )
    ]
    if a.calibration:
        figs.append(
            _figure(
                plots.reliability(a.calibration),
                "Reliability diagram: the share of correct top-1 answers per band of "
                "top-1 probability. Bars below the diagonal: over-confident. ECE weighs each gap by the "
                "band's share of images.",
                480,
            )
        )
    body += [
        "<h3>ROC curves and calibration, as is</h3>",
        f'<div class="figs">{"".join(figs)}</div>',
        f'<p class="muted">{_e(model_card.temperature_sentence(data.temperature))}</p>',
    ]
    return _section("plots", "Confusion matrix, ROC curves, calibration", "\n".join(body))


def _training(data: ReportData) -> str:
    if not data.history:
        return _section(
            "training", "Training", '<p class="muted">No history.json in the Trainer\'s model run folder.</p>'
        )
    h = data.history.get("history", {})
    cfg = data.run.trainer_config
    epochs_run, kept = model_card.epochs_kept(data.history)
    body = [
        _figure(
            plots.training_curves(data.history, kept),
            "Per epoch, on the training split (with augmentation) and the eval split. "
            "The dotted line marks the epoch whose weights were kept "
            f"({model_card.kept_reason(data.history)}).",
            820,
        )
    ]
    rows = [
        [Cell(k), Cell(str(v))]
        for k, v in (
            ("model", cfg.get("model")),
            ("initial weights", cfg.get("weights") or "random"),
            ("epochs run / allowed", f"{epochs_run} / {cfg.get('epochs', '?')}"),
            ("kept epoch", kept),
            ("batch size", cfg.get("batch_size")),
            ("learning rate", cfg.get("learning_rate")),
            ("schedule", model_card.schedule_text(data.history)),
            ("weight decay", cfg.get("weight_decay")),
            ("label smoothing", cfg.get("label_smoothing")),
            ("augmentation", cfg.get("augment")),
            ("training compute dtype", (data.history or {}).get("compute_dtype_policy")),
        )
    ]
    if kept:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if h.get(key):
                rows.append([Cell(f"{key} at kept epoch"), Cell(f"{h[key][kept - 1]:.4f}", "num")])
    body.append(to_html([Table(["", ""], rows, id="training")]))
    return _section("training", "Training", "\n".join(body))


def _data(data: ReportData) -> str:
    names = spec.CLASS_NAMES
    summary = data.data
    body = [
        "<h3>Images per split and class</h3>",
        "<p>As imported by the pipeline (ImportExampleGen)."
        + (" Synthetic phantoms." if summary.synthetic else "")
        + "</p>",
        '<div class="figs">',
        to_html([tables.split_counts(data.split_counts, names)]),
        _figure(plots.class_counts(data.split_counts, names), "", 520),
        "</div>",
    ]
    if summary.statistics:
        body += _tfdv_statistics(summary.statistics)
    body += _tfdv_anomalies(summary.anomalies)
    if summary.manifest is None:
        body.append(
            f'<p class="notice">No {MANIFEST_FILE} under {_e(data.run.data_root)}: skipped '
            "files and the duplicate report are unavailable (pass --data-root).</p>"
        )
        return _section("data", "Data", "\n".join(body))
    body += _skipped_files(summary.manifest.skipped)
    body.append(_duplicates(summary.manifest))
    return _section("data", "Data", "\n".join(body))


def _tfdv_statistics(statistics: dict) -> list[str]:
    rows = []
    for split, st in statistics.items():
        h = st.sizes.get(spec.HEIGHT_KEY, (float("nan"),) * 4)
        w = st.sizes.get(spec.WIDTH_KEY, (float("nan"),) * 4)
        rows.append(
            [
                Cell(split),
                Cell(count(st.examples), "num"),
                Cell(f"{h[0]:.0f} / {h[1]:.0f} / {h[3]:.0f}", "num"),
                Cell(f"{w[0]:.0f} / {w[1]:.0f} / {w[3]:.0f}", "num"),
                Cell(count(sum(st.missing.values())), "num"),
            ]
        )
    head = [
        "split",
        "examples",
        "height min / median / max",
        "width min / median / max",
        "missing feature values",
    ]
    return ["<h3>TFDV statistics</h3>", to_html([Table(head, rows, id="tfdv-statistics")])]


def _tfdv_anomalies(anomalies: dict | None) -> list[str]:
    out = ["<h3>TFDV anomalies (ExampleValidator against the curated schema)</h3>"]
    if not anomalies:
        return out + ['<p class="muted">No anomalies artifact found.</p>']
    rows = [
        [Cell(split), Cell("; ".join(found) or "none", "fail" if found else "pass")]
        for split, found in anomalies.items()
    ]
    return out + [to_html([Table(["split", "anomalies"], rows, id="tfdv-anomalies")])]


def _skipped_files(skipped: list[dict]) -> list[str]:
    out = [f"<h3>Skipped files ({count(len(skipped))})</h3>"]
    if not skipped:
        return out + ['<p class="muted">None: every file found was usable.</p>']
    reasons = Counter(s["reason"].split(":")[0] for s in skipped)
    by_reason = Table(
        ["reason", "files"],
        [[Cell(r), Cell(count(n), "num")] for r, n in reasons.most_common()],
        id="skipped-reasons",
    )
    every = Table(
        ["file", "reason"],
        [[Cell(s["source"], "path"), Cell(s["reason"])] for s in skipped[:LISTED]],
        id="skipped",
    )
    return out + [to_html([by_reason]), _details("every skipped file", table_html(every))]


def _duplicates(manifest: Manifest) -> str:
    dups = manifest.duplicates
    if not dups:
        return ""
    exact, near = dups.exact, dups.near

    def per(mapping: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(mapping.items())) or "none"

    rows = [
        [
            Cell("exact (same bytes)"),
            Cell(f"{exact.extra_copies} extra copies in {exact.groups} groups", "num"),
            Cell(per(exact.extra_copies_within_split)),
            Cell(per(exact.images_with_copy_in_other_split)),
        ],
        [
            Cell(f"near (pHash ≤ {dups.near_threshold_bits} bits)"),
            Cell(f"{near.pairs} pairs", "num"),
            Cell(per(near.pairs_within_split)),
            Cell(per(near.pairs_across_splits)),
        ],
    ]
    out = [
        "<h3>Duplicates and leakage (from data preparation)</h3>",
        to_html(
            [Table(["kind", "found", "within a split", "across splits (leakage)"], rows, id="duplicates")]
        ),
    ]
    if exact.conflicting_labels:
        out.append(
            f'<p class="notice">{len(exact.conflicting_labels)} groups of identical '
            "images carry different labels.</p>"
        )
    dropped = manifest.dropped_cross_split_duplicates
    if dropped:
        out.append(
            f"<p>{len(dropped)} eval/test images duplicating training images were left out "
            "when preparing (--drop-cross-split-duplicates).</p>"
        )
    if near.pairs_listed:
        out.append(
            _details(
                f"near-duplicate pairs (first {min(len(near.pairs_listed), LISTED)})",
                table_html(
                    Table(
                        ["image", "image", "distance (bits)"],
                        [
                            [Cell(a, "path"), Cell(b, "path"), Cell(str(d), "num")]
                            for a, b, d in near.pairs_listed[:LISTED]
                        ],
                    )
                ),
            )
        )
    if exact.groups_listed:
        out.append(
            _details(
                f"exact-duplicate groups (first {min(len(exact.groups_listed), LISTED)})",
                to_html([Bullets([", ".join(g) for g in exact.groups_listed[:LISTED]])]),
            )
        )
    return "\n".join(out)


def _gradcam(data: ReportData) -> str:
    names = spec.CLASS_NAMES
    p = data.predictions
    tiles = {True: [], False: []}
    for item in data.gallery:
        i = item.index
        label, predicted = int(p.labels[i]), int(p.predicted[i])
        tag = '<span class="tag ok">correct</span>' if item.correct else '<span class="tag bad">wrong</span>'
        tiles[item.correct].append(
            f'<div class="tile"><img src="{plots.image_data_uri(item.overlay)}" '
            f'alt="Grad-CAM of {_e(p.sources[i])}"><div class="cap">{tag} actual '
            f"<b>{_e(names[label])}</b>, predicted <b>{_e(names[predicted])}</b> "
            f'({p.probs[i, predicted]:.2f})<div class="src">{_e(p.sources[i])}</div></div></div>'
        )
    body = [
        f"<p>Heatmaps from the model's <code>gradcam</code> signature for the top-1 class, "
        f"over the {_e(data.run.evaluated_split)} image (red: where the score is most "
        "sensitive). Correct: the most confident of each class; wrong: the most confident "
        "mistakes.</p>"
    ]
    for correct, title in ((True, "Correct"), (False, "Wrong")):
        body += _gallery(title, tiles[correct])
    return _section("gradcam", "Grad-CAM gallery", "\n".join(body))


def _gallery(title: str, tiles: list[str]) -> list[str]:
    """A heading with the count, then the tiles (or 'None.')."""
    grid = f'<div class="gallery">{"".join(tiles)}</div>' if tiles else '<p class="muted">None.</p>'
    return [f"<h3>{title} ({len(tiles)})</h3>", grid]


def _lesion_audit(data: ReportData) -> str:
    body = [to_html(audit_blocks(data.lesion_audit))]
    tiles = {True: [], False: []}
    for tile in data.lesion_gallery:
        hit = bool(tile.row["pointing"])
        tag = (
            '<span class="tag ok">peak in box</span>'
            if hit
            else '<span class="tag bad">peak outside box</span>'
        )
        tiles[hit].append(
            f'<div class="tile"><img src="{plots.image_data_uri(tile.image)}" '
            f'alt="heatmap and tumour box of {_e(tile.row["source"])}"><div class="cap">{tag} '
            f'{_e(tile_caption(tile.row))}<div class="src">{_e(tile.row["source"])}</div></div></div>'
        )
    if data.lesion_audit is not None:
        body.append(
            "<p>Examples: the heatmap of the <code>gradcam</code> signature with the tumour "
            "box in green: per class, the first slices of the audit whose peak fell "
            "inside the box and the first whose peak did not.</p>"
        )
        for hit, title in ((True, "Peak inside the box"), (False, "Peak outside the box")):
            body += _gallery(title, tiles[hit])
    return _section("lesion-audit", "Does it look at the tumour?", "\n".join(body))


def _abstention(data: ReportData) -> str:
    from pipeline.report import abstention_section

    body = [to_html(abstention_section.blocks(data.abstention, data.run.evaluated_split))]
    if data.abstention is not None:
        body.append(
            _figure(
                abstention_section.plot(data.abstention),
                "Risk–coverage: accuracy of the answered images as the share answered shrinks, "
                "refusing by top probability or by ood_score; the dot is what the "
                "served thresholds do.",
                560,
            )
        )
    return _section("abstention", "When it does not answer", "\n".join(body))


def _serving_validation(data: ReportData) -> str:
    from pipeline.report import serving_validation

    return _section(
        "serving-validation",
        "Serving validation",
        to_html(serving_validation.blocks(getattr(data, "infra_validation", None))),
    )


def _monitoring(data: ReportData) -> str:
    from pipeline.report import request_baseline

    return _section(
        "monitoring", "Monitoring baseline", to_html(request_baseline.blocks(data.request_baseline))
    )


def _model_card(data: ReportData) -> str:
    """MODEL_CARD.md as the Pusher ships it, one heading level down (the section has the title)."""
    import markdown

    text = model_card.render_markdown(data, _version(data), level=2)
    body = text.split("\n", 1)[1]  # the title line
    # Figures and paths in the card come from the run's files: no HTML passes through.
    card = markdown.markdown(html.escape(body, quote=False), extensions=["tables"], output_format="html")
    return _section("model-card", "Model card", f'<div class="card">{card}</div>')


def _checks(data: ReportData) -> str:
    rows = [
        [Cell(c.name), Cell(c.status, {"ok": "pass", "warn": "warn"}.get(c.status, "fail")), Cell(c.detail)]
        for c in data.checks
    ]
    run = data.run
    provenance = [
        (k, v)
        for k, v in (
            ("pipeline root", run.config.pipeline_root),
            ("ML Metadata", run.config.metadata_path),
            ("examples (ImportExampleGen)", run.examples_uri),
            ("manifest (prepare)", run.data_root),
            ("manifest", data.data.manifest_path),
            ("statistics (StatisticsGen)", run.statistics_uri),
            ("anomalies (ExampleValidator)", run.anomalies_uri),
            ("evaluated model", run.model_dir),
            ("model digest (sha256)", data.model_digest),
            ("baseline model", run.baseline_model_dir),
            ("evaluation (TFMA)", run.evaluation_uri),
            ("model run (history, TensorBoard)", run.model_run_dir),
            ("pushed to", run.pushed_to),
            ("monitoring baseline (RequestBaseline)", run.request_baseline_uri),
            ("shortcut control (ShortcutControl)", run.shortcut_control_uri),
        )
        if v
    ]
    body = [
        "<p>TFMA's figures against the same figures from the model's predictions on the same records.</p>",
        to_html([Table(["check", "result", "detail"], rows, id="checks")]),
        "<h3>Artifacts this report was built from</h3>",
        to_html([Table(["", ""], [[Cell(k), Cell(str(v), "path")] for k, v in provenance], id="provenance")]),
    ]
    return _section("checks", "Cross-checks and provenance", "\n".join(body))


def render(data: ReportData) -> str:
    run = data.run
    generated = dt.datetime.fromtimestamp(data.generated_at).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    version = _version(data)
    meta = [
        f"pipeline <b>{_e(run.config.pipeline_name)}</b>",
        f"evaluated on <b>{_e(run.evaluated_split)}</b> ({count(data.as_is.n)} images)",
        f"model version <b>{_e(version) if version else 'the pushed folder' if run.before_push and run.blessed else 'not pushed'}</b>",
        f"generated {_e(generated)}",
    ]

    sections = [
        _decision(data),
        _figures(data),
        _shortcut_control(data),
        _plots(data),
        _training(data),
        _data(data),
        _gradcam(data),
        _lesion_audit(data),
        _abstention(data),
        _serving_validation(data),
        _monitoring(data),
        _model_card(data),
        _checks(data),
    ]
    return _template().render(
        title=TITLE,
        meta=[Markup(m) for m in meta],
        sections_index=SECTIONS,
        sections=[Markup(section) for section in sections],
    )


def _template():
    """The page frame and its CSS (templates/report.html.j2, report.css); the sections
    are rendered above."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, keep_trailing_newline=True
    )
    return env.get_template(REPORT_TEMPLATE)
