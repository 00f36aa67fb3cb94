"""Closing the loop: the tiny run's model is served with request logging, answers new
phantoms, a reader's reviews of them go into the review store (the page itself is
tested in test_review_browser.py), and `btmri run --quick --feedback <db>` trains the
next model on them: the feedback is its own TFMA slice, in the model card, the run
record and ML Metadata."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from btmri import spec
from btmri.documents import Manifest
from data_prep.synth import render_phantom
from pipeline import run_record
from pipeline.config import PipelineConfig
from pipeline.metadata import feedback_provenance
from pipeline.report.artifacts import find_run
from pipeline.report.tfma_results import flatten_metrics, load_candidate
from pipeline.review.cases import load_cases
from pipeline.review.store import UNUSABLE, Review, open_store, utc_now
from serving.client import PredictionClient
from serving.process import ServerProcess
from tests.conftest import btmri_run, only_version

PER_CLASS = 6  # new phantoms per class sent to the server: one per class is held out (0.15)


def _phantom(name: str, seed: int) -> bytes:
    """A phantom the synthetic dataset does not hold (its own seed sequence)."""
    image, _ = render_phantom(name, np.random.default_rng(np.random.SeedSequence([4099, seed])))
    return cv2.imencode(".png", image)[1].tobytes()


def _config(work: Path) -> PipelineConfig:
    return PipelineConfig(
        pipeline_root=str(work / "pipeline"),
        data_root=str(work / "data" / "prepared" / "current"),
        serving_dir=str(work / "serving"),
    )


@pytest.mark.slow
@pytest.mark.timeout(40 * 60)  # two quick runs (the session's tiny run, then this one) on shared cores
def test_reviewed_requests_train_the_next_model_and_are_its_own_slice(tiny_run, tmp_path):
    sent = {
        _phantom(name, 100 * k + i): name for k, name in enumerate(spec.CLASS_NAMES) for i in range(PER_CLASS)
    }
    log_dir = tmp_path / "requests"
    with ServerProcess(
        tiny_run / "serving",
        "--request-log",
        str(log_dir),
        "--log-payload",
        spec.LOG_PAYLOAD_IMAGES,
        log_path=tmp_path / "serve.log",
    ) as server:
        with PredictionClient(server.grpc_target) as client:
            answered_by = {client.classify_image(image).model_version for image in sent}
    # The server has stopped, so its log file is closed and readable.
    cases = load_cases(log_dir, max_abstained=1000, answered=1000).cases
    assert sorted(c.image for c in cases) == sorted(sent)

    db = tmp_path / "reviews.sqlite"
    store = open_store(str(db))
    for i, case in enumerate(cases):
        store.add(
            Review(
                case.record_id,
                sent[case.image],
                ("ana", "ben")[i % 2],
                utc_now(),
                case.model_name,
                case.model_version,
                case.top_class,
                case.abstain_reason,
            ),
            image=case.image,
        )
    unusable = cases[0]  # the reader thinks again: not a usable slice
    store.add(
        Review(unusable.record_id, UNUSABLE, "ben", utc_now(), unusable.model_name, unusable.model_version)
    )
    store.close()

    work = tmp_path / "work"
    assert btmri_run(work, "--feedback", str(db)) == 0

    # The manifest: counts per split, every image's review.
    manifest = Manifest.read(work / "data" / "prepared" / "current")
    section = manifest.feedback
    used = len(sent) - 1
    assert sum(sum(c.values()) for c in section["counts"].values()) == used
    held_out = sum(section["counts"][spec.TEST_SPLIT].values())
    assert 0 < held_out < used and section["reviews_unusable"] == 1
    assert {i["record_id"] for i in section["images"]} == {c.record_id for c in cases} - {unusable.record_id}

    # TFMA: the feedback slice of the new model's evaluation.
    config = _config(work)
    run = find_run(config)
    assert run.evaluated_split == spec.TEST_SPLIT
    slices = {
        tuple((name, value.decode() if isinstance(value, bytes) else value) for name, value in key): metrics
        for key, metrics in load_candidate(run.evaluation_uri).slicing_metrics
    }
    feedback_slice = flatten_metrics(slices[((spec.COLLECTION_KEY, spec.FEEDBACK_COLLECTION),)])
    assert feedback_slice["example_count"] == held_out
    accuracy = feedback_slice["sparse_categorical_accuracy"]

    # The model card of the pushed version says so, with the slice's figure.
    card = (only_version(work / "serving") / "MODEL_CARD.md").read_text()
    feedback_part = card.split("## Feedback", 1)[1].split("\n## ", 1)[0]
    assert f"{used} images from the site" in feedback_part
    assert f"{used} reviews by 2 reviewers (ana, ben)" in feedback_part
    version = only_version(tiny_run / "serving").name
    assert (
        answered_by == {int(version)} and f"brain_tumor version {version} ({used} reviews)" in feedback_part
    )
    assert f"the {held_out} feedback images of the test split" in feedback_part
    assert f": {accuracy:.3f} [" in feedback_part

    # ML Metadata and the run record keep the provenance.
    properties = feedback_provenance(config)
    assert properties["feedback_images"] == properties["feedback_reviews"] == used
    assert json.loads(properties["feedback_review_ids"]) == section["provenance"]["review_ids"]
    assert json.loads(properties["feedback_model_versions"]) == [f"{spec.MODEL_NAME}:{version}"]
    record = run_record.read(config.pipeline_root)
    assert record["feedback"]["provenance"] == section["provenance"] and "images" not in record["feedback"]
