"""Which heatmap points at the tumour? Several explanation maps of one trained model,
scored like the lesion audit (pointing game, mass in box) on box slices.

    python benchmarks/heatmap_methods.py --model runs/serving/brain_tumor \
        --boxes-dir /path/to/figshare-boxes --exclude-training runs/data/prepared/current

Maps, all for the predicted class, upsampled to 224x224:
  signature      what the exported `gradcam` signature returns (the coarse map x LayerCAM 56x56
                 to the power gradcam.FINE_EXPONENT, as this version exports it)
  gradcam14      Grad-CAM on the 14x14 stage alone
  layercam56     LayerCAM on the 56x56 stage alone
  cam7           the class activation map of the last (7x7) stage, CAM = F . w_c
  cam7xlayer56   cam7 x LayerCAM 56x56 (the map lesion guidance constrains, sharpened)
For a model with class evidence maps (mri_resnet_evidence) the last two are its
predicted class's 14x14 evidence map as a spatial softmax (evidence14, what lesion guidance constrains and
what the class score pools) and that map x LayerCAM 56x56.
`--fine-exponents 0.35 0.5` adds the coarse map x LayerCAM 56x56 to each power (xlayer56^P):
how much the fine map should weigh (components/training/gradcam.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import data_prep  # noqa: E402,F401  (Keras 2 switch before TensorFlow)
from components.audit.component import slices_not_in, training_images  # noqa: E402
from components.audit.lesion_audit import DEFAULT_TOLERANCE_PX, heatmap_figures, png  # noqa: E402
from components.audit.predictors import SavedModelPredictor  # noqa: E402
from btmri import spec  # noqa: E402
from data_prep.lesion_boxes import gray_of, read_box_folder  # noqa: E402
from pipeline.audit_cli import _saved_model_dir  # noqa: E402


def maps_model(model_dir: str):
    import tf_keras as keras

    from components.training.models import (
        CAM_LAYER,
        CLASS_EVIDENCE_LAYER,
        GRADCAM_FINE_LAYER,
        GRADCAM_LAYER,
        LOGITS_LAYER,
    )

    model = keras.models.load_model(model_dir, compile=False)
    # Evidence maps are the class maps themselves: no kernel turns features into them.
    explicit = CLASS_EVIDENCE_LAYER in {layer.name for layer in model.layers}
    names = (GRADCAM_LAYER, GRADCAM_FINE_LAYER, CLASS_EVIDENCE_LAYER if explicit else CAM_LAYER)
    outputs = [model.get_layer(n).output for n in names] + [model.get_layer(LOGITS_LAYER).output]
    kernel = None if explicit else model.get_layer(LOGITS_LAYER).kernel
    return keras.Model(model.inputs, outputs), kernel, explicit


def method_maps(
    grad_model, kernel, images: list[bytes], explicit: bool = False, fine_exponents=()
) -> dict[str, np.ndarray]:
    import tensorflow as tf

    from components.training import gradcam as cam
    from components.transform.head_framing import maps_to_image
    from components.transform.preprocessing import HEAD_BOX_XF, IMAGE_SIZE, IMAGE_XF, preprocessing_fn

    # This version's Transform (models trained by it): the head crop the model sees.
    xf = preprocessing_fn({spec.IMAGE_KEY: tf.constant(images)[:, None]})
    x = xf[IMAGE_XF]
    with tf.GradientTape() as tape:
        coarse, fine, last, logits = grad_model(x, training=False)
        class_id = tf.argmax(logits, axis=1, output_type=tf.int32)
        score = tf.gather(logits, class_id, batch_dims=1)
    g_coarse, g_fine = tape.gradient(score, [coarse, fine])

    def up(m):  # onto the whole image, as the signature's heatmap
        return cam._unit_peak(maps_to_image(cam._upsampled(m, IMAGE_SIZE), xf[HEAD_BOX_XF], IMAGE_SIZE))

    grad14 = up(cam.grad_cam(coarse, g_coarse))
    layer56 = up(cam.layer_cam(fine, g_fine))
    if explicit:  # the signature's coarse map for such models
        cam7 = up(cam.evidence_map(last, class_id))
    else:
        weights = tf.gather(tf.transpose(kernel), class_id)
        cam7 = up(tf.nn.relu(tf.einsum("bhwc,bc->bhw", last, weights))[..., None])
    last_name = "evidence14" if explicit else "cam7"
    maps = {
        "gradcam14": grad14.numpy(),
        "layercam56": layer56.numpy(),
        last_name: cam7.numpy(),
        f"{last_name}xlayer56": cam._unit_peak(cam7 * layer56).numpy(),
    }
    for power in fine_exponents:
        maps[f"{last_name}xlayer56^{power:g}"] = cam._unit_peak(
            cam7 * up(cam.layer_cam(fine, g_fine) ** power)
        ).numpy()
    return maps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SavedModel or TF Serving base path")
    parser.add_argument("--boxes-dir", required=True)
    parser.add_argument("--exclude-training", help="prepared data: skip slices copied in train/")
    parser.add_argument("--limit", type=int, default=0, help="at most this many slices per class")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--fine-exponents", type=float, nargs="*", default=[], metavar="P", help="also xlayer56^P for each P"
    )
    args = parser.parse_args()

    model_dir = _saved_model_dir(args.model)
    slices, _ = read_box_folder(args.boxes_dir)
    if args.exclude_training:
        files = sorted(str(p) for p in (Path(args.exclude_training) / spec.TRAIN_SPLIT).glob("*"))
        slices = slices_not_in(slices, training_images(files))
    if args.limit:
        slices = [
            s
            for label in sorted({s.label for s in slices})
            for s in [t for t in slices if t.label == label][: args.limit]
        ]
    grad_model, kernel, explicit = maps_model(model_dir)
    signature = SavedModelPredictor(model_dir)
    scores: dict[str, dict[str, list]] = {}
    started = time.time()
    for start in range(0, len(slices), args.batch):
        batch = slices[start : start + args.batch]
        images = [png(gray_of(s.path)) for s in batch]
        maps = method_maps(grad_model, kernel, images, explicit, args.fine_exponents)
        maps["signature"] = signature.gradcam(images)[0]
        for name, heat in maps.items():
            for s, h in zip(batch, heat):
                fig = heatmap_figures(np.asarray(h, np.float32), s.box, DEFAULT_TOLERANCE_PX)
                for key in ("pointing", "pointing_tolerant", "mass_in_box"):
                    scores.setdefault(name, {}).setdefault(key, []).append(
                        (spec.CLASS_NAMES[s.label], float(fig[key]))
                    )
    print(f"{len(slices)} slices in {time.time() - started:.0f} s (tolerance {DEFAULT_TOLERANCE_PX} px)")
    classes = sorted({c for c, _ in next(iter(scores.values()))["pointing"]})
    print(f"{'method':14s} {'figure':18s} {'overall':>8s} " + " ".join(f"{c:>11s}" for c in classes))
    for name, figures in scores.items():
        for key, rows in figures.items():
            overall = np.mean([v for _, v in rows])
            per = [np.mean([v for c, v in rows if c == cls]) for cls in classes]
            print(f"{name:14s} {key:18s} {overall:8.3f} " + " ".join(f"{v:11.3f}" for v in per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
