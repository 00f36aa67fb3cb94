"""Labels from the site back into the data (`btmri run --feedback`, data_prep/feedback.py,
pipeline/feedback.py): a review export (written by the real store and export) joins a
tiny phantom dataset as the collection `feedback`, split by group into train and the
evaluated split, with its provenance in the manifest; bad targets are refused."""

from __future__ import annotations

import contextlib
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from btmri import spec
from btmri.cli_conventions import EXIT_USAGE
from data_prep.feedback import FeedbackError, mlmd_properties
from data_prep.prepare import PrepareOptions, prepare, summary_table
from data_prep.synth import generate_dataset, render_phantom
from data_prep.tfrecords import read_split
from pipeline.cli import main as btmri
from pipeline.feedback import read_export, resolve
from pipeline.review.export import CSV_COLUMNS, export_reviews
from pipeline.review.store import UNUSABLE, Review, open_store

PER_CLASS = 5  # reviewed phantoms per class: one per class falls in the held-out share (0.15)
VERSIONS = (3, 4)  # the model versions that answered, alternately


def _phantom(name: str, seed: int) -> bytes:
    image, _ = render_phantom(name, np.random.default_rng(np.random.SeedSequence([7919, seed])))
    return cv2.imencode(".png", image)[1].tobytes()


def _review(record: str, label: str, i: int, reviewer: str = "ana") -> Review:
    return Review(
        record_id=record,
        label=label,
        reviewer=reviewer,
        reviewed_at=f"2026-12-0{1 + i % 7}T10:00:{i % 60:02d}.000000Z",
        model_name=spec.MODEL_NAME,
        model_version=VERSIONS[i % 2],
        model_answer="glioma",
        abstain_reason="",
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A tiny phantom dataset and a review database of the site: PER_CLASS reviewed images
    per class, one image sent twice (two records, one group), one copy of a dataset
    training image, one review superseded, one 'not a usable slice', one without image."""
    root = tmp_path_factory.mktemp("feedback")
    data = root / "data"
    generate_dataset(data, per_class=6, test_per_class=2, seed=0, progress=False)
    db = root / "reviews.sqlite"
    store = open_store(str(db))
    n = 0
    for name in spec.CLASS_NAMES:
        for i in range(PER_CLASS):
            store.add(
                _review(f"requests-a.tfrecord#{n}/0", name, n, ("ana", "ben")[i % 2]), _phantom(name, n)
            )
            n += 1
    twice = _phantom("glioma", 1000)
    store.add(_review("requests-b.tfrecord#0/0", "glioma", n), twice)
    store.add(_review("requests-b.tfrecord#1/0", "glioma", n + 1), twice)
    # A copy of a training image the dataset alone puts in eval: it must stay beside it
    # (in eval, although the feedback's own held-out images go to test).
    alone = prepare(PrepareOptions(str(data), str(root / "alone"), workers=1, progress=False))
    assert sum(alone.counts[spec.EVAL_SPLIT].values())
    copied = data / next(e["source"] for e in read_split(root / "alone", spec.EVAL_SPLIT))
    store.add(_review("requests-b.tfrecord#2/0", copied.parent.name, n + 2), copied.read_bytes())
    store.add(_review("requests-b.tfrecord#3/0", "glioma", n + 3), _phantom("meningioma", 1001))
    store.add(_review("requests-b.tfrecord#3/0", "meningioma", n + 4, "ben"))  # the reader's second thought
    store.add(_review("requests-b.tfrecord#4/0", UNUSABLE, n + 5), _phantom("notumor", 1002))
    store.add(_review("requests-b.tfrecord#5/0", "notumor", n + 6))  # logged without its image
    store.close()
    export = root / "export"
    with contextlib.closing(open_store(str(db))) as reviews:
        export_reviews(reviews, export)
    copied_source = copied.relative_to(data).as_posix()
    return {"root": root, "data": data, "db": db, "export": export, "copied": copied_source}


@pytest.fixture(scope="module")
def prepared(site, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("prepared")
    feedback = read_export(site["export"])
    manifest = prepare(PrepareOptions(str(site["data"]), str(out), workers=1, progress=False), feedback)
    examples = {s: read_split(out, s) for s in manifest.splits}
    return {"manifest": manifest, "examples": examples, "feedback": feedback, "out": out}


def test_the_feedback_reader_reads_every_column_it_needs():
    from dataclasses import fields

    from data_prep.feedback import FeedbackReview

    assert {f.name for f in fields(FeedbackReview)} <= set(CSV_COLUMNS)


def test_reviewed_images_join_as_their_own_collection(site, prepared):
    manifest, examples = prepared["manifest"], prepared["examples"]
    section = manifest.feedback
    used = 4 * PER_CLASS + 2 + 1 + 1  # per class, the image sent twice, the copy, the changed label
    written = [e for split in examples.values() for e in split if e["source"].startswith("feedback/")]
    assert len(written) == used == sum(sum(c.values()) for c in section["counts"].values())
    assert {e["collection"] for e in written} == {spec.FEEDBACK_COLLECTION}
    others = [e for split in examples.values() for e in split if not e["source"].startswith("feedback/")]
    assert spec.FEEDBACK_COLLECTION not in {e["collection"] for e in others}
    # The manifest counts them per split and class; the dataset's counts include them.
    for split, per_class in section["counts"].items():
        for name, count in per_class.items():
            got = sum(
                1
                for e in examples[split]
                if e["source"].startswith("feedback/") and e["label"] == spec.CLASS_TO_ID[name]
            )
            assert got == count, (split, name)
    assert section["counts"]["train"]["meningioma"] >= 1
    assert sum(section["counts"].get("test", {}).values()) >= 1  # the feedback slice exists
    assert "feedback (collection 'feedback')" in summary_table(manifest)


def test_held_out_feedback_goes_to_the_evaluated_split_and_no_group_is_split(site, prepared):
    examples, section = prepared["examples"], prepared["manifest"].feedback
    assert section["evaluated_split"] == spec.TEST_SPLIT  # the dataset has Testing/
    splits_of_unit: dict[str, set[str]] = defaultdict(set)
    for split, rows in examples.items():
        for e in rows:
            splits_of_unit[e["patient"]].add(split)
    feedback_units = {
        e["patient"] for rows in examples.values() for e in rows if e["source"].startswith("feedback/")
    }
    assert all(len(splits_of_unit[u]) == 1 for u in feedback_units)
    where = {e["source"]: (split, e["patient"]) for split, rows in examples.items() for e in rows}
    # Only the copy of a dataset image sits in eval: it follows its original.
    copy_source = next(i["source"] for i in section["images"] if i["record_id"] == "requests-b.tfrecord#2/0")
    assert where[copy_source] == where[site["copied"]] and where[copy_source][0] == spec.EVAL_SPLIT
    own = [i for i in section["images"] if i["source"] != copy_source]
    assert {i["split"] for i in own} == {spec.TRAIN_SPLIT, spec.TEST_SPLIT}
    # The image sent twice is one group.
    twice = [
        i
        for i in section["images"]
        if i["record_id"] in ("requests-b.tfrecord#0/0", "requests-b.tfrecord#1/0")
    ]
    assert len({(i["split"], i["unit"]) for i in twice}) == 1


def test_the_manifest_says_which_reviews_and_model_versions(prepared):
    section = prepared["manifest"].feedback
    prov = section["provenance"]
    images = section["images"]
    assert prov["reviews"] == len(images) == len(set(prov["review_ids"]))
    assert sorted(i["review_id"] for i in images) == prov["review_ids"]
    assert prov["reviewers"] == ["ana", "ben"]
    assert {v["model_version"] for v in prov["model_versions"]} == set(VERSIONS)
    assert sum(v["reviews"] for v in prov["model_versions"]) == prov["reviews"]
    assert prov["reviewed_from"] <= prov["reviewed_to"]
    changed = next(i for i in images if i["record_id"] == "requests-b.tfrecord#3/0")
    assert (changed["label"], changed["reviewer"]) == ("meningioma", "ben")  # the current review only
    assert (section["reviews_unusable"], section["reviews_without_image"]) == (1, 1)
    assert section["reviews_listed"] == len(images) + 2
    props = mlmd_properties(section)
    assert props["feedback_images"] == len(images) and props["feedback_reviews"] == prov["reviews"]
    assert '"brain_tumor:3"' in props["feedback_model_versions"]


def test_a_database_is_exported_under_the_work_dir_and_keeps_its_key(site, tmp_path):
    direct = read_export(site["export"])
    by_path = resolve(str(site["db"]), str(tmp_path))
    by_url = resolve(f"sqlite:///{site['db']}", str(tmp_path))  # sqlite:////abs/file
    assert Path(by_path.dir).parent == tmp_path / "data" / "feedback"
    assert by_path.dir == by_url.dir and by_path.origin == str(site["db"])
    # Exported again, the same reviews give the same key: prepared data is reused.
    assert by_path.fingerprint() == by_url.fingerprint() == direct.fingerprint()


def _refused(target: str, work: Path, capsys) -> str:
    capsys.readouterr()
    assert btmri(["run", "--work-dir", str(work), "--quick", "--feedback", target]) == EXIT_USAGE
    assert not (work / "data" / "synthetic").exists()  # refused before any data was made
    return capsys.readouterr().err


def test_bad_feedback_is_refused_with_exit_2(site, tmp_path, capsys):
    work = tmp_path / "work"
    assert "no such export folder or review database" in _refused(str(tmp_path / "nothing"), work, capsys)
    assert "no review database" in _refused(f"sqlite:///{tmp_path}/none.sqlite", work, capsys)
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    assert "neither an export folder nor a SQLite" in _refused(str(text), work, capsys)
    assert "no reviews.csv" in _refused(str(site["data"]), work, capsys)

    unknown = tmp_path / "unknown_class"
    shutil.copytree(site["export"], unknown)
    (unknown / "astrocytoma").mkdir()
    shutil.copy(next((unknown / "glioma").iterdir()), unknown / "astrocytoma" / "x.png")
    assert "unknown class folder 'astrocytoma'" in _refused(str(unknown), work, capsys)

    unlisted = tmp_path / "unlisted"
    shutil.copytree(site["export"], unlisted)
    shutil.copy(next((unlisted / "glioma").iterdir()), unlisted / "glioma" / "extra.png")
    assert "no review lists" in _refused(str(unlisted), work, capsys)

    empty_db = tmp_path / "empty.sqlite"
    open_store(str(empty_db)).close()
    assert "no reviews in" in _refused(str(empty_db), work, capsys)

    unusable_db = tmp_path / "unusable.sqlite"
    store = open_store(str(unusable_db))
    store.add(_review("r#0/0", UNUSABLE, 0), _phantom("glioma", 5))
    store.add(_review("r#1/0", "glioma", 1))  # no image logged
    store.close()
    err = _refused(str(unusable_db), work, capsys)
    assert "no usable reviews (2 reviews: 1 'not a usable slice', 1 with a class but no logged image)" in err

    with pytest.raises(FeedbackError, match="unknown URL scheme 'mysql'"):
        resolve("mysql://host/db", str(work))
    # No PostgreSQL driver, or nothing listening on port 1: refused either way, as usage.
    with pytest.raises(FeedbackError, match="postgres"):
        resolve("postgresql://reviewer@127.0.0.1:1/reviews", str(work))


def test_the_model_card_states_the_feedback_and_its_slice(prepared):
    from types import SimpleNamespace

    from pipeline.report.model_card import feedback_paragraphs
    from pipeline.report.predictions import Predictions

    manifest = prepared["manifest"]
    rows = prepared["examples"][spec.TEST_SPLIT]
    labels = np.array([e["label"] for e in rows])
    predicted = labels.copy()
    wrong = next(i for i, e in enumerate(rows) if e["collection"] == spec.FEEDBACK_COLLECTION)
    predicted[wrong] = (labels[wrong] + 1) % spec.NUM_CLASSES  # one feedback image called wrong
    predictions = Predictions(
        labels,
        np.eye(spec.NUM_CLASSES)[predicted],
        [e["source"] for e in rows],
        [e["image"] for e in rows],
        patients=[e["patient"] for e in rows],
        collections=[e["collection"] for e in rows],
    )
    data = SimpleNamespace(
        data=SimpleNamespace(manifest=manifest),
        run=SimpleNamespace(evaluated_split="test"),
        predictions=predictions,
    )
    first, second = feedback_paragraphs(data)
    held = sum(manifest.feedback["counts"]["test"].values())
    assert (
        f"{sum(sum(c.values()) for c in manifest.feedback['counts'].values())} images from the site" in first
    )
    assert "24 reviews by 2 reviewers (ana, ben)" in first and "brain_tumor version 3" in first
    assert "1 'not a usable slice', 1 without a logged image" in first
    assert f"the {held} feedback images of the test split" in second
    assert f"{(held - 1) / held:.3f}" in second and "collection: feedback" in second

    others = predictions.subset(np.array([c != spec.FEEDBACK_COLLECTION for c in predictions.collections]))
    _, none = feedback_paragraphs(SimpleNamespace(**{**vars(data), "predictions": others}))
    assert none.startswith("None of them is in the test split")
    no_feedback = SimpleNamespace(**{**vars(data), "data": SimpleNamespace(manifest=None)})
    assert feedback_paragraphs(no_feedback) == []
