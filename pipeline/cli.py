"""`btmri`: the command-line front door.

Each subcommand parses its arguments here and calls into the package that owns
the work; heavy imports (TensorFlow, TFX) happen inside the handlers so
`btmri --help` stays instant.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_synth(args: argparse.Namespace) -> int:
    from data_prep.synth import generate_dataset

    summary = generate_dataset(args.out, per_class=args.per_class,
                               test_per_class=args.test_per_class, seed=args.seed,
                               progress=not args.quiet)
    print(f"wrote synthetic dataset to {args.out}: {summary}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from data_prep.discover import LayoutError
    from data_prep.prepare import PrepareError, PrepareOptions, prepare, summary_table

    opts = PrepareOptions(
        data_dir=args.data_dir, out_dir=args.out, eval_fraction=args.eval_fraction,
        seed=args.seed, workers=args.workers, shards=args.shards,
        drop_cross_split_duplicates=args.drop_cross_split_duplicates,
        near_threshold=args.near_threshold, max_pixels=args.max_pixels,
        progress=not args.quiet)
    try:
        manifest = prepare(opts)
    except (PrepareError, LayoutError, ValueError) as err:
        print(f"btmri prepare: error: {err}", file=sys.stderr)
        return 2
    print(summary_table(manifest))
    print(f"wrote {manifest['total_written']} examples to {args.out} "
          f"(manifest: {args.out}/manifest.json) in {manifest['seconds']} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from data_prep.duplicates import DEFAULT_NEAR_THRESHOLD
    from data_prep.image_io import DEFAULT_MAX_PIXELS
    from data_prep.prepare import DEFAULT_TRAIN_SHARDS

    parser = argparse.ArgumentParser(
        prog="btmri", description="Brain tumor MRI classifier: data, TFX pipeline, serving.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the Kaggle layout")
    p.add_argument("--out", required=True, help="output folder (Training/, Testing/, masks/)")
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=25, help="testing images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="images → validated, split TFRecords + manifest.json")
    p.add_argument("--data-dir", required=True,
                   help="Kaggle layout (Training/, Testing/) or flat class folders")
    p.add_argument("--out", required=True, help="output folder for train/ eval/ test/ shards")
    p.add_argument("--eval-fraction", type=float, default=0.15,
                   help="share of Training/ per class held out for eval (default 0.15)")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    p.add_argument("--shards", type=int, default=DEFAULT_TRAIN_SHARDS,
                   help=f"TFRecord shards for train; eval/test get proportionally fewer "
                        f"(default {DEFAULT_TRAIN_SHARDS})")
    p.add_argument("--drop-cross-split-duplicates", action="store_true",
                   help="leave out eval/test images that duplicate a training image")
    p.add_argument("--near-threshold", type=int, default=DEFAULT_NEAR_THRESHOLD,
                   help=f"perceptual-hash Hamming distance (bits of 64) counted as a near "
                        f"duplicate (default {DEFAULT_NEAR_THRESHOLD})")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
