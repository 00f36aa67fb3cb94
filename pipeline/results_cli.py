"""`btmri results`: a run's figures into the committed results record, and the
Markdown rendered from the records (pipeline/results.py)."""

from __future__ import annotations

import argparse

from btmri.cli_conventions import EXIT_OK, EXIT_REFUSED, add_output_flags, add_work_dir, error
from btmri.layout import RunLayout
from pipeline import results


def _cmd_results(args: argparse.Namespace) -> int:
    if args.from_run:
        from pipeline import run_record

        pipeline_root = RunLayout(args.work_dir).pipeline_root
        record = run_record.read(pipeline_root)
        if record is None:
            return error(
                "results",
                f"no run record in {pipeline_root}: run `btmri run --work-dir {args.work_dir}` first",
            )
        try:
            benchmark = results.read_benchmark(args.benchmark) if args.benchmark else None
            sites = dict(
                results.read_site_evaluation(s, record.get("pushed_to"), pipeline_root)
                for s in args.site_evaluation
            )
            made = results.make_record(
                record, results.confusion_of_run(pipeline_root), args.note, benchmark, sites
            )
        except results.ResultsError as err:
            return error("results", err)
        print(f"wrote {results.write_record(args.records, made)}")
    try:
        changed = results.render(args.records, args.readme, args.page, check=args.check)
    except (results.ResultsError, OSError) as err:
        return error("results", err)
    if args.check:
        if changed:
            print("out of date (run `btmri results` to render them): " + ", ".join(changed))
            return EXIT_REFUSED
        print(f"{args.readme} and {args.page} match the records in {args.records}")
        return EXIT_OK
    print("rendered " + (", ".join(changed) if changed else "nothing new") + f" from {args.records}")
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser(
        "results",
        help="render the results record into README.md and docs/results.md (--from-run: record a run first)",
        description="Renders the newest results record of each kind (real data, synthetic main "
        "job) from --records into the README's headline table and docs/results.md, between "
        f"their {results.BEGIN} / {results.END} lines. With --from-run, first makes a record "
        "of the work folder's last `btmri run`. Run from the repository root.",
    )
    p.add_argument(
        "--from-run",
        action="store_true",
        help="record the work folder's last run first (its run_record.json)",
    )
    add_work_dir(p, "with --from-run, its last run")
    p.add_argument(
        "--note",
        default="",
        help="with --from-run: what the figures do not say themselves, shown with them "
        "(e.g. 'cores shared with a CI run for most of it')",
    )
    p.add_argument(
        "--benchmark",
        metavar="JSON",
        default=None,
        help="with --from-run: keep benchmarks/training_cost.py --json figures (measured on this "
        "run's data) in the record; the tables show the training step against the machine's peak",
    )
    p.add_argument(
        "--site-evaluation",
        metavar="NAME=JSON",
        action="append",
        default=[],
        help="with --from-run: keep `btmri evaluate --out` figures of this run's model (pushed, "
        "or its Trainer's when none was) on a source it never trained on (evaluation.json), "
        "shown as NAME, overall and per tag; repeatable",
    )
    p.add_argument("--records", default=results.RECORDS_DIR, help="records folder (default %(default)s)")
    p.add_argument("--readme", default=results.README, help="default %(default)s")
    p.add_argument("--page", default=results.RESULTS_PAGE, help="default %(default)s")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the Markdown differs from the records",
    )
    add_output_flags(p)
    p.set_defaults(func=_cmd_results)
