"""The results record: a reference run's figures in one committed file, and the
Markdown rendered from it (`btmri results`).

A record (docs/results/<date>-<name>.json) is made from a work folder after `btmri
run`: its run_record.json (command, code, machine, timings, the report's and the
lesion audit's figures; pipeline/run_record.py) plus the evaluated split's confusion
matrix read from the run's TFMA output. `render` writes the newest record of each
name into docs/results.md and the newest `real` record's headline table into
README.md, each between the marker lines below, so no figure there is typed by hand.
A test renders the committed records and fails when the committed Markdown differs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from btmri.documents import write_atomic
from btmri.intervals import format_with_interval
from btmri.spec import CLASS_NAMES

RECORDS_DIR = "docs/results"
RESULTS_PAGE = "docs/results.md"
README = "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REAL, SYNTHETIC = "real", "synthetic"  # record names: the real-data run, the main job


class ResultsError(ValueError):
    pass


# ---- making a record -------------------------------------------------------------------


def record_name(record: dict) -> str:
    """`real` for a run on image folders, `synthetic` for the phantoms (no --data-dir)."""
    return REAL if "--data-dir" in record.get("command", "") else SYNTHETIC


def confusion_of_run(pipeline_root: str) -> list[list[int]] | None:
    """The evaluated split's confusion matrix [actual][predicted] from the run's TFMA output."""
    from pipeline.config import PipelineConfig
    from pipeline.local_runner import read_outcome

    outcome = read_outcome(PipelineConfig(pipeline_root=pipeline_root, data_root="", serving_dir=""))
    cm = outcome.evaluation.confusion if outcome.evaluation is not None else None
    return None if cm is None else [[int(v) for v in row] for row in cm]


BENCHMARK_KEYS = ("peak_gflops", "gflops_per_image", "training", "evaluation")  # training_cost.py --json


def read_benchmark(path: str) -> dict:
    """benchmarks/training_cost.py's --json figures, checked for what the record shows."""
    try:
        figures = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ResultsError(f"cannot read the benchmark figures {path}: {err}") from err
    missing = [key for key in BENCHMARK_KEYS if key not in figures]
    if missing:
        raise ResultsError(
            f"{path} is not benchmarks/training_cost.py --json output (no {', '.join(missing)})"
        )
    return figures


# Figures of `btmri evaluate` a record keeps, overall and per tag value, and their
# column titles in results.md.
SITE_FIGURES = (
    ("accuracy", "accuracy"),
    ("abstained", "abstained"),
    ("wrong_confident", "wrong and confident"),
    ("tumour_called_notumor", "tumours called notumor"),
    ("tumour_top_class_notumor", "tumours whose top class is notumor (abstention aside)"),
)


def _site_figures(figures: dict) -> dict:
    kept = {"n": figures["n"]}
    for key, _ in SITE_FIGURES:
        fig = figures[key]
        kept[key] = {k: fig[k] for k in ("value", "ci95", "successes", "n") if k in fig}
    if units := figures["accuracy"].get("units"):
        kept["units"] = units
    return kept


def _same_model(evaluated: dict, pushed_to: str | None, pipeline_root: str | None) -> bool:
    """Whether `btmri evaluate` measured the run's model: its pushed version folder, or
    (a run whose model was not blessed) the Trainer's model under its pipeline root."""
    if evaluated.get("kind") != "saved_model":
        return False
    path = Path(evaluated["path"]).resolve()
    if pipeline_root and Path(pipeline_root, "Trainer").resolve() in path.parents:
        return True
    if not pushed_to:
        return False
    version = evaluated.get("version")
    return path == Path(pushed_to).resolve() or (version is not None and Path(pushed_to).name == str(version))


def read_site_evaluation(
    spec: str, pushed_to: str | None, pipeline_root: str | None = None
) -> tuple[str, dict]:
    """`NAME=evaluation.json` (`btmri evaluate --out` of this run's model on a source it
    never trained on) → (NAME, what the record keeps of it)."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path:
        raise ResultsError(f"--site-evaluation {spec!r}: expected NAME=path/to/evaluation.json")
    try:
        document = json.loads(Path(path).read_text())
        figures, model = document["figures"], document["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ResultsError(f"cannot read {path} as `btmri evaluate` output: {err}") from err
    if not _same_model(model, pushed_to, pipeline_root):
        where = model.get("path") or model.get("address")
        raise ResultsError(
            f"{path} measured the model at {where}, not this run's model (pushed: {pushed_to}): "
            "evaluate the pushed model (`btmri evaluate DIR --work-dir <the run's folder>`) or, "
            "when none was pushed, the Trainer's (--model-dir <pipeline root>/Trainer/model/<n>/Format-Serving)"
        )
    patient_tag = document.get("patient_tag")
    return name.strip(), {
        "data_dir": document.get("data_dir"),
        "intervals": document.get("intervals"),
        "figures": _site_figures(figures),
        "slices": {
            tag: {value: _site_figures(fig) for value, fig in values.items()}
            for tag, values in document.get("slices", {}).items()
            if tag != patient_tag
        },
    }


def make_record(
    run_record: dict,
    confusion: list[list[int]] | None,
    note: str = "",
    benchmark: dict | None = None,
    site_evaluations: dict[str, dict] | None = None,
) -> dict:
    """`note`: what the run's figures do not say themselves (e.g. cores shared with other
    jobs); `benchmark`: benchmarks/training_cost.py's figures on this run's data;
    `site_evaluations`: {name: read_site_evaluation(...)[1]}, the pushed model on
    sources it never trained on."""
    if not run_record.get("report"):
        raise ResultsError("the run has no report figures (did its ModelReport run?)")
    record = dict(run_record, confusion=confusion, note=note)
    if benchmark is not None:
        record["benchmark"] = benchmark
    if site_evaluations:
        record["site_evaluations"] = site_evaluations
    return record


def record_path(records_dir: str, record: dict) -> Path:
    return Path(records_dir, f"{record['finished_at'][:10]}-{record_name(record)}.json")


def write_record(records_dir: str, record: dict) -> Path:
    return write_atomic(record_path(records_dir, record), json.dumps(record, indent=1) + "\n")


def latest_records(records_dir: str) -> dict[str, dict]:
    """The newest record of each name (file names sort by date)."""
    newest: dict[str, dict] = {}
    for path in sorted(Path(records_dir).glob("*.json")):
        record = json.loads(path.read_text())
        newest[record_name(record)] = record
    return newest


# ---- rendering ---------------------------------------------------------------------------


def _ci(figure: dict, digits: int = 2) -> str:
    return format_with_interval(figure["value"], figure["ci95"], digits=digits)


def _recalls(confusion: list[list[int]] | None) -> str | None:
    if not confusion:
        return None
    parts = []
    for k, name in enumerate(CLASS_NAMES):
        total = sum(confusion[k])
        parts.append(f"{name} {confusion[k][k] / total:.3f}" if total else f"{name} n/a")
    return ", ".join(parts)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def headline_rows(record: dict) -> list[tuple[str, str]]:
    report = record["report"]
    units = report.get("units", report["n"])
    by = "bootstrap over patients / groups" if report.get("interval_method") != "wilson" else "Wilson"
    rows = [
        (
            f"accuracy, {report['evaluated_split']} split ({report['n']:,} images, {units:,} "
            f"patients / groups; 95 % interval: {by})",
            format_with_interval(report["accuracy"], report["accuracy_ci95"]),
        )
    ]
    if recalls := _recalls(record.get("confusion")):
        rows.append(("recall per class", recalls))
    if abstention := report.get("abstention"):
        rows.append(("answered (did not abstain)", f"{abstention['acceptance']:.3f}"))
        # The fitted thresholds' own estimate for patients not in the split (abstention.json).
        by, estimate = abstention.get("cross_fitted_by", "example"), abstention.get("acceptance_cross_fitted")
        if by != "example" and estimate is not None:
            rows.append((f"answered, estimate for new patients (cross-fitted by {by})", f"{estimate:.3f}"))
    if shortcut := report.get("shortcut_control"):
        rows.append(
            (
                f"shortcut control: image statistics, no pixels (chance {shortcut['chance_accuracy']:.3f})",
                format_with_interval(shortcut["accuracy"], shortcut["accuracy_ci95"]),
            )
        )
    if audit := record.get("lesion_audit"):
        overall = audit["summary"]["overall"]
        who = f"{overall['slices']} slices, {overall.get('units', overall['slices'])} patients / units"
        rows += [
            (f"lesion audit ({who}): heatmap peak in the tumour box", _ci(overall["pointing"])),
            ("lesion audit: share of the heat in the box", f"{overall['mass_in_box']['value']:.2f}"),
            ("lesion audit: tumour removed → answer changes", _ci(overall["removed_changed"])),
            ("lesion audit: tumour removed → notumor", f"{overall['removed_notumor']['value']:.2f}"),
        ]
    serving = report.get("serving_validation") or {}
    if serving.get("grpc_p50_ms") is not None:
        rows.append(
            (
                "served predict_images, one image: p50 / p99 latency (gRPC)",
                f"{serving['grpc_p50_ms']:.0f} / {serving['grpc_p99_ms']:.0f} ms",
            )
        )
    if bench := record.get("benchmark"):
        dtype = "bfloat16" if "bfloat16" in bench["policy"] else "float32"
        training = bench["training"]
        rows.append(
            (
                f"training step against the machine's {dtype} matmul peak (benchmarks/training_cost.py)",
                f"{training['peak_ratio']:.2f}× (model alone {training['model_alone_peak_ratio']:.2f}×; "
                f"input pipeline {training['input_pipeline_share']:.2f} of a step)",
            )
        )
        if small := training.get("base_phase"):
            rows.append(
                (
                    f"training step on the base-rate phase's {small['size']}×{small['size']} images "
                    "against a full-size one (benchmarks/training_cost.py)",
                    f"{1 / small['speedup']:.2f}× the time ({small['peak_ratio']:.2f}× the {dtype} peak)",
                )
            )
    for name, site in record.get("site_evaluations", {}).items():
        fig = site["figures"]
        who = f"{fig['n']:,} images" + (f", {fig['units']} patients" if fig.get("units") else "")
        rows.append(
            (
                f"{name} ({who}), never trained on: accuracy (abstentions count as wrong) / tumours "
                "called notumor / wrong and confident / abstained",
                f"{_ci(fig['accuracy'])} / {fig['tumour_called_notumor']['value']:.2f} / "
                f"{fig['wrong_confident']['value']:.2f} / {fig['abstained']['value']:.2f}",
            )
        )
    trainer = record.get("component_seconds", {}).get("Trainer")
    rows.append(
        (
            f"whole run on {record['machine']['cores']} cores",
            _minutes(record["seconds"]) + (f" (Trainer {_minutes(trainer)})" if trainer else ""),
        )
    )
    return rows


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("figure", "value")) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]


def shown_command(command: str) -> str:
    """The command as a reader can repeat it: absolute paths as /path/to/<name>, and
    without --work-dir (where this machine kept the run)."""
    words, out = command.split(), []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--work-dir":
            skip = True
            continue
        out.append(f"/path/to/{Path(word).name}" if word.startswith("/") else word)
    return " ".join(out)


def _provenance(record: dict) -> str:
    m = record["machine"]
    note = f" {record['note'].rstrip('.')}." if record.get("note") else ""
    kernels = record.get("trainer_kernels") or {}
    trained = (
        f", training in {kernels['compute_dtype']} with oneDNN kernels {'on' if kernels['onednn'] else 'off'}"
        if kernels
        else ""
    )
    return (
        f"Run of {record['finished_at'][:10]}, code `{record['code']}`, {m['cores']} cores "
        f"({', '.join(filter(None, (m['cpu'], m.get('instruction_set'))))}){trained}, "
        f"`{shown_command(record['command'])}`.{note} Figures:"
    )


def render_readme_block(records: dict[str, dict]) -> str:
    record = records.get(REAL) or records.get(SYNTHETIC)
    if record is None:
        raise ResultsError("no results record to render")
    return "\n".join([_provenance(record), "", *_table(headline_rows(record))])


def render_page_block(records: dict[str, dict]) -> str:
    if not records:
        raise ResultsError("no results record to render")
    lines: list[str] = []
    titles = {REAL: "Real data (the Kaggle training images)", SYNTHETIC: "The main job (synthetic phantoms)"}
    for name in (REAL, SYNTHETIC):
        record = records.get(name)
        if record is None:
            continue
        lines += [f"## {titles[name]}", "", _provenance(record), "", *_table(headline_rows(record)), ""]
        if schedule := record.get("schedule"):
            anneal = schedule.get("anneal_start_epoch")
            epochs = schedule.get("epochs_run")
            lines += [
                f"Training: {epochs} epoch{'' if epochs == 1 else 's'}, schedule {schedule.get('schedule')}"
                + (f", anneal from epoch {anneal}" if anneal else "")
                + (f" ({schedule['reason']})" if schedule.get("reason") else "")
                + ".",
                "",
            ]
        lines += site_evaluation_tables(record)
        steps = sorted(record.get("component_seconds", {}).items(), key=lambda kv: -kv[1])
        phases = record.get("trainer_phase_seconds", {})
        lines += _table(
            [(step, f"{seconds:.1f} s") for step, seconds in steps]
            + [(f"Trainer: {phase}", f"{seconds:.1f} s") for phase, seconds in phases.items()],
            ("step", "wall time"),
        )
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _share(fig: dict | None) -> str:
    return (
        "–" if not fig or fig.get("value") is None else f"{fig['value']:.2f} ({fig['successes']}/{fig['n']})"
    )


def site_evaluation_tables(record: dict) -> list[str]:
    """Per source the model never trained on: one table per tag (e.g. sequence)."""
    lines: list[str] = []
    columns = SITE_FIGURES
    for name, site in record.get("site_evaluations", {}).items():
        lines += [f"**{name}**, never trained on ({site.get('intervals') or ''}):", ""]
        tables = {"all": {"all images": site["figures"]}, **site.get("slices", {})}
        for tag, values in tables.items():
            lines.append(f"| {tag} | images | " + " | ".join(title for _, title in columns) + " |")
            lines.append("|---" * (len(columns) + 2) + "|")
            for value, fig in values.items():
                lines.append(
                    f"| {value} | {fig['n']} | "
                    + " | ".join(_share(fig.get(key)) for key, _ in columns)
                    + " |"
                )
            lines.append("")
    return lines


def replace_block(text: str, block: str, where: str) -> str:
    """`text` with what lies between the BEGIN and END marker lines replaced by `block`."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ResultsError(f"{where} needs exactly one pair of {BEGIN} / {END} lines")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


def render(
    records_dir: str, readme: str = README, page: str = RESULTS_PAGE, check: bool = False
) -> list[str]:
    """Renders the records into `readme` and `page`; returns the files that changed
    (with `check`, that would change, writing nothing)."""
    records = latest_records(records_dir)
    changed = []
    for path, block in ((readme, render_readme_block(records)), (page, render_page_block(records))):
        old = Path(path).read_text()
        new = replace_block(old, block, path)
        if new != old:
            changed.append(path)
            if not check:
                write_atomic(Path(path), new)
    return changed
