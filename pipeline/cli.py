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
    add_options,
    add_output_flags,
    add_work_dir,
    error,
    exit_code_text,
    flag_for,
    options_from,
)
from btmri.console import quiet_environment
from btmri.layout import DEFAULT_LAYOUT, MANIFEST_FILE, RunLayout
from btmri.spec import SCHEDULE_CONVERGE

# `btmri run --quick`: a smoke run of every component, blessed and pushed in minutes.
# Gates are set so that a 1-epoch model passes them; flags given explicitly still win.
QUICK_PRESET = {
    "synthetic_per_class": 12,
    "epochs": 1,
    "batch_size": 8,
    "accuracy_lower_bound": 0.0,
    # A 1-epoch model's abstention is fitted on 8 eval images: on its 12 test images it
    # has abstained on 1 to more than half, by CPU kind. The gate still runs (a bound of
    # 0 passes); tests/pipeline/test_pipeline.py shows it refusing.
    "abstention_min_acceptance": 0.0,
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


def _cmd_prepare(args: argparse.Namespace) -> int:
    from data_prep.discover import LayoutError
    from data_prep.prepare import PrepareError, PrepareOptions, prepare, summary_table

    opts = PrepareOptions(
        data_dir=args.data_dir,
        out_dir=args.out,
        progress=not args.quiet,
        **options_from(args, PrepareOptions),
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


# Who labelled a slice `btmri slices --as-feedback` lists: the case's tumour mask.
SLICES_REVIEWER = "tumour mask (btmri slices)"


def _cmd_slices(args: argparse.Namespace) -> int:
    from data_prep.volumes import SliceOptions, slice_volumes, summary_lines

    opts = SliceOptions(**options_from(args, SliceOptions), progress=not args.quiet)
    try:
        summary = slice_volumes(args.volumes_dir, args.out, opts)
    except ValueError as err:
        return error("slices", err)
    except OSError as err:
        return error("slices", f"cannot write to {args.out}: {err.strerror or err}")
    print("\n".join(summary_lines(summary, args.out)))
    if args.as_feedback:
        from pipeline.review.export import EXPORT_CSV, label_folder_as_reviews

        count = label_folder_as_reviews(args.out, SLICES_REVIEWER)
        print(
            f"wrote {EXPORT_CSV}: {count} slices labelled by their masks; "
            f"`btmri run --feedback {args.out}` trains on them as site data"
        )
    return EXIT_OK


def _pipeline_config(args: argparse.Namespace, data_root: str, **overrides):
    """PipelineConfig from the arguments `run` and `compile` share (pipeline_args)."""
    from btmri.documents import TrainingSettings
    from pipeline.config import GATE_OPTIONS, PipelineConfig, component_beam_args

    # `run`: the work folder holds the whole run unless told otherwise.
    work = RunLayout(getattr(args, "work_dir", None) or DEFAULT_LAYOUT.work_dir)
    return PipelineConfig(
        pipeline_root=args.pipeline_root or work.pipeline_root,
        data_root=data_root,
        serving_dir=args.serving_dir or work.serving_dir,
        **options_from(args, TrainingSettings),
        **options_from(args, PipelineConfig, GATE_OPTIONS),
        component_beam_args=component_beam_args(args.component_beam_arg),
        **overrides,
    )


def _prepare_for_run(args: argparse.Namespace, work: RunLayout):
    """The run's prepared data (synthetic phantoms without --data-dir) and its box
    folder; PrepareError / LayoutError / ValueError for bad input."""
    from data_prep.feedback import describe
    from data_prep.prepare import summary_table
    from data_prep.synth import BOXES_DIR
    from pipeline.workdir import prepare_if_changed, synthesize_if_missing

    feedback = None
    if args.feedback:  # before any data is made: a wrong target is refused at once
        from pipeline.feedback import resolve

        feedback = resolve(args.feedback, work.work_dir)
        print(f"feedback: {len(feedback.by_file())} reviewed images from {feedback.origin} ({feedback.dir})")
    box_dir = args.boxes_dir
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
        feedback=feedback,
        progress=not args.quiet,
        box_dir=box_dir,
        drop_cross_split_duplicates=args.drop_cross_split_duplicates,
        split_unit=args.split_unit,
        hold_out_collection=args.hold_out_collection,
        hold_out_dir=args.hold_out_collection
        and (args.hold_out_dir or work.held_out_data(args.hold_out_collection)),
    )
    if prepared.reused:
        print(f"data unchanged since the last prepare: reusing {prepared.path}")
        if prepared.manifest.feedback:
            print(describe(prepared.manifest.feedback))
    else:
        print(summary_table(prepared.manifest))
    return prepared, box_dir


def _run_config(args: argparse.Namespace, data_root: str, box_dir: str | None):
    """The local run's PipelineConfig; ValueError for a bad combination."""
    from pipeline.config import beam_args, runs_beyond_this_process

    beam = (
        beam_args(args.beam_workers, args.beam_job_endpoint) + args.beam_arg
        if args.beam_workers or not args.beam_arg
        else args.beam_arg
    )
    # Workers of other runners import the project's code rather than TFX's staged
    # module-file wheels: functions by import path.
    return _pipeline_config(
        args,
        data_root,
        enable_cache=args.enable_cache,
        box_dir=box_dir,
        beam_pipeline_args=beam,
        use_module_files=not runs_beyond_this_process(beam),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from data_prep.discover import LayoutError
    from data_prep.prepare import PrepareError

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
    try:
        prepared, box_dir = _prepare_for_run(args, RunLayout(args.work_dir))
        config = _run_config(args, prepared.path, box_dir)
    except (PrepareError, LayoutError, ValueError) as err:
        return error("run", err)

    from components.executors import AnomaliesFound
    from pipeline import run_record
    from pipeline.local_runner import run_pipeline
    from pipeline.summary import summary_lines

    epochs = (
        f"at most {config.epochs} epochs: stops when the eval loss has converged"
        if config.schedule == SCHEDULE_CONVERGE
        else f"{config.epochs} epochs"
    )
    print(
        f"running pipeline {config.pipeline_name} (root {config.pipeline_root}, model {config.model}, {epochs})"
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
    record = run_record.write(
        run_record.build(summary, config, args.argv, prepared.manifest), config.pipeline_root
    )
    print(f"run record: {record} (`btmri results` turns it into the results record)")
    if held := prepared.manifest.held_out_collection:
        print(
            f"held out {sum(held['images'].values())} images of collection {held['collection']!r} "
            f"({held['units']} patients / groups) in {held['dir']}; grade the model on them with\n"
            f"  btmri evaluate {held['dir']} --model-dir {config.serving_dir}"
        )
    # Refused: the gates kept the model from the serving folder (a cached re-run of a
    # pushed model counts as pushed).
    return EXIT_OK if summary.pushed else EXIT_REFUSED


def _preset_flag(dest: str) -> str:
    from pipeline.config import PipelineConfig

    return flag_for(PipelineConfig, dest)


def _apply_preset(args: argparse.Namespace, preset: dict) -> None:
    """Sets each preset value on `args` unless its flag was given in args.argv."""
    for dest, value in preset.items():
        flag = _preset_flag(dest)
        if not any(token == flag or token.startswith(flag + "=") for token in args.argv):
            setattr(args, dest, value)


def _cmd_compile(args: argparse.Namespace) -> int:
    from pipeline.kubeflow_runner import compile_pipeline

    from btmri.documents import VertexOptions
    from btmri.spec import DISTRIBUTION_MULTI_WORKER

    vertex = None
    if args.target == "vertex":
        vertex = VertexOptions(image=args.image, **options_from(args, VertexOptions))
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


def _register_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the Kaggle layout")
    p.add_argument("--out", required=True, help="output folder (Training/, Testing/, masks/)")
    p.add_argument(
        "--per-class", type=int, default=100, help="training images per class (default %(default)s)"
    )
    p.add_argument(
        "--test-per-class", type=int, default=25, help="testing images per class (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed (default %(default)s)")
    add_output_flags(p, "no progress bar")
    p.set_defaults(func=_cmd_synth)


def _register_prepare(sub) -> None:
    from data_prep.prepare import PrepareOptions

    p = sub.add_parser("prepare", help="images → validated, split TFRecords + manifest.json")
    p.add_argument(
        "--data-dir", required=True, help="Kaggle layout (Training/, Testing/) or flat class folders"
    )
    p.add_argument("--out", required=True, help="output folder for train/ eval/ test/ shards")
    add_options(p, PrepareOptions)
    add_output_flags(p, "no progress bars")
    p.set_defaults(func=_cmd_prepare)


def _register_slices(sub) -> None:
    from data_prep.volumes import SliceOptions

    p = sub.add_parser(
        "slices",
        help="NIfTI volumes with a tumour mask (BraTS layout) → labelled slices for btmri evaluate",
        description="Axial slices of every case folder (<case>/<case>_<sequence>.nii.gz and "
        "<case>_seg.nii.gz) as class folders with tags.csv (patient, sequence), slices.csv and "
        "patients.csv: `btmri evaluate OUT --tags OUT/tags.csv` then measures the model per "
        "sequence with intervals over patients. A case that cannot be read is reported and skipped.",
    )
    p.add_argument("volumes_dir", metavar="VOLUMES", help="one folder per case")
    p.add_argument("--out", required=True, help="output folder (class folders, tags.csv, patients.csv)")
    p.add_argument(
        "--as-feedback",
        action="store_true",
        help="also write reviews.csv, every slice labelled by its mask, so that "
        "`btmri run --feedback OUT` trains on the slices as site data",
    )
    add_options(p, SliceOptions)
    add_output_flags(p, "no progress bar")
    p.set_defaults(func=_cmd_slices)


def _add_pipeline_arguments(p: argparse.ArgumentParser, local: bool) -> None:
    """What `run` and `compile` share: where the run writes, then every training setting
    and gate, each flag from its field (btmri.documents.option), then Beam options."""
    from btmri.documents import TrainingSettings
    from btmri.spec import MODEL_NAME
    from pipeline.config import GATE_OPTIONS, PipelineConfig

    p.add_argument(
        "--pipeline-root",
        default=None,
        required=not local,
        help="TFX artifacts (and, locally, ML Metadata)" + (" (default: WORK_DIR/pipeline)" if local else ""),
    )
    p.add_argument(
        "--serving-dir",
        default=None,
        required=not local,
        help="TF Serving model base path (<dir>/<version>/)"
        + (f" (default: WORK_DIR/serving/{MODEL_NAME})" if local else ""),
    )
    add_options(p.add_argument_group("training"), TrainingSettings)
    add_options(p.add_argument_group("blessing gates"), PipelineConfig, GATE_OPTIONS)
    p.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Beam pipeline option, repeatable (e.g. --beam-arg=--runner=FlinkRunner); "
        "default: DirectRunner inside this process",
    )
    p.add_argument(
        "--component-beam-arg",
        action="append",
        default=[],
        metavar="ID=ARG",
        help="Beam option for one Beam component only, after the pipeline's, "
        "repeatable (e.g. --component-beam-arg Evaluator=--direct_num_workers=1)",
    )


def _register_run(sub) -> None:
    from data_prep.prepare import PrepareOptions
    from pipeline.config import PipelineConfig

    p = sub.add_parser("run", help="run the TFX pipeline locally, ending with a pushed model")
    p.add_argument(
        "--data-dir",
        default=None,
        help="images (Kaggle layout or class folders); default: synthetic phantoms",
    )
    add_work_dir(p, "data/ (synthetic and prepared), pipeline/, serving/ go here")
    _add_pipeline_arguments(p, local=True)
    p.add_argument(
        "--beam-workers",
        default=None,
        metavar="SPEC",
        help="Beam workers of StatisticsGen, Transform, Evaluator, ...: in_memory (DirectRunner "
        "inside this process; the default), N (DirectRunner, N processes), or external:HOST:PORT "
        "(PortableRunner; SDK workers from the Beam worker pool at HOST:PORT). "
        "--beam-arg options come after and win",
    )
    p.add_argument(
        "--beam-job-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="with --beam-workers external:...: a running Beam job service (default: one inside this process)",
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
        + ", ".join(f"{_preset_flag(k)} {v}" for k, v in QUICK_PRESET.items())
        + " unless given; blessed and pushed, but not a usable model",
    )
    # The work folder decides where these three go, so their help says so; the other
    # preparation flags are prepare's own (PrepareOptions).
    p.add_argument(
        "--boxes-dir",
        default=None,
        help="tumour slices with boxes (<class>/<id>.jpg + .txt, patients.csv): lesion-guided "
        "training, splits by patient and the lesion audit; default with synthetic data: its own boxes/",
    )
    p.add_argument(
        "--hold-out-dir",
        default=None,
        help="with --hold-out-collection: where its images go (default WORK_DIR/data/held-out/NAME)",
    )
    p.add_argument(
        "--feedback",
        default=None,
        metavar="DB|DIR",
        help="labels from the site: the reviewed images of `btmri review` join the data as "
        "collection 'feedback' (its own TFMA slice), split by group into train and the evaluated "
        "split. An export folder (`btmri review --export DIR`) or a review database (SQLite file, "
        "sqlite:/// or postgresql:// URL), exported first into WORK_DIR/data/feedback/",
    )
    add_options(
        p.add_argument_group("data preparation (as btmri prepare)"),
        PrepareOptions,
        ("drop_cross_split_duplicates", "split_unit", "hold_out_collection"),
    )
    add_options(p, PipelineConfig, ("enable_cache",))
    add_output_flags(p, "no progress lines (components, epochs, audit)")
    p.set_defaults(func=_cmd_run)


def _register_compile(sub) -> None:
    from btmri.documents import VertexOptions
    from btmri.spec import COMPILE_TARGETS

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
    add_options(p.add_argument_group("Vertex AI (--target vertex)"), VertexOptions)
    _add_pipeline_arguments(p, local=False)
    add_output_flags(p)
    p.set_defaults(func=_cmd_compile)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.audit_cli import register as register_audit
    from pipeline.evaluate_cli import register as register_evaluate
    from pipeline.monitor_cli import register as register_monitor
    from pipeline.report.cli import register as register_report
    from pipeline.results_cli import register as register_results
    from pipeline.review.cli import register as register_review
    from serving.cli import register as register_serving

    parser = argparse.ArgumentParser(
        prog="btmri",
        description="Brain tumor MRI classifier: data, TFX pipeline, serving. Every subcommand "
        "takes -v/--verbose and -q/--quiet; those that read a run take --work-dir (default "
        f"{DEFAULT_LAYOUT.work_dir}), the folder `btmri run` wrote.",
        epilog=exit_code_text(),
    )
    parser.add_argument("--version", action="version", version=f"btmri {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (
        _register_synth,
        _register_prepare,
        _register_slices,
        _register_run,
        _register_compile,
        register_serving,
        register_report,
        register_audit,
        register_monitor,
        register_evaluate,
        register_results,
        register_review,
    ):
        register(sub)
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
