"""Abstention inside the exported model (components/training/abstention.py): the fitted
thresholds accept the configured share of the fitting data, the graph decides as the
NumPy reference does, a model whose features make blanks and noise far from brain
slices by construction abstains on them through every signature, and the model the
tiny pipeline pushed carries the three outputs and abstention.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import btmri  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from btmri import spec
from data_prep.tfrecords import request_example
from btmri.layout import ABSTENTION_FILE
from btmri.spec import (
    ABSTAIN,
    ABSTAIN_REASON,
    ABSTENTION_OUTPUTS,
    OOD_SCORE,
    REASON_LOW_CONFIDENCE,
    REASON_OUT_OF_DISTRIBUTION,
    REASON_UNCERTAIN_NO_TUMOUR,
)
from components.training import abstention, outliers
from btmri.spec import (
    CLASS_NAMES,
    IMAGE_KEY,
    KAGGLE_TESTING_DIR,
    KAGGLE_TRAINING_DIR,
    NOTUMOR_ID,
    NUM_CLASSES,
    class_id,
)

K = NUM_CLASSES


def _blobs(rng, n, dims=(6, 20)):
    """Class-conditional Gaussian features for two layers, labels and softmax probabilities."""
    labels = rng.integers(0, K, n)
    feats = []
    for d in dims:
        centres = rng.normal(0, 3, (K, d))
        mix = rng.normal(0, 1, (d, d)) / np.sqrt(d)
        feats.append(centres[labels] + rng.normal(0, 1, (n, d)) @ (np.eye(d) + mix))
    logits = rng.normal(0, 1, (n, K))
    logits[np.arange(n), labels] += rng.uniform(0, 4, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return feats, labels, probs.astype(np.float32)


def _without_confidence_floor(spec, **notumor_rules) -> abstention.AbstentionSpec:
    """`spec`'s distance threshold with the notumor rules given and no confidence floor."""
    return abstention.AbstentionSpec(
        spec.layers, spec.ood_threshold, 0.0, spec.accept, spec.ood_share, **notumor_rules
    )


@pytest.mark.parametrize("accept, n", [(0.95, 400), (0.9, 57), (0.99, 123), (0.8, 9)])
def test_thresholds_accept_at_least_the_configured_share_of_the_fitting_data(accept, n):
    feats, labels, probs = _blobs(np.random.default_rng(n), n)
    # All three rules, at the default notumor share: these blobs are right only about 70 %
    # of the time, so the notumor floor has many wrong answers below it and must give way.
    # Half the budget to the distance, so both of the mechanisms below have some.
    spec = abstention.fit(["a", "b"], feats, labels, probs, accept=accept, ood_share=0.5)
    _, abstain, reason = spec.decide(probs, feats)
    assert 1 - abstain.mean() >= accept
    assert spec.fit_report["accepted_share"] == pytest.approx(1 - abstain.mean())
    # ... and so does the cross-fitted decision, the estimate for images not fitted on.
    assert spec.fit_report["accepted_share_cross_fitted"] >= accept
    # Both mechanisms are used when the budget is large enough (the distance threshold
    # comes from cross-fitted distances, so in-sample ones rarely pass it on small sets).
    if n >= 300:
        assert (reason == REASON_OUT_OF_DISTRIBUTION).any() and (reason == REASON_LOW_CONFIDENCE).any()
    # Far-away points are out of distribution; the score is scaled so 1 is the threshold.
    far = [f[:5] + 50.0 for f in feats]
    score, far_abstain, far_reason = spec.decide(probs[:5], far)
    assert (score > 1).all() and far_abstain.all() and (far_reason == REASON_OUT_OF_DISTRIBUTION).all()


def _patients(rng, n_patients, slices, centres):
    """Features of patients whose slices are near copies: each patient its own offset
    from its class centre, each slice a small jitter of it; labels, patient ids, probabilities."""
    labels = rng.integers(0, K, n_patients)
    offsets = centres[labels] + rng.normal(0, 1.0, (n_patients, centres.shape[1]))
    feats = np.repeat(offsets, slices, axis=0) + rng.normal(0, 0.15, (n_patients * slices, centres.shape[1]))
    probs = np.full((n_patients * slices, K), 0.02, np.float32)
    labels = np.repeat(labels, slices)
    probs[np.arange(len(labels)), labels] = 0.94
    return feats, labels, np.repeat([f"patient:{i}" for i in range(n_patients)], slices), probs


def test_cross_fitting_by_patient_keeps_its_promise_on_new_patients():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 3, (K, 24))
    feats, labels, patients, probs = _patients(rng, 60, 8, centres)
    new_feats = _patients(rng, 400, 1, centres)[0]
    kw = dict(accept=0.9, ood_share=1.0, notumor_refuse=0.0, notumor_ood_refuse=0.0)
    by_example = abstention.fit(["x"], [feats], labels, probs, **kw)
    by_patient = abstention.fit(["x"], [feats], labels, probs, groups=patients, **kw)
    assert by_example.fit_report["cross_fitted_by"] == "example"
    assert by_patient.fit_report["cross_fitted_by"] == "patient / near-duplicate group"
    assert by_patient.fit_report["units"] == 60
    # Both promise 0.9 of the images they were not fitted on ...
    for fitted in (by_example, by_patient):
        assert fitted.fit_report["accepted_share_cross_fitted"] >= 0.9
    # ... but a slice scored beside its own patient's other slices looks familiar: cross-
    # fitted by example, the threshold is far too tight for a patient never seen.
    assert np.mean(by_example.ood_scores([new_feats]) <= 1) < 0.6
    assert np.mean(by_patient.ood_scores([new_feats]) <= 1) >= 0.85


def test_folds_by_group_keep_every_group_whole():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 37, 500).astype(str)
    fold = abstention._folds(rng.integers(0, K, 500), 5, seed=1, groups=groups)
    assert all(len(set(fold[groups == g])) == 1 for g in np.unique(groups))
    assert len(set(fold)) == 5  # and every fold is used


def test_a_notumor_answer_needs_its_own_higher_floor():
    feats, labels, probs = _blobs(np.random.default_rng(11), 400)
    notumor = NOTUMOR_ID
    # The floor alone (the distance bound has its own test).
    kw = dict(accept=0.95, notumor_ood_refuse=0.0)
    spec = abstention.fit(["a", "b"], feats, labels, probs, notumor_refuse=0.05, **kw)
    off = abstention.fit(["a", "b"], feats, labels, probs, notumor_refuse=0.0, **kw)
    assert off.notumor_floor == 0.0 < spec.notumor_floor
    _, abstain, reason = spec.decide(probs, feats)
    said_notumor = probs.argmax(1) == notumor
    unsure = reason == REASON_UNCERTAIN_NO_TUMOUR
    assert unsure.any() and (said_notumor[unsure]).all()
    assert (probs[unsure, notumor] < spec.notumor_floor).all()
    # It refuses at most the asked share of the right notumor answers ...
    right = said_notumor & (labels == notumor)
    assert unsure[right].sum() <= 0.1 * right.sum()
    # ... and the confidence floor gives way, so three rules together still answer `accept`.
    assert 1 - abstain.mean() >= 0.95 and spec.fit_report["accepted_share_cross_fitted"] >= 0.95
    assert spec.fit_report["abstained_uncertain_no_tumour"] == int(unsure.sum())
    # A tumour class at the same probability is answered: the rule is for notumor only.
    tumour = np.roll(probs[unsure][:1], 1, axis=1)
    assert tumour.argmax() != notumor
    assert spec.decide(tumour, [f[unsure][:1] for f in feats])[2][0] != REASON_UNCERTAIN_NO_TUMOUR


def test_the_notumor_floor_gives_way_where_it_alone_would_refuse_more_than_the_budget():
    """A weak model calls many tumours notumor, unsure: the floor wanted for the right
    notumor answers would refuse those too, past the budget. It is lowered until the
    three rules together answer `accept`, and the report keeps the floor it wanted."""
    rng = np.random.default_rng(5)
    feats, labels, probs = _blobs(rng, 400)
    notumor = NOTUMOR_ID
    tumour = np.flatnonzero(labels != notumor)[:100]
    probs[tumour] = (1 - 0.4) / (K - 1)
    probs[tumour, notumor] = rng.uniform(0.3, 0.5, len(tumour))  # argmax notumor, unsure
    probs /= probs.sum(1, keepdims=True)
    spec = abstention.fit(
        ["a", "b"], feats, labels, probs, accept=0.95, notumor_refuse=0.3, notumor_ood_refuse=0.0
    )
    wanted = spec.fit_report["notumor_floor_wanted"]
    assert 0.0 < spec.notumor_floor < wanted
    _, abstain, reason = spec.decide(probs, feats)
    assert 1 - abstain.mean() >= 0.95 and spec.fit_report["accepted_share_cross_fitted"] >= 0.95
    # It gave way no further than it had to: refusing again the last notumor answer it let
    # back in (the floor sits a rounding margin under it) leaves too few answered, in
    # sample or cross-fitted.
    stricter = _without_confidence_floor(spec, notumor_floor=spec.notumor_floor + 2 * abstention._MARGIN)
    _, refused, reason = stricter.decide(probs, feats)
    cross_fitted = (spec.cross_fitted_scores <= 1) & (reason != REASON_UNCERTAIN_NO_TUMOUR)
    assert min(1 - refused.mean(), cross_fitted.mean()) < 0.95


def test_a_notumor_answer_needs_an_image_closer_than_the_distance_threshold():
    """A notumor answer whose ood_score is past the notumor bound (but under 1) is refused
    as uncertain_no_tumour; a tumour answer at that score is not. The bound refuses at
    most the asked share of the right notumor answers; the threshold for all answers moves
    out to pay for it, so the distance keeps to its share of the budget."""
    feats, labels, probs = _blobs(np.random.default_rng(13), 400)
    kw = dict(accept=0.95, notumor_refuse=0.0)
    spec = abstention.fit(["a", "b"], feats, labels, probs, notumor_ood_refuse=0.1, **kw)
    off = abstention.fit(["a", "b"], feats, labels, probs, notumor_ood_refuse=0.0, **kw)
    assert off.notumor_ood_bound == 1.0 > spec.notumor_ood_bound > 0.0
    assert spec.fit_report["notumor_ood_bound_wanted"] == spec.notumor_ood_bound  # no give-way here
    assert spec.fit_report["ood_threshold_unpaid"] < 1.0 and spec.ood_threshold > off.ood_threshold
    distance_share = 1 - spec.ood_share * (1 - spec.accept)
    cross_fitted = spec.cross_fitted_scores
    said = probs.argmax(1) == NOTUMOR_ID
    distance_ok = (cross_fitted <= 1) & ~(said & (cross_fitted > spec.notumor_ood_bound))
    assert distance_ok.mean() >= distance_share
    score, abstain, reason = spec.decide(probs, feats)
    said_notumor = probs.argmax(1) == NOTUMOR_ID
    unsure = reason == REASON_UNCERTAIN_NO_TUMOUR
    assert unsure.any() and said_notumor[unsure].all()
    assert (score[unsure] > spec.notumor_ood_bound).all() and (score[unsure] <= 1.0).all()
    assert spec.fit_report["abstained_unfamiliar_no_tumour"] == int(unsure.sum())
    right = said_notumor & (labels == NOTUMOR_ID)
    assert unsure[right].sum() <= 0.1 * right.sum()
    assert 1 - abstain.mean() >= 0.95 and spec.fit_report["accepted_share_cross_fitted"] >= 0.95
    # The same image answered with a confident tumour class: answered.
    first = np.flatnonzero(unsure)[:1]
    confident_tumour = np.full((1, K), 0.01, np.float32)
    confident_tumour[0, (NOTUMOR_ID + 1) % K] = 1 - 0.01 * (K - 1)
    assert spec.decide(confident_tumour, [f[first] for f in feats])[2][0] == ""
    # And a confident notumor answer there is still refused: probability does not buy it back.
    confident_notumor = np.roll(confident_tumour, NOTUMOR_ID - (NOTUMOR_ID + 1) % K, axis=1)
    assert spec.decide(confident_notumor, [f[first] for f in feats])[2][0] == REASON_UNCERTAIN_NO_TUMOUR


def test_the_notumor_distance_bound_gives_way_where_it_alone_would_refuse_more_than_the_budget():
    feats, labels, probs = _blobs(np.random.default_rng(17), 400)
    # Refusing 60 % of the right notumor answers is far past the distance's 3 % of the budget.
    spec = abstention.fit(["a", "b"], feats, labels, probs, accept=0.95, notumor_ood_refuse=0.6)
    wanted = spec.fit_report["notumor_ood_bound_wanted"]
    assert wanted < spec.notumor_ood_bound <= 1.0
    _, abstain, _ = spec.decide(probs, feats)
    assert 1 - abstain.mean() >= 0.95 and spec.fit_report["accepted_share_cross_fitted"] >= 0.95
    # It gave way no further than it had to: refusing again the last notumor answer it let
    # back in leaves the distance rules passing too few, in sample or cross-fitted.
    stricter = _without_confidence_floor(
        spec, notumor_ood_bound=spec.notumor_ood_bound - 2 * abstention._MARGIN
    )
    _, refused, _ = stricter.decide(probs, feats)
    said_notumor = probs.argmax(1) == NOTUMOR_ID
    cross_fitted = (spec.cross_fitted_scores <= 1) & ~(
        said_notumor & (spec.cross_fitted_scores > stricter.notumor_ood_bound)
    )
    assert min(1 - refused.mean(), cross_fitted.mean()) < 1 - spec.ood_share * (1 - spec.accept)


def test_the_graph_decides_as_the_numpy_reference():
    rng = np.random.default_rng(7)
    feats, labels, probs = _blobs(rng, 300)
    spec = abstention.fit(["a", "b"], feats, labels, probs)
    test_feats, _, test_probs = _blobs(np.random.default_rng(7), 300)  # same centres, new noise
    test_feats = [f + rng.normal(0, 0.5, f.shape) for f in test_feats]
    out = abstention.outputs(spec, tf.constant(test_probs), [tf.constant(f, tf.float32) for f in test_feats])
    score, abstain, reason = spec.decide(test_probs, test_feats)
    assert out[OOD_SCORE].dtype == tf.float32 and out[ABSTAIN].dtype == tf.bool
    assert out[ABSTAIN_REASON].dtype == tf.string
    np.testing.assert_allclose(out[OOD_SCORE].numpy(), score, rtol=1e-3)
    assert spec.notumor_ood_bound < 1.0  # the notumor distance rule is in the graph too
    # float32 vs float64 may differ right at a threshold
    close = (np.abs(score - 1) < 1e-3) | (np.abs(score - spec.notumor_ood_bound) < 1e-3)
    assert (out[ABSTAIN].numpy() == abstain)[~close].all()
    assert ([r.decode() for r in out[ABSTAIN_REASON].numpy()] == reason)[~close].all()
    assert 0.02 < abstain.mean() < 0.5


def test_a_non_finite_score_abstains():
    feats, labels, probs = _blobs(np.random.default_rng(3), 100)
    spec = abstention.fit(["a", "b"], feats, labels, probs)
    nan = [np.full_like(f[:2], np.nan) for f in feats]
    out = abstention.outputs(spec, tf.constant(probs[:2]), [tf.constant(f, tf.float32) for f in nan])
    assert out[ABSTAIN].numpy().all()
    assert [r.decode() for r in out[ABSTAIN_REASON].numpy()] == [REASON_OUT_OF_DISTRIBUTION] * 2


def test_auroc_matches_its_definition():
    inside, outside = np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.25, 1.0, 2.0])
    expected = np.mean([[o > i for i in inside] for o in outside])
    assert abstention.auroc(inside, outside) == pytest.approx(expected)
    assert abstention.auroc(np.zeros(3), np.zeros(2)) == pytest.approx(0.5)


def test_generated_outliers_are_deterministic_pngs_of_every_kind():
    a, b = outliers.outlier_images(3, seed=5), outliers.outlier_images(3, seed=5)
    assert set(a) == set(outliers.KINDS) and a == b
    for images in a.values():
        for png in images:
            image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            assert image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) >= 160


def test_photograph_like_scenes_fill_the_frame_with_natural_image_statistics():
    rng = np.random.default_rng(2)
    for _ in range(5):
        image = outliers.scene(rng).astype(np.float64)
        assert (image < 15).mean() < 0.1  # no dark background around an object, unlike a scan
        # Amplitude falls with frequency (1/f-like): low bands carry more than high ones.
        amplitude = np.abs(np.fft.fft2(image - image.mean()))
        fy, fx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
        radius = np.hypot(fy, fx)
        low = amplitude[(radius > 0.01) & (radius < 0.05)].mean()
        high = amplitude[(radius > 0.2) & (radius < 0.4)].mean()
        assert low > 5 * high


# ---- an exported model, abstaining on blanks and noise by construction ---------------


@tf.autograph.experimental.do_not_convert
def _image_statistics(x):
    """[N, h, w, 1] → [N, 4]: mean, spread, share of dark pixels, mean gradient magnitude."""
    dy, dx = tf.image.image_gradients(x)
    return tf.stack(
        [
            tf.reduce_mean(x, [1, 2, 3]),
            tf.math.reduce_std(x, [1, 2, 3]),
            tf.reduce_mean(tf.cast(x < 0.1, tf.float32), [1, 2, 3]),
            tf.reduce_mean(tf.abs(dx) + tf.abs(dy), [1, 2, 3]),
        ],
        axis=1,
    )


def _statistics_model() -> keras.Model:
    """A 'classifier' whose penultimate features are image statistics: mean, spread,
    share of dark pixels and mean gradient magnitude. Brain slices (a head on a dark
    background) sit in a small region of that space; a blank frame (no spread, no
    edges) and uniform noise (no dark background, huge gradients) lie far outside it
    by construction."""
    from components.training.models import GRADCAM_LAYER, LOGITS_LAYER
    from components.transform.preprocessing import CHANNELS, IMAGE_SIZE, IMAGE_XF

    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS), name=IMAGE_XF)

    # The map gradcam reads; a (trainable) 1x1 identity convolution, so a gradient tape
    # records the path from it to the logits.
    grid = keras.layers.Activation("linear", name=GRADCAM_LAYER)(
        keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")(
            keras.layers.AveragePooling2D(4)(inputs)
        )
    )
    features = keras.layers.Lambda(_image_statistics, name="statistics")(grid)
    logits = keras.layers.Dense(K, name=LOGITS_LAYER)(features)
    probs = keras.layers.Activation("softmax", name="probabilities")(logits)
    return keras.Model(inputs, probs)


def _transform_output(tiny_run: Path):
    import tensorflow_transform as tft

    (graph,) = (tiny_run / "pipeline" / "Transform" / "transform_graph").iterdir()
    return tft.TFTransformOutput(str(graph))


def _phantoms(tiny_run: Path, split: str) -> tuple[list[bytes], np.ndarray]:
    root = tiny_run / "data" / "synthetic" / split
    files = [(p, class_id(name)) for name in CLASS_NAMES for p in sorted((root / name).glob("*.png"))]
    return [p.read_bytes() for p, _ in files], np.array([k for _, k in files])


@pytest.fixture(scope="module")
def constructed_model(tiny_run, tmp_path_factory) -> Path:
    from btmri.documents import parse_trainer_config
    from components.training.trainer import fit_abstention, make_signatures

    xf = _transform_output(tiny_run)
    model = _statistics_model()
    images, labels = _phantoms(tiny_run, KAGGLE_TRAINING_DIR)
    tft_layer = xf.transform_features_layer()
    decoded = tft_layer({IMAGE_KEY: tf.reshape(tf.constant(images), [-1, 1])})["image_xf"]
    eval_ds = tf.data.Dataset.from_tensor_slices((decoded, (labels, tf.zeros([len(labels), 1])))).batch(8)
    spec = fit_abstention(
        model,
        eval_ds,
        xf,
        parse_trainer_config(
            {
                "abstention_outliers_per_kind": 0,
                "seed": 0,
                "abstention_accept": 0.95,
                "abstention_ood_share": 0.6,
                # An untrained head: most of its notumor answers are wrong, and a notumor
                # floor would give way to them. This test is about the distance.
                "abstention_notumor_refuse": 0.0,
            }
        ),
    )
    model.tft_layer = xf.transform_features_layer()
    out = tmp_path_factory.mktemp("constructed") / "model"
    model.save(str(out), save_format="tf", signatures=make_signatures(model, xf, spec))
    abstention.write(spec, str(out))
    return out


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def test_constructed_model_abstains_on_blank_and_noise_through_every_signature(constructed_model, tiny_run):
    loaded = tf.saved_model.load(str(constructed_model))
    rng = np.random.default_rng(0)
    probes = [
        _png(np.zeros((256, 256), np.uint8)),
        _png(np.full((200, 300), 255, np.uint8)),
        _png(np.full((256, 256), 128, np.uint8)),
        _png(rng.integers(0, 256, (256, 256), dtype=np.uint8)),
    ]
    brains, _ = _phantoms(tiny_run, KAGGLE_TESTING_DIR)
    examples = [request_example(b) for b in probes + brains]
    calls = {
        spec.PREDICT_IMAGES: {spec.IMAGE_BYTES_INPUT: tf.constant(probes + brains)},
        spec.GRADCAM: {spec.IMAGE_BYTES_INPUT: tf.constant(probes + brains)},
        spec.SERVING_DEFAULT: {spec.EXAMPLES_INPUT: tf.constant(examples)},
    }
    answers = {}
    for name, inputs in calls.items():
        out = {k: v.numpy() for k, v in loaded.signatures[name](**inputs).items()}
        assert set(ABSTENTION_OUTPUTS) <= set(out), name
        n = len(probes) + len(brains)
        assert out[OOD_SCORE].shape == (n,) and out[OOD_SCORE].dtype == np.float32
        assert out[ABSTAIN].shape == (n,) and out[ABSTAIN].dtype == np.bool_
        assert out[ABSTAIN_REASON].shape == (n,)
        assert out[spec.PROBABILITIES].shape == (n, K)  # the existing outputs stay
        reasons = [r.decode() for r in out[ABSTAIN_REASON]]
        assert reasons[: len(probes)] == [REASON_OUT_OF_DISTRIBUTION] * len(probes), (name, out[OOD_SCORE])
        assert out[ABSTAIN][: len(probes)].all()
        assert all((r == "") != a for r, a in zip(reasons, out[ABSTAIN]))
        # Phantoms of the other split are mostly answered.
        assert out[ABSTAIN][len(probes) :].mean() <= 0.25, out[OOD_SCORE][len(probes) :]
        answers[name] = out[OOD_SCORE]
    np.testing.assert_allclose(answers[spec.PREDICT_IMAGES], answers[spec.GRADCAM], rtol=1e-5)
    np.testing.assert_allclose(answers[spec.PREDICT_IMAGES], answers[spec.SERVING_DEFAULT], rtol=1e-5)
    written = json.loads((constructed_model / ABSTENTION_FILE).read_text())
    assert written["accepted_share"] >= written["accept"] == 0.95


def test_the_first_feature_set_is_kept_unless_another_is_clearly_better_on_the_outliers():
    # The last real run's figures: every set near 0.999 on generated outliers; a later set
    # one or two ten-thousandths higher no longer replaces the first.
    assert abstention.preferred([0.99843, 0.99810, 0.99867]) == 0
    assert abstention.preferred([0.990, 0.999, 0.9992]) == 1  # 0.009 better; the third not 0.005 above it
    assert abstention.preferred([0.90, 0.93, 0.96]) == 2
    assert abstention.preferred([None, None]) == 0  # no outliers: the first
    assert abstention.CANDIDATES[0] == (abstention.SPATIAL, abstention.PENULTIMATE)


# ---- the model the tiny pipeline pushed ----------------------------------------------


def test_pushed_model_returns_the_abstention_outputs_and_its_thresholds(tiny_run):
    (version,) = [p for p in (tiny_run / "serving").iterdir() if p.name.isdigit()]
    written = json.loads((version / ABSTENTION_FILE).read_text())
    assert written["accepted_share"] >= written["accept"]
    # The Trainer read the eval split's patients / groups and cross-fitted by them.
    manifest = json.loads((tiny_run / "data" / "prepared" / "current" / "manifest.json").read_text())
    assert written["cross_fitted_by"] == "patient / near-duplicate group"
    assert written["units"] == manifest["units"]["eval"]["units"]
    assert written["feature_choice"]["chosen"] == written["features"]
    assert {c["features"][-1] for c in written["feature_choice"]["candidates"]} == {abstention.PENULTIMATE}
    loaded = tf.saved_model.load(str(version))
    for name in (spec.SERVING_DEFAULT, spec.PREDICT_IMAGES, spec.GRADCAM):
        outputs = loaded.signatures[name].structured_outputs
        assert set(ABSTENTION_OUTPUTS) <= set(outputs), name
        assert outputs[ABSTAIN].dtype == tf.bool and outputs[OOD_SCORE].dtype == tf.float32


# ---- the Evaluator's gate ------------------------------------------------------------


def test_tfma_acceptance_metric_counts_answers_and_ignores_models_without_abstain():
    from tensorflow_model_analysis.metrics import metric_types

    from components.evaluation import ACCEPTANCE, _AcceptanceCombiner

    def run(key, elements):
        combiner = _AcceptanceCombiner(key)
        halves = [combiner.create_accumulator(), combiner.create_accumulator()]
        for i, element in enumerate(elements):
            halves[i % 2] = combiner.add_input(halves[i % 2], element)
        return combiner.extract_output(combiner.merge_accumulators(halves))[key]

    single = metric_types.MetricKey(name=ACCEPTANCE)
    elements = [
        metric_types.StandardMetricInputs({"predictions": {ABSTAIN: np.array([a])}})
        for a in (False, True, False, False)
    ]
    assert run(single, elements) == 0.75
    # With a baseline, predictions are keyed by model; an old baseline has no `abstain`.
    candidate = metric_types.MetricKey(name=ACCEPTANCE, model_name="candidate")
    baseline = metric_types.MetricKey(name=ACCEPTANCE, model_name="baseline")
    both = [
        metric_types.StandardMetricInputs(
            {
                "predictions": {
                    "candidate": {ABSTAIN: np.array([a])},
                    "baseline": {"probabilities": np.ones(4) / 4},
                }
            }
        )
        for a in (True, False)
    ]
    assert run(candidate, both) == 0.5
    assert np.isnan(run(baseline, both))


def test_gate_threshold_is_in_the_eval_config_only_when_asked():
    from components.evaluation import ACCEPTANCE, AbstentionAcceptance, eval_config

    def acceptance_configs(config):
        return [
            m
            for spec in config.metrics_specs
            for m in spec.metrics
            if m.class_name == AbstentionAcceptance.__name__
        ]

    (gated,) = acceptance_configs(eval_config(0.5, min_acceptance=0.9))
    (threshold,) = gated.per_slice_thresholds
    assert threshold.threshold.value_threshold.lower_bound.value == 0.9
    (reported,) = acceptance_configs(eval_config(0.5))
    assert not reported.per_slice_thresholds
    assert AbstentionAcceptance().name == ACCEPTANCE


# ---- what clients say -----------------------------------------------------------------


def test_clients_say_abstained_instead_of_a_class():
    from serving.client import ImagePrediction, _prediction

    probs = [0.1, 0.2, 0.6, 0.1]
    answered = _prediction(
        2, probs, 7, {OOD_SCORE: np.float32(0.4), ABSTAIN: np.bool_(False), ABSTAIN_REASON: b""}
    )
    assert answered.answer == "notumor"
    assert answered.as_record() == {
        "class": "notumor",
        "answer": "notumor",
        "probabilities": {"glioma": 0.1, "meningioma": 0.2, "notumor": 0.6, "pituitary": 0.1},
        "model_version": 7,
        "ood_score": pytest.approx(0.4),
        "abstain": False,
        "abstain_reason": "",
    }
    out = _prediction(
        2, probs, 7, {OOD_SCORE: 3.25, ABSTAIN: True, ABSTAIN_REASON: REASON_OUT_OF_DISTRIBUTION}
    )
    assert out.answer == (
        "abstained: not recognised as a brain MRI slice like the training images "
        "(ood_score 3.25, over 1 is unlike them)"
    )
    record = out.as_record()
    assert record["class"] is None and record["abstain"] is True and record["ood_score"] == 3.25
    assert record["abstain_reason"] == REASON_OUT_OF_DISTRIBUTION
    low = _prediction(2, probs, 7, {OOD_SCORE: 0.5, ABSTAIN: True, ABSTAIN_REASON: REASON_LOW_CONFIDENCE})
    assert low.answer == "abstained: low confidence (p=0.600)"
    unsure = _prediction(
        2, probs, 7, {OOD_SCORE: 0.5, ABSTAIN: True, ABSTAIN_REASON: REASON_UNCERTAIN_NO_TUMOUR}
    )
    assert unsure.answer == (
        "abstained: not confident enough that there is no tumour (p(notumor)=0.600, ood_score 0.50)"
    )
    # A model exported before abstention: plain answers, no abstention fields.
    old = _prediction(2, probs, 7, {})
    assert old.answer == "notumor" and "abstain" not in old.as_record()
    assert isinstance(old, ImagePrediction)


def test_gradcam_images_of_an_abstention_are_marked():
    from serving import heatmap_overlay

    original = np.full((120, 160, 3), 90, np.uint8)
    images = heatmap_overlay.render(
        original, np.random.default_rng(0).uniform(0, 1, (224, 224)).astype(np.float32)
    )
    marked = heatmap_overlay.mark_abstained(images, REASON_OUT_OF_DISTRIBUTION)
    np.testing.assert_array_equal(marked.original, original)
    for kind in ("heatmap", "overlay"):
        before, after = getattr(images, kind), getattr(marked, kind)
        assert after.shape == before.shape and not np.array_equal(after, before)
        np.testing.assert_array_equal(after[20:], before[20:])  # only the banner differs
