"""`btmri`: the command-line front door.

Each subcommand parses its arguments here and calls into the package that owns
the work; heavy imports (TensorFlow, TFX) happen inside the handlers so
`btmri --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from btmri.cli_conventions import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    add_output_flags,
    error,
    exit_code_text,
)
from btmri.console import quiet_environment
from btmri.documents import TRAINER_DEFAULTS, VERTEX_DEFAULTS
from btmri.layout import DEFAULT_LAYOUT, MANIFEST_FILE, RunLayout
from btmri.spec import SCHEDULE_CONVERGE, SPLIT_UNITS

# `btmri run --quick`: a smoke run of every component, blessed and pushed in minutes.
# Gates are set so that a 1-epoch model passes them; flags given explicitly still win.
QUICK_PRESET = {
    "synthetic_per_class": 12,
    "epochs": 1,
    "batch_size": 8,
    "accuracy_bound": 0.0,
    # A 1-epoch model abstains on a random few of its 12 test images.
    "min_acceptance": 0.5,
}


def _cmd_synth(args: argparse.Namespace) -> int:
    from data_prep.synth import generate_dataset

    if min(args.per_class, args.test_per_class) < 0:
        return error("synth", "--per-class and --test-per-class cannot be negative")
    try:
        summary = generate_dataset(
            args.out,
            per_class=args.per_class,
            test_per_class=args.test_per_class,
            seed=args.seed,
            progress=not args.quiet,
        )
    except OSError as err:
        return error("synth", f"cannot write to {args.out}: {err.strerror or err}")
    print(
        f"wrote {summary['images']} synthetic images and {summary['masks']} lesion masks to {args.out} (seed {summary['seed']})"
    )
    for split, per_class in summary["counts"].items():
        print(f"  {split}: " + ", ".join(f"{name} {n}" for name, n in per_class.items()))
    return 0


def add_split_arguments(p: argparse.ArgumentParser, prefix: str = "", hold_out_default: str = "") -> None:
    """What `prepare` draws the eval split by, and leave one source out (prepare and run)."""
    p.add_argument(
        "--split-unit",
        choices=SPLIT_UNITS,
        default=SPLIT_UNITS[0],
        help=f"{prefix}draw the eval split by whole patients / near-duplicate groups (patient; "
        "patients from the box folder's patients.csv) or by file (image, only to measure "
        "how much an image-level split inflates the figures) (default %(default)s)",
    )
    p.add_argument(
        "--hold-out-collection",
        default=None,
        metavar="NAME",
        help=f"{prefix}leave one source out: the tumour images of this collection (e.g. figshare, "
        "the copies of a box folder's slices, or unknown, the others), whole patients at a "
        "time, are left out of training and eval and copied to --hold-out-dir for "
        "`btmri evaluate`",
    )
    p.add_argument(
        "--hold-out-dir",
        default=None,
        help=f"where the held-out images go, as class folders{hold_out_default}",
    )


def _cmd_prepare(args: argparse.Namespace) -> int:
    from data_prep.discover import LayoutError
    from data_prep.prepare import PrepareError, PrepareOptions, prepare, summary_table

    opts = PrepareOptions(
        data_dir=args.data_dir,
        out_dir=args.out,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        workers=args.workers,
        shards=args.shards,
        drop_cross_split_duplicates=args.drop_cross_split_duplicates,
        allow_empty_eval=args.allow_empty_eval,
        near_threshold=args.near_threshold,
        max_pixels=args.max_pixels,
        max_file_mb=args.max_file_mb,
        box_dir=args.boxes_dir,
        split_unit=args.split_unit,
        hold_out_collection=args.hold_out_collection,
        hold_out_dir=args.hold_out_dir,
        progress=not args.quiet,
    )
    try:
        manifest = prepare(opts)
    except (PrepareError, LayoutError, ValueError) as err:
        return error("prepare", err)
    print(summary_table(manifest))
    print(
        f"wrote {manifest.total_written} examples to {args.out} "
        f"(manifest: {Path(args.out) / MANIFEST_FILE}) in {manifest.seconds} s"
    )
    return 0


def _pipeline_config(args: argparse.Namespace, data_root: str, **overrides):
    """PipelineConfig from the arguments `run` and `compile` share (pipeline_args)."""
    from pipeline.config import PipelineConfig, component_beam_args

    # `run`: the work folder holds the whole run unless told otherwise.
    work = RunLayout(getattr(args, "work_dir", None) or DEFAULT_LAYOUT.work_dir)
    return PipelineConfig(
        pipeline_root=args.pipeline_root or work.pipeline_root,
        data_root=data_root,
        serving_dir=args.serving_dir or work.serving_dir,
        model=args.model,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        schedule=args.schedule,
        patience=args.patience,
        compute_dtype=args.compute_dtype,
        audit_min_pointing=args.audit_min_pointing,
        audit_min_removed_changed=args.audit_min_removed_changed,
        accuracy_lower_bound=args.accuracy_bound,
        evidence_weight=args.evidence_weight,
        lesion_removal_rate=args.lesion_removal_rate,
        decoy_removal_rate=args.decoy_removal_rate,
        lesion_paste_rate=args.lesion_paste_rate,
        acquisition_augment=args.acquisition_augment,
        acquisition_strength=args.acquisition_strength,
        abstention=not args.no_abstention,
        abstention_accept=args.abstention_accept,
        abstention_min_acceptance=args.min_acceptance,
        distribution=args.distribution,
        input_sharding=args.input_sharding,
        component_beam_args=component_beam_args(args.component_beam_arg),
        **overrides,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from data_prep.discover import LayoutError
    from data_prep.prepare import PrepareError, summary_table
    from data_prep.synth import BOXES_DIR
    from pipeline.workdir import prepare_if_changed, synthesize_if_missing

    if args.quick:
        if args.data_dir is not None:
            return error("run", "--quick runs on a few synthetic phantoms; drop --data-dir (or --quick)")
        _apply_preset(args, QUICK_PRESET)
        print(
            "quick run: a smoke test of every component on "
            f"{4 * args.synthetic_per_class} synthetic images and {args.epochs} epoch, with "
            "gates a 1-epoch model passes. Its model is not a usable classifier: "
            "`btmri run` trains one."
        )
    work = RunLayout(args.work_dir)
    box_dir = args.boxes_dir
    try:
        if args.data_dir is None:
            data_dir = work.synthetic_data
            print(f"no --data-dir: using the synthetic phantom dataset in {data_dir}")
            if synthesize_if_missing(
                data_dir, args.synthetic_per_class, max(1, args.synthetic_per_class // 4), seed=0
            ):
                print(f"reusing synthetic dataset in {data_dir}")
            box_dir = box_dir or str(Path(data_dir) / BOXES_DIR)
        else:
            data_dir = args.data_dir
        prepared = prepare_if_changed(
            data_dir,
            work,
            progress=not args.quiet,
            box_dir=box_dir,
            drop_cross_split_duplicates=args.drop_cross_split_duplicates,
            split_unit=args.split_unit,
            hold_out_collection=args.hold_out_collection,
            hold_out_dir=args.hold_out_collection
            and (args.hold_out_dir or work.held_out_data(args.hold_out_collection)),
        )
    except (PrepareError, LayoutError, ValueError) as err:
        return error("run", err)
    if prepared.reused:
        print(f"data unchanged since the last prepare: reusing {prepared.path}")
    else:
        print(summary_table(prepared.manifest))

    from components.executors import AnomaliesFound
    from pipeline.config import beam_args, runs_beyond_this_process
    from pipeline.local_runner import run_pipeline
    from pipeline.summary import summary_lines

    try:
        beam = (
            beam_args(args.beam_workers, args.beam_job_endpoint) + args.beam_arg
            if args.beam_workers or not args.beam_arg
            else args.beam_arg
        )
        # Workers of other runners import the project's code rather than TFX's staged
        # module-file wheels: functions by import path.
        config = _pipeline_config(
            args,
            prepared.path,
            enable_cache=not args.no_cache,
            box_dir=box_dir,
            beam_pipeline_args=beam,
            use_module_files=not runs_beyond_this_process(beam),
        )
    except ValueError as err:
        return error("run", err)
    print(
        f"running pipeline {config.pipeline_name} (root {config.pipeline_root}, "
        f"model {config.model}, "
        + (
            f"at most {config.epochs} epochs: stops when the eval loss has converged"
            if config.schedule == SCHEDULE_CONVERGE
            else f"{config.epochs} epochs"
        )
        + ")"
    )
    try:
        summary = run_pipeline(config, verbose=args.verbose, quiet=args.quiet)
    except AnomaliesFound as err:
        return error("run", f"{err}; fix the data or its schema, then run again", EXIT_REFUSED)
    except RuntimeError as err:
        return error(
            "run", f"the pipeline failed: {err} (full log under {config.pipeline_root}/logs)", EXIT_FAILED
        )
    print("\n" + "\n".join(summary_lines(summary, config.accuracy_lower_bound, config.min_acceptance)))
    from pipeline import run_record

    record = run_record.write(
        run_record.build(summary, config, args.argv, prepared.manifest), config.pipeline_root
    )
    print(f"run record: {record} (`btmri results` turns it into the results record)")
    held = prepared.manifest.held_out_collection
    if held:
        print(
            f"held out {sum(held['images'].values())} images of collection {held['collection']!r} "
            f"({held['units']} patients / groups) in {held['dir']}; grade the model on them with\n"
            f"  btmri evaluate {held['dir']} --model-dir {config.serving_dir}"
        )
    # Refused: the gates kept the model from the serving folder (a cached re-run of a
    # pushed model counts as pushed).
    return EXIT_OK if summary.pushed else EXIT_REFUSED


def _apply_preset(args: argparse.Namespace, preset: dict) -> None:
    """Sets each preset value on `args` unless its flag (--the-dest) was given in args.argv."""
    for dest, value in preset.items():
        flag = "--" + dest.replace("_", "-")
        if not any(token == flag or token.startswith(flag + "=") for token in args.argv):
            setattr(args, dest, value)


def _cmd_compile(args: argparse.Namespace) -> int:
    from pipeline.kubeflow_runner import compile_pipeline

    from btmri.documents import VertexOptions
    from btmri.spec import DISTRIBUTION_MULTI_WORKER

    vertex = None
    if args.target == "vertex":
        vertex = VertexOptions(
            project=args.vertex_project or "",
            image=args.image,
            region=args.vertex_region,
            machine_type=args.vertex_machine_type,
            accelerator_type=args.vertex_accelerator_type,
            accelerator_count=args.vertex_accelerator_count,
            replicas=args.vertex_replicas,
            endpoint_name=args.vertex_endpoint,
            serving_image=args.vertex_serving_image,
            serving_machine_type=args.vertex_serving_machine_type,
        )
    # Functions by import path (code baked into the image); Kubeflow/Vertex bring
    # their own ML Metadata.
    try:
        if args.target == "kubeflow" and args.distribution == DISTRIBUTION_MULTI_WORKER:
            raise ValueError(
                "--distribution multi_worker needs --target vertex: Kubeflow Pipelines "
                "runs the Trainer in one pod (mirrored uses that pod's GPUs)"
            )
        config = _pipeline_config(
            args,
            args.data_root,
            beam_pipeline_args=list(args.beam_arg),
            use_module_files=False,
            metadata_path="",
            test_split=not args.no_test_split,
            box_dir=args.boxes_dir,
            vertex=vertex,
        )
    except ValueError as err:
        return error("compile", err)
    path = compile_pipeline(config, args.out, args.image)
    print(f"wrote {'Vertex AI' if vertex else 'Kubeflow Pipelines v2'} spec to {path}")
    return 0


def _version() -> str:
    """The installed distribution's version (setup.py), or 'not installed' from a bare checkout."""
    from importlib import metadata

    try:
        return metadata.version("brain-tumor-mri-tfx")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from data_prep.duplicates import DEFAULT_NEAR_THRESHOLD
    from data_prep.image_io import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS
    from data_prep.prepare import DEFAULT_TRAIN_SHARDS

    parser = argparse.ArgumentParser(
        prog="btmri",
        description="Brain tumor MRI classifier: data, TFX pipeline, serving. Every subcommand "
        "takes -v/--verbose and -q/--quiet; those that read a run take --work-dir (default "
        f"{DEFAULT_LAYOUT.work_dir}), the folder `btmri run` wrote.",
        epilog=exit_code_text(),
    )
    parser.add_argument("--version", action="version", version=f"btmri {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the Kaggle layout")
    p.add_argument("--out", required=True, help="output folder (Training/, Testing/, masks/)")
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=25, help="testing images per class")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default %(default)s)")
    add_output_flags(p, "no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="images → validated, split TFRecords + manifest.json")
    p.add_argument(
        "--data-dir", required=True, help="Kaggle layout (Training/, Testing/) or flat class folders"
    )
    p.add_argument("--out", required=True, help="output folder for train/ eval/ test/ shards")
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=0.15,
        help="share of Training/ per class held out for eval (default 0.15)",
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    p.add_argument(
        "--shards",
        type=int,
        default=DEFAULT_TRAIN_SHARDS,
        help=f"TFRecord shards for train; eval/test get proportionally fewer "
        f"(default {DEFAULT_TRAIN_SHARDS})",
    )
    p.add_argument(
        "--drop-cross-split-duplicates",
        action="store_true",
        help="leave out eval/test images that duplicate a training image",
    )
    p.add_argument(
        "--allow-empty-eval",
        action="store_true",
        help="write the data even when no image falls in the eval split (refused by default: "
        "`btmri run` needs eval images)",
    )
    p.add_argument(
        "--near-threshold",
        type=int,
        default=DEFAULT_NEAR_THRESHOLD,
        help=f"perceptual-hash Hamming distance (bits of 64) counted as a near "
        f"duplicate (default {DEFAULT_NEAR_THRESHOLD})",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels than this (default %(default)s)",
    )
    p.add_argument(
        "--max-file-mb",
        type=float,
        default=DEFAULT_MAX_FILE_MB,
        help="skip files larger than this many MiB before opening them (default %(default)s)",
    )
    p.add_argument(
        "--boxes-dir",
        default=None,
        help="folder of tumour slices with boxes (<class>/<id>.jpg + .txt, and "
        "patients.csv: id,class,patient): images that are copies of one get its box "
        "and patient, for lesion-guided training and splits by patient",
    )
    add_split_arguments(p)
    add_output_flags(p, "no progress bars")
    p.set_defaults(func=_cmd_prepare)

    from btmri.spec import COMPILE_TARGETS, DISTRIBUTIONS, INPUT_SHARDING, MODEL_NAME, MODEL_NAMES, SCHEDULES
    from pipeline.config import DEFAULT_ACCURACY_LOWER_BOUND, COMPUTE_DTYPES, PipelineConfig

    def pipeline_args(p, local: bool):
        p.add_argument(
            "--pipeline-root",
            default=None,
            required=not local,
            help="TFX artifacts (and, locally, ML Metadata)"
            + (" (default: WORK_DIR/pipeline)" if local else ""),
        )
        p.add_argument(
            "--serving-dir",
            default=None,
            required=not local,
            help="TF Serving model base path (<dir>/<version>/)"
            + (f" (default: WORK_DIR/serving/{MODEL_NAME})" if local else ""),
        )
        p.add_argument(
            "--model",
            default=TRAINER_DEFAULTS.model,
            choices=MODEL_NAMES,
            help="the network architecture to train (default %(default)s)",
        )
        p.add_argument(
            "--weights",
            default=None,
            help="'imagenet' for resnet50/efficientnetb0 (downloads; needs internet)",
        )
        p.add_argument("--epochs", type=int, default=TRAINER_DEFAULTS.epochs, help="default %(default)s")
        p.add_argument(
            "--batch-size", type=int, default=TRAINER_DEFAULTS.batch_size, help="default %(default)s"
        )
        p.add_argument(
            "--learning-rate",
            type=float,
            default=TRAINER_DEFAULTS.learning_rate,
            help="peak of the cosine schedule; default %(default)s",
        )
        p.add_argument(
            "--weight-decay",
            type=float,
            default=TRAINER_DEFAULTS.weight_decay,
            help="AdamW decoupled weight decay (0: Adam); default %(default)s",
        )
        p.add_argument(
            "--label-smoothing",
            type=float,
            default=TRAINER_DEFAULTS.label_smoothing,
            help="default %(default)s",
        )
        p.add_argument(
            "--schedule",
            default=TRAINER_DEFAULTS.schedule,
            choices=SCHEDULES,
            help="converge: the base learning rate until the eval loss is flat for PATIENCE "
            "epochs, then a cosine anneal over 3/4 as many epochs again, then stop (never "
            "beyond --epochs); cosine: one decay over all --epochs; default %(default)s",
        )
        p.add_argument(
            "--patience",
            type=int,
            default=TRAINER_DEFAULTS.patience,
            help="converge schedule: epochs without a 2%% lower eval loss (median of 3) "
            "before the anneal; default %(default)s",
        )
        p.add_argument(
            "--compute-dtype",
            "--precision",
            dest="compute_dtype",
            default=TRAINER_DEFAULTS.compute_dtype,
            choices=COMPUTE_DTYPES,
            help="training arithmetic (--precision is the old name); auto: bfloat16 where the CPU has it "
            "(AVX512-BF16/AMX), else float32. Exported models are float32",
        )
        p.add_argument(
            "--evidence-weight",
            type=float,
            default=TRAINER_DEFAULTS.evidence_weight,
            help="weight of the loss that keeps the class evidence inside known tumour "
            "boxes (0: off); default %(default)s",
        )
        p.add_argument(
            "--lesion-removal-rate",
            type=float,
            default=TRAINER_DEFAULTS.lesion_removal_rate,
            help="share of boxed tumour training images shown with the lesion removed, "
            "labelled notumor; default %(default)s",
        )
        p.add_argument(
            "--decoy-removal-rate",
            type=float,
            default=TRAINER_DEFAULTS.decoy_removal_rate,
            help="share of training images shown with a lesion-free box removed, "
            "label kept; default %(default)s",
        )
        p.add_argument(
            "--lesion-paste-rate",
            type=float,
            default=PipelineConfig.lesion_paste_rate,
            help="share of notumor training images shown with the lesion of a boxed "
            "tumour image pasted in, labelled with its class; default %(default)s",
        )
        p.add_argument(
            "--acquisition-strength",
            type=float,
            default=TRAINER_DEFAULTS.acquisition_strength,
            metavar="S",
            help="acquisition-style augmentation of every training image (bias field, "
            "resolution, noise, intensity curves, JPEG; docs/augmentation.md), its magnitudes "
            "scaled by S in [0, 1] (0: off), with --acquisition-augment; default %(default)s",
        )
        p.add_argument(
            "--acquisition-augment",
            action="store_true",
            help="train with the acquisition-style augmentation (off by default: "
            "docs/experiments.md, leave one source out)",
        )
        p.add_argument(
            "--accuracy-bound",
            type=float,
            default=DEFAULT_ACCURACY_LOWER_BOUND,
            help="absolute lower bound on accuracy for blessing (default %(default)s)",
        )
        p.add_argument(
            "--abstention-accept",
            type=float,
            default=TRAINER_DEFAULTS.abstention_accept,
            metavar="SHARE",
            help="the exported model's abstention thresholds are fitted "
            "to answer SHARE of the eval split (default %(default)s)",
        )
        p.add_argument(
            "--min-acceptance",
            type=float,
            default=PipelineConfig.abstention_min_acceptance,
            metavar="SHARE",
            help="refuse to bless a model that abstains on more than 1 - SHARE of the "
            "evaluated split (default %(default)s; negative: off)",
        )
        p.add_argument(
            "--no-abstention",
            action="store_true",
            help="export without ood_score/abstain/abstain_reason (and no acceptance gate)",
        )
        p.add_argument(
            "--audit-min-pointing",
            type=float,
            default=PipelineConfig.audit_min_pointing,
            metavar="SHARE",
            help="refuse to bless a model whose lesion-audit pointing game is below SHARE (default: off)",
        )
        p.add_argument(
            "--audit-min-removed-changed",
            type=float,
            default=PipelineConfig.audit_min_removed_changed,
            metavar="SHARE",
            help="refuse to bless a model whose answer changes on fewer than SHARE of the "
            "audit's slices once the lesion is removed (default: off)",
        )
        p.add_argument(
            "--beam-arg",
            action="append",
            default=[],
            metavar="ARG",
            help="Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner); "
            "default: DirectRunner, multi-processing, one worker per core",
        )
        p.add_argument(
            "--component-beam-arg",
            action="append",
            default=[],
            metavar="ID=ARG",
            help="Beam option for one Beam component only, after the pipeline's, "
            "repeatable (e.g. --component-beam-arg Evaluator=--direct_num_workers=1)",
        )
        p.add_argument(
            "--distribution",
            default=TRAINER_DEFAULTS.distribution,
            choices=DISTRIBUTIONS,
            help="tf.distribute strategy of the Trainer: none; mirrored (all local GPUs "
            "of one host); multi_worker (the hosts TF_CONFIG names). --batch-size "
            "is the global batch; the learning rate is not rescaled",
        )
        p.add_argument(
            "--input-sharding",
            default=TRAINER_DEFAULTS.input_sharding,
            choices=INPUT_SHARDING,
            help="multi_worker: workers split the training TFRecords by file (needs at "
            "least one file per worker) or by example; default %(default)s",
        )

    p = sub.add_parser("run", help="run the TFX pipeline locally, ending with a pushed model")
    p.add_argument(
        "--data-dir",
        default=None,
        help="images (Kaggle layout or class folders); default: synthetic phantoms",
    )
    p.add_argument(
        "--work-dir",
        default=DEFAULT_LAYOUT.work_dir,
        help="the run's folder: data/ (synthetic and prepared), pipeline/, serving/ (default %(default)s)",
    )
    pipeline_args(p, local=True)
    p.add_argument(
        "--beam-workers",
        default=None,
        metavar="SPEC",
        help="Beam workers of StatisticsGen, Transform, Evaluator, ...: N (DirectRunner, "
        "N processes; default one per core), in_memory, or external:HOST:PORT "
        "(PortableRunner; SDK workers from the Beam worker pool at HOST:PORT). "
        "--beam-arg options come after and win",
    )
    p.add_argument(
        "--beam-job-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="with --beam-workers external:...: a running Beam job service "
        "(default: one inside this process)",
    )
    p.add_argument(
        "--synthetic-per-class",
        type=int,
        default=400,
        help="training images per class of the synthetic default (test: a quarter); default %(default)s",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in a few minutes: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK_PRESET.items())
        + " unless given; blessed and pushed, but not a usable model",
    )
    p.add_argument(
        "--drop-cross-split-duplicates",
        action="store_true",
        help="prepare: leave out eval/test images that duplicate training images",
    )
    p.add_argument(
        "--boxes-dir",
        default=None,
        help="tumour slices with boxes (<class>/<id>.jpg + .txt): lesion-guided training "
        "and the lesion audit; default with synthetic data: its own boxes/",
    )
    add_split_arguments(p, "prepare: ", " (default WORK_DIR/data/held-out/NAME)")
    p.add_argument("--no-cache", action="store_true", help="re-run every component")
    add_output_flags(p, "no progress lines (components, epochs, audit)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compile", help="compile the pipeline to a Kubeflow Pipelines / Vertex AI spec")
    p.add_argument("--out", default="pipeline.json", help="spec file to write (default %(default)s)")
    p.add_argument("--data-root", required=True, help="prepared TFRecords (e.g. gs://bucket/prepared)")
    p.add_argument(
        "--image",
        default="brain-tumor-mri-tfx:latest",
        help="container image holding this package (see Dockerfile); default %(default)s",
    )
    p.add_argument(
        "--no-test-split", action="store_true", help="the prepared data has no test/ split: evaluate on eval"
    )
    p.add_argument(
        "--boxes-dir",
        default=None,
        help="tumour box folder as the workers see it (e.g. gs://bucket/boxes): adds the LesionAudit step",
    )
    p.add_argument(
        "--target",
        default=COMPILE_TARGETS[0],
        choices=COMPILE_TARGETS,
        help="kubeflow: every component in the project image; vertex: the Trainer as a "
        "Vertex AI training job (and, with --vertex-endpoint, the push to Vertex AI); "
        "default %(default)s",
    )
    v = VERTEX_DEFAULTS
    p.add_argument("--vertex-project", default=None, help="--target vertex: GCP project (required)")
    p.add_argument("--vertex-region", default=v.region, help="default %(default)s")
    p.add_argument(
        "--vertex-machine-type", default=v.machine_type, help="every training replica; default %(default)s"
    )
    p.add_argument(
        "--vertex-accelerator-type", default=v.accelerator_type, help="e.g. NVIDIA_TESLA_T4; default: none"
    )
    p.add_argument(
        "--vertex-accelerator-count", type=int, default=v.accelerator_count, help="accelerators per replica"
    )
    p.add_argument(
        "--vertex-replicas",
        type=int,
        default=v.replicas,
        help="training machines: one chief + N-1 workers (N > 1 needs --distribution "
        "multi_worker); default %(default)s",
    )
    p.add_argument(
        "--vertex-endpoint",
        default=v.endpoint_name,
        metavar="NAME",
        help="push the blessed model to this Vertex AI endpoint (Model Registry upload "
        "+ deploy) instead of --serving-dir",
    )
    p.add_argument(
        "--vertex-serving-image",
        default=v.serving_image,
        help="with --vertex-endpoint: a Vertex AI prebuilt TensorFlow prediction image",
    )
    p.add_argument(
        "--vertex-serving-machine-type",
        default=v.serving_machine_type,
        help="with --vertex-endpoint; default %(default)s",
    )
    pipeline_args(p, local=False)
    add_output_flags(p)
    p.set_defaults(func=_cmd_compile)

    from serving.cli import register as register_serving

    register_serving(sub)
    from pipeline.report.cli import register as register_report

    register_report(sub)
    from pipeline.audit_cli import register as register_audit

    register_audit(sub)
    from pipeline.monitor_cli import register as register_monitor

    register_monitor(sub)
    from pipeline.evaluate_cli import register as register_evaluate

    register_evaluate(sub)
    from pipeline.results_cli import register as register_results

    register_results(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    # A pipeline run keeps TensorFlow's warnings for its log (CapturedRun); the other
    # commands drop them unless -v.
    quiet_environment(verbose=getattr(args, "verbose", False), tf_warnings=args.command == "run")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
