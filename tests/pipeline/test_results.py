"""The results record (pipeline/results.py): the README's headline table and
docs/results.md are rendered from the committed records, never typed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pipeline import results
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_markdown_is_what_the_committed_records_render():
    records = ROOT / results.RECORDS_DIR
    assert sorted(records.glob("*.json")), f"no results record in {records}"
    changed = results.render(
        str(records), str(ROOT / results.README), str(ROOT / results.RESULTS_PAGE), check=True
    )
    assert changed == [], f"out of date: {changed}; run `btmri results` from the repository root"


def _record(**changes) -> dict:
    """A copy of the newest committed record, changed."""
    newest = sorted((ROOT / results.RECORDS_DIR).glob("*.json"))[-1]
    record = json.loads(newest.read_text())
    record = copy.deepcopy(record)
    record.update(changes)
    return record


def test_render_replaces_only_the_marked_block_and_check_writes_nothing(tmp_path, capsys):
    records = tmp_path / "records"
    record = _record()
    results.write_record(str(records), record)
    page = tmp_path / "page.md"
    readme = tmp_path / "README.md"
    for path in (page, readme):
        path.write_text(f"before\n{results.BEGIN}\nstale figures\n{results.END}\nafter\n")
    argv = ["results", "--records", str(records), "--readme", str(readme), "--page", str(page)]
    assert main([*argv, "--check"]) == 1  # differs, and --check leaves it
    assert "stale figures" in page.read_text()
    assert main(argv) == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "stale figures" not in text
    assert format(record["report"]["accuracy"], ".3f") in text
    assert results.shown_command(record["command"]) in text and "/work/" not in text
    assert main([*argv, "--check"]) == 0
    # A newer record of the same kind wins; the figures follow it.
    newer = _record(finished_at="2999-01-01T00:00:00Z", report=dict(record["report"], accuracy=0.123))
    results.write_record(str(records), newer)
    assert main([*argv, "--check"]) == 1
    assert main(argv) == 0 and "0.123" in readme.read_text()


def test_a_file_without_its_markers_is_an_error(tmp_path, capsys):
    records = tmp_path / "records"
    results.write_record(str(records), _record())
    (tmp_path / "README.md").write_text("no markers here\n")
    (tmp_path / "page.md").write_text(f"{results.BEGIN}\n{results.END}\n")
    argv = ["results", "--records", str(records), "--readme", str(tmp_path / "README.md")]
    assert main([*argv, "--page", str(tmp_path / "page.md")]) == 2
    assert "needs exactly one pair" in capsys.readouterr().err


def test_from_run_without_a_run_says_what_to_do(tmp_path, capsys):
    assert main(["results", "--from-run", "--work-dir", str(tmp_path)]) == 2
    assert "run `btmri run --work-dir" in capsys.readouterr().err


@pytest.mark.parametrize("command, name", [("btmri run", "synthetic"), ("btmri run --data-dir x", "real")])
def test_a_record_is_named_by_its_data(command, name):
    assert results.record_name({"command": command}) == name


def test_the_shown_command_hides_this_machine():
    shown = results.shown_command("btmri run --data-dir /data/x/brain-tumor-mri --work-dir /tmp/w --quick")
    assert shown == "btmri run --data-dir /path/to/brain-tumor-mri --quick"


def test_the_provenance_names_the_instruction_set_a_timing_was_measured_on():
    base = _record()
    machine = {**base["machine"], "instruction_set": "AVX2"}
    block = results.render_readme_block({results.REAL: {**base, "machine": machine}})
    assert f"2 cores ({machine['cpu']}, AVX2)" in block.splitlines()[0]
    older = {**base["machine"]}
    older.pop("instruction_set", None)  # records made before the field existed
    block = results.render_readme_block({results.REAL: {**base, "machine": older}})
    assert f"2 cores ({older['cpu']})" in block.splitlines()[0]
    # ... and the kernels the Trainer ran, where the run recorded them.
    kernels = {"compute_dtype": "float32", "onednn": True}
    block = results.render_readme_block(
        {results.REAL: {**base, "machine": machine, "trainer_kernels": kernels}}
    )
    assert f"2 cores ({machine['cpu']}, AVX2), training in float32 with oneDNN kernels on, `" in block


BENCHMARK = {
    "policy": "mixed_bfloat16",
    "peak_gflops": {"float32": 200.0, "bfloat16": 400.0},
    "gflops_per_image": {"forward": 0.45, "training_step": 1.34},
    "training": {
        "images_per_s": 150.0,
        "peak_ratio": 0.5025,
        "model_alone_images_per_s": 199.0,
        "model_alone_peak_ratio": 0.6667,
        "input_pipeline_share": 0.246,
    },
    "evaluation": {"images_per_s": 669.0, "peak_ratio": 0.75},
}


def test_benchmark_figures_join_the_record_and_its_tables_show_the_ratio(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(BENCHMARK))
    record = results.make_record(_record(), None, benchmark=results.read_benchmark(str(path)))
    rows = dict(results.headline_rows(record))
    row = next(value for name, value in rows.items() if "matmul peak" in name)
    assert row.startswith("0.50× (model alone 0.67×; input pipeline 0.25 of a step)")
    assert not any("matmul peak" in name for name, _ in results.headline_rows(_record(benchmark=None)))
    assert not any("base-rate phase" in name for name in rows)
    small = {"size": 128, "images_per_s": 375.0, "peak_ratio": 0.41, "speedup": 2.5, "gflops_per_image": 0.44}
    with_small = json.loads(json.dumps(BENCHMARK))
    with_small["training"]["base_phase"] = small
    path.write_text(json.dumps(with_small))
    record = results.make_record(_record(), None, benchmark=results.read_benchmark(str(path)))
    rows = dict(results.headline_rows(record))
    row = next(value for name, value in rows.items() if "base-rate phase's 128×128" in name)
    assert row == "0.40× the time (0.41× the bfloat16 peak)"
    path.write_text(json.dumps({"training": {}}))
    with pytest.raises(results.ResultsError, match="not benchmarks/training_cost.py"):
        results.read_benchmark(str(path))


def test_the_new_patient_estimate_of_acceptance_is_shown_only_when_the_fit_made_one():
    record = _record()
    fitted = copy.deepcopy(record["report"])
    fitted["abstention"] = dict(
        fitted["abstention"], acceptance_cross_fitted=0.9012, cross_fitted_by="patient / near-duplicate group"
    )
    rows = dict(results.headline_rows(dict(record, report=fitted)))
    assert (
        rows["answered, estimate for new patients (cross-fitted by patient / near-duplicate group)"]
        == "0.901"
    )
    # Cross-fitted by image, the estimate would flatter new patients: no row for it.
    fitted["abstention"]["cross_fitted_by"] = "example"
    assert not any("new patients" in name for name, _ in results.headline_rows(dict(record, report=fitted)))


def _site_document(model: dict) -> dict:
    """`btmri evaluate`'s evaluation.json for 12 slices of 3 patients on two sequences:
    the tumours on t2 all answered notumor, those on t1c right."""
    from btmri import spec
    from pipeline import site_evaluation as se

    def probs(top: int) -> list[float]:
        p = [0.02] * spec.NUM_CLASSES
        p[top] = 0.94
        return p

    glioma, notumor = spec.CLASS_TO_ID["glioma"], spec.CLASS_TO_ID["notumor"]
    rows = [
        se.Row(
            f"{p}_{seq}_{i}",
            glioma,
            probs(glioma if seq == "t1c" else notumor),
            tags={"patient": p, "sequence": seq},
        )
        for p in ("a", "b", "c")
        for seq in ("t1c", "t2")
        for i in range(2)
    ]
    return json.loads(
        json.dumps(
            se.json_ready(se.build_document(rows, [], data_dir="/x", model=model, patient_tag="patient"))
        )
    )


def test_site_evaluations_join_the_record_per_tag_and_must_be_of_the_pushed_model(tmp_path):
    pushed = "/runs/serving/brain_tumor/1765000000"
    path = tmp_path / "evaluation.json"
    path.write_text(
        json.dumps(_site_document({"kind": "saved_model", "path": pushed, "version": 1765000000}))
    )
    name, site = results.read_site_evaluation(f"BraTS 2018={path}", pushed)
    assert name == "BraTS 2018" and set(site["slices"]) == {"sequence"}  # the patient tag is no table
    t2 = site["slices"]["sequence"]["t2"]
    assert t2["tumour_called_notumor"]["value"] == 1.0 and t2["n"] == 6
    assert site["slices"]["sequence"]["t1c"]["accuracy"]["value"] == 1.0
    assert site["figures"]["units"] == 3  # intervals over patients

    record = results.make_record(_record(), None, site_evaluations={name: site})
    rows = dict(results.headline_rows(record))
    row = next(
        value for label, value in rows.items() if label.startswith("BraTS 2018 (12 images, 3 patients)")
    )
    assert row.startswith("0.50 [") and row.endswith(" / 0.50 / 0.50 / 0.00")
    page = results.render_page_block({results.REAL: record})
    assert "| t2 | 6 | 0.00 (0/6) |" in page and "| t1c | 6 | 1.00 (6/6) |" in page

    # Another model's figures, or a file that is no evaluation, are refused.
    path.write_text(json.dumps(_site_document({"kind": "saved_model", "path": "/elsewhere/7", "version": 7})))
    with pytest.raises(results.ResultsError, match="not this run's model"):
        results.read_site_evaluation(f"BraTS={path}", pushed)
    # A run that pushed nothing: its Trainer's model, and only that, is the run's.
    trainer_model = tmp_path / "root" / "Trainer" / "model" / "8" / "Format-Serving"
    path.write_text(
        json.dumps(_site_document({"kind": "saved_model", "path": str(trainer_model), "version": None}))
    )
    assert results.read_site_evaluation(f"BraTS={path}", None, str(tmp_path / "root"))[0] == "BraTS"
    with pytest.raises(results.ResultsError, match="not this run's model"):
        results.read_site_evaluation(f"BraTS={path}", None, str(tmp_path / "other-root"))
    with pytest.raises(results.ResultsError, match="expected NAME=path"):
        results.read_site_evaluation(str(path), pushed)
    path.write_text("{}")
    with pytest.raises(results.ResultsError, match="as `btmri evaluate` output"):
        results.read_site_evaluation(f"BraTS={path}", pushed)
