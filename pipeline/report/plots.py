"""Matplotlib figures, returned as PNG data URIs so the report needs no other file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.report import metrics  # noqa: E402

DPI = 110
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")  # one per class, fixed order
TRAIN_COLOUR, EVAL_COLOUR = "#1f77b4", "#d62728"

plt.rcParams.update(
    {
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "legend.frameon": False,
        "figure.dpi": DPI,
    }
)


def data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(bgr: np.ndarray, quality: int = 88) -> str:
    """An OpenCV image as an embedded JPEG."""
    import cv2

    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode image")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _matrix(ax, values, labels, fmt, title, vmax=None):
    ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax if vmax is not None else max(np.nanmax(values), 1))
    ax.grid(False)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    limit = (vmax if vmax is not None else np.nanmax(values)) or 1
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "n/a" if np.isnan(v) else fmt(v)
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if not np.isnan(v) and v > 0.55 * limit else "#222",
            )


def confusion(cm: np.ndarray, class_names) -> str:
    """Counts and row-normalised shares side by side."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.6, 3.6))
    _matrix(a, cm.astype(float), class_names, lambda v: f"{int(v)}", "Counts")
    _matrix(
        b,
        metrics.row_normalised(cm),
        class_names,
        lambda v: f"{v:.2f}",
        "Row-normalised (recall on the diagonal)",
        vmax=1.0,
    )
    fig.tight_layout()
    return data_uri(fig)


def roc(figures: metrics.Figures, class_names) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999")
    for k, ((fpr, tpr), name) in enumerate(zip(figures.roc, class_names)):
        auc = figures.per_class[k].auc
        ax.plot(
            fpr,
            tpr,
            lw=1.8,
            color=CLASS_COLOURS[k % len(CLASS_COLOURS)],
            label=f"{name} (AUC {'n/a' if np.isnan(auc) else f'{auc:.3f}'})",
            drawstyle="default",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize=8)
    return data_uri(fig)


def reliability(cal: metrics.Calibration) -> str:
    """Accuracy per confidence bin against the diagonal, the gap to the bin's mean
    confidence hatched, and the bin counts below."""
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.6, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    centres = (cal.edges[:-1] + cal.edges[1:]) / 2
    width = (cal.edges[1] - cal.edges[0]) * 0.9
    filled = cal.counts > 0
    acc, conf = cal.accuracy[filled], cal.confidence[filled]
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#777", label="ideal")
    ax.bar(centres[filled], acc, width=width, color="#4c72b0", label="accuracy")
    ax.bar(
        centres[filled],
        np.abs(conf - acc),
        bottom=np.minimum(acc, conf),
        width=width,
        facecolor="none",
        edgecolor="#c44e52",
        hatch="////",
        lw=0.8,
        label="gap to confidence",
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability of the top-1 probability (ECE {cal.ece:.3f})")
    ax.legend(loc="upper left", fontsize=7.5)
    hist.bar(centres, cal.counts, width=width, color="#8c8c8c")
    hist.set_xlim(0, 1)
    hist.set_xlabel("top-1 probability (confidence)")
    hist.set_ylabel("images")
    fig.tight_layout()
    return data_uri(fig)


def training_curves(history: dict, kept: int | None = None) -> str:
    """Loss and accuracy per epoch, training vs eval; the epoch whose weights were
    exported (`kept`, 1-based) marked."""
    h = history.get("history", history)
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "accuracy", "Accuracy")):
        if h.get(key):
            ax.plot(epochs, h[key], marker="o", ms=3, color=TRAIN_COLOUR, label="train")
        if h.get(f"val_{key}"):
            ax.plot(epochs, h[f"val_{key}"], marker="o", ms=3, color=EVAL_COLOUR, label="eval")
        if kept:
            ax.axvline(kept, color="#999", lw=0.8, ls=":", label=f"kept epoch ({kept})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.02)
    fig.tight_layout()
    return data_uri(fig)


def class_counts(split_counts: dict[str, dict[str, int]], class_names) -> str:
    """Images per class, one group of bars per split."""
    splits = list(split_counts)
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    width = 0.8 / max(len(class_names), 1)
    x = np.arange(len(splits))
    for k, name in enumerate(class_names):
        values = [split_counts[s].get(name, 0) for s in splits]
        ax.bar(
            x + (k - (len(class_names) - 1) / 2) * width,
            values,
            width=width,
            color=CLASS_COLOURS[k % len(CLASS_COLOURS)],
            label=name,
        )
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("Images per split and class")
    ax.legend(fontsize=8, ncols=len(class_names), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return data_uri(fig)
