"""The shortcut control in the report and the model card: the control's accuracy and
per-class recall as baseline rows beside the CNN's, and what they mean. Shared by both;
the figures come from the run's ShortcutControl artifact (components/shortcut/)."""

from __future__ import annotations

import math

from btmri.intervals import format_with_interval
from pipeline.report.markup import Cell, Paragraph, Table, count, rate, rate_ci

CONTROL_ROW = "shortcut control: image statistics, no pixels"
CNN_ROW = "CNN (this model)"


def _figure(fig: dict) -> str:
    return format_with_interval(fig["value"], fig["ci95"])


def above_chance(document: dict) -> bool:
    """The control's 95 % interval lies wholly above the chance classifier's."""
    low = document["accuracy"]["ci95"][0]
    high = document["chance"]["accuracy"]["ci95"][1]
    return not (math.isnan(low) or math.isnan(high)) and low > high


def top_features(document: dict, n: int = 3) -> str:
    """'intensity_std 0.184, laplacian_variance 0.169, …': the statistics whose shuffling
    cost the most accuracy."""
    rows = [r for r in document.get("feature_importance", []) if r["accuracy_drop"] > 0][:n]
    return ", ".join(f"{r['feature']} {r['accuracy_drop']:.3f}" for r in rows)


def explanation(document: dict) -> str:
    split = document["evaluated_split"]
    names = ", ".join(f["description"] for f in document["features"])
    verdict = (
        "Its accuracy is far above chance (the 95 % intervals do not overlap): the data "
        "offers a shortcut, and the CNN's figures may include it."
        if above_chance(document)
        else "Its accuracy is not clearly above chance: no shortcut shows on this split (on few "
        "images one may still be there; see how wide the intervals are)."
    )
    important = top_features(document)
    return (
        "A deliberately dumb classifier beside the CNN: gradient-boosted trees fitted on the "
        f"{count(document['train_examples'])} training images and scored on the same "
        f"{count(document['evaluated_examples'])} {split} images as the CNN, seeing no pixels, "
        f"only {len(document['features'])} statistics of each image ({names}). Whatever it gets "
        "right it gets from how the images were collected and stored (source collection, "
        "scanner, sequence, resizing, file format), not from anatomy: in the Kaggle merge "
        "`notumor` comes from other collections than the tumour classes. Gray-level and "
        "texture statistics mostly reflect acquisition, though a large lesion can move them "
        f"too. {verdict} Read each CNN figure against the control's: only the margin above "
        "it is evidence that the CNN uses the anatomy."
        + (
            f" Most telling statistics (accuracy lost when shuffled, on {split}): {important}."
            if important
            else ""
        )
        + f" The control took {document['seconds']['total']:.1f} s."
    )


def baseline_table(document: dict, cnn, class_names, table_id: str = "shortcut-control") -> Table:
    """Rows: the CNN (as is), the control, the chance classifier; accuracy and per-class recall."""
    header = ["classifier", "images", "accuracy", *(f"recall {name}" for name in class_names)]
    rows = []
    if cnn is not None:
        rows.append(
            [
                Cell(CNN_ROW),
                Cell(count(cnn.n), "num"),
                Cell(rate_ci(cnn.accuracy, cnn.accuracy_ci), "num"),
                *(Cell(rate_ci(f.recall, f.recall_ci), "num") for f in cnn.per_class),
            ]
        )
    recall = {c["name"]: c["recall"] for c in document["per_class"]}
    rows.append(
        [
            Cell(CONTROL_ROW),
            Cell(count(document["evaluated_examples"]), "num"),
            Cell(_figure(document["accuracy"]), "num"),
            *(
                Cell(
                    _figure(recall[name]) if name in recall else "n/a", "num", _count_title(recall.get(name))
                )
                for name in class_names
            ),
        ]
    )
    chance = document["chance"]
    rows.append(
        [
            Cell(f"chance: always {chance['predicts']}"),
            Cell(count(document["evaluated_examples"]), "num"),
            Cell(_figure(chance["accuracy"]), "num"),
            *(Cell(rate(1.0 if name == chance["predicts"] else 0.0), "num") for name in class_names),
        ]
    )
    return Table(
        header,
        rows,
        id=table_id,
        caption=f"{document['evaluated_split']} split, as is; 95 % intervals: the CNN's as in its "
        "figures, the control's and chance's Wilson over images",
        css="figures",
    )


def _count_title(fig: dict | None) -> str:
    return f"{fig['successes']} / {fig['n']}" if fig else ""


def importance_table(document: dict, table_id: str = "shortcut-importance") -> Table:
    return Table(
        ["statistic", "accuracy lost when shuffled", "sd"],
        [
            [Cell(r["feature"]), Cell(f"{r['accuracy_drop']:.3f}", "num"), Cell(f"{r['sd']:.3f}", "num")]
            for r in document["feature_importance"]
        ],
        id=table_id,
        caption=f"permutation importance on the {document['evaluated_split']} split",
        css="figures",
    )


def confusion_table(document: dict, class_names, table_id: str = "shortcut-confusion") -> Table:
    rows = [
        [Cell(name), *(Cell(str(v), "num") for v in row), Cell(count(sum(row)), "num")]
        for name, row in zip(class_names, document["confusion"])
    ]
    return Table(["actual \\ predicted", *class_names, "total"], rows, id=table_id, css="figures confusion")


def blocks(document: dict | None, cnn, class_names, table_id: str = "shortcut-control") -> list:
    """The explanation and the baseline rows; a note when the run had no control."""
    if document is None:
        return [
            Paragraph(
                "No shortcut control: the run had no ShortcutControl step (made before it "
                "existed), so nothing here shows what the images give away without anatomy."
            )
        ]
    return [Paragraph(explanation(document)), baseline_table(document, cnn, class_names, table_id)]
