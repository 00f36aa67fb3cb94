"""Re-exports an already trained SavedModel with the abstention outputs, by the Trainer's
own code (fit_abstention on the eval split, make_signatures), without training again.

For models pushed before abstention existed, so benchmarks/abstention_probes.py can measure
them:

    python benchmarks/reexport_with_abstention.py --model runs/serving/brain_tumor/N \\
        --transform-graph runs/pipeline/Transform/transform_graph/ID \\
        --eval-records 'runs/data/prepared/current/eval/*.tfrecord' --out /tmp/with_abstention

The weights, the calibrated probabilities and the Transform graph are the model's own;
the abstention detector is fitted on the eval records exactly as the Trainer fits it.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data_prep  # noqa: E402,F401  (Keras 2 before TensorFlow)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402

from btmri.documents import TRAINER_DEFAULTS  # noqa: E402
from components.training import abstention  # noqa: E402
from components.training.trainer import fit_abstention, make_signatures  # noqa: E402
from components.transform.preprocessing import IMAGE_XF  # noqa: E402
from btmri.spec import IMAGE_KEY, LABEL_KEY, PATIENT_KEY  # noqa: E402
from data_prep.tfrecords import parse_example  # noqa: E402


def eval_dataset(pattern: str, tft_layer, batch: int = 32):
    """(batches as the Trainer's eval dataset yields them, (labels, unit) as eval_units gives them)."""
    examples = [
        parse_example(record.numpy()) for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern)))
    ]
    images = [e[IMAGE_KEY] for e in examples]
    labels = [e[LABEL_KEY] for e in examples]
    # parse_example gives every example its unit (its own group when the record names none).
    units = (np.array(labels), np.array([e[PATIENT_KEY] for e in examples]))
    decoded = [
        tft_layer({IMAGE_KEY: tf.reshape(tf.constant(images[i : i + batch]), [-1, 1])})[IMAGE_XF]
        for i in range(0, len(images), batch)
    ]
    batches = [
        (x, (tf.constant(labels[i * batch : (i + 1) * batch]), tf.zeros([len(x), 1])))
        for i, x in enumerate(decoded)
    ]
    return batches, units


def rebuilt(loaded: keras.Model, name: str) -> keras.Model:
    """`name` as models.py builds it now, with `loaded`'s weights (tag layers have none,
    so the order matches) and its temperature scaling."""
    from components.training.calibration import with_temperature
    from components.training.models import build_model

    model = build_model(name)
    model.set_weights(loaded.get_weights())
    names = {layer.name for layer in loaded.layers}
    if "temperature" in names:
        model = with_temperature(model, 1.0 / float(loaded.get_layer("temperature").scale))
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="SavedModel exported by the Trainer (Keras)")
    p.add_argument("--transform-graph", required=True, help="the run's Transform graph folder")
    p.add_argument("--eval-records", required=True, help="glob of the eval split's TFRecords")
    p.add_argument("--out", required=True)
    shares = (  # the Trainer's abstention settings, its defaults unless given
        ("--accept", TRAINER_DEFAULTS.abstention_accept, "share of the eval split answered"),
        ("--ood-share", TRAINER_DEFAULTS.abstention_ood_share, "of the budget, to the distance rules"),
        (
            "--notumor-ood-refuse",
            TRAINER_DEFAULTS.abstention_notumor_ood_refuse,
            "share of the eval split's right notumor answers the notumor distance bound refuses",
        ),
    )
    for flag, default, text in shares:
        p.add_argument(flag, type=float, default=default, help=f"{text} (default {default})")
    p.add_argument(
        "--by-example",
        action="store_true",
        help="cross-fit by example even where the records name patients (as before 2026-12-07 night)",
    )
    p.add_argument(
        "--rebuild",
        metavar="MODEL_NAME",
        help="rebuild this architecture as the code defines it now, with the model's weights "
        "and temperature (for a model whose layer tags changed since it was trained)",
    )
    args = p.parse_args(argv)

    xf = tft.TFTransformOutput(args.transform_graph)
    model = keras.models.load_model(args.model, compile=False)
    if args.rebuild:
        model = rebuilt(model, args.rebuild)
    eval_ds, units = eval_dataset(args.eval_records, xf.transform_features_layer())
    config = dataclasses.replace(
        TRAINER_DEFAULTS,
        abstention_accept=args.accept,
        abstention_ood_share=args.ood_share,
        abstention_notumor_ood_refuse=args.notumor_ood_refuse,
    )
    spec = fit_abstention(model, eval_ds, xf, config, None if args.by_example else units)
    model.tft_layer = xf.transform_features_layer()
    model.save(args.out, save_format="tf", signatures=make_signatures(model, xf, spec))
    abstention.write(spec, args.out, {"reexported_from": str(Path(args.model).resolve())})
    print(
        f"wrote {args.out}: features {spec.features}, ood threshold {spec.ood_threshold:.4f}, "
        f"confidence floor {spec.confidence_floor:.4f}, notumor bound {spec.notumor_ood_bound:.4f}, eval answered "
        f"{spec.fit_report['accepted_share']:.4f} (cross-fitted by {spec.fit_report['cross_fitted_by']}: "
        f"{spec.fit_report['accepted_share_cross_fitted']:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
