"""Does the served model know when not to answer? Probe families against a SavedModel.

    python benchmarks/abstention_probes.py --model runs/serving/brain_tumor/N \\
        --records 'runs/data/prepared/current/test/*.tfrecord' [--out abstention_benchmark.json] \\
        [--baseline-model DIR]   # a model without abstention: predict_images latency ratio

Probe families, none touching training data and none from a source the Trainer's
detector fitting uses (components/training/outliers.py draws gratings, checkerboards,
random shapes, blurred-noise textures and empty head outlines):

- natural_photos: the photographs and renders that ship with matplotlib's sample data
  (grace_hopper.jpg in crops, scales and rotations; the Minduka photo; the topobathy and
  Jacksboro fault elevation maps rendered with colour maps);
- documents: pages of text rendered by matplotlib (several fonts, sizes, polarities);
- noise: uniform, Gaussian, salt-and-pepper and 1/f ("pink") noise;
- blank_and_ramp: constant frames of every grey level, linear and radial ramps;
- chest_like: chest-radiograph-like drawings (body outline, dark lungs, ribs, spine, heart).

matplotlib's sample `s1045.ima.gz` is a head MRI and is deliberately not a probe.
Prints abstention per family, the AUROC of ood_score (in-distribution records vs all
probes), in-distribution acceptance and accuracy on accepted vs all images.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data_prep  # noqa: E402,F401
import cv2  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from btmri.spec import (
    ABSTAIN,
    ABSTAIN_REASON,
    IMAGE_BYTES_INPUT,
    OOD_SCORE,  # noqa: E402
    PREDICT_IMAGES,
    PROBABILITIES,
    REASON_OUT_OF_DISTRIBUTION,
)
from btmri import spec  # noqa: E402

SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"


def _png(gray: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.clip(gray, 0, 255).astype(np.uint8))[1].tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _figure_gray(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)


def natural_photos(rng, n: int) -> list[bytes]:
    grace = cv2.imread(str(SAMPLE_DATA / "grace_hopper.jpg"))
    out = []
    h, w = grace.shape[:2]
    while len(out) < n - 6:
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = grace[y : y + side, x : x + side]
        crop = cv2.resize(crop, (int(rng.integers(180, 400)),) * 2)
        if rng.random() < 0.5:
            crop = cv2.rotate(crop, cv2.ROTATE_90_CLOCKWISE)
        out.append(_jpeg(crop))
    out.append(_jpeg(grace))
    out.append(_jpeg(cv2.cvtColor(grace, cv2.COLOR_BGR2GRAY)))
    minduka = cv2.imread(str(SAMPLE_DATA / "Minduka_Present_Blue_Pack.png"))
    if minduka is not None:
        out.append(_png(cv2.cvtColor(minduka, cv2.COLOR_BGR2GRAY)))
    for name in ("topobathy.npz", "jacksboro_fault_dem.npz"):
        with np.load(SAMPLE_DATA / name) as data:
            elevation = data[data.files[0]].astype(np.float64)
        for cmap in ("gray", "terrain"):
            fig = plt.figure(figsize=(3.2, 3.2))
            plt.imshow(elevation, cmap=cmap)
            plt.axis("off")
            out.append(_png(_figure_gray(fig)))
    return out[:n]


WORDS = (
    "report patient findings impression tumour slice contrast signal normal mass the of and "
    "with without within noted seen axial image study history clinical"
).split()


def documents(rng, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        fig = plt.figure(figsize=(rng.uniform(3, 4.5), rng.uniform(3, 4.5)))
        dark = i % 2 == 1
        fig.patch.set_facecolor("black" if dark else "white")
        size = float(rng.uniform(7, 14))
        family = ("serif", "sans-serif", "monospace")[i % 3]
        for line in range(int(rng.integers(6, 16))):
            text = " ".join(rng.choice(WORDS, int(rng.integers(3, 8))))
            fig.text(
                0.05,
                0.95 - line * 0.065,
                text,
                fontsize=size,
                family=family,
                color="white" if dark else "black",
            )
        out.append(_png(_figure_gray(fig)))
    return out


def noise(rng, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        h, w = int(rng.integers(180, 400)), int(rng.integers(180, 400))
        kind = i % 4
        if kind == 0:
            image = rng.integers(0, 256, (h, w))
        elif kind == 1:
            image = rng.normal(rng.uniform(60, 190), rng.uniform(15, 60), (h, w))
        elif kind == 2:
            image = np.full((h, w), rng.uniform(0, 255))
            mask = rng.random((h, w))
            image[mask < 0.05] = 0
            image[mask > 0.95] = 255
        else:
            spectrum = np.fft.fft2(rng.normal(0, 1, (h, w)))
            fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
            pink = np.real(np.fft.ifft2(spectrum / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))))
            image = 128 + 45 * (pink - pink.mean()) / (pink.std() + 1e-9)
        out.append(_png(image))
    return out


def blank_and_ramp(rng, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        h, w = int(rng.integers(180, 400)), int(rng.integers(180, 400))
        kind = i % 4
        if kind == 0:
            image = np.full((h, w), 255.0 * (i // 4) / max(1, (n - 1) // 4))
        elif kind == 1:
            image = np.tile(np.linspace(0, 255, w), (h, 1))
        elif kind == 2:
            image = np.tile(np.linspace(255, 0, h)[:, None], (1, w))
        else:
            y, x = np.mgrid[0:h, 0:w]
            image = 255 * np.clip(1 - np.hypot(y - h / 2, x - w / 2) / (0.6 * max(h, w)), 0, 1)
        out.append(_png(image))
    return out


def chest_like(rng, n: int) -> list[bytes]:
    """A frontal chest radiograph sketched with matplotlib patches."""
    from matplotlib.patches import Arc, Ellipse, Rectangle

    out = []
    for _ in range(n):
        fig = plt.figure(figsize=(3.5, 3.5))
        fig.patch.set_facecolor("black")
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")
        body = float(rng.uniform(0.55, 0.75))
        ax.add_patch(Ellipse((0.5, 0.45), 0.95, 1.2, color=str(body)))
        for side in (-1, 1):
            ax.add_patch(
                Ellipse(
                    (0.5 + side * rng.uniform(0.17, 0.22), 0.5),
                    rng.uniform(0.25, 0.32),
                    rng.uniform(0.5, 0.62),
                    color=str(rng.uniform(0.1, 0.25)),
                )
            )
        for k in range(int(rng.integers(7, 11))):
            y = 0.78 - k * 0.055
            for side in (-1, 1):
                ax.add_patch(
                    Arc(
                        (0.5 + side * 0.05, y),
                        0.6,
                        0.12,
                        theta1=180 if side < 0 else 270,
                        theta2=270 if side < 0 else 360,
                        color="0.85",
                        lw=2,
                    )
                )
        ax.add_patch(Rectangle((0.475, 0.05), 0.05, 0.85, color="0.9"))
        ax.add_patch(Ellipse((0.56, 0.35), rng.uniform(0.22, 0.3), rng.uniform(0.2, 0.28), color="0.8"))
        image = _figure_gray(fig).astype(np.float64)
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(1, 3))) + rng.normal(0, 4, image.shape)
        out.append(_png(image))
    return out


FAMILIES = {
    "natural_photos": (
        natural_photos,
        "matplotlib sample data: grace_hopper.jpg, Minduka photo, elevation maps",
    ),
    "documents": (documents, "text pages rendered with matplotlib"),
    "noise": (noise, "uniform, Gaussian, salt-and-pepper, 1/f noise"),
    "blank_and_ramp": (blank_and_ramp, "constant grey levels, linear and radial ramps"),
    "chest_like": (chest_like, "chest-radiograph-like drawings (matplotlib patches)"),
}


def read_records(pattern: str) -> tuple[list[bytes], np.ndarray]:
    import tensorflow as tf

    from data_prep.tfrecords import parse_example

    examples = [
        parse_example(record.numpy()) for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern)))
    ]
    return ([e[spec.IMAGE_KEY] for e in examples], np.asarray([e[spec.LABEL_KEY] for e in examples]))


def run(signature, images: list[bytes], batch: int = 32) -> dict[str, np.ndarray]:
    import tensorflow as tf

    parts = []
    for i in range(0, len(images), batch):
        out = signature(**{IMAGE_BYTES_INPUT: tf.constant(images[i : i + batch])})
        parts.append({k: v.numpy() for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def latency(signature, images: list[bytes], calls: int) -> tuple[float, float]:
    """(median wall ms, mean process CPU ms) of one-image predict_images calls. CPU time
    is the steadier figure on a machine shared with other jobs."""
    import tensorflow as tf

    times = []
    cpu_start = time.process_time()
    for i in range(calls):
        data = tf.constant([images[i % len(images)]])
        start = time.perf_counter()
        signature(**{IMAGE_BYTES_INPUT: data})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), 1000 * (time.process_time() - cpu_start) / calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="SavedModel with the abstention outputs")
    p.add_argument(
        "--records", required=True, help="glob of in-distribution TFRecords (prepared eval/test split)"
    )
    p.add_argument("--per-family", type=int, default=40)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=None, help="JSON for `btmri report --abstention-benchmark`")
    p.add_argument(
        "--baseline-model",
        default=None,
        help="the same model without abstention: predict_images latency ratio",
    )
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument("--latency-rounds", type=int, default=5)
    args = p.parse_args(argv)

    import tensorflow as tf

    from components.training.abstention import auroc

    model = tf.saved_model.load(args.model)
    predict = model.signatures[PREDICT_IMAGES]
    if ABSTAIN not in predict.structured_outputs:
        print(f"{args.model} has no abstention outputs (exported before them?)", file=sys.stderr)
        return 2
    images, labels = read_records(args.records)
    inside = run(predict, images)
    correct = inside[PROBABILITIES].argmax(1) == labels
    accepted = ~inside[ABSTAIN]
    rng = np.random.default_rng(args.seed)
    result = {
        "model": os.path.abspath(args.model),
        "families": {},
        "in_distribution": {
            "source": args.records,
            "images": len(images),
            "accepted": float(accepted.mean()),
            "accuracy_all": float(correct.mean()),
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
        },
    }
    print(
        f"in-distribution ({len(images)} images, {args.records}): answered {accepted.mean():.4f}, "
        f"accuracy {correct[accepted].mean():.4f} on those vs {correct.mean():.4f} on all"
    )
    probe_scores = []
    print(
        f"{'family':16s} {'images':>6s} {'abstained':>9s} {'ood':>6s} {'median ood_score':>16s} "
        f"{'median top p':>12s}"
    )
    for family, (make, source) in FAMILIES.items():
        out = run(predict, make(rng, args.per_family))
        reasons = np.array([r.decode() for r in out[ABSTAIN_REASON]])
        fig = {
            "images": len(reasons),
            "abstained": float(out[ABSTAIN].mean()),
            "out_of_distribution": float((reasons == REASON_OUT_OF_DISTRIBUTION).mean()),
            "median_ood_score": float(np.median(out[OOD_SCORE])),
            "median_top_probability": float(np.median(out[PROBABILITIES].max(1))),
            "source": source,
        }
        result["families"][family] = fig
        probe_scores.append(out[OOD_SCORE])
        print(
            f"{family:16s} {fig['images']:6d} {fig['abstained']:9.3f} {fig['out_of_distribution']:6.3f} "
            f"{fig['median_ood_score']:16.2f} {fig['median_top_probability']:12.3f}"
        )
    result["auroc"] = auroc(inside[OOD_SCORE], np.concatenate(probe_scores))
    # For scale: a plain threshold on the top probability answering the same share.
    top = inside[PROBABILITIES].max(1)
    cut = np.quantile(top, 1 - accepted.mean())
    print(
        f"AUROC of ood_score, in-distribution vs all probes: {result['auroc']:.4f} "
        f"(top-probability threshold at the same acceptance, {cut:.3f}, would refuse "
        + ", ".join(
            f"{f} {np.mean(run(predict, FAMILIES[f][0](np.random.default_rng(args.seed + 1), 20))[PROBABILITIES].max(1) < cut):.2f}"
            for f in FAMILIES
        )
        + ")"
    )
    if args.baseline_model:
        base = tf.saved_model.load(args.baseline_model).signatures[PREDICT_IMAGES]
        latency(predict, images, 20), latency(base, images, 20)  # warm up
        rounds = {"with": [], "without": []}
        for _ in range(args.latency_rounds):  # interleaved, so both see the same load
            rounds["with"].append(latency(predict, images, args.latency_calls))
            rounds["without"].append(latency(base, images, args.latency_calls))
        wall = {k: min(r[0] for r in v) for k, v in rounds.items()}
        cpu = {k: float(np.median([r[1] for r in v])) for k, v in rounds.items()}
        result["latency_ms"] = {
            "wall_median_best_round": wall,
            "cpu_per_call_median_round": cpu,
            "wall_ratio": wall["with"] / wall["without"],
            "cpu_ratio": cpu["with"] / cpu["without"],
        }
        print(
            f"predict_images, one image per call, in process, {args.latency_rounds} interleaved "
            f"rounds of {args.latency_calls}: wall (median, best round) {wall['with']:.2f} ms with "
            f"abstention vs {wall['without']:.2f} ms without ({wall['with'] / wall['without']:.3f}x); "
            f"CPU per call (median round) {cpu['with']:.2f} vs {cpu['without']:.2f} ms "
            f"({cpu['with'] / cpu['without']:.3f}x)"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
