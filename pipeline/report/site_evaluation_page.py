"""evaluation.html of `btmri evaluate`: the figures of pipeline/site_evaluation.py as one
self-contained page in the report's style (its CSS inline, no script, no external file)."""

from __future__ import annotations

import datetime as dt
import html

from pipeline.report.markup import TEMPLATES_DIR, Cell, Paragraph, Table, count, rate_ci, table_html, to_html
from pipeline.site_evaluation import HEADLINE, SLICE_COLUMNS

TITLE = "Brain tumor MRI classifier: evaluation on your own scans"
LISTED = 200  # longest list shown in a collapsed <details> element
CSS_FILE = "report.css"


def _e(text) -> str:
    return html.escape(str(text))


def _share(fig: dict) -> Cell:
    return Cell(rate_ci(fig["value"], fig["ci95"]), "num", f"{fig['successes']} / {fig['n']}")


def _counted(fig: dict) -> Cell:
    return Cell(f"{fig['successes']:,} / {fig['n']:,}", "num")


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>{body}</details>"


def headline_table(fig: dict) -> Table:
    rows = []
    for key, title in HEADLINE:
        rows.append([Cell(title), _share(fig[key]), _counted(fig[key])])
        if key == "abstained":
            for reason, share in fig["abstention_reasons"].items():
                rows.append([Cell(f"abstained: {reason}"), _share(share), _counted(share)])
    return Table(["figure", "share [95 % interval]", "count"], rows, id="evaluation-headline", css="figures")


def per_class_table(fig: dict) -> Table:
    rows = [
        [Cell(name), Cell(count(per["n"]), "num"), _share(per["recall"]), _share(per["abstained"])]
        for name, per in fig["per_class"].items()
    ]
    return Table(
        ["class", "images", "recall (abstentions count as missed)", "abstained"],
        rows,
        id="evaluation-per-class",
        css="figures",
    )


def confusion_table(fig: dict, key: str = "confusion") -> Table:
    """The confusion of the answers (`confusion`, abstaining its last column) or of the
    top class whatever the abstention (`top_class_confusion`)."""
    confusion = fig[key]
    rows = []
    for name, counts in zip(confusion["rows"], confusion["counts"]):
        total = sum(counts)
        cells = [Cell(f"{k} ({k / total:.2f})" if total else str(k), "num") for k in counts]
        rows.append([Cell(name), *cells, Cell(count(total), "num")])
    return Table(
        ["true \\ answer" if key == "confusion" else "true \\ top class", *confusion["columns"], "total"],
        rows,
        id="evaluation-confusion" if key == "confusion" else "evaluation-top-class",
        caption=(
            "Counts, each with its share of the row; the last answer column is the model abstaining."
            if key == "confusion"
            else "The classifier's top class for every image, abstained or not: what it would have "
            "answered without the abstention."
        ),
        css="figures confusion",
    )


def slice_table(tag: str, values: dict[str, dict]) -> Table:
    rows = [
        [Cell(value), Cell(count(fig["n"]), "num"), *(_share(fig[key]) for key, _ in SLICE_COLUMNS)]
        for value, fig in values.items()
    ]
    return Table(
        [tag, "images", *(title for _, title in SLICE_COLUMNS)],
        rows,
        id=f"evaluation-slice-{tag}",
        css="figures",
    )


def _image_rows(images: list[dict]) -> list[list[Cell]]:
    out = []
    for image in images[:LISTED]:
        answer = image["predicted"] or f"abstained ({image['reason'] or 'no reason given'})"
        out.append(
            [
                Cell(image["path"], "path"),
                Cell(image["label"]),
                Cell(answer, "" if image["predicted"] == image["label"] else "fail"),
                Cell(f"{image['top_class']} {image['probabilities'][image['top_class']]:.2f}", "num"),
                Cell(", ".join(f"{k}={v}" for k, v in image["tags"].items())),
            ]
        )
    return out


def section(document: dict) -> str:
    """The evaluation as one <section> of the report's style."""
    fig = document["figures"]
    body = [
        to_html(
            [
                Paragraph(
                    f"{count(fig['n'])} labelled images from `{document['data_dir']}`, each sent to "
                    f"{document['model']['description']}. Every image counts: an abstention is not a "
                    "right answer (accuracy and recall count it as missed), a wrong answer the model "
                    "gave is wrong and confident (its share of all images), and tumour called notumor "
                    "is the share of tumour images the model answered `notumor`. Brackets: "
                    f"{document['intervals']}; the counts are in the tooltips."
                )
            ]
        )
    ]
    failures = document["gates"]["failures"]
    if failures:
        body.append(f'<div class="notice">Gate missed: {_e("; ".join(failures))}.</div>')
    body.append(to_html([headline_table(fig)]))
    body.append("<h3>Per class</h3>")
    body.append(
        to_html([per_class_table(fig), confusion_table(fig), confusion_table(fig, "top_class_confusion")])
    )
    for tag, values in document["slices"].items():
        body.append(f"<h3>By {_e(tag)}</h3>")
        body.append(to_html([slice_table(tag, values)]))
    missed = [image for image in document["images"] if image["predicted"] != image["label"]]
    if missed:
        body.append(
            _details(
                f"Images answered wrongly or abstained on ({len(missed)}"
                + (f", first {LISTED}" if len(missed) > LISTED else "")
                + ")",
                table_html(
                    Table(
                        ["image", "label", "answer", "top class, probability", "tags"],
                        _image_rows(missed),
                        id="evaluation-missed",
                    )
                ),
            )
        )
    skipped = document["skipped"]
    if skipped:
        body.append(
            _details(
                f"Files skipped ({len(skipped)})",
                table_html(
                    Table(
                        ["file", "reason"],
                        [[Cell(s["path"], "path"), Cell(s["reason"])] for s in skipped[:LISTED]],
                        id="evaluation-skipped",
                    )
                ),
            )
        )
    else:
        body.append('<p class="muted">No file was skipped.</p>')
    for note in document.get("notes", []):
        body.append(f'<p class="muted">Note: {_e(note)}</p>')
    return f'<section id="site-evaluation"><h2>How the model does on these scans</h2>\n{chr(10).join(body)}\n</section>'


def render(document: dict) -> str:
    """The whole page: the report's header and CSS around the one section."""
    css = (TEMPLATES_DIR / CSS_FILE).read_text(encoding="utf-8")
    generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = [
        f"folder <b>{_e(document['data_dir'])}</b>",
        f"{count(document['figures']['n'])} images",
        f"model <b>{_e(document['model']['description'])}</b>",
        f"generated {_e(generated)}",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(TITLE)}</title>\n<style>\n{css}\n</style></head>\n<body>\n"
        f'<header><div class="wrap"><h1>{_e(TITLE)}</h1>\n'
        f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>\n'
        '<div class="meta"><span>Decision support for trained readers, not a diagnostic device.</span></div>\n'
        "</div></header>\n"
        f'<main><div class="wrap">\n{section(document)}\n</div></main>\n'
        "<footer>Written by <code>btmri evaluate</code>.</footer>\n</body></html>\n"
    )
